//! Teeing a body: frames stream on unchanged while a bounded copy is kept
//! for the comparison, and handed over when the stream ends.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::body::BoxError;

/// What the copy holds when the stream is over.
#[derive(Debug)]
pub enum Copied {
    Complete(Bytes),
    /// More than the cap went through; the comparison is skipped.
    TooLarge,
    /// The stream failed or was dropped before its end.
    Incomplete,
}

pin_project_lite::pin_project! {
    pub struct TeeBody<B> {
        #[pin]
        inner: B,
        copy: Option<BytesMut>,
        cap: usize,
        done: Option<oneshot::Sender<Copied>>,
    }

    impl<B> PinnedDrop for TeeBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(done) = this.done.take() {
                let _ = done.send(Copied::Incomplete);
            }
        }
    }
}

impl<B> TeeBody<B> {
    pub fn new(inner: B, cap: usize) -> (Self, oneshot::Receiver<Copied>)
    where
        B: Body,
    {
        let (done, copied) = oneshot::channel();
        // An empty body may never be polled at all.
        if inner.is_end_stream() {
            let _ = done.send(Copied::Complete(Bytes::new()));
            return (
                TeeBody {
                    inner,
                    copy: None,
                    cap,
                    done: None,
                },
                copied,
            );
        }
        let body = TeeBody {
            inner,
            copy: Some(BytesMut::new()),
            cap,
            done: Some(done),
        };
        (body, copied)
    }
}

/// Hands the copy over: complete, or too large if it was given up.
fn finish(done: &mut Option<oneshot::Sender<Copied>>, copy: &mut Option<BytesMut>) {
    if let Some(done) = done.take() {
        let copied = match copy.take() {
            Some(copy) => Copied::Complete(copy.freeze()),
            None => Copied::TooLarge,
        };
        let _ = done.send(copied);
    }
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(data), Some(copy)) = (frame.data_ref(), this.copy.as_mut()) {
                    if copy.len() + data.len() > *this.cap {
                        // Stop copying (and free the copy) but keep streaming.
                        *this.copy = None;
                    } else {
                        copy.extend_from_slice(data);
                    }
                }
                // A reader (hyper among them) stops polling once the body
                // says it is at its end, so the final `None` may never come.
                if this.inner.is_end_stream() {
                    finish(this.done, this.copy);
                }
            }
            Some(Err(_)) => {
                if let Some(done) = this.done.take() {
                    let _ = done.send(Copied::Incomplete);
                }
            }
            None => finish(this.done, this.copy),
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Empty, Full};

    use super::*;

    /// A reader that stops at `is_end_stream`, as hyper does, still gets a
    /// complete copy: the last frame ends the copy, not a final `None`.
    #[tokio::test]
    async fn copy_completes_when_the_body_says_it_ended() {
        let (mut tee, copied) = TeeBody::new(Full::new(Bytes::from_static(b"abc")), 1024);
        let frame = tee.frame().await.expect("one frame").expect("no error");
        assert_eq!(frame.into_data().expect("a data frame"), "abc");
        assert!(tee.is_end_stream());
        drop(tee);
        assert!(matches!(copied.await, Ok(Copied::Complete(bytes)) if bytes == "abc"));

        let (tee, copied) = TeeBody::new(Empty::<Bytes>::new(), 1024);
        drop(tee);
        assert!(matches!(copied.await, Ok(Copied::Complete(bytes)) if bytes.is_empty()));
    }
}

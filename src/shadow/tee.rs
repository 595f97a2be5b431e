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
    pub fn new(inner: B, cap: usize) -> (Self, oneshot::Receiver<Copied>) {
        let (done, copied) = oneshot::channel();
        let body = TeeBody { inner, copy: Some(BytesMut::new()), cap, done: Some(done) };
        (body, copied)
    }
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
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
            }
            Some(Err(_)) => {
                if let Some(done) = this.done.take() {
                    let _ = done.send(Copied::Incomplete);
                }
            }
            None => {
                if let Some(done) = this.done.take() {
                    let copied = match this.copy.take() {
                        Some(copy) => Copied::Complete(copy.freeze()),
                        None => Copied::TooLarge,
                    };
                    let _ = done.send(copied);
                }
            }
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

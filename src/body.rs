//! Body types of the proxy: one boxed body for everything it sends, and the
//! wrappers that bound a stream (idle timeout, size cap) without buffering it.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type the proxy sends, up- and downstream.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Boxes any body whose error converts into `BoxError`.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// The stream went quiet for longer than the backend's `idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("body stream idle for more than {0:?}")]
pub struct IdleTimeout(pub Duration);

/// The client sent more than the route's `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

pin_project_lite::pin_project! {
    /// Fails the stream when no frame arrives for `idle`, so a stalled peer
    /// cannot hold a connection (and its memory) forever.
    pub struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        // Made only when the stream first has to wait: most answers are
        // all there at once, and a timer made for each cost a clock read
        // and a runtime handle per request.
        timer: Option<Pin<Box<Sleep>>>,
        idle: Duration,
        // Whether `timer` runs from the start of the current wait: it is
        // reset when a wait begins, not on every frame.
        is_armed: bool,
    }
}

impl<B> IdleTimeoutBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeoutBody {
            inner,
            timer: None,
            idle,
            is_armed: false,
        }
    }
}

impl<B> Body for IdleTimeoutBody<B>
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
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.is_armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = *this.idle;
                let timer = match this.timer {
                    Some(timer) if *this.is_armed => timer,
                    Some(timer) => {
                        timer.as_mut().reset(Instant::now() + idle);
                        timer
                    }
                    None => this.timer.insert(Box::pin(tokio::time::sleep(idle))),
                };
                *this.is_armed = true;
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(IdleTimeout(idle)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// Streams a request body and fails it once more than `limit` bytes
    /// went through: the backend sees an aborted upload, never an oversize one.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        remaining: u64,
        limit: u64,
    }
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64) -> Self {
        LimitedBody {
            inner,
            remaining: limit,
            limit,
        }
    }
}

impl<B> Body for LimitedBody<B>
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
        let this = self.project();
        let frame = match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > *this.remaining {
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*this.limit)))));
            }
            *this.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body slot shared by a `ReclaimableBody` and its `Reclaim` handle.
struct Slot {
    body: Option<ProxyBody>,
    is_touched: bool,
}

/// A body that can be taken back when the exchange failed before reading
/// any of it (connection refused, circuit open): the request can then go
/// to another backend, streamed, without having been buffered.
pub struct ReclaimableBody {
    slot: std::sync::Arc<std::sync::Mutex<Slot>>,
}

pub struct Reclaim {
    slot: std::sync::Arc<std::sync::Mutex<Slot>>,
}

/// Wraps `body`; the `Reclaim` gives it back if it was never polled.
pub fn reclaimable(body: ProxyBody) -> (ReclaimableBody, Reclaim) {
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Slot {
        body: Some(body),
        is_touched: false,
    }));
    (ReclaimableBody { slot: slot.clone() }, Reclaim { slot })
}

impl Reclaim {
    /// The body, if nothing of it was read (or it was empty).
    pub fn take_untouched(self) -> Option<ProxyBody> {
        let mut slot = self.slot.lock().ok()?;
        let is_empty = slot.body.as_ref().is_some_and(|b| b.is_end_stream());
        if slot.is_touched && !is_empty {
            return None;
        }
        slot.body.take()
    }
}

impl Body for ReclaimableBody {
    type Data = Bytes;
    type Error = BoxError;

    // std Mutex, uncontended: only the connection task polls the body, and
    // the `Reclaim` handle is used after the exchange ended.
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Ok(mut slot) = self.slot.lock() else {
            return Poll::Ready(Some(Err("request body lock poisoned".into())));
        };
        slot.is_touched = true;
        match slot.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.slot
            .lock()
            .map(|s| s.body.as_ref().is_none_or(|b| b.is_end_stream()))
            .unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        self.slot
            .lock()
            .ok()
            .and_then(|s| s.body.as_ref().map(|b| b.size_hint()))
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body fed by a channel: frames arrive when the test sends them.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|data| data.map(|d| Ok(Frame::data(d))))
        }
    }

    const IDLE: Duration = Duration::from_secs(10);

    // Paused time: the runtime moves the clock to the next timer whenever
    // every task waits, so these run at once and in a fixed order.

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_stalls_after_a_frame_fails_after_idle() {
        let (feed, rx) = tokio::sync::mpsc::channel(1);
        let mut body = std::pin::pin!(IdleTimeoutBody::new(Fed(rx), IDLE));
        feed.send(Bytes::from_static(b"first")).await.expect("send");
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"first")));
        let started = Instant::now();
        // Bounded: without its timer the body would wait for ever.
        let stalled = tokio::time::timeout(IDLE * 10, body.frame())
            .await
            .expect("the idle timer fires")
            .expect("an outcome");
        let err = stalled.expect_err("a stalled stream fails");
        assert!(err.downcast_ref::<IdleTimeout>().is_some(), "{err}");
        assert!(started.elapsed() >= IDLE, "not before `idle`");
        drop(feed);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_each_within_idle_never_time_out_however_long_the_stream() {
        let (feed, rx) = tokio::sync::mpsc::channel(1);
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(IDLE * 6 / 10).await;
                feed.send(Bytes::from_static(b"x")).await.expect("send");
            }
        });
        let body = IdleTimeoutBody::new(Fed(rx), IDLE);
        let started = Instant::now();
        let collected = body.collect().await.expect("no timeout").to_bytes();
        assert_eq!(collected, Bytes::from_static(b"xxxxx"));
        assert!(started.elapsed() > IDLE * 2, "the stream outlasted `idle`");
        feeder.await.expect("the feeder ends");
    }
}

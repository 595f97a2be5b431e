//! Parking idle HTTP/1 connections: while a keep-alive connection waits
//! for its next request, it holds no hyper state and no buffers.
//!
//! hyper keeps a read buffer (8–16 KiB) and a write buffer (8 KiB) for the
//! whole life of an HTTP/1 connection, so 10,000 idle keep-alive
//! connections cost over 200 MB. nginx frees a connection's buffers when
//! it goes idle (`ngx_http_set_keepalive`) and reads the next request into
//! a fresh one. We do the same one level up: once a connection has been
//! quiet for `PARK_AFTER` with no request in flight, `WireIo` tells hyper
//! the stream ended. hyper, idle between requests, finishes the connection
//! cleanly without writing anything, `WireIo` hands the socket back as it
//! is dropped, and `listener::Connection` waits for the socket to become
//! readable (no buffer) before serving it with a new hyper connection.
//! The client sees one keep-alive connection throughout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounterVec;
use tokio::net::TcpStream;

/// How long a connection must be quiet before it is parked. Short enough
/// that a crowd of idle connections costs little within seconds; long
/// enough that a connection in steady use is never rebuilt between its
/// requests. Checked by a timer of the active connection only.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);

/// What the service side and the byte side of one connection tell each
/// other.
#[derive(Debug, Default)]
pub(crate) struct ConnActivity {
    /// A byte moved either way since the flag was last cleared.
    moved: AtomicBool,
    /// Requests whose response has not been sent in full.
    in_flight: AtomicUsize,
    /// The connection has been quiet: park it at the next chance.
    park_requested: AtomicBool,
    /// `strangler_rejected_requests_total`, for the head timeouts that the
    /// byte layer sees.
    rejected: Option<IntCounterVec>,
}

impl ConnActivity {
    /// Counts the head timeouts of this connection in `rejected`.
    pub(crate) fn counting(rejected: IntCounterVec) -> Self {
        ConnActivity {
            rejected: Some(rejected),
            ..ConnActivity::default()
        }
    }

    /// A request the connection's bytes refused (`REJECT_REASONS`).
    pub(crate) fn count_rejection(&self, reason: &str) {
        if let Some(rejected) = &self.rejected {
            rejected.with_label_values(&[reason]).inc();
        }
    }

    pub(crate) fn on_bytes(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }

    /// Whether bytes moved since the last call.
    pub(crate) fn take_moved(&self) -> bool {
        self.moved.swap(false, Ordering::Relaxed)
    }

    pub(crate) fn request_park(&self) {
        self.park_requested.store(true, Ordering::Relaxed);
    }

    pub(crate) fn cancel_park(&self) {
        self.park_requested.store(false, Ordering::Relaxed);
    }

    /// Whether the connection may be parked now, as far as the service
    /// side knows: asked for, and no response under way.
    pub(crate) fn may_park(&self) -> bool {
        self.park_requested.load(Ordering::Relaxed) && self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Counts a request until its response is sent (or dropped).
    pub(crate) fn enter(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Some(self.clone()))
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub(crate) struct InFlight(Option<std::sync::Arc<ConnActivity>>);

impl InFlight {
    fn leave(&mut self) {
        if let Some(activity) = self.0.take() {
            activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.leave();
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's `InFlight` when it ends.
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: B,
        in_flight: InFlight,
    }
}

impl<B> TrackedBody<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        TrackedBody { inner, in_flight }
    }
}

impl<B: Body<Data = Bytes>> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = frame {
            this.in_flight.leave();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream whose socket can be waited on without reading from it.
pub(crate) trait Readiness {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Readiness for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// A parked TLS stream holds no plaintext: it was parked when a read
/// found nothing, so the next bytes arrive on the socket.
impl Readiness for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// Waits until `io` has bytes to read (or is closed).
pub(crate) async fn readable<IO: Readiness>(io: &IO) -> io::Result<()> {
    std::future::poll_fn(|cx| io.poll_readable(cx)).await
}

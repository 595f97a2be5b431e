//! One client listener: accepting, refusing past the connection limit,
//! the TLS handshake, serving HTTP/1.1 and HTTP/2, idle close and drain.
//!
//! Limits come from the snapshot that is current when a connection is
//! accepted, so a reload changes them for new connections without a
//! restart; an open connection keeps the limits it started with.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{IntCounterVec, IntGauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::head_check::BODY_READ_BYTES;
use super::park::{self, ConnActivity, Readiness, TrackedBody, PARK_AFTER};
use super::settings::ConnLimits;
use super::sidecar::Sidecar;
use super::wire::WireIo;
use crate::metrics::Metrics;
use crate::proxy::{ConnInfo, ProxyService, Shared};

/// After an accept error (e.g. out of file descriptors), wait before the
/// next accept instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Refused connections being told so at once; past this many, a refused
/// connection is closed without a word, so refusing stays cheap.
const REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refused client gets to read the 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 34\r\n\r\n{\"error\":\"too_many_connections\"}\r\n";

/// What woke a connection's task for something other than more work.
enum Event<E> {
    Ended(Result<(), E>),
    Stop,
    Tick,
}

/// A listener and what it needs to serve.
pub(crate) struct ClientListener {
    tcp: TcpListener,
    shared: ListenerShared,
}

/// What the accept loops of one listening socket share across workers.
#[derive(Clone)]
struct ListenerShared {
    /// `Some` for the TLS listener.
    tls: Option<TlsAcceptor>,
    /// The `listener` label of the connection metrics.
    label: &'static str,
    /// Open connections, counted against `max_connections` on all workers.
    open: Arc<AtomicUsize>,
    refusals: Arc<Semaphore>,
}

impl ClientListener {
    pub(crate) fn new(tcp: TcpListener, tls: Option<TlsAcceptor>, label: &'static str) -> Self {
        ClientListener {
            tcp,
            shared: ListenerShared {
                tls,
                label,
                open: Arc::new(AtomicUsize::new(0)),
                refusals: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT)),
            },
        }
    }

    /// This listener for another worker's accept loop (`server::socket`).
    pub(crate) fn share(&self) -> std::io::Result<SharedListener> {
        Ok(SharedListener {
            socket: super::socket::for_another_worker(&self.tcp)?,
            shared: self.shared.clone(),
        })
    }
}

/// A `ClientListener` on its way to another worker's runtime.
pub(crate) struct SharedListener {
    socket: std::net::TcpListener,
    shared: ListenerShared,
}

impl SharedListener {
    /// Registers the socket with the calling thread's runtime.
    pub(crate) fn attach(self) -> std::io::Result<ClientListener> {
        Ok(ClientListener {
            tcp: TcpListener::from_std(self.socket)?,
            shared: self.shared,
        })
    }
}

/// Accepts until `stop` turns true. Every connection holds a clone of
/// `stop`, so the caller learns that all have drained when the sender's
/// receivers are gone (`watch::Sender::closed`).
pub(crate) async fn serve(
    listener: ClientListener,
    shared: Arc<Shared>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let ClientListener {
        tcp,
        shared: listener,
    } = listener;
    let open_gauge = metrics
        .connections_open
        .with_label_values(&[listener.label]);
    let accepted = metrics.connections.with_label_values(&[listener.label]);
    let accepted_here = metrics
        .worker_connections
        .with_label_values(&[&crate::worker::current().to_string()]);
    let parked_gauge = metrics
        .connections_parked
        .with_label_values(&[listener.label]);
    let (open, refusals) = (&listener.open, &listener.refusals);
    let mut cached: Option<Arc<ConnShared>> = None;
    let proto = if listener.tls.is_some() {
        "https"
    } else {
        "http"
    };
    loop {
        let (stream, peer) = tokio::select! {
            result = tcp.accept() => match result {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let limits = shared.table.load().server.limits;
        // Past the limit a connection is refused at once: refusing is
        // better than letting every connection slow down.
        if open.load(Ordering::Acquire) >= limits.max_connections {
            tracing::warn!(client = %peer, limit = limits.max_connections, "connection limit reached; refusing");
            refuse(stream, listener.tls.is_some(), refusals);
            continue;
        }
        let conn_shared = match &cached {
            Some(conn_shared) if conn_shared.limits == limits => conn_shared.clone(),
            _ => {
                let conn_shared = Arc::new(ConnShared {
                    builder: http_builder(&limits),
                    limits,
                    parked_gauge: parked_gauge.clone(),
                    rejected: metrics.rejected.clone(),
                });
                cached = Some(conn_shared.clone());
                conn_shared
            }
        };
        let _ = stream.set_nodelay(true);
        accepted.inc();
        accepted_here.inc();
        let slot = Slot::take(open, &open_gauge);
        let service = ProxyService::new(shared.clone(), ConnInfo::new(peer, proto));
        let connection = Connection {
            shared: conn_shared,
            service,
            stop: stop.clone(),
            _slot: slot,
        };
        match &listener.tls {
            None => {
                tokio::spawn(connection.serve(stream, true));
            }
            Some(acceptor) => {
                tokio::spawn(connection.handshake(acceptor.clone(), stream));
            }
        }
    }
}

const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// hyper's settings for a connection under `limits`.
fn http_builder(limits: &ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        // `WireIo` keeps the head timeout instead (`server::head_timeout`):
        // hyper's closes without an answer, and its clock would also end
        // the idle time of keep-alive connections, which is
        // `keepalive_timeout`'s job.
        .header_read_timeout(None)
        // Large for request bodies; `WireIo` holds heads to
        // `max_header_bytes` (431 beyond), see `server::head_check`.
        .max_buf_size(limits.max_header_bytes.max(BODY_READ_BYTES));
    // hyper's own limit is 100 headers; setting it explicitly makes hyper
    // fill a header array on every parse, so only a different limit is set.
    if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        http1.max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487): streams the client opens and resets
        // before we answer still cost us work. Past 50 such streams pending,
        // or 100 streams we had to reset for the client's errors, hyper
        // (h2) sends GOAWAY and closes the connection.
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(100);
    builder
}

/// Tells a refused client why, without reading its request, then closes.
fn refuse(mut stream: TcpStream, is_tls: bool, refusals: &Arc<Semaphore>) {
    // A TLS client would read plaintext as garbage; a plain close is clearer.
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    if is_tls {
        return;
    }
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(REFUSAL).await?;
            stream.shutdown().await?;
            // Read what the client sent until it closes: closing with
            // unread bytes would reset the connection and could destroy
            // the 503 before the client reads it.
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await;
    });
}

/// Counts an open connection while it lives.
struct Slot {
    open: Arc<AtomicUsize>,
    gauge: IntGauge,
}

impl Slot {
    fn take(open: &Arc<AtomicUsize>, gauge: &IntGauge) -> Slot {
        open.fetch_add(1, Ordering::AcqRel);
        gauge.inc();
        Slot {
            open: open.clone(),
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// Counts one in a gauge while it lives.
struct GaugeGuard<'g>(&'g IntGauge);

impl<'g> GaugeGuard<'g> {
    fn inc(gauge: &'g IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the connections of a listener share, made again only when the
/// limits change: one reference count per connection rather than a copy
/// of hyper's builder and of each series.
struct ConnShared {
    builder: auto::Builder<TokioExecutor>,
    limits: ConnLimits,
    /// `strangler_connections_parked` for this listener.
    parked_gauge: IntGauge,
    /// `strangler_rejected_requests_total`.
    rejected: IntCounterVec,
}

/// One accepted connection, before its protocol is known.
struct Connection {
    shared: Arc<ConnShared>,
    service: ProxyService,
    stop: watch::Receiver<bool>,
    _slot: Slot,
}

impl Connection {
    /// The TLS handshake gets the header read timeout: a client that opens
    /// a connection and says nothing is a slowloris in either case.
    async fn handshake(self, acceptor: TlsAcceptor, stream: TcpStream) {
        let peer = stream.peer_addr().ok();
        let deadline = self.shared.limits.header_read_timeout;
        match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                self.serve(tls, !is_h2).await;
            }
            Ok(Err(err)) => tracing::debug!(client = ?peer, error = %err, "TLS handshake failed"),
            Err(_) => tracing::debug!(client = ?peer, "TLS handshake timed out"),
        }
    }

    /// Serves the connection until it closes: with hyper while it is in
    /// use, parked (`server::park`) while it waits between requests.
    /// `awaits_http1: false` for a connection that chose HTTP/2 by ALPN:
    /// no deadline for its first byte, and it is never parked.
    async fn serve<IO>(mut self, mut io: IO, awaits_http1: bool)
    where
        IO: AsyncRead + AsyncWrite + Readiness + Unpin + Send + 'static,
    {
        let activity = Arc::new(ConnActivity::counting(self.shared.rejected.clone()));
        let mut is_resumed = false;
        loop {
            let (home, mut parked) = oneshot::channel();
            let mut wire = WireIo::new(
                io,
                activity.clone(),
                awaits_http1,
                self.shared.limits.max_header_bytes,
                self.shared.limits.header_read_timeout,
            );
            if awaits_http1 {
                wire = wire.parkable(home);
            }
            if is_resumed {
                wire = wire.resumed();
            }
            // Boxed: the task of a parked connection keeps none of the
            // serving state (a few hundred bytes), only the socket.
            let quiet = Box::pin(self.serve_with_hyper(wire, &activity)).await;
            // The socket comes back only from a parked connection.
            let Ok(back) = parked.try_recv() else {
                return;
            };
            io = back;
            let keepalive_left = self.shared.limits.keepalive_timeout.saturating_sub(quiet);
            let _parked = GaugeGuard::inc(&self.shared.parked_gauge);
            tokio::select! {
                ready = park::readable(&io) => {
                    if ready.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(keepalive_left) => return,
                _ = self.stop.changed() => return,
            }
            is_resumed = true;
        }
    }

    /// Runs hyper over `wire` until the connection ends or is parked;
    /// returns how long it had been quiet by then.
    async fn serve_with_hyper<IO>(
        &mut self,
        wire: WireIo<IO>,
        activity: &Arc<ConnActivity>,
    ) -> Duration
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = self.service.clone();
        let tracker = activity.clone();
        let connection = self.shared.builder.serve_connection_with_upgrades(
            TokioIo::new(wire),
            hyper::service::service_fn(move |req| {
                let in_flight = tracker.enter();
                let call = hyper::service::Service::call(&service, req);
                async move {
                    let response = call.await?;
                    Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, in_flight)))
                }
            }),
        );
        // Boxed: a parked connection's task keeps none of hyper's state.
        let mut connection = Box::pin(connection);
        let keepalive = self.shared.limits.keepalive_timeout;
        let tick = PARK_AFTER.min(keepalive / 2).max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        let mut quiet = Duration::ZERO;
        let mut is_draining = false;
        // The stop signal and the tick are polled only when they fire, not
        // on each of the connection's wake-ups (`sidecar`).
        let (mut stop_side, mut tick_side) = (Sidecar::new(), Sidecar::new());
        let mut stop = std::pin::pin!(self.stop.changed());
        // Either signal asks hyper to finish what is in flight and close:
        // HTTP/1 after the current response, HTTP/2 with a GOAWAY.
        loop {
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                    return Poll::Ready(Event::Ended(result));
                }
                if is_draining {
                    return Poll::Pending;
                }
                if stop_side.poll(cx, |cx| stop.as_mut().poll(cx)).is_ready() {
                    return Poll::Ready(Event::Stop);
                }
                if tick_side.poll(cx, |cx| ticks.poll_tick(cx)).is_ready() {
                    return Poll::Ready(Event::Tick);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Ended(result) => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "connection ended with an error");
                        // hyper answered a head it could not parse itself
                        // (400, or 431 for one too large).
                        match err.downcast_ref::<hyper::Error>() {
                            Some(e) if e.is_parse_too_large() => {
                                activity.count_rejection("too_large")
                            }
                            Some(e) if e.is_parse() => activity.count_rejection("framing"),
                            _ => {}
                        }
                    }
                    return quiet;
                }
                Event::Stop => {
                    connection.as_mut().graceful_shutdown();
                    is_draining = true;
                }
                Event::Tick => {
                    if activity.take_moved() {
                        quiet = Duration::ZERO;
                        activity.cancel_park();
                    } else {
                        quiet += tick;
                        if quiet >= keepalive {
                            connection.as_mut().graceful_shutdown();
                            is_draining = true;
                        } else {
                            // Taken up by the next read hyper makes, which
                            // follows this wake-up.
                            activity.request_park();
                        }
                    }
                }
            }
        }
    }
}

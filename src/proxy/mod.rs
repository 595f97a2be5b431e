//! The hyper service: select a route, forward the request, record the outcome.
//!
//! One `ProxyService` per client connection, all sharing `Shared`. `call`
//! does the work in order (normalise, select, forward, record) and turns
//! any failure into a response: it never returns `Err` to hyper.

mod attempt;
mod client;
mod error;
mod forward;
pub mod framing;
pub mod headers;
pub mod path;
mod timing;
mod trace;
mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Request, Response, Version};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::metrics::Metrics;
use crate::routing::{BackendId, Decision, RequestView, Route, Snapshot, DEFAULT_ROUTE};
use crate::shadow::Mirror;
use crate::telemetry::access::{self, AccessLine};
use crate::telemetry::{PendingSpan, Spans};

pub use self::client::{client_addr, BadCidr, ClientAddr, TrustedProxies};
pub use self::error::{json_error, ProxyError};
use self::framing::FramingError;
pub(crate) use self::headers::ip_text;
pub(crate) use self::trace::{Sampling, TraceContext};
pub use self::trace::{TRACEPARENT, TRACESTATE};

/// What every request needs, shared by all connections.
pub struct Shared {
    pub table: Arc<ArcSwap<Snapshot>>,
    pub metrics: Metrics,
    pub mirror: Mirror,
    /// Where server spans go, with `server.tracing` on; `None` costs one
    /// branch per request.
    pub spans: Option<Spans>,
}

/// The client side of one connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// Forwarding headers built once for the connection.
    pub peer_headers: Arc<headers::PeerHeaders>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, proto: &'static str) -> Self {
        ConnInfo {
            peer,
            proto,
            peer_headers: Arc::new(headers::PeerHeaders::new(peer.ip())),
        }
    }
}

#[derive(Clone)]
pub struct ProxyService {
    shared: Arc<Shared>,
    conn: ConnInfo,
}

impl ProxyService {
    pub fn new(shared: Arc<Shared>, conn: ConnInfo) -> Self {
        ProxyService { shared, conn }
    }
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // No async block around `handle`: every layer of future is one more
        // copy of the whole request state (kilobytes) per request.
        Box::pin(handle(self.shared.clone(), self.conn.clone(), req))
    }
}

/// Facts about the request that the access log and errors need.
pub(crate) struct RequestCtx {
    pub started: Instant,
    pub request_id: HeaderValue,
    pub trace: TraceContext,
    pub conn: ConnInfo,
    /// Who the client is, as far as `trusted_proxies` lets us believe.
    pub client: ClientAddr,
    /// When the upstream request was ready to send; `Server-Timing` counts
    /// the time from here to the answer as upstream time. Unset when the
    /// request never got that far (refused by the proxy).
    pub upstream_started: OnceLock<Instant>,
    /// The backend whose answer the client got (fallbacks included). Unset
    /// when the request never reached a route.
    pub backend: OnceLock<BackendId>,
}

async fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let shared = &*shared;
    // One refcount: requests in flight finish on the snapshot they started with.
    let snapshot = shared.table.load_full();
    let sampling = shared
        .spans
        .as_ref()
        .map_or(Sampling::ALWAYS, Spans::sampling);
    let ctx = RequestCtx {
        client: client_addr(req.headers(), conn.peer, &snapshot.server.trusted_proxies),
        started: Instant::now(),
        request_id: headers::request_id(req.headers()),
        trace: TraceContext::from_headers(req.headers(), sampling),
        conn,
        upstream_started: OnceLock::new(),
        backend: OnceLock::new(),
    };
    // Boxed: kept across the await, it would grow every request's future
    // by its size, tracing on or off.
    let span = match &shared.spans {
        Some(spans) => PendingSpan::start(spans, &ctx, &req).map(Box::new),
        None => None,
    };
    // The routing is a plain function and `forward` is awaited here: an
    // `async fn` between the two would be one more copy of the request's
    // whole state (kilobytes) per request. Taken apart before the await, so
    // that no part is kept twice across it.
    let Admitted {
        req,
        path,
        host,
        decision,
        must_close,
    } = match admit(shared, &snapshot, &ctx, req) {
        Ok(admitted) => admitted,
        Err(refusal) => return Ok(finish_span(span, refusal, None, &ctx, &snapshot)),
    };
    let version = req.version();
    let mut response =
        forward::forward(&shared.mirror, &snapshot, &decision, req, &path, host, &ctx).await;
    if must_close && response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        response = close_after(response, version);
    }
    Ok(finish_span(
        span,
        response,
        Some(decision.route),
        &ctx,
        &snapshot,
    ))
}

/// Ends the request's server span, when it has one.
fn finish_span(
    span: Option<Box<PendingSpan>>,
    response: Response<ProxyBody>,
    route: Option<&Route>,
    ctx: &RequestCtx,
    snapshot: &Snapshot,
) -> Response<ProxyBody> {
    match span {
        Some(span) => {
            let backend = ctx.backend.get().map(|id| &*snapshot.backend(*id).name);
            span.finish(response, route.map(|r| &*r.name), backend)
        }
        None => response,
    }
}

/// A request that passed the proxy's checks, and its route.
struct Admitted<'s> {
    req: Request<Incoming>,
    /// Normalised.
    path: String,
    host: Option<HeaderValue>,
    decision: Decision<'s>,
    /// The client asked to close after this exchange.
    must_close: bool,
}

/// Checks the request's framing, path and host, and selects its route; or
/// answers the refusal.
// The refusal is returned as it is: boxing it would cost an allocation for
// every refused request, and this is called once per request.
#[allow(clippy::result_large_err)]
fn admit<'s>(
    shared: &Shared,
    snapshot: &'s Snapshot,
    ctx: &RequestCtx,
    req: Request<Incoming>,
) -> Result<Admitted<'s>, Response<ProxyBody>> {
    if let Err(err) = framing::check(&req, &snapshot.server.limits) {
        return Err(close_after(
            reject(shared, err.into(), ctx, &req),
            req.version(),
        ));
    }
    let path = match path::normalize(req.uri().path()) {
        Ok(path) => path.into_owned(),
        Err(err) => return Err(reject(shared, ProxyError::BadPath(err), ctx, &req)),
    };
    let Ok(host) = request_host(&req) else {
        return Err(reject(shared, ProxyError::BadHost, ctx, &req));
    };
    let decision = snapshot.select(&RequestView {
        method: req.method(),
        path: &path,
        query: req.uri().query(),
        host: host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(host_without_port),
        headers: req.headers(),
        client_ip: ctx.client.ip,
    });
    let must_close = framing::must_close_after(req.headers());
    Ok(Admitted {
        req,
        path,
        host,
        decision,
        must_close,
    })
}

/// Asks hyper to close an HTTP/1 connection once `response` is sent.
/// (HTTP/2 has no `Connection` header; its streams are independent.)
fn close_after(mut response: Response<ProxyBody>, version: Version) -> Response<ProxyBody> {
    if version <= Version::HTTP_11 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The host the client addressed: the URI authority (HTTP/2, absolute
/// form) or the `Host` header, validated as an authority. HTTP/1.1 requires
/// one (RFC 9112 §3.2). A `Host` header is passed on as it came: its value
/// shares hyper's read buffer, so this copies nothing.
fn request_host(req: &Request<Incoming>) -> Result<Option<HeaderValue>, ()> {
    if let Some(authority) = req.uri().authority() {
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| ());
    }
    match req.headers().get(header::HOST) {
        Some(value) => {
            let authority = http::uri::Authority::try_from(value.as_bytes()).map_err(|_| ())?;
            if authority.as_str().contains('@') {
                return Err(());
            }
            Ok(Some(value.clone()))
        }
        None if req.version() == Version::HTTP_11 => Err(()),
        None => Ok(None),
    }
}

fn host_without_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(':') => {
            host
        }
        _ => authority,
    }
}

/// Answers a request that was refused before any route was chosen, and
/// counts it in `strangler_rejected_requests_total`.
fn reject(
    shared: &Shared,
    err: ProxyError,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Response<ProxyBody> {
    let reason = match &err {
        ProxyError::BadPath(_) => "path",
        ProxyError::BadHost => "host",
        ProxyError::Framing(FramingError::TooManyHeaders(_) | FramingError::TargetTooLong) => {
            "too_large"
        }
        _ => "framing",
    };
    shared.metrics.rejected.with_label_values(&[reason]).inc();
    if access::enabled() {
        AccessLine {
            message: Some("rejected"),
            request_id: ctx.request_id.to_str().unwrap_or(""),
            trace_id: ctx.trace.trace_id(),
            client: Some(ctx.client.ip),
            method: req.method().as_str(),
            error: Some(&err.to_string()),
            ..AccessLine::default()
        }
        .write();
    }
    err.into_response(DEFAULT_ROUTE, ctx)
}

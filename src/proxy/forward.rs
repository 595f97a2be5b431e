//! Forwarding one request to its backend and the answer back to the client.
//!
//! Bodies stream both ways. A request is sent a second time (to the route's
//! fallback) only when that cannot run a side effect twice: the first
//! backend never saw it, or the method is idempotent, or the client gave
//! an idempotency key, or the route opts in.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;

use super::headers::{self, ForwardedFor};
use super::{upgrade, ProxyError, RequestCtx};
use crate::body::{boxed, empty, BodyTooLarge, IdleTimeoutBody, LimitedBody, ProxyBody};
use crate::gate::Side;
use crate::routing::{bucket_of, BackendId, Decision, HostRewrite, Route, Snapshot, Target, BUCKETS};
use crate::shadow::{Mirror, PrimaryAnswer, RequestBody, ShadowJob, ShadowPolicy, TeeBody};
use crate::upstream::UpstreamError;

/// The upstream request line and headers, kept so a fallback can resend them.
struct UpstreamHead {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    is_upgrade: bool,
}

pub(crate) async fn forward(
    mirror: &Mirror,
    snapshot: &Snapshot,
    decision: &Decision<'_>,
    req: Request<Incoming>,
    path: &str,
    host: Option<String>,
    ctx: &RequestCtx,
) -> Response<ProxyBody> {
    let route = decision.route;
    let _inflight = InflightGuard::enter(route);
    let limit = route.max_body_bytes.or(snapshot.server.max_body_bytes);
    let (mut parts, body) = req.into_parts();
    if let (Some(limit), Some(length)) = (limit, body.size_hint().exact()) {
        if length > limit {
            return finish(snapshot, route, decision.primary, &parts.method, Err(ProxyError::BodyTooLarge { limit }), ctx);
        }
    }
    let client_upgrade = upgrade::take_client_upgrade(&mut parts);
    let head = upstream_head(snapshot, decision, &parts, path, host.as_deref(), ctx, client_upgrade.is_some());
    // A body we do not have to read is one we can send again.
    let is_bodiless = body.is_end_stream();
    let body = match limit {
        Some(limit) => boxed(LimitedBody::new(body, limit)),
        None => boxed(body),
    };
    let shadow = shadow_policy(snapshot, route, &parts.method, &ctx.request_id).filter(|_| !head.is_upgrade);
    let (body, request_copy) = match (shadow, is_bodiless) {
        (Some(policy), false) => {
            let (tee, copied) = TeeBody::new(body, policy.max_body_bytes);
            (boxed(tee), Some(RequestBody::Teed(copied)))
        }
        (Some(_), true) => (body, Some(RequestBody::Empty)),
        (None, _) => (body, None),
    };

    let mut backend = decision.primary;
    let mut outcome = send(snapshot, route, backend, &head, body).await;
    if let Some(fallback) = fallback_for(route, backend, &head, &parts.headers, is_bodiless, &outcome) {
        route.metrics.count_fallback(&snapshot.backend(backend).name, &snapshot.backend(fallback).name);
        backend = fallback;
        outcome = send(snapshot, route, backend, &head, empty()).await;
    }

    let result = match outcome {
        Ok(response) => {
            let response = upstream_response(snapshot, route, backend, response, client_upgrade, ctx);
            Ok(match (shadow, request_copy) {
                (Some(policy), Some(copy)) => mirror_response(mirror, snapshot, route, policy, &head, copy, response, ctx),
                _ => response,
            })
        }
        Err(err) => Err(err),
    };
    finish(snapshot, route, backend, &parts.method, result, ctx)
}

/// The route's shadow policy, when this request is to be mirrored.
fn shadow_policy<'s>(snapshot: &Snapshot, route: &'s Route, method: &Method, request_id: &HeaderValue) -> Option<&'s ShadowPolicy> {
    let _ = snapshot;
    let policy = route.shadow.as_deref()?;
    if route.is_shadow_stage_only && !route.migration.as_ref().is_some_and(|m| m.cell.is_shadow_stage()) {
        return None;
    }
    if !policy.methods.contains(method) {
        return None;
    }
    // Sampling by request id: a retried request (same id) is sampled alike.
    let is_sampled = policy.sample_bp >= BUCKETS || bucket_of(route.metrics_salt(), request_id.as_bytes()) < policy.sample_bp;
    is_sampled.then_some(policy)
}

/// Tees the primary's answer to the client and queues the comparison.
#[allow(clippy::too_many_arguments)]
fn mirror_response(
    mirror: &Mirror,
    snapshot: &Snapshot,
    route: &Route,
    policy: &ShadowPolicy,
    head: &UpstreamHead,
    request_body: RequestBody,
    response: Response<ProxyBody>,
    ctx: &RequestCtx,
) -> Response<ProxyBody> {
    let (parts, body) = response.into_parts();
    let (tee, copied) = TeeBody::new(body, policy.max_body_bytes);
    let path_and_query = match (&policy.path, head.path_and_query.split_once('?')) {
        (Some(path), Some((_, query))) => format!("{path}?{query}"),
        (Some(path), None) => path.to_string(),
        (None, _) => head.path_and_query.clone(),
    };
    mirror.submit(ShadowJob {
        route: route.name.clone(),
        request_id: ctx.request_id.to_str().unwrap_or("").to_string(),
        method: head.method.clone(),
        path_and_query,
        headers: head.headers.clone(),
        body: request_body,
        candidate: snapshot.backend(policy.backend).upstream.clone(),
        secondary: policy.secondary.map(|id| snapshot.backend(id).upstream.clone()),
        rules: policy.rules.clone(),
        max_body_bytes: policy.max_body_bytes,
        primary: PrimaryAnswer {
            status: parts.status.as_u16(),
            headers: parts.headers.clone(),
            latency: ctx.started.elapsed(),
            body: copied,
        },
    });
    Response::from_parts(parts, boxed(tee))
}

/// The backend to try next after a failed or unavailable answer, if a
/// second send is safe.
fn fallback_for(
    route: &Route,
    tried: BackendId,
    head: &UpstreamHead,
    client_headers: &HeaderMap,
    is_bodiless: bool,
    outcome: &Result<Response<Incoming>, ProxyError>,
) -> Option<BackendId> {
    let fallback = route.fallback.filter(|f| *f != tried)?;
    if head.is_upgrade || !is_bodiless {
        return None;
    }
    let reached = match outcome {
        Ok(response) => match response.status() {
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => true,
            _ => return None,
        },
        Err(ProxyError::Upstream(err)) => err.may_have_reached_backend(),
        Err(_) => return None,
    };
    let is_idempotent = matches!(head.method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
        || client_headers.contains_key(&route.idempotency_header);
    (!reached || is_idempotent || route.retry_non_idempotent).then_some(fallback)
}

async fn send(
    snapshot: &Snapshot,
    route: &Route,
    backend: BackendId,
    head: &UpstreamHead,
    body: ProxyBody,
) -> Result<Response<Incoming>, ProxyError> {
    let upstream = &snapshot.backend(backend).upstream;
    let uri: Uri = upstream.uri_for(&head.path_and_query).map_err(ProxyError::UpstreamRequest)?;
    let mut request = Request::new(body);
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = uri;
    // The pool speaks HTTP/1.1 to backends whatever the client spoke.
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = head.headers.clone();
    if let HostRewrite::Backend = route.host_rewrite {
        if let Ok(value) = HeaderValue::from_str(upstream.authority().as_str()) {
            request.headers_mut().insert(header::HOST, value);
        }
    }
    let started = std::time::Instant::now();
    let result = upstream.send(request).await;
    // A streamed body that outgrew `max_body` is the client's fault, not
    // the backend's: answer 413, and count no upstream error.
    if let Some(limit) = result.as_ref().err().and_then(body_limit_exceeded) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    if let Some(series) = route.metrics.series(backend) {
        match &result {
            Ok(_) => series.upstream_duration.observe(started.elapsed().as_secs_f64()),
            Err(err) => series.count_error(err.kind()),
        }
    }
    result.map_err(|err: UpstreamError| {
        tracing::debug!(route = %route.name, backend = %err.backend(), error = %err, "upstream exchange failed");
        ProxyError::Upstream(err)
    })
}

/// The limit, when `LimitedBody` is what broke the exchange.
fn body_limit_exceeded(err: &UpstreamError) -> Option<u64> {
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        if let Some(BodyTooLarge(limit)) = c.downcast_ref::<BodyTooLarge>() {
            return Some(*limit);
        }
        cause = c.source();
    }
    None
}

/// Method, path and headers as the backend will see them.
fn upstream_head(
    snapshot: &Snapshot,
    decision: &Decision,
    parts: &http::request::Parts,
    path: &str,
    host: Option<&str>,
    ctx: &RequestCtx,
    is_upgrade: bool,
) -> UpstreamHead {
    let route = decision.route;
    let mut headers = parts.headers.clone();
    headers::remove_hop_by_hop(&mut headers, is_upgrade);
    headers.remove(&headers::X_STRANGLER_SHADOW);
    headers::set_forwarded(
        &mut headers,
        &ForwardedFor { client_ip: ctx.conn.peer.ip(), proto: ctx.conn.proto, host },
    );
    headers.insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    match &route.host_rewrite {
        HostRewrite::PassThrough => {
            if let Some(value) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
                headers.insert(header::HOST, value);
            }
        }
        HostRewrite::Literal(value) => {
            headers.insert(header::HOST, value.clone());
        }
        // Set per backend in `send`, since a fallback has another authority.
        HostRewrite::Backend => {}
    }
    if let Some(via) = &snapshot.server.via {
        headers.append(header::VIA, via.clone());
    }
    route.request_headers.apply(&mut headers);
    let mut path_and_query = match &route.rewrite {
        Some(rewrite) => rewrite.apply(path, &decision.params),
        None => path.to_string(),
    };
    if let Some(query) = parts.uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    UpstreamHead { method: parts.method.clone(), path_and_query, headers, is_upgrade }
}

fn upstream_response(
    snapshot: &Snapshot,
    route: &Route,
    backend: BackendId,
    mut response: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ctx: &RequestCtx,
) -> Response<ProxyBody> {
    let is_switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (is_switching, client_upgrade) {
        upgrade::tunnel(client_upgrade, &mut response, route.name.clone());
    }
    let idle = snapshot.backend(backend).upstream.timeouts().idle;
    let (mut parts, body) = response.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, is_switching);
    if let Some(via) = &snapshot.server.via {
        parts.headers.append(header::VIA, via.clone());
    }
    route.response_headers.apply(&mut parts.headers);
    parts.headers.insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    Response::from_parts(parts, boxed(IdleTimeoutBody::new(body, idle)))
}

/// Records the outcome and writes the access log line.
fn finish(
    snapshot: &Snapshot,
    route: &Route,
    backend: BackendId,
    method: &Method,
    result: Result<Response<ProxyBody>, ProxyError>,
    ctx: &RequestCtx,
) -> Response<ProxyBody> {
    let (response, error) = match result {
        Ok(response) => (response, None),
        Err(err) => {
            let message = err.to_string();
            (err.into_response(&route.name, &ctx.request_id), Some(message))
        }
    };
    let status = response.status().as_u16();
    let elapsed = ctx.started.elapsed();
    let is_failure = error.is_some()
        || match &route.migration {
            Some(migration) => migration.is_failure(status),
            None => status >= 500,
        };
    if let Some(series) = route.metrics.series(backend) {
        series.count_request(method, status);
        series.duration.observe(elapsed.as_secs_f64());
        if is_failure {
            series.failures.inc();
        }
    }
    if let (Some(migration), Target::Migration(target)) = (&route.migration, &route.target) {
        let side = if backend == target.to { Side::New } else { Side::Old };
        migration.record(side, is_failure, elapsed);
    }
    tracing::info!(
        target: "access",
        request_id = ctx.request_id.to_str().unwrap_or(""),
        client = %ctx.conn.peer.ip(),
        method = %method,
        route = %route.name,
        backend = %snapshot.backend(backend).name,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        error = error.as_deref(),
    );
    response
}

/// Counts the request in `strangler_inflight_requests` while it lives.
struct InflightGuard<'r>(&'r Route);

impl<'r> InflightGuard<'r> {
    fn enter(route: &'r Route) -> Self {
        route.metrics.inflight.inc();
        InflightGuard(route)
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.inflight.dec();
    }
}

//! Forwarding one request to its backend and the answer back to the client.
//!
//! Bodies stream both ways. A request is sent a second time (to the route's
//! fallback) only when that cannot run a side effect twice: the first
//! backend never saw it, or the method is idempotent, or the client gave
//! an idempotency key, or the route opts in.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;

use super::headers::{self, ForwardedFor};
use super::{attempt, timing, upgrade, ProxyError, RequestCtx};
use crate::body::{boxed, IdleTimeoutBody, LimitedBody, ProxyBody};
use crate::gate::failure::{body_fails, FAILURE_BODY_CAP};
use crate::gate::Side;
use crate::routing::{
    bucket_of, BackendId, Decision, HostRewrite, Route, Snapshot, Target, BUCKETS,
};
use crate::shadow::{Copied, Mirror, PrimaryAnswer, RequestBody, ShadowJob, ShadowPolicy, TeeBody};
use crate::telemetry::access::{self, AccessLine};
use crate::upstream::UpstreamBody;

/// The upstream request line and headers, kept so a fallback can resend them.
pub(super) struct UpstreamHead {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub is_upgrade: bool,
    /// The client sent the route's idempotency key header.
    pub has_idempotency_key: bool,
}

pub(crate) async fn forward(
    mirror: &Mirror,
    snapshot: &Snapshot,
    decision: &Decision<'_>,
    req: Request<Incoming>,
    path: &str,
    host: Option<HeaderValue>,
    ctx: &RequestCtx,
) -> Response<ProxyBody> {
    let route = decision.route;
    let _inflight = InflightGuard::enter(route);
    let limit = route.max_body_bytes.or(snapshot.server.max_body_bytes);
    let (mut parts, body) = req.into_parts();
    if let (Some(limit), Some(length)) = (limit, body.size_hint().exact()) {
        if length > limit {
            return finish(
                snapshot,
                route,
                decision.primary,
                &parts.method,
                Err(ProxyError::BodyTooLarge { limit }),
                ctx,
            );
        }
    }
    let client_upgrade = upgrade::take_client_upgrade(&mut parts);
    let head = upstream_head(
        snapshot,
        decision,
        &mut parts,
        path,
        host.as_ref(),
        ctx,
        client_upgrade.is_some(),
    );
    // An empty body needs no copy for the shadow.
    let is_bodiless = body.is_end_stream();
    let body = match limit {
        Some(limit) => boxed(LimitedBody::new(body, limit)),
        None => boxed(body),
    };
    let shadow = shadow_policy(route, &parts.method, &ctx.request_id)
        .filter(|_| !head.is_upgrade)
        .filter(|_| has_shadow_room(mirror, route));
    let (body, request_copy) = match (shadow, is_bodiless) {
        (Some(policy), false) => {
            let (tee, copied) = TeeBody::new(body, policy.max_body_bytes);
            (boxed(tee), Some(RequestBody::Teed(copied)))
        }
        (Some(_), true) => (body, Some(RequestBody::Empty)),
        (None, _) => (body, None),
    };

    let (backend, outcome) =
        attempt::exchange(snapshot, route, decision.primary, &head, body).await;

    let result = match outcome {
        Ok(response) => {
            let response =
                upstream_response(snapshot, route, backend, response, client_upgrade, ctx);
            Ok(match (shadow, request_copy) {
                (Some(policy), Some(copy)) => {
                    mirror_response(mirror, snapshot, route, policy, head, copy, response, ctx)
                }
                _ => response,
            })
        }
        Err(err) => Err(err),
    };
    finish(snapshot, route, backend, &parts.method, result, ctx)
}

/// The route's shadow policy, when this request is to be mirrored.
fn shadow_policy<'s>(
    route: &'s Route,
    method: &Method,
    request_id: &HeaderValue,
) -> Option<&'s ShadowPolicy> {
    let policy = route.shadow.as_deref()?;
    if route.is_shadow_stage_only
        && !route
            .migration
            .as_ref()
            .is_some_and(|m| m.cell.is_shadow_stage())
    {
        return None;
    }
    if !policy.methods.contains(method) {
        return None;
    }
    // Sampling by request id: a retried request (same id) is sampled alike.
    let is_sampled = policy.sample_bp >= BUCKETS
        || bucket_of(policy.salt, request_id.as_bytes()) < policy.sample_bp;
    is_sampled.then_some(policy)
}

/// Whether the shadow queue has room; a mirror that would be dropped is
/// dropped (and counted) before the request is sent, so it makes no copies.
fn has_shadow_room(mirror: &Mirror, route: &Route) -> bool {
    let has_room = mirror.has_room();
    if !has_room {
        route.metrics.count_shadow_dropped();
    }
    has_room
}

/// Tees the primary's answer to the client and queues the comparison.
#[allow(clippy::too_many_arguments)]
fn mirror_response(
    mirror: &Mirror,
    snapshot: &Snapshot,
    route: &Route,
    policy: &ShadowPolicy,
    // Taken: the exchange is over, no retry needs it again.
    head: UpstreamHead,
    request_body: RequestBody,
    response: Response<ProxyBody>,
    ctx: &RequestCtx,
) -> Response<ProxyBody> {
    let (parts, body) = response.into_parts();
    let (tee, copied) = TeeBody::new(body, policy.max_body_bytes);
    let path_and_query = match (&policy.path, head.path_and_query.split_once('?')) {
        (Some(path), Some((_, query))) => format!("{path}?{query}"),
        (Some(path), None) => path.to_string(),
        (None, _) => head.path_and_query,
    };
    let is_queued = mirror.submit(ShadowJob {
        route: route.name.clone(),
        request_id: ctx.request_id.to_str().unwrap_or("").to_string(),
        method: head.method,
        path_and_query,
        headers: head.headers,
        body: request_body,
        candidate: snapshot.backend(policy.backend).upstream.clone(),
        secondary: policy
            .secondary
            .map(|id| snapshot.backend(id).upstream.clone()),
        rules: policy.rules.clone(),
        max_body_bytes: policy.max_body_bytes,
        primary: PrimaryAnswer {
            status: parts.status.as_u16(),
            headers: parts.headers.clone(),
            latency: ctx.started.elapsed(),
            body: copied,
        },
    });
    if !is_queued {
        route.metrics.count_shadow_dropped();
    }
    Response::from_parts(parts, boxed(tee))
}

/// Method, path and headers as the backend will see them.
fn upstream_head(
    snapshot: &Snapshot,
    decision: &Decision,
    parts: &mut http::request::Parts,
    path: &str,
    host: Option<&HeaderValue>,
    ctx: &RequestCtx,
    is_upgrade: bool,
) -> UpstreamHead {
    let route = decision.route;
    let has_idempotency_key = parts.headers.contains_key(&route.idempotency_header);
    // Taken, not copied: the client's headers are not needed again.
    let mut headers = std::mem::take(&mut parts.headers);
    // Room for the headers added below (forwarding, request id, trace), in
    // one allocation: a new connection's map is sized to the client's few
    // headers, and grew (and was copied) twice on the way.
    let _ = headers.try_reserve(8);
    headers::remove_hop_by_hop(&mut headers, is_upgrade);
    headers.remove(&headers::X_STRANGLER_SHADOW);
    headers::set_forwarded(
        &mut headers,
        &ForwardedFor {
            client_ip: ctx.client.ip,
            peer: &ctx.conn.peer_headers,
            chain: ctx.client.chain.as_ref(),
            proto: ctx.conn.proto,
            host,
        },
    );
    headers.insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    ctx.trace.apply(&mut headers);
    // Content-Length, when the client sent one: the size is then known
    // without counting bytes as they stream.
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        route.metrics.request_body.observe(length as f64);
    }
    match &route.host_rewrite {
        HostRewrite::PassThrough => {
            if let Some(value) = host {
                headers.insert(header::HOST, value.clone());
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
    let _ = ctx.upstream_started.set(std::time::Instant::now());
    UpstreamHead {
        method: parts.method.clone(),
        path_and_query,
        headers,
        is_upgrade,
        has_idempotency_key,
    }
}

fn upstream_response(
    snapshot: &Snapshot,
    route: &Route,
    backend: BackendId,
    mut response: Response<UpstreamBody>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ctx: &RequestCtx,
) -> Response<ProxyBody> {
    let is_switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (is_switching, client_upgrade) {
        upgrade::tunnel(client_upgrade, &mut response, route.name.clone());
    }
    let idle = snapshot.backend(backend).upstream.timeouts().idle;
    let (mut parts, body) = response.into_parts();
    // The announced length (or a body known to be empty); a chunked body
    // is not counted, which would cost a wrapper on every data frame.
    if let (Some(length), Some(series)) = (body.size_hint().exact(), route.metrics.series(backend))
    {
        series.response_body.observe(length as f64);
    }
    headers::remove_hop_by_hop(&mut parts.headers, is_switching);
    if let Some(via) = &snapshot.server.via {
        parts.headers.append(header::VIA, via.clone());
    }
    route.response_headers.apply(&mut parts.headers);
    parts.headers.insert(
        &headers::X_REQUEST_ID,
        headers::answer_request_id(&ctx.request_id),
    );
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
    let (mut response, error) = match result {
        Ok(response) => (response, None),
        Err(err) => {
            let message = err.to_string();
            (err.into_response(&route.name, ctx), Some(message))
        }
    };
    let status = response.status().as_u16();
    let _ = ctx.backend.set(backend);
    let now = std::time::Instant::now();
    let elapsed = now.saturating_duration_since(ctx.started);
    if snapshot.server.has_server_timing {
        let upstream = ctx
            .upstream_started
            .get()
            .map(|sent| now.saturating_duration_since(*sent));
        let name = snapshot
            .server
            .has_server_timing_backend
            .then(|| &*snapshot.backend(backend).name);
        // Appended: a backend's own Server-Timing entries stay.
        response.headers_mut().append(
            &timing::SERVER_TIMING,
            timing::server_timing(elapsed, upstream, name),
        );
    }
    let is_failure = error.is_some()
        || match &route.migration {
            Some(migration) => migration.is_failure(status),
            None => status >= 500,
        };
    let series = route.metrics.series(backend);
    if let Some(series) = series {
        series.count_request(method, status);
        series.duration.observe(elapsed.as_secs_f64());
        if is_failure {
            series.failures.inc();
        }
    }
    if let (Some(migration), Target::Migration(target)) = (&route.migration, &route.target) {
        let side = if backend == target.to {
            Side::New
        } else {
            Side::Old
        };
        if is_failure || route.failure_fields.is_empty() || !is_json(&response) {
            migration.record(side, is_failure, elapsed);
        } else {
            // The answer's content decides: judge it once it has streamed
            // to the client (a bounded copy), off the client's path.
            let (parts, body) = response.into_parts();
            let (tee, copied) = TeeBody::new(body, FAILURE_BODY_CAP);
            let encoding = parts
                .headers
                .get(http::header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let (fields, migration) = (route.failure_fields.clone(), migration.clone());
            let failures = series.map(|s| s.failures.clone());
            tokio::spawn(async move {
                let fails = match copied.await {
                    Ok(Copied::Complete(bytes)) => body_fails(&fields, &bytes, encoding.as_deref()),
                    _ => false,
                };
                if let (true, Some(failures)) = (fails, failures) {
                    failures.inc();
                }
                migration.record(side, fails, elapsed);
            });
            response = Response::from_parts(parts, boxed(tee));
        }
    }
    if access::enabled() {
        AccessLine {
            request_id: ctx.request_id.to_str().unwrap_or(""),
            trace_id: ctx.trace.trace_id(),
            span_id: Some(ctx.trace.span_id()),
            client: Some(ctx.client.ip),
            method: method.as_str(),
            route: Some(&route.name),
            backend: Some(&snapshot.backend(backend).name),
            status: Some(status),
            duration: Some(elapsed),
            error: error.as_deref(),
            ..AccessLine::default()
        }
        .write();
    }
    response
}

fn is_json(response: &Response<ProxyBody>) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json") || t.contains("+json"))
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

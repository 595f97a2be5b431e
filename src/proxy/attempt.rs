//! Sending a request to its backend, and again elsewhere when that is safe:
//! circuit breaking, health, retries within the backend's budget, and the
//! route's fallback.
//!
//! A request is sent a second time only when that cannot run a side effect
//! twice: the first backend never saw it (refused connection, open
//! circuit), or the method is idempotent, or the client sent an
//! idempotency key, or the route opts in. Its body must also still be
//! whole: a body is never buffered for this, so only one that was not read
//! at all (or is empty) can be sent again.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};

use super::forward::UpstreamHead;
use super::ProxyError;
use crate::body::{boxed, reclaimable, BodyTooLarge, ProxyBody};
use crate::routing::{BackendId, HostRewrite, Route, Snapshot};
use crate::upstream::{UpstreamBody, UpstreamError};

/// What to do after an attempt.
enum Next {
    Done,
    RetrySame,
    Fallback(BackendId),
}

/// Sends the request, retrying or falling back as allowed. Returns the
/// backend that gave the final answer.
pub(super) async fn exchange(
    snapshot: &Snapshot,
    route: &Route,
    primary: BackendId,
    head: &UpstreamHead,
    body: ProxyBody,
) -> (BackendId, Result<Response<UpstreamBody>, ProxyError>) {
    let mut backend = primary;
    let mut body = Some(body);
    let mut has_retried = false;
    let mut has_fallen_back = false;
    loop {
        let upstream = &snapshot.backend(backend).upstream;
        let Some(current) = body.take() else {
            // Unreachable by construction: a next attempt is only chosen
            // when the body was reclaimed.
            let err = UpstreamError::CircuitOpen {
                backend: upstream.name.clone(),
            };
            return (backend, Err(ProxyError::Upstream(err)));
        };
        let outcome = if upstream.admits() {
            // Only original requests earn retries; a retry earning more
            // would let retries feed themselves.
            if !has_retried {
                upstream.budget.deposit();
            }
            let (wrapped, reclaim) = reclaimable(current);
            // Boxed: the exchange's future (pool, timeout, hyper's send) is
            // most of a request's state; inline, every enclosing future
            // would carry it and be copied with it.
            let outcome = Box::pin(send(snapshot, route, backend, head, boxed(wrapped))).await;
            match &outcome {
                Ok(response) if is_gateway_failure(response.status()) => {
                    upstream.breaker.on_failure()
                }
                Ok(_) => upstream.breaker.on_success(),
                Err(ProxyError::Upstream(_)) => upstream.breaker.on_failure(),
                Err(_) => {}
            }
            body = reclaim.take_untouched();
            outcome
        } else {
            body = Some(current);
            Err(ProxyError::Upstream(UpstreamError::CircuitOpen {
                backend: upstream.name.clone(),
            }))
        };
        let can_resend = body.is_some() && !head.is_upgrade;
        match next_step(
            route,
            backend,
            head,
            &outcome,
            can_resend,
            has_retried,
            has_fallen_back,
        ) {
            Next::Done => return (backend, outcome),
            Next::RetrySame => {
                if !upstream.budget.try_withdraw() {
                    tracing::debug!(route = %route.name, backend = %upstream.name, "retry budget exhausted");
                    return (backend, outcome);
                }
                if let Some(series) = route.metrics.series(backend) {
                    series.retries.inc();
                }
                has_retried = true;
            }
            Next::Fallback(fallback) => {
                route
                    .metrics
                    .count_fallback(&upstream.name, &snapshot.backend(fallback).name);
                backend = fallback;
                has_fallen_back = true;
            }
        }
    }
}

fn is_gateway_failure(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

#[allow(clippy::too_many_arguments)]
fn next_step(
    route: &Route,
    tried: BackendId,
    head: &UpstreamHead,
    outcome: &Result<Response<UpstreamBody>, ProxyError>,
    can_resend: bool,
    has_retried: bool,
    has_fallen_back: bool,
) -> Next {
    let (reached, is_retryable_error) = match outcome {
        Ok(response) if is_gateway_failure(response.status()) => (true, false),
        Ok(_) => return Next::Done,
        Err(ProxyError::Upstream(err)) => (
            err.may_have_reached_backend(),
            matches!(
                err,
                UpstreamError::Connect { .. } | UpstreamError::Reset { .. }
            ),
        ),
        Err(_) => return Next::Done,
    };
    let is_idempotent = matches!(
        head.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || head.has_idempotency_key;
    let is_safe = !reached || is_idempotent || route.retry_non_idempotent;
    if !can_resend || !is_safe || has_fallen_back {
        return Next::Done;
    }
    match route.fallback.filter(|f| *f != tried) {
        Some(fallback) => Next::Fallback(fallback),
        None if is_retryable_error && !has_retried => Next::RetrySame,
        None => Next::Done,
    }
}

async fn send(
    snapshot: &Snapshot,
    route: &Route,
    backend: BackendId,
    head: &UpstreamHead,
    body: ProxyBody,
) -> Result<Response<UpstreamBody>, ProxyError> {
    let upstream = &snapshot.backend(backend).upstream;
    let uri: Uri = upstream
        .uri_for(&head.path_and_query)
        .map_err(ProxyError::UpstreamRequest)?;
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
            Ok(_) => series
                .upstream_duration
                .observe(started.elapsed().as_secs_f64()),
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

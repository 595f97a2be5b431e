//! The proxy's own errors and the one place that turns them into responses.
//!
//! The outer service never returns `Err` to hyper (hyper would close the
//! connection without an answer); every failure becomes a JSON body with a
//! stable `error` code, the route, the request id and the trace id.

use http::{header, HeaderValue, Response, StatusCode};

use super::framing::FramingError;
use super::path::PathError;
use super::RequestCtx;
use crate::body::{full, ProxyBody};
use crate::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),

    #[error("request body over the route's limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },

    #[error("bad request path")]
    BadPath(#[from] PathError),

    #[error("the request has no valid Host")]
    BadHost,

    #[error("refused request framing")]
    Framing(#[from] FramingError),

    #[error("could not build the upstream request")]
    UpstreamRequest(#[source] http::Error),
}

impl ProxyError {
    /// Status and stable code the client sees.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            // The backend refused or broke the exchange: a bad gateway.
            ProxyError::Upstream(UpstreamError::Connect { .. }) => {
                (StatusCode::BAD_GATEWAY, "upstream_unavailable")
            }
            ProxyError::Upstream(UpstreamError::Reset { .. }) => {
                (StatusCode::BAD_GATEWAY, "upstream_reset")
            }
            ProxyError::Upstream(UpstreamError::Tls { .. }) => {
                (StatusCode::BAD_GATEWAY, "upstream_tls")
            }
            ProxyError::Upstream(UpstreamError::Protocol { .. }) => {
                (StatusCode::BAD_GATEWAY, "upstream_protocol")
            }
            // Slow, not dead: the gateway timed out.
            ProxyError::Upstream(UpstreamError::Timeout { .. }) => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
            }
            // We chose not to try: the backend is known to be failing.
            ProxyError::Upstream(UpstreamError::CircuitOpen { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "circuit_open")
            }
            ProxyError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ProxyError::BadPath(_) => (StatusCode::BAD_REQUEST, "bad_path"),
            ProxyError::BadHost => (StatusCode::BAD_REQUEST, "bad_host"),
            // Not a forward proxy: no tunnel to anywhere.
            ProxyError::Framing(FramingError::Connect) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ProxyError::Framing(FramingError::TooManyHeaders(_)) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
            ProxyError::Framing(FramingError::TargetTooLong) => {
                (StatusCode::URI_TOO_LONG, "uri_too_long")
            }
            ProxyError::Framing(FramingError::UnderscoreInName(_)) => {
                (StatusCode::BAD_REQUEST, "bad_header_name")
            }
            // Ambiguous framing: a desync attempt or a broken client.
            ProxyError::Framing(_) => (StatusCode::BAD_REQUEST, "bad_framing"),
            ProxyError::UpstreamRequest(_) => (StatusCode::BAD_GATEWAY, "bad_upstream_request"),
        }
    }

    pub(crate) fn into_response(self, route: &str, ctx: &RequestCtx) -> Response<ProxyBody> {
        let (status, code) = self.status_and_code();
        json_error(status, code, route, &ctx.request_id, ctx.trace.trace_id())
    }
}

/// `{"error":CODE,"route":ROUTE,"request_id":ID,"trace_id":TRACE}` with
/// `status`. The trace id lets a person go from an error a client reported
/// to the access log line and the backends' traces.
pub fn json_error(
    status: StatusCode,
    code: &str,
    route: &str,
    request_id: &HeaderValue,
    trace_id: &str,
) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": code,
        "route": route,
        "request_id": request_id.to_str().unwrap_or(""),
        "trace_id": trace_id,
    });
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        super::headers::X_REQUEST_ID.clone(),
        super::headers::answer_request_id(request_id),
    );
    response
}

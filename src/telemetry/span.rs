//! The proxy's server span of one request: started when the request
//! arrives, given its route, backend and status with the response head,
//! and ended (queued for export) when the response body ends or is dropped.
//!
//! Built only for sampled traces with `server.tracing` on. Its ids are the
//! request's `TraceContext`: the span id is the parent id the backend gets
//! in `traceparent`, so the backend's spans nest under it, and its parent
//! is the client's span. Attributes follow the OpenTelemetry HTTP semantic
//! conventions; `http.route` is the strangler route's name.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, Method, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::Spans;
use crate::body::{boxed, BoxError, ProxyBody};
use crate::proxy::RequestCtx;

/// A span between the request's arrival and the end of its response.
pub(crate) struct PendingSpan {
    spans: Spans,
    /// `GET`, …, or `HTTP` for a method outside the semantic conventions'
    /// list: the first word of the span name.
    method: &'static str,
    data: SpanData,
}

impl PendingSpan {
    /// The span of the request `ctx` describes, or `None` when its trace is
    /// not sampled.
    pub(crate) fn start<B>(spans: &Spans, ctx: &RequestCtx, req: &Request<B>) -> Option<Self> {
        let trace = &ctx.trace;
        if !trace.is_sampled() {
            return None;
        }
        let trace_id = TraceId::from_hex(trace.trace_id()).ok()?;
        let span_id = SpanId::from_hex(trace.span_id()).ok()?;
        let parent = trace.parent_span_id();
        let parent_span_id = parent
            .and_then(|id| SpanId::from_hex(id).ok())
            .unwrap_or(SpanId::INVALID);

        let mut attributes = Vec::with_capacity(14);
        let method = match known_method(req.method()) {
            Some(method) => {
                attributes.push(KeyValue::new("http.request.method", method));
                method
            }
            None => {
                attributes.push(KeyValue::new("http.request.method", "_OTHER"));
                attributes.push(KeyValue::new(
                    "http.request.method_original",
                    req.method().as_str().to_owned(),
                ));
                "HTTP"
            }
        };
        attributes.push(KeyValue::new("url.path", req.uri().path().to_owned()));
        attributes.push(KeyValue::new("url.scheme", ctx.conn.proto));
        if let Some(authority) = authority(req) {
            let host = authority.host();
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            attributes.push(KeyValue::new("server.address", host.to_owned()));
            if let Some(port) = authority.port_u16() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        attributes.push(KeyValue::new("client.address", ctx.client.ip.to_string()));
        attributes.push(KeyValue::new(
            "network.protocol.version",
            protocol_version(req.version()),
        ));
        if let Some(agent) = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
        }
        if let Ok(request_id) = ctx.request_id.to_str() {
            attributes.push(KeyValue::new("strangler.request_id", request_id.to_owned()));
        }

        let now = SystemTime::now();
        Some(PendingSpan {
            spans: spans.clone(),
            method,
            data: SpanData {
                span_context: SpanContext::new(
                    trace_id,
                    span_id,
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::NONE,
                ),
                parent_span_id,
                parent_span_is_remote: parent.is_some(),
                span_kind: SpanKind::Server,
                name: Cow::Borrowed(method),
                start_time: now,
                end_time: now,
                attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::Unset,
                instrumentation_scope: spans.scope().clone(),
            },
        })
    }

    /// Records what the response head says, and ends the span when the
    /// body has been sent (or dropped). `route` is `None` for a request
    /// refused before routing; `backend` for one no backend answered.
    pub(crate) fn finish(
        mut self,
        response: Response<ProxyBody>,
        route: Option<&str>,
        backend: Option<&str>,
    ) -> Response<ProxyBody> {
        let status = response.status().as_u16();
        let attributes = &mut self.data.attributes;
        if let Some(route) = route {
            self.data.name = Cow::Owned(format!("{} {route}", self.method));
            attributes.push(KeyValue::new("http.route", route.to_owned()));
        }
        if let Some(backend) = backend {
            attributes.push(KeyValue::new("strangler.backend", backend.to_owned()));
        }
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        // A 4xx is the client's error, not the server span's (semantic
        // conventions, HTTP server spans).
        if status >= 500 {
            attributes.push(KeyValue::new("error.type", status.to_string()));
            self.data.status = Status::error("");
        }
        response.map(|body| {
            boxed(SpanBody {
                inner: body,
                span: Some(self),
            })
        })
    }

    fn end(mut self, body_error: Option<&BoxError>) {
        if let (Some(err), false) = (body_error, matches!(self.data.status, Status::Error { .. })) {
            self.data
                .attributes
                .push(KeyValue::new("error.type", "response_body"));
            self.data.status = Status::error(err.to_string());
        }
        self.data.end_time = SystemTime::now();
        self.spans.submit(self.data);
    }
}

/// The response body, which ends the span when it ends.
struct SpanBody {
    inner: ProxyBody,
    span: Option<PendingSpan>,
}

impl Body for SpanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.end(None),
            Poll::Ready(Some(Err(err))) => self.end(Some(err)),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl SpanBody {
    fn end(&mut self, body_error: Option<&BoxError>) {
        if let Some(span) = self.span.take() {
            span.end(body_error);
        }
    }
}

// The client went away, or the body was never polled (HEAD, 204, an
// upgrade): the span ends here.
impl Drop for SpanBody {
    fn drop(&mut self) {
        self.end(None);
    }
}

/// The methods the HTTP semantic conventions name; others are `_OTHER`.
fn known_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => return None,
    })
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The authority the client addressed: the URI's (HTTP/2, absolute form)
/// or the `Host` header's.
fn authority<B>(req: &Request<B>) -> Option<http::uri::Authority> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.clone());
    }
    req.headers().get(header::HOST)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_conventions_are_other() {
        assert_eq!(known_method(&Method::PATCH), Some("PATCH"));
        let purge = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(known_method(&purge), None);
    }

    #[test]
    fn authority_comes_from_the_uri_or_the_host_header() {
        let req = Request::get("http://shop.test:8080/x").body(()).unwrap();
        let found = authority(&req).unwrap();
        assert_eq!((found.host(), found.port_u16()), ("shop.test", Some(8080)));
        let req = Request::get("/x")
            .header("host", "[::1]:81")
            .body(())
            .unwrap();
        assert_eq!(authority(&req).unwrap().host(), "[::1]");
        let req = Request::get("/x")
            .header("host", "bad host")
            .body(())
            .unwrap();
        assert!(authority(&req).is_none());
    }
}

//! `server.tracing`: every sampled request is exported to an OTLP/HTTP
//! collector as one server span whose ids are those the backend saw in
//! `traceparent`, and a dead collector never costs a request anything.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use support::{dead_url, routes_file, Behaviour, FakeBackend, TestProxy, PATIENCE};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// === a test collector ===

/// One span as the collector received it, with what came around it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    content_type: Option<String>,
    service_name: Option<String>,
    span: Span,
}

/// An OTLP/HTTP receiver on loopback: decodes every `POST` as an
/// `ExportTraceServiceRequest` and hands its spans to the test.
struct Collector {
    addr: SocketAddr,
    spans: mpsc::UnboundedReceiver<Received>,
    /// Every span received so far, in order.
    seen: Vec<Received>,
    _stop: oneshot::Sender<()>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound socket has an address");
        let (sender, spans) = mpsc::unbounded_channel();
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let sender = sender.clone();
                let service = hyper::service::service_fn(move |req| receive(req, sender.clone()));
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector {
            addr,
            spans,
            seen: Vec::new(),
            _stop: stop,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Waits for the span of trace `trace_id` (hex); fails the test after
    /// `PATIENCE`.
    async fn span_of(&mut self, trace_id: &str) -> Received {
        let wanted = hex(trace_id);
        if let Some(found) = self.seen.iter().find(|r| r.span.trace_id == wanted) {
            return found.clone();
        }
        let wait = async {
            while let Some(received) = self.spans.recv().await {
                self.seen.push(received.clone());
                if received.span.trace_id == wanted {
                    return received;
                }
            }
            panic!("the collector stopped");
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("no span of trace {trace_id} was exported"))
    }

    fn has_seen(&self, trace_id: &str) -> bool {
        let wanted = hex(trace_id);
        self.seen.iter().any(|r| r.span.trace_id == wanted)
    }
}

async fn receive(
    req: Request<Incoming>,
    spans: mpsc::UnboundedSender<Received>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Ok(body) = req.into_body().collect().await else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let Ok(export) = ExportTraceServiceRequest::decode(body.to_bytes()) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    for resource_spans in export.resource_spans {
        let service_name = resource_spans
            .resource
            .as_ref()
            .and_then(|r| string_attribute(&r.attributes, "service.name"));
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let _ = spans.send(Received {
                    path: path.clone(),
                    content_type: content_type.clone(),
                    service_name: service_name.clone(),
                    span,
                });
            }
        }
    }
    let mut response = status(StatusCode::OK);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(response)
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

// === reading spans ===

fn hex(digits: &str) -> Vec<u8> {
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digits"))
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int_attribute(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key)? {
        Value::IntValue(n) => Some(*n),
        _ => None,
    }
}

/// Trace id and parent id of the `traceparent` the backend last received.
fn backend_traceparent(backend: &FakeBackend) -> (String, String, String) {
    let seen = backend.last_request();
    let value = seen
        .header("traceparent")
        .expect("traceparent sent upstream");
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?}");
    (
        parts[1].to_string(),
        parts[2].to_string(),
        parts[3].to_string(),
    )
}

/// Routes `/api/orders` to `orders`, everything else to `monolith`, and
/// `/gone` to a backend nobody listens on; exports to `endpoint`.
async fn proxy_exporting_to(endpoint: &str, tracing_extra: &str) -> (TestProxy, FakeBackend) {
    let backend = FakeBackend::with(Behaviour::Echo).await;
    let gone = dead_url().await;
    let routes = r#"
  - name: orders-read
    match: { prefix: "/api/orders" }
    backend: orders
  - name: gone
    match: { prefix: "/gone" }
    backend: gone
"#;
    let yaml = format!(
        "server:\n  tracing:\n    otlp_endpoint: \"{endpoint}\"\n    service_name: edge-test\n    batch_delay: 20ms\n{tracing_extra}{}",
        routes_file(
            &[
                ("monolith", &backend.url()),
                ("orders", &backend.url()),
                ("gone", &gone)
            ],
            routes
        )
    );
    (TestProxy::start(&yaml).await, backend)
}

// === tests ===

/// A continued trace is exported as one SERVER span with the trace id and
/// span id the backend got in `traceparent` (so the backend's spans nest
/// under it), the client's span as parent, and the HTTP attributes.
#[tokio::test]
async fn exported_span_has_the_ids_the_backend_saw_and_the_clients_parent() {
    let mut collector = Collector::start().await;
    let (proxy, backend) = proxy_exporting_to(&collector.endpoint(), "").await;

    let reply = proxy
        .get_with("/api/orders/7?full=1", &[("traceparent", PARENT)])
        .await;
    assert_eq!(reply.status, 200);
    let (trace_id, proxy_span, _) = backend_traceparent(&backend);
    assert_eq!(trace_id, CLIENT_TRACE);

    let received = collector.span_of(CLIENT_TRACE).await;
    assert_eq!(received.path, "/v1/traces");
    assert_eq!(
        received.content_type.as_deref(),
        Some("application/x-protobuf")
    );
    assert_eq!(received.service_name.as_deref(), Some("edge-test"));
    let span = &received.span;
    assert_eq!(to_hex(&span.span_id), proxy_span);
    assert_eq!(to_hex(&span.parent_span_id), CLIENT_SPAN);
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(span.name, "GET orders-read");
    assert!(span.start_time_unix_nano > 0);
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    let attributes = &span.attributes;
    let text = |key| string_attribute(attributes, key);
    assert_eq!(text("http.route").as_deref(), Some("orders-read"));
    assert_eq!(text("http.request.method").as_deref(), Some("GET"));
    assert_eq!(text("url.path").as_deref(), Some("/api/orders/7"));
    assert_eq!(text("url.scheme").as_deref(), Some("http"));
    assert_eq!(text("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(text("strangler.backend").as_deref(), Some("orders"));
    assert_eq!(
        text("strangler.request_id").as_deref(),
        reply.header("x-request-id")
    );
    assert_eq!(
        int_attribute(attributes, "http.response.status_code"),
        Some(200)
    );
    assert_eq!(text("error.type"), None);
    assert_ne!(
        span.status.as_ref().map(|s| s.code),
        Some(SpanStatus::Error as i32)
    );
}

/// A trace the proxy starts is exported as a root span with the ids the
/// backend saw; a 5xx answer is an error span; a client's unsampled trace
/// is not exported.
#[tokio::test]
async fn new_traces_errors_and_unsampled_parents() {
    let mut collector = Collector::start().await;
    let (proxy, backend) = proxy_exporting_to(&collector.endpoint(), "").await;

    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let unsampled = format!("00-{unsampled_trace}-b7ad6b7169203331-00");
    let reply = proxy.get_with("/", &[("traceparent", &unsampled)]).await;
    assert_eq!(reply.status, 200);
    let (_, _, flags) = backend_traceparent(&backend);
    assert_eq!(flags, "00", "the client's decision is passed on");

    assert_eq!(proxy.get("/").await.status, 200);
    let (new_trace, proxy_span, flags) = backend_traceparent(&backend);
    assert_eq!(flags, "01");
    let root = collector.span_of(&new_trace).await.span;
    assert_eq!(to_hex(&root.span_id), proxy_span);
    assert!(root.parent_span_id.is_empty(), "a root span has no parent");
    assert_eq!(root.name, "GET default");
    assert_eq!(
        string_attribute(&root.attributes, "http.route").as_deref(),
        Some("default")
    );
    assert_eq!(
        string_attribute(&root.attributes, "strangler.backend").as_deref(),
        Some("monolith")
    );

    let reply = proxy.get("/gone/1").await;
    assert_eq!(reply.status, 502);
    let trace_id = reply.json()["trace_id"]
        .as_str()
        .expect("trace id in the error body")
        .to_string();
    let failed = collector.span_of(&trace_id).await.span;
    assert_eq!(
        int_attribute(&failed.attributes, "http.response.status_code"),
        Some(502)
    );
    assert_eq!(
        string_attribute(&failed.attributes, "error.type").as_deref(),
        Some("502")
    );
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(SpanStatus::Error as i32)
    );
    assert_eq!(
        string_attribute(&failed.attributes, "http.route").as_deref(),
        Some("gone")
    );

    // Spans leave in the order their requests finished, and the unsampled
    // request finished first: had it been exported, it would be here.
    assert!(
        !collector.has_seen(unsampled_trace),
        "an unsampled trace was exported"
    );
}

/// `sample_ratio: 0` samples none of the traces the proxy starts (the
/// backend sees the flag cleared) but still follows a client's sampled
/// parent.
#[tokio::test]
async fn sample_ratio_applies_to_the_traces_the_proxy_starts() {
    let mut collector = Collector::start().await;
    let (proxy, backend) = proxy_exporting_to(&collector.endpoint(), "    sample_ratio: 0\n").await;

    assert_eq!(proxy.get("/").await.status, 200);
    let (dropped_trace, _, flags) = backend_traceparent(&backend);
    assert_eq!(flags, "00", "a trace the proxy did not sample");

    assert_eq!(
        proxy.get_with("/", &[("traceparent", PARENT)]).await.status,
        200
    );
    let span = collector.span_of(CLIENT_TRACE).await.span;
    assert_eq!(to_hex(&span.parent_span_id), CLIENT_SPAN);
    assert!(!collector.has_seen(&dropped_trace));
}

/// With nothing listening at the collector's address, every request still
/// gets its answer, and shutdown (which flushes the queue) still finishes.
#[tokio::test]
async fn a_dead_collector_never_fails_a_request() {
    let endpoint = format!("{}/v1/traces", dead_url().await);
    let extra = "    export_timeout: 1s\n    max_queue: 4\n    max_batch: 2\n";
    let (proxy, _backend) = proxy_exporting_to(&endpoint, extra).await;

    let client = proxy.client();
    let requests = (0..40).map(|i| {
        let client = client.clone();
        async move {
            let path = format!("/api/orders/{i}");
            client.get(&path).await.status
        }
    });
    let statuses = tokio::time::timeout(PATIENCE, futures_util::future::join_all(requests))
        .await
        .expect("requests answered while the collector is dead");
    assert!(
        statuses.iter().all(|s| *s == 200),
        "statuses with a dead collector: {statuses:?}"
    );
    tokio::time::timeout(PATIENCE + Duration::from_secs(5), proxy.shutdown())
        .await
        .expect("shutdown is not held up by the dead collector")
        .expect("the proxy stops cleanly");
}

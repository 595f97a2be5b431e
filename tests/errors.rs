//! Dead, slow and misbehaving backends, fallbacks, body limits and
//! graceful shutdown, over real sockets. The proxy answers each failure
//! with its JSON error and never hangs.

mod support;

use http::{Method, StatusCode};
use support::{
    dead_url, empty, eventually, routes_file, Behaviour, FakeBackend, RepeatBody, Reply, TestProxy,
    PATIENCE,
};

/// Asserts the proxy's JSON error: status, code, route and a request id
/// equal to the `X-Request-Id` of the answer.
fn assert_proxy_error(reply: &Reply, status: u16, code: &str, route: &str) {
    assert_eq!(reply.status, status, "body: {}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let json = reply.json();
    assert_eq!(json["error"], code);
    assert_eq!(json["route"], route);
    let id = json["request_id"].as_str().expect("request_id is a string");
    assert!(!id.is_empty());
    assert_eq!(reply.header("x-request-id"), Some(id));
}

/// A backend that refuses connections gives 502 `upstream_unavailable`
/// with the route and request id.
#[tokio::test]
async fn dead_backend_gives_502_upstream_unavailable() {
    let monolith = FakeBackend::start("monolith").await;
    let dead = dead_url().await;
    let routes = r#"
  - name: orders-read
    match: { prefix: "/api/orders" }
    backend: orders
"#;
    let proxy = TestProxy::start(&routes_file(
        &[("monolith", &monolith.url()), ("orders", &dead)],
        routes,
    ))
    .await;

    let reply = proxy.get("/api/orders/7").await;

    assert_proxy_error(&reply, 502, "upstream_unavailable", "orders-read");
    assert_eq!(monolith.hits(), 0);
}

/// A backend that does not answer within its `timeout` gives 504 `upstream_timeout`.
#[tokio::test]
async fn hanging_backend_gives_504_upstream_timeout() {
    let monolith = FakeBackend::start("monolith").await;
    let slow = FakeBackend::with(Behaviour::Delay(std::time::Duration::from_secs(60))).await;
    let yaml = format!(
        r#"backends:
  monolith: {{ url: "{}" }}
  slow: {{ url: "{}", timeout: 200ms }}
default: monolith
routes:
  - name: reports
    match: {{ prefix: "/reports" }}
    backend: slow
"#,
        monolith.url(),
        slow.url()
    );
    let proxy = TestProxy::start(&yaml).await;

    let reply = tokio::time::timeout(PATIENCE, proxy.get("/reports/daily"))
        .await
        .expect("the proxy answers");

    assert_proxy_error(&reply, 504, "upstream_timeout", "reports");
    assert_eq!(slow.hits(), 1);
}

/// A backend that closes the connection halfway through its body leaves the
/// client with an error or a 502, never a complete-looking answer or a hang.
#[tokio::test]
async fn backend_closing_mid_response_never_looks_complete() {
    let broken = FakeBackend::with(Behaviour::Truncate).await;
    let proxy = TestProxy::start(&routes_file(&[("monolith", &broken.url())], "")).await;
    let client = proxy.client();

    let request = client.request(Method::GET, "/big").body(empty()).unwrap();
    let outcome = tokio::time::timeout(PATIENCE, client.try_send(request))
        .await
        .expect("the client is not left hanging");

    match outcome {
        Err(_) => {}
        Ok(reply) => assert_eq!(
            reply.status,
            502,
            "a truncated body passed as complete: {} bytes",
            reply.body.len()
        ),
    }
    assert_eq!(broken.hits(), 1);
}

/// A backend that closes each connection without answering gives a 502.
#[tokio::test]
async fn backend_closing_before_answering_gives_502() {
    let closing = FakeBackend::with(Behaviour::Close).await;
    let proxy = TestProxy::start(&routes_file(&[("monolith", &closing.url())], "")).await;

    let reply = tokio::time::timeout(PATIENCE, proxy.get("/p"))
        .await
        .expect("the proxy answers");

    assert_eq!(
        reply.status,
        StatusCode::BAD_GATEWAY,
        "body: {}",
        reply.text()
    );
    assert!(reply.json()["error"]
        .as_str()
        .is_some_and(|code| code.starts_with("upstream_")));
    assert!(closing.connections() >= 1);
}

const FALLBACK_ROUTES: &str = r#"
  - name: orders
    match: { prefix: "/api/orders" }
    backend: orders
    fallback: monolith
"#;

/// A GET whose primary is dead is answered by the fallback (the monolith).
#[tokio::test]
async fn get_falls_back_to_the_monolith_when_the_primary_is_dead() {
    let monolith = FakeBackend::start("monolith").await;
    let dead = dead_url().await;
    let proxy = TestProxy::start(&routes_file(
        &[("monolith", &monolith.url()), ("orders", &dead)],
        FALLBACK_ROUTES,
    ))
    .await;

    let reply = proxy.get("/api/orders/7").await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "monolith");
    assert_eq!(monolith.hits(), 1);
}

/// A POST whose primary refused the connection (so never saw it) is
/// answered by the fallback.
#[tokio::test]
async fn post_to_a_refusing_primary_is_answered_by_the_fallback() {
    let monolith = FakeBackend::with(Behaviour::Echo).await;
    let dead = dead_url().await;
    let proxy = TestProxy::start(&routes_file(
        &[("monolith", &monolith.url()), ("orders", &dead)],
        FALLBACK_ROUTES,
    ))
    .await;
    let client = proxy.client();

    let post = client
        .request(Method::POST, "/api/orders/7/cancel")
        .body(empty())
        .unwrap();
    let reply = client.send(post).await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["method"], "POST");
    assert_eq!(monolith.hits(), 1);
    assert_eq!(monolith.last_request().path, "/api/orders/7/cancel");
}

/// A POST that reached the primary, which answered 503, is not sent again
/// to the fallback: the client gets the 503.
#[tokio::test]
async fn post_answered_503_is_not_resent_to_the_fallback() {
    let monolith = FakeBackend::start("monolith").await;
    let orders = FakeBackend::with(Behaviour::Status(503, "busy")).await;
    let proxy = TestProxy::start(&routes_file(
        &[("monolith", &monolith.url()), ("orders", &orders.url())],
        FALLBACK_ROUTES,
    ))
    .await;
    let client = proxy.client();

    let post = client
        .request(Method::POST, "/api/orders")
        .body(empty())
        .unwrap();
    let reply = client.send(post).await;

    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "busy");
    assert_eq!(orders.hits(), 1);
    assert_eq!(monolith.hits(), 0);
}

const LIMITED_ROUTES: &str = r#"
  - name: uploads
    match: { prefix: "/upload" }
    backend: uploads
    max_body: 1KiB
"#;

/// A body whose `Content-Length` is over the route's `max_body` gets 413
/// `body_too_large`, and the backend never sees the request.
#[tokio::test]
async fn declared_body_over_max_body_gives_413() {
    let monolith = FakeBackend::start("monolith").await;
    let uploads = FakeBackend::with(Behaviour::CountUpload).await;
    let proxy = TestProxy::start(&routes_file(
        &[("monolith", &monolith.url()), ("uploads", &uploads.url())],
        LIMITED_ROUTES,
    ))
    .await;
    let client = proxy.client();

    let post = client
        .request(Method::POST, "/upload")
        .body(RepeatBody::new(4096).boxed())
        .unwrap();
    let reply = client.send(post).await;

    assert_proxy_error(&reply, 413, "body_too_large", "uploads");
    assert_eq!(uploads.hits(), 0);
    let small = client
        .request(Method::POST, "/upload")
        .body(RepeatBody::new(1024).boxed())
        .unwrap();
    assert_eq!(client.send(small).await.text(), "1024");
}

/// A chunked body (no `Content-Length`) that grows over `max_body` also gets
/// 413 `body_too_large`, and the backend never receives more than the limit.
#[tokio::test]
async fn streamed_body_over_max_body_gives_413() {
    let monolith = FakeBackend::start("monolith").await;
    let uploads = FakeBackend::with(Behaviour::CountUpload).await;
    let proxy = TestProxy::start(&routes_file(
        &[("monolith", &monolith.url()), ("uploads", &uploads.url())],
        LIMITED_ROUTES,
    ))
    .await;
    let client = proxy.client();

    let post = client
        .request(Method::POST, "/upload")
        .body(RepeatBody::new(256 * 1024).chunked().boxed())
        .unwrap();
    let outcome = tokio::time::timeout(PATIENCE, client.try_send(post))
        .await
        .expect("the proxy answers");

    let reply = outcome.expect("the client gets an answer");
    assert_proxy_error(&reply, 413, "body_too_large", "uploads");
    assert!(
        uploads.uploaded() <= 1024,
        "the backend received {} bytes",
        uploads.uploaded()
    );
}

/// On shutdown the proxy stops accepting, lets a request in flight finish
/// with its 200, then returns.
#[tokio::test]
async fn shutdown_drains_an_in_flight_request() {
    let slow = FakeBackend::with(Behaviour::Hold).await;
    let proxy = TestProxy::start(&routes_file(&[("monolith", &slow.url())], "")).await;
    let addr = proxy.addr;
    let client = proxy.client();

    let in_flight = tokio::spawn(async move { client.get("/slow").await });
    eventually("the request reaches the backend", || async {
        slow.hits() == 1
    })
    .await;
    let stopping = tokio::spawn(proxy.shutdown());
    eventually("the proxy stops accepting connections", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        !stopping.is_finished(),
        "run returned while a request was in flight"
    );
    slow.release();

    let reply = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the request finishes")
        .expect("no panic");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "released");
    let stopped = tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("the proxy stops after draining");
    assert!(stopped.expect("no panic").is_ok());
}

//! Forwarding done right, over real sockets: header hygiene, the request
//! id, streamed bodies, upgrades, HTTP/2 clients and pooled connections.

mod support;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::{Method, Version};
use http_body_util::BodyExt;
use support::{routes_file, Behaviour, FakeBackend, RepeatBody, RssPeak, TestProxy, PATIENCE};
use tokio_tungstenite::tungstenite::Message;

/// The proxy with a monolith (default) of the given behaviour.
async fn proxy_to(behaviour: Behaviour) -> (TestProxy, FakeBackend) {
    let monolith = FakeBackend::with(behaviour).await;
    let proxy = TestProxy::start(&routes_file(&[("monolith", &monolith.url())], "")).await;
    (proxy, monolith)
}

/// Hop-by-hop headers, and the headers the client names in `Connection`,
/// never reach the backend; end-to-end headers do.
#[tokio::test]
async fn hop_by_hop_headers_are_removed_before_the_backend() {
    let (proxy, backend) = proxy_to(Behaviour::Echo).await;

    let headers = [
        ("connection", "x-session-secret, keep-alive"),
        ("x-session-secret", "s3cr3t"),
        ("keep-alive", "timeout=5"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("proxy-connection", "keep-alive"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
        ("x-end-to-end", "kept"),
    ];
    let reply = proxy.get_with("/p", &headers).await;

    assert_eq!(reply.status, 200);
    let seen = backend.last_request();
    for (name, _) in &headers[..7] {
        assert_eq!(seen.header(name), None, "{name} reached the backend");
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
}

/// Hop-by-hop headers of the backend's answer, and those it names in
/// `Connection`, never reach the client.
#[tokio::test]
async fn hop_by_hop_response_headers_are_removed_before_the_client() {
    let answer_headers = [
        ("connection", "x-backend-hop"),
        ("x-backend-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("x-kept", "1"),
    ];
    let backend = FakeBackend::with_headers(Behaviour::Fixed("ok"), &answer_headers).await;
    let proxy = TestProxy::start(&routes_file(&[("monolith", &backend.url())], "")).await;

    let reply = proxy.get("/p").await;

    assert_eq!(reply.text(), "ok");
    assert_eq!(reply.header("x-backend-hop"), None);
    assert_eq!(reply.header("keep-alive"), None);
    assert_eq!(reply.header("x-kept"), Some("1"));
}

/// `X-Forwarded-For` is rebuilt from the peer address (a client-sent value
/// is replaced), and `X-Forwarded-Proto`, `X-Forwarded-Host` and
/// `Forwarded` are set.
#[tokio::test]
async fn forwarding_headers_are_set_and_spoofed_ones_replaced() {
    let (proxy, backend) = proxy_to(Behaviour::Echo).await;

    let headers = [
        ("host", "shop.example.com"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=6.6.6.6"),
    ];
    proxy.get_with("/p", &headers).await;

    let seen = backend.last_request();
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["shop.example.com"]);
    assert_eq!(
        seen.header_all("forwarded"),
        ["for=127.0.0.1;proto=http;host=\"shop.example.com\""]
    );
}

/// A client's `X-Request-Id` reaches the backend unchanged and comes back
/// in the response.
#[tokio::test]
async fn request_id_is_kept_when_the_client_sends_one() {
    let (proxy, backend) = proxy_to(Behaviour::Echo).await;

    let reply = proxy
        .get_with("/p", &[("x-request-id", "req-abc-123")])
        .await;

    assert_eq!(
        backend.last_request().header_all("x-request-id"),
        ["req-abc-123"]
    );
    assert_eq!(reply.header("x-request-id"), Some("req-abc-123"));
}

/// Without an `X-Request-Id`, the proxy makes one, sends it to the backend
/// and returns the same one to the client; each request gets its own.
#[tokio::test]
async fn request_id_is_generated_when_absent() {
    let (proxy, backend) = proxy_to(Behaviour::Echo).await;

    let first = proxy.get("/p").await;
    let sent = backend
        .last_request()
        .header("x-request-id")
        .map(str::to_string);
    let second = proxy.get("/p").await;

    let id = first
        .header("x-request-id")
        .expect("a generated request id");
    assert!(!id.is_empty());
    assert_eq!(sent.as_deref(), Some(id));
    assert_ne!(second.header("x-request-id"), Some(id));
}

/// A 10 MB body streams through the proxy both ways with every byte
/// delivered, and the process's memory never grows by anything near the
/// body's size: the proxy does not buffer it.
#[tokio::test]
async fn ten_megabyte_bodies_stream_both_ways_without_buffering() {
    const SIZE: u64 = 10 * 1024 * 1024;
    const MAX_GROWTH: u64 = 8 * 1024 * 1024;
    let monolith = FakeBackend::start("monolith").await;
    let upload = FakeBackend::with(Behaviour::CountUpload).await;
    let download = FakeBackend::with(Behaviour::Stream(SIZE)).await;
    let small = FakeBackend::with(Behaviour::Stream(64 * 1024)).await;
    let routes = r#"
  - name: upload
    match: { path: "/upload" }
    backend: upload
  - name: download
    match: { path: "/download" }
    backend: download
  - name: small
    match: { path: "/small" }
    backend: small
"#;
    let backends = [
        ("monolith", monolith.url()),
        ("upload", upload.url()),
        ("download", download.url()),
        ("small", small.url()),
    ];
    let backends: Vec<(&str, &str)> = backends.iter().map(|(n, u)| (*n, u.as_str())).collect();
    let proxy = TestProxy::start(&routes_file(&backends, routes)).await;
    let client = proxy.client();
    // Warm up pools and buffers, so the baseline counts only the big bodies.
    let warm = client
        .request(Method::POST, "/upload")
        .body(RepeatBody::new(64 * 1024).boxed())
        .unwrap();
    assert_eq!(client.send(warm).await.text(), "65536");
    assert_eq!(client.get("/small").await.body.len(), 64 * 1024);

    let peak = Arc::new(RssPeak::now());
    let body = RepeatBody::new(SIZE).probe(peak.clone()).boxed();
    let reply = client
        .send(client.request(Method::POST, "/upload").body(body).unwrap())
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), SIZE.to_string());
    assert_eq!(upload.uploaded(), SIZE);

    let response = client
        .send_streaming(
            client
                .request(Method::GET, "/download")
                .body(support::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the download streams without error");
        received += frame.data_ref().map_or(0, |d| d.len() as u64);
        peak.sample();
    }
    assert_eq!(received, SIZE);

    let growth = peak.growth();
    assert!(
        growth < MAX_GROWTH,
        "resident memory grew by {growth} bytes while 2 x {SIZE} bytes streamed"
    );
}

/// A WebSocket upgrade is tunnelled: messages echo through the proxy both ways.
#[tokio::test]
async fn websocket_echoes_through_the_proxy() {
    let (proxy, backend) = proxy_to(Behaviour::WebSocketEcho).await;

    let stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect to the proxy");
    let url = format!("ws://{}/chat", proxy.addr);
    let (mut socket, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(response.status(), 101);

    let exchange = async {
        socket
            .send(Message::text("hello through the proxy"))
            .await
            .expect("send text");
        let echoed = socket.next().await.expect("an answer").expect("a message");
        assert_eq!(echoed, Message::text("hello through the proxy"));
        socket
            .send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .expect("send binary");
        let echoed = socket.next().await.expect("an answer").expect("a message");
        assert_eq!(echoed, Message::binary(vec![0u8, 1, 2, 255]));
        socket.close(None).await.expect("close");
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("the echo answers");

    let seen = backend.last_request();
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.path, "/chat");
}

/// An HTTP/2 client (prior knowledge) is served by an HTTP/1.1 backend.
#[tokio::test]
async fn http2_client_reaches_http1_backend() {
    let (proxy, backend) = proxy_to(Behaviour::Echo).await;
    let client = proxy.h2_client();

    let reply = client.get("/api/orders/7?x=1").await;
    let post = client
        .request(Method::POST, "/api/orders")
        .body(support::full("{\"item\":1}"))
        .unwrap();
    let posted = client.send(post).await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.json()["path"], "/api/orders/7?x=1");
    assert_eq!(posted.json()["method"], "POST");
    let seen = backend.last_request();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.header("host"), Some(proxy.addr.to_string().as_str()));
}

/// Sequential requests reuse one pooled keep-alive connection to the backend.
#[tokio::test]
async fn sequential_requests_share_one_pooled_backend_connection() {
    let (proxy, backend) = proxy_to(Behaviour::Fixed("pooled")).await;

    for _ in 0..25 {
        assert_eq!(proxy.get("/p").await.text(), "pooled");
    }

    assert_eq!(backend.hits(), 25);
    assert_eq!(backend.connections(), 1);
}

//! Hostile input at the edge, over raw sockets: smuggling and desync
//! attempts, oversized heads, slowloris and the 408 head timeout, idle
//! connections, the connection limit, open-proxy
//! attempts and whom the proxy believes about the client's address.

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the proxy answered to raw bytes, and whether it then closed.
struct RawReply {
    text: String,
    is_closed: bool,
}

impl RawReply {
    fn status(&self) -> u16 {
        self.text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// Writes `bytes` on a new connection and reads until the proxy closes it
/// or `PATIENCE` runs out (then `is_closed` is false).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    stream.write_all(bytes).await.expect("write the request");
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let is_closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    RawReply {
        text: String::from_utf8_lossy(&answer).into_owned(),
        is_closed,
    }
}

/// `strangler_rejected_requests_total{reason}` as the admin API shows it.
async fn rejected(proxy: &TestProxy, reason: &str) -> u64 {
    let text = HttpClient::http1(proxy.admin_addr)
        .get("/metrics")
        .await
        .text()
        .to_string();
    let series = format!("strangler_rejected_requests_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series)?.parse().ok())
        .unwrap_or(u64::MAX)
}

fn edge_routes(backend: &FakeBackend, server: &str) -> String {
    format!(
        "server:\n{server}\n{}",
        routes_file(&[("monolith", &backend.url())], "")
    )
}

/// Every ambiguous or malformed framing gets 400, the connection is
/// closed, and the backend never sees a request.
#[tokio::test]
async fn smuggling_attempts_get_400_and_never_reach_the_backend() {
    let backend = FakeBackend::start("monolith").await;
    let proxy = TestProxy::start(&edge_routes(&backend, "  via: strangler")).await;
    let cases: &[(&str, &[u8])] = &[
        ("Content-Length with Transfer-Encoding", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding before Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"),
        ("duplicate Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
        ("differing Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("non-digit Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc"),
        ("hex Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc"),
        ("Transfer-Encoding gzip, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding not ending in chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n"),
        ("whitespace before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
        ("bare LF in the headers", b"GET / HTTP/1.1\r\nHost: a\nX-B: 2\r\n\r\n"),
        ("bare LF after the request line", b"GET / HTTP/1.1\nHost: a\r\n\r\n"),
        ("bare CR", b"GET / HTTP/1.1\r\nHost: a\rX-B: 2\r\n\r\n"),
        ("NUL in a header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-B: a\0b\r\n\r\n"),
        ("underscore in a header name", b"GET / HTTP/1.1\r\nHost: a\r\nX_User: admin\r\n\r\n"),
        ("body on an upgrade", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello"),
        ("chunked body on an upgrade", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ];
    for (what, bytes) in cases {
        let reply = raw(proxy.addr, bytes).await;
        assert_eq!(reply.status(), 400, "{what}: {:?}", reply.text);
        assert!(reply.is_closed, "{what}: the connection stays open");
        assert_eq!(backend.hits(), 0, "{what}: reached the backend");
    }
    // The same proxy still serves a well-formed request.
    assert_eq!(proxy.get("/").await.text(), "monolith");
    // Each refusal is counted once.
    let expected = cases.len() as u64;
    eventually("every refusal is counted", || async {
        rejected(&proxy, "framing").await == expected
    })
    .await;
}

/// A chunk size that is not hex is never answered with a success, and the
/// connection is closed.
#[tokio::test]
async fn an_invalid_chunk_size_is_not_answered_with_success() {
    let backend = FakeBackend::with(Behaviour::CountUpload).await;
    let proxy = TestProxy::start(&edge_routes(&backend, "  via: strangler")).await;
    let reply = raw(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(reply.is_closed);
    assert!(!reply.text.starts_with("HTTP/1.1 2"), "{:?}", reply.text);
    assert_eq!(
        backend.uploaded(),
        0,
        "no byte of the bad body was forwarded"
    );
}

/// A chunked request is served, then its connection closed: the head
/// check does not follow chunked bodies, so nothing after one is read.
#[tokio::test]
async fn a_chunked_request_is_served_and_its_connection_closed() {
    let backend = FakeBackend::with(Behaviour::CountUpload).await;
    let proxy = TestProxy::start(&edge_routes(&backend, "  via: strangler")).await;
    let reply = raw(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status(), 200, "{:?}", reply.text);
    assert!(
        reply.text.ends_with("\r\n\r\n3"),
        "only the first request was answered: {:?}",
        reply.text
    );
    assert!(reply.is_closed);
    assert_eq!(backend.hits(), 1);
}

/// `CONNECT` and absolute-form targets never open a connection to a host
/// outside the backend table.
#[tokio::test]
async fn connect_and_absolute_form_never_reach_a_host_outside_the_table() {
    let backend = FakeBackend::start("monolith").await;
    let outsider = FakeBackend::start("outsider").await;
    let proxy = TestProxy::start(&edge_routes(&backend, "  via: strangler")).await;
    let target = outsider.addr;

    let connect = raw(
        proxy.addr,
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(connect.status(), 405, "{:?}", connect.text);
    assert!(connect.text.contains("\"error\":\"method_not_allowed\""));

    let absolute = raw(
        proxy.addr,
        format!("GET http://{target}/x HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(absolute.status(), 200, "{:?}", absolute.text);
    assert!(absolute.text.ends_with("monolith"), "{:?}", absolute.text);
    assert_eq!(outsider.hits(), 0);
    assert_eq!(outsider.connections(), 0);
}

/// A head over `max_header_bytes` or with too many headers gets 431, and
/// the proxy goes on serving.
#[tokio::test]
async fn oversized_heads_get_431_and_the_proxy_keeps_serving() {
    let backend = FakeBackend::start("monolith").await;
    let proxy = TestProxy::start(&edge_routes(
        &backend,
        "  max_header_bytes: 16KiB\n  max_headers: 20",
    ))
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(20 * 1024)
    );
    assert_eq!(raw(proxy.addr, big.as_bytes()).await.status(), 431);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw(proxy.addr, many.as_bytes()).await.status(), 431);
    assert_eq!(backend.hits(), 0);
    assert_eq!(proxy.get("/").await.text(), "monolith");
    // HTTP/2 has no hyper-side header count; the proxy checks it.
    let mut req = proxy.h2_client().request(http::Method::GET, "/");
    for i in 0..30 {
        req = req.header(format!("x-h{i}"), "1");
    }
    let reply = proxy
        .h2_client()
        .send(req.body(empty()).expect("request"))
        .await;
    assert_eq!(reply.status, 431);
    eventually("the three refusals are counted", || async {
        rejected(&proxy, "too_large").await == 3
    })
    .await;
}

/// At the default limit (64 KiB), though hyper's read buffer is larger so
/// that bodies are read in large pieces: a head just under the limit is
/// served; one over it, in a header value, a header name or the target,
/// gets 431 and a closed connection; a 1 MiB upload arrives whole.
#[tokio::test]
async fn the_default_head_limit_holds_while_bodies_are_read_in_large_pieces() {
    let backend = FakeBackend::with(Behaviour::CountUpload).await;
    let proxy = TestProxy::start(&routes_file(&[("monolith", &backend.url())], "")).await;
    let head = |target: &str, name: &str, value: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{name}: {value}\r\n\r\n")
    };
    let under = head("/", "X-Big", &"x".repeat(60 * 1024));
    assert_eq!(raw(proxy.addr, under.as_bytes()).await.status(), 200);
    let long = "x".repeat(70 * 1024);
    for (what, over) in [
        ("value", head("/", "X-Big", &long)),
        ("name", head("/", &long, "1")),
        ("target", head(&format!("/{long}"), "X-A", "1")),
    ] {
        let reply = raw(proxy.addr, over.as_bytes()).await;
        assert_eq!(reply.status(), 431, "a long {what}: {:?}", reply.text);
        assert!(reply.is_closed, "a long {what}: the connection is closed");
    }
    assert_eq!(backend.hits(), 1);

    let upload = vec![b'u'; 1024 * 1024];
    let req = proxy
        .client()
        .request(http::Method::POST, "/upload")
        .body(full(upload))
        .expect("request");
    let reply = proxy.client().send(req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "1048576");
}

/// 300 connections that send half a head and hold do not stop a normal
/// request, and the header read timeout answers each 408 and closes it.
#[tokio::test]
async fn slowloris_connections_do_not_stop_normal_traffic() {
    let backend = FakeBackend::start("monolith").await;
    let proxy = TestProxy::start(&edge_routes(&backend, "  header_read_timeout: 1s")).await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            .await
            .expect("write half a head");
        slow.push(stream);
    }
    assert_eq!(proxy.get("/").await.text(), "monolith");
    // Every slow connection is told 408 and closed by the proxy.
    for mut stream in slow {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "a slow connection was not closed: {read:?}"
        );
        assert!(
            answer.starts_with(b"HTTP/1.1 408 "),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(backend.hits(), 1);
}

/// A head that starts and stalls past `header_read_timeout` gets 408 with
/// `Connection: close` and the proxy's JSON error, then the close; the
/// backend never hears of it.
#[tokio::test]
async fn a_stalled_head_gets_408_and_the_connection_closed() {
    let backend = FakeBackend::start("monolith").await;
    let proxy = TestProxy::start(&edge_routes(&backend, "  header_read_timeout: 1s")).await;
    let reply = raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    assert_eq!(reply.status(), 408, "{:?}", reply.text);
    assert!(reply.text.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
    let (head, body) = reply
        .text
        .split_once("\r\n\r\n")
        .expect("a head and a body");
    assert!(head.contains("\r\nconnection: close"), "{head:?}");
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{head:?}"
    );
    let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"], "request_timeout");
    assert!(reply.is_closed, "the connection stays open");
    // The same after a first request on a keep-alive connection.
    let reply = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\nX-Slow: ",
    )
    .await;
    assert!(reply.text.starts_with("HTTP/1.1 200 "), "{:?}", reply.text);
    assert_eq!(
        reply.text.matches("HTTP/1.1 408 ").count(),
        1,
        "{:?}",
        reply.text
    );
    assert!(reply.is_closed);
    assert_eq!(backend.hits(), 1);
    eventually("both timeouts are counted", || async {
        rejected(&proxy, "head_timeout").await == 2
    })
    .await;
    assert_eq!(rejected(&proxy, "silent_connection").await, 0);
}

/// No byte of a request, no answer: a new connection that sends nothing,
/// or only blank lines, and an idle keep-alive connection after its
/// answer are closed without a byte (the idle one by `keepalive_timeout`).
#[tokio::test]
async fn silent_and_idle_connections_are_closed_without_a_byte() {
    let backend = FakeBackend::start("monolith").await;
    let proxy = TestProxy::start(&edge_routes(
        &backend,
        // Longer than the head timeout, so that the head timeout is what
        // closes the silent connections.
        "  header_read_timeout: 1s\n  keepalive_timeout: 3s",
    ))
    .await;
    for bytes in [&b""[..], b"\r\n"] {
        let reply = raw(proxy.addr, bytes).await;
        assert!(reply.is_closed, "{bytes:?}: the connection stays open");
        assert_eq!(reply.text, "", "{bytes:?}");
    }
    let idle = raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(idle.is_closed, "the idle connection stays open");
    assert_eq!(idle.status(), 200, "{:?}", idle.text);
    assert!(idle.text.ends_with("\r\n\r\nmonolith"), "{:?}", idle.text);
    assert_eq!(idle.text.matches("HTTP/1.1").count(), 1, "{:?}", idle.text);
    // The connection that sent nothing is a silent one; blank lines began a head.
    eventually("the silent connection is counted", || async {
        rejected(&proxy, "silent_connection").await == 1
    })
    .await;
    assert_eq!(rejected(&proxy, "head_timeout").await, 1);
}

/// Past `max_connections` a new connection gets a 503 and is closed;
/// once one closes, new connections are served again.
#[tokio::test]
async fn connections_past_the_limit_are_refused_with_503() {
    let backend = FakeBackend::start("monolith").await;
    let proxy = TestProxy::start(&edge_routes(&backend, "  max_connections: 2")).await;
    let first = TcpStream::connect(proxy.addr).await.expect("connect");
    let _second = TcpStream::connect(proxy.addr).await.expect("connect");
    let refused = raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(refused.status(), 503, "{:?}", refused.text);
    assert!(refused.text.contains("too_many_connections"));
    assert!(refused.is_closed);
    drop(first);
    eventually("a slot is free again", || async {
        raw(
            proxy.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
        .status()
            == 200
    })
    .await;
}

/// An incoming `X-Forwarded-For` is believed only from a trusted proxy;
/// then the client is the right-most untrusted address of the chain.
#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let backend = FakeBackend::with(Behaviour::Echo).await;
    let chain = [("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.0.0.9")];

    let untrusting = TestProxy::start(&edge_routes(&backend, "  via: strangler")).await;
    untrusting.get_with("/", &chain).await;
    let seen = backend.last_request();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(seen
        .header("forwarded")
        .is_some_and(|f| f.starts_with("for=127.0.0.1;")));

    let trusting = TestProxy::start(&edge_routes(
        &backend,
        "  trusted_proxies: [127.0.0.1, 10.0.0.0/8]",
    ))
    .await;
    trusting.get_with("/", &chain).await;
    let seen = backend.last_request();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("198.51.100.1, 203.0.113.7, 10.0.0.9, 127.0.0.1")
    );
    assert!(
        seen.header("forwarded")
            .is_some_and(|f| f.starts_with("for=203.0.113.7;")),
        "{seen:?}"
    );
}

/// Sticky-by-IP splits use the believed client address: two clients
/// behind one trusted proxy can land on different sides, and one client
/// always lands on the same side.
#[tokio::test]
async fn sticky_by_ip_uses_the_believed_client_address() {
    let old = FakeBackend::start("old").await;
    let new = FakeBackend::start("new").await;
    let routes = format!(
        "server:\n  trusted_proxies: [127.0.0.1]\n{}",
        routes_file(
            &[("old", &old.url()), ("new", &new.url())],
            "  - name: split\n    match: { prefix: / }\n    split: { old: 50, new: 50 }\n    sticky: { client_ip: true }",
        )
    );
    let proxy = TestProxy::start(&routes).await;
    let mut sides = std::collections::BTreeSet::new();
    for i in 0..64 {
        let client = format!("198.51.100.{i}");
        let first = proxy
            .get_with("/", &[("x-forwarded-for", &client)])
            .await
            .text()
            .to_string();
        let again = proxy
            .get_with("/", &[("x-forwarded-for", &client)])
            .await
            .text()
            .to_string();
        assert_eq!(first, again, "{client} moved between sides");
        sides.insert(first);
    }
    assert_eq!(
        sides.len(),
        2,
        "64 believed addresses all landed on one side"
    );
}

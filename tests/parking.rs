//! Idle keep-alive connections are parked (no hyper state, no buffers)
//! and taken up again by their next request, in the clear and over TLS;
//! the client sees one connection throughout.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;
use tls_support::{certificates_yaml, Ca, TlsProxy};

fn routes(backend: &FakeBackend, server: &str) -> String {
    format!(
        "server:\n{server}\n{}",
        routes_file(&[("monolith", &backend.url())], "")
    )
}

/// The value of `name` (a series, labels included) in the admin's metrics.
async fn metric(admin: &HttpClient, series: &str) -> Option<f64> {
    let text = admin.get("/metrics").await.text().to_string();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

async fn parked(admin: &HttpClient) -> f64 {
    metric(admin, "strangler_connections_parked{listener=\"proxy\"}")
        .await
        .unwrap_or(-1.0)
}

/// Reads one response whose body has a `Content-Length`; returns its text.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if seen.len() >= end + 4 + length {
                    return;
                }
            }
            let n = stream.read(&mut buf).await.expect("read the response");
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response in time");
    String::from_utf8_lossy(&seen).into_owned()
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &[u8]) -> String {
    stream.write_all(request).await.expect("write the request");
    read_response(stream).await
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: shop.test\r\n\r\n";

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr)
        .await
        .expect("connect to the proxy")
}

/// A connection parked after its first request serves the next ones, a
/// body and a pipelined pair included, without the client reconnecting.
#[tokio::test]
async fn a_parked_connection_serves_its_next_requests() {
    let backend = FakeBackend::start("monolith").await;
    let proxy = TestProxy::start(&routes(&backend, "  keepalive_timeout: 60s")).await;
    let admin = HttpClient::http1(proxy.admin_addr);
    let mut stream = connect(proxy.addr).await;

    let first = exchange(&mut stream, GET).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
    eventually("the idle connection is parked", || async {
        parked(&admin).await == 1.0
    })
    .await;

    let second = exchange(&mut stream, GET).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second:?}");
    assert!(second.ends_with("monolith"), "{second:?}");
    eventually("parked again", || async { parked(&admin).await == 1.0 }).await;

    let post = b"POST /a HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n\r\nhello";
    let posted = exchange(&mut stream, post).await;
    assert!(posted.starts_with("HTTP/1.1 200"), "{posted:?}");
    let seen = backend.last_request();
    assert_eq!(
        (seen.method.as_str(), seen.header("content-length")),
        ("POST", Some("5"))
    );
    eventually("parked after the upload", || async {
        parked(&admin).await == 1.0
    })
    .await;

    stream
        .write_all(&[GET, GET].concat())
        .await
        .expect("write two requests");
    let one = read_response(&mut stream).await;
    let two = read_response(&mut stream).await;
    assert!(
        one.starts_with("HTTP/1.1 200") && two.starts_with("HTTP/1.1 200"),
        "{one:?} {two:?}"
    );

    assert_eq!(backend.hits(), 5);
    let accepted = metric(&admin, "strangler_connections_total{listener=\"proxy\"}").await;
    assert_eq!(accepted, Some(1.0), "the client never reconnected");
}

/// A parked connection still ends: at `keepalive_timeout` without a byte,
/// when the client closes it, and at shutdown.
#[tokio::test]
async fn parked_connections_close_on_timeout_client_close_and_shutdown() {
    let backend = FakeBackend::start("monolith").await;
    let proxy = TestProxy::start(&routes(&backend, "  keepalive_timeout: 3s")).await;
    let admin = HttpClient::http1(proxy.admin_addr);

    let mut timed_out = connect(proxy.addr).await;
    assert!(exchange(&mut timed_out, GET)
        .await
        .starts_with("HTTP/1.1 200"));
    let mut by_client = connect(proxy.addr).await;
    assert!(exchange(&mut by_client, GET)
        .await
        .starts_with("HTTP/1.1 200"));
    eventually("both are parked", || async { parked(&admin).await == 2.0 }).await;

    drop(by_client);
    eventually("the closed one is gone", || async {
        parked(&admin).await == 1.0
    })
    .await;
    let open = metric(&admin, "strangler_connections_open{listener=\"proxy\"}").await;
    assert_eq!(open, Some(1.0));

    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, timed_out.read_to_end(&mut rest))
        .await
        .expect("the proxy closes the idle connection");
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    eventually("none parked", || async { parked(&admin).await == 0.0 }).await;

    let mut at_shutdown = connect(proxy.addr).await;
    assert!(exchange(&mut at_shutdown, GET)
        .await
        .starts_with("HTTP/1.1 200"));
    eventually("parked before shutdown", || async {
        parked(&admin).await == 1.0
    })
    .await;
    tokio::time::timeout(PATIENCE, proxy.shutdown())
        .await
        .expect("shutdown does not wait for a parked connection")
        .expect("clean shutdown");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, at_shutdown.read_to_end(&mut rest))
        .await
        .expect("the parked connection is closed");
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
}

/// Over TLS the parked socket keeps its session: the next request is
/// read through the same TLS stream.
#[tokio::test]
async fn a_parked_tls_connection_serves_its_next_request() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new();
    let (cert, key, _) = ca.issue(dir.path(), "a.test");
    let backend = FakeBackend::start("monolith").await;
    let yaml = certificates_yaml(&[(&cert, &key, "a.test")])
        + &routes_file(&[("monolith", &backend.url())], "");
    let routes_dir = dir.path().join("routes");
    std::fs::create_dir(&routes_dir).expect("create routes/");
    std::fs::write(routes_dir.join("routes.yaml"), yaml).expect("write routes.yaml");
    let proxy = TlsProxy::start(&routes_dir, dir.path().join("state")).await;
    let parked_tls = || async {
        metric(
            &proxy.admin,
            "strangler_connections_parked{listener=\"tls\"}",
        )
        .await
        .unwrap_or(-1.0)
            == 1.0
    };

    let (_, mut stream) = proxy.connect(&ca, "a.test").await;
    let request = b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\n";
    assert!(exchange(&mut stream, request)
        .await
        .starts_with("HTTP/1.1 200"));
    eventually("the TLS connection is parked", parked_tls).await;
    let again = exchange(&mut stream, request).await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again:?}");
    assert!(again.ends_with("monolith"), "{again:?}");
    assert_eq!(backend.hits(), 2);
}

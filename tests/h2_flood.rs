//! HTTP/2 abuse: the rapid-reset guard (CVE-2023-44487) and the
//! concurrent-stream limit, driven with the raw `h2` client over h2c
//! (prior knowledge) so the test controls every frame.

mod support;

use std::future::poll_fn;
use std::task::Poll;

use bytes::Bytes;
use h2::client::{self, SendRequest};
use http::{Method, Request, StatusCode};
use support::{eventually, routes_file, Behaviour, FakeBackend, TestProxy, PATIENCE};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Streams the flood may open before the test gives up on the guard. The
/// guard allows 50 pending-accept resets, so this is a wide margin.
const FLOOD_STREAMS: usize = 5_000;
/// Streams opened (and reset) between two yields to the connection task,
/// so frames reach the server in bursts, as in a real attack.
const BURST: usize = 100;

/// An h2c connection to `addr`; the connection task is spawned and its
/// result returned through the handle.
async fn connect(
    addr: std::net::SocketAddr,
) -> (
    SendRequest<Bytes>,
    h2::PingPong,
    JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let (send, mut connection) = client::handshake(tcp).await.expect("h2 handshake");
    let ping = connection.ping_pong().expect("ping_pong taken once");
    (send, ping, tokio::spawn(connection))
}

fn get(addr: std::net::SocketAddr, path: &str) -> Request<()> {
    Request::builder()
        .method(Method::GET)
        .uri(format!("http://{addr}{path}"))
        .body(())
        .expect("request")
}

/// Opening streams and cancelling each at once (rapid reset) makes the
/// proxy end the connection with GOAWAY ENHANCE_YOUR_CALM long before
/// 5,000 streams, and the proxy keeps serving new connections.
#[tokio::test]
async fn rapid_reset_flood_gets_goaway_and_proxy_keeps_serving() {
    let backend = FakeBackend::start("ok").await;
    let proxy = TestProxy::start(&routes_file(&[("monolith", &backend.url())], "")).await;
    let (mut send, _ping, connection) = connect(proxy.addr).await;

    let mut opened = 0;
    let stopped_by = loop {
        if opened == FLOOD_STREAMS {
            break None;
        }
        send = match send.ready().await {
            Ok(send) => send,
            Err(err) => break Some(err),
        };
        let (_response, mut stream) = match send.send_request(get(proxy.addr, "/"), true) {
            Ok(pair) => pair,
            Err(err) => break Some(err),
        };
        stream.send_reset(h2::Reason::CANCEL);
        opened += 1;
        if opened % BURST == 0 {
            tokio::task::yield_now().await;
        }
    };
    assert!(
        stopped_by.is_some(),
        "the proxy let {FLOOD_STREAMS} streams be opened and reset without ending the connection"
    );

    let ended = tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("the connection ends once the proxy gives up on it")
        .expect("the connection task does not panic");
    let err = ended.expect_err("the connection ends with an error, not cleanly");
    assert!(
        err.is_go_away() && err.is_remote(),
        "the proxy sent GOAWAY (after {opened} streams): {err:?}"
    );
    assert_eq!(
        err.reason(),
        Some(h2::Reason::ENHANCE_YOUR_CALM),
        "GOAWAY reason (after {opened} streams): {err:?}"
    );

    // A fresh connection, HTTP/2 and HTTP/1.1, is served as normal.
    let reply = proxy.h2_client().get("/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "ok");
    let reply = proxy.get("/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "ok");
}

/// With `h2_max_concurrent_streams: 5`, the proxy advertises 5 in its
/// SETTINGS; while 5 requests are held upstream a 6th stream waits on the
/// client and is not forwarded, and it is served once a slot frees.
#[tokio::test]
async fn concurrent_streams_are_capped_by_settings() {
    let held = FakeBackend::with(Behaviour::Hold).await;
    let fast = FakeBackend::start("fast").await;
    let routes = r#"
  - name: fast
    match: { path: "/fast" }
    backend: fast
"#;
    let yaml = format!(
        "server:\n  h2_max_concurrent_streams: 5\n{}",
        routes_file(&[("held", &held.url()), ("fast", &fast.url())], routes)
    );
    let proxy = TestProxy::start(&yaml).await;
    let (mut send, mut ping, _connection) = connect(proxy.addr).await;

    // A first answer comes after the server's SETTINGS, so by then the
    // client knows the limit.
    send = send.ready().await.expect("connection ready");
    let (response, _) = send
        .send_request(get(proxy.addr, "/fast"), true)
        .expect("send /fast");
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("/fast answers")
        .expect("/fast response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(send.current_max_send_streams(), 5, "advertised limit");

    let mut pending = Vec::new();
    for _ in 0..5 {
        send = tokio::time::timeout(PATIENCE, send.ready())
            .await
            .expect("a stream slot is free")
            .expect("connection ready");
        let (response, _) = send
            .send_request(get(proxy.addr, "/held"), true)
            .expect("send /held");
        pending.push(response);
    }
    eventually("the 5 held requests reach the backend", || async {
        held.hits() == 5
    })
    .await;

    // The 6th is accepted by the client but not opened: 5 are in flight.
    send = tokio::time::timeout(PATIENCE, send.ready())
        .await
        .expect("the 5th stream opens")
        .expect("connection ready");
    let (sixth, _) = send
        .send_request(get(proxy.addr, "/held"), true)
        .expect("queue the 6th");
    // A PING round trip queued after the 6th: the connection task has run
    // since the 6th was queued, and still did not open it.
    tokio::time::timeout(PATIENCE, ping.ping(h2::Ping::opaque()))
        .await
        .expect("PONG")
        .expect("ping round trip");
    assert!(
        poll_fn(|cx| Poll::Ready(send.poll_ready(cx).is_pending())).await,
        "the 6th stream waits for a slot"
    );
    assert_eq!(held.hits(), 5, "only 5 requests forwarded");

    held.release();
    pending.push(sixth);
    for response in pending {
        let response = tokio::time::timeout(PATIENCE, response)
            .await
            .expect("a held request answers after release")
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(held.hits(), 6, "the 6th was forwarded once a slot freed");
}

//! Weighted sticky splits, fallback with bodies, circuit breaking and the
//! retry budget, over real sockets.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{dead_url, full, routes_file, FakeBackend, HttpClient, TestProxy};
use tokio::net::TcpListener;

fn split_routes(new_share: u32, monolith: &FakeBackend, new: &FakeBackend) -> String {
    routes_file(
        &[("monolith", &monolith.url()), ("new-svc", &new.url())],
        &format!(
            "  - name: checkout\n    match: {{ prefix: /api/checkout }}\n    split: {{ new-svc: {new_share}, monolith: {} }}\n    sticky: {{ header: x-user-id }}\n    fallback: monolith\n",
            100 - new_share
        ),
    )
}

/// Which side each user lands on.
async fn assignments(proxy: &TestProxy, users: std::ops::Range<u32>) -> HashMap<u32, String> {
    let mut sides = HashMap::new();
    for user in users {
        let reply = proxy
            .get_with("/api/checkout/cart", &[("x-user-id", &user.to_string())])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        sides.insert(user, reply.text().to_string());
    }
    sides
}

async fn metric(admin: SocketAddr, prefix: &str) -> f64 {
    let text = HttpClient::http1(admin)
        .get("/metrics")
        .await
        .text()
        .to_string();
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A 30/70 split over 3,000 users puts close to 30% on the new service, and
/// each user always on the same side.
#[tokio::test]
async fn sticky_split_honours_weights_and_keeps_each_user_on_one_side() {
    let (monolith, new) = (
        FakeBackend::start("old").await,
        FakeBackend::start("new").await,
    );
    let proxy = TestProxy::start(&split_routes(30, &monolith, &new)).await;
    let sides = assignments(&proxy, 0..3_000).await;
    let on_new = sides.values().filter(|s| *s == "new").count();
    let share = on_new as f64 / 3_000.0;
    assert!(
        (0.26..=0.34).contains(&share),
        "share on the new service: {share}"
    );
    let again = assignments(&proxy, 0..300).await;
    for (user, side) in again {
        assert_eq!(sides[&user], side, "user {user} changed sides");
    }
}

/// Raising the new service's weight from 30% to 60% moves users only
/// towards it: nobody who was on the new service goes back.
#[tokio::test]
async fn raising_the_weight_never_moves_a_user_back() {
    let (monolith, new) = (
        FakeBackend::start("old").await,
        FakeBackend::start("new").await,
    );
    let proxy = TestProxy::start(&split_routes(30, &monolith, &new)).await;
    let before = assignments(&proxy, 0..2_000).await;
    std::fs::write(
        proxy.routes_dir.join("routes.yaml"),
        split_routes(60, &monolith, &new),
    )
    .expect("rewrite routes");
    let admin = HttpClient::http1(proxy.admin_addr);
    let reload = admin
        .send(
            admin
                .request(Method::POST, "/api/reload")
                .body(support::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(reload.status, StatusCode::OK, "{}", reload.text());
    let after = assignments(&proxy, 0..2_000).await;
    let moved_back = before
        .iter()
        .filter(|(u, s)| *s == "new" && after[u] == "old")
        .count();
    let moved_forward = before
        .iter()
        .filter(|(u, s)| *s == "old" && after[u] == "new")
        .count();
    assert_eq!(moved_back, 0);
    assert!(
        moved_forward > 300,
        "about 30% of users should move: {moved_forward}"
    );
}

/// A POST with a body whose connection to the new service is refused is
/// sent, whole, to the fallback: the body was never read, so it was never
/// buffered either.
#[tokio::test]
async fn post_with_body_to_a_refusing_service_reaches_the_fallback_whole() {
    let monolith = FakeBackend::with(support::Behaviour::CountUpload).await;
    let dead = dead_url().await;
    let proxy = TestProxy::start(&routes_file(
        &[("monolith", &monolith.url()), ("orders", &dead)],
        "  - name: orders\n    match: { prefix: /api/orders }\n    backend: orders\n    fallback: monolith\n",
    ))
    .await;
    let client = proxy.client();
    let request = client
        .request(Method::POST, "/api/orders")
        .body(full(vec![7u8; 50_000]))
        .expect("request");
    let reply = client.send(request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(monolith.uploaded(), 50_000);
}

/// A backend whose health can be switched, counting the requests it sees
/// (health checks aside).
struct Switchable {
    addr: SocketAddr,
    is_failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn switchable() -> Switchable {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    let (is_failing, hits) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (failing, counter) = (is_failing.clone(), hits.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (failing, counter) = (failing.clone(), counter.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        // Health checks are not traffic: only other requests count.
                        if req.uri().path() != "/healthz" {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        let status = if failing.load(Ordering::SeqCst) {
                            503
                        } else {
                            200
                        };
                        async move {
                            let mut response = Response::new(Full::new(Bytes::from_static(b"svc")));
                            *response.status_mut() =
                                StatusCode::from_u16(status).expect("valid status");
                            Ok::<_, Infallible>(response)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Switchable {
        addr,
        is_failing,
        hits,
    }
}

/// After consecutive failures the circuit opens: the failing service gets
/// no more traffic, requests are answered by the fallback, and the state
/// shows in `strangler_circuit_state`. Once the service recovers, a probe
/// closes the circuit and traffic returns.
#[tokio::test]
async fn circuit_opens_on_failures_and_closes_after_a_successful_probe() {
    let monolith = FakeBackend::start("monolith").await;
    let svc = switchable().await;
    let proxy = TestProxy::start(&format!(
        "backends:\n  monolith: {{ url: \"{}\" }}\n  svc: {{ url: \"http://{}\", circuit: {{ consecutive_failures: 3, open_for: 0s }} }}\ndefault: monolith\nroutes:\n  - name: svc\n    match: {{ prefix: /svc }}\n    backend: svc\n    fallback: monolith\n",
        monolith.url(),
        svc.addr
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(proxy.get("/svc").await.text(), "monolith", "503s fall back");
    }
    assert_eq!(
        metric(proxy.admin_addr, "strangler_circuit_state{backend=\"svc\"}").await,
        2.0
    );
    let hits_when_open = svc.hits.load(Ordering::SeqCst);
    // open_for is zero, so the next request is the half-open probe; it
    // fails and the circuit opens again: one hit per request at most.
    assert_eq!(proxy.get("/svc").await.text(), "monolith");
    assert!(svc.hits.load(Ordering::SeqCst) <= hits_when_open + 1);
    svc.is_failing.store(false, Ordering::SeqCst);
    assert_eq!(proxy.get("/svc").await.text(), "svc", "the probe succeeds");
    assert_eq!(
        metric(proxy.admin_addr, "strangler_circuit_state{backend=\"svc\"}").await,
        0.0
    );
    assert_eq!(proxy.get("/svc").await.text(), "svc");
}

/// With the service refusing every connection and no fallback, retries
/// stay within the budget (10% of requests, no floor): 200 requests cause
/// at most 20 retries.
#[tokio::test]
async fn retry_budget_caps_retries_during_a_full_outage() {
    let monolith = FakeBackend::start("monolith").await;
    let dead = dead_url().await;
    let proxy = TestProxy::start(&format!(
        "backends:\n  monolith: {{ url: \"{}\" }}\n  svc: {{ url: \"{dead}\", circuit: {{ consecutive_failures: 0 }}, retry_budget: {{ ratio: 10%, min_per_second: 0 }} }}\ndefault: monolith\nroutes:\n  - name: svc\n    match: {{ prefix: /svc }}\n    backend: svc\n",
        monolith.url()
    ))
    .await;
    for _ in 0..200 {
        assert_eq!(proxy.get("/svc").await.status, StatusCode::BAD_GATEWAY);
    }
    let retries = metric(proxy.admin_addr, "strangler_retries_total{backend=\"svc\"").await;
    assert!(retries >= 1.0, "some retries happen: {retries}");
    assert!(retries <= 20.0, "retries within 10% of 200: {retries}");
}

/// A backend failing its active health checks is skipped: its traffic
/// goes to the fallback and `strangler_backend_up` is 0. When the checks
/// pass again, traffic returns.
#[tokio::test]
async fn failing_health_checks_send_traffic_to_the_fallback() {
    let monolith = FakeBackend::start("monolith").await;
    let svc = switchable().await;
    let proxy = TestProxy::start(&format!(
        "backends:\n  monolith: {{ url: \"{}\" }}\n  svc: {{ url: \"http://{}\", circuit: {{ consecutive_failures: 0 }}, health: {{ path: /healthz, interval: 50ms }} }}\ndefault: monolith\nroutes:\n  - name: svc\n    match: {{ prefix: /svc }}\n    backend: svc\n    fallback: monolith\n",
        monolith.url(),
        svc.addr
    ))
    .await;
    support::eventually("the health check marks svc down", || async {
        metric(proxy.admin_addr, "strangler_backend_up{backend=\"svc\"}").await == 0.0
    })
    .await;
    assert_eq!(proxy.get("/svc").await.text(), "monolith");
    assert_eq!(
        svc.hits.load(Ordering::SeqCst),
        0,
        "no client request reached the unhealthy service"
    );
    svc.is_failing.store(false, Ordering::SeqCst);
    support::eventually("the health check marks svc up", || async {
        metric(proxy.admin_addr, "strangler_backend_up{backend=\"svc\"}").await == 1.0
    })
    .await;
    assert_eq!(proxy.get("/svc").await.text(), "svc");
}

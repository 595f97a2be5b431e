//! Reloads while requests flow, over real sockets: pools of unchanged
//! backends are kept, and no request fails or sees a mix of two tables.

#[path = "support/reload.rs"]
mod reload_support;
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use reload_support::{ReloadingProxy, RoutesDir, FAILURES, ORDERS_ROUTE};
use support::{empty, eventually, routes_file, FakeBackend};

/// Requests that failed or were answered wrongly, by a client loop.
type Failures = Arc<Mutex<Vec<String>>>;

/// A reload keeps the pooled connection of a backend whose definition did
/// not change while requests to it go on; a changed backend gets a new pool.
#[tokio::test]
async fn a_reload_keeps_the_pool_of_an_unchanged_backend() {
    let monolith = FakeBackend::start("monolith").await;
    let orders = FakeBackend::start("orders").await;
    let table = |orders_timeout: &str, extra: &str| {
        format!(
            "backends:\n  monolith: {{ url: \"{}\" }}\n  orders: {{ url: \"{}\", timeout: {orders_timeout} }}\ndefault: monolith\n{ORDERS_ROUTE}{extra}",
            monolith.url(),
            orders.url()
        )
    };
    let routes = RoutesDir::new(&[("routes.yaml", &table("2s", ""))]);
    let proxy = ReloadingProxy::start(&routes).await;
    assert_eq!(proxy.get("/api/orders/7").await.text(), "orders");

    let (stop, served, failures) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Failures::default(),
    );
    let client = proxy.new_client();
    let requests = tokio::spawn({
        let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                let request = client
                    .request(Method::GET, "/home")
                    .body(empty())
                    .expect("request");
                match client.try_send(request).await {
                    Ok(reply) if reply.status == StatusCode::OK && reply.body == "monolith" => {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(reply) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("{}: {:?}", reply.status, reply.body)),
                    Err(err) => failures.lock().expect("lock").push(err.to_string()),
                }
            }
        }
    });
    eventually("requests reach the monolith", || async {
        served.load(Ordering::SeqCst) > 0
    })
    .await;
    let connections = monolith.connections();
    let old = proxy.version().await;

    let catalog =
        "  - name: catalog\n    match: { prefix: \"/api/catalog\" }\n    backend: monolith\n";
    routes.save_by_rename("routes.yaml", &table("3s", catalog));
    proxy.next_version(&old).await;
    let at_reload = served.load(Ordering::SeqCst);
    eventually("requests go on after the reload", || async {
        served.load(Ordering::SeqCst) > at_reload + 10
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    requests.await.expect("the request loop does not panic");

    assert_eq!(*failures.lock().expect("lock"), Vec::<String>::new());
    assert_eq!(connections, 1, "sequential requests share one connection");
    assert_eq!(
        monolith.connections(),
        connections,
        "the unchanged monolith saw a new connection"
    );
    assert_eq!(proxy.get("/api/orders/7").await.text(), "orders");
    assert_eq!(orders.connections(), 2, "the changed backend's pool is new");
}

/// Table `n` of the load test: `/probe` goes to backend `bn` (which answers
/// its own name) and its answers carry `x-table: vn`. Table 2 declares one
/// more backend, `a-spare`, which sorts first, so that the same backend has a
/// different id in each table: an id looked up in the other table's backends
/// shows as a mixed answer.
fn probe_table(n: usize, b1: &FakeBackend, b2: &FakeBackend) -> String {
    let mut backends = vec![("b1", b1.url()), ("b2", b2.url())];
    if n == 2 {
        backends.push(("a-spare", b2.url()));
    }
    let backends: Vec<(&str, &str)> = backends
        .iter()
        .map(|(name, url)| (*name, url.as_str()))
        .collect();
    routes_file(
        &backends,
        &format!(
            "  - name: probe\n    match: {{ prefix: \"/probe\" }}\n    backend: b{n}\n    response_headers: {{ set: {{ x-table: v{n} }} }}\n"
        ),
    )
}

/// Under continuous load from 4 client connections, 50 reloads alternating
/// two tables fail no request, and every answer comes wholly from one
/// table: its `x-table` header (set by the route) and its body (from the
/// route's backend) agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_never_mix_tables() {
    const CLIENTS: usize = 4;
    const RELOADS: usize = 50;
    let b1 = FakeBackend::start("b1").await;
    let b2 = FakeBackend::start("b2").await;
    let tables = [
        String::new(),
        probe_table(1, &b1, &b2),
        probe_table(2, &b1, &b2),
    ];
    let routes = RoutesDir::new(&[("routes.yaml", &tables[1])]);
    let proxy = ReloadingProxy::start(&routes).await;

    let stop = Arc::new(AtomicBool::new(false));
    let served: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let failures = Failures::default();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        // One client each, sending one request at a time: one connection each.
        let client = proxy.new_client();
        let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let request = client
                    .request(Method::GET, "/probe")
                    .body(empty())
                    .expect("request");
                let failure = match client.try_send(request).await {
                    Ok(reply) if reply.status == StatusCode::OK => {
                        match (reply.header("x-table"), &reply.body[..]) {
                            (Some("v1"), b"b1") => {
                                served[1].fetch_add(1, Ordering::SeqCst);
                                continue;
                            }
                            (Some("v2"), b"b2") => {
                                served[2].fetch_add(1, Ordering::SeqCst);
                                continue;
                            }
                            (header, body) => {
                                format!(
                                    "mixed answer: x-table {header:?}, body {:?}",
                                    String::from_utf8_lossy(body)
                                )
                            }
                        }
                    }
                    Ok(reply) => format!("{}: {:?}", reply.status, reply.body),
                    Err(err) => format!("request failed: {err}"),
                };
                failures.lock().expect("lock").push(failure);
            }
        }));
    }

    let mut versions = [String::new(), proxy.version().await, String::new()];
    for reload in 1..=RELOADS {
        let n = if reload % 2 == 1 { 2 } else { 1 };
        let before = served[n].load(Ordering::SeqCst);
        routes.save_by_rename("routes.yaml", &tables[n]);
        let reply = proxy.post_reload().await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "reload {reload}: {}",
            reply.text()
        );
        // The watcher may have applied the edit first: then `unchanged`.
        let outcome = reply.json();
        assert!(
            matches!(outcome["result"].as_str(), Some("applied" | "unchanged")),
            "{outcome:#}"
        );
        let version = outcome["version"].as_str().expect("a version");
        if versions[n].is_empty() {
            versions[n] = version.to_string();
        }
        assert_eq!(version, versions[n], "reload {reload} to table v{n}");
        // Each table serves before the next swap, so every reload happens
        // while requests are under way.
        eventually(
            &format!("table v{n} serves after reload {reload}"),
            || async { served[n].load(Ordering::SeqCst) > before },
        )
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("a client loop does not panic");
    }

    assert_ne!(versions[1], versions[2]);
    assert_eq!(*failures.lock().expect("lock"), Vec::<String>::new());
    assert!(served[1].load(Ordering::SeqCst) >= RELOADS / 2);
    assert!(served[2].load(Ordering::SeqCst) >= RELOADS / 2);
    assert_eq!(proxy.metric(FAILURES).await, 0.0);
}

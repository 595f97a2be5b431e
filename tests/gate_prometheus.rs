//! The gate with a real Prometheus: business checks (a KPI the services
//! export) promote, roll back and hold a migration, and fleet mode judges
//! and moves several replicas from the numbers they all export.
//!
//! Needs `prometheus` on `PATH` (Debian's package `prometheus`; CI installs
//! it in `.ci/run`). Where it is missing, the tests that need it print why
//! they did nothing and pass. The unreachable-Prometheus and `check` tests
//! need no server and always run.

#[path = "support/prometheus.rs"]
mod prometheus_support;
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_support::{free_addr, prometheus_binary, Prometheus};
use serde_json::Value;
use support::{routes_file, FakeBackend, HttpClient, TestProxy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Longest wait for a migration to reach the state a test expects. A
/// safety net against a hang, never an assertion on speed.
const DEADLINE: Duration = Duration::from_secs(90);

/// The KPI of the business checks: the payment success ratio over the last
/// five seconds (five scrapes), as a service would export it.
const PAYMENT_SUCCESS: &str = "sum(rate(payments_ok_total[5s])) / sum(rate(payments_total[5s]))";

// ---------------------------------------------------------------------------
// A fake exporter of business metrics

/// Serves `payments_total` and `payments_ok_total` on `/metrics`. Every
/// scrape adds 100 payments, `ok_per_hundred` of them successful, so the
/// success ratio Prometheus computes is exactly `ok_per_hundred / 100`
/// whatever the scrape timing.
struct Exporter {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Exporter {
    async fn start(ok_per_hundred: u64) -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound socket has an address");
        let counters = Arc::new(Mutex::new((0u64, 0u64)));
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = &mut stopped => return,
                };
                let counters = counters.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                            let text = {
                                let mut counters = counters.lock().expect("counters lock");
                                counters.0 += 100;
                                counters.1 += ok_per_hundred;
                                format!(
                                    "# TYPE payments_total counter\npayments_total {}\n\
                                     # TYPE payments_ok_total counter\npayments_ok_total {}\n",
                                    counters.0, counters.1
                                )
                            };
                            async move {
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Exporter { addr, _stop: stop }
    }
}

// ---------------------------------------------------------------------------
// The proxy and its migration

/// The route file: `orders` migrating from `monolith` to `new-svc` with
/// `gate` (YAML lines indented for the gate block).
fn migration_routes(monolith: &FakeBackend, new: &FakeBackend, stages: &str, gate: &str) -> String {
    let routes = format!(
        "  - name: orders\n    match: {{ prefix: /api/orders }}\n    migration:\n      from: monolith\n      to: new-svc\n      stages: {stages}\n      sticky: {{ header: x-user-id }}\n      gate:\n{gate}"
    );
    routes_file(
        &[("monolith", &monolith.url()), ("new-svc", &new.url())],
        &routes,
    )
}

/// A gate judging windows of a few seconds every 200 ms, with one business check.
fn gate_with_check(prometheus_url: &str, min_requests: u32) -> String {
    format!(
        "        window: 3s\n        interval: 200ms\n        min_requests: {min_requests}\n        promote_after: 2\n        prometheus_url: \"{prometheus_url}\"\n        checks:\n          - name: payment-success\n            query: '{PAYMENT_SUCCESS}'\n            min: 0.98\n"
    )
}

async fn migration(admin: SocketAddr) -> Value {
    HttpClient::http1(admin).get("/api/migrations").await.json()[0].clone()
}

/// Sends `n` requests from rotating users; answers are not checked.
async fn send_traffic(proxy: &TestProxy, n: usize) {
    static NEXT_USER: AtomicUsize = AtomicUsize::new(0);
    let client = proxy.client();
    for _ in 0..n {
        let request = client
            .request(Method::GET, "/api/orders/7")
            .header(
                "x-user-id",
                (NEXT_USER.fetch_add(1, Ordering::Relaxed) % 500).to_string(),
            )
            .body(support::empty())
            .expect("request");
        let _ = client.try_send(request).await;
    }
}

/// Sends traffic until `done` holds on the migration; fails the test after
/// `DEADLINE`. Returns the final view.
async fn drive_until(proxy: &TestProxy, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        send_traffic(proxy, 20).await;
        let view = migration(proxy.admin_addr).await;
        if done(&view) {
            return view;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "not {what} after {DEADLINE:?}: {view:#}"
        );
    }
}

/// Polls the migration without sending traffic until `done` holds.
async fn wait_until(admin: SocketAddr, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let view = migration(admin).await;
        if done(&view) {
            return view;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "not {what} after {DEADLINE:?}: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The check named `name` in a judged window (`last_evidence` or a
/// history entry's `evidence`).
fn check<'v>(evidence: &'v Value, name: &str) -> Option<&'v Value> {
    evidence["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

fn decisions(view: &Value, verdict: &str) -> Vec<Value> {
    view["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|d| d["verdict"] == verdict)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Business checks

/// With the payment success ratio at 99% (above its 98% minimum), a healthy
/// service goes to 100%, and every promotion shows the check passing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_kpi_lets_the_migration_complete() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    let exporter = Exporter::start(99).await;
    let prometheus = Prometheus::start(&binary, free_addr(), "test", &[exporter.addr], &[]).await;
    let (monolith, new) = (
        FakeBackend::start("{\"id\":7}").await,
        FakeBackend::start("{\"id\":7}").await,
    );
    let proxy = TestProxy::start(&migration_routes(
        &monolith,
        &new,
        "[50%, 100%]",
        &gate_with_check(&prometheus.url(), 20),
    ))
    .await;

    let view = drive_until(&proxy, "completed", |v| v["status"] == "completed").await;

    let promotions = decisions(&view, "promote");
    assert_eq!(promotions.len(), 1, "50% -> 100%: {view:#}");
    for promotion in &promotions {
        let kpi = check(&promotion["evidence"], "payment-success")
            .expect("the business check is in the evidence");
        assert_eq!(kpi["outcome"], "pass", "{kpi:#}");
        assert!(
            (kpi["observed"].as_f64().expect("a number") - 0.99).abs() < 1e-9,
            "{kpi:#}"
        );
    }
    assert!(new.hits() > 0);
}

/// With the payment success ratio at 90%, below its 98% minimum, the
/// migration is rolled back even though HTTP looks healthy, and the
/// rollback's evidence names the failing check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kpi_below_its_minimum_rolls_back() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    let exporter = Exporter::start(90).await;
    let prometheus = Prometheus::start(&binary, free_addr(), "test", &[exporter.addr], &[]).await;
    let (monolith, new) = (
        FakeBackend::start("{\"id\":7}").await,
        FakeBackend::start("{\"id\":7}").await,
    );
    let proxy = TestProxy::start(&migration_routes(
        &monolith,
        &new,
        "[50%, 100%]",
        &gate_with_check(&prometheus.url(), 20),
    ))
    .await;

    let view = drive_until(&proxy, "rolled back", |v| v["status"] == "rolled_back").await;

    assert_eq!(view["stage"], "50%", "{view:#}");
    assert_eq!(view["weight"], 0.0);
    let rollback = decisions(&view, "rollback")
        .pop()
        .expect("a rollback decision");
    let kpi = check(&rollback["evidence"], "payment-success")
        .expect("the business check is in the evidence");
    assert_eq!(kpi["outcome"], "fail", "{kpi:#}");
    assert_eq!(kpi["threshold"], 0.98);
    for http_check in ["error_rate", "p99_ratio"] {
        if let Some(c) = check(&rollback["evidence"], http_check) {
            assert_ne!(c["outcome"], "fail", "HTTP was healthy: {c:#}");
        }
    }
}

/// With Prometheus unreachable the business check is inconclusive, so the
/// gate holds window after window although every HTTP check passes: no
/// data is never a pass. Needs no Prometheus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_prometheus_holds_the_stage() {
    let dead = support::dead_url().await;
    let (monolith, new) = (
        FakeBackend::start("{\"id\":7}").await,
        FakeBackend::start("{\"id\":7}").await,
    );
    let proxy = TestProxy::start(&migration_routes(
        &monolith,
        &new,
        "[50%, 100%]",
        &gate_with_check(&dead, 20),
    ))
    .await;

    // Enough evidence for every HTTP check to pass, and the KPI unknown.
    let view = drive_until(&proxy, "held on the business check alone", |v| {
        let evidence = &v["last_evidence"];
        let http_passes = check(evidence, "min_requests").is_some_and(|c| c["outcome"] == "pass");
        let kpi_unknown =
            check(evidence, "payment-success").is_some_and(|c| c["outcome"] == "inconclusive");
        http_passes && kpi_unknown
    })
    .await;
    let kpi = check(&view["last_evidence"], "payment-success").expect("checked");
    assert!(
        kpi["detail"]
            .as_str()
            .is_some_and(|d| d.contains("could not reach Prometheus")),
        "{kpi:#}"
    );

    // Ten windows later (promote_after is 2) it still holds.
    let holds_before = hold_count(proxy.admin_addr).await;
    let started = Instant::now();
    while hold_count(proxy.admin_addr).await < holds_before + 10 {
        send_traffic(&proxy, 20).await;
        assert!(
            started.elapsed() < DEADLINE,
            "ten more windows not judged after {DEADLINE:?}"
        );
    }
    let view = migration(proxy.admin_addr).await;
    assert_eq!(view["status"], "running", "{view:#}");
    assert_eq!(view["stage"], "50%", "{view:#}");
    assert!(decisions(&view, "promote").is_empty(), "{view:#}");
}

/// `strangler_gate_decisions_total{route="orders",decision="hold"}` on the admin listener.
async fn hold_count(admin: SocketAddr) -> u64 {
    let reply = HttpClient::http1(admin).get("/metrics").await;
    reply
        .text()
        .lines()
        .find(|l| {
            l.starts_with("strangler_gate_decisions_total{")
                && l.contains("route=\"orders\"")
                && l.contains("decision=\"hold\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

// ---------------------------------------------------------------------------
// Fleet mode

/// A fleet-mode gate reading Prometheus at `prometheus_url`.
fn fleet_gate(prometheus_url: &str, min_requests: u32) -> String {
    format!(
        "        source: prometheus\n        prometheus_url: \"{prometheus_url}\"\n        window: 10s\n        interval: 500ms\n        min_requests: {min_requests}\n        promote_after: 2\n        max_p99_ratio: 3\n"
    )
}

/// Two replicas of one migration in fleet mode, both scraped by a real
/// Prometheus that their gates read.
struct Fleet {
    // Dropped first, as it scrapes the others.
    _prometheus: Prometheus,
    replicas: [TestProxy; 2],
    _backends: (FakeBackend, FakeBackend),
}

impl Fleet {
    async fn start(binary: &Path, min_requests: u32) -> Fleet {
        let prometheus_addr = free_addr();
        let (monolith, new) = (
            FakeBackend::start("{\"id\":7}").await,
            FakeBackend::start("{\"id\":7}").await,
        );
        let routes = migration_routes(
            &monolith,
            &new,
            "[50%, 100%]",
            &fleet_gate(&format!("http://{prometheus_addr}"), min_requests),
        );
        let replicas = [
            TestProxy::start(&routes).await,
            TestProxy::start(&routes).await,
        ];
        let prometheus = Prometheus::start(
            binary,
            prometheus_addr,
            "test",
            &[replicas[0].admin_addr, replicas[1].admin_addr],
            &[],
        )
        .await;
        Fleet {
            _prometheus: prometheus,
            replicas,
            _backends: (monolith, new),
        }
    }
}

/// Two replicas in fleet mode, all traffic through the first: both reach
/// 100%, the second without serving a request, because both judge the
/// numbers Prometheus sums over the fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_mode_moves_every_replica_from_the_fleet_numbers() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    let fleet = Fleet::start(&binary, 20).await;
    let (busy, idle) = (&fleet.replicas[0], &fleet.replicas[1]);

    let view = drive_until(busy, "completed", |v| v["status"] == "completed").await;
    let idle_view = wait_until(idle.admin_addr, "completed on the idle replica", |v| {
        v["status"] == "completed"
    })
    .await;
    assert_eq!(idle_view["weight"], 1.0, "{idle_view:#}");

    // Whichever replica judged (the other may have followed it), its
    // evidence is the fleet's: the idle replica served nothing itself, yet
    // sees the requests of both sides, and latency on the quantile ratio.
    let judged: Vec<Value> = [&view, &idle_view]
        .iter()
        .flat_map(|v| decisions(v, "promote"))
        .filter(|d| d["by"] == "gate")
        .collect();
    assert!(
        !judged.is_empty(),
        "no replica judged: {view:#}\n{idle_view:#}"
    );
    for promotion in &judged {
        let evidence = &promotion["evidence"];
        let requests = check(evidence, "min_requests").expect("checked");
        assert!(requests["observed"].as_f64() >= Some(20.0), "{requests:#}");
        let p99 = check(evidence, "p99_ratio").expect("latency checked");
        assert_eq!(p99["outcome"], "pass", "{p99:#}");
        assert!(check(evidence, "fleet_query").is_none(), "{evidence:#}");
    }
}

/// A person rolls back one replica: the other follows from Prometheus
/// (`by: fleet`). Resuming the first does not make it follow the second's
/// rollback again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_mode_spreads_a_rollback_and_a_resume_sticks() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    // Never enough requests to promote: only the stage moves.
    let fleet = Fleet::start(&binary, 1_000_000).await;
    let (first, second) = (&fleet.replicas[0], &fleet.replicas[1]);
    // Both replicas read the fleet: their last window has no `fleet_query` failure.
    for admin in [first.admin_addr, second.admin_addr] {
        wait_until(admin, "reading Prometheus", |v| {
            v["last_evidence"].is_object() && check(&v["last_evidence"], "fleet_query").is_none()
        })
        .await;
    }

    let reply = command(first.admin_addr, "rollback").await;
    assert_eq!(reply["status"], "rolled_back");
    let followed = wait_until(second.admin_addr, "rolled back by the fleet", |v| {
        v["status"] == "rolled_back"
    })
    .await;
    assert_eq!(followed["weight"], 0.0);
    let last = followed["history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (last["verdict"].clone(), last["by"].clone()),
        ("rollback".into(), "fleet".into()),
        "{followed:#}"
    );

    assert_eq!(
        command(first.admin_addr, "resume").await["status"],
        "running"
    );
    let holds_before = hold_count(first.admin_addr).await;
    let started = Instant::now();
    while hold_count(first.admin_addr).await < holds_before + 5 {
        assert!(
            started.elapsed() < DEADLINE,
            "five more windows not judged after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = migration(first.admin_addr).await;
    assert_eq!(
        view["status"], "running",
        "the resume sticks although a replica is rolled back: {view:#}"
    );
}

async fn command(admin: SocketAddr, action: &str) -> Value {
    let client = HttpClient::http1(admin);
    let request = client
        .request(Method::POST, &format!("/api/migrations/orders/{action}"))
        .body(support::empty())
        .expect("request");
    let reply = client.send(request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

// ---------------------------------------------------------------------------
// `strangler check`

/// `check` reports business checks and fleet mode without `prometheus_url`,
/// and a business check named like a built-in one, each at its position.
#[test]
fn check_reports_a_missing_prometheus_url_at_its_position() {
    let text = r#"backends:
  monolith: { url: "http://127.0.0.1:3000" }
  new-svc: { url: "http://127.0.0.1:3001" }
default: monolith
routes:
  - name: payments
    match: { prefix: /api/payments }
    migration:
      from: monolith
      to: new-svc
      stages: [5%, 100%]
      gate:
        checks:
          - { name: payment-success, query: 'sum(x)', min: 0.98 }
          - { name: error_rate, query: 'sum(y)', max: 1 }
  - name: fleet
    match: { prefix: /api/fleet }
    migration:
      from: monolith
      to: new-svc
      stages: [5%, 100%]
      gate: { source: prometheus }
"#;
    let dir = tempfile::tempdir().expect("temporary directory");
    let routes = dir.path().join("routes");
    std::fs::create_dir(&routes).expect("create routes/");
    std::fs::write(routes.join("routes.yaml"), text).expect("write routes.yaml");
    let file = routes.join("routes.yaml").display().to_string();

    let output = Command::new(env!("CARGO_BIN_EXE_strangler"))
        .arg("check")
        .arg(&routes)
        .output()
        .expect("run the strangler binary");

    let out = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert_eq!(output.status.code(), Some(1), "{out}");
    let expected = [
        (
            format!("{file}:14:11: "),
            "business checks need `prometheus_url`",
        ),
        (
            format!("{file}:15:21: "),
            "`error_rate` is the name of a built-in check",
        ),
        (
            format!("{file}:22:23: "),
            "fleet mode needs `prometheus_url`",
        ),
    ];
    for (prefix, needle) in &expected {
        assert!(
            out.lines()
                .any(|l| l.starts_with(prefix.as_str()) && l.contains(needle)),
            "no line `{prefix}...{needle}...` in:\n{out}"
        );
    }
    assert_eq!(out.lines().count(), expected.len(), "{out}");
}

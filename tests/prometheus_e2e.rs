//! End to end with a real Prometheus: the proxy under steady loopback
//! traffic, a Prometheus server scraping its admin listener every second
//! with the shipped rules loaded, and every query of the shipped Grafana
//! dashboard asked of that server.
//!
//! Needs `prometheus` on `PATH` (Debian's package `prometheus`), and python3
//! with PyYAML for `.ci/promtool.sh --list-queries`. CI installs both in
//! `.ci/run`, so there the test always runs. Where `prometheus` is missing
//! the test prints why it did nothing and passes.

#[path = "support/prometheus.rs"]
mod prometheus_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

use prometheus_support::{free_addr, prometheus_binary, Prometheus};
use support::{routes_file, FakeBackend, TestProxy};

/// Longest wait for Prometheus to have scraped enough for every core panel.
const DATA_DEADLINE: Duration = Duration::from_secs(90);
/// Pause between two looks at Prometheus (it scrapes every second).
const POLL: Duration = Duration::from_millis(500);

/// The panels an operator reads first, by title and query id: each must
/// return data once traffic flows.
const CORE_PANELS: &[(&str, &str)] = &[
    ("Request rate by backend", "A"),
    ("Failure ratio by backend", "A"),
    ("Latency p50 / p95 / p99 by backend", "C"),
    ("Shadow match rate", "A"),
    ("Migrations: stage, configured and measured share", "B"),
];

/// Recording rules the alerts and the gate use: each must have data too.
const CORE_RECORDS: &[&str] = &[
    "route_backend:strangler_requests:rate1m",
    "route_backend:strangler_request_duration_seconds:p99_rate1m",
    "route:strangler_shadow_requests:match_ratio_rate1m",
];

/// Aborts the traffic task when the test ends, however it ends.
struct Traffic(JoinHandle<()>);

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every dashboard query as (panel title, query id, PromQL), variables
/// filled in with the script's defaults.
fn dashboard_queries(repo: &Path) -> Vec<(String, String, String)> {
    let output = Command::new(repo.join(".ci/promtool.sh"))
        .args(["--list-queries", "--titles"])
        .current_dir(repo)
        .output()
        .expect("run .ci/promtool.sh (needs bash and python3 with PyYAML)");
    assert!(
        output.status.success(),
        ".ci/promtool.sh --list-queries failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8 query list");
    let queries: Vec<(String, String, String)> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.splitn(3, '\t');
            let mut next = || {
                fields
                    .next()
                    .unwrap_or_else(|| panic!("not TITLE<TAB>REF<TAB>QUERY: {line}"))
                    .to_string()
            };
            (next(), next(), next())
        })
        .collect();
    assert!(!queries.is_empty(), "the dashboard has no queries");
    queries
}

/// Every dashboard query is valid PromQL for a real Prometheus scraping the
/// proxy, and the core panels (request rate, failure ratio, p99, shadow
/// match rate, migration weight) and recording rules return data. The
/// shipped rules load and evaluate without error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_are_valid_and_core_panels_have_data() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let queries = dashboard_queries(&repo);
    for (title, ref_id) in CORE_PANELS {
        assert!(
            queries.iter().any(|(t, r, _)| t == title && r == ref_id),
            "the dashboard has no panel {title:?} with query {ref_id}"
        );
    }

    // The same JSON from every backend: the shadow matches.
    let monolith = FakeBackend::start("{\"items\":[1,2,3]}").await;
    let orders = FakeBackend::start("{\"items\":[1,2,3]}").await;
    let catalog = FakeBackend::start("{\"items\":[1,2,3]}").await;
    let billing = FakeBackend::start("{\"items\":[1,2,3]}").await;
    let routes = r#"
  - name: orders
    match: { prefix: "/api/orders" }
    backend: orders
    fallback: monolith
  - name: catalog
    match: { prefix: "/api/catalog" }
    backend: monolith
    shadow: { backend: catalog-svc, sample: 100% }
  - name: billing
    match: { prefix: "/api/billing" }
    migration: { from: monolith, to: billing-svc, stages: [shadow, 50%, 100%] }
"#;
    let backends = [
        ("monolith", monolith.url()),
        ("orders", orders.url()),
        ("catalog-svc", catalog.url()),
        ("billing-svc", billing.url()),
    ];
    let backends: Vec<(&str, &str)> = backends
        .iter()
        .map(|(name, url)| (*name, url.as_str()))
        .collect();
    let proxy = TestProxy::start(&routes_file(&backends, routes)).await;

    // About 200 requests a second over the routes until the test ends.
    let client = proxy.client();
    let _traffic = Traffic(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            for path in [
                "/api/orders/7",
                "/api/catalog/shoes",
                "/api/billing/invoices",
                "/elsewhere",
            ] {
                let req = client
                    .request(http::Method::GET, path)
                    .body(support::empty())
                    .expect("request");
                // A failed request shows in the panels; it must not stop the traffic.
                let _ = client.try_send(req).await;
            }
        }
    }));

    // With the shipped recording and alerting rules; the alerts match
    // `up{job="strangler"}`.
    let rules = repo.join("deploy/prometheus");
    let prometheus = Prometheus::start(
        &binary,
        free_addr(),
        "strangler",
        &[proxy.admin_addr],
        &[
            rules.join("recording.rules.yml"),
            rules.join("alerts.rules.yml"),
        ],
    )
    .await;

    let mut expected: Vec<(&str, &str)> = CORE_PANELS
        .iter()
        .map(|(title, ref_id)| {
            let (_, _, promql) = queries
                .iter()
                .find(|(t, r, _)| t == title && r == ref_id)
                .expect("listed above");
            (*title, promql.as_str())
        })
        .collect();
    expected.extend(CORE_RECORDS.iter().map(|record| (*record, *record)));
    let started = Instant::now();
    loop {
        let mut empty = Vec::new();
        for (what, promql) in &expected {
            if prometheus.query(promql).await.is_empty() {
                empty.push(*what);
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < DATA_DEADLINE,
            "no data after {DATA_DEADLINE:?} in {empty:?}\nPrometheus log:\n{}",
            prometheus.log_tail()
        );
        tokio::time::sleep(POLL).await;
    }

    for (title, ref_id, promql) in &queries {
        // `query` asserts status success: the query parsed and evaluated.
        let _ = prometheus.query(promql).await;
        eprintln!("ok: {title} ({ref_id})");
    }

    let reply = prometheus.client().get("/api/v1/rules").await;
    let rules: Value = serde_json::from_slice(&reply.body).expect("JSON from /api/v1/rules");
    let groups = rules["data"]["groups"].as_array().expect("rule groups");
    assert!(
        !groups.is_empty(),
        "no rule groups loaded:\n{}",
        prometheus.log_tail()
    );
    for group in groups {
        for rule in group["rules"].as_array().into_iter().flatten() {
            assert_ne!(
                rule["health"], "err",
                "rule {} fails: {}",
                rule["name"], rule["lastError"]
            );
        }
    }
}

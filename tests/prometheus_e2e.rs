//! End to end with a real Prometheus: the proxy under steady loopback
//! traffic, a Prometheus server scraping its admin listener every second
//! with the shipped rules loaded, and every query of the shipped Grafana
//! dashboard asked of that server.
//!
//! Needs `prometheus` on `PATH` (Debian's package `prometheus`), and python3
//! with PyYAML for `.ci/promtool.sh --list-queries`. CI installs both in
//! `.ci/run`, so there the test always runs. Where `prometheus` is missing
//! the test prints why it did nothing and passes.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

use support::{routes_file, FakeBackend, HttpClient, TestProxy};

/// Longest wait for Prometheus to have scraped enough for every core panel.
const DATA_DEADLINE: Duration = Duration::from_secs(90);
/// Longest wait for Prometheus to start.
const START_DEADLINE: Duration = Duration::from_secs(30);
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

/// A Prometheus server in a child process; killed when dropped.
struct Prometheus {
    child: Child,
    client: HttpClient,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Its log, to explain a failure.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `/api/v1/query` at the current time. Panics unless the API says
    /// `success`, which it does only for valid PromQL.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let reply = self
            .client
            .get(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .await;
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        assert_eq!(
            body["status"], "success",
            "query refused ({}): {promql}\n{body}",
            reply.status
        );
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Aborts the traffic task when the test ends, however it ends.
struct Traffic(JoinHandle<()>);

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

/// Starts Prometheus on a free loopback port, scraping `target` every
/// second, with the shipped recording and alerting rules.
async fn start_prometheus(
    binary: &Path,
    repo: &Path,
    dir: &Path,
    target: std::net::SocketAddr,
) -> Prometheus {
    let rules = repo.join("deploy/prometheus");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {}\n  - {}\n\
         scrape_configs:\n  - job_name: strangler\n    static_configs:\n      - targets: [\"{target}\"]\n",
        rules.join("recording.rules.yml").display(),
        rules.join("alerts.rules.yml").display(),
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write prometheus.yml");
    // Bound and released at once; nothing else on loopback takes it in between.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port");
    let log = dir.join("prometheus.log");
    let log_file = std::fs::File::create(&log).expect("create prometheus.log");
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file handle"))
        .stderr(log_file)
        .spawn()
        .expect("start prometheus");
    let prometheus = Prometheus {
        child,
        client: HttpClient::http1(addr),
        log,
    };

    let started = Instant::now();
    loop {
        let ready = prometheus
            .client
            .request(http::Method::GET, "/-/ready")
            .body(support::empty())
            .expect("request");
        if let Ok(reply) = prometheus.client.try_send(ready).await {
            if reply.status == 200 {
                return prometheus;
            }
        }
        assert!(
            started.elapsed() < START_DEADLINE,
            "Prometheus not ready after {START_DEADLINE:?}:\n{}",
            prometheus.log_tail()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Every dashboard query is valid PromQL for a real Prometheus scraping the
/// proxy, and the core panels (request rate, failure ratio, p99, shadow
/// match rate, migration weight) and recording rules return data. The
/// shipped rules load and evaluate without error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_are_valid_and_core_panels_have_data() {
    let Some(binary) = on_path("prometheus") else {
        eprintln!("SKIPPED: `prometheus` is not on PATH (Debian package `prometheus`; CI installs it in .ci/run)");
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

    let dir = tempfile::tempdir().expect("temporary directory");
    let prometheus = start_prometheus(&binary, &repo, dir.path(), proxy.admin_addr).await;

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

    let reply = prometheus.client.get("/api/v1/rules").await;
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

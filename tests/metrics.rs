//! `/metrics` as a contract: the families' names, types and label names are
//! stable, and label values come from the route table only, so a scan of
//! random paths, hosts and methods cannot create series.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt;
use http::Method;

use support::{dead_url, empty, eventually, full, routes_file, FakeBackend, HttpClient, TestProxy};

/// Every family, its type and its label names (`le` of histogram buckets
/// aside). Dashboards, alert rules and the gate depend on these: a change
/// here is a breaking change for every deployed dashboard.
const GOLDEN: &[(&str, &str, &[&str])] = &[
    ("strangler_backend_up", "gauge", &["backend"]),
    ("strangler_circuit_state", "gauge", &["backend"]),
    (
        "strangler_upstream_connections_total",
        "counter",
        &["backend"],
    ),
    ("strangler_config_info", "gauge", &["version"]),
    (
        "strangler_config_last_reload_success_timestamp_seconds",
        "gauge",
        &[],
    ),
    ("strangler_config_reloads_total", "counter", &["result"]),
    ("strangler_connections_open", "gauge", &["listener"]),
    ("strangler_connections_parked", "gauge", &["listener"]),
    ("strangler_rejected_requests_total", "counter", &["reason"]),
    ("strangler_connections_total", "counter", &["listener"]),
    ("strangler_worker_connections_total", "counter", &["worker"]),
    (
        "strangler_fallbacks_total",
        "counter",
        &["from", "route", "to"],
    ),
    (
        "strangler_gate_decisions_total",
        "counter",
        &["decision", "route"],
    ),
    ("strangler_inflight_requests", "gauge", &["route"]),
    ("strangler_migration_paused", "gauge", &["route"]),
    ("strangler_migration_stage", "gauge", &["route"]),
    ("strangler_migration_weight", "gauge", &["route"]),
    ("strangler_request_body_bytes", "histogram", &["route"]),
    (
        "strangler_request_duration_seconds",
        "histogram",
        &["backend", "route"],
    ),
    (
        "strangler_request_failures_total",
        "counter",
        &["backend", "route"],
    ),
    (
        "strangler_requests_total",
        "counter",
        &["backend", "code", "method", "route"],
    ),
    (
        "strangler_response_body_bytes",
        "histogram",
        &["backend", "route"],
    ),
    ("strangler_retries_total", "counter", &["backend", "route"]),
    (
        "strangler_shadow_duration_seconds",
        "histogram",
        &["route", "side"],
    ),
    (
        "strangler_shadow_field_mismatches_total",
        "counter",
        &["field", "route"],
    ),
    (
        "strangler_shadow_requests_total",
        "counter",
        &["outcome", "route"],
    ),
    ("strangler_trace_spans_total", "counter", &["outcome"]),
    (
        "strangler_upstream_duration_seconds",
        "histogram",
        &["backend", "route"],
    ),
    (
        "strangler_upstream_errors_total",
        "counter",
        &["backend", "kind", "route"],
    ),
];

/// Distinct random requests in the cardinality scan.
const SCAN_REQUESTS: usize = 10_000;
/// Requests of the scan in flight at once.
const SCAN_CONCURRENCY: usize = 32;

// === parsing the exposition format ===

/// One sample line: the series (name and labels, as written) and its parts.
struct Sample<'a> {
    series: &'a str,
    name: &'a str,
    labels: Vec<&'a str>,
}

fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let series = line
                .rsplit_once(' ')
                .map_or(line, |(series, _value)| series);
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, label_names(rest.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            Sample {
                series,
                name,
                labels,
            }
        })
}

/// The names of `a="x",b="y\"z"`: a quote inside a value is escaped.
fn label_names(pairs: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = pairs;
    while let Some((name, after)) = rest.split_once("=\"") {
        names.push(name.trim_start_matches(','));
        let mut escaped = false;
        let end = after
            .char_indices()
            .find(|&(_, c)| {
                let is_end = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                is_end
            })
            .map_or(after.len(), |(i, _)| i + 1);
        rest = &after[end..];
    }
    names
}

/// Family name to type, from the `# TYPE` lines.
fn family_types(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect()
}

/// Family name to the union of its samples' label names (`le` aside).
fn family_labels(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let types = family_types(text);
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sample in samples(text) {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                sample
                    .name
                    .strip_suffix(suffix)
                    .filter(|f| types.get(f) == Some(&"histogram"))
            })
            .unwrap_or(sample.name);
        let entry = labels.entry(family.to_string()).or_default();
        entry.extend(
            sample
                .labels
                .iter()
                .filter(|l| **l != "le")
                .map(ToString::to_string),
        );
    }
    labels
}

async fn scrape(proxy: &TestProxy) -> String {
    let reply = HttpClient::http1(proxy.admin_addr).get("/metrics").await;
    assert_eq!(reply.status, 200, "/metrics");
    reply.text().to_string()
}

// === the golden list ===

/// Routes that reach every feature with a metric: a plain route, a shadow
/// whose candidate disagrees, a gated migration, and a dead backend with a
/// fallback.
async fn all_features_proxy() -> (TestProxy, Vec<FakeBackend>) {
    let monolith = FakeBackend::start("{\"from\":\"monolith\"}").await;
    let candidate = FakeBackend::start("{\"from\":\"candidate\"}").await;
    let billing = FakeBackend::start("{\"from\":\"monolith\"}").await;
    let dead = dead_url().await;
    let routes = r#"
  - name: catalog
    match: { prefix: "/api/catalog" }
    backend: monolith
    shadow: { backend: candidate, sample: 100% }
  - name: billing
    match: { prefix: "/api/billing" }
    migration: { from: monolith, to: billing-svc, stages: [shadow, 50%, 100%] }
  - name: orders
    match: { prefix: "/api/orders" }
    backend: gone
    fallback: monolith
"#;
    let yaml = routes_file(
        &[
            ("monolith", &monolith.url()),
            ("candidate", &candidate.url()),
            ("billing-svc", &billing.url()),
            ("gone", &dead),
        ],
        routes,
    );
    (
        TestProxy::start(&yaml).await,
        vec![monolith, candidate, billing],
    )
}

/// After traffic through every feature, `/metrics` has exactly the golden
/// families, each with its type and label names.
#[tokio::test]
async fn metric_names_types_and_labels_match_the_golden_list() {
    let (proxy, _backends) = all_features_proxy().await;
    let client = proxy.client();
    for path in ["/", "/api/catalog/1", "/api/billing/1", "/api/orders/1"] {
        assert_eq!(client.get(path).await.status, 200, "GET {path}");
    }
    let upload = client
        .request(Method::POST, "/upload")
        .body(full("twelve bytes"))
        .expect("request");
    assert_eq!(client.send(upload).await.status, 200);
    eventually("the shadow comparisons are counted", || async {
        scrape(&proxy)
            .await
            .contains("strangler_shadow_field_mismatches_total{")
    })
    .await;

    let text = scrape(&proxy).await;
    let types = family_types(&text);
    let exposed: BTreeSet<&str> = types
        .keys()
        .copied()
        .filter(|name| name.starts_with("strangler_"))
        .collect();
    let golden: BTreeSet<&str> = GOLDEN.iter().map(|(name, _, _)| *name).collect();
    assert_eq!(
        exposed, golden,
        "families on /metrics (left) differ from the golden list (right)"
    );

    let labels = family_labels(&text);
    for (name, kind, golden_labels) in GOLDEN {
        assert_eq!(types[name], *kind, "type of {name}");
        let seen = labels
            .get(*name)
            .unwrap_or_else(|| panic!("{name} has no series after the traffic:\n{text}"));
        let golden_labels: BTreeSet<String> =
            golden_labels.iter().map(ToString::to_string).collect();
        assert_eq!(seen, &golden_labels, "label names of {name}");
    }
}

/// Before any request, every family is listed, and the series whose label
/// values are known from the start (reload results, the listener's
/// connections, a shadowed route's outcomes, a gated route's decisions)
/// are there at 0.
#[tokio::test]
async fn every_family_is_listed_at_start_and_known_series_start_at_zero() {
    let (proxy, _backends) = all_features_proxy().await;
    let text = scrape(&proxy).await;
    let types = family_types(&text);
    for (name, kind, _) in GOLDEN {
        assert_eq!(types.get(name), Some(kind), "{name} at start:\n{text}");
    }
    for series in [
        "strangler_config_reloads_total{result=\"failure\"} 0",
        "strangler_config_reloads_total{result=\"success\"} 1",
        "strangler_connections_open{listener=\"proxy\"} 0",
        "strangler_connections_parked{listener=\"proxy\"} 0",
        "strangler_rejected_requests_total{reason=\"head_timeout\"} 0",
        "strangler_connections_total{listener=\"proxy\"} 0",
        "strangler_worker_connections_total{worker=\"0\"} 0",
        "strangler_shadow_requests_total{outcome=\"mismatch\",route=\"catalog\"} 0",
        "strangler_gate_decisions_total{decision=\"rollback\",route=\"billing\"} 0",
    ] {
        assert!(
            text.lines().any(|line| line == series),
            "no `{series}` at start:\n{text}"
        );
    }
}

// === cardinality ===

/// A random path of 1 to 4 segments, sometimes under a real route's prefix
/// (whose template parameters must not become labels either).
fn random_path(rng: &mut fastrand::Rng) -> String {
    let mut path = String::new();
    if rng.bool() {
        path.push_str("/api/orders");
    }
    for _ in 0..rng.usize(1..=4) {
        path.push('/');
        path.extend((0..rng.usize(1..=12)).map(|_| rng.alphanumeric()));
    }
    if rng.u8(..4) == 0 {
        path.push_str(&format!("?q={}", rng.u64(..)));
    }
    path
}

/// The series on `/metrics`: sample lines without their values.
fn series_set(text: &str) -> BTreeSet<String> {
    samples(text)
        .map(|sample| sample.series.to_string())
        .collect()
}

/// 10,000 requests with distinct random paths, random hosts and random
/// extension methods add no series: after one request of each kind has
/// created the routes' series, the set of series stays the same.
#[tokio::test]
async fn a_scan_of_random_paths_adds_no_series() {
    let monolith = FakeBackend::start("monolith").await;
    let orders = FakeBackend::start("orders").await;
    let routes = r#"
  - name: orders
    match: { path: "/api/orders/{id}" }
    backend: orders
"#;
    let proxy = TestProxy::start(&routes_file(
        &[("monolith", &monolith.url()), ("orders", &orders.url())],
        routes,
    ))
    .await;
    let client = proxy.client();
    // One request of each kind the scan sends creates the series it may
    // touch: GET and an extension method (counted as `other`), on the
    // default route and on the template route.
    for (method, path) in [
        ("GET", "/warm"),
        ("SCAN", "/warm"),
        ("GET", "/api/orders/1"),
        ("SCAN", "/api/orders/1"),
    ] {
        let req = client
            .request(Method::from_bytes(method.as_bytes()).unwrap(), path)
            .body(empty())
            .unwrap();
        assert_eq!(client.send(req).await.status, 200, "{method} {path}");
    }
    let before = scrape(&proxy).await;

    let mut rng = fastrand::Rng::with_seed(6);
    let requests: Vec<(Method, String, String)> = (0..SCAN_REQUESTS)
        .map(|i| {
            let method = match rng.u8(..4) {
                0 => Method::from_bytes(format!("X{}", rng.u32(..)).as_bytes()).expect("token"),
                _ => Method::GET,
            };
            (method, random_path(&mut rng), format!("h{i}.scan.test"))
        })
        .collect();
    let statuses: Vec<u16> = futures_util::stream::iter(requests)
        .map(|(method, path, host)| {
            let client = client.clone();
            async move {
                let req = client
                    .request(method, &path)
                    .header("host", host)
                    .body(empty())
                    .expect("request");
                client.send(req).await.status.as_u16()
            }
        })
        .buffer_unordered(SCAN_CONCURRENCY)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every scan request is answered by a backend"
    );
    assert_eq!(monolith.hits() + orders.hits(), SCAN_REQUESTS + 4);

    let after = scrape(&proxy).await;
    let (before_set, after_set) = (series_set(&before), series_set(&after));
    let added: Vec<&String> = after_set.difference(&before_set).collect();
    assert!(
        added.is_empty(),
        "the scan added {} series, e.g. {:?}",
        added.len(),
        &added[..added.len().min(10)]
    );
    assert_eq!(
        after.lines().count(),
        before.lines().count(),
        "lines of /metrics before and after the scan"
    );
}

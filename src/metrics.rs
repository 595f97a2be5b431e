//! Every Prometheus family the proxy exports, defined in one place.
//!
//! Names and labels are a contract (DESIGN.md): dashboards, alert rules and
//! the gate query them. Label values come from the route table only, never
//! from raw paths or hosts, so a scanner cannot create series. Per-route
//! handles are resolved when a snapshot is compiled (`RouteMetrics`), so
//! recording a request is a few atomic operations and takes no lock.

use std::sync::{Arc, OnceLock};

use http::Method;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::routing::{BackendId, RouteName};
use crate::shadow::Outcome;

/// Buckets for API latency, 1 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for body sizes, 64 B to 16 MiB in steps of 8: coarse on
/// purpose, since each bucket is a series per route and backend.
const BODY_BYTES_BUCKETS: &[f64] = &[
    64.0, 512.0, 4096.0, 32768.0, 262144.0, 2097152.0, 16777216.0,
];

/// The `listener` label of the client listener's connection counters.
pub const PROXY_LISTENER: &str = "proxy";
/// The `result` label values of `strangler_config_reloads_total`.
pub const RELOAD_RESULTS: [&str; 2] = ["success", "failure"];

/// The registry and all families. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

pub struct Families {
    registry: Registry,
    /// Name, help and type of every family, for those with no series yet.
    catalogue: Vec<FamilyDesc>,
    pub requests: IntCounterVec,
    pub failures: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub request_body: HistogramVec,
    pub response_body: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub inflight: IntGaugeVec,
    pub fallbacks: IntCounterVec,
    pub retries: IntCounterVec,
    pub connections_open: IntGaugeVec,
    pub connections_parked: IntGaugeVec,
    pub connections: IntCounterVec,
    /// Accepted connections by worker thread (`--workers`): how evenly the
    /// kernel spreads them.
    pub worker_connections: IntCounterVec,
    pub shadow_requests: IntCounterVec,
    pub shadow_field_mismatches: IntCounterVec,
    pub shadow_duration: HistogramVec,
    pub migration_stage: IntGaugeVec,
    pub migration_weight: GaugeVec,
    pub migration_paused: IntGaugeVec,
    pub gate_decisions: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_info: IntGaugeVec,
    pub config_last_success: Gauge,
    pub backend_up: IntGaugeVec,
    pub circuit_state: IntGaugeVec,
    pub upstream_connections: IntCounterVec,
    pub trace_spans: IntCounterVec,
    pub rejected: IntCounterVec,
}

/// What `/metrics` says of a family that has no series yet.
struct FamilyDesc {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
}

impl std::ops::Deref for Metrics {
    type Target = Families;
    fn deref(&self) -> &Families {
        &self.inner
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Registers families and notes each one in the catalogue.
struct Builder {
    registry: Registry,
    catalogue: Vec<FamilyDesc>,
}

impl Builder {
    fn register<C: prometheus::core::Collector + Clone + 'static>(
        &mut self,
        family: C,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
    ) -> C {
        self.registry
            .register(Box::new(family.clone()))
            .expect("each family is registered once");
        self.catalogue.push(FamilyDesc { name, help, kind });
        family
    }

    fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[&str],
    ) -> IntCounterVec {
        let family = IntCounterVec::new(Opts::new(name, help), labels)
            .expect("metric name and labels are static and valid");
        self.register(family, name, help, "counter")
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, labels: &[&str]) -> IntGaugeVec {
        let family = IntGaugeVec::new(Opts::new(name, help), labels)
            .expect("metric name and labels are static and valid");
        self.register(family, name, help, "gauge")
    }

    fn float_gauge(&mut self, name: &'static str, help: &'static str, labels: &[&str]) -> GaugeVec {
        let family = GaugeVec::new(Opts::new(name, help), labels)
            .expect("metric name and labels are static and valid");
        self.register(family, name, help, "gauge")
    }

    fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        let family =
            HistogramVec::new(opts, labels).expect("histogram options are static and valid");
        self.register(family, name, help, "histogram")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut b = Builder {
            registry: Registry::new(),
            catalogue: Vec::new(),
        };
        let last_success_name = "strangler_config_last_reload_success_timestamp_seconds";
        let last_success_help = "Unix time of the last successful load of routes/.";
        let config_last_success =
            Gauge::new(last_success_name, last_success_help).expect("static metric");
        let config_last_success = b.register(
            config_last_success,
            last_success_name,
            last_success_help,
            "gauge",
        );
        let families = Families {
            requests: b.counter("strangler_requests_total", "Requests answered, by status class.", &["route", "backend", "method", "code"]),
            failures: b.counter("strangler_request_failures_total", "Requests that count as failures by the route's definition.", &["route", "backend"]),
            duration: b.histogram("strangler_request_duration_seconds", "Total time from request to response headers.", &["route", "backend"], LATENCY_BUCKETS),
            upstream_duration: b.histogram("strangler_upstream_duration_seconds", "Time for the backend's response headers.", &["route", "backend"], LATENCY_BUCKETS),
            request_body: b.histogram("strangler_request_body_bytes", "Request body sizes, from Content-Length (bodies of unknown length are not observed).", &["route"], BODY_BYTES_BUCKETS),
            response_body: b.histogram("strangler_response_body_bytes", "Response body sizes as the backend announced them (bodies of unknown length are not observed).", &["route", "backend"], BODY_BYTES_BUCKETS),
            upstream_errors: b.counter("strangler_upstream_errors_total", "Failed upstream exchanges, by kind.", &["route", "backend", "kind"]),
            inflight: b.gauge("strangler_inflight_requests", "Requests in flight.", &["route"]),
            fallbacks: b.counter("strangler_fallbacks_total", "Requests answered by the fallback backend.", &["route", "from", "to"]),
            retries: b.counter("strangler_retries_total", "Retries sent to a backend.", &["route", "backend"]),
            connections_open: b.gauge("strangler_connections_open", "Client connections open.", &["listener"]),
            connections_parked: b.gauge("strangler_connections_parked", "Idle keep-alive connections parked: open, holding no buffers.", &["listener"]),
            connections: b.counter("strangler_connections_total", "Client connections accepted.", &["listener"]),
            worker_connections: b.counter("strangler_worker_connections_total", "Client connections accepted, by worker thread.", &["worker"]),
            shadow_requests: b.counter("strangler_shadow_requests_total", "Shadow comparisons, by outcome.", &["route", "outcome"]),
            shadow_field_mismatches: b.counter("strangler_shadow_field_mismatches_total", "Mismatching fields (bounded per route).", &["route", "field"]),
            shadow_duration: b.histogram("strangler_shadow_duration_seconds", "Latency of shadowed answers, primary and candidate.", &["route", "side"], LATENCY_BUCKETS),
            migration_stage: b.gauge("strangler_migration_stage", "Index of the current migration stage; -1 when rolled back.", &["route"]),
            migration_weight: b.float_gauge("strangler_migration_weight", "Share of the route's traffic on the new service (0-1).", &["route"]),
            migration_paused: b.gauge("strangler_migration_paused", "1 when a person paused the migration.", &["route"]),
            gate_decisions: b.counter("strangler_gate_decisions_total", "Gate verdicts.", &["route", "decision"]),
            config_reloads: b.counter("strangler_config_reloads_total", "Loads of routes/, by result.", &["result"]),
            config_info: b.gauge("strangler_config_info", "The active configuration's version.", &["version"]),
            config_last_success,
            backend_up: b.gauge("strangler_backend_up", "1 when the backend is healthy.", &["backend"]),
            circuit_state: b.gauge("strangler_circuit_state", "0 closed, 1 half-open, 2 open.", &["backend"]),
            upstream_connections: b.counter("strangler_upstream_connections_total", "Connections opened to the backend (its pools, mirrors included).", &["backend"]),
            trace_spans: b.counter("strangler_trace_spans_total", "Server spans for OTLP export (server.tracing), by outcome.", &["outcome"]),
            rejected: b.counter("strangler_rejected_requests_total", "Requests refused before any route was chosen, by reason.", &["reason"]),
            registry: b.registry,
            catalogue: b.catalogue,
        };
        // Series whose label values are known now start at 0, so that the
        // first scrape has them: `increase()` of a counter that appears at
        // 1 misses that first event, and an alert on failed reloads needs
        // a series to compare.
        for result in RELOAD_RESULTS {
            families.config_reloads.with_label_values(&[result]);
        }
        families
            .connections_open
            .with_label_values(&[PROXY_LISTENER]);
        families
            .connections_parked
            .with_label_values(&[PROXY_LISTENER]);
        families.connections.with_label_values(&[PROXY_LISTENER]);
        for outcome in TRACE_SPAN_OUTCOMES {
            families.trace_spans.with_label_values(&[outcome]);
        }
        for reason in REJECT_REASONS {
            families.rejected.with_label_values(&[reason]);
        }
        Metrics {
            inner: Arc::new(families),
        }
    }

    /// The text exposition format for `/metrics`.
    ///
    /// The prometheus crate leaves out a family that has no series yet (a
    /// label-vec family before its first use). Its `# HELP` and `# TYPE`
    /// lines are written anyway, so that every family of the contract is
    /// visible from the first scrape.
    pub fn encode(&self) -> String {
        let gathered = self.registry.gather();
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for I/O reasons; a family that
        // fails to encode is skipped rather than failing the scrape.
        let _ = TextEncoder::new().encode(&gathered, &mut out);
        for desc in &self.catalogue {
            if !gathered.iter().any(|family| family.get_name() == desc.name) {
                let FamilyDesc { name, help, kind } = desc;
                out.extend_from_slice(
                    format!("# HELP {name} {help}\n# TYPE {name} {kind}\n").as_bytes(),
                );
            }
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Marks `version` as the active configuration.
    pub fn set_config_version(&self, old: Option<&str>, new: &str) {
        if let Some(old) = old {
            let _ = self.config_info.remove_label_values(&[old]);
        }
        self.config_info.with_label_values(&[new]).set(1);
    }

    /// Creates a shadowed route's outcome counters at 0 (every outcome, so
    /// a match ratio has all its terms from the first comparison on).
    pub fn init_shadow_series(&self, route: &str) {
        for outcome in SHADOW_OUTCOMES {
            self.shadow_requests.with_label_values(&[route, outcome]);
        }
    }

    /// Creates a gated route's decision counters at 0.
    pub fn init_gate_series(&self, route: &str) {
        for decision in GATE_DECISIONS {
            self.gate_decisions.with_label_values(&[route, decision]);
        }
    }
}

/// The `outcome` label values of `strangler_shadow_requests_total`.
pub const SHADOW_OUTCOMES: [&str; 5] = ["match", "mismatch", "error", "dropped", "skipped"];
/// The `outcome` label values of `strangler_trace_spans_total`: sent to
/// the collector, lost in a failed export, or dropped from a full queue.
pub const TRACE_SPAN_OUTCOMES: [&str; 3] = ["exported", "failed", "dropped"];
/// The `reason` label values of `strangler_rejected_requests_total`: 400s
/// for framing (smuggling, a head hyper cannot parse, CONNECT, ...), the
/// path or the host; 431 for a head too large; a request head that did not
/// arrive in `header_read_timeout` (408, or a close when a 408 could not be
/// written); a new connection that sent nothing in time.
pub const REJECT_REASONS: [&str; 6] = [
    "framing",
    "path",
    "host",
    "too_large",
    "head_timeout",
    "silent_connection",
];
/// The `decision` label values of `strangler_gate_decisions_total`.
pub const GATE_DECISIONS: [&str; 3] = ["promote", "hold", "rollback"];

/// The class label of a status: `2xx`..`5xx`.
fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// The series of one route and one backend, resolved at compile time.
pub struct BackendSeries {
    backend: BackendId,
    labels: [Arc<str>; 2],
    family: IntCounterVec,
    error_family: IntCounterVec,
    /// Created on first use: most routes see few methods and classes.
    requests: [[OnceLock<IntCounter>; 5]; 8],
    errors: [OnceLock<IntCounter>; 5],
    pub duration: Histogram,
    pub upstream_duration: Histogram,
    pub response_body: Histogram,
    pub failures: IntCounter,
    pub retries: IntCounter,
}

/// A route's pre-resolved series: one `BackendSeries` per backend it can use.
pub struct RouteMetrics {
    pub route: RouteName,
    pub inflight: IntGauge,
    pub request_body: Histogram,
    fallbacks: IntCounterVec,
    shadow_outcomes: IntCounterVec,
    /// Created on the first drop: only shadowed routes have the series.
    shadow_dropped: OnceLock<IntCounter>,
    series: Box<[BackendSeries]>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "RouteMetrics({})", self.route)
    }
}

impl RouteMetrics {
    pub fn new(metrics: &Metrics, route: &RouteName, backends: &[(BackendId, Arc<str>)]) -> Self {
        let series = backends
            .iter()
            .map(|(id, name)| {
                let labels = [&**route, &**name];
                BackendSeries {
                    backend: *id,
                    labels: [route.clone(), name.clone()],
                    family: metrics.requests.clone(),
                    error_family: metrics.upstream_errors.clone(),
                    requests: Default::default(),
                    errors: Default::default(),
                    duration: metrics.duration.with_label_values(&labels),
                    upstream_duration: metrics.upstream_duration.with_label_values(&labels),
                    response_body: metrics.response_body.with_label_values(&labels),
                    failures: metrics.failures.with_label_values(&labels),
                    retries: metrics.retries.with_label_values(&labels),
                }
            })
            .collect();
        RouteMetrics {
            route: route.clone(),
            inflight: metrics.inflight.with_label_values(&[route]),
            request_body: metrics.request_body.with_label_values(&[route]),
            fallbacks: metrics.fallbacks.clone(),
            shadow_outcomes: metrics.shadow_requests.clone(),
            shadow_dropped: OnceLock::new(),
            series,
        }
    }

    /// Whether these series are for exactly `backends` (ids and names).
    pub fn reaches_exactly(&self, backends: &[(BackendId, Arc<str>)]) -> bool {
        self.series.len() == backends.len()
            && self
                .series
                .iter()
                .zip(backends)
                .all(|(s, (id, name))| s.backend == *id && s.labels[1] == *name)
    }

    /// Counts a request answered by `to` after `from` failed. Rare, so the
    /// label lookup happens here rather than at compile time.
    pub fn count_fallback(&self, from: &str, to: &str) {
        self.fallbacks
            .with_label_values(&[&self.route, from, to])
            .inc();
    }

    /// Counts a mirror dropped because the shadow queue was full. Under
    /// full load most mirrors may be dropped, so the series is looked up
    /// once.
    pub fn count_shadow_dropped(&self) {
        self.shadow_dropped
            .get_or_init(|| {
                self.shadow_outcomes
                    .with_label_values(&[&self.route, Outcome::Dropped.as_str()])
            })
            .inc();
    }

    /// The series for `backend`. Every backend a route can reach was listed
    /// at compile time; an unknown one falls back to the first series so
    /// that recording never fails.
    pub fn series(&self, backend: BackendId) -> Option<&BackendSeries> {
        self.series
            .iter()
            .find(|s| s.backend == backend)
            .or(self.series.first())
    }
}

/// The `kind` label values of `strangler_upstream_errors_total`.
pub const ERROR_KINDS: [&str; 5] = ["connect", "timeout", "reset", "tls", "protocol"];

impl BackendSeries {
    pub fn count_request(&self, method: &Method, status: u16) {
        let (m, c) = (method_index(method), class_index(status));
        self.requests[m][c]
            .get_or_init(|| {
                self.family.with_label_values(&[
                    &self.labels[0],
                    &self.labels[1],
                    METHODS[m],
                    CLASSES[c],
                ])
            })
            .inc();
    }

    /// Counts an upstream error; `kind` indexes `ERROR_KINDS`.
    pub fn count_error(&self, kind: usize) {
        let kind = kind.min(ERROR_KINDS.len() - 1);
        self.errors[kind]
            .get_or_init(|| {
                self.error_family.with_label_values(&[
                    &self.labels[0],
                    &self.labels[1],
                    ERROR_KINDS[kind],
                ])
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Verdict;
    use crate::shadow::Outcome;

    /// The label values pre-created here are the ones the shadow and the
    /// gate record; a new variant fails to compile until it is listed.
    #[test]
    fn pre_created_label_values_match_their_enums() {
        let outcomes = [
            Outcome::Match,
            Outcome::Mismatch,
            Outcome::Error,
            Outcome::Dropped,
            Outcome::Skipped,
        ];
        for outcome in outcomes {
            match outcome {
                Outcome::Match
                | Outcome::Mismatch
                | Outcome::Error
                | Outcome::Dropped
                | Outcome::Skipped => {}
            }
        }
        assert_eq!(outcomes.map(Outcome::as_str), SHADOW_OUTCOMES);
        let verdicts = [Verdict::Promote, Verdict::Hold, Verdict::Rollback];
        for verdict in verdicts {
            match verdict {
                Verdict::Promote | Verdict::Hold | Verdict::Rollback => {}
            }
        }
        assert_eq!(verdicts.map(|v| v.as_str()), GATE_DECISIONS);
    }

    /// A family with no series still has its HELP and TYPE lines.
    #[test]
    fn every_family_is_exposed_before_its_first_series() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for desc in &metrics.catalogue {
            assert!(
                text.contains(&format!("# TYPE {} {}\n", desc.name, desc.kind)),
                "{} missing:\n{text}",
                desc.name
            );
        }
        assert!(text.contains("strangler_config_reloads_total{result=\"failure\"} 0\n"));
        assert!(text.contains("strangler_connections_total{listener=\"proxy\"} 0\n"));
    }
}

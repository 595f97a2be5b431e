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

/// Buckets for API latency, 1 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The registry and all families. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

pub struct Families {
    registry: Registry,
    pub requests: IntCounterVec,
    pub failures: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub inflight: IntGaugeVec,
    pub fallbacks: IntCounterVec,
    pub retries: IntCounterVec,
    pub connections_open: IntGaugeVec,
    pub connections: IntCounterVec,
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

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let family = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric name and labels are static and valid");
    registry
        .register(Box::new(family.clone()))
        .expect("each family is registered once");
    family
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let family = IntGaugeVec::new(Opts::new(name, help), labels)
        .expect("metric name and labels are static and valid");
    registry
        .register(Box::new(family.clone()))
        .expect("each family is registered once");
    family
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let family = HistogramVec::new(opts, labels).expect("histogram options are static and valid");
    registry
        .register(Box::new(family.clone()))
        .expect("each family is registered once");
    family
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let migration_weight = GaugeVec::new(
            Opts::new(
                "strangler_migration_weight",
                "Share of the route's traffic on the new service (0-1).",
            ),
            &["route"],
        )
        .expect("static metric");
        r.register(Box::new(migration_weight.clone())).expect("registered once");
        let config_last_success = Gauge::new(
            "strangler_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load of routes/.",
        )
        .expect("static metric");
        r.register(Box::new(config_last_success.clone())).expect("registered once");
        let families = Families {
            requests: counter(&r, "strangler_requests_total", "Requests answered, by status class.", &["route", "backend", "method", "code"]),
            failures: counter(&r, "strangler_request_failures_total", "Requests that count as failures by the route's definition.", &["route", "backend"]),
            duration: histogram(&r, "strangler_request_duration_seconds", "Total time from request to response headers.", &["route", "backend"]),
            upstream_duration: histogram(&r, "strangler_upstream_duration_seconds", "Time for the backend's response headers.", &["route", "backend"]),
            upstream_errors: counter(&r, "strangler_upstream_errors_total", "Failed upstream exchanges, by kind.", &["route", "backend", "kind"]),
            inflight: gauge(&r, "strangler_inflight_requests", "Requests in flight.", &["route"]),
            fallbacks: counter(&r, "strangler_fallbacks_total", "Requests answered by the fallback backend.", &["route", "from", "to"]),
            retries: counter(&r, "strangler_retries_total", "Retries sent to a backend.", &["route", "backend"]),
            connections_open: gauge(&r, "strangler_connections_open", "Client connections open.", &["listener"]),
            connections: counter(&r, "strangler_connections_total", "Client connections accepted.", &["listener"]),
            shadow_requests: counter(&r, "strangler_shadow_requests_total", "Shadow comparisons, by outcome.", &["route", "outcome"]),
            shadow_field_mismatches: counter(&r, "strangler_shadow_field_mismatches_total", "Mismatching fields (bounded per route).", &["route", "field"]),
            shadow_duration: histogram(&r, "strangler_shadow_duration_seconds", "Latency of shadowed answers, primary and candidate.", &["route", "side"]),
            migration_stage: gauge(&r, "strangler_migration_stage", "Index of the current migration stage; -1 when rolled back.", &["route"]),
            migration_weight,
            migration_paused: gauge(&r, "strangler_migration_paused", "1 when a person paused the migration.", &["route"]),
            gate_decisions: counter(&r, "strangler_gate_decisions_total", "Gate verdicts.", &["route", "decision"]),
            config_reloads: counter(&r, "strangler_config_reloads_total", "Loads of routes/, by result.", &["result"]),
            config_info: gauge(&r, "strangler_config_info", "The active configuration's version.", &["version"]),
            config_last_success,
            backend_up: gauge(&r, "strangler_backend_up", "1 when the backend is healthy.", &["backend"]),
            circuit_state: gauge(&r, "strangler_circuit_state", "0 closed, 1 half-open, 2 open.", &["backend"]),
            registry: r,
        };
        Metrics {
            inner: Arc::new(families),
        }
    }

    /// The text exposition format for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for I/O reasons; a family that
        // fails to encode is skipped rather than failing the scrape.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Marks `version` as the active configuration.
    pub fn set_config_version(&self, old: Option<&str>, new: &str) {
        if let Some(old) = old {
            let _ = self.config_info.remove_label_values(&[old]);
        }
        self.config_info.with_label_values(&[new]).set(1);
    }
}

/// The class label of a status: `2xx`..`5xx`.
fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"];

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
    pub failures: IntCounter,
    pub retries: IntCounter,
}

/// A route's pre-resolved series: one `BackendSeries` per backend it can use.
pub struct RouteMetrics {
    pub route: RouteName,
    pub inflight: IntGauge,
    fallbacks: IntCounterVec,
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
                    failures: metrics.failures.with_label_values(&labels),
                    retries: metrics.retries.with_label_values(&labels),
                }
            })
            .collect();
        RouteMetrics {
            route: route.clone(),
            inflight: metrics.inflight.with_label_values(&[route]),
            fallbacks: metrics.fallbacks.clone(),
            series,
        }
    }

    /// Counts a request answered by `to` after `from` failed. Rare, so the
    /// label lookup happens here rather than at compile time.
    pub fn count_fallback(&self, from: &str, to: &str) {
        self.fallbacks.with_label_values(&[&self.route, from, to]).inc();
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
                self.family
                    .with_label_values(&[&self.labels[0], &self.labels[1], METHODS[m], CLASSES[c]])
            })
            .inc();
    }

    /// Counts an upstream error; `kind` indexes `ERROR_KINDS`.
    pub fn count_error(&self, kind: usize) {
        let kind = kind.min(ERROR_KINDS.len() - 1);
        self.errors[kind]
            .get_or_init(|| {
                self.error_family
                    .with_label_values(&[&self.labels[0], &self.labels[1], ERROR_KINDS[kind]])
            })
            .inc();
    }
}

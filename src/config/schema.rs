//! The serde types that mirror a route file, key for key.
//!
//! Nothing outside `config/` sees these: `compile` turns them into the
//! routing types. Every struct denies unknown keys so that a typo is an
//! error with a position, not a silently ignored setting.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::values::{ByteSize, DurationSpec, Percent};

/// One `routes/*.yaml` file. Files are merged: backends and routes add up,
/// `default` and `server` may each appear in one file only.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    #[serde(default)]
    pub server: Option<ServerSpec>,
    #[serde(default)]
    pub backends: BTreeMap<String, BackendSpec>,
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

#[derive(Debug, Default, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Adds a `Via` header to requests and responses when set.
    pub via: Option<String>,
    /// Default cap on a request body for routes that set no `max_body`.
    pub max_body: Option<ByteSize>,
    pub header_read_timeout: Option<DurationSpec>,
    pub max_header_bytes: Option<ByteSize>,
    pub max_headers: Option<usize>,
    pub max_connections: Option<usize>,
    pub keepalive_timeout: Option<DurationSpec>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub shutdown_grace: Option<DurationSpec>,
    /// Adds `Server-Timing: proxy;dur=X, upstream;dur=Y` to every answer.
    pub server_timing: Option<bool>,
    /// Peers (addresses or CIDRs) whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Certificates of the TLS listener (`--tls-listen`).
    pub tls: Option<ServerTlsSpec>,
    /// Bounds of the shadow pipeline, read at start.
    pub shadow: Option<ShadowPipelineSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShadowPipelineSpec {
    /// Mirrored requests waiting for a slot; beyond, they are dropped.
    pub queue: Option<usize>,
    /// Mirrored requests in flight at once.
    pub concurrency: Option<usize>,
    /// Appends every mismatch as one JSON line to this file.
    pub diff_log: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsSpec {
    /// The first one is served to clients whose SNI matches no `sni` name.
    pub certificates: Vec<CertificateSpec>,
}

/// PEM files; a relative path is relative to the route file's directory.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// The certificate chain, leaf first.
    pub cert: String,
    pub key: String,
    /// Names this certificate answers; `*.example.com` covers one label.
    #[serde(default)]
    pub sni: Vec<String>,
}

/// TLS to an `https://` backend.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// Trust only this CA bundle (PEM) instead of the system roots.
    pub ca: Option<String>,
    /// A client certificate (mTLS); needs `key`.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// The name to send as SNI and to verify, instead of the URL's host.
    pub server_name: Option<String>,
    /// Accept any certificate. For tests only: logged loudly at every load.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub url: String,
    /// Time allowed for the backend's response headers.
    pub timeout: Option<DurationSpec>,
    pub connect_timeout: Option<DurationSpec>,
    /// Longest silence allowed while a body streams.
    pub idle_timeout: Option<DurationSpec>,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Option<DurationSpec>,
    pub max_idle_connections: Option<usize>,
    pub health: Option<HealthSpec>,
    pub circuit: Option<CircuitSpec>,
    pub retry_budget: Option<RetryBudgetSpec>,
    pub tls: Option<UpstreamTlsSpec>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    pub path: String,
    pub interval: Option<DurationSpec>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CircuitSpec {
    pub consecutive_failures: Option<u32>,
    pub open_for: Option<DurationSpec>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// Retries allowed as a share of live requests, e.g. `20%`.
    pub ratio: Option<Percent>,
    /// Retries always allowed per second, so that low traffic can retry.
    pub min_per_second: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    pub backend: Option<String>,
    pub split: Option<BTreeMap<String, Percent>>,
    pub sticky: Option<StickySpec>,
    pub fallback: Option<String>,
    /// Lets a non-idempotent request fall back after it may have reached
    /// the first backend. Off by default: a POST is sent twice only when the
    /// first backend surely never saw it.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    pub idempotency_header: Option<String>,
    pub rewrite: Option<RewriteSpec>,
    pub request_headers: Option<HeaderOpsSpec>,
    pub response_headers: Option<HeaderOpsSpec>,
    /// `backend` sends the backend URL's authority as `Host`; any other
    /// value is sent literally. Absent: the client's `Host` passes through.
    pub host_rewrite: Option<String>,
    pub max_body: Option<ByteSize>,
    pub shadow: Option<ShadowSpec>,
    pub migration: Option<MigrationSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Exact path, or a template with `{param}` segments and a trailing `{*rest}`.
    pub path: Option<String>,
    /// Segment-aware prefix: `/api` matches `/api` and `/api/x`, not `/apix`.
    pub prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    /// Exact host, or `*.example.com`.
    pub host: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, ValueMatchSpec>,
    #[serde(default)]
    pub query: BTreeMap<String, ValueMatchSpec>,
}

/// A header or query value test: a plain string is an exact match.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum ValueMatchSpec {
    Exact(String),
    Rule(ValueRuleSpec),
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValueRuleSpec {
    pub regex: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StickySpec {
    pub header: Option<String>,
    pub cookie: Option<String>,
    #[serde(default)]
    pub client_ip: bool,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    /// Replaces the matched `prefix` (`""` or `/` strips it).
    pub prefix: Option<String>,
    /// A new path; `{name}` takes the value of a template parameter.
    pub path: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsSpec {
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    pub backend: String,
    pub sample: Option<Percent>,
    pub methods: Option<Vec<String>>,
    pub max_body: Option<ByteSize>,
    /// Send the mirror to another path (e.g. a dry-run endpoint).
    pub path: Option<String>,
    pub secondary: Option<String>,
    #[serde(default)]
    pub learn_noise: bool,
    pub compare: Option<CompareSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompareSpec {
    #[serde(default)]
    pub ignore: Vec<String>,
    pub headers: Option<Vec<String>>,
    pub array_order: Option<String>,
    pub number_tolerance: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MigrationSpec {
    pub from: String,
    pub to: String,
    pub stages: Vec<StageSpec>,
    pub gate: Option<GateSpec>,
    pub sticky: Option<StickySpec>,
}

/// `shadow`, or a share of traffic such as `5%`. Its JSON Schema is
/// written by hand in `json_schema.rs`: serde tries `Share` first, so
/// `Named` only ever holds `shadow` (or an error).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StageSpec {
    Share(Percent),
    Named(String),
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    pub window: Option<DurationSpec>,
    pub interval: Option<DurationSpec>,
    pub min_requests: Option<u64>,
    pub max_error_rate_increase: Option<Percent>,
    pub max_error_rate: Option<Percent>,
    pub max_p99_ratio: Option<f64>,
    pub max_p50_ratio: Option<f64>,
    pub min_match_rate: Option<Percent>,
    pub promote_after: Option<u32>,
    pub confidence: Option<Percent>,
    #[serde(default)]
    pub failure_statuses: Vec<u16>,
    /// `local` (default): this replica's own windows. `prometheus`: fleet
    /// mode, the same checks over every replica's metrics.
    pub source: Option<String>,
    /// The Prometheus server (`http://host:9090`) of fleet mode and of
    /// `checks`.
    pub prometheus_url: Option<String>,
    /// Business checks: PromQL whose value must stay within bounds.
    #[serde(default)]
    pub checks: Vec<BusinessCheckSpec>,
    pub webhook: Option<String>,
}

/// A business check: outside `min`..`max` rolls back; no data holds.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BusinessCheckSpec {
    /// Shown in the gate's evidence, e.g. `payment-success`.
    pub name: String,
    /// An instant query returning one number.
    pub query: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

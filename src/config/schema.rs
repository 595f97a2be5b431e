//! The serde types that mirror a route file, key for key.
//!
//! Nothing outside `config/` sees these: `compile` turns them into the
//! routing types. Every struct denies unknown keys so that a typo is an
//! error with a position, not a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::values::{ByteSize, DurationSpec, Percent};
use crate::server::ShadowNice;

/// One `routes/*.yaml` file. Files are merged: backends and routes add up,
/// `default` and `server` may each appear in one file only.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Listener settings: limits, TLS, `Via`, trusted proxies. One file only.
    #[serde(default)]
    pub server: Option<ServerSpec>,
    /// Backends by name: the monolith and the services that replace it.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendSpec>,
    /// The backend for requests that no route matches (required, in one file).
    #[serde(default)]
    pub default: Option<String>,
    /// The rules; the most specific match wins, declaration order breaks ties.
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
    /// A request head must arrive whole within this (default 10s).
    pub header_read_timeout: Option<DurationSpec>,
    /// Request line plus headers; 431 beyond (default 64KiB, at least 8KiB).
    pub max_header_bytes: Option<ByteSize>,
    /// Headers per request; 431 beyond (default 100).
    pub max_headers: Option<usize>,
    /// Open connections per listener; past it, 503 `too_many_connections` (default 10000).
    pub max_connections: Option<usize>,
    /// A connection silent this long is closed gracefully (default 60s).
    pub keepalive_timeout: Option<DurationSpec>,
    /// HTTP/2 streams per connection (default 100).
    pub h2_max_concurrent_streams: Option<u32>,
    /// On SIGTERM: stop accepting, drain this long, exit 0 (default 30s).
    pub shutdown_grace: Option<DurationSpec>,
    /// Adds `Server-Timing: proxy;dur=X, upstream;dur=Y` to every answer:
    /// `true`, or `{ backend_name: true }` to add the backend's name too.
    pub server_timing: Option<ServerTimingSpec>,
    /// Peers (addresses or CIDRs) whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Certificates of the TLS listener (`--tls-listen`).
    pub tls: Option<ServerTlsSpec>,
    /// Bounds of the shadow pipeline, read at start.
    pub shadow: Option<ShadowPipelineSpec>,
    /// Export the proxy's server spans to an OpenTelemetry collector
    /// (OTLP/HTTP), read at start. Absent: no export.
    pub tracing: Option<TracingSpec>,
}

/// `true` or `false`, or a mapping: `{ backend_name: true }`.
// Deserialized by hand (below), so that a wrong key in the mapping is
// reported as such rather than as "did not match any variant".
#[derive(Debug, Clone, JsonSchema, PartialEq)]
#[serde(untagged)]
#[schemars(transform = super::json_schema::one_of)]
pub enum ServerTimingSpec {
    Enabled(bool),
    Options(ServerTimingOptionsSpec),
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTimingOptionsSpec {
    /// Off with `false` (default `true`: the mapping turns it on).
    pub enabled: Option<bool>,
    /// Adds `desc="BACKEND"` to the `upstream` entry: the backend that
    /// answered (default false: it tells clients which service answered).
    #[serde(default)]
    pub backend_name: bool,
}

impl<'de> Deserialize<'de> for ServerTimingSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = ServerTimingSpec;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`true`, `false` or `{ enabled, backend_name }`")
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<ServerTimingSpec, E> {
                Ok(ServerTimingSpec::Enabled(value))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ServerTimingSpec, A::Error> {
                ServerTimingOptionsSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ServerTimingSpec::Options)
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

/// OTLP/HTTP (protobuf) export of one server span per request.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// The collector's traces URL, used as given: `http://127.0.0.1:4318/v1/traces`.
    pub otlp_endpoint: String,
    /// `service.name` of the spans (default `strangler`).
    pub service_name: Option<String>,
    /// Share of the traces the proxy starts that are sampled, 0 to 1
    /// (default 1). A client's `traceparent` keeps its own sampled flag.
    pub sample_ratio: Option<f64>,
    /// Headers sent with every export, e.g. an API key.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// One export, retries included, gives up after this (default 10s).
    pub export_timeout: Option<DurationSpec>,
    /// Longest wait of a span before its export (default 5s).
    pub batch_delay: Option<DurationSpec>,
    /// Spans waiting for export; beyond, spans are dropped and counted (default 2048).
    pub max_queue: Option<usize>,
    /// Spans per export request (default 512).
    pub max_batch: Option<usize>,
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
    /// How much lower the shadow thread's CPU priority is than the client
    /// path's (Linux): `idle` (the default) or a nice value, 0 to 19.
    pub nice: Option<ShadowNice>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsSpec {
    /// The first one is served to clients whose SNI matches no `sni` name.
    pub certificates: Vec<CertificateSpec>,
    /// How often the certificate and key files are checked for a change
    /// (default 10s); a change reloads them without a restart.
    pub check_interval: Option<DurationSpec>,
}

/// PEM files; a relative path is relative to the route file's directory.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// The certificate chain, leaf first.
    pub cert: String,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
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
    /// The client certificate's private key (PEM).
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
    /// `http://` or `https://` address; a path is put before every forwarded path.
    pub url: String,
    /// Time allowed for the backend's response headers.
    pub timeout: Option<DurationSpec>,
    /// TCP (and TLS) connect (default 5s).
    pub connect_timeout: Option<DurationSpec>,
    /// Longest silence allowed while a body streams.
    pub idle_timeout: Option<DurationSpec>,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Option<DurationSpec>,
    /// Idle pooled connections kept to this backend.
    pub max_idle_connections: Option<usize>,
    /// Active health checks; a failing backend is skipped like an open circuit.
    pub health: Option<HealthSpec>,
    /// Circuit breaker (default 5 consecutive failures, open for 10s).
    pub circuit: Option<CircuitSpec>,
    /// Retries allowed on this backend (default 20%, 10 per second).
    pub retry_budget: Option<RetryBudgetSpec>,
    /// TLS settings of an `https://` backend.
    pub tls: Option<UpstreamTlsSpec>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// Probed with `GET`; a 2xx or 3xx answer is healthy.
    pub path: String,
    /// Time between probes (default 5s).
    pub interval: Option<DurationSpec>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CircuitSpec {
    /// Failures in a row that open the circuit (default 5; 0 disables it).
    pub consecutive_failures: Option<u32>,
    /// How long the circuit stays open before one probe request (default 10s).
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
    /// Unique across files; `default` is reserved. Labels metrics and logs.
    pub name: String,
    /// Which requests this route takes: path, prefix, methods, host, headers, query.
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    /// Send everything to this backend.
    pub backend: Option<String>,
    /// Weighted split across backends, in percent (0.01% resolution).
    pub split: Option<BTreeMap<String, Percent>>,
    /// What keeps a user on one side of a split: a header, a cookie or the client IP.
    pub sticky: Option<StickySpec>,
    /// When the chosen backend fails, answer from this one.
    pub fallback: Option<String>,
    /// Lets a non-idempotent request fall back after it may have reached
    /// the first backend. Off by default: a POST is sent twice only when the
    /// first backend surely never saw it.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// A request carrying this header may be resent like a GET (default `idempotency-key`).
    pub idempotency_header: Option<String>,
    /// Change the path forwarded to the backend.
    pub rewrite: Option<RewriteSpec>,
    /// Header edits on the way to the backend: remove, then set, then add.
    pub request_headers: Option<HeaderOpsSpec>,
    /// Header edits on the way back to the client: remove, then set, then add.
    pub response_headers: Option<HeaderOpsSpec>,
    /// `backend` sends the backend URL's authority as `Host`; any other
    /// value is sent literally. Absent: the client's `Host` passes through.
    pub host_rewrite: Option<String>,
    /// Larger request bodies get 413 `body_too_large`.
    pub max_body: Option<ByteSize>,
    /// Mirror requests to a candidate and compare its answers with the primary's.
    pub shadow: Option<ShadowSpec>,
    /// A gated migration: stages promoted or rolled back by the metrics.
    pub migration: Option<MigrationSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Exact path, or a template with `{param}` segments and a trailing `{*rest}`.
    pub path: Option<String>,
    /// Segment-aware prefix: `/api` matches `/api` and `/api/x`, not `/apix`.
    pub prefix: Option<String>,
    /// Only these methods, e.g. `[GET, HEAD]`.
    pub methods: Option<Vec<String>>,
    /// Exact host, or `*.example.com`.
    pub host: Option<String>,
    /// Header tests: a string is an exact match; or `{ regex: ... }`, `{ present: true }`.
    #[serde(default)]
    pub headers: BTreeMap<String, ValueMatchSpec>,
    /// Query parameter tests, on values as sent (not decoded).
    #[serde(default)]
    pub query: BTreeMap<String, ValueMatchSpec>,
}

/// A header or query value test: a plain string is an exact match.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
#[schemars(transform = super::json_schema::one_of)]
pub enum ValueMatchSpec {
    Exact(String),
    Rule(ValueRuleSpec),
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValueRuleSpec {
    /// An anchored regular expression the value must match.
    pub regex: Option<String>,
    /// Whether the header or parameter must be present (`true`) or absent (`false`).
    pub present: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StickySpec {
    /// Hash this request header (e.g. `x-user-id`).
    pub header: Option<String>,
    /// Hash this cookie (e.g. `session`).
    pub cookie: Option<String>,
    /// Hash the client address (the believed one, behind trusted proxies).
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
    /// Headers appended, keeping any existing value.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Headers replaced.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// The candidate that gets a copy of each request.
    pub backend: String,
    /// Share of requests mirrored, sampled by request id (default 100%).
    pub sample: Option<Percent>,
    /// Methods mirrored (default GET, HEAD, OPTIONS; list others to opt in).
    pub methods: Option<Vec<String>>,
    /// Bodies copied for comparison up to this size; larger: outcome `skipped`.
    pub max_body: Option<ByteSize>,
    /// Send the mirror to another path (e.g. a dry-run endpoint).
    pub path: Option<String>,
    /// With `learn_noise`: a second primary, to learn which fields differ anyway.
    pub secondary: Option<String>,
    /// Learn noise: fields that differ between the primary and `secondary` are ignored.
    #[serde(default)]
    pub learn_noise: bool,
    /// How answers are compared.
    pub compare: Option<CompareSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompareSpec {
    /// Fields not compared: JSON paths (`$.generated_at`, `$..id`, `$.items[*].etag`) or `header:NAME`.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Response headers compared (never date, server or hop-by-hop).
    pub headers: Option<Vec<String>>,
    /// `strict` (default) or `ignore`: arrays compared as multisets.
    pub array_order: Option<String>,
    /// Numbers count as equal when they differ by at most this much.
    pub number_tolerance: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MigrationSpec {
    /// The incumbent backend (usually the monolith).
    pub from: String,
    /// The new service.
    pub to: String,
    /// Stages in order, e.g. `[shadow, 1%, 5%, 25%, 50%, 100%]`.
    pub stages: Vec<StageSpec>,
    /// When to promote, hold or roll back.
    pub gate: Option<GateSpec>,
    /// Sticky key of the traffic share (default: the route's `sticky`, else per request).
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

/// An answer fails when a field at `field` (a path such as `$.status` or
/// `$.items[*].state`) equals `equals`.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FailureFieldSpec {
    pub field: String,
    pub equals: serde_json::Value,
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
    /// JSON answers that count as failures, e.g. a payment that says
    /// `{"status": "failed"}` with a 200.
    #[serde(default)]
    pub failure_fields: Vec<FailureFieldSpec>,
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

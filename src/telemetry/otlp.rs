//! OTLP/HTTP export of the proxy's server spans, when `server.tracing` is set.
//!
//! The request path only hands a finished span to a bounded queue
//! (`try_send`: a full queue drops the span and counts it). One task takes
//! spans off the queue in batches and posts them to the collector as OTLP
//! protobuf, one export at a time, each bounded by `export_timeout`
//! (retries of the OTLP exporter included). A slow or dead collector
//! therefore costs at most `max_queue` queued spans of memory and never a
//! request's time. Outcomes are counted in
//! `strangler_trace_spans_total{outcome}`; failed exports and drops are
//! logged at most once per `LOG_INTERVAL`. On graceful shutdown
//! `SpanExport::flush` exports what is left, within `export_timeout`.
//!
//! The settings are read at start, like the shadow pipeline's bounds: a
//! reload that changes them applies at the next start.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::InstrumentationScope;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use rustls::{ClientConfig, RootCertStore};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::metrics::Metrics;
use crate::proxy::Sampling;

/// Failed exports and dropped spans are logged at most this often; the
/// counters have every one.
const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// `server.tracing`, checked by `config::compile`.
#[derive(Clone, PartialEq)]
pub struct OtlpSettings {
    /// The collector's traces URL, used as given (`/v1/traces` included).
    pub endpoint: Uri,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Share of the traces the proxy starts that are sampled (0–1).
    pub sample_ratio: f64,
    /// Sent with every export (an API key, say); names and values valid.
    pub headers: Vec<(String, String)>,
    /// One export, retries included, gives up after this.
    pub export_timeout: Duration,
    /// Queued spans wait at most this long for their export.
    pub batch_delay: Duration,
    /// Spans waiting for export; the next one is dropped and counted.
    pub max_queue: usize,
    /// Spans per export request.
    pub max_batch: usize,
}

impl OtlpSettings {
    /// The defaults of the OpenTelemetry SDKs (`OTEL_BSP_*`,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`) for the collector at `endpoint`.
    pub fn new(endpoint: Uri) -> OtlpSettings {
        OtlpSettings {
            endpoint,
            service_name: "strangler".to_string(),
            sample_ratio: 1.0,
            headers: Vec::new(),
            export_timeout: Duration::from_secs(10),
            batch_delay: Duration::from_secs(5),
            max_queue: 2048,
            max_batch: 512,
        }
    }
}

// By hand: header values are often credentials, and settings end up in
// debug output.
impl fmt::Debug for OtlpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("OtlpSettings")
            .field("endpoint", &self.endpoint)
            .field("service_name", &self.service_name)
            .field("sample_ratio", &self.sample_ratio)
            .field("headers", &header_names)
            .field("export_timeout", &self.export_timeout)
            .field("batch_delay", &self.batch_delay)
            .field("max_queue", &self.max_queue)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("cannot set up the OTLP exporter for `{endpoint}`")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },

    #[error("cannot set up TLS to the OTLP collector `{endpoint}`")]
    Tls {
        endpoint: String,
        #[source]
        source: rustls::Error,
    },
}

/// Where the request path hands its finished spans. Cheap to clone.
#[derive(Clone)]
pub struct Spans {
    inner: Arc<SpansInner>,
}

struct SpansInner {
    queue: mpsc::Sender<SpanData>,
    sampling: Sampling,
    scope: InstrumentationScope,
    dropped: IntCounter,
}

impl fmt::Debug for Spans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Spans")
    }
}

impl Spans {
    /// How the traces the proxy starts are sampled.
    pub(crate) fn sampling(&self) -> Sampling {
        self.inner.sampling
    }

    /// The instrumentation scope of every span: this crate and its version.
    pub(crate) fn scope(&self) -> &InstrumentationScope {
        &self.inner.scope
    }

    /// Queues a finished span; never waits. A full queue (the collector is
    /// slow or gone) drops it, counted as `dropped`.
    pub(crate) fn submit(&self, span: SpanData) {
        if self.inner.queue.try_send(span).is_err() {
            self.inner.dropped.inc();
        }
    }
}

/// The export task. Not Clone: one owner flushes it at shutdown.
pub struct SpanExport {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    flush_within: Duration,
}

impl SpanExport {
    /// Exports the spans still queued, then stops; gives up after
    /// `export_timeout`, so a dead collector cannot hold up shutdown longer.
    /// Call it once the connections have drained.
    pub async fn flush(self) {
        let _ = self.stop.send(());
        let abort = self.task.abort_handle();
        if tokio::time::timeout(self.flush_within, self.task)
            .await
            .is_err()
        {
            abort.abort();
            tracing::warn!(within = ?self.flush_within, "spans queued at shutdown were not all exported in time");
        }
    }
}

/// Starts the export task; spans handed to the returned `Spans` go to the
/// collector of `settings`. Must run inside the Tokio runtime.
pub fn start(settings: &OtlpSettings, metrics: &Metrics) -> Result<(Spans, SpanExport), OtlpError> {
    let mut exporter = exporter(settings)?;
    // `Resource::builder` also reads `OTEL_RESOURCE_ATTRIBUTES` (say, a
    // pod's name); the configured service name wins over `OTEL_SERVICE_NAME`.
    exporter.set_resource(
        &Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build(),
    );
    let outcomes = Outcomes::new(metrics, settings);
    let (queue, queued) = mpsc::channel(settings.max_queue.max(1));
    let (stop, stopped) = oneshot::channel();
    let spans = Spans {
        inner: Arc::new(SpansInner {
            queue,
            sampling: Sampling::ratio(settings.sample_ratio),
            scope: InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            dropped: outcomes.dropped.clone(),
        }),
    };
    let batch = Batching {
        max_batch: settings.max_batch.max(1),
        delay: settings.batch_delay,
        timeout: settings.export_timeout,
    };
    let task = tokio::spawn(export_loop(exporter, queued, stopped, batch, outcomes));
    Ok((
        spans,
        SpanExport {
            stop,
            task,
            flush_within: settings.export_timeout,
        },
    ))
}

/// The OTLP/HTTP protobuf exporter over hyper (TLS by rustls with the
/// system's roots for an `https` endpoint).
fn exporter(settings: &OtlpSettings) -> Result<opentelemetry_otlp::SpanExporter, OtlpError> {
    let endpoint = &settings.endpoint;
    let client = HyperClient::new(
        connector(endpoint.scheme_str() == Some("https")).map_err(|source| OtlpError::Tls {
            endpoint: endpoint.to_string(),
            source,
        })?,
        settings.export_timeout,
        None,
    );
    let headers: HashMap<String, String> = settings.headers.iter().cloned().collect();
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.to_string())
        .with_timeout(settings.export_timeout)
        .with_headers(headers)
        .with_http_client(client)
        .build()
        .map_err(|source| OtlpError::Exporter {
            endpoint: endpoint.to_string(),
            source,
        })
}

/// HTTP, or HTTP and TLS for an `https` collector.
fn connector(is_https: bool) -> Result<HttpsConnector<HttpConnector>, rustls::Error> {
    let roots = if is_https {
        crate::tls::system_roots()
    } else {
        // Never used for a plain endpoint: spare reading the trust store.
        std::sync::Arc::new(RootCertStore::empty())
    };
    let config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    // The TLS layer hands `https` URLs to the TCP connector.
    http.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

// === the export task ===

#[derive(Debug, Clone, Copy)]
struct Batching {
    max_batch: usize,
    delay: Duration,
    timeout: Duration,
}

/// Takes spans off the queue and exports them: a full batch at once, a
/// partial one every `delay`. Exports run one at a time; while one is in
/// flight, new spans wait in the queue (or are dropped when it is full).
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut queue: mpsc::Receiver<SpanData>,
    mut stop: oneshot::Receiver<()>,
    batching: Batching,
    mut outcomes: Outcomes,
) {
    let mut batch = Vec::with_capacity(batching.max_batch);
    let mut tick = tokio::time::interval(batching.delay);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // A dropped sender (the server stopped without a flush) stops too.
            _ = &mut stop => break,
            span = queue.recv() => {
                let Some(span) = span else { break };
                batch.push(span);
                if batch.len() >= batching.max_batch {
                    export(&exporter, &mut batch, batching, &mut outcomes).await;
                }
            }
            _ = tick.tick() => {
                if !batch.is_empty() {
                    export(&exporter, &mut batch, batching, &mut outcomes).await;
                }
                outcomes.log_drops(false);
            }
        }
    }
    // Shutdown: what is queued goes out too; spans ended from now on are
    // dropped (counted).
    queue.close();
    while let Some(span) = queue.recv().await {
        batch.push(span);
        if batch.len() >= batching.max_batch {
            export(&exporter, &mut batch, batching, &mut outcomes).await;
        }
    }
    if !batch.is_empty() {
        export(&exporter, &mut batch, batching, &mut outcomes).await;
    }
    outcomes.log_drops(true);
    let _ = exporter.shutdown();
}

async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: &mut Vec<SpanData>,
    batching: Batching,
    outcomes: &mut Outcomes,
) {
    let spans = std::mem::replace(batch, Vec::with_capacity(batching.max_batch));
    let count = spans.len() as u64;
    // The exporter bounds itself by `timeout`; this guard only makes sure
    // that a stuck export cannot stop the loop for good.
    let guard = batching.timeout + Duration::from_secs(1);
    match tokio::time::timeout(guard, exporter.export(spans)).await {
        Ok(Ok(())) => outcomes.exported.inc_by(count),
        Ok(Err(err)) => outcomes.failed(count, &err),
        Err(_) => outcomes.failed(count, &format_args!("no answer within {guard:?}")),
    }
}

/// The `outcome` series of `strangler_trace_spans_total`, and when failures
/// and drops were last logged.
struct Outcomes {
    exported: IntCounter,
    failed: IntCounter,
    dropped: IntCounter,
    endpoint: Uri,
    max_queue: usize,
    failures_unlogged: u64,
    last_failure_log: Option<Instant>,
    drops_logged: u64,
    last_drop_log: Option<Instant>,
}

impl Outcomes {
    fn new(metrics: &Metrics, settings: &OtlpSettings) -> Outcomes {
        let series = |outcome| metrics.trace_spans.with_label_values(&[outcome]);
        Outcomes {
            exported: series("exported"),
            failed: series("failed"),
            dropped: series("dropped"),
            endpoint: settings.endpoint.clone(),
            max_queue: settings.max_queue,
            failures_unlogged: 0,
            last_failure_log: None,
            drops_logged: 0,
            last_drop_log: None,
        }
    }

    fn failed(&mut self, count: u64, error: &dyn fmt::Display) {
        self.failed.inc_by(count);
        self.failures_unlogged += count;
        if self
            .last_failure_log
            .is_none_or(|at| at.elapsed() >= LOG_INTERVAL)
        {
            tracing::warn!(
                endpoint = %self.endpoint,
                spans = self.failures_unlogged,
                error = %error,
                "could not export spans to the OTLP collector; they are lost"
            );
            self.failures_unlogged = 0;
            self.last_failure_log = Some(Instant::now());
        }
    }

    /// Logs spans dropped since the last log, at most once per interval
    /// unless `is_final`.
    fn log_drops(&mut self, is_final: bool) {
        let dropped = self.dropped.get();
        let is_due = is_final
            || self
                .last_drop_log
                .is_none_or(|at| at.elapsed() >= LOG_INTERVAL);
        if dropped > self.drops_logged && is_due {
            tracing::warn!(
                spans = dropped - self.drops_logged,
                max_queue = self.max_queue,
                "span export queue full: spans dropped"
            );
            self.drops_logged = dropped;
            self.last_drop_log = Some(Instant::now());
        }
    }
}

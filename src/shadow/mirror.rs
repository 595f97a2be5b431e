//! Mirroring: shadow jobs queue here and run off the client's path.
//!
//! The proxy hands a job over with `try_send` once the primary's response
//! headers are in, and never waits: a full queue drops the job and counts
//! it. A queue already full when the request is sent drops the mirror
//! then, before any copy is made. A dispatcher runs at most `concurrency`
//! jobs at once; each sends the request copy to the candidate, waits for
//! both bodies (bounded copies), compares them and records the outcome.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Limited};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::compare::{compare, Answer, CompareRules};
use super::stall::{StallWatch, STALL};
use super::store::{excerpt, redacted_headers, DiffRecord, DiffStore, FieldDiff};
use super::tee::Copied;
use crate::body::full;
use crate::metrics::Metrics;
use crate::proxy::headers::X_STRANGLER_SHADOW;
use crate::routing::RouteName;
use crate::server::ShadowSettings;
use crate::upstream::{Upstream, UpstreamError};

/// A job that has not finished by then (e.g. the client never read the
/// primary body) ends as an error, freeing its slot.
const JOB_DEADLINE: Duration = Duration::from_secs(60);

/// What a comparison concluded, for metrics and the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Match,
    Mismatch,
    Error,
    Dropped,
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Match => "match",
            Outcome::Mismatch => "mismatch",
            Outcome::Error => "error",
            Outcome::Dropped => "dropped",
            Outcome::Skipped => "skipped",
        }
    }
}

/// Told of every finished comparison (the gate's match-rate evidence).
pub type OutcomeHook = Arc<dyn Fn(&str, Outcome, Option<Duration>) + Send + Sync>;

/// The primary's answer, as the client received it.
pub struct PrimaryAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub latency: Duration,
    pub body: oneshot::Receiver<Copied>,
}

pub enum RequestBody {
    Empty,
    Teed(oneshot::Receiver<Copied>),
}

pub struct ShadowJob {
    pub route: RouteName,
    pub request_id: String,
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: RequestBody,
    pub candidate: Arc<Upstream>,
    pub secondary: Option<Arc<Upstream>>,
    pub rules: Arc<CompareRules>,
    pub max_body_bytes: usize,
    pub primary: PrimaryAnswer,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Mirror {
    tx: mpsc::Sender<ShadowJob>,
    pub store: Arc<DiffStore>,
}

impl Mirror {
    /// Starts the dispatcher; must run inside a tokio runtime.
    /// `settings.queue` jobs may wait and `settings.concurrency` run; the
    /// next one is dropped and counted.
    pub fn start(metrics: Metrics, hook: Option<OutcomeHook>, settings: &ShadowSettings) -> Mirror {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let store = Arc::new(DiffStore::default());
        let diff_log = settings
            .diff_log
            .clone()
            .map(|path| Mutex::new(DiffLog { path, file: None }));
        let worker = Worker {
            metrics,
            store: store.clone(),
            hook,
            diff_log,
        };
        let concurrency = settings.concurrency.max(1);
        // Mirrors and comparisons (JSON parsing of both bodies) run on a
        // thread of their own, so they never take the client path's workers
        // (with `--workers 1`, the only one). Without that thread, on the
        // caller's runtime.
        let dispatcher = dispatch(rx, Arc::new(worker), concurrency);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        match runtime {
            Ok(runtime) => {
                let nice = settings.nice;
                let spawned = std::thread::Builder::new()
                    // Linux shows 15 bytes of a thread name (`top -H`, `/proc`).
                    .name("shadow-mirror".into())
                    .spawn(move || {
                        crate::worker::set_current(crate::worker::BACKGROUND);
                        super::priority::lower_current_thread(nice);
                        runtime.block_on(dispatcher)
                    });
                if let Err(err) = spawned {
                    tracing::warn!(error = %err, "cannot start the shadow thread; shadowing is off");
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "no shadow runtime; mirrors share the proxy's workers");
                tokio::spawn(dispatcher);
            }
        }
        Mirror { tx, store }
    }

    /// Whether the queue has room now. Asked before the request is sent:
    /// under full load most mirrors are dropped, and one that is known to
    /// be dropped makes no copies.
    pub fn has_room(&self) -> bool {
        self.tx.capacity() > 0
    }

    /// Queues a job; `false` when the queue is full (or the shadow thread
    /// is gone) and the job was dropped, for the caller to count.
    pub fn submit(&self, job: ShadowJob) -> bool {
        self.tx.try_send(job).is_ok()
    }
}

/// While jobs keep coming, the dispatcher takes them every `BATCH_TICK`
/// instead of being woken for each. Waking the shadow thread is a system
/// call made on the client's thread, once per job and again for each body
/// copy the job waits on; a job taken a tick later finds its copies done.
/// When a tick finds nothing, the dispatcher waits to be woken again.
const BATCH_TICK: Duration = Duration::from_millis(1);

async fn dispatch(mut rx: mpsc::Receiver<ShadowJob>, worker: Arc<Worker>, concurrency: usize) {
    let slots = Arc::new(Semaphore::new(concurrency));
    // On this thread: it is the one whose stalls the watch must see.
    let (stalls, _ticking) = StallWatch::start();
    while let Some(job) = rx.recv().await {
        start_job(job, &slots, &worker, &stalls).await;
        loop {
            tokio::time::sleep(BATCH_TICK).await;
            let mut has_taken = false;
            loop {
                match rx.try_recv() {
                    Ok(job) => {
                        has_taken = true;
                        start_job(job, &slots, &worker, &stalls).await;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            if !has_taken {
                break;
            }
        }
    }
}

/// Runs `job` once a slot is free (a queue over `concurrency` waits here).
async fn start_job(
    job: ShadowJob,
    slots: &Arc<Semaphore>,
    worker: &Arc<Worker>,
    stalls: &Arc<StallWatch>,
) {
    let Ok(slot) = slots.clone().acquire_owned().await else {
        return;
    };
    let outcome = JobOutcome {
        worker: worker.clone(),
        route: job.route.clone(),
        result: None,
    };
    // One task per job, its future boxed: the task's cell stays small, and
    // spawning copies it whole.
    let worker = worker.clone();
    let in_flight = stalls.in_flight();
    let run = Box::pin(async move { worker.run(job, in_flight.watch()).await });
    tokio::spawn(async move {
        let mut outcome = outcome;
        outcome.result = Some(match tokio::time::timeout(JOB_DEADLINE, run).await {
            Ok(result) => result,
            Err(_) => (Outcome::Error, None),
        });
        drop(slot);
    });
}

/// Records a job's outcome when the job ends, however it ends: a panic in
/// a comparison counts as an error (the client was answered long ago and
/// nothing else is affected). A job dropped unfinished, as at shutdown,
/// records nothing.
struct JobOutcome {
    worker: Arc<Worker>,
    route: RouteName,
    result: Option<(Outcome, Option<Duration>)>,
}

impl Drop for JobOutcome {
    fn drop(&mut self) {
        let result = match self.result.take() {
            Some(result) => result,
            None if std::thread::panicking() => (Outcome::Error, None),
            None => return,
        };
        self.worker.record(&self.route, result.0, result.1);
    }
}

struct Worker {
    metrics: Metrics,
    store: Arc<DiffStore>,
    hook: Option<OutcomeHook>,
    diff_log: Option<Mutex<DiffLog>>,
}

/// The JSONL file of mismatches, opened on first use.
struct DiffLog {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl DiffLog {
    /// Appends one line. A small synchronous write, on a shadow worker,
    /// never on the client's path; a failure is logged and the line lost.
    fn append(&mut self, route: &str, record: &DiffRecord) {
        use std::io::Write;
        if self.file.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(file) => self.file = Some(file),
                Err(err) => {
                    tracing::warn!(path = %self.path.display(), error = %err, "cannot open the shadow diff log");
                    return;
                }
            }
        }
        let line = serde_json::json!({ "route": route, "diff": record }).to_string();
        if let Some(file) = &mut self.file {
            if let Err(err) = writeln!(file, "{line}") {
                tracing::warn!(path = %self.path.display(), error = %err, "cannot append to the shadow diff log");
                self.file = None;
            }
        }
    }
}

impl Worker {
    fn record(&self, route: &str, outcome: Outcome, candidate_latency: Option<Duration>) {
        self.metrics
            .shadow_requests
            .with_label_values(&[route, outcome.as_str()])
            .inc();
        if let Some(hook) = &self.hook {
            hook(route, outcome, candidate_latency);
        }
    }

    async fn run(&self, mut job: ShadowJob, stalls: &StallWatch) -> (Outcome, Option<Duration>) {
        let request_body = match std::mem::replace(&mut job.body, RequestBody::Empty) {
            RequestBody::Empty => Bytes::new(),
            RequestBody::Teed(copied) => match copied.await {
                Ok(Copied::Complete(bytes)) => bytes,
                _ => return (Outcome::Skipped, None),
            },
        };
        let started = Instant::now();
        let candidate = send(
            &job.candidate,
            &job,
            request_body.clone(),
            job.max_body_bytes,
            stalls,
        )
        .await;
        let candidate_latency = started.elapsed();
        let secondary = match &job.secondary {
            Some(upstream) => send(upstream, &job, request_body, job.max_body_bytes, stalls)
                .await
                .ok(),
            None => None,
        };
        let primary_body = match job.primary.body.await {
            Ok(Copied::Complete(bytes)) => bytes,
            _ => return (Outcome::Skipped, None),
        };
        let route = &*job.route;
        self.metrics
            .shadow_duration
            .with_label_values(&[route, "primary"])
            .observe(job.primary.latency.as_secs_f64());
        let (status, headers, body) = match candidate {
            Ok(answer) => answer,
            Err(Outcome::Skipped) => return (Outcome::Skipped, None),
            Err(outcome) => return (outcome, Some(candidate_latency)),
        };
        self.metrics
            .shadow_duration
            .with_label_values(&[route, "candidate"])
            .observe(candidate_latency.as_secs_f64());
        let primary = Answer {
            status: job.primary.status,
            headers: &job.primary.headers,
            body: &primary_body,
        };
        if let Some((s_status, s_headers, s_body)) = &secondary {
            // Fields that differ between two primary answers are noise.
            let second = Answer {
                status: *s_status,
                headers: s_headers,
                body: s_body,
            };
            let noise = compare(&job.rules, &primary, &second);
            self.store
                .learn_noise(route, noise.differences.into_iter().map(|d| d.field));
        }
        let comparison = compare(
            &job.rules,
            &primary,
            &Answer {
                status,
                headers: &headers,
                body: &body,
            },
        );
        if comparison.is_match() {
            return (Outcome::Match, Some(candidate_latency));
        }
        let known_noise = self.store.noise(route);
        let (noise, real): (Vec<_>, Vec<_>) = comparison
            .differences
            .into_iter()
            .partition(|d| known_noise.contains(&d.field));
        if real.is_empty() && comparison.total_differences == noise.len() {
            return (Outcome::Match, Some(candidate_latency));
        }
        for difference in &real {
            let label = self.store.field_label(route, &difference.field);
            self.metrics
                .shadow_field_mismatches
                .with_label_values(&[route, &label])
                .inc();
        }
        let record = DiffRecord {
            at_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            request_id: job.request_id,
            method: job.method.to_string(),
            path: job.path_and_query,
            request_headers: redacted_headers(&job.headers),
            primary_status: job.primary.status,
            candidate_status: status,
            differences: real
                .into_iter()
                .map(|d| FieldDiff {
                    path: d.path,
                    kind: d.kind.as_str(),
                    primary: d.primary,
                    candidate: d.candidate,
                })
                .collect(),
            total_differences: comparison.total_differences,
            noise: noise.into_iter().map(|d| d.field).collect(),
            primary_body: excerpt(&primary_body),
            candidate_body: excerpt(&body),
        };
        if let Some(log) = &self.diff_log {
            if let Ok(mut log) = log.lock() {
                log.append(route, &record);
            }
        }
        self.store.push(route, record);
        (Outcome::Mismatch, Some(candidate_latency))
    }
}

/// Sends the mirrored request and reads the answer, body capped; on
/// failure, the outcome to record.
async fn send(
    upstream: &Upstream,
    job: &ShadowJob,
    body: Bytes,
    max_body_bytes: usize,
    stalls: &StallWatch,
) -> Result<(u16, HeaderMap, Bytes), Outcome> {
    let uri = upstream
        .uri_for(&job.path_and_query)
        .map_err(|_| Outcome::Error)?;
    let mut request = Request::new(full(body));
    *request.method_mut() = job.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = job.headers.clone();
    request
        .headers_mut()
        .insert(&X_STRANGLER_SHADOW, HeaderValue::from_static("1"));
    let started = Instant::now();
    let response = match upstream.send_mirror(request).await {
        Ok(response) => response,
        // This thread was kept off the CPU while the mirror was in flight
        // (a busy host, and the shadow thread runs at a low priority),
        // maybe before the request was even written. The candidate may
        // well have answered in time: no verdict, rather than an error that
        // would count against its match rate.
        Err(err) if timed_out_in_stall(&err, started, stalls) => {
            tracing::debug!(route = %job.route, error = %err, "shadow request timed out while the shadow thread was starved: skipped");
            stalls.count_skip();
            return Err(Outcome::Skipped);
        }
        Err(err) => {
            tracing::debug!(route = %job.route, error = %err, "shadow request failed");
            return Err(Outcome::Error);
        }
    };
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, max_body_bytes)
        .collect()
        .await
        .map_err(|_| Outcome::Error)?
        .to_bytes();
    Ok((parts.status.as_u16(), parts.headers, body))
}

/// Whether `err` is a timeout that a stall of this thread since `started`
/// may have caused: noticed long after its deadline, or with a stall seen
/// while the mirror was in flight.
fn timed_out_in_stall(err: &UpstreamError, started: Instant, stalls: &StallWatch) -> bool {
    if !err.is_timeout() {
        return false;
    }
    let noticed_late =
        matches!(err, UpstreamError::Timeout { after, .. } if started.elapsed() > *after + STALL);
    noticed_late || stalls.stalled_since(started)
}

#[cfg(test)]
#[path = "mirror_tests.rs"]
mod tests;

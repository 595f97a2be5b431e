//! Listeners: accepting client connections, serving HTTP/1.1 and HTTP/2 on
//! each, and draining them on shutdown.
//!
//! `run` is the library's entry point: it takes bound listeners and a
//! shutdown future, so tests and `main` start the proxy the same way.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admin::AdminService;
use crate::config::ConfigErrors;
use crate::gate::{Migrations, Side};
use crate::shadow::{Mirror, Outcome, OutcomeHook};
use crate::metrics::Metrics;
use crate::proxy::{ConnInfo, ProxyService, Shared};
use crate::reload::Reloader;

/// Edge defaults of DESIGN.md; `server:` will make each configurable.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADERS: usize = 100;
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_CONNECTIONS: usize = 10_000;
const H2_MAX_STREAMS: u32 = 100;
/// After an accept error (e.g. out of file descriptors), wait before the
/// next accept instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What `run` needs besides its listeners.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub routes_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Watch `routes_dir` and reload on change.
    pub watch: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    // The messages are in the text, so they are not also a `source`
    // (which `main` would print a second time).
    #[error("the routes directory is not valid:\n{0}")]
    Config(ConfigErrors),
}

/// Serves the proxy on `listener` and the admin API on `admin` until
/// `shutdown` resolves, then stops accepting and lets requests in flight
/// finish within the configured grace period.
pub async fn run(
    listener: TcpListener,
    admin: TcpListener,
    config: RunConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let migrations = Arc::new(Migrations::new(metrics.clone(), Some(config.state_dir.clone())));
    let reloader = Reloader::start(config.routes_dir.clone(), metrics.clone(), migrations.clone())
        .map_err(RunError::Config)?;
    let mirror = Mirror::start(metrics.clone(), Some(gate_hook(migrations.clone())));
    let shared = Arc::new(Shared {
        table: reloader.table(),
        metrics: metrics.clone(),
        mirror: mirror.clone(),
    });
    let gate = migrations.clone().spawn_gate();
    let reloader = Arc::new(reloader);
    let watchers = config.watch.then(|| crate::reload::spawn_watchers(reloader.clone()));
    if let (Ok(proxy), Ok(admin)) = (listener.local_addr(), admin.local_addr()) {
        let version = reloader.table().load().version.clone();
        tracing::info!(listen = %proxy, admin = %admin, %version, "strangler is serving");
    }
    let admin_service = AdminService::new(metrics.clone(), reloader.clone(), migrations, mirror);
    let admin_task = tokio::spawn(serve_admin(admin, admin_service));

    let grace = reloader.table().load().server.shutdown_grace;
    serve_proxy(listener, shared, metrics, shutdown, grace).await;
    admin_task.abort();
    gate.abort();
    if let Some(watchers) = watchers {
        watchers.abort();
    }
    Ok(())
}

/// Feeds shadow outcomes of migrating routes to their gate: the match
/// rate, and the candidate's errors and latency in the shadow stage.
fn gate_hook(migrations: Arc<Migrations>) -> OutcomeHook {
    Arc::new(move |route: &str, outcome: Outcome, latency: Option<Duration>| {
        let Some(migration) = migrations.get(route) else { return };
        match outcome {
            Outcome::Match | Outcome::Mismatch => migration.record_match(outcome == Outcome::Match),
            Outcome::Error | Outcome::Dropped | Outcome::Skipped => {}
        }
        if migration.cell.is_shadow_stage() {
            if let Some(latency) = latency {
                migration.record(Side::New, outcome == Outcome::Error, latency);
            }
        }
    })
}

async fn serve_proxy(
    listener: TcpListener,
    shared: Arc<Shared>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        // Bounds how many streams a client may open and reset before being
        // cut off (CVE-2023-44487, "rapid reset").
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(100);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let open = metrics.connections_open.with_label_values(&["proxy"]);
    let accepted = metrics.connections.with_label_values(&["proxy"]);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            result = listener.accept() => match result {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Past the limit the connection is closed at once: refusing is
        // better than letting every connection slow down.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer, "connection limit reached; closing new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        accepted.inc();
        open.inc();
        let service = ProxyService::new(shared.clone(), ConnInfo { peer, proto: "http" });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), hyper::service::service_fn(move |req| {
                hyper::service::Service::call(&service, req)
            }))
            .into_owned();
        let connection = graceful.watch(connection);
        let open = open.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(client = %peer, error = %err, "connection ended with an error");
            }
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!(connections = graceful.count(), "shutting down: draining connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
}

async fn serve_admin(listener: TcpListener, service: AdminService) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(error = %err, "admin accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let service = service.clone();
        let connection = builder
            .serve_connection(TokioIo::new(stream), hyper::service::service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, std::convert::Infallible>(service.handle(req).await) }
            }))
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

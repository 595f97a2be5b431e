//! Listeners: accepting client connections, serving HTTP/1.1 and HTTP/2 on
//! each (in the clear and over TLS), and draining them on shutdown.
//!
//! `run` is the library's entry point: it takes bound listeners and a
//! shutdown future, so tests and `main` start the proxy the same way.

mod head_check;
mod head_timeout;
mod listener;
mod park;
mod read_ahead;
mod settings;
mod sidecar;
mod socket;
mod wire;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::listener::ClientListener;
pub use self::settings::{
    ConnLimits, ServerSettings, ShadowNice, ShadowSettings, MIN_HEADER_BYTES,
};
pub use self::socket::bind;
use self::workers::Workers;
use crate::admin::AdminService;
use crate::config::ConfigErrors;
use crate::gate::Migrations;
use crate::metrics::{Metrics, PROXY_LISTENER};
use crate::proxy::Shared;
use crate::reload::Reloader;
use crate::shadow::{Mirror, Outcome, OutcomeHook};
use crate::telemetry::{otlp, OtlpError};

/// The `listener` label of the TLS listener's connection metrics.
pub const TLS_LISTENER: &str = "tls";
/// After an admin accept error, wait before the next accept.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What `run` needs besides its listeners.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub routes_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Watch `routes_dir` and reload on change.
    pub watch: bool,
    /// Threads serving client connections (`--workers`): the caller's
    /// and `workers - 1` more, each with a runtime of its own.
    pub workers: usize,
}

/// The bound sockets the proxy serves.
#[derive(Debug)]
pub struct Listeners {
    /// Plain HTTP/1.1 and HTTP/2 (prior knowledge).
    pub proxy: TcpListener,
    /// TLS with the certificates of `server.tls` (`--tls-listen`).
    pub tls: Option<TcpListener>,
    pub admin: TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    // The messages are in the text, so they are not also a `source`
    // (which `main` would print a second time).
    #[error("the routes directory is not valid:\n{0}")]
    Config(ConfigErrors),

    #[error("a TLS listener was given but the routes set no `server.tls` certificates")]
    NoCertificates,

    // Boxed: an exporter's error is large and rare.
    #[error("cannot start the span export of `server.tracing`")]
    Tracing(#[source] Box<OtlpError>),

    #[error("cannot start worker thread {index}")]
    Worker {
        index: usize,
        #[source]
        source: std::io::Error,
    },
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
    serve(
        Listeners {
            proxy: listener,
            tls: None,
            admin,
        },
        config,
        shutdown,
    )
    .await
}

/// `run` with every listener, the TLS one included.
pub async fn serve(
    listeners: Listeners,
    config: RunConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let Listeners {
        proxy: listener,
        tls: tls_listener,
        admin,
    } = listeners;
    // Before the route table, whose backend pools keep a shard per worker.
    crate::worker::expect_workers(config.workers);
    let metrics = Metrics::new();
    let migrations = Arc::new(Migrations::new(
        metrics.clone(),
        Some(config.state_dir.clone()),
    ));
    let reloader = Reloader::start(
        config.routes_dir.clone(),
        metrics.clone(),
        migrations.clone(),
    )
    .map_err(RunError::Config)?;
    let table = reloader.table();
    let has_certificates = table.load().server.tls.is_some();
    let acceptor = match (&tls_listener, has_certificates) {
        (Some(_), false) => return Err(RunError::NoCertificates),
        (Some(_), true) => Some(crate::tls::acceptor(table.clone())),
        (None, true) => {
            tracing::warn!("`server.tls` sets certificates but no TLS listener was given (--tls-listen); serving plain HTTP only");
            None
        }
        (None, false) => None,
    };
    let shadow_settings = table.load().server.shadow.clone();
    let mirror = Mirror::start(
        metrics.clone(),
        Some(gate_hook(migrations.clone())),
        &shadow_settings,
    );
    let (spans, span_export) = match table.load().server.tracing.as_ref() {
        Some(settings) => {
            let (spans, export) =
                otlp::start(settings, &metrics).map_err(|err| RunError::Tracing(Box::new(err)))?;
            tracing::info!(endpoint = %settings.endpoint, sample_ratio = settings.sample_ratio, "exporting server spans over OTLP");
            (Some(spans), Some(export))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        table: table.clone(),
        metrics: metrics.clone(),
        mirror: mirror.clone(),
        spans,
    });
    let gate = migrations.clone().spawn_gate();
    let reloader = Arc::new(reloader);
    let watchers = config
        .watch
        .then(|| crate::reload::spawn_watchers(reloader.clone()));
    let cert_watch = acceptor
        .as_ref()
        .map(|_| crate::tls::spawn_file_watch(reloader.clone()));
    let addresses = (listener.local_addr(), admin.local_addr());
    let tls_addr = tls_listener.as_ref().and_then(|l| l.local_addr().ok());
    let admin_service = AdminService::new(metrics.clone(), reloader.clone(), migrations, mirror);
    let admin_task = tokio::spawn(serve_admin(admin, admin_service));

    let (stop, stopped) = watch::channel(false);
    let mut listeners = vec![ClientListener::new(listener, None, PROXY_LISTENER)];
    if let (Some(tcp), Some(acceptor)) = (tls_listener, acceptor) {
        listeners.push(ClientListener::new(tcp, Some(acceptor), TLS_LISTENER));
    }
    let workers = Workers::start(config.workers, &listeners, &shared, &metrics, &stopped)?;
    // Announced once every worker's socket listens: connections made on
    // this line are spread over all of them, not only the first.
    if let (Ok(proxy), Ok(admin)) = addresses {
        let version = table.load().version.clone();
        tracing::info!(listen = %proxy, tls = ?tls_addr, admin = %admin, %version, "strangler is serving");
        warn_if_admin_exposed(admin);
    }
    let accepting: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            tokio::spawn(listener::serve(
                l,
                shared.clone(),
                metrics.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    drop(stopped);
    shutdown.await;
    let _ = stop.send(true);
    for task in accepting {
        let _ = task.await;
    }
    let grace = table.load().server.shutdown_grace;
    tracing::info!("shutting down: draining connections");
    // Every connection holds a receiver; `closed` resolves when the last
    // one has finished.
    tokio::select! {
        () = stop.closed() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
    // Their runtimes end with them, closing what is left of their
    // connections, as the caller's runtime will for the first worker's.
    workers.finish().await;
    // After the drain, so that the last requests' spans are in the queue.
    if let Some(export) = span_export {
        export.flush().await;
    }
    admin_task.abort();
    gate.abort();
    for task in [watchers, cert_watch].into_iter().flatten() {
        task.abort();
    }
    Ok(())
}

/// An admin API reachable from other hosts without a token lets anyone
/// who can reach it reload routes or promote migrations.
fn warn_if_admin_exposed(admin: SocketAddr) {
    let has_token = std::env::var("STRANGLER_ADMIN_TOKEN").is_ok_and(|t| !t.is_empty());
    if !admin.ip().is_loopback() && !has_token {
        tracing::warn!(
            admin = %admin,
            "the admin API listens on a non-loopback address and STRANGLER_ADMIN_TOKEN is unset: anyone who can reach it can reload routes and move migrations"
        );
    }
}

/// Feeds shadow outcomes of migrating routes to their gate's match rate.
/// A candidate that fails to answer does not match. Its latency is not
/// judged here: mirrors run at the shadow pipeline's own concurrency, so
/// their timing does not compare fairly with the client path; latency is
/// judged from real traffic in the share stages.
fn gate_hook(migrations: Arc<Migrations>) -> OutcomeHook {
    Arc::new(
        move |route: &str, outcome: Outcome, _latency: Option<Duration>| {
            let Some(migration) = migrations.get(route) else {
                return;
            };
            match outcome {
                Outcome::Match => migration.record_match(true),
                Outcome::Mismatch | Outcome::Error => migration.record_match(false),
                Outcome::Dropped | Outcome::Skipped => {}
            }
        },
    )
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
            .serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(move |req| {
                    let service = service.clone();
                    async move { Ok::<_, std::convert::Infallible>(service.handle(req).await) }
                }),
            )
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

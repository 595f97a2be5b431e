//! `strangler demo`: a monolith, two new services, the proxy and steady traffic, in one process.
//!
//! `Demo::start` starts the demo servers on loopback ports (`services`),
//! writes a routes directory pointing at them (`routes`: a shadowed route,
//! a split and two gated migrations), serves the proxy on it exactly as
//! `strangler run` would, and starts the traffic generator (`traffic`) and
//! the live table (`table`), which reads the admin API (`scrape`). Within
//! a minute the migration to the faithful service completes and the one to
//! the buggy service is rolled back. `demo` is the CLI's entry point;
//! `workspace` holds the files, `error` says what went wrong.

mod error;
mod routes;
mod scrape;
mod services;
mod table;
mod traffic;
mod workspace;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::error::DemoError;
pub use self::routes::DemoGate;

use self::routes::BackendAddrs;
use self::scrape::AdminApi;
use self::services::{DemoServer, Flavor};
use self::traffic::TrafficStats;
use self::workspace::Workspace;
use crate::gate::Status;
use crate::{RunConfig, RunError};

/// After traffic stops, the proxy's connections drain at once; this only
/// bounds a stop that something unexpected holds up.
const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// What to start. `DemoConfig::new` has the settings of `strangler demo`.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Routes are written to `STATE_DIR/routes` and migration stages saved
    /// in `STATE_DIR`, so a second run on the same directory resumes.
    /// `None`: a fresh temporary directory, removed when the demo stops,
    /// so that state from an earlier run never interferes.
    pub state_dir: Option<PathBuf>,
    pub gate: DemoGate,
    /// Synthetic requests per second, over all routes.
    pub requests_per_second: u32,
    /// How often the live table prints; `None` prints none.
    pub table_every: Option<Duration>,
}

impl DemoConfig {
    pub fn new(listen: SocketAddr, admin: SocketAddr) -> DemoConfig {
        DemoConfig {
            listen,
            admin,
            state_dir: None,
            gate: DemoGate::default(),
            requests_per_second: 100,
            table_every: Some(Duration::from_millis(2500)),
        }
    }
}

/// Where each migration stood when the demo stopped.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub migrations: Vec<MigrationOutcome>,
    pub requests_sent: u64,
    pub ran_for: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MigrationOutcome {
    pub route: String,
    /// The stage label, e.g. `shadow` or `100%`.
    pub stage: String,
    pub status: Status,
    /// Share of the route's traffic on the new service, 0–1.
    pub weight: f64,
}

impl DemoReport {
    pub fn migration(&self, route: &str) -> Option<&MigrationOutcome> {
        self.migrations.iter().find(|m| m.route == route)
    }
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(
            f,
            "demo ran for {}s and sent {} requests",
            self.ran_for.as_secs(),
            self.requests_sent
        )?;
        for m in &self.migrations {
            let status = serde_json::to_value(m.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned));
            writeln!(
                f,
                "  {:<8} {} at {}",
                m.route,
                status.unwrap_or_default(),
                m.stage
            )?;
        }
        Ok(())
    }
}

/// Runs `strangler demo`: starts everything, prints where to look, and
/// runs until Ctrl-C or, when given, for `duration`.
pub async fn demo(
    listen: SocketAddr,
    admin: SocketAddr,
    state_dir: Option<PathBuf>,
    duration: Option<Duration>,
) -> Result<DemoReport, DemoError> {
    let demo = Demo::start(DemoConfig {
        state_dir,
        ..DemoConfig::new(listen, admin)
    })
    .await?;
    println!("{}", demo.banner());
    let until = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = until => {}
    }
    demo.stop().await
}

/// A running demo. Dropping it stops everything; `stop` also reports.
pub struct Demo {
    proxy: SocketAddr,
    admin: SocketAddr,
    rate: u32,
    workspace: Workspace,
    backends: BackendAddrs,
    api: AdminApi,
    stats: Arc<TrafficStats>,
    started: Instant,
    /// Stops the traffic and the table.
    stop: watch::Sender<bool>,
    helpers: Vec<JoinHandle<()>>,
    /// Stops the proxy, after the traffic.
    stop_proxy: watch::Sender<bool>,
    proxy_task: JoinHandle<Result<(), RunError>>,
    // Held for their Drop: the servers stop with the demo.
    _servers: [DemoServer; 3],
}

impl Demo {
    /// Starts the servers, the proxy, the traffic and (if configured) the
    /// table. Returns once the admin API answers.
    pub async fn start(config: DemoConfig) -> Result<Demo, DemoError> {
        let workspace = Workspace::new(config.state_dir.clone())?;
        let servers = [
            services::start(Flavor::Monolith).await?,
            services::start(Flavor::Faithful).await?,
            services::start(Flavor::Buggy).await?,
        ];
        let backends = BackendAddrs {
            monolith: servers[0].addr,
            faithful: servers[1].addr,
            buggy: servers[2].addr,
        };
        let routes_dir = workspace.routes_dir();
        routes::write(&routes_dir, &backends, &config.gate).map_err(|source| DemoError::Files {
            path: routes_dir.clone(),
            source,
        })?;

        let bind = |what, addr| async move {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| DemoError::Bind { what, addr, source })?;
            let local =
                listener
                    .local_addr()
                    .map_err(|source| DemoError::Bind { what, addr, source })?;
            Ok::<_, DemoError>((listener, local))
        };
        let (listener, proxy) = bind("proxy", config.listen).await?;
        let (admin_listener, admin) = bind("admin", config.admin).await?;
        let run_config = RunConfig {
            routes_dir,
            state_dir: workspace.base.clone(),
            watch: true,
            workers: 1,
        };
        let (stop_proxy, mut proxy_stopped) = watch::channel(false);
        let shutdown = async move {
            let _ = proxy_stopped.wait_for(|stopped| *stopped).await;
        };
        let mut proxy_task =
            tokio::spawn(crate::run(listener, admin_listener, run_config, shutdown));

        let api = AdminApi::new(admin);
        if let Err(err) = wait_until_serving(&api, &mut proxy_task).await {
            proxy_task.abort();
            return Err(err);
        }

        let stats = Arc::new(TrafficStats::default());
        let (stop, stopped) = watch::channel(false);
        let mut helpers = vec![tokio::spawn(traffic::run(
            proxy,
            config.requests_per_second,
            stats.clone(),
            stopped.clone(),
        ))];
        if let Some(every) = config.table_every {
            helpers.push(tokio::spawn(table::run(
                api.clone(),
                stats.clone(),
                every,
                stopped,
            )));
        }
        Ok(Demo {
            proxy,
            admin,
            rate: config.requests_per_second,
            workspace,
            backends,
            api,
            stats,
            started: Instant::now(),
            stop,
            helpers,
            stop_proxy,
            proxy_task,
            _servers: servers,
        })
    }

    /// The proxy's address (useful when started on port 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn routes_dir(&self) -> PathBuf {
        self.workspace.routes_dir()
    }

    /// Where to look, for a person at a terminal.
    pub fn banner(&self) -> String {
        let (proxy, admin) = (self.proxy, self.admin);
        let BackendAddrs {
            monolith,
            faithful,
            buggy,
        } = &self.backends;
        let routes = self.routes_dir().join(routes::FILE_NAME);
        format!(
            "strangler demo: a monolith, two new services, the proxy and ~{rate} req/s of traffic\n\
             \n  proxy       http://{proxy}   try: curl -H 'x-user-id: user-07' http://{proxy}/api/orders/42\
             \n  admin       http://{admin}\
             \n  metrics     http://{admin}/metrics\
             \n  diffs       http://{admin}/api/shadow/diffs?route=catalog   (and ?route=billing)\
             \n  migrations  http://{admin}/api/migrations\
             \n  routes      {routes}   (edit it: the proxy reloads)\
             \n  backends    monolith {monolith}, {new} {faithful} (faithful), {billing} {buggy} \
             (`amount` as a string, 10% 500s, 3x latency)\n\
             \nWatch orders go shadow → 10% → 50% → 100% and billing roll back. Ctrl-C stops.\n\
             Columns: new svc = share answered by the new service, 5xx = share of 5xx answers, \
             p99 = client-side, match = shadow comparisons that matched.",
            rate = self.rate,
            routes = routes.display(),
            new = routes::NEW_SVC,
            billing = routes::BILLING_SVC,
        )
    }

    /// Where each migration stands now, from `GET /api/migrations`.
    pub async fn report(&self) -> Result<DemoReport, DemoError> {
        let migrations = self.api.migrations().await?;
        Ok(DemoReport {
            migrations: migrations
                .into_iter()
                .map(|m| MigrationOutcome {
                    route: m.route,
                    stage: m.stage,
                    status: m.status,
                    weight: m.weight,
                })
                .collect(),
            requests_sent: self.stats.sent(),
            ran_for: self.started.elapsed(),
        })
    }

    /// Reports, then stops the traffic, the proxy and the servers, and
    /// removes the temporary directory.
    pub async fn stop(mut self) -> Result<DemoReport, DemoError> {
        let report = self.report().await;
        let _ = self.stop.send(true);
        for helper in &mut self.helpers {
            let _ = tokio::time::timeout(STOP_PATIENCE, helper).await;
        }
        let _ = self.stop_proxy.send(true);
        let stopped = tokio::time::timeout(STOP_PATIENCE, &mut self.proxy_task).await;
        if !matches!(stopped, Ok(Ok(Ok(())))) {
            tracing::warn!("the demo proxy did not stop in time");
        }
        report
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        for helper in &self.helpers {
            helper.abort();
        }
        self.proxy_task.abort();
    }
}

/// Returns once the admin API answers, or why the proxy did not start.
async fn wait_until_serving(
    api: &AdminApi,
    proxy_task: &mut JoinHandle<Result<(), RunError>>,
) -> Result<(), DemoError> {
    let ended = |result: Result<Result<(), RunError>, _>| match result {
        Ok(Err(err)) => DemoError::Run(err),
        _ => DemoError::ProxyStopped,
    };
    // The admin listener is bound, so this request waits in its backlog
    // until the proxy serves it, or fails when the proxy gives up and
    // closes the listener.
    tokio::select! {
        result = &mut *proxy_task => Err(ended(result)),
        ready = api.get("/readyz") => match ready {
            Ok(_) => Ok(()),
            // Prefer the proxy's reason to "connection reset".
            Err(err) => match tokio::time::timeout(STOP_PATIENCE, proxy_task).await {
                Ok(result) => Err(ended(result)),
                Err(_) => Err(err),
            },
        },
    }
}

//! The registry of migrations: created from route files, driven by the
//! gate loop and by people (admin API), persisted under `--state-dir`.
//!
//! A migration outlives snapshots: a reload that leaves a route's
//! migration as it was keeps its stage and evidence; one that edits the
//! stages is reconciled (`Migration::replan`). The stage of every
//! migration is written atomically to `STATE_DIR/migrations.json` on each
//! change and read back at start, so a restart resumes where it stopped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use super::external::External;
use super::migration::{Judgement, Migration, MigrationPlan, MigrationView, Status};
use super::prometheus::PrometheusApi;
use super::Verdict;
use crate::metrics::Metrics;

/// How often the gate loop looks at each migration's interval.
const TICK: Duration = Duration::from_millis(250);
const STATE_FILE: &str = "migrations.json";

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("no migration on route `{0}`")]
    UnknownRoute(String),
    #[error("{0}")]
    BadAction(String),
}

pub struct Migrations {
    routes: Mutex<HashMap<String, Arc<Migration>>>,
    metrics: Metrics,
    state_dir: Option<PathBuf>,
    saved: HashMap<String, MigrationView>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Migrations {
    /// Reads saved stages from `state_dir` (a missing or unreadable file
    /// starts every migration at its first stage, with a warning).
    pub fn new(metrics: Metrics, state_dir: Option<PathBuf>) -> Migrations {
        let saved = state_dir
            .as_ref()
            .and_then(|dir| std::fs::read_to_string(dir.join(STATE_FILE)).ok())
            .and_then(|text| match serde_json::from_str::<Vec<MigrationView>>(&text) {
                Ok(views) => Some(views),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read saved migration state; starting from the route files");
                    None
                }
            })
            .unwrap_or_default()
            .into_iter()
            .map(|view| (view.route.clone(), view))
            .collect();
        Migrations {
            routes: Mutex::new(HashMap::new()),
            metrics,
            state_dir,
            saved,
        }
    }

    /// The migration of `route`, created with `plan` when new. An existing
    /// one is reconciled with its new plan only once the reload that
    /// carries it succeeded (`Migration::replan`), so a bad edit changes nothing.
    pub fn register(&self, route: &str, plan: MigrationPlan) -> Arc<Migration> {
        let Ok(mut routes) = self.routes.lock() else {
            return Arc::new(Migration::new(route.into(), plan, 0, Status::Running));
        };
        if let Some(existing) = routes.get(route) {
            return existing.clone();
        }
        let (stage, status) = match self.saved.get(route) {
            Some(saved) if saved.from == plan.from && saved.to == plan.to => {
                let stage = plan
                    .stages
                    .iter()
                    .position(|s| s.label() == saved.stage)
                    .unwrap_or(0);
                (stage, saved.status)
            }
            _ => (0, Status::Running),
        };
        let migration = Arc::new(Migration::new(route.into(), plan, stage, status));
        routes.insert(route.into(), migration.clone());
        if let Some(view) = migration.view() {
            self.publish(&view);
        }
        migration
    }

    /// Forgets migrations whose routes are gone after a reload.
    pub fn retain(&self, active: &[&str]) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.retain(|name, _| active.contains(&name.as_str()));
        }
    }

    pub fn get(&self, route: &str) -> Option<Arc<Migration>> {
        self.routes.lock().ok()?.get(route).cloned()
    }

    pub fn views(&self) -> Vec<MigrationView> {
        let all: Vec<Arc<Migration>> = self
            .routes
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        let mut views: Vec<MigrationView> = all.iter().filter_map(|m| m.view()).collect();
        views.sort_by(|a, b| a.route.cmp(&b.route));
        views
    }

    pub fn command(&self, route: &str, action: &str) -> Result<MigrationView, MigrationError> {
        let migration = self
            .get(route)
            .ok_or_else(|| MigrationError::UnknownRoute(route.into()))?;
        let view = migration
            .command(action, unix_now())
            .map_err(MigrationError::BadAction)?;
        tracing::info!(route, action, stage = %view.stage, status = ?view.status, "migration changed by operator");
        let decision = match action {
            "promote" => Some("promote"),
            "rollback" => Some("rollback"),
            _ => None,
        };
        if let Some(decision) = decision {
            self.metrics
                .gate_decisions
                .with_label_values(&[route, decision])
                .inc();
        }
        self.publish(&view);
        self.persist();
        Ok(view)
    }

    /// Runs every migration's gate on its interval until aborted.
    pub fn spawn_gate(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let prometheus = PrometheusApi::new();
            let mut ticker = tokio::time::interval(TICK);
            // A round that waited on a slow Prometheus is not made up for
            // with a burst of rounds.
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                self.tick(&prometheus).await;
            }
        })
    }

    /// One round: every migration whose interval has passed is judged.
    /// What a gate needs from Prometheus is fetched first, for all of
    /// them at once and outside their locks; a local gate is judged at
    /// once. The round ends when the slowest query answered or timed out.
    pub async fn tick(&self, prometheus: &PrometheusApi) {
        let all: Vec<Arc<Migration>> = self
            .routes
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        let mut changed = false;
        let mut fetching = JoinSet::new();
        for migration in all {
            let Some(query) = migration.due(Instant::now()) else {
                continue;
            };
            if query.is_local() {
                changed |= self.judge(&migration, External::default());
            } else {
                let prometheus = prometheus.clone();
                fetching.spawn(async move {
                    let external = query.fetch(&prometheus).await;
                    (migration, external)
                });
            }
        }
        while let Some(fetched) = fetching.join_next().await {
            match fetched {
                Ok((migration, external)) => changed |= self.judge(&migration, external),
                Err(err) => tracing::error!(error = %err, "gate query task failed"),
            }
        }
        if changed {
            self.persist();
        }
    }

    /// Judges one migration and reports what it decided. Returns whether
    /// its stage or status changed.
    fn judge(&self, migration: &Migration, external: External) -> bool {
        let Some(judgement) = migration.tick_with(Instant::now(), unix_now(), external) else {
            return false;
        };
        let Judgement { verdict, view, by } = judgement;
        self.publish(&view);
        if by == "fleet" {
            // Another replica decided, counted and announced; this one follows.
            tracing::info!(route = %view.route, verdict = verdict.as_str(), stage = %view.stage, status = ?view.status, "following the fleet's stage");
            return true;
        }
        self.metrics
            .gate_decisions
            .with_label_values(&[&view.route, verdict.as_str()])
            .inc();
        if verdict == Verdict::Hold {
            return false;
        }
        let evidence = serde_json::to_string(&view.last_evidence).unwrap_or_default();
        tracing::warn!(route = %view.route, verdict = verdict.as_str(), stage = %view.stage, status = ?view.status, %evidence, "gate decision");
        if let Some(url) = migration.plan().and_then(|plan| plan.webhook) {
            spawn_webhook(url, view, verdict);
        }
        true
    }

    fn publish(&self, view: &MigrationView) {
        let stage = match view.status {
            Status::RolledBack => -1,
            _ => view.stage_index as i64,
        };
        self.metrics
            .migration_stage
            .with_label_values(&[&view.route])
            .set(stage);
        self.metrics
            .migration_weight
            .with_label_values(&[&view.route])
            .set(view.weight);
        let paused = i64::from(view.status == Status::Paused);
        self.metrics
            .migration_paused
            .with_label_values(&[&view.route])
            .set(paused);
    }

    /// Writes all stages atomically (a temporary file renamed over the old).
    fn persist(&self) {
        let Some(dir) = &self.state_dir else { return };
        let views = self.views();
        let result = std::fs::create_dir_all(dir).and_then(|()| {
            let text = serde_json::to_string_pretty(&views).unwrap_or_else(|_| "[]".into());
            let temporary = dir.join(format!(".{STATE_FILE}.tmp"));
            std::fs::write(&temporary, text)?;
            std::fs::rename(&temporary, dir.join(STATE_FILE))
        });
        if let Err(err) = result {
            tracing::error!(error = %err, dir = %dir.display(), "cannot save migration state");
        }
    }
}

/// Posts the decision as JSON; failures are logged, never retried.
fn spawn_webhook(url: String, view: MigrationView, verdict: Verdict) {
    tokio::spawn(async move {
        use http_body_util::Full;
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let client: Client<_, Full<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let body = serde_json::json!({"route": view.route, "decision": verdict.as_str(), "migration": view});
        let Ok(request) = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes::Bytes::from(body.to_string())))
        else {
            tracing::warn!(%url, "bad webhook URL");
            return;
        };
        match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
            Ok(Ok(response)) => tracing::debug!(%url, status = %response.status(), "webhook sent"),
            Ok(Err(err)) => tracing::warn!(%url, error = %err, "webhook failed"),
            Err(_) => tracing::warn!(%url, "webhook timed out"),
        }
    });
}

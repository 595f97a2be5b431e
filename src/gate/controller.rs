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

use super::migration::{Migration, MigrationPlan, MigrationView, Status};
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
            let mut ticker = tokio::time::interval(TICK);
            loop {
                ticker.tick().await;
                self.tick(Instant::now());
            }
        })
    }

    pub fn tick(&self, now: Instant) {
        let all: Vec<Arc<Migration>> = self
            .routes
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        let mut changed = false;
        for migration in all {
            let Some((verdict, view)) = migration.tick(now, unix_now()) else {
                continue;
            };
            self.metrics
                .gate_decisions
                .with_label_values(&[&view.route, verdict.as_str()])
                .inc();
            if verdict != Verdict::Hold {
                changed = true;
                let evidence = serde_json::to_string(&view.last_evidence).unwrap_or_default();
                tracing::warn!(route = %view.route, verdict = verdict.as_str(), stage = %view.stage, status = ?view.status, %evidence, "gate decision");
                if let Some(plan) = migration.plan() {
                    if let Some(url) = plan.webhook {
                        spawn_webhook(url, view.clone(), verdict);
                    }
                }
            }
            self.publish(&view);
        }
        if changed {
            self.persist();
        }
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

//! Loading routes/ and swapping the active snapshot: at start, on a file
//! change, on SIGHUP and on `POST /api/reload`.
//!
//! A reload parses, validates and compiles a complete new snapshot off the
//! request path, then swaps it in with one atomic store. On any error the
//! old snapshot stays, the error is logged and counted, and `/api/routes`
//! shows it. Requests in flight keep the snapshot they started with.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::{self, CompileContext, ConfigErrors};
use crate::gate::Migrations;
use crate::metrics::Metrics;
use crate::routing::{RouteChanges, Snapshot};

/// Events closer together than this are one edit (editors write a file in
/// several steps; a ConfigMap update touches several entries).
const DEBOUNCE: Duration = Duration::from_millis(150);

/// The result of one reload, as the admin API reports it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadOutcome {
    Applied {
        version: String,
        changes: RouteChanges,
    },
    Unchanged {
        version: String,
    },
    Failed {
        version: String,
        errors: Vec<String>,
    },
}

/// The state `/api/routes` shows besides the table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    pub last_success_unix: Option<u64>,
    pub last_error: Option<Vec<String>>,
}

pub struct Reloader {
    dir: PathBuf,
    metrics: Metrics,
    table: Arc<ArcSwap<Snapshot>>,
    migrations: Arc<Migrations>,
    /// Serialises reloads, so two triggers cannot race to swap; held only
    /// by reloads, never by requests.
    status: Mutex<ReloadStatus>,
    /// Replaced snapshots that requests in flight still hold. Freeing one
    /// takes about 20 ms at 10,000 routes (benches/RESULTS.md); kept here,
    /// the last request to finish with it only drops a count and a later
    /// reload frees it, off the request path. Locked only inside `reload`.
    retired: Mutex<Vec<Arc<Snapshot>>>,
    /// Parsed route files, so a reload parses only the files that changed.
    /// Locked only inside `reload` (and `start`).
    parsed: Mutex<config::ParseCache>,
}

impl Reloader {
    /// Loads `dir` for the first time; an invalid directory is an error.
    pub fn start(
        dir: PathBuf,
        metrics: Metrics,
        migrations: Arc<Migrations>,
    ) -> Result<Reloader, ConfigErrors> {
        let ctx = CompileContext {
            metrics: &metrics,
            previous: None,
            migrations: Some(&migrations),
        };
        let mut parsed = config::ParseCache::default();
        let compiled = config::load_cached(&dir, &ctx, &mut parsed)?;
        for warning in &compiled.warnings {
            tracing::warn!("{warning}");
        }
        let snapshot = compiled.snapshot;
        metrics.set_config_version(None, &snapshot.version);
        metrics.config_reloads.with_label_values(&["success"]).inc();
        let now = unix_now();
        metrics.config_last_success.set(now as f64);
        Ok(Reloader {
            dir,
            metrics,
            migrations,
            table: Arc::new(ArcSwap::from_pointee(snapshot)),
            status: Mutex::new(ReloadStatus {
                last_success_unix: Some(now),
                last_error: None,
            }),
            retired: Mutex::new(Vec::new()),
            parsed: Mutex::new(parsed),
        })
    }

    pub fn table(&self) -> Arc<ArcSwap<Snapshot>> {
        self.table.clone()
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Reloads now. `trigger` names the cause in the log.
    pub fn reload(&self, trigger: &str) -> ReloadOutcome {
        let Ok(mut status) = self.status.lock() else {
            return ReloadOutcome::Failed {
                version: String::new(),
                errors: vec!["reload state poisoned".into()],
            };
        };
        self.free_retired();
        let old = self.table.load_full();
        let ctx = CompileContext {
            metrics: &self.metrics,
            previous: Some(&old),
            migrations: Some(&self.migrations),
        };
        let loaded = match self.parsed.lock() {
            Ok(mut parsed) => config::load_cached(&self.dir, &ctx, &mut parsed),
            Err(_) => config::load(&self.dir, &ctx),
        };
        let compiled = match loaded {
            Ok(compiled) => compiled,
            Err(errors) => {
                let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                for line in &lines {
                    tracing::error!(
                        trigger,
                        "reload failed, keeping version {}: {line}",
                        old.version
                    );
                }
                self.metrics
                    .config_reloads
                    .with_label_values(&["failure"])
                    .inc();
                status.last_error = Some(lines.clone());
                return ReloadOutcome::Failed {
                    version: old.version.to_string(),
                    errors: lines,
                };
            }
        };
        status.last_error = None;
        let new = compiled.snapshot;
        if new.version == old.version {
            return ReloadOutcome::Unchanged {
                version: new.version.to_string(),
            };
        }
        for warning in &compiled.warnings {
            tracing::warn!("{warning}");
        }
        let names: Vec<&str> = new
            .routes
            .iter()
            .filter(|r| r.migration.is_some())
            .map(|r| &*r.name)
            .collect();
        self.migrations.retain(&names);
        let changes = RouteChanges::between(&old, &new);
        let version = new.version.to_string();
        self.metrics
            .set_config_version(Some(&old.version), &version);
        for route in new.routes.iter() {
            if let (Some(migration), Some(plan)) = (&route.migration, &route.migration_plan) {
                migration.replan((**plan).clone());
            }
        }
        self.table.store(Arc::new(new));
        self.metrics
            .config_reloads
            .with_label_values(&["success"])
            .inc();
        let now = unix_now();
        self.metrics.config_last_success.set(now as f64);
        status.last_success_unix = Some(now);
        tracing::info!(trigger, from = %old.version, to = %version, "routes reloaded: {changes}");
        self.retire(old);
        ReloadOutcome::Applied { version, changes }
    }

    /// Keeps `old` while requests in flight hold it; otherwise it is freed
    /// here. The swap is done, so no new request can take it.
    fn retire(&self, old: Arc<Snapshot>) {
        if Arc::strong_count(&old) > 1 {
            if let Ok(mut retired) = self.retired.lock() {
                retired.push(old);
            }
        }
    }

    /// Frees the retired snapshots that no request holds any more.
    fn free_retired(&self) {
        if let Ok(mut retired) = self.retired.lock() {
            retired.retain(|snapshot| Arc::strong_count(snapshot) > 1);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reloads on changes in the routes directory and on SIGHUP, until the
/// returned task is aborted.
pub fn spawn_watchers(reloader: Arc<Reloader>) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(16);
    let watcher = watch_dir(&reloader, tx.clone());
    let sighup = spawn_sighup(tx);
    tokio::spawn(async move {
        // Dropping the watcher stops it: it lives as long as this task.
        let _watcher = watcher;
        let _sighup = AbortOnDrop(sighup);
        while let Some(trigger) = rx.recv().await {
            // Wait for the burst of events to end before reading the files.
            while let Ok(Some(_)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            let reloader = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.reload(trigger)).await;
        }
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches the directory itself (not the files): editors that save by
/// rename, files added and removed, and a Kubernetes ConfigMap's atomic
/// swap of its `..data` symlink all show up as events on the directory.
fn watch_dir(
    reloader: &Reloader,
    tx: tokio::sync::mpsc::Sender<&'static str>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !event.kind.is_access() {
                // A full channel already holds a pending reload.
                let _ = tx.try_send("file change");
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch routes directory; reload with SIGHUP or POST /api/reload");
            return None;
        }
    };
    if let Err(err) = watcher.watch(reloader.dir(), RecursiveMode::NonRecursive) {
        tracing::warn!(error = %err, dir = %reloader.dir().display(), "cannot watch routes directory");
        return None;
    }
    Some(watcher)
}

fn spawn_sighup(tx: tokio::sync::mpsc::Sender<&'static str>) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed here, not in the task: until the handler is in place a
    // SIGHUP takes its default action and terminates the process, and the
    // task may not have run yet when the proxy already says it is serving.
    let hangups = signal(SignalKind::hangup());
    if let Err(err) = &hangups {
        tracing::warn!(error = %err, "cannot handle SIGHUP; reload with POST /api/reload");
    }
    tokio::spawn(async move {
        let Ok(mut hangups) = hangups else { return };
        while hangups.recv().await.is_some() {
            let _ = tx.try_send("SIGHUP");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A routes directory whose one route goes to `backend`.
    fn write_routes(dir: &std::path::Path, backend: &str) {
        let yaml = format!(
            "backends:\n  a: {{ url: \"http://127.0.0.1:1\" }}\n  b: {{ url: \"http://127.0.0.1:2\" }}\ndefault: a\nroutes:\n  - name: r\n    match: {{ prefix: \"/r\" }}\n    backend: {backend}\n"
        );
        std::fs::write(dir.join("routes.yaml"), yaml).expect("write routes.yaml");
    }

    fn reloader(dir: &std::path::Path) -> Reloader {
        let metrics = Metrics::new();
        let migrations = Arc::new(Migrations::new(metrics.clone(), None));
        Reloader::start(dir.to_path_buf(), metrics, migrations).expect("valid routes")
    }

    /// A replaced snapshot that a request still holds is freed by a later
    /// reload, not by the request that drops it last.
    #[test]
    fn a_snapshot_held_by_a_request_is_freed_by_a_later_reload() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // Upstream clients are built inside a runtime.
        let _guard = runtime.enter();
        let dir = tempfile::tempdir().expect("temporary directory");
        write_routes(dir.path(), "a");
        let reloader = reloader(dir.path());
        let in_flight = reloader.table().load_full();
        let old = Arc::downgrade(&in_flight);

        write_routes(dir.path(), "b");
        let applied = reloader.reload("test");
        drop(in_flight);

        assert!(
            matches!(applied, ReloadOutcome::Applied { .. }),
            "{applied:?}"
        );
        assert!(
            old.upgrade().is_some(),
            "the request freed the old snapshot"
        );
        let unchanged = reloader.reload("test");
        assert!(
            matches!(unchanged, ReloadOutcome::Unchanged { .. }),
            "{unchanged:?}"
        );
        assert!(old.upgrade().is_none(), "the next reload did not free it");
    }

    /// A replaced snapshot that no request holds is freed by the reload.
    #[test]
    fn a_snapshot_no_request_holds_is_freed_by_the_reload() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = runtime.enter();
        let dir = tempfile::tempdir().expect("temporary directory");
        write_routes(dir.path(), "a");
        let reloader = reloader(dir.path());
        let old = Arc::downgrade(&reloader.table().load_full());

        write_routes(dir.path(), "b");
        let applied = reloader.reload("test");

        assert!(
            matches!(applied, ReloadOutcome::Applied { .. }),
            "{applied:?}"
        );
        assert!(old.upgrade().is_none());
    }
}

//! Test support for hot reload: a routes directory the test edits the way
//! people and tools do, and the proxy serving it with its watcher on.
//!
//! `TestProxy` in `mod.rs` starts the proxy without the watcher over a
//! single file it writes itself; reload tests need the watcher, several
//! files, a Kubernetes ConfigMap layout and the admin calls that observe a
//! reload. Included with `#[path]` by the test files that need it, so
//! `mod.rs` stays as it is.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{empty, eventually, routes_file, FakeBackend, HttpClient, Reply, PATIENCE};

/// Pause between two looks at a condition that another task will make true.
const POLL: Duration = Duration::from_millis(5);

// === Route tables ===

pub const FAILURES: &str = r#"strangler_config_reloads_total{result="failure"}"#;
pub const SUCCESSES: &str = r#"strangler_config_reloads_total{result="success"}"#;

/// A one-file table: the monolith is the default and `/api/orders` goes to
/// `target` (`monolith` or `orders`).
pub fn orders_to(monolith: &FakeBackend, orders: &FakeBackend, target: &str) -> String {
    routes_file(
        &[("monolith", &monolith.url()), ("orders", &orders.url())],
        &format!(
            "  - name: orders\n    match: {{ prefix: \"/api/orders\" }}\n    backend: {target}\n"
        ),
    )
}

/// `backends.yaml` for the monolith (the default) and `orders`.
pub fn backends_file(monolith: &FakeBackend, orders: &FakeBackend) -> String {
    routes_file(
        &[("monolith", &monolith.url()), ("orders", &orders.url())],
        "",
    )
}

/// A routes file sending `/api/orders` to `orders`, for beside `backends_file`.
pub const ORDERS_ROUTE: &str = r#"routes:
  - name: orders
    match: { prefix: "/api/orders" }
    backend: orders
"#;

// === RoutesDir ===

/// A temporary directory holding `routes/` (what the proxy loads) and
/// `state/` (where it keeps migration state).
pub struct RoutesDir {
    dir: tempfile::TempDir,
}

impl RoutesDir {
    /// `routes/` with plain files.
    pub fn new(files: &[(&str, &str)]) -> RoutesDir {
        let routes = RoutesDir::empty();
        std::fs::create_dir(routes.path()).expect("create routes/");
        for (name, text) in files {
            routes.write(name, text);
        }
        routes
    }

    /// `routes/` as the kubelet mounts a ConfigMap: the files live in
    /// `..<generation>/`, `..data` links to that directory, and each key is a
    /// link `routes/NAME -> ..data/NAME`.
    pub fn config_map(generation: &str, files: &[(&str, &str)]) -> RoutesDir {
        let routes = RoutesDir::empty();
        std::fs::create_dir(routes.path()).expect("create routes/");
        routes.write_generation(generation, files);
        symlink(generation, &routes.path().join("..data"));
        for (name, _) in files {
            symlink(&format!("..data/{name}"), &routes.path().join(name));
        }
        routes
    }

    fn empty() -> RoutesDir {
        RoutesDir {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// The directory the proxy loads.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("routes")
    }

    /// The directory that holds `routes/`.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A file's name as errors print it.
    pub fn file(&self, name: &str) -> String {
        self.path().join(name).display().to_string()
    }

    /// Writes in place (truncate, then write), as `echo > file` does.
    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path().join(name), text).expect("write a route file");
    }

    /// Saves as most editors do: a hidden temporary file renamed over the
    /// old one, so a reader sees either the old or the new text.
    pub fn save_by_rename(&self, name: &str, text: &str) {
        let temporary = self.path().join(format!(".{name}.swp"));
        std::fs::write(&temporary, text).expect("write the temporary file");
        std::fs::rename(&temporary, self.path().join(name)).expect("rename over the route file");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.path().join(name)).expect("remove a route file");
    }

    /// Updates a `config_map` directory as the kubelet does: the new files
    /// go into a new `..<generation>/`, a temporary link to it is renamed
    /// over `..data` (one atomic step), and the old generation is removed.
    pub fn swap_config_map(&self, old_generation: &str, generation: &str, files: &[(&str, &str)]) {
        self.write_generation(generation, files);
        let temporary = self.path().join("..data_tmp");
        symlink(generation, &temporary);
        std::fs::rename(&temporary, self.path().join("..data")).expect("swap ..data");
        std::fs::remove_dir_all(self.path().join(old_generation))
            .expect("remove the old generation");
    }

    fn write_generation(&self, generation: &str, files: &[(&str, &str)]) {
        let dir = self.path().join(generation);
        std::fs::create_dir(&dir).expect("create a ConfigMap generation");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write a ConfigMap key");
        }
    }
}

fn symlink(target: &str, link: &Path) {
    std::os::unix::fs::symlink(target, link).expect("create a symlink");
}

// === ReloadingProxy ===

/// `strangler::run` on loopback listeners over a `RoutesDir`. Dropping the
/// handle shuts the proxy down.
pub struct ReloadingProxy {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    client: HttpClient,
    admin: HttpClient,
    _stop: oneshot::Sender<()>,
    _task: JoinHandle<Result<(), strangler::RunError>>,
}

impl ReloadingProxy {
    /// Starts the proxy with the watcher on, as `strangler run` does.
    pub async fn start(routes: &RoutesDir) -> ReloadingProxy {
        ReloadingProxy::start_with(routes, true).await
    }

    /// Starts the proxy with `watch` as given; without the watcher only
    /// SIGHUP and `POST /api/reload` reload.
    pub async fn start_with(routes: &RoutesDir, watch: bool) -> ReloadingProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let admin = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound socket has an address");
        let admin_addr = admin.local_addr().expect("bound socket has an address");
        let config = strangler::RunConfig {
            routes_dir: routes.path(),
            state_dir: routes.root().join("state"),
            watch,
            workers: 1,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        // The shutdown future resolves when the handle (the sender) drops.
        let mut task = tokio::spawn(strangler::run(listener, admin, config, async move {
            let _ = stopped.await;
        }));
        // `run` starts the watcher before it serves the admin API, so once
        // /readyz answers every later edit is seen.
        let admin_client = HttpClient::http1(admin_addr);
        let started = async {
            tokio::select! {
                reply = admin_client.get("/readyz") => assert_eq!(reply.status, StatusCode::OK, "/readyz"),
                result = &mut task => panic!("the proxy stopped at start: {result:?}"),
            }
        };
        tokio::time::timeout(PATIENCE, started)
            .await
            .expect("the proxy answers /readyz");
        ReloadingProxy {
            addr,
            admin_addr,
            client: HttpClient::http1(addr),
            admin: admin_client,
            _stop: stop,
            _task: task,
        }
    }

    /// A new HTTP/1.1 client of the proxy, with its own connections.
    pub fn new_client(&self) -> HttpClient {
        HttpClient::http1(self.addr)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.client.get(path).await
    }

    /// `GET path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Reply {
        self.admin.get(path).await
    }

    /// `GET /api/routes` as JSON.
    pub async fn routes(&self) -> serde_json::Value {
        let reply = self.admin_get("/api/routes").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }

    /// The active table's version, from `/api/routes`.
    pub async fn version(&self) -> String {
        self.routes().await["version"]
            .as_str()
            .expect("/api/routes has a version")
            .to_string()
    }

    /// `POST /api/reload`.
    pub async fn post_reload(&self) -> Reply {
        let request = self
            .admin
            .request(Method::POST, "/api/reload")
            .body(empty())
            .expect("request");
        self.admin.send(request).await
    }

    /// The value of one series of `/metrics`, e.g.
    /// `strangler_config_reloads_total{result="failure"}`; 0 when absent
    /// (a labelled series appears at its first increment).
    pub async fn metric(&self, series: &str) -> f64 {
        let reply = self.admin_get("/metrics").await;
        metric_value(reply.text(), series)
    }

    /// The errors `/api/routes` shows for the last failed reload.
    pub async fn last_error(&self) -> Vec<String> {
        let routes = self.routes().await;
        let errors = routes["last_error"]
            .as_array()
            .unwrap_or_else(|| panic!("/api/routes has no last_error: {routes:#}"));
        errors
            .iter()
            .map(|e| e.as_str().expect("an error line").to_string())
            .collect()
    }

    /// Waits until a reload has failed since `before` failures were counted.
    pub async fn until_a_reload_fails(&self, before: f64) {
        eventually("a reload fails", || async {
            self.metric(FAILURES).await > before
        })
        .await;
    }

    /// Waits until the active version differs from `old`, and returns it.
    pub async fn next_version(&self, old: &str) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let version = self.version().await;
            if version != old {
                return version;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for the version to change from {old}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `GET path` is answered with `body` (each fake answers
    /// its own name).
    pub async fn until_served(&self, path: &str, body: &str) {
        eventually(&format!("GET {path} is answered by {body}"), || async {
            let reply = self.get(path).await;
            reply.status == StatusCode::OK && reply.text() == body
        })
        .await;
    }
}

/// The value of `series` in a Prometheus text exposition; 0 when absent.
pub fn metric_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a metric value"))
        .unwrap_or(0.0)
}

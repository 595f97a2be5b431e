//! Reloads on demand, over real sockets: `POST /api/reload` answers with
//! the outcome, and SIGHUP reloads the running `strangler` binary.

#[path = "support/reload.rs"]
mod reload_support;
mod support;

use std::process::Stdio;

use http::StatusCode;
use reload_support::{orders_to, ReloadingProxy, RoutesDir, FAILURES, SUCCESSES};
use support::{FakeBackend, HttpClient, PATIENCE};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

// === POST /api/reload ===
// Without the watcher, so that the admin call is what applies each edit.

const SPLIT_BACKENDS: &str = r#"backends:
  monolith: { url: "http://127.0.0.1:3000" }
  orders: { url: "http://127.0.0.1:3001" }
  checkout-svc: { url: "http://127.0.0.1:3002" }
default: monolith
"#;

const SPLIT_BEFORE: &str = r#"routes:
  - name: orders
    match: { prefix: "/api/orders" }
    backend: orders
  - name: legacy-search
    match: { prefix: "/search" }
    backend: monolith
  - name: checkout
    match: { prefix: "/api/checkout" }
    split: { checkout-svc: 5, monolith: 95 }
"#;

const SPLIT_AFTER: &str = r#"routes:
  - name: orders
    match: { prefix: "/api/orders" }
    backend: orders
  - name: checkout
    match: { prefix: "/api/checkout" }
    split: { checkout-svc: 25, monolith: 75 }
  - name: catalog
    match: { prefix: "/api/catalog" }
    backend: orders
"#;

async fn unwatched_split_proxy() -> (RoutesDir, ReloadingProxy) {
    let routes = RoutesDir::new(&[
        ("backends.yaml", SPLIT_BACKENDS),
        ("routes.yaml", SPLIT_BEFORE),
    ]);
    let proxy = ReloadingProxy::start_with(&routes, false).await;
    (routes, proxy)
}

/// `POST /api/reload` after an edit answers `applied` with the new version
/// and the routes added, removed and changed, and the split share that moved.
#[tokio::test]
async fn admin_reload_answers_applied_with_the_changes() {
    let (routes, proxy) = unwatched_split_proxy().await;
    let old = proxy.version().await;

    routes.write("routes.yaml", SPLIT_AFTER);
    let reply = proxy.post_reload().await;

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let outcome = reply.json();
    assert_eq!(outcome["result"], "applied", "{outcome:#}");
    let version = proxy.version().await;
    assert_ne!(version, old);
    assert_eq!(outcome["version"], version.as_str());
    let changes = &outcome["changes"];
    assert_eq!(
        changes["added"],
        serde_json::json!(["catalog"]),
        "{outcome:#}"
    );
    assert_eq!(
        changes["removed"],
        serde_json::json!(["legacy-search"]),
        "{outcome:#}"
    );
    assert_eq!(
        changes["changed"],
        serde_json::json!(["checkout"]),
        "{outcome:#}"
    );
    let traffic = changes["traffic"].as_array().expect("traffic lines");
    assert_eq!(traffic.len(), 1, "{outcome:#}");
    let line = traffic[0].as_str().expect("a traffic line");
    assert!(line.starts_with("checkout: "), "{line}");
    for share in [
        "checkout-svc 5%",
        "checkout-svc 25%",
        "monolith 95%",
        "monolith 75%",
    ] {
        assert!(line.contains(share), "{line} lacks {share}");
    }
}

/// `POST /api/reload` with nothing changed answers `unchanged` with the
/// active version, and counts no reload.
#[tokio::test]
async fn admin_reload_answers_unchanged_when_nothing_changed() {
    let (_routes, proxy) = unwatched_split_proxy().await;
    let version = proxy.version().await;
    let successes = proxy.metric(SUCCESSES).await;

    let reply = proxy.post_reload().await;

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.json(),
        serde_json::json!({"result": "unchanged", "version": version})
    );
    assert_eq!(proxy.metric(SUCCESSES).await, successes);
    assert_eq!(proxy.metric(FAILURES).await, 0.0);
}

/// `POST /api/reload` after a broken edit answers 422 `failed` with the
/// active (old) version and every error at FILE:LINE:COL; the old table
/// stays and `/api/routes` shows the same errors.
#[tokio::test]
async fn admin_reload_answers_422_failed_with_the_errors() {
    let (routes, proxy) = unwatched_split_proxy().await;
    let version = proxy.version().await;

    let broken = SPLIT_BEFORE
        .replace("backend: orders", "backend: ordrs")
        .replace("checkout-svc: 5,", "checkout-sv: 5,");
    routes.write("routes.yaml", &broken);
    let reply = proxy.post_reload().await;

    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text()
    );
    let outcome = reply.json();
    assert_eq!(outcome["result"], "failed", "{outcome:#}");
    assert_eq!(outcome["version"], version.as_str());
    let errors: Vec<String> = outcome["errors"]
        .as_array()
        .expect("a list of errors")
        .iter()
        .map(|e| e.as_str().expect("an error line").to_string())
        .collect();
    let file = routes.file("routes.yaml");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!("{file}:4:14: ")),
        "{errors:?}"
    );
    assert!(errors[0].contains("unknown backend `ordrs`"), "{errors:?}");
    assert!(errors[1].starts_with(&format!("{file}:10:")), "{errors:?}");
    assert!(errors[1].contains("`checkout-sv`"), "{errors:?}");
    assert_eq!(proxy.last_error().await, errors);
    assert_eq!(proxy.version().await, version);
    assert_eq!(proxy.metric(FAILURES).await, 1.0);
}

// === SIGHUP ===

const BIN: &str = env!("CARGO_BIN_EXE_strangler");

/// The next JSON log event of the binary for which `wanted` holds.
async fn next_event(
    logs: &mut mpsc::UnboundedReceiver<serde_json::Value>,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let found = async {
        while let Some(event) = logs.recv().await {
            if wanted(&event) {
                return event;
            }
        }
        panic!("the binary closed its log before {what}");
    };
    tokio::time::timeout(PATIENCE, found)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// SIGHUP makes the `strangler` binary reload a change its watcher cannot
/// see (the `--routes` link switched to another release directory, as a
/// deploy does), and SIGTERM then stops it with exit 0.
#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let monolith = FakeBackend::start("monolith").await;
    let orders = FakeBackend::start("orders").await;
    let root = tempfile::tempdir().expect("temporary directory");
    let release = |name: &str, target: &str| {
        let dir = root.path().join("releases").join(name);
        std::fs::create_dir_all(&dir).expect("create a release directory");
        std::fs::write(
            dir.join("routes.yaml"),
            orders_to(&monolith, &orders, target),
        )
        .expect("write routes.yaml");
    };
    release("1", "monolith");
    let routes = root.path().join("routes");
    std::os::unix::fs::symlink("releases/1", &routes).expect("link routes/");
    let state = root.path().join("state");
    // Port 0 and the address read back from the log: no port can be taken
    // between choosing it and binding it.
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--routes", routes.to_str().expect("UTF-8 path")])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args([
            "--state-dir",
            state.to_str().expect("UTF-8 path"),
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start strangler run");
    let pid = child.id().expect("the child runs");
    // Read the log as it comes, so the binary never blocks on a full pipe.
    let (events, mut logs) = mpsc::unbounded_channel();
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = events.send(event);
            }
        }
    });
    let serving = next_event(&mut logs, "strangler is serving", |e| {
        e["message"] == "strangler is serving"
    })
    .await;
    let address = |field: &str| {
        serving[field]
            .as_str()
            .expect("an address")
            .parse()
            .expect("a socket address")
    };
    let (proxy, admin) = (
        HttpClient::http1(address("listen")),
        HttpClient::http1(address("admin")),
    );
    let old = serving["version"].as_str().expect("a version").to_string();
    assert_eq!(proxy.get("/api/orders/7").await.text(), "monolith");

    release("2", "orders");
    let link = root.path().join("routes.next");
    std::os::unix::fs::symlink("releases/2", &link).expect("link the next release");
    std::fs::rename(&link, &routes).expect("switch routes/ to the next release");
    signal(pid, "HUP");

    let reloaded = next_event(&mut logs, "a reload", |e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("routes reloaded"))
    })
    .await;
    assert_eq!(reloaded["trigger"], "SIGHUP", "{reloaded}");
    assert_eq!(reloaded["from"], old.as_str(), "{reloaded}");
    assert_eq!(
        reloaded["message"],
        "routes reloaded: 0 added, 0 removed, 1 changed; changed: orders"
    );
    let version = admin.get("/api/routes").await.json()["version"].clone();
    assert_eq!(reloaded["to"], version, "{reloaded}");
    assert_eq!(proxy.get("/api/orders/7").await.text(), "orders");

    signal(pid, "TERM");
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the binary stops after SIGTERM")
        .expect("wait for the binary");
    assert_eq!(status.code(), Some(0), "{status}");
}

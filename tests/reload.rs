//! Hot reload over real sockets: edits picked up by the watcher (in place,
//! by rename, files added and removed, a ConfigMap's `..data` swap), broken
//! edits refused while the old table serves, `POST /api/reload` and SIGHUP,
//! pools kept across a reload, and reloads under load that fail no request.

#[path = "support/reload.rs"]
mod reload_support;
mod support;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use reload_support::{ReloadingProxy, RoutesDir};
use support::{empty, eventually, routes_file, FakeBackend, HttpClient, PATIENCE};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

const FAILURES: &str = r#"strangler_config_reloads_total{result="failure"}"#;
const SUCCESSES: &str = r#"strangler_config_reloads_total{result="success"}"#;

/// A one-file table: the monolith is the default and `/api/orders` goes to
/// `target` (`monolith` or `orders`).
fn orders_to(monolith: &FakeBackend, orders: &FakeBackend, target: &str) -> String {
    routes_file(
        &[("monolith", &monolith.url()), ("orders", &orders.url())],
        &format!(
            "  - name: orders\n    match: {{ prefix: \"/api/orders\" }}\n    backend: {target}\n"
        ),
    )
}

/// `backends.yaml` for the monolith (the default) and `orders`.
fn backends_file(monolith: &FakeBackend, orders: &FakeBackend) -> String {
    routes_file(
        &[("monolith", &monolith.url()), ("orders", &orders.url())],
        "",
    )
}

const ORDERS_ROUTE: &str = r#"routes:
  - name: orders
    match: { prefix: "/api/orders" }
    backend: orders
"#;

/// The errors `/api/routes` shows for the last failed reload.
async fn last_error(proxy: &ReloadingProxy) -> Vec<String> {
    let routes = proxy.routes().await;
    let errors = routes["last_error"]
        .as_array()
        .unwrap_or_else(|| panic!("/api/routes has no last_error: {routes:#}"));
    errors
        .iter()
        .map(|e| e.as_str().expect("an error line").to_string())
        .collect()
}

/// Waits until a reload has failed since `before` failures were counted.
async fn until_a_reload_fails(proxy: &ReloadingProxy, before: f64) {
    eventually("a reload fails", || async {
        proxy.metric(FAILURES).await > before
    })
    .await;
}

/// A route file edited in place is applied: requests follow the new rule,
/// and `/api/routes` and `strangler_config_info` show the new version.
#[tokio::test]
async fn an_edit_in_place_is_applied() {
    let monolith = FakeBackend::start("monolith").await;
    let orders = FakeBackend::start("orders").await;
    let routes = RoutesDir::new(&[("routes.yaml", &orders_to(&monolith, &orders, "monolith"))]);
    let proxy = ReloadingProxy::start(&routes).await;
    assert_eq!(proxy.get("/api/orders/7").await.text(), "monolith");
    let old = proxy.version().await;

    routes.write("routes.yaml", &orders_to(&monolith, &orders, "orders"));
    let new = proxy.next_version(&old).await;

    assert_eq!(proxy.get("/api/orders/7").await.text(), "orders");
    let info = |version: &str| format!("strangler_config_info{{version=\"{version}\"}}");
    assert_eq!(proxy.metric(&info(&new)).await, 1.0);
    assert_eq!(
        proxy.metric(&info(&old)).await,
        0.0,
        "the old version's series is removed"
    );
    assert_eq!(
        proxy.metric(SUCCESSES).await,
        2.0,
        "the first load and the reload"
    );
    assert_eq!(proxy.metric(FAILURES).await, 0.0);
    let status = proxy.routes().await;
    assert!(status["last_error"].is_null(), "{status:#}");
    assert!(status["last_success_unix"].as_u64().is_some(), "{status:#}");
}

/// A save by rename (an editor's temporary file moved over the route file)
/// is applied.
#[tokio::test]
async fn a_save_by_rename_is_applied() {
    let monolith = FakeBackend::start("monolith").await;
    let orders = FakeBackend::start("orders").await;
    let routes = RoutesDir::new(&[("routes.yaml", &orders_to(&monolith, &orders, "monolith"))]);
    let proxy = ReloadingProxy::start(&routes).await;

    routes.save_by_rename("routes.yaml", &orders_to(&monolith, &orders, "orders"));

    proxy.until_served("/api/orders/7", "orders").await;
}

/// An edit with a YAML syntax error keeps the old table serving and
/// `/readyz` ready; the failure is counted and `/api/routes` shows it at
/// FILE:LINE:COL.
#[tokio::test]
async fn a_yaml_syntax_error_keeps_the_old_table() {
    let monolith = FakeBackend::start("monolith").await;
    let orders = FakeBackend::start("orders").await;
    let routes = RoutesDir::new(&[
        ("backends.yaml", &backends_file(&monolith, &orders)),
        ("routes.yaml", ORDERS_ROUTE),
    ]);
    let proxy = ReloadingProxy::start(&routes).await;
    let version = proxy.version().await;
    let before = proxy.metric(FAILURES).await;

    // The flow mapping on line 6 is never closed; the parser notices at 7:5.
    let broken = format!(
        "{ORDERS_ROUTE}  - name: search\n    match: {{ prefix: \"/api/search\"\n    backend: orders\n"
    );
    routes.write("routes.yaml", &broken);
    until_a_reload_fails(&proxy, before).await;

    assert_eq!(proxy.metric(FAILURES).await, before + 1.0);
    assert_eq!(proxy.version().await, version);
    assert_eq!(proxy.get("/api/orders/7").await.text(), "orders");
    assert_eq!(proxy.admin_get("/readyz").await.status, StatusCode::OK);
    let errors = last_error(&proxy).await;
    let position = format!("{}:7:5: ", routes.file("routes.yaml"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(&position),
        "{errors:?} should start with {position}"
    );
}

/// An edit naming an unknown backend keeps the old table serving and
/// `/readyz` ready, is counted and shown at FILE:LINE:COL; the next good
/// edit is applied and clears the error.
#[tokio::test]
async fn an_unknown_backend_keeps_the_old_table_until_fixed() {
    let monolith = FakeBackend::start("monolith").await;
    let orders = FakeBackend::start("orders").await;
    let routes = RoutesDir::new(&[
        ("backends.yaml", &backends_file(&monolith, &orders)),
        ("routes.yaml", ORDERS_ROUTE),
    ]);
    let proxy = ReloadingProxy::start(&routes).await;
    let version = proxy.version().await;
    let before = proxy.metric(FAILURES).await;

    routes.save_by_rename(
        "routes.yaml",
        &ORDERS_ROUTE.replace("backend: orders", "backend: ordrs"),
    );
    until_a_reload_fails(&proxy, before).await;

    assert_eq!(proxy.version().await, version);
    assert_eq!(proxy.get("/api/orders/7").await.text(), "orders");
    assert_eq!(proxy.admin_get("/readyz").await.status, StatusCode::OK);
    let errors = last_error(&proxy).await;
    let position = format!("{}:4:14: ", routes.file("routes.yaml"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(&position),
        "{errors:?} should start with {position}"
    );
    assert!(
        errors[0].contains("unknown backend `ordrs` (did you mean `orders`?)"),
        "{errors:?}"
    );

    routes.save_by_rename(
        "routes.yaml",
        &ORDERS_ROUTE.replace("backend: orders", "backend: monolith"),
    );
    proxy.next_version(&version).await;

    assert_eq!(proxy.get("/api/orders/7").await.text(), "monolith");
    let status = proxy.routes().await;
    assert!(status["last_error"].is_null(), "{status:#}");
    assert_eq!(proxy.metric(FAILURES).await, before + 1.0);
}

/// A route file added to the directory is applied, and so is its removal.
#[tokio::test]
async fn a_file_added_and_a_file_removed_are_applied() {
    let monolith = FakeBackend::start("monolith").await;
    let orders = FakeBackend::start("orders").await;
    let routes = RoutesDir::new(&[
        ("backends.yaml", &backends_file(&monolith, &orders)),
        ("routes.yaml", ORDERS_ROUTE),
    ]);
    let proxy = ReloadingProxy::start(&routes).await;
    assert_eq!(proxy.get("/api/search").await.text(), "monolith");

    let search =
        "routes:\n  - name: search\n    match: { prefix: \"/api/search\" }\n    backend: orders\n";
    routes.write("search.yaml", search);
    proxy.until_served("/api/search", "orders").await;
    routes.remove("search.yaml");
    proxy.until_served("/api/search", "monolith").await;

    let names: Vec<String> = proxy.routes().await["routes"]
        .as_array()
        .expect("a list of routes")
        .iter()
        .map(|r| r["name"].as_str().expect("a route name").to_string())
        .collect();
    assert_eq!(names, ["orders"]);
    assert_eq!(proxy.get("/api/orders/7").await.text(), "orders");
}

/// A ConfigMap mount is reloaded when the kubelet swaps `..data` to a new
/// generation of the files (a temporary link renamed over it).
#[tokio::test]
async fn a_config_map_data_swap_is_applied() {
    let monolith = FakeBackend::start("monolith").await;
    let orders = FakeBackend::start("orders").await;
    let first = "..2026_01_01_00_00_00.000000001";
    let second = "..2026_01_01_00_05_00.000000002";
    let routes = RoutesDir::config_map(
        first,
        &[("routes.yaml", &orders_to(&monolith, &orders, "monolith"))],
    );
    let proxy = ReloadingProxy::start(&routes).await;
    assert_eq!(proxy.get("/api/orders/7").await.text(), "monolith");
    let old = proxy.version().await;

    routes.swap_config_map(
        first,
        second,
        &[("routes.yaml", &orders_to(&monolith, &orders, "orders"))],
    );

    proxy.until_served("/api/orders/7", "orders").await;
    assert_ne!(proxy.version().await, old);
    let status = proxy.routes().await;
    assert!(status["last_error"].is_null(), "{status:#}");
}

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
    assert_eq!(last_error(&proxy).await, errors);
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

// === Under traffic ===

/// Requests that failed or were answered wrongly, by a client loop.
type Failures = Arc<Mutex<Vec<String>>>;

/// A reload keeps the pooled connection of a backend whose definition did
/// not change while requests to it go on; a changed backend gets a new pool.
#[tokio::test]
async fn a_reload_keeps_the_pool_of_an_unchanged_backend() {
    let monolith = FakeBackend::start("monolith").await;
    let orders = FakeBackend::start("orders").await;
    let table = |orders_timeout: &str, extra: &str| {
        format!(
            "backends:\n  monolith: {{ url: \"{}\" }}\n  orders: {{ url: \"{}\", timeout: {orders_timeout} }}\ndefault: monolith\n{ORDERS_ROUTE}{extra}",
            monolith.url(),
            orders.url()
        )
    };
    let routes = RoutesDir::new(&[("routes.yaml", &table("2s", ""))]);
    let proxy = ReloadingProxy::start(&routes).await;
    assert_eq!(proxy.get("/api/orders/7").await.text(), "orders");

    let (stop, served, failures) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Failures::default(),
    );
    let client = proxy.new_client();
    let requests = tokio::spawn({
        let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                match client
                    .try_send(
                        client
                            .request(Method::GET, "/home")
                            .body(empty())
                            .expect("request"),
                    )
                    .await
                {
                    Ok(reply) if reply.status == StatusCode::OK && reply.body == "monolith" => {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(reply) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("{}: {:?}", reply.status, reply.body)),
                    Err(err) => failures.lock().expect("lock").push(err.to_string()),
                }
            }
        }
    });
    eventually("requests reach the monolith", || async {
        served.load(Ordering::SeqCst) > 0
    })
    .await;
    let connections = monolith.connections();
    let old = proxy.version().await;

    let catalog =
        "  - name: catalog\n    match: { prefix: \"/api/catalog\" }\n    backend: monolith\n";
    routes.save_by_rename("routes.yaml", &table("3s", catalog));
    proxy.next_version(&old).await;
    let at_reload = served.load(Ordering::SeqCst);
    eventually("requests go on after the reload", || async {
        served.load(Ordering::SeqCst) > at_reload + 10
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    requests.await.expect("the request loop does not panic");

    assert_eq!(*failures.lock().expect("lock"), Vec::<String>::new());
    assert_eq!(connections, 1, "sequential requests share one connection");
    assert_eq!(
        monolith.connections(),
        connections,
        "the unchanged monolith saw a new connection"
    );
    assert_eq!(proxy.get("/api/orders/7").await.text(), "orders");
    assert_eq!(orders.connections(), 2, "the changed backend's pool is new");
}

/// Table `n` of the load test: `/probe` goes to backend `bn` (which answers
/// its own name) and its answers carry `x-table: vn`. Table 2 declares one
/// more backend, `a-spare`, which sorts first, so that the same backend has a
/// different id in each table: an id looked up in the other table's backends
/// shows as a mixed answer.
fn probe_table(n: usize, b1: &FakeBackend, b2: &FakeBackend) -> String {
    let mut backends = vec![("b1", b1.url()), ("b2", b2.url())];
    if n == 2 {
        backends.push(("a-spare", b2.url()));
    }
    let backends: Vec<(&str, &str)> = backends
        .iter()
        .map(|(name, url)| (*name, url.as_str()))
        .collect();
    routes_file(
        &backends,
        &format!(
            "  - name: probe\n    match: {{ prefix: \"/probe\" }}\n    backend: b{n}\n    response_headers: {{ set: {{ x-table: v{n} }} }}\n"
        ),
    )
}

/// Under continuous load from 4 client connections, 50 reloads alternating
/// two tables fail no request, and every answer comes wholly from one
/// table: its `x-table` header (set by the route) and its body (from the
/// route's backend) agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_never_mix_tables() {
    const CLIENTS: usize = 4;
    const RELOADS: usize = 50;
    let b1 = FakeBackend::start("b1").await;
    let b2 = FakeBackend::start("b2").await;
    let tables = [
        String::new(),
        probe_table(1, &b1, &b2),
        probe_table(2, &b1, &b2),
    ];
    let routes = RoutesDir::new(&[("routes.yaml", &tables[1])]);
    let proxy = ReloadingProxy::start(&routes).await;

    let stop = Arc::new(AtomicBool::new(false));
    let served: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let failures = Failures::default();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        // One client each, sending one request at a time: one connection each.
        let client = proxy.new_client();
        let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let request = client
                    .request(Method::GET, "/probe")
                    .body(empty())
                    .expect("request");
                let failure = match client.try_send(request).await {
                    Ok(reply) if reply.status == StatusCode::OK => {
                        match (reply.header("x-table"), &reply.body[..]) {
                            (Some("v1"), b"b1") => {
                                served[1].fetch_add(1, Ordering::SeqCst);
                                continue;
                            }
                            (Some("v2"), b"b2") => {
                                served[2].fetch_add(1, Ordering::SeqCst);
                                continue;
                            }
                            (header, body) => {
                                format!(
                                    "mixed answer: x-table {header:?}, body {:?}",
                                    String::from_utf8_lossy(body)
                                )
                            }
                        }
                    }
                    Ok(reply) => format!("{}: {:?}", reply.status, reply.body),
                    Err(err) => format!("request failed: {err}"),
                };
                failures.lock().expect("lock").push(failure);
            }
        }));
    }

    let mut versions = [String::new(), proxy.version().await, String::new()];
    for reload in 1..=RELOADS {
        let n = if reload % 2 == 1 { 2 } else { 1 };
        let before = served[n].load(Ordering::SeqCst);
        routes.save_by_rename("routes.yaml", &tables[n]);
        let reply = proxy.post_reload().await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "reload {reload}: {}",
            reply.text()
        );
        // The watcher may have applied the edit first: then `unchanged`.
        let outcome = reply.json();
        assert!(
            matches!(outcome["result"].as_str(), Some("applied" | "unchanged")),
            "{outcome:#}"
        );
        let version = outcome["version"].as_str().expect("a version");
        if versions[n].is_empty() {
            versions[n] = version.to_string();
        }
        assert_eq!(version, versions[n], "reload {reload} to table v{n}");
        // Each table serves before the next swap, so every reload happens
        // while requests are under way.
        eventually(
            &format!("table v{n} serves after reload {reload}"),
            || async { served[n].load(Ordering::SeqCst) > before },
        )
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("a client loop does not panic");
    }

    assert_ne!(versions[1], versions[2]);
    assert_eq!(*failures.lock().expect("lock"), Vec::<String>::new());
    assert!(served[1].load(Ordering::SeqCst) >= RELOADS / 2);
    assert!(served[2].load(Ordering::SeqCst) >= RELOADS / 2);
    assert_eq!(proxy.metric(FAILURES).await, 0.0);
}

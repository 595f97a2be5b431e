//! Hot reload by the file watcher, over real sockets: an edit in place or
//! by rename, files added and removed, a ConfigMap's `..data` swap; and
//! broken edits refused while the old table keeps serving.
//!
//! `reload_triggers.rs` covers `POST /api/reload` and SIGHUP,
//! `reload_traffic.rs` reloads under load and the pools they keep.

#[path = "support/reload.rs"]
mod reload_support;
mod support;

use http::StatusCode;
use reload_support::{
    backends_file, orders_to, ReloadingProxy, RoutesDir, FAILURES, ORDERS_ROUTE, SUCCESSES,
};
use support::FakeBackend;

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
    proxy.until_a_reload_fails(before).await;

    assert_eq!(proxy.metric(FAILURES).await, before + 1.0);
    assert_eq!(proxy.version().await, version);
    assert_eq!(proxy.get("/api/orders/7").await.text(), "orders");
    assert_eq!(proxy.admin_get("/readyz").await.status, StatusCode::OK);
    let errors = proxy.last_error().await;
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
    proxy.until_a_reload_fails(before).await;

    assert_eq!(proxy.version().await, version);
    assert_eq!(proxy.get("/api/orders/7").await.text(), "orders");
    assert_eq!(proxy.admin_get("/readyz").await.status, StatusCode::OK);
    let errors = proxy.last_error().await;
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

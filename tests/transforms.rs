//! Per-route transforms over real sockets: path rewrites, request and
//! response header edits, and the `Host` the backend sees.

mod support;

use support::{routes_file, Behaviour, FakeBackend, TestProxy};

/// The proxy with an echoing `svc` backend behind the given routes.
async fn proxy_to_echo(routes: &str) -> (TestProxy, FakeBackend, FakeBackend) {
    let monolith = FakeBackend::start("monolith").await;
    let svc = FakeBackend::with(Behaviour::Echo).await;
    let proxy = TestProxy::start(&routes_file(
        &[("monolith", &monolith.url()), ("svc", &svc.url())],
        routes,
    ))
    .await;
    (proxy, monolith, svc)
}

/// `rewrite: { prefix: "/" }` strips the matched prefix and keeps the query.
#[tokio::test]
async fn prefix_rewrite_strips_the_matched_prefix() {
    let routes = r#"
  - name: orders
    match: { prefix: "/api/orders" }
    backend: svc
    rewrite: { prefix: "/" }
"#;
    let (proxy, _monolith, svc) = proxy_to_echo(routes).await;

    assert_eq!(proxy.get("/api/orders/7?expand=items").await.status, 200);
    assert_eq!(svc.last_request().path, "/7?expand=items");
    proxy.get("/api/orders").await;
    assert_eq!(svc.last_request().path, "/");
}

/// `rewrite: { prefix: "/v2" }` replaces the matched prefix.
#[tokio::test]
async fn prefix_rewrite_replaces_the_matched_prefix() {
    let routes = r#"
  - name: legacy
    match: { prefix: "/legacy/api" }
    backend: svc
    rewrite: { prefix: "/v2" }
"#;
    let (proxy, _monolith, svc) = proxy_to_echo(routes).await;

    proxy.get("/legacy/api/users/1").await;

    assert_eq!(svc.last_request().path, "/v2/users/1");
}

/// A template rewrite builds the new path from the matched parameters.
#[tokio::test]
async fn template_rewrite_substitutes_parameters() {
    let routes = r#"
  - name: order
    match: { path: "/api/orders/{id}" }
    backend: svc
    rewrite: { path: "/v2/orders/{id}" }
"#;
    let (proxy, _monolith, svc) = proxy_to_echo(routes).await;

    proxy.get("/api/orders/42?fields=total").await;

    assert_eq!(svc.last_request().path, "/v2/orders/42?fields=total");
}

/// Request header edits: `add` appends to the client's value, `set`
/// replaces it, `remove` drops it.
#[tokio::test]
async fn request_headers_are_added_set_and_removed() {
    let routes = r#"
  - name: edit
    match: { prefix: "/" }
    backend: svc
    request_headers:
      add: { x-tag: proxy }
      set: { x-tenant: acme }
      remove: [x-debug]
"#;
    let (proxy, _monolith, svc) = proxy_to_echo(routes).await;

    let headers = [
        ("x-tag", "client"),
        ("x-tenant", "spoofed"),
        ("x-debug", "1"),
        ("x-other", "kept"),
    ];
    proxy.get_with("/p", &headers).await;

    let seen = svc.last_request();
    assert_eq!(seen.header_all("x-tag"), ["client", "proxy"]);
    assert_eq!(seen.header_all("x-tenant"), ["acme"]);
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(seen.header("x-other"), Some("kept"));
}

/// Response header edits apply to the backend's answer before the client sees it.
#[tokio::test]
async fn response_headers_are_added_set_and_removed() {
    let monolith = FakeBackend::start("monolith").await;
    let backend_headers = [
        ("x-powered-by", "legacy-php"),
        ("cache-control", "no-cache"),
        ("x-trace", "b"),
    ];
    let svc = FakeBackend::with_headers(Behaviour::Fixed("svc"), &backend_headers).await;
    let routes = r#"
  - name: edit
    match: { prefix: "/" }
    backend: svc
    response_headers:
      add: { x-trace: proxy }
      set: { cache-control: "max-age=60" }
      remove: [x-powered-by]
"#;
    let proxy = TestProxy::start(&routes_file(
        &[("monolith", &monolith.url()), ("svc", &svc.url())],
        routes,
    ))
    .await;

    let reply = proxy.get("/p").await;

    assert_eq!(reply.text(), "svc");
    assert_eq!(reply.header("x-powered-by"), None);
    let cache: Vec<_> = reply.headers.get_all("cache-control").iter().collect();
    assert_eq!(cache, ["max-age=60"]);
    let trace: Vec<_> = reply.headers.get_all("x-trace").iter().collect();
    assert_eq!(trace, ["b", "proxy"]);
}

/// `host_rewrite: backend` sends the backend URL's authority as `Host`.
#[tokio::test]
async fn host_rewrite_backend_sends_the_backend_authority() {
    let routes = r#"
  - name: svc
    match: { prefix: "/" }
    backend: svc
    host_rewrite: backend
"#;
    let (proxy, _monolith, svc) = proxy_to_echo(routes).await;

    proxy.get_with("/p", &[("host", "shop.example.com")]).await;

    assert_eq!(
        svc.last_request().header("host"),
        Some(svc.addr.to_string().as_str())
    );
}

/// `host_rewrite` with any other value sends that value as `Host`.
#[tokio::test]
async fn host_rewrite_literal_sends_that_host() {
    let routes = r#"
  - name: svc
    match: { prefix: "/" }
    backend: svc
    host_rewrite: orders.internal
"#;
    let (proxy, _monolith, svc) = proxy_to_echo(routes).await;

    proxy.get_with("/p", &[("host", "shop.example.com")]).await;

    assert_eq!(svc.last_request().header_all("host"), ["orders.internal"]);
}

/// Without `host_rewrite`, the client's `Host` reaches the backend unchanged.
#[tokio::test]
async fn client_host_passes_through_by_default() {
    let routes = r#"
  - name: svc
    match: { prefix: "/" }
    backend: svc
"#;
    let (proxy, _monolith, svc) = proxy_to_echo(routes).await;

    proxy
        .get_with("/p", &[("host", "shop.example.com:8443")])
        .await;

    assert_eq!(
        svc.last_request().header_all("host"),
        ["shop.example.com:8443"]
    );
}

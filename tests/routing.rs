//! Route selection over real sockets: each match kind, precedence between
//! routes, the default backend, and path normalisation.

mod support;

use support::{routes_file, FakeBackend, TestProxy};

/// Starts the proxy with a monolith (the default) and one backend per
/// name in `services`, each answering its own name.
async fn proxy_with(services: &[&'static str], routes: &str) -> (TestProxy, Vec<FakeBackend>) {
    let mut fakes = vec![FakeBackend::start("monolith").await];
    for name in services {
        fakes.push(FakeBackend::start(name).await);
    }
    let urls: Vec<String> = fakes.iter().map(FakeBackend::url).collect();
    let mut backends = vec![("monolith", urls[0].as_str())];
    backends.extend(
        services
            .iter()
            .zip(&urls[1..])
            .map(|(name, url)| (*name, url.as_str())),
    );
    let proxy = TestProxy::start(&routes_file(&backends, routes)).await;
    (proxy, fakes)
}

/// Which backend answered `path` (each fake answers its own name).
async fn who(proxy: &TestProxy, path: &str) -> String {
    let reply = proxy.get(path).await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
    reply.text().to_string()
}

async fn who_with(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> String {
    let reply = proxy.get_with(path, headers).await;
    assert_eq!(
        reply.status,
        200,
        "GET {path} {headers:?}: {}",
        reply.text()
    );
    reply.text().to_string()
}

/// A request that matches no route goes to the default backend.
#[tokio::test]
async fn unmatched_request_goes_to_default_backend() {
    let routes = r#"
  - name: orders
    match: { prefix: "/api/orders" }
    backend: orders
"#;
    let (proxy, fakes) = proxy_with(&["orders"], routes).await;

    assert_eq!(who(&proxy, "/somewhere/else").await, "monolith");
    assert_eq!(fakes[1].hits(), 0);
    assert_eq!(fakes[0].hits(), 1);
}

/// An exact `path` matches that path only, not its children or a longer name.
#[tokio::test]
async fn exact_path_matches_only_that_path() {
    let routes = r#"
  - name: live
    match: { path: "/health/live" }
    backend: health
"#;
    let (proxy, _fakes) = proxy_with(&["health"], routes).await;

    assert_eq!(who(&proxy, "/health/live").await, "health");
    assert_eq!(who(&proxy, "/health/live/deep").await, "monolith");
    assert_eq!(who(&proxy, "/health/lively").await, "monolith");
    assert_eq!(who(&proxy, "/health").await, "monolith");
}

/// A `prefix` matches whole segments: `/api/orders` takes `/api/orders` and
/// `/api/orders/1`, never `/api/ordersX`.
#[tokio::test]
async fn prefix_matches_whole_segments_only() {
    let routes = r#"
  - name: orders
    match: { prefix: "/api/orders" }
    backend: orders
"#;
    let (proxy, _fakes) = proxy_with(&["orders"], routes).await;

    assert_eq!(who(&proxy, "/api/orders").await, "orders");
    assert_eq!(who(&proxy, "/api/orders/").await, "orders");
    assert_eq!(who(&proxy, "/api/orders/1").await, "orders");
    assert_eq!(who(&proxy, "/api/orders/1/items?page=2").await, "orders");
    assert_eq!(who(&proxy, "/api/ordersX").await, "monolith");
    assert_eq!(who(&proxy, "/api/order").await, "monolith");
}

/// A `{id}` template parameter matches exactly one non-empty segment.
#[tokio::test]
async fn template_parameter_matches_one_segment() {
    let routes = r#"
  - name: user
    match: { path: "/api/users/{id}" }
    backend: users
"#;
    let (proxy, _fakes) = proxy_with(&["users"], routes).await;

    assert_eq!(who(&proxy, "/api/users/7").await, "users");
    assert_eq!(who(&proxy, "/api/users/abc-def").await, "users");
    assert_eq!(who(&proxy, "/api/users/7/orders").await, "monolith");
    assert_eq!(who(&proxy, "/api/users").await, "monolith");
}

/// A trailing `{*rest}` catch-all matches one or more remaining segments.
#[tokio::test]
async fn catch_all_template_matches_the_rest_of_the_path() {
    let routes = r#"
  - name: assets
    match: { path: "/static/{*rest}" }
    backend: assets
"#;
    let (proxy, _fakes) = proxy_with(&["assets"], routes).await;

    assert_eq!(who(&proxy, "/static/app.css").await, "assets");
    assert_eq!(who(&proxy, "/static/img/icons/logo.svg").await, "assets");
    assert_eq!(who(&proxy, "/staticx/app.css").await, "monolith");
}

/// `methods` restricts a route; other methods fall through to the default.
#[tokio::test]
async fn methods_restrict_a_route() {
    let routes = r#"
  - name: cart-write
    match: { prefix: "/api/cart", methods: [POST, PUT] }
    backend: cart
"#;
    let (proxy, _fakes) = proxy_with(&["cart"], routes).await;
    let client = proxy.client();

    for method in [http::Method::POST, http::Method::PUT] {
        let req = client
            .request(method.clone(), "/api/cart/1")
            .body(support::empty())
            .unwrap();
        assert_eq!(client.send(req).await.text(), "cart", "{method}");
    }
    assert_eq!(who(&proxy, "/api/cart/1").await, "monolith");
}

/// `host` matches exactly (case-insensitively, port ignored) or, as
/// `*.example.com`, any subdomain but not the bare domain.
#[tokio::test]
async fn host_matches_exactly_or_by_wildcard() {
    let routes = r#"
  - name: api-host
    match: { host: "api.example.com" }
    backend: api
  - name: any-subdomain
    match: { host: "*.example.com" }
    backend: tenants
"#;
    let (proxy, _fakes) = proxy_with(&["api", "tenants"], routes).await;

    assert_eq!(
        who_with(&proxy, "/x", &[("host", "api.example.com")]).await,
        "api"
    );
    assert_eq!(
        who_with(&proxy, "/x", &[("host", "API.Example.com:8080")]).await,
        "api"
    );
    assert_eq!(
        who_with(&proxy, "/x", &[("host", "shop.example.com")]).await,
        "tenants"
    );
    assert_eq!(
        who_with(&proxy, "/x", &[("host", "a.b.example.com")]).await,
        "tenants"
    );
    assert_eq!(
        who_with(&proxy, "/x", &[("host", "example.com")]).await,
        "monolith"
    );
    assert_eq!(
        who_with(&proxy, "/x", &[("host", "example.org")]).await,
        "monolith"
    );
}

/// A header condition holds on an exact value or a regex match.
#[tokio::test]
async fn headers_match_exactly_or_by_regex() {
    let routes = r#"
  - name: beta
    match: { prefix: "/", headers: { x-beta: "on" } }
    backend: beta
  - name: staff
    match: { prefix: "/", headers: { x-user: { regex: "^staff-[0-9]+$" } } }
    backend: staff
"#;
    let (proxy, _fakes) = proxy_with(&["beta", "staff"], routes).await;

    assert_eq!(who_with(&proxy, "/p", &[("x-beta", "on")]).await, "beta");
    assert_eq!(
        who_with(&proxy, "/p", &[("x-beta", "off")]).await,
        "monolith"
    );
    assert_eq!(
        who_with(&proxy, "/p", &[("x-user", "staff-42")]).await,
        "staff"
    );
    assert_eq!(
        who_with(&proxy, "/p", &[("x-user", "staff-42x")]).await,
        "monolith"
    );
    assert_eq!(who(&proxy, "/p").await, "monolith");
}

/// A query condition holds when the parameter has the given value.
#[tokio::test]
async fn query_parameter_selects_a_route() {
    let routes = r#"
  - name: search-v2
    match: { prefix: "/search", query: { version: "2" } }
    backend: search
"#;
    let (proxy, _fakes) = proxy_with(&["search"], routes).await;

    assert_eq!(who(&proxy, "/search?q=shoes&version=2").await, "search");
    assert_eq!(who(&proxy, "/search?version=1").await, "monolith");
    assert_eq!(who(&proxy, "/search?q=version=2").await, "monolith");
    assert_eq!(who(&proxy, "/search").await, "monolith");
}

/// An exact path beats a template, which beats a prefix, whatever the
/// declaration order.
#[tokio::test]
async fn exact_beats_template_beats_prefix() {
    let routes = r#"
  - name: by-prefix
    match: { prefix: "/api/orders" }
    backend: prefix
  - name: by-template
    match: { path: "/api/orders/{id}" }
    backend: template
  - name: by-exact
    match: { path: "/api/orders/export" }
    backend: exact
"#;
    let (proxy, _fakes) = proxy_with(&["prefix", "template", "exact"], routes).await;

    assert_eq!(who(&proxy, "/api/orders/export").await, "exact");
    assert_eq!(who(&proxy, "/api/orders/7").await, "template");
    assert_eq!(who(&proxy, "/api/orders/7/items").await, "prefix");
}

/// Of two templates that both fit, the one with more literal segments wins,
/// then the one declared first, even where the radix tree would prefer a
/// literal segment further left. Found by the `route_match` fuzz target.
#[tokio::test]
async fn overlapping_templates_follow_precedence() {
    let routes = r#"
  - name: mine
    match: { path: "/{section}/users/me/profile" }
    backend: mine
  - name: by-user
    match: { path: "/api/users/{id}/profile" }
    backend: user
  - name: two-literals
    match: { path: "/{a}/b/c" }
    backend: two
  - name: one-literal
    match: { path: "/a/{x}/{y}" }
    backend: one
"#;
    let (proxy, _fakes) = proxy_with(&["user", "mine", "two", "one"], routes).await;

    // Three literal segments each: declaration order decides.
    assert_eq!(who(&proxy, "/api/users/me/profile").await, "mine");
    assert_eq!(who(&proxy, "/api/users/7/profile").await, "user");
    assert_eq!(who(&proxy, "/a/b/c").await, "two");
    assert_eq!(who(&proxy, "/a/b/d").await, "one");
}

/// Of two prefixes that both match, the longer one wins even when declared later.
#[tokio::test]
async fn longer_prefix_wins() {
    let routes = r#"
  - name: api
    match: { prefix: "/api" }
    backend: api
  - name: orders
    match: { prefix: "/api/orders" }
    backend: orders
"#;
    let (proxy, _fakes) = proxy_with(&["api", "orders"], routes).await;

    assert_eq!(who(&proxy, "/api/orders/1").await, "orders");
    assert_eq!(who(&proxy, "/api/users/1").await, "api");
}

/// On the same path, a route that names methods wins over one that does not,
/// even when declared later; other methods still reach the method-less one.
#[tokio::test]
async fn method_specific_route_wins_over_methodless_route() {
    let routes = r#"
  - name: any-method
    match: { path: "/api/orders/{id}" }
    backend: anymethod
  - name: reads
    match: { path: "/api/orders/{id}", methods: [GET] }
    backend: reads
"#;
    let (proxy, _fakes) = proxy_with(&["anymethod", "reads"], routes).await;
    let client = proxy.client();

    assert_eq!(who(&proxy, "/api/orders/7").await, "reads");
    let delete = client
        .request(http::Method::DELETE, "/api/orders/7")
        .body(support::empty())
        .unwrap();
    assert_eq!(client.send(delete).await.text(), "anymethod");
}

/// Between equally specific routes that both match, the one declared first wins.
#[tokio::test]
async fn declaration_order_breaks_ties() {
    // Named against the alphabet, so that name order cannot pass for
    // declaration order.
    let routes = r#"
  - name: zulu
    match: { prefix: "/tie", headers: { x-a: { present: true } } }
    backend: first
  - name: alpha
    match: { prefix: "/tie", headers: { x-b: { present: true } } }
    backend: second
"#;
    let (proxy, _fakes) = proxy_with(&["first", "second"], routes).await;

    assert_eq!(
        who_with(&proxy, "/tie", &[("x-a", "1"), ("x-b", "1")]).await,
        "first"
    );
    assert_eq!(who_with(&proxy, "/tie", &[("x-b", "1")]).await, "second");
}

/// A path with `.` segments and `//` is routed, and forwarded, in its
/// normalised form.
#[tokio::test]
async fn path_is_normalised_before_routing_and_forwarding() {
    let monolith = FakeBackend::start("monolith").await;
    let orders = FakeBackend::with(support::Behaviour::Echo).await;
    let routes = r#"
  - name: order
    match: { path: "/api/orders/{id}" }
    backend: orders
"#;
    let proxy = TestProxy::start(&routes_file(
        &[("monolith", &monolith.url()), ("orders", &orders.url())],
        routes,
    ))
    .await;

    let reply = proxy.get("/api/./orders//1?x=1").await;

    assert_eq!(reply.status, 200);
    assert_eq!(orders.last_request().path, "/api/orders/1?x=1");
    assert_eq!(reply.json()["path"], "/api/orders/1?x=1");
    assert_eq!(monolith.hits(), 0);
}

/// An encoded slash (`%2F`) is refused with 400 `bad_path`; no backend sees it.
#[tokio::test]
async fn encoded_slash_is_rejected_before_any_backend() {
    let routes = r#"
  - name: orders
    match: { prefix: "/api" }
    backend: orders
"#;
    let (proxy, fakes) = proxy_with(&["orders"], routes).await;

    let reply = proxy.get("/api/orders%2F..%2Fadmin").await;

    assert_eq!(reply.status, 400);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json()["error"], "bad_path");
    assert_eq!(fakes[0].hits() + fakes[1].hits(), 0);
}

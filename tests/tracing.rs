//! What a request carries about its trace and its timing: W3C trace context
//! to the backend, the trace id in error bodies and in the access log, and
//! `Server-Timing` when it is switched on.

mod support;

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use support::{dead_url, routes_file, Behaviour, FakeBackend, HttpClient, TestProxy, PATIENCE};

const BIN: &str = env!("CARGO_BIN_EXE_strangler");

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The four fields of a `traceparent` the backend received, checked to be
/// well formed: version 00, lowercase hex of the right lengths, ids not zero.
fn fields(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {traceparent:?}");
    assert_eq!(parts[0], "00", "version of {traceparent:?}");
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(
        is_hex(parts[1], 32) && parts[1].bytes().any(|b| b != b'0'),
        "trace id of {traceparent:?}"
    );
    assert!(
        is_hex(parts[2], 16) && parts[2].bytes().any(|b| b != b'0'),
        "parent id of {traceparent:?}"
    );
    assert!(is_hex(parts[3], 2), "flags of {traceparent:?}");
    (
        parts[1].to_string(),
        parts[2].to_string(),
        parts[3].to_string(),
    )
}

async fn echo_proxy() -> (TestProxy, FakeBackend) {
    let backend = FakeBackend::with(Behaviour::Echo).await;
    let proxy = TestProxy::start(&routes_file(&[("monolith", &backend.url())], "")).await;
    (proxy, backend)
}

/// A valid `traceparent` is continued: the backend sees the same trace id
/// and flags with a new parent id (the proxy's span), and `tracestate`
/// exactly as the client sent it.
#[tokio::test]
async fn traceparent_is_continued_with_a_child_span() {
    let (proxy, backend) = echo_proxy().await;
    proxy
        .get_with(
            "/",
            &[
                ("traceparent", PARENT),
                ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            ],
        )
        .await;

    let seen = backend.last_request();
    let (trace_id, parent_id, flags) = fields(
        seen.header("traceparent")
            .expect("traceparent sent upstream"),
    );
    assert_eq!(trace_id, TRACE_ID);
    assert_ne!(
        parent_id, "00f067aa0ba902b7",
        "the proxy's span is a child, not the client's span"
    );
    assert_eq!(flags, "01");
    assert_eq!(seen.header_all("traceparent").len(), 1);
    assert_eq!(
        seen.header("tracestate"),
        Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    );
}

/// Without a `traceparent` the proxy starts a trace: every request gets
/// its own trace id.
#[tokio::test]
async fn traceparent_is_generated_when_absent() {
    let (proxy, backend) = echo_proxy().await;
    proxy.get("/").await;
    let (first, _, flags) = fields(
        backend
            .last_request()
            .header("traceparent")
            .expect("traceparent sent upstream"),
    );
    proxy.get("/").await;
    let (second, _, _) = fields(
        backend
            .last_request()
            .header("traceparent")
            .expect("traceparent sent upstream"),
    );
    assert_ne!(first, second);
    assert_eq!(flags, "01", "a trace the proxy starts is sampled");
}

/// An invalid `traceparent` is replaced by a new trace (never passed on),
/// and the `tracestate` that came with it is dropped.
#[tokio::test]
async fn invalid_traceparent_is_replaced() {
    let (proxy, backend) = echo_proxy().await;
    let invalid = [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "not a traceparent",
    ];
    for value in invalid {
        proxy
            .get_with(
                "/",
                &[("traceparent", value), ("tracestate", "congo=t61rcWkgMzE")],
            )
            .await;
        let seen = backend.last_request();
        let sent = seen
            .header("traceparent")
            .expect("traceparent sent upstream");
        let (trace_id, _, _) = fields(sent);
        assert_ne!(trace_id, TRACE_ID, "{value:?} was passed on as {sent:?}");
        assert_eq!(
            seen.header("tracestate"),
            None,
            "tracestate kept with {value:?}"
        );
    }
}

/// The proxy's JSON error bodies carry the trace id, whether the client
/// sent the trace or the proxy started it, next to the other fields.
#[tokio::test]
async fn error_bodies_carry_the_trace_id() {
    let dead = dead_url().await;
    let proxy = TestProxy::start(&routes_file(&[("monolith", &dead)], "")).await;

    let reply = proxy.get_with("/", &[("traceparent", PARENT)]).await;
    assert_eq!(reply.status, 502);
    let body = reply.json();
    assert_eq!(body["trace_id"], TRACE_ID);
    assert_eq!(body["error"], "upstream_unavailable");
    assert_eq!(body["route"], "default");
    assert_eq!(body["request_id"].as_str(), reply.header("x-request-id"));

    let reply = proxy.get("/").await;
    let generated = reply.json()["trace_id"]
        .as_str()
        .expect("trace_id is a string")
        .to_string();
    assert_eq!(generated.len(), 32);
    assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(generated, TRACE_ID);

    // Refused before any route was chosen: the same fields.
    let reply = proxy
        .get_with("/api/orders%2F..%2Fadmin", &[("traceparent", PARENT)])
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["trace_id"], TRACE_ID);
}

/// `Server-Timing` value `proxy;dur=X, upstream;dur=Y`: both in
/// milliseconds with three decimals.
fn assert_timing(value: &str) {
    let entries: Vec<&str> = value.split(", ").collect();
    assert_eq!(entries.len(), 2, "Server-Timing {value:?}");
    for (entry, name) in entries.iter().zip(["proxy", "upstream"]) {
        let duration = entry
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(";dur="))
            .unwrap_or_else(|| panic!("{entry:?} is not {name};dur=..."));
        let (whole, decimals) = duration.split_once('.').expect("a decimal point");
        assert!(
            whole.bytes().all(|b| b.is_ascii_digit()) && !whole.is_empty(),
            "{value:?}"
        );
        assert!(
            decimals.len() == 3 && decimals.bytes().all(|b| b.is_ascii_digit()),
            "{value:?}"
        );
    }
}

/// With `server: { server_timing: true }`, answers from a backend and the
/// proxy's own errors carry `Server-Timing`; a backend's own entries stay.
#[tokio::test]
async fn server_timing_is_sent_when_enabled() {
    let backend =
        FakeBackend::with_headers(Behaviour::Fixed("ok"), &[("server-timing", "db;dur=1.5")]).await;
    let dead = dead_url().await;
    let routes = r#"
  - name: gone
    match: { prefix: "/gone" }
    backend: gone
"#;
    let yaml = format!(
        "server: {{ server_timing: true }}\n{}",
        routes_file(&[("monolith", &backend.url()), ("gone", &dead)], routes)
    );
    let proxy = TestProxy::start(&yaml).await;

    let reply = proxy.get("/").await;
    let values: Vec<&str> = reply
        .headers
        .get_all("server-timing")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        values.len(),
        2,
        "the backend's entry and the proxy's: {values:?}"
    );
    assert_eq!(values[0], "db;dur=1.5");
    assert_timing(values[1]);

    let reply = proxy.get("/gone").await;
    assert_eq!(reply.status, 502);
    assert_timing(
        reply
            .header("server-timing")
            .expect("Server-Timing on an error"),
    );
}

/// By default no `Server-Timing` is added: it would tell any client how
/// long the backends take.
#[tokio::test]
async fn server_timing_is_absent_by_default() {
    let backend = FakeBackend::start("ok").await;
    let proxy = TestProxy::start(&routes_file(&[("monolith", &backend.url())], "")).await;
    let reply = proxy.get("/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("server-timing"), None);
}

/// With `server_timing: { backend_name: true }` the upstream entry names
/// the backend that answered, as a quoted string: the route's backend, or
/// its fallback when that answered instead.
#[tokio::test]
async fn server_timing_names_the_backend_when_asked() {
    let monolith = FakeBackend::start("monolith").await;
    let orders = FakeBackend::start("orders").await;
    let dead = dead_url().await;
    let routes = r#"
  - name: orders
    match: { prefix: "/api/orders" }
    backend: orders-svc
  - name: gone
    match: { prefix: "/gone" }
    backend: gone
    fallback: monolith
"#;
    let yaml = format!(
        "server: {{ server_timing: {{ backend_name: true }} }}\n{}",
        routes_file(
            &[
                ("monolith", &monolith.url()),
                ("orders-svc", &orders.url()),
                ("gone", &dead)
            ],
            routes
        )
    );
    let proxy = TestProxy::start(&yaml).await;

    for (path, backend) in [("/api/orders/1", "orders-svc"), ("/gone/1", "monolith")] {
        let reply = proxy.get(path).await;
        assert_eq!(reply.status, 200, "GET {path}");
        let value = reply.header("server-timing").expect("Server-Timing");
        let suffix = format!(";desc=\"{backend}\"");
        let timing = value
            .strip_suffix(&suffix)
            .unwrap_or_else(|| panic!("{value:?} does not end with {suffix:?}"));
        assert_timing(timing);
    }
}

/// The next JSON line of a child's log; panics when the child has exited.
async fn next_event(
    logs: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) -> serde_json::Value {
    loop {
        let line = logs
            .next_line()
            .await
            .expect("read the log")
            .expect("strangler exited early");
        if let Ok(event) = serde_json::from_str(&line) {
            return event;
        }
    }
}

/// The access log line of a request (target `access`, JSON with
/// `--log-format json`) carries the client's trace id, the proxy's span id
/// (the parent id the backend got) and the route, from the real binary.
#[tokio::test]
async fn access_log_line_carries_the_trace_id_and_route() {
    let backend = FakeBackend::with(Behaviour::Echo).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let (_child, mut logs) = start_binary(dir.path(), &backend.url(), "json");
    let find_listen = async {
        loop {
            let event = next_event(&mut logs).await;
            if event["message"] == "strangler is serving" {
                return event["listen"]
                    .as_str()
                    .expect("listen address")
                    .parse::<std::net::SocketAddr>()
                    .expect("an address");
            }
        }
    };
    let addr = tokio::time::timeout(PATIENCE, find_listen)
        .await
        .expect("strangler starts serving");

    let client = HttpClient::http1(addr);
    let req = client
        .request(http::Method::GET, "/api/orders/42")
        .header("traceparent", PARENT)
        .body(support::empty())
        .expect("request");
    assert_eq!(client.send(req).await.status, 200);
    let (_, proxy_span, _) = fields(
        backend
            .last_request()
            .header("traceparent")
            .expect("traceparent sent upstream"),
    );

    let find_access = async {
        loop {
            let event = next_event(&mut logs).await;
            if event["target"] == "access" {
                return event;
            }
        }
    };
    let access = tokio::time::timeout(PATIENCE, find_access)
        .await
        .expect("an access log line");
    assert_eq!(access["trace_id"], TRACE_ID, "{access}");
    assert_eq!(access["span_id"], proxy_span.as_str(), "{access}");
    assert_eq!(access["route"], "orders-read", "{access}");
    assert_eq!(access["backend"], "monolith", "{access}");
    assert_eq!(access["status"], 200, "{access}");
}

/// Starts the real binary with one route (`/api/orders` to `backend_url`)
/// and the given `--log-format`, at `RUST_LOG=info`; returns it (killed
/// when dropped) and its stderr, line by line.
fn start_binary(
    dir: &std::path::Path,
    backend_url: &str,
    log_format: &str,
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) {
    start_binary_logging(dir, backend_url, log_format, "info")
}

fn start_binary_logging(
    dir: &std::path::Path,
    backend_url: &str,
    log_format: &str,
    rust_log: &str,
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) {
    let routes = r#"
  - name: orders-read
    match: { prefix: "/api/orders" }
    backend: monolith
"#;
    let routes_dir = dir.join("routes");
    std::fs::create_dir(&routes_dir).expect("create routes/");
    std::fs::write(
        routes_dir.join("routes.yaml"),
        routes_file(&[("monolith", backend_url)], routes),
    )
    .expect("write routes.yaml");
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--routes"])
        .arg(&routes_dir)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--log-format", log_format])
        .current_dir(dir)
        .env("RUST_LOG", rust_log)
        .env_remove("STRANGLER_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start strangler run");
    let logs = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    (child, logs)
}

/// In text format, written to a pipe (or a file), log lines carry no ANSI
/// colour codes: they would litter log files and break log pipelines.
#[tokio::test]
async fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let backend = FakeBackend::with(Behaviour::Echo).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let (_child, mut logs) = start_binary(dir.path(), &backend.url(), "text");

    let serving = line_containing(&mut logs, "strangler is serving").await;
    assert!(!serving.contains('\x1b'), "{serving:?}");
    let addr = listen_addr(&serving);

    assert_eq!(
        HttpClient::http1(addr).get("/api/orders/1").await.status,
        200
    );
    let access = line_containing(&mut logs, " access: ").await;
    assert!(!access.contains('\x1b'), "{access:?}");
    assert!(access.contains("route=orders-read"), "{access}");
}

/// `RUST_LOG` decides on access lines as on any target: with
/// `strangler=info` the proxy's own lines are written and the `access`
/// target's are not (the access log has its own writer, not tracing's).
#[tokio::test]
async fn access_lines_obey_rust_log() {
    let backend = FakeBackend::with(Behaviour::Echo).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let (child, mut logs) =
        start_binary_logging(dir.path(), &backend.url(), "text", "strangler=info");
    let serving = line_containing(&mut logs, "strangler is serving").await;
    let addr = listen_addr(&serving);
    assert_eq!(
        HttpClient::http1(addr).get("/api/orders/1").await.status,
        200
    );
    // The access line is written once the idle worker has answered,
    // before it waits for more, so any line of it comes before the reload's.
    let changed = r#"
  - name: orders-renamed
    match: { prefix: "/api/orders" }
    backend: monolith
"#;
    std::fs::write(
        dir.path().join("routes").join("routes.yaml"),
        routes_file(&[("monolith", &backend.url())], changed),
    )
    .expect("rewrite routes.yaml");
    let pid = child.id().expect("the child's pid");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP {pid}");
    let find = async {
        loop {
            let line = logs.next_line().await.expect("read stderr");
            let line = line.expect("strangler is still running");
            assert!(!line.contains(" access: "), "{line}");
            if line.contains("routes reloaded") {
                return;
            }
        }
    };
    tokio::time::timeout(PATIENCE, find)
        .await
        .expect("a reload line");
}

/// The `listen=` address of the text-format "strangler is serving" line.
fn listen_addr(serving: &str) -> std::net::SocketAddr {
    serving
        .split_whitespace()
        .find_map(|field| field.strip_prefix("listen="))
        .expect("the listen address")
        .trim_matches('"')
        .parse()
        .expect("an address")
}

/// The next stderr line that contains `needle`, within `PATIENCE`.
async fn line_containing(
    logs: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    needle: &str,
) -> String {
    let find = async {
        loop {
            let line = logs.next_line().await.expect("read stderr");
            let line = line.expect("strangler is still running");
            if line.contains(needle) {
                return line;
            }
        }
    };
    tokio::time::timeout(PATIENCE, find)
        .await
        .unwrap_or_else(|_| panic!("no log line containing {needle:?}"))
}

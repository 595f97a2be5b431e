//! The `strangler` binary: `check` and `explain` output, and `run`
//! refusing a bad directory and draining on SIGTERM.

#[path = "support/binary.rs"]
mod binary;
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use binary::{serving_addresses, spawn_run};
use support::{eventually, routes_file, Behaviour, FakeBackend, HttpClient, PATIENCE};

const BIN: &str = env!("CARGO_BIN_EXE_strangler");

/// A temporary directory holding a `routes/` directory with `files`.
struct RoutesDir {
    dir: tempfile::TempDir,
}

impl RoutesDir {
    fn new(files: &[(&str, &str)]) -> RoutesDir {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir(dir.path().join("routes")).expect("create routes/");
        for (name, text) in files {
            std::fs::write(dir.path().join("routes").join(name), text).expect("write a route file");
        }
        RoutesDir { dir }
    }

    fn routes(&self) -> PathBuf {
        self.dir.path().join("routes")
    }

    /// A file's name as `check` prints it.
    fn file(&self, name: &str) -> String {
        self.routes().join(name).display().to_string()
    }
}

/// Runs the binary to completion (for commands that do not serve).
fn strangler(args: &[&str], cwd: &Path) -> Output {
    std::process::Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("STRANGLER_ROUTES")
        .env_remove("STRANGLER_LISTEN")
        .env_remove("STRANGLER_ADMIN")
        .output()
        .expect("run the strangler binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("UTF-8 output")
}

/// Asserts that exactly one line of `text` starts with `prefix` and
/// contains `needle`.
fn assert_one_line(text: &str, prefix: &str, needle: &str) {
    let matching: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(needle))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected one line `{prefix}...{needle}...` in:\n{text}"
    );
}

const VALID_BACKENDS: &str = r#"backends:
  monolith: { url: "http://127.0.0.1:3000" }
  orders: { url: "http://127.0.0.1:3001", timeout: 2s }
  checkout-svc: { url: "http://127.0.0.1:3002" }
default: monolith
"#;

const VALID_ROUTES: &str = r#"routes:
  - name: orders-read
    match: { path: "/api/orders/{id}", methods: [GET] }
    backend: orders
    fallback: monolith
  - name: orders-write
    match: { prefix: "/api/orders" }
    backend: monolith
  - name: checkout
    match: { prefix: "/api/checkout" }
    split: { checkout-svc: 5, monolith: 95 }
    sticky: { header: x-user-id }
    fallback: monolith
"#;

/// `check` accepts the example `routes/` shipped with the repository.
#[test]
fn check_accepts_the_shipped_routes_directory() {
    let routes = Path::new(env!("CARGO_MANIFEST_DIR")).join("routes");

    let output = strangler(
        &["check", routes.to_str().unwrap()],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );

    assert!(
        output.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(stdout(&output).contains(": valid ("), "{}", stdout(&output));
}

/// `check` merges a valid directory's files and exits 0, naming what it found.
#[test]
fn check_accepts_a_valid_directory() {
    let dir = RoutesDir::new(&[
        ("backends.yaml", VALID_BACKENDS),
        ("routes.yaml", VALID_ROUTES),
    ]);

    let output = strangler(&["check", dir.routes().to_str().unwrap()], dir.dir.path());

    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{}",
        stdout(&output)
    );
    assert!(
        stdout(&output).contains("valid (3 routes, 3 backends"),
        "{}",
        stdout(&output)
    );
    assert!(!stdout(&output).contains("warning"), "{}", stdout(&output));
}

/// `check` reports an unknown backend (with a suggestion), a duplicate route
/// name, a bad URL and a bad template, each as FILE:LINE:COL at the
/// offending value, and exits 1.
#[test]
fn check_reports_every_error_at_its_position() {
    let text = r#"backends:
  monolith: { url: "http://127.0.0.1:3000" }
  orders: { url: "http://127.0.0.1:3001" }
  broken: { url: "not a url" }
default: monolith
routes:
  - name: orders-read
    match: { path: "/api/orders/{id}" }
    backend: ordrs
  - name: orders-read
    match: { prefix: "/api/other" }
    backend: orders
  - name: bad-template
    match: { path: "/api/items/{id" }
    backend: orders
"#;
    let dir = RoutesDir::new(&[("routes.yaml", text)]);
    let file = dir.file("routes.yaml");

    let output = strangler(&["check", dir.routes().to_str().unwrap()], dir.dir.path());

    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert_one_line(&out, &format!("{file}:4:18: "), "`not a url` is not a URL");
    assert_one_line(
        &out,
        &format!("{file}:9:14: "),
        "unknown backend `ordrs` (did you mean `orders`?)",
    );
    assert_one_line(
        &out,
        &format!("{file}:10:11: "),
        "duplicate route name `orders-read`",
    );
    assert_one_line(
        &out,
        &format!("{file}:14:20: "),
        "bad path template `/api/items/{id`",
    );
    assert_eq!(out.lines().count(), 4, "{out}");
}

/// `check` reports a misspelt key (suggesting the right one) and a value of
/// the wrong type, one per file, at their positions, and exits 1.
#[test]
fn check_reports_unknown_keys_and_wrong_types() {
    let typo = r#"backends:
  monolith: { url: "http://127.0.0.1:3000" }
default: monolith
routes:
  - name: typo
    match: { prefix: "/typo" }
    bakend: monolith
"#;
    let wrong_type = r#"routes:
  - name: wrong-type
    match: { prefix: "/x", methods: GET }
    backend: monolith
"#;
    let dir = RoutesDir::new(&[("a.yaml", typo), ("b.yaml", wrong_type)]);

    let output = strangler(&["check", dir.routes().to_str().unwrap()], dir.dir.path());

    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert_one_line(
        &out,
        &format!("{}:7:5: ", dir.file("a.yaml")),
        "unknown key `bakend` (did you mean `backend`?)",
    );
    assert_one_line(
        &out,
        &format!("{}:3:37: ", dir.file("b.yaml")),
        "invalid type",
    );
}

/// `check` refuses a shadow thread priority outside Linux's nice range.
#[test]
fn check_refuses_an_out_of_range_shadow_nice() {
    let routes = r#"server:
  shadow: { nice: 25 }
backends:
  monolith: { url: "http://127.0.0.1:3000" }
default: monolith
"#;
    let dir = RoutesDir::new(&[("a.yaml", routes)]);

    let output = strangler(&["check", dir.routes().to_str().unwrap()], dir.dir.path());

    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "`nice: 25` is out of range; use `idle`, or 0 (as the client path) to 19 (lowest)"
        ),
        "{out}"
    );
}

/// `check` warns about a route that an identical earlier route shadows, and
/// still exits 0.
#[test]
fn check_warns_about_a_shadowed_route() {
    let routes = r#"routes:
  - name: orders-all
    match: { prefix: "/api/orders" }
    backend: orders
  - name: orders-again
    match: { prefix: "/api/orders" }
    backend: monolith
"#;
    let dir = RoutesDir::new(&[("backends.yaml", VALID_BACKENDS), ("routes.yaml", routes)]);

    let output = strangler(&["check", dir.routes().to_str().unwrap()], dir.dir.path());

    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    let file = dir.file("routes.yaml");
    assert_one_line(
        &out,
        &format!("{file}:5:"),
        &format!("warning: route `orders-again` can never match: route `orders-all` ({file}:2)"),
    );
}

/// `explain` prints the chosen route, and why a more specific candidate was
/// rejected.
#[test]
fn explain_shows_the_chosen_route_and_why_others_lost() {
    let dir = RoutesDir::new(&[
        ("backends.yaml", VALID_BACKENDS),
        ("routes.yaml", VALID_ROUTES),
    ]);
    let routes = dir.routes();

    let output = strangler(
        &[
            "explain",
            "--routes",
            routes.to_str().unwrap(),
            "POST",
            "http://shop.test/api/orders/7",
        ],
        dir.dir.path(),
    );

    let out = stdout(&output);
    assert!(output.status.success(), "{out}{}", stderr(&output));
    assert!(out.contains("route:     orders-write ("), "{out}");
    assert!(
        out.contains("backend:   monolith (http://127.0.0.1:3000"),
        "{out}"
    );
    assert_one_line(&out, "  x orders-read", "(method POST not in GET)");
    assert_one_line(&out, "  * orders-write", "(chosen)");
}

/// `explain` of a split route prints each backend's share and the request's
/// sticky bucket.
#[test]
fn explain_shows_the_split_share() {
    let dir = RoutesDir::new(&[
        ("backends.yaml", VALID_BACKENDS),
        ("routes.yaml", VALID_ROUTES),
    ]);
    let routes = dir.routes();
    let args = [
        "explain",
        "--routes",
        routes.to_str().unwrap(),
        "GET",
        "/api/checkout/cart",
        "-H",
        "x-user-id: 42",
    ];

    let output = strangler(&args, dir.dir.path());
    let again = strangler(&args, dir.dir.path());

    let out = stdout(&output);
    assert!(output.status.success(), "{out}{}", stderr(&output));
    assert!(out.contains("route:     checkout ("), "{out}");
    assert!(
        out.contains(
            "split:     checkout-svc 5%, monolith 95% (sticky; this request is in bucket "
        ),
        "{out}"
    );
    assert!(out.contains("fallback:  monolith"), "{out}");
    // Sticky: the same user lands in the same bucket every time.
    assert_eq!(out, stdout(&again));
}

/// `run` refuses an invalid directory at start: exit 1, each problem printed
/// once as FILE:LINE:COL.
#[tokio::test]
async fn run_refuses_an_invalid_directory() {
    let text = r#"backends:
  monolith: { url: "http://127.0.0.1:3000" }
default: monolith
routes:
  - name: orders
    match: { prefix: "/api/orders" }
    backend: ordrs
"#;
    let dir = RoutesDir::new(&[("routes.yaml", text)]);
    let routes = dir.routes();
    let args = [
        "run",
        "--routes",
        routes.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    let child = tokio::process::Command::new(BIN)
        .args(args)
        .current_dir(dir.dir.path())
        .kill_on_drop(true)
        .output();

    let output = tokio::time::timeout(PATIENCE, child)
        .await
        .expect("run exits at once")
        .expect("run the binary");

    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_one_line(
        &err,
        &format!("{}:7:14: ", dir.file("routes.yaml")),
        "unknown backend `ordrs`",
    );
}

/// SIGTERM makes `run` stop accepting, finish the request in flight with
/// its 200, and exit 0.
#[tokio::test]
async fn run_drains_an_in_flight_request_on_sigterm() {
    let slow = FakeBackend::with(Behaviour::Hold).await;
    let dir = RoutesDir::new(&[(
        "routes.yaml",
        &routes_file(&[("monolith", &slow.url())], ""),
    )]);
    let routes = dir.routes();
    let state = dir.dir.path().join("state");
    let args = [
        "--routes",
        routes.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let mut child = spawn_run(&args, dir.dir.path());
    let (addr, _) = serving_addresses(&mut child).await;

    let client = HttpClient::http1(addr);
    let in_flight = tokio::spawn(async move { client.get("/slow").await });
    eventually("the request reaches the backend", || async {
        slow.hits() == 1
    })
    .await;
    let pid = child.id().expect("the child is running") as libc::pid_t;
    // SAFETY: `kill` only sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "send SIGTERM");
    eventually("the proxy stops accepting connections", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        child.try_wait().expect("child status").is_none(),
        "strangler exited while a request was in flight"
    );
    slow.release();

    let reply = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the request finishes")
        .expect("no panic");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "released");
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("strangler exits")
        .expect("exit status");
    assert!(status.success(), "exit status {status}");
}

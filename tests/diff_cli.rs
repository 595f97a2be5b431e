//! `strangler diff OLD NEW`: the route-level change between two routes
//! directories, printed without serving anything.

use std::path::{Path, PathBuf};
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_strangler");

const BACKENDS: &str = r#"backends:
  monolith: { url: "http://127.0.0.1:3000" }
  orders: { url: "http://127.0.0.1:3001" }
  checkout-svc: { url: "http://127.0.0.1:3002" }
default: monolith
"#;

const OLD_ROUTES: &str = r#"routes:
  - name: orders-read
    match: { path: "/api/orders/{id}", methods: [GET] }
    backend: orders
  - name: legacy-search
    match: { prefix: "/search" }
    backend: monolith
  - name: checkout
    match: { prefix: "/api/checkout" }
    split: { checkout-svc: 5, monolith: 95 }
    sticky: { header: x-user-id }
"#;

/// `legacy-search` removed, `catalog` added, `orders-read` given a
/// fallback (changed, same traffic), the checkout split moved to 25/75.
const NEW_ROUTES: &str = r#"routes:
  - name: orders-read
    match: { path: "/api/orders/{id}", methods: [GET] }
    backend: orders
    fallback: monolith
  - name: checkout
    match: { prefix: "/api/checkout" }
    split: { checkout-svc: 25, monolith: 75 }
    sticky: { header: x-user-id }
  - name: catalog
    match: { prefix: "/api/catalog" }
    backend: orders
"#;

/// Two routes directories, `old/` and `new/`, in one temporary directory.
struct Dirs {
    dir: tempfile::TempDir,
}

impl Dirs {
    fn new(old_routes: &str, new_routes: &str) -> Dirs {
        let dir = tempfile::tempdir().expect("temporary directory");
        for (name, routes) in [("old", old_routes), ("new", new_routes)] {
            let routes_dir = dir.path().join(name);
            std::fs::create_dir(&routes_dir).expect("create a routes directory");
            std::fs::write(routes_dir.join("backends.yaml"), BACKENDS)
                .expect("write backends.yaml");
            std::fs::write(routes_dir.join("routes.yaml"), routes).expect("write routes.yaml");
        }
        Dirs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn strangler(args: &[&Path]) -> Output {
    std::process::Command::new(BIN)
        .args(args)
        .env_remove("STRANGLER_ROUTES")
        .output()
        .expect("run the strangler binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

/// The version `strangler check` reports for `dir`: the one `/api/routes`
/// would show once it is loaded.
fn version_of(dir: &Path) -> String {
    let output = strangler(&[Path::new("check"), dir]);
    let out = stdout(&output);
    assert!(output.status.success(), "{out}");
    let (_, rest) = out
        .split_once("version ")
        .unwrap_or_else(|| panic!("no version in {out}"));
    rest.trim_end().trim_end_matches(')').to_string()
}

/// `diff` prints both versions and the routes added, removed and changed,
/// then one `traffic` line for the split share that moved, and exits 0.
#[test]
fn diff_shows_added_removed_and_changed_routes_and_a_moved_split_share() {
    let dirs = Dirs::new(OLD_ROUTES, NEW_ROUTES);
    let (old, new) = (dirs.path("old"), dirs.path("new"));

    let output = strangler(&[Path::new("diff"), &old, &new]);

    let out = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = out.lines().collect();
    let summary = format!(
        "{} -> {}: 1 added, 1 removed, 2 changed; added: catalog; removed: legacy-search; changed: orders-read, checkout",
        version_of(&old),
        version_of(&new)
    );
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], summary);
    let traffic = lines[1];
    assert!(traffic.starts_with("traffic  checkout: "), "{out}");
    let (before, after) = traffic
        .split_once(" -> ")
        .unwrap_or_else(|| panic!("no `->` in {traffic}"));
    for share in ["checkout-svc 5%", "monolith 95%"] {
        assert!(
            before.contains(share) && !after.contains(share),
            "{traffic}"
        );
    }
    for share in ["checkout-svc 25%", "monolith 75%"] {
        assert!(
            after.contains(share) && !before.contains(share),
            "{traffic}"
        );
    }
}

/// `diff` of a directory against an identical copy reports no change and
/// no traffic line.
#[test]
fn diff_of_identical_directories_reports_no_change() {
    let dirs = Dirs::new(OLD_ROUTES, OLD_ROUTES);
    let version = version_of(&dirs.path("old"));

    let output = strangler(&[Path::new("diff"), &dirs.path("old"), &dirs.path("new")]);

    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        stdout(&output),
        format!("{version} -> {version}: 0 added, 0 removed, 0 changed\n")
    );
}

/// `diff` against a directory that does not compile prints its errors at
/// FILE:LINE:COL and exits 1, so CI can run it on a change under review.
#[test]
fn diff_refuses_an_invalid_directory_with_its_errors() {
    let dirs = Dirs::new(
        OLD_ROUTES,
        &NEW_ROUTES.replace(
            "backend: orders\n    fallback",
            "backend: ordrs\n    fallback",
        ),
    );

    let output = strangler(&[Path::new("diff"), &dirs.path("old"), &dirs.path("new")]);

    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let position = format!("{}:4:14: ", dirs.path("new").join("routes.yaml").display());
    assert!(
        err.lines()
            .any(|l| l.contains(&position) && l.contains("unknown backend `ordrs`")),
        "{err}"
    );
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
}

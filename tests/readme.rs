//! The README's commands, as written: its `sh` blocks are parsed and every
//! `strangler` command in them runs against the real binary, `strangler run`
//! on a copy of the shipped `routes/` (on free ports) with the tour's edit,
//! reload, `diff`, admin URLs and `migrate` calls, then SIGTERM.
//!
//! A command the README gains that this file does not know fails the test,
//! so the tour cannot grow past what CI exercises.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use support::{eventually, HttpClient, PATIENCE};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_strangler");

/// The tour's edit of `routes/routes.yaml`, and what the README says follows.
const SPLIT_BEFORE: &str = "split: { checkout-svc: 5, monolith: 95 }";
const SPLIT_AFTER: &str = "split: { checkout-svc: 25, monolith: 75 }";
const RELOAD_LOG: &str = "routes reloaded: 0 added, 0 removed, 1 changed; changed: checkout";
const DIFF_TRAFFIC: &str = "checkout: checkout-svc 5%, monolith 95% -> checkout-svc 25%,";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).expect("read README.md")
}

// === parsing the README ===

/// The command lines of each ```sh block: comments dropped, `\` continuations joined.
fn sh_blocks(readme: &str) -> Vec<Vec<Vec<String>>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<Vec<String>>> = None;
    let mut pending = String::new();
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), text) => {
                if let Some(head) = text.strip_suffix('\\') {
                    pending.push_str(head);
                    continue;
                }
                pending.push_str(text);
                let words = shell_words(&pending);
                pending.clear();
                if !words.is_empty() {
                    block.push(words);
                }
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Splits a line as `sh` would for the simple lines of a README: words,
/// single and double quotes, and `#` comments.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, '#') if word.is_none() => break,
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// The `strangler` invocations of the README, in order, each cut before a
/// pipe or redirection (`strangler man | man -l -` runs `strangler man`).
fn strangler_commands(readme: &str) -> Vec<Vec<String>> {
    sh_blocks(readme)
        .into_iter()
        .flatten()
        .filter(|words| words[0] == "strangler")
        .map(|words| {
            words
                .into_iter()
                .skip(1)
                .take_while(|w| w != "|" && !w.starts_with('>'))
                .collect()
        })
        .collect()
}

/// The paths (with query) of the admin URLs the README's `curl` lines fetch.
fn admin_paths(readme: &str) -> Vec<String> {
    sh_blocks(readme)
        .into_iter()
        .flatten()
        .filter(|words| words[0] == "curl")
        .flat_map(|words| words.into_iter())
        .filter_map(|word| {
            let rest = word.strip_prefix("127.0.0.1:9090")?;
            Some(rest.to_string())
        })
        .collect()
}

fn subcommand(args: &[String]) -> &str {
    args.first().map(String::as_str).unwrap_or("")
}

// === running the binary ===

async fn strangler(args: &[String], cwd: &Path, admin: Option<SocketAddr>) -> Output {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("STRANGLER_ROUTES")
        .env_remove("STRANGLER_LISTEN")
        .env_remove("STRANGLER_ADMIN")
        .env_remove("STRANGLER_ADMIN_TOKEN")
        .kill_on_drop(true);
    if let Some(admin) = admin {
        command.env("STRANGLER_ADMIN_URL", format!("http://{admin}"));
    }
    tokio::time::timeout(PATIENCE, command.output())
        .await
        .unwrap_or_else(|_| panic!("`strangler {}` did not finish", args.join(" ")))
        .expect("run the strangler binary")
}

fn assert_ran(args: &[String], output: &Output) {
    assert!(
        output.status.success(),
        "`strangler {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !output.stdout.is_empty(),
        "`strangler {}` printed nothing",
        args.join(" ")
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a directory");
    for entry in std::fs::read_dir(from).expect("read a directory") {
        let path = entry.expect("a directory entry").path();
        std::fs::copy(&path, to.join(path.file_name().expect("a file name"))).expect("copy a file");
    }
}

/// `strangler run` as a child process, its log lines on a channel.
struct Running {
    child: tokio::process::Child,
    log: mpsc::UnboundedReceiver<serde_json::Value>,
    admin: SocketAddr,
}

impl Running {
    /// Starts `strangler <args>` in `cwd` on free loopback ports and waits
    /// until `/readyz` answers.
    async fn start(args: &[String], cwd: &Path) -> Running {
        let mut child = tokio::process::Command::new(BIN)
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--state-dir", "state", "--log-format", "json"])
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .env_remove("STRANGLER_ROUTES")
            .env_remove("STRANGLER_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start strangler run");
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let (send, mut log) = mpsc::unbounded_channel();
        // Keeps reading, so the child never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(event) = serde_json::from_str(&line) {
                    let _ = send.send(event);
                }
            }
        });
        let serving = wait_for_log(&mut log, "strangler is serving").await;
        let admin = serving["admin"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("the serving event names the admin address");
        let client = HttpClient::http1(admin);
        eventually("/readyz answers 200", || {
            let client = client.clone();
            async move {
                let req = client
                    .request(http::Method::GET, "/readyz")
                    .body(support::empty())
                    .expect("request");
                matches!(client.try_send(req).await, Ok(r) if r.status == 200)
            }
        })
        .await;
        Running { child, log, admin }
    }

    /// SIGTERM, then the exit status.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("the child is running") as libc::pid_t;
        // SAFETY: `kill` only sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "send SIGTERM");
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("strangler exits after SIGTERM")
            .expect("exit status")
    }
}

/// The first log event whose message starts with `message`.
async fn wait_for_log(
    log: &mut mpsc::UnboundedReceiver<serde_json::Value>,
    message: &str,
) -> serde_json::Value {
    let found = async {
        while let Some(event) = log.recv().await {
            if event["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
            {
                return event;
            }
        }
        panic!("strangler exited before logging `{message}`");
    };
    tokio::time::timeout(PATIENCE, found)
        .await
        .unwrap_or_else(|_| panic!("no `{message}` in the log"))
}

// === tests ===

/// The first code block is the two set-up commands: serve the shipped
/// routes, run the tests.
#[test]
fn setup_commands_come_first() {
    let blocks = sh_blocks(&readme());
    let first: Vec<String> = blocks[0].iter().map(|w| w.join(" ")).collect();
    assert_eq!(first, ["cargo run --release -- run", "cargo test"]);
}

/// The parser reads quotes, comments and continuations as `sh` does.
#[test]
fn shell_words_split_like_sh() {
    assert_eq!(
        shell_words("strangler explain GET /x -H 'x-user-id: 42'   # a comment"),
        ["strangler", "explain", "GET", "/x", "-H", "x-user-id: 42"]
    );
    assert_eq!(
        shell_words("curl -s '127.0.0.1:9090/a?b=1'"),
        ["curl", "-s", "127.0.0.1:9090/a?b=1"]
    );
    assert_eq!(shell_words("a#b \"c d\""), ["a#b", "c d"]);
    assert!(shell_words("   # only a comment").is_empty());
}

/// The commands that need no server (check, explain, schema, completions,
/// man) succeed from the repository root, as the README runs them.
#[tokio::test]
async fn offline_commands_work_as_written() {
    let commands = strangler_commands(&readme());
    let mut ran = Vec::new();
    for args in &commands {
        if matches!(
            subcommand(args),
            "check" | "explain" | "schema" | "completions" | "man"
        ) {
            let output = strangler(args, &repo(), None).await;
            assert_ran(args, &output);
            ran.push(subcommand(args).to_string());
        }
    }
    for expected in ["check", "explain", "completions", "man"] {
        assert!(
            ran.iter().any(|r| r == expected),
            "the README runs no `strangler {expected}`"
        );
    }
}

/// The serving part of the tour: `strangler run` on the shipped routes
/// reloads the README's edit, answers the README's admin URLs, `diff` shows
/// the traffic that moves, every `migrate` call works, and SIGTERM exits 0.
#[tokio::test]
async fn run_tour_works_as_written() {
    let readme = readme();
    // Prose wraps: compare with runs of whitespace made single spaces.
    let prose = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    for claim in [SPLIT_AFTER, RELOAD_LOG, DIFF_TRAFFIC] {
        assert!(prose.contains(claim), "the README no longer says `{claim}`");
    }
    let commands = strangler_commands(&readme);
    let known = [
        "run",
        "diff",
        "migrate",
        "demo",
        "check",
        "explain",
        "schema",
        "completions",
        "man",
    ];
    for args in &commands {
        assert!(
            known.contains(&subcommand(args)),
            "the README runs `strangler {}`, which tests/readme.rs does not exercise: add it",
            args.join(" ")
        );
    }

    let dir = tempfile::tempdir().expect("temporary directory");
    copy_dir(&repo().join("routes"), &dir.path().join("routes"));
    let run = commands
        .iter()
        .find(|args| subcommand(args) == "run")
        .expect("the README runs `strangler run`");
    let mut running = Running::start(run, dir.path()).await;
    let admin = HttpClient::http1(running.admin);

    // `cp -r routes old-routes`, then the edit.
    copy_dir(&dir.path().join("routes"), &dir.path().join("old-routes"));
    let routes_yaml = dir.path().join("routes/routes.yaml");
    let text = std::fs::read_to_string(&routes_yaml).expect("read routes.yaml");
    assert!(
        text.contains(SPLIT_BEFORE),
        "routes.yaml has no `{SPLIT_BEFORE}`"
    );
    let version_before = admin.get("/api/routes").await.json()["version"].clone();
    std::fs::write(&routes_yaml, text.replace(SPLIT_BEFORE, SPLIT_AFTER))
        .expect("edit routes.yaml");
    wait_for_log(&mut running.log, RELOAD_LOG).await;
    let version_after = admin.get("/api/routes").await.json()["version"].clone();
    assert_ne!(
        version_before, version_after,
        "/api/routes shows the new version"
    );

    let paths = admin_paths(&readme);
    assert!(!paths.is_empty(), "the README fetches no admin URL");
    for path in &paths {
        let reply = admin.get(path).await;
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
    }

    let mut ran = Vec::new();
    for args in &commands {
        ran.push(subcommand(args));
        match subcommand(args) {
            "diff" => {
                let output = strangler(args, dir.path(), None).await;
                assert_ran(args, &output);
                let printed = String::from_utf8_lossy(&output.stdout);
                assert!(printed.contains(DIFF_TRAFFIC), "{printed}");
            }
            "migrate" => {
                let output = strangler(args, dir.path(), Some(running.admin)).await;
                assert_ran(args, &output);
            }
            // `demo` runs for minutes; tests/demo.rs runs it with short timings.
            _ => {}
        }
    }
    for expected in ["diff", "migrate"] {
        assert!(
            ran.contains(&expected),
            "the README runs no `strangler {expected}`"
        );
    }

    let status = running.terminate().await;
    assert!(status.success(), "exit status {status}");
}

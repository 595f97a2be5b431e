//! The `strangler run` binary as a child process: where it listens, read
//! from its JSON log. Included with `#[path]` by the tests that run it.

// Each test file uses its own part of this one.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::PATIENCE;

/// Starts `strangler run ARGS` in `cwd`, logging JSON at `info` to a piped
/// stderr (for `serving_addresses`); killed if dropped.
pub fn spawn_run(args: &[&str], cwd: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_strangler"))
        .arg("run")
        .args(args)
        .args(["--log-format", "json"])
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start strangler run")
}

/// The stderr of a child, line by line.
pub type Log = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// The proxy and admin addresses of a child started with `--log-format
/// json` and `RUST_LOG=info` and a piped stderr, from its "strangler is
/// serving" line. The rest of the log is read and dropped, so that the
/// child never blocks on a full pipe.
pub async fn serving_addresses(child: &mut Child) -> (SocketAddr, SocketAddr) {
    let (listen, admin, mut log) = serving_with_log(child).await;
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    (listen, admin)
}

/// As `serving_addresses`, and the rest of the log, for the caller to read
/// (and to keep reading: a full pipe blocks the child).
pub async fn serving_with_log(child: &mut Child) -> (SocketAddr, SocketAddr, Log) {
    let stderr = child.stderr.take().expect("the child's stderr is piped");
    let mut logs = BufReader::new(stderr).lines();
    let serving = async {
        while let Some(line) = logs.next_line().await.expect("read the log") {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["message"] == "strangler is serving" {
                let address = |key: &str| {
                    event[key]
                        .as_str()
                        .and_then(|text| text.parse::<SocketAddr>().ok())
                        .unwrap_or_else(|| panic!("no {key} address in {line}"))
                };
                return (address("listen"), address("admin"));
            }
        }
        panic!("strangler exited before serving");
    };
    let (listen, admin) = tokio::time::timeout(PATIENCE, serving)
        .await
        .expect("strangler starts serving");
    (listen, admin, logs)
}

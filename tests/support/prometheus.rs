//! Test support for the tests against a real Prometheus: the server in a
//! child process, scraping its targets every second, and the queries they
//! ask of it.
//!
//! Needs `prometheus` on `PATH` (Debian's package `prometheus`; CI installs
//! it in `.ci/run`); `prometheus_binary` says so and returns `None` where it
//! is missing. Included with `#[path]` by the test files that need it, so
//! `mod.rs` stays as it is.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::support::{empty, HttpClient};

/// Longest wait for Prometheus to start.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two looks at `/-/ready`.
const START_POLL: Duration = Duration::from_millis(200);

/// The `prometheus` binary on `PATH`; `None`, after printing why the test
/// does nothing, where it is missing.
pub fn prometheus_binary() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("prometheus"))
        .find(|path| path.is_file());
    if found.is_none() {
        eprintln!("SKIPPED: `prometheus` is not on PATH (Debian package `prometheus`; CI installs it in .ci/run)");
    }
    found
}

/// A free loopback port: bound and released at once; nothing else on
/// loopback takes it in between. Prometheus is told its address before it
/// starts, so that route files can name it.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

/// A Prometheus server in a child process, scraping its targets every
/// second; killed when dropped.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    client: HttpClient,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus on `addr`, scraping `targets` every second as job
    /// `job`, evaluating `rule_files` every second, and waits until it is
    /// ready.
    pub async fn start(
        binary: &Path,
        addr: SocketAddr,
        job: &str,
        targets: &[SocketAddr],
        rule_files: &[PathBuf],
    ) -> Prometheus {
        let dir = tempfile::tempdir().expect("temporary directory");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
        if !rule_files.is_empty() {
            config.push_str("rule_files:\n");
            for file in rule_files {
                config.push_str(&format!("  - {}\n", file.display()));
            }
        }
        config.push_str(&format!(
            "scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ));
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("create prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file handle"))
            .stderr(log_file)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            child,
            addr,
            client: HttpClient::http1(addr),
            log,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            let ready = prometheus
                .client
                .request(Method::GET, "/-/ready")
                .body(empty())
                .expect("request");
            if prometheus
                .client
                .try_send(ready)
                .await
                .is_ok_and(|reply| reply.status == 200)
            {
                return prometheus;
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "Prometheus not ready after {START_DEADLINE:?}:\n{}",
                prometheus.log_tail()
            );
            tokio::time::sleep(START_POLL).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// For the API calls `query` does not cover.
    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// Its log, to explain a failure.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `/api/v1/query` at the current time. Panics unless the API says
    /// `success`, which it does only for valid PromQL.
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let reply = self
            .client
            .get(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .await;
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        assert_eq!(
            body["status"], "success",
            "query refused ({}): {promql}\n{body}",
            reply.status
        );
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

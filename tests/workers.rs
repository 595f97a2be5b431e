//! `--workers N`: N threads, each accepting on a socket of its own
//! (`SO_REUSEPORT`) and serving its connections to the end, drained
//! together on SIGTERM; and the limits they share.

#[path = "support/binary.rs"]
mod binary;
mod support;

use std::net::SocketAddr;

use binary::{serving_addresses, spawn_run};
use support::{eventually, routes_file, Behaviour, FakeBackend, HttpClient, TestProxy, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_strangler");
/// Enough connections that each of 3 workers gets some: the kernel hashes
/// each to one of the sockets, and all 60 missing one has odds of 1e-10.
const CLIENTS: usize = 60;

/// A running `strangler run` and the address its proxy listener got.
struct Running {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Starts the binary on `routes` with `--workers workers`, on `listen`.
async fn run(routes: &str, workers: &str, listen: &str) -> Running {
    let dir = tempfile::tempdir().expect("temporary directory");
    let routes_dir = dir.path().join("routes");
    std::fs::create_dir(&routes_dir).expect("create routes/");
    std::fs::write(routes_dir.join("routes.yaml"), routes).expect("write routes.yaml");
    let routes_arg = routes_dir.to_str().expect("a UTF-8 path");
    let args = [
        "--routes",
        routes_arg,
        "--listen",
        listen,
        "--admin",
        "127.0.0.1:0",
    ];
    let mut child = spawn_run(&[&args[..], &["--workers", workers]].concat(), dir.path());
    let (addr, admin) = serving_addresses(&mut child).await;
    Running {
        child,
        addr,
        admin,
        _dir: dir,
    }
}

/// One series of `/metrics`; 0 when absent.
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let reply = HttpClient::http1(admin).get("/metrics").await;
    reply
        .text()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("a metric value"))
}

/// Connections spread over every worker, and on SIGTERM each worker
/// finishes the requests in flight on it before the proxy exits.
#[tokio::test]
async fn every_worker_serves_connections_and_drains_them_on_sigterm() {
    let slow = FakeBackend::with(Behaviour::Hold).await;
    let mut proxy = run(
        &routes_file(&[("monolith", &slow.url())], ""),
        "3",
        "127.0.0.1:0",
    )
    .await;
    // One connection each: the clients are separate, so are their sockets.
    let in_flight: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let client = HttpClient::http1(proxy.addr);
            tokio::spawn(async move { client.get("/slow").await })
        })
        .collect();
    eventually("every request reaches the backend", || async {
        slow.hits() == CLIENTS
    })
    .await;
    let mut total = 0.0;
    for worker in 0..3 {
        let series = format!("strangler_worker_connections_total{{worker=\"{worker}\"}}");
        let accepted = metric(proxy.admin, &series).await;
        assert!(accepted >= 1.0, "worker {worker} accepted no connection");
        total += accepted;
    }
    assert_eq!(total, CLIENTS as f64, "connections accepted by all workers");

    let pid = proxy.child.id().expect("the child is running") as libc::pid_t;
    // SAFETY: `kill` only sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "send SIGTERM");
    eventually("the proxy stops accepting connections", || async {
        TcpStream::connect(proxy.addr).await.is_err()
    })
    .await;
    assert!(
        proxy.child.try_wait().expect("child status").is_none(),
        "strangler exited while requests were in flight"
    );
    slow.release();
    for request in in_flight {
        let reply = tokio::time::timeout(PATIENCE, request)
            .await
            .expect("the request finishes")
            .expect("no panic");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "released");
    }
    let status = tokio::time::timeout(PATIENCE, proxy.child.wait())
        .await
        .expect("strangler exits")
        .expect("exit status");
    assert!(status.success(), "exit status {status}");
}

/// `SO_REUSEPORT` would let a second proxy on the same address take part
/// of the first one's connections in silence; it must fail at start, as
/// with one worker.
#[tokio::test]
async fn a_second_proxy_cannot_take_the_address_of_a_running_one() {
    let backend = FakeBackend::start("monolith").await;
    let routes = routes_file(&[("monolith", &backend.url())], "");
    let first = run(&routes, "2", "127.0.0.1:0").await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let routes_dir = dir.path().join("routes");
    std::fs::create_dir(&routes_dir).expect("create routes/");
    std::fs::write(routes_dir.join("routes.yaml"), &routes).expect("write routes.yaml");
    let listen = first.addr.to_string();
    let second = Command::new(BIN)
        .args([
            "run",
            "--routes",
            routes_dir.to_str().expect("a UTF-8 path"),
        ])
        .args([
            "--listen",
            &listen,
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "2",
        ])
        .current_dir(dir.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("the second proxy exits at once")
        .expect("run the binary");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot bind proxy listener on {listen}")),
        "{err}"
    );
    assert!(err.contains("Address already in use"), "{err}");
    // The first still has every connection.
    for _ in 0..20 {
        assert_eq!(
            HttpClient::http1(first.addr).get("/").await.text(),
            "monolith"
        );
    }
}

/// `max_connections` counts the open connections of every worker, all
/// accepting here on one socket that a library caller bound.
#[tokio::test]
async fn the_connection_limit_counts_the_connections_of_every_worker() {
    let backend = FakeBackend::start("monolith").await;
    let routes = format!(
        "server:\n  max_connections: 4\n{}",
        routes_file(&[("monolith", &backend.url())], "")
    );
    let proxy = TestProxy::start_with_workers(&routes, 3).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(TcpStream::connect(proxy.addr).await.expect("connect"));
    }
    eventually("four connections are open", || async {
        metric(
            proxy.admin_addr,
            "strangler_connections_open{listener=\"proxy\"}",
        )
        .await
            == 4.0
    })
    .await;
    let refused = TcpStream::connect(proxy.addr).await.expect("connect");
    let answer = exchange(refused, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");

    // The open ones are served, whichever worker has them.
    for stream in open {
        let request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        let answer = exchange(stream, request).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("monolith"), "{answer}");
    }
}

/// Writes `request` and reads until the proxy closes the connection.
async fn exchange(mut stream: TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.expect("send a request");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the proxy answers and closes")
        .expect("read the answer");
    String::from_utf8_lossy(&answer).into_owned()
}

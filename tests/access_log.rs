//! The access log of the running binary: one whole line per request, from
//! every worker, though each worker holds its lines and writes them
//! together (`telemetry::access`).

#[path = "support/binary.rs"]
mod binary;
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use binary::{serving_with_log, spawn_run, Log};
use support::{routes_file, Behaviour, FakeBackend, HttpClient, PATIENCE};
use tokio::process::Child;
use tokio::task::JoinHandle;

const CLIENTS: usize = 20;
const REQUESTS_EACH: usize = 10;

/// Reads the log from now on, in a task of its own (a log nobody reads
/// fills its pipe, and the proxy then waits to write): the request ids of
/// the next `count` access lines. Every line of the log read on the way
/// must be one whole JSON object.
fn access_request_ids(mut log: Log, count: usize) -> JoinHandle<BTreeSet<String>> {
    tokio::spawn(async move {
        let mut ids = BTreeSet::new();
        let read = async {
            while ids.len() < count {
                let line = log
                    .next_line()
                    .await
                    .expect("read the log")
                    .expect("strangler is still running");
                let event: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|err| panic!("not one JSON object ({err}): {line:?}"));
                if event["target"] == "access" {
                    assert_eq!(event["status"], 200, "{line}");
                    let id = event["request_id"].as_str().expect("a request id");
                    assert!(ids.insert(id.to_string()), "two lines for {id}");
                }
            }
        };
        if tokio::time::timeout(PATIENCE, read).await.is_err() {
            panic!("{} access lines of {count}", ids.len());
        }
        ids
    })
}

/// `strangler run` with one default route to `backend` and `--workers
/// workers`; the child (killed when dropped), its directory, its address
/// and its log.
async fn start(
    backend: &FakeBackend,
    workers: &str,
) -> (Child, tempfile::TempDir, SocketAddr, Log) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let routes_dir = dir.path().join("routes");
    std::fs::create_dir(&routes_dir).expect("create routes/");
    std::fs::write(
        routes_dir.join("routes.yaml"),
        routes_file(&[("monolith", &backend.url())], ""),
    )
    .expect("write routes.yaml");
    let routes_arg = routes_dir.to_str().expect("a UTF-8 path");
    let args = [
        "--routes",
        routes_arg,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        workers,
    ];
    let mut child = spawn_run(&args, dir.path());
    let (addr, _admin, log) = serving_with_log(&mut child).await;
    (child, dir, addr, log)
}

/// A GET of `/` through `client` carrying `x-request-id: id`.
fn get_with_id(client: &HttpClient, id: &str) -> http::Request<support::TestBody> {
    client
        .request(http::Method::GET, "/")
        .header("x-request-id", id)
        .body(support::empty())
        .expect("request")
}

/// Concurrent keep-alive clients over two workers: each request has its
/// line, whole, with the request id the client sent.
#[tokio::test]
async fn every_request_has_one_whole_line_from_every_worker() {
    let backend = FakeBackend::with(Behaviour::Echo).await;
    let (_child, _dir, addr, log) = start(&backend, "2").await;
    let logged = access_request_ids(log, CLIENTS * REQUESTS_EACH);

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client_index| {
            tokio::spawn(async move {
                let client = HttpClient::http1(addr);
                for request_index in 0..REQUESTS_EACH {
                    let id = format!("client{client_index}-request{request_index}");
                    assert_eq!(
                        client.send(get_with_id(&client, &id)).await.status,
                        200,
                        "{id}"
                    );
                }
            })
        })
        .collect();
    let all_answered = async {
        for client in clients {
            client.await.expect("client task");
        }
    };
    tokio::time::timeout(PATIENCE, all_answered)
        .await
        .expect("every request answered");

    let logged = logged.await.expect("the log reader");
    let sent: BTreeSet<String> = (0..CLIENTS)
        .flat_map(|c| (0..REQUESTS_EACH).map(move |r| format!("client{c}-request{r}")))
        .collect();
    assert_eq!(logged, sent);
}

/// A single request on an idle proxy: its line is written as soon as the
/// worker has nothing left to do, not when more lines have gathered.
#[tokio::test]
async fn a_lone_request_is_logged_without_waiting_for_others() {
    let backend = FakeBackend::with(Behaviour::Echo).await;
    let (_child, _dir, addr, log) = start(&backend, "1").await;
    let logged = access_request_ids(log, 1);

    let client = HttpClient::http1(addr);
    let reply = client.send(get_with_id(&client, "the-only-one")).await;
    assert_eq!(reply.status, 200);
    let logged = logged.await.expect("the log reader");
    assert_eq!(logged, BTreeSet::from(["the-only-one".to_string()]));
}

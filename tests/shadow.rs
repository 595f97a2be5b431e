//! Shadow traffic over real sockets: the client never waits for or sees
//! the candidate, and comparisons tell real differences from noise.

mod support;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{dead_url, eventually, full, Behaviour, FakeBackend, HttpClient, TestProxy};
use tokio::net::TcpListener;

const JSON: (&str, &str) = ("content-type", "application/json");

fn shadow_routes(primary: &str, candidate: &str, shadow_extra: &str) -> String {
    format!(
        "backends:\n  monolith: {{ url: \"{primary}\" }}\n  candidate: {{ url: \"{candidate}\" }}\ndefault: monolith\nroutes:\n  - name: catalog\n    match: {{ prefix: /api/catalog }}\n    backend: monolith\n    shadow:\n      backend: candidate\n{shadow_extra}"
    )
}

async fn counter(admin: SocketAddr, series: &str) -> f64 {
    let text = HttpClient::http1(admin)
        .get("/metrics")
        .await
        .text()
        .to_string();
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn outcome_count(proxy: &TestProxy, outcome: &str) -> f64 {
    counter(
        proxy.admin_addr,
        &format!("strangler_shadow_requests_total{{outcome=\"{outcome}\",route=\"catalog\"}}"),
    )
    .await
}

async fn wait_for_outcome(proxy: &TestProxy, outcome: &str, at_least: f64) {
    eventually(
        &format!("{at_least} shadow outcome(s) `{outcome}`"),
        || async { outcome_count(proxy, outcome).await >= at_least },
    )
    .await;
}

/// The client's answer is complete while the candidate still holds the
/// mirrored request: the shadow never delays the client (nginx's mirror
/// would hold the response until the mirror answered).
#[tokio::test]
async fn the_client_is_answered_before_the_candidate_answers() {
    let monolith = FakeBackend::with_headers(Behaviour::Fixed("{\"a\":1}"), &[JSON]).await;
    let candidate = FakeBackend::with(Behaviour::Hold).await;
    let proxy = TestProxy::start(&shadow_routes(&monolith.url(), &candidate.url(), "")).await;
    let reply = proxy.get("/api/catalog/1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "{\"a\":1}");
    eventually("the mirror reaches the candidate", || async {
        candidate.hits() == 1
    })
    .await;
    assert_eq!(
        outcome_count(&proxy, "mismatch").await + outcome_count(&proxy, "match").await,
        0.0,
        "not compared yet"
    );
    candidate.release();
    wait_for_outcome(&proxy, "mismatch", 1.0).await;
    assert_eq!(
        candidate.last_request().header("x-strangler-shadow"),
        Some("1")
    );
}

/// A dead candidate changes nothing for the client; the outcome is `error`.
#[tokio::test]
async fn a_dead_candidate_changes_no_client_response() {
    let monolith = FakeBackend::with_headers(Behaviour::Fixed("{\"a\":1}"), &[JSON]).await;
    let proxy = TestProxy::start(&shadow_routes(&monolith.url(), &dead_url().await, "")).await;
    for _ in 0..5 {
        let reply = proxy.get("/api/catalog/1").await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "{\"a\":1}"));
    }
    wait_for_outcome(&proxy, "error", 5.0).await;
}

/// Key order and ignored fields are not differences.
#[tokio::test]
async fn key_order_and_ignored_fields_match() {
    let monolith = FakeBackend::with_headers(
        Behaviour::Fixed("{\"a\":1,\"b\":[1,2],\"generated_at\":\"10:00\"}"),
        &[JSON],
    )
    .await;
    let candidate = FakeBackend::with_headers(
        Behaviour::Fixed("{\"generated_at\":\"10:01\",\"b\":[1,2],\"a\":1}"),
        &[JSON],
    )
    .await;
    let extra = "      compare: { ignore: [\"$.generated_at\"] }\n";
    let proxy = TestProxy::start(&shadow_routes(&monolith.url(), &candidate.url(), extra)).await;
    proxy.get("/api/catalog/1").await;
    wait_for_outcome(&proxy, "match", 1.0).await;
    assert_eq!(outcome_count(&proxy, "mismatch").await, 0.0);
}

/// A real difference is reported with its field path, in the diff store
/// and in the field metric.
#[tokio::test]
async fn a_field_difference_is_reported_with_its_path() {
    let monolith = FakeBackend::with_headers(
        Behaviour::Fixed("{\"stock\":{\"qty\":3},\"name\":\"x\"}"),
        &[JSON],
    )
    .await;
    let candidate = FakeBackend::with_headers(
        Behaviour::Fixed("{\"stock\":{\"qty\":4},\"name\":\"x\"}"),
        &[JSON],
    )
    .await;
    let proxy = TestProxy::start(&shadow_routes(&monolith.url(), &candidate.url(), "")).await;
    let client = proxy.client();
    let request = client
        .request(Method::GET, "/api/catalog/1")
        .header("authorization", "Bearer secret-token")
        .body(support::empty())
        .expect("request");
    client.send(request).await;
    wait_for_outcome(&proxy, "mismatch", 1.0).await;
    let diffs = HttpClient::http1(proxy.admin_addr)
        .get("/api/shadow/diffs?route=catalog")
        .await
        .json();
    let diff = &diffs["diffs"][0]["diff"];
    assert_eq!(diff["differences"][0]["path"], "$.stock.qty", "{diffs:#}");
    assert_eq!(diff["differences"][0]["kind"], "changed");
    let headers = diff["request_headers"].to_string();
    assert!(
        !headers.contains("secret-token"),
        "authorization is redacted: {headers}"
    );
    let field = counter(
        proxy.admin_addr,
        "strangler_shadow_field_mismatches_total{field=\"$.stock.qty\",route=\"catalog\"}",
    )
    .await;
    assert_eq!(field, 1.0);
}

/// A backend answering fixed bytes with fixed headers (e.g. a gzip body),
/// or, with `counting`, a JSON body whose `ts` changes on every answer.
async fn bytes_backend(
    body: Vec<u8>,
    headers: Vec<(&'static str, &'static str)>,
    counting: bool,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (body, headers, counter) = (body.clone(), headers.clone(), counter.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let bytes = if counting {
                            format!("{{\"id\":1,\"ts\":{n}}}").into_bytes()
                        } else {
                            body.clone()
                        };
                        let mut response = Response::new(Full::new(Bytes::from(bytes)));
                        for (name, value) in &headers {
                            response
                                .headers_mut()
                                .insert(*name, value.parse().expect("header value"));
                        }
                        async move { Ok::<_, Infallible>(response) }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// A gzip answer is compared decoded: equal content matches the primary's
/// plain JSON.
#[tokio::test]
async fn gzip_answers_are_compared_decoded() {
    let monolith = FakeBackend::with_headers(Behaviour::Fixed("{\"a\":1}"), &[JSON]).await;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(b"{\"a\": 1}").expect("gzip");
    let gzipped = encoder.finish().expect("gzip");
    let (candidate, _) =
        bytes_backend(gzipped, vec![JSON, ("content-encoding", "gzip")], false).await;
    let proxy = TestProxy::start(&shadow_routes(
        &monolith.url(),
        &format!("http://{candidate}"),
        "",
    ))
    .await;
    proxy.get("/api/catalog/1").await;
    wait_for_outcome(&proxy, "match", 1.0).await;
}

/// POST is not mirrored unless the route lists it.
#[tokio::test]
async fn post_is_mirrored_only_when_opted_in() {
    let monolith = FakeBackend::with_headers(Behaviour::Fixed("{\"ok\":true}"), &[JSON]).await;
    let candidate = FakeBackend::with_headers(Behaviour::CountUpload, &[JSON]).await;
    let proxy = TestProxy::start(&shadow_routes(&monolith.url(), &candidate.url(), "")).await;
    let client = proxy.client();
    let post = || {
        client
            .request(Method::POST, "/api/catalog/1")
            .body(full("{\"n\":1}"))
            .expect("request")
    };
    assert_eq!(client.send(post()).await.status, StatusCode::OK);
    proxy.get("/api/catalog/1").await;
    eventually("the GET is mirrored", || async { candidate.hits() == 1 }).await;
    assert_eq!(
        candidate.last_request().method,
        "GET",
        "the POST was not mirrored"
    );

    let opted_in = TestProxy::start(&shadow_routes(
        &monolith.url(),
        &candidate.url(),
        "      methods: [POST]\n",
    ))
    .await;
    let client = opted_in.client();
    let request = client
        .request(Method::POST, "/api/catalog/1")
        .body(full("{\"n\":1}"))
        .expect("request");
    assert_eq!(client.send(request).await.status, StatusCode::OK);
    eventually("the POST is mirrored with its body", || async {
        candidate.uploaded() == 7
    })
    .await;
    assert_eq!(candidate.last_request().method, "POST");
}

/// With a second primary instance, a field that differs between two
/// primary answers (a timestamp) is learned as noise: the candidate's
/// difference there is not a mismatch, and the admin API lists the field.
#[tokio::test]
async fn noise_learning_marks_a_timestamp_as_noise() {
    let (primary, _) = bytes_backend(Vec::new(), vec![JSON], true).await;
    let (secondary, _) = bytes_backend(Vec::new(), vec![JSON], true).await;
    let (candidate, _) = bytes_backend(Vec::new(), vec![JSON], true).await;
    let yaml = format!(
        "backends:\n  monolith: {{ url: \"http://{primary}\" }}\n  monolith-2: {{ url: \"http://{secondary}\" }}\n  candidate: {{ url: \"http://{candidate}\" }}\ndefault: monolith\nroutes:\n  - name: catalog\n    match: {{ prefix: /api/catalog }}\n    backend: monolith\n    shadow: {{ backend: candidate, secondary: monolith-2, learn_noise: true }}\n"
    );
    let proxy = TestProxy::start(&yaml).await;
    // Put the three counters out of step: the secondary one answer ahead,
    // the candidate two.
    HttpClient::http1(secondary).get("/").await;
    for _ in 0..2 {
        HttpClient::http1(candidate).get("/").await;
    }
    proxy.get("/api/catalog/1").await;
    eventually("the timestamp is learned as noise", || async {
        let diffs = HttpClient::http1(proxy.admin_addr)
            .get("/api/shadow/diffs")
            .await
            .json();
        diffs["noise_fields"]["catalog"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "$.ts"))
    })
    .await;
    proxy.get("/api/catalog/1").await;
    wait_for_outcome(&proxy, "match", 1.0).await;
}

/// Past the queue bound, mirrored requests are dropped and counted, never
/// queued without bound; the clients are all answered.
#[tokio::test]
async fn a_full_shadow_queue_drops_and_counts() {
    let monolith = FakeBackend::with_headers(Behaviour::Fixed("{\"a\":1}"), &[JSON]).await;
    let candidate = FakeBackend::with(Behaviour::Hold).await;
    let yaml = format!(
        "server: {{ shadow: {{ queue: 2, concurrency: 1 }} }}\n{}",
        shadow_routes(&monolith.url(), &candidate.url(), "")
    );
    let proxy = TestProxy::start(&yaml).await;
    for _ in 0..10 {
        assert_eq!(proxy.get("/api/catalog/1").await.status, StatusCode::OK);
    }
    // One job runs (held by the candidate), one waits for its slot, two
    // wait in the queue: at least six of ten are dropped.
    let dropped = outcome_count(&proxy, "dropped").await;
    assert!((6.0..=8.0).contains(&dropped), "dropped: {dropped}");
    candidate.release();
    wait_for_outcome(&proxy, "mismatch", 10.0 - dropped).await;
}

/// A mirror that finds the queue full when its request is sent is dropped
/// then, before its primary answers (it makes no copies), and counted once.
#[tokio::test]
async fn a_mirror_is_dropped_before_its_request_is_sent_when_the_queue_is_full() {
    let monolith = FakeBackend::with_headers(Behaviour::Fixed("{\"a\":1}"), &[JSON]).await;
    let slow_monolith = FakeBackend::with(Behaviour::Hold).await;
    let candidate = FakeBackend::with(Behaviour::Hold).await;
    let yaml = format!(
        "server: {{ shadow: {{ queue: 1, concurrency: 1 }} }}\n\
         backends:\n  monolith: {{ url: \"{}\" }}\n  slow: {{ url: \"{}\" }}\n  candidate: {{ url: \"{}\" }}\n\
         default: monolith\nroutes:\n\
         \x20 - name: catalog\n    match: {{ prefix: /api/catalog }}\n    backend: monolith\n    shadow: {{ backend: candidate }}\n\
         \x20 - name: slow\n    match: {{ prefix: /api/slow }}\n    backend: slow\n    shadow: {{ backend: candidate }}\n",
        monolith.url(),
        slow_monolith.url(),
        candidate.url()
    );
    let proxy = TestProxy::start(&yaml).await;
    // The candidate holds every mirror: one runs, one waits for its slot,
    // one fills the queue, and the next finds no room.
    eventually("the shadow queue is full", || async {
        assert_eq!(proxy.get("/api/catalog/1").await.status, StatusCode::OK);
        outcome_count(&proxy, "dropped").await >= 1.0
    })
    .await;
    let dropped_of_slow = || async {
        counter(
            proxy.admin_addr,
            "strangler_shadow_requests_total{outcome=\"dropped\",route=\"slow\"}",
        )
        .await
    };
    let client = HttpClient::http1(proxy.addr);
    let pending = tokio::spawn(async move { client.get("/api/slow/1").await.status });
    eventually(
        "the slow route's mirror is dropped while its primary is held",
        || async { dropped_of_slow().await == 1.0 },
    )
    .await;
    assert!(!pending.is_finished(), "the primary is still held");
    slow_monolith.release();
    assert_eq!(pending.await.expect("request task"), StatusCode::OK);
    assert_eq!(dropped_of_slow().await, 1.0, "counted once");
    candidate.release();
}

/// With `diff_log`, every mismatch is appended to a JSONL file.
#[tokio::test]
async fn mismatches_are_appended_to_the_diff_log() {
    let monolith = FakeBackend::with_headers(Behaviour::Fixed("{\"a\":1,\"b\":2}"), &[JSON]).await;
    let candidate = FakeBackend::with_headers(Behaviour::Fixed("{\"a\":1,\"b\":3}"), &[JSON]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("diffs.jsonl");
    let yaml = format!(
        "server: {{ shadow: {{ diff_log: \"{}\" }} }}\n{}",
        log.display(),
        shadow_routes(&monolith.url(), &candidate.url(), "")
    );
    let proxy = TestProxy::start(&yaml).await;
    proxy.get("/api/catalog/1").await;
    proxy.get("/api/catalog/2").await;
    wait_for_outcome(&proxy, "mismatch", 2.0).await;
    let text = std::fs::read_to_string(&log).expect("diff log written");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["route"], "catalog");
    assert_eq!(lines[0]["diff"]["differences"][0]["path"], "$.b");
}

/// The shadow thread runs below the client path's CPU priority, at the
/// configured nice value (Linux: each thread has its own).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_shadow_thread_runs_at_the_configured_lower_priority() {
    let monolith = FakeBackend::with_headers(Behaviour::Fixed("{\"a\":1}"), &[JSON]).await;
    let candidate = FakeBackend::with_headers(Behaviour::Fixed("{\"a\":1}"), &[JSON]).await;
    let yaml = format!(
        "server: {{ shadow: {{ nice: 7 }} }}\n{}",
        shadow_routes(&monolith.url(), &candidate.url(), "")
    );
    let proxy = TestProxy::start(&yaml).await;
    assert_eq!(proxy.get("/api/catalog/1").await.status, StatusCode::OK);
    // A compared job means the thread has started (and set its priority).
    wait_for_outcome(&proxy, "match", 1.0).await;

    let threads = shadow_threads();
    assert!(
        threads.contains(&(7, SCHED_OTHER)),
        "(nice, policy) of shadow-mirror threads: {threads:?}"
    );
}

/// By default the shadow thread runs under `SCHED_IDLE`: only on CPU that
/// nothing else wants.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_shadow_thread_runs_on_idle_cpu_only_by_default() {
    let monolith = FakeBackend::with_headers(Behaviour::Fixed("{\"a\":1}"), &[JSON]).await;
    let candidate = FakeBackend::with_headers(Behaviour::Fixed("{\"a\":1}"), &[JSON]).await;
    let proxy = TestProxy::start(&shadow_routes(&monolith.url(), &candidate.url(), "")).await;
    assert_eq!(proxy.get("/api/catalog/1").await.status, StatusCode::OK);
    wait_for_outcome(&proxy, "match", 1.0).await;

    let threads = shadow_threads();
    assert!(
        threads.iter().any(|&(_, policy)| policy == SCHED_IDLE),
        "(nice, policy) of shadow-mirror threads: {threads:?}"
    );
}

/// Linux scheduling policies, as `/proc/*/stat` shows them.
#[cfg(target_os = "linux")]
const SCHED_OTHER: i64 = 0;
#[cfg(target_os = "linux")]
const SCHED_IDLE: i64 = 5;

/// The nice value and scheduling policy of every thread of this process
/// named `shadow-mirror` (other tests here run their own).
#[cfg(target_os = "linux")]
fn shadow_threads() -> Vec<(i64, i64)> {
    let tasks = std::fs::read_dir("/proc/self/task").expect("list this process's threads");
    tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.trim() != "shadow-mirror" {
                return None;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the parenthesised name, which may hold spaces;
            // `nice` is field 19 and `policy` field 41 (the 17th and 39th
            // after the name).
            let after_name = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = after_name.split(' ').collect();
            Some((fields.get(16)?.parse().ok()?, fields.get(38)?.parse().ok()?))
        })
        .collect()
}

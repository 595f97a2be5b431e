//! Tests of the mirror's candidate exchange.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::upstream::{Timeouts, UpstreamSettings};

/// A candidate on loopback that answers every request at once.
async fn prompt_candidate() -> std::net::SocketAddr {
    candidate_answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await
}

/// A candidate on loopback that reads requests and never answers.
async fn silent_candidate() -> std::net::SocketAddr {
    candidate_answering(b"").await
}

/// A candidate on loopback that writes `answer` for every read.
async fn candidate_answering(answer: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                while let Ok(n) = stream.read(&mut head).await {
                    if n == 0 || stream.write_all(answer).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// One thread, as the shadow thread has.
fn one_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn job_for(candidate: Arc<Upstream>) -> ShadowJob {
    let (_, primary_body) = oneshot::channel();
    ShadowJob {
        route: "route".into(),
        request_id: "id".into(),
        method: Method::GET,
        path_and_query: "/".into(),
        headers: HeaderMap::new(),
        body: RequestBody::Empty,
        candidate,
        secondary: None,
        rules: Arc::new(CompareRules::default()),
        max_body_bytes: 1024,
        primary: PrimaryAnswer {
            status: 200,
            headers: HeaderMap::new(),
            latency: Duration::ZERO,
            body: primary_body,
        },
    }
}

fn candidate_at(addr: std::net::SocketAddr, response_timeout: Duration) -> Arc<Upstream> {
    let settings = UpstreamSettings {
        url: format!("http://{addr}").parse().expect("url"),
        timeouts: Timeouts {
            response: response_timeout,
            ..Timeouts::default()
        },
        max_idle_connections: 4,
        breaker: Default::default(),
        budget: Default::default(),
        health: None,
        tls: None,
    };
    Upstream::start("candidate".into(), settings, &Metrics::new())
}

/// The shadow thread runs at a low priority: on a busy host it can be kept
/// off the CPU past a mirror's deadline, even before the request is
/// written. That timeout says nothing of the candidate (here it answers at
/// once): no verdict, not an error against its match rate.
#[test]
fn a_timeout_noticed_long_after_its_deadline_is_no_verdict() {
    let runtime = one_thread_runtime();
    let outcome = runtime.block_on(async {
        let candidate = candidate_at(prompt_candidate().await, Duration::from_millis(100));
        let exchange = spawn_exchange(job_for(candidate));
        // Let the exchange start (its deadline is set), then keep this, the
        // only thread, busy past the deadline: the thread preempted.
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(600));
        exchange.await.expect("exchange task")
    });
    assert_eq!(outcome, Err(Outcome::Skipped));
}

/// The same candidate on a thread that runs answers as usual.
#[test]
fn a_mirror_on_a_running_thread_gets_its_answer() {
    let runtime = one_thread_runtime();
    let outcome = runtime.block_on(async {
        let candidate = candidate_at(prompt_candidate().await, Duration::from_secs(10));
        spawn_exchange(job_for(candidate))
            .await
            .expect("exchange task")
    });
    assert_eq!(outcome, Ok((200, Bytes::from_static(b"ok"))));
}

/// A stall that ends before the mirror's deadline, which then fires on
/// time: the request may have waited out the stall unwritten, so the
/// timeout is no verdict either.
#[test]
fn a_timeout_after_a_stall_is_no_verdict() {
    let runtime = one_thread_runtime();
    let outcome = runtime.block_on(async {
        let candidate = candidate_at(silent_candidate().await, STALL * 5);
        let exchange = spawn_exchange(job_for(candidate));
        tokio::task::yield_now().await;
        std::thread::sleep(STALL * 3);
        exchange.await.expect("exchange task")
    });
    assert_eq!(outcome, Err(Outcome::Skipped));
}

/// A candidate that never answers, on a thread that runs: an error. (A
/// loaded test machine may itself stall this thread; then, and only then,
/// the timeout is rightly skipped.)
#[test]
fn a_timeout_on_a_running_thread_is_an_error() {
    let runtime = one_thread_runtime();
    let (outcome, stalled) = runtime.block_on(async {
        let candidate = candidate_at(silent_candidate().await, STALL * 5);
        let (stalls, _ticking) = StallWatch::start();
        let since = Instant::now();
        let outcome = exchange(job_for(candidate), stalls.clone()).await;
        (outcome, stalls.stalled_since(since))
    });
    let expected = if stalled {
        Outcome::Skipped
    } else {
        Outcome::Error
    };
    assert_eq!(outcome, Err(expected));
}

/// Sends `job`'s mirror in a task of its own, with a stall watch on this
/// runtime, as the dispatcher does.
fn spawn_exchange(job: ShadowJob) -> tokio::task::JoinHandle<Result<(u16, Bytes), Outcome>> {
    let (stalls, ticking) = StallWatch::start();
    tokio::spawn(async move {
        let _ticking = ticking;
        exchange(job, stalls).await
    })
}

async fn exchange(job: ShadowJob, stalls: Arc<StallWatch>) -> Result<(u16, Bytes), Outcome> {
    let in_flight = stalls.in_flight();
    send(&job.candidate, &job, Bytes::new(), 1024, in_flight.watch())
        .await
        .map(|(status, _, body)| (status, body))
}

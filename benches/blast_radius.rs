//! Blast radius of a bad deploy: how many requests a bad new service gets
//! before the gate rolls it back, for several failure profiles.
//!
//! Not a timing bench: it counts requests. Run with
//! `cargo bench --bench blast_radius`; it prints a markdown table.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A service failing `failures_in_100` of every 100 requests (spread out),
/// adding `delay` to each answer.
async fn service(failures_in_100: usize, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        // Bresenham-like spreading: failure when the running share drops behind.
                        let fails = (n + 1) * failures_in_100 / 100 > n * failures_in_100 / 100;
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let mut response =
                                Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                            *response.status_mut() = if fails {
                                StatusCode::INTERNAL_SERVER_ERROR
                            } else {
                                StatusCode::OK
                            };
                            Ok::<_, Infallible>(response)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

struct Outcome {
    requests: usize,
    new_hits: usize,
    new_failures_seen: usize,
    status: String,
}

async fn run_profile(failures_in_100: usize, delay: Duration) -> Outcome {
    let (monolith, _) = service(0, Duration::from_millis(1)).await;
    let (new, new_hits) = service(failures_in_100, delay).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = dir.path().join("routes");
    std::fs::create_dir(&routes).expect("routes dir");
    std::fs::write(
        routes.join("routes.yaml"),
        format!(
            "backends:\n  monolith: {{ url: \"http://{monolith}\" }}\n  new: {{ url: \"http://{new}\", circuit: {{ consecutive_failures: 0 }} }}\ndefault: monolith\nroutes:\n  - name: r\n    match: {{ prefix: / }}\n    migration:\n      from: monolith\n      to: new\n      stages: [5%, 25%, 50%, 100%]\n      sticky: {{ header: x-user-id }}\n      gate: {{ window: 30s, interval: 250ms, min_requests: 50, promote_after: 3 }}\n"
        ),
    )
    .expect("write routes");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (addr, admin_addr) = (
        listener.local_addr().expect("addr"),
        admin.local_addr().expect("addr"),
    );
    let config = strangler::RunConfig {
        routes_dir: routes,
        state_dir: dir.path().join("state"),
        watch: false,
        workers: 1,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(strangler::run(listener, admin, config, async move {
        let _ = stopped.await;
    }));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut requests = 0;
    let mut status = String::from("running");
    let mut new_failures_seen = 0;
    // Bounded: at most 40,000 requests per profile.
    while requests < 40_000 {
        let uri = format!("http://{addr}/x");
        let request = Request::get(uri)
            .header("x-user-id", (requests % 1000).to_string())
            .body(Empty::new())
            .expect("request");
        if let Ok(response) = client.request(request).await {
            if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
                new_failures_seen += 1;
            }
            let _ = response.into_body().collect().await;
        }
        requests += 1;
        if requests % 25 == 0 {
            let request = Request::get(format!("http://{admin_addr}/api/migrations"))
                .body(Empty::new())
                .expect("request");
            if let Ok(response) = client.request(request).await {
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let views: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                status = views[0]["status"].as_str().unwrap_or("?").to_string();
                if status != "running" {
                    break;
                }
            }
        }
    }
    let _ = stop.send(());
    let _ = task.await;
    Outcome {
        requests,
        new_hits: new_hits.load(Ordering::SeqCst),
        new_failures_seen,
        status,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("| bad service | outcome | requests sent | reached the new service | failed answers seen by clients |");
    println!("|---|---|---:|---:|---:|");
    for (label, failures, delay) in [
        ("100% errors", 100, Duration::ZERO),
        ("30% errors", 30, Duration::ZERO),
        ("10% errors", 10, Duration::ZERO),
        ("3% errors", 3, Duration::ZERO),
        ("healthy (control)", 0, Duration::ZERO),
        ("10x slower (10 ms vs 1 ms)", 0, Duration::from_millis(10)),
    ] {
        let outcome = runtime.block_on(run_profile(failures, delay));
        println!(
            "| {label} | {} | {} | {} | {} |",
            outcome.status, outcome.requests, outcome.new_hits, outcome.new_failures_seen
        );
    }
}

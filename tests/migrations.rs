//! Gated migrations end to end: the gate promotes a healthy service,
//! rolls back a failing one, holds on thin evidence, obeys people, and
//! keeps its stage across reloads and restarts.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::{empty, HttpClient};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A service answering JSON; every `fail_every`-th… request (by count) in
/// each ten fails with 500 when `failures_in_ten` > 0.
struct Service {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn service(failures_in_ten: usize) -> Service {
    service_with(failures_in_ten, Failure::Status, Duration::ZERO).await
}

/// How a failing answer fails.
#[derive(Clone, Copy)]
enum Failure {
    /// 500.
    Status,
    /// 200 with `{"status":"failed"}`.
    Body,
}

async fn service_with(failures_in_ten: usize, failure: Failure, delay: Duration) -> Service {
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
                        let fails = n % 10 < failures_in_ten;
                        let (status, body): (u16, &'static [u8]) = match (fails, failure) {
                            (true, Failure::Status) => (500, b"{\"id\":7,\"total\":12.5}"),
                            (true, Failure::Body) => (200, b"{\"id\":7,\"status\":\"failed\"}"),
                            (false, _) => (200, b"{\"id\":7,\"total\":12.5}"),
                        };
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let mut response = Response::new(Full::new(Bytes::from_static(body)));
                            *response.status_mut() = StatusCode::from_u16(status).expect("status");
                            response
                                .headers_mut()
                                .insert("content-type", "application/json".parse().expect("value"));
                            Ok::<_, Infallible>(response)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Service { addr, hits }
}

fn routes(monolith: &Service, new: &Service, stages: &str, min_requests: u32) -> String {
    format!(
        "backends:\n  monolith: {{ url: \"http://{}\" }}\n  new-svc: {{ url: \"http://{}\", circuit: {{ consecutive_failures: 0 }} }}\ndefault: monolith\nroutes:\n  - name: orders\n    match: {{ prefix: /api/orders }}\n    migration:\n      from: monolith\n      to: new-svc\n      stages: {stages}\n      sticky: {{ header: x-user-id }}\n      gate: {{ window: 3s, interval: 100ms, min_requests: {min_requests}, promote_after: 2, max_error_rate_increase: 2%, max_error_rate: 20%, min_match_rate: 95% }}\n",
        monolith.addr, new.addr
    )
}

/// A proxy run on a given routes and state directory, so a test can restart it.
struct Proxy {
    addr: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), strangler::RunError>>,
}

impl Proxy {
    async fn start(routes_dir: &Path, state_dir: &Path) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (addr, admin) = (
            listener.local_addr().expect("addr"),
            admin_listener.local_addr().expect("addr"),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let config = strangler::RunConfig {
            routes_dir: routes_dir.into(),
            state_dir: state_dir.into(),
            watch: false,
            workers: 1,
        };
        let task = tokio::spawn(strangler::run(
            listener,
            admin_listener,
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        let proxy = Proxy {
            addr,
            admin,
            stop: Some(stop),
            task,
        };
        support::eventually("the admin API answers", || async {
            let client = HttpClient::http1(admin);
            let request = client
                .request(Method::GET, "/readyz")
                .body(empty())
                .expect("request");
            client.try_send(request).await.is_ok()
        })
        .await;
        proxy
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.task).await;
    }

    async fn migration(&self) -> Value {
        let reply = HttpClient::http1(self.admin).get("/api/migrations").await;
        reply.json()[0].clone()
    }

    async fn command(&self, action: &str) -> Value {
        let client = HttpClient::http1(self.admin);
        let request = client
            .request(Method::POST, &format!("/api/migrations/orders/{action}"))
            .body(empty())
            .expect("request");
        let reply = client.send(request).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }

    /// Sends traffic from rotating users until `done` holds on the
    /// migration, at most `max_requests`; returns the final view.
    async fn drive_until(&self, max_requests: usize, done: impl Fn(&Value) -> bool) -> Value {
        let client = HttpClient::http1(self.addr);
        for n in 0..max_requests {
            let request = client
                .request(Method::GET, "/api/orders/7")
                .header("x-user-id", (n % 500).to_string())
                .body(empty())
                .expect("request");
            let reply = client.send(request).await;
            assert!(
                reply.status == StatusCode::OK || reply.status == StatusCode::INTERNAL_SERVER_ERROR
            );
            if n % 20 == 0 {
                let view = self.migration().await;
                if done(&view) {
                    return view;
                }
            }
        }
        self.migration().await
    }
}

fn dirs(yaml: &str) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = dir.path().join("routes");
    std::fs::create_dir(&routes).expect("routes dir");
    std::fs::write(routes.join("routes.yaml"), yaml).expect("write routes");
    let state = dir.path().join("state");
    (dir, routes, state)
}

/// A service that answers like the monolith walks from shadow to 100% on
/// its own, promoted by the gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_service_is_promoted_from_shadow_to_completion() {
    let (monolith, new) = (service(0).await, service(0).await);
    let (_dir, routes_dir, state_dir) = dirs(&routes(&monolith, &new, "[shadow, 50%, 100%]", 20));
    let proxy = Proxy::start(&routes_dir, &state_dir).await;
    let view = proxy
        .drive_until(20_000, |v| v["status"] == "completed")
        .await;
    assert_eq!(view["status"], "completed", "{view:#}");
    assert_eq!(view["weight"], 1.0);
    let promotions = view["history"].as_array().map_or(0, |h| {
        h.iter().filter(|d| d["verdict"] == "promote").count()
    });
    assert_eq!(promotions, 2, "shadow -> 50% -> 100%: {view:#}");
    assert!(new.hits.load(Ordering::SeqCst) > 0);
    proxy.stop().await;
}

/// A service failing 30% of requests is rolled back, and then gets no more
/// traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_is_rolled_back_and_receives_no_more_traffic() {
    let (monolith, new) = (service(0).await, service(3).await);
    let (_dir, routes_dir, state_dir) = dirs(&routes(&monolith, &new, "[50%, 100%]", 20));
    let proxy = Proxy::start(&routes_dir, &state_dir).await;
    let view = proxy
        .drive_until(20_000, |v| v["status"] == "rolled_back")
        .await;
    assert_eq!(view["status"], "rolled_back", "{view:#}");
    assert_eq!(view["weight"], 0.0);
    assert_eq!(view["stage"], "50%", "rolled back before the next stage");
    let hits_at_rollback = new.hits.load(Ordering::SeqCst);
    proxy.drive_until(200, |_| false).await;
    assert_eq!(
        new.hits.load(Ordering::SeqCst),
        hits_at_rollback,
        "no traffic after rollback"
    );
    proxy.stop().await;
}

/// Below `min_requests` the gate holds: it neither promotes nor rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_holds_the_stage() {
    let (monolith, new) = (service(0).await, service(0).await);
    let (_dir, routes_dir, state_dir) = dirs(&routes(&monolith, &new, "[50%, 100%]", 100_000));
    let proxy = Proxy::start(&routes_dir, &state_dir).await;
    let view = proxy
        .drive_until(2_000, |v| v["last_evidence"]["verdict"] == "hold")
        .await;
    assert_eq!(view["last_evidence"]["verdict"], "hold", "{view:#}");
    assert_eq!(view["stage"], "50%");
    assert_eq!(view["status"], "running");
    proxy.stop().await;
}

/// People drive a migration: pause freezes it, promote moves it, rollback
/// sends everyone back; the stage survives a restart and a reload that
/// leaves the migration as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_drive_it_and_the_stage_survives_restart_and_reload() {
    let (monolith, new) = (service(0).await, service(0).await);
    let yaml = routes(&monolith, &new, "[shadow, 10%, 50%, 100%]", 100_000);
    let (_dir, routes_dir, state_dir) = dirs(&yaml);
    let proxy = Proxy::start(&routes_dir, &state_dir).await;
    assert_eq!(proxy.command("pause").await["status"], "paused");
    let promoted = proxy.command("promote").await;
    assert_eq!(promoted["stage"], "10%");
    assert_eq!(proxy.command("promote").await["stage"], "50%");
    proxy.stop().await;

    let proxy = Proxy::start(&routes_dir, &state_dir).await;
    let view = proxy.migration().await;
    assert_eq!(view["stage"], "50%", "restored after restart: {view:#}");
    assert_eq!(view["status"], "paused");
    // A reload with the migration unchanged (only a comment added) keeps it.
    std::fs::write(routes_dir.join("routes.yaml"), format!("# edited\n{yaml}")).expect("rewrite");
    let admin = HttpClient::http1(proxy.admin);
    let reload = admin
        .send(
            admin
                .request(Method::POST, "/api/reload")
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(reload.status, StatusCode::OK, "{}", reload.text());
    assert_eq!(proxy.migration().await["stage"], "50%");
    let rolled_back = proxy.command("rollback").await;
    assert_eq!(rolled_back["status"], "rolled_back");
    assert_eq!(rolled_back["weight"], 0.0);
    let metrics = admin.get("/metrics").await.text().to_string();
    assert!(
        metrics.contains("strangler_migration_stage{route=\"orders\"} -1"),
        "{metrics}"
    );
    proxy.stop().await;
}

/// A service answering 200 with `{"status":"failed"}` to 30% of requests
/// is rolled back when the route says that field is a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_reported_in_the_body_roll_back() {
    let (monolith, new) = (
        service(0).await,
        service_with(3, Failure::Body, Duration::ZERO).await,
    );
    let yaml = routes(&monolith, &new, "[50%, 100%]", 20).replace(
        "min_match_rate: 95% }",
        "min_match_rate: 95%, failure_fields: [{ field: \"$.status\", equals: failed }] }",
    );
    let (_dir, routes_dir, state_dir) = dirs(&yaml);
    let proxy = Proxy::start(&routes_dir, &state_dir).await;
    let view = proxy
        .drive_until(20_000, |v| v["status"] != "running")
        .await;
    assert_eq!(view["status"], "rolled_back", "{view:#}");
    let metrics = HttpClient::http1(proxy.admin)
        .get("/metrics")
        .await
        .text()
        .to_string();
    let failures: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("strangler_request_failures_total") && l.contains("new-svc"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(failures > 0.0, "body failures are counted: {metrics}");
    proxy.stop().await;
}

/// A service ten times slower than the monolith is never promoted: the
/// gate rolls it back (or holds), by the p99 ratio and Mann-Whitney test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_much_slower_service_is_not_promoted() {
    let monolith = service(0).await;
    let new = service_with(0, Failure::Status, Duration::from_millis(20)).await;
    let (_dir, routes_dir, state_dir) = dirs(&routes(&monolith, &new, "[50%, 100%]", 20));
    let proxy = Proxy::start(&routes_dir, &state_dir).await;
    let view = proxy.drive_until(3_000, |v| v["status"] != "running").await;
    assert_ne!(view["status"], "completed", "{view:#}");
    assert_eq!(view["stage"], "50%");
    proxy.stop().await;
}

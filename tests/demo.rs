//! `strangler demo`: with its gate timings shortened, the migration to the
//! faithful service completes and the one to the buggy service rolls back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use strangler::demo::{Demo, DemoConfig, DemoGate};
use strangler::gate::Status;

/// Longest wait for both verdicts. A safety net against a hang, never an
/// assertion on speed: with the gate timings below, an idle machine gets
/// there in about half a minute, and one whose cores are busy elsewhere
/// (two CPU hogs on two cores) took up to 53 s.
const DEADLINE: Duration = Duration::from_secs(180);
/// How often the test looks at `/api/migrations`.
const POLL: Duration = Duration::from_millis(250);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn get_json(client: &HttpClient, admin: SocketAddr, path: &str) -> Value {
    let body = get_text(client, admin, path).await;
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {path}: not JSON: {err}"))
}

async fn get_text(client: &HttpClient, admin: SocketAddr, path: &str) -> String {
    let uri = format!("http://{admin}{path}");
    let response = client
        .get(uri.parse().expect("valid URI"))
        .await
        .unwrap_or_else(|err| panic!("GET {uri}: {err}"));
    assert!(
        response.status().is_success(),
        "GET {uri}: {}",
        response.status()
    );
    let body = response
        .into_body()
        .collect()
        .await
        .expect("admin body")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

fn migration<'v>(migrations: &'v Value, route: &str) -> &'v Value {
    let all = migrations.as_array().expect("/api/migrations is a list");
    all.iter()
        .find(|m| m["route"] == route)
        .unwrap_or_else(|| panic!("no migration `{route}` in {migrations:#}"))
}

fn is_done(migrations: &Value) -> bool {
    let orders = migration(migrations, "orders");
    let billing = migration(migrations, "billing");
    orders["status"] == "completed"
        && orders["stage"] == "100%"
        && billing["status"] == "rolled_back"
}

/// Orders (faithful service) reaches 100% and billing (buggy service) is
/// rolled back, billing's diffs are recorded and the catalog shadow, which
/// ignores `generated_at`, matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_completes_the_good_migration_and_rolls_back_the_bad_one() {
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
    let mut config = DemoConfig::new(loopback, loopback);
    config.gate = DemoGate {
        window: Duration::from_secs(3),
        interval: Duration::from_millis(300),
        min_requests: 10,
        promote_after: 2,
    };
    config.table_every = Some(Duration::from_secs(1));
    let demo = Demo::start(config).await.expect("the demo starts");
    let admin = demo.admin_addr();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    let started = Instant::now();
    let migrations = loop {
        let migrations = get_json(&client, admin, "/api/migrations").await;
        if is_done(&migrations) {
            break migrations;
        }
        if started.elapsed() >= DEADLINE {
            // What the shadows saw tells a slow machine from a wrong verdict.
            let orders = get_json(&client, admin, "/api/shadow/diffs?route=orders").await;
            let outcomes = get_text(&client, admin, "/metrics").await;
            let outcomes: Vec<&str> = outcomes
                .lines()
                .filter(|l| l.starts_with("strangler_shadow_requests_total"))
                .collect();
            panic!(
                "not done after {DEADLINE:?}: {migrations:#}\norders' diffs: {orders:#}\nshadow outcomes: {outcomes:#?}"
            );
        }
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(migration(&migrations, "orders")["weight"], 1.0);
    assert_eq!(migration(&migrations, "billing")["weight"], 0.0);

    let billing = get_json(&client, admin, "/api/shadow/diffs?route=billing").await;
    let billing = billing["diffs"].as_array().expect("diffs is a list");
    assert!(
        !billing.is_empty(),
        "billing's shadow comparisons recorded no mismatch"
    );
    let catalog = get_json(&client, admin, "/api/shadow/diffs?route=catalog").await;
    assert_eq!(
        catalog["diffs"],
        Value::Array(Vec::new()),
        "the catalog shadow should match: {catalog:#}"
    );

    let report = demo.stop().await.expect("the demo reports");
    let orders = report.migration("orders").expect("orders in the report");
    assert_eq!(
        (orders.status, orders.stage.as_str()),
        (Status::Completed, "100%")
    );
    assert_eq!(
        report
            .migration("billing")
            .expect("billing in the report")
            .status,
        Status::RolledBack
    );
    assert!(report.requests_sent > 0);
}

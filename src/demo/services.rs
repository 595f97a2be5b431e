//! The demo's backends: a monolith and two new services, in process, on loopback.
//!
//! All three answer the same JSON APIs. The faithful service writes its
//! objects' keys in another order and its own `generated_at`, which a
//! JSON-aware comparison (with `$.generated_at` ignored) must call a match.
//! The buggy service sends `amount` as a string instead of a number, fails
//! one request in ten with a 500 and is three times slower: the gate must
//! catch it.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::DemoError;

/// Which demo server this is; decides the quirks of its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Monolith,
    /// Same data as the monolith, keys in another order.
    Faithful,
    /// `amount` as a string, 10% 500s, 3× latency.
    Buggy,
}

/// A running demo server. Dropping it stops the server and its connections.
pub(crate) struct DemoServer {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `127.0.0.1:0` and serves `flavor` until the handle is dropped.
pub(crate) async fn start(flavor: Flavor) -> Result<DemoServer, DemoError> {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let bind_error = |source| DemoError::Bind {
        what: flavor.label(),
        addr: loopback,
        source,
    };
    let listener = TcpListener::bind(loopback).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let task = tokio::spawn(serve(listener, flavor));
    Ok(DemoServer { addr, task })
}

impl Flavor {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Flavor::Monolith => "demo monolith",
            Flavor::Faithful => "demo new service",
            Flavor::Buggy => "demo buggy service",
        }
    }

    fn is_new(self) -> bool {
        self != Flavor::Monolith
    }
}

async fn serve(listener: TcpListener, flavor: Flavor) {
    // The connections live in this task's JoinSet, so aborting the task
    // (dropping the handle) closes them too.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or similar: the demo has no better answer
            // than to pause and try again.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn(move |req| async move {
            Ok::<_, Infallible>(answer(flavor, req).await)
        });
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// === answers ===

async fn answer(flavor: Flavor, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let micros = fastrand::u64(2_000..=10_000);
    let micros = if flavor == Flavor::Buggy {
        micros * 3
    } else {
        micros
    };
    tokio::time::sleep(Duration::from_micros(micros)).await;
    if flavor == Flavor::Buggy && fastrand::u8(..10) == 0 {
        return respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":"internal"}"#.into(),
        );
    }
    let path = req.uri().path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let id = || segments.get(2).and_then(|s| s.parse::<u64>().ok());
    let body = match segments[..] {
        ["api", "catalog", _] => id().map(|id| catalog(flavor, id)),
        ["api", "orders", _] => id().map(|id| order(flavor, id)),
        ["api", "billing", _] => id().map(|id| invoice(flavor, id)),
        ["api", "users", _] => id().map(|id| user(flavor, id)),
        ["api", "search"] => Some(search(
            flavor,
            query_param(req.uri().query(), "q").unwrap_or(""),
        )),
        ["healthz"] => Some(r#"{"status":"ok"}"#.into()),
        _ => None,
    };
    match body {
        Some(body) => respond(StatusCode::OK, body),
        None => respond(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.into()),
    }
}

const PRODUCTS: [&str; 8] = [
    "kettle", "teapot", "mug", "grinder", "scale", "filter", "carafe", "spoon",
];
const ORDER_STATES: [&str; 4] = ["placed", "paid", "shipped", "delivered"];

/// A price in euros from a whole number of cents, as the monolith writes it.
fn euros(cents: u64) -> f64 {
    cents as f64 / 100.0
}

fn catalog(flavor: Flavor, id: u64) -> String {
    // The new service writes microseconds, the monolith milliseconds: the
    // field always differs, which is why the route ignores it.
    let now = SystemTime::now();
    let generated_at = if flavor.is_new() {
        humantime::format_rfc3339_micros(now).to_string()
    } else {
        humantime::format_rfc3339_millis(now).to_string()
    };
    object(
        flavor,
        vec![
            ("id", json!(id)),
            ("sku", json!(format!("SKU-{id:05}"))),
            ("name", json!(PRODUCTS[(id % 8) as usize])),
            ("price", json!(euros(499 + id * 37 % 5000))),
            ("currency", json!("EUR")),
            ("in_stock", json!(id % 5 != 0)),
            ("generated_at", json!(generated_at)),
        ],
    )
}

fn order(flavor: Flavor, id: u64) -> String {
    let items: Vec<Value> = (0..1 + id % 3)
        .map(|i| json!({"sku": format!("SKU-{:05}", id + i), "qty": 1 + i, "price": euros(499 + (id + i) * 37 % 5000)}))
        .collect();
    let total: u64 = (0..1 + id % 3)
        .map(|i| (1 + i) * (499 + (id + i) * 37 % 5000))
        .sum();
    object(
        flavor,
        vec![
            ("id", json!(id)),
            ("user", json!(format!("user-{:02}", id % 50))),
            ("status", json!(ORDER_STATES[(id % 4) as usize])),
            ("items", Value::Array(items)),
            ("total", json!(euros(total))),
            ("currency", json!("EUR")),
        ],
    )
}

fn invoice(flavor: Flavor, id: u64) -> String {
    let cents = 1_000 + id * 91 % 20_000;
    // The bug: a string where the monolith has a number. Easy to miss by
    // eye, and every client that does arithmetic on it breaks.
    let amount = if flavor == Flavor::Buggy {
        json!(format!("{:.2}", euros(cents)))
    } else {
        json!(euros(cents))
    };
    object(
        flavor,
        vec![
            ("invoice", json!(format!("INV-{id:06}"))),
            ("order", json!(id)),
            ("amount", amount),
            ("currency", json!("EUR")),
            ("status", json!(if id % 7 == 0 { "open" } else { "paid" })),
        ],
    )
}

fn user(flavor: Flavor, id: u64) -> String {
    object(
        flavor,
        vec![
            ("id", json!(id)),
            ("name", json!(format!("user-{:02}", id % 50))),
            ("tier", json!("standard")),
        ],
    )
}

fn search(flavor: Flavor, query: &str) -> String {
    let seed = query
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let results: Vec<Value> = (0..3)
        .map(|i| {
            let id = (seed + i * 13) % 500;
            json!({"id": id, "name": PRODUCTS[(id % 8) as usize]})
        })
        .collect();
    object(
        flavor,
        vec![
            ("query", json!(query)),
            ("results", Value::Array(results)),
            ("total", json!(3)),
        ],
    )
}

/// A JSON object with its keys in the given order; the new services write
/// them in reverse, which must not count as a difference.
fn object(flavor: Flavor, mut fields: Vec<(&str, Value)>) -> String {
    if flavor.is_new() {
        fields.reverse();
    }
    let members: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("{}:{value}", json!(key)))
        .collect();
    format!("{{{}}}", members.join(","))
}

fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The faithful service differs from the monolith only in key order
    /// and `generated_at`; the buggy one in the type of `amount`.
    #[test]
    fn flavors_differ_only_where_intended() {
        let parse =
            |text: String| serde_json::from_str::<Value>(&text).expect("demo answers are JSON");
        let mut monolith = parse(catalog(Flavor::Monolith, 42));
        let mut faithful = parse(catalog(Flavor::Faithful, 42));
        assert!(catalog(Flavor::Monolith, 42).starts_with(r#"{"id":42,"#));
        assert!(catalog(Flavor::Faithful, 42).starts_with(r#"{"generated_at":"#));
        monolith["generated_at"] = Value::Null;
        faithful["generated_at"] = Value::Null;
        assert_eq!(monolith, faithful);
        assert_eq!(
            parse(order(Flavor::Monolith, 7)),
            parse(order(Flavor::Faithful, 7))
        );
        let buggy = parse(invoice(Flavor::Buggy, 3));
        assert!(buggy["amount"].is_string());
        assert!(parse(invoice(Flavor::Monolith, 3))["amount"].is_number());
    }
}

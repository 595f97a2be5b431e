//! Synthetic traffic: a steady rate of GETs against the proxy, over
//! keep-alive connections, from a few dozen fake users (`x-user-id`).
//!
//! The generator never has more than `MAX_IN_FLIGHT` requests out: when the
//! proxy is slower than the rate, ticks are skipped rather than queued, so
//! a stall never turns into a burst. It stops when told to, dropping what
//! is still in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

const MAX_IN_FLIGHT: usize = 64;
const USERS: u64 = 50;
/// Latencies kept per route between two reads of the table; beyond this
/// they are counted but not kept, so memory stays bounded without a reader.
const MAX_SAMPLES: usize = 4_096;

/// Where the traffic goes, by route, in percent of all requests. Orders get
/// the most: at a 10% stage its new side still needs `min_requests` in one
/// window.
const MIX: [(&str, u32); 5] = [
    ("orders", 45),
    ("billing", 25),
    ("catalog", 12),
    ("search", 12),
    ("default", 6),
];

/// What the generator saw, per route, since the last `take`.
#[derive(Default)]
pub(crate) struct TrafficStats {
    sent: AtomicU64,
    // std Mutex: held for a push or a swap, never across an .await.
    routes: Mutex<HashMap<&'static str, RouteSample>>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct RouteSample {
    pub(crate) requests: u64,
    /// Answers with a 5xx status, or no answer at all.
    pub(crate) failures: u64,
    pub(crate) latencies: Vec<Duration>,
}

impl TrafficStats {
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Everything recorded since the last call, and a fresh start.
    pub(crate) fn take(&self) -> HashMap<&'static str, RouteSample> {
        self.routes
            .lock()
            .map(|mut routes| std::mem::take(&mut *routes))
            .unwrap_or_default()
    }

    fn record(&self, route: &'static str, is_failure: bool, latency: Duration) {
        let Ok(mut routes) = self.routes.lock() else {
            return;
        };
        let sample = routes.entry(route).or_default();
        sample.requests += 1;
        sample.failures += u64::from(is_failure);
        if sample.latencies.len() < MAX_SAMPLES {
            sample.latencies.push(latency);
        }
    }
}

impl RouteSample {
    /// The 99th percentile of the kept latencies.
    pub(crate) fn p99(&self) -> Option<Duration> {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = (sorted.len() as f64 * 0.99).ceil() as usize;
        sorted.get(rank.saturating_sub(1)).copied()
    }
}

/// Sends `rate` requests per second to `proxy` until `stop` turns true.
pub(crate) async fn run(
    proxy: SocketAddr,
    rate: u32,
    stats: Arc<TrafficStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut in_flight = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
        while in_flight.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (route, request) = next_request(proxy);
        let (client, stats) = (client.clone(), stats.clone());
        stats.sent.fetch_add(1, Ordering::Relaxed);
        in_flight.spawn(async move {
            let started = Instant::now();
            let is_failure = match client.request(request).await {
                // Read the whole body, as a real client would, so the
                // connection goes back to the pool.
                Ok(response) => {
                    let is_server_error = response.status().is_server_error();
                    let is_cut_short = response.into_body().collect().await.is_err();
                    is_server_error || is_cut_short
                }
                Err(_) => true,
            };
            stats.record(route, is_failure, started.elapsed());
            drop(slot);
        });
    }
    in_flight.shutdown().await;
}

/// A random request from `MIX`, from a random user.
fn next_request(proxy: SocketAddr) -> (&'static str, Request<Empty<Bytes>>) {
    let total: u32 = MIX.iter().map(|(_, weight)| weight).sum();
    let mut pick = fastrand::u32(..total);
    let route = MIX
        .iter()
        .find(|(_, weight)| {
            let hit = pick < *weight;
            pick = pick.saturating_sub(*weight);
            hit
        })
        .map_or("default", |(route, _)| route);
    let id = fastrand::u64(1..=500);
    let path = match route {
        "orders" => format!("/api/orders/{id}"),
        "billing" => format!("/api/billing/{id}"),
        "catalog" => format!("/api/catalog/{id}"),
        "search" => format!(
            "/api/search?q={}",
            ["kettle", "mug", "tea", "coffee", "scale"][fastrand::usize(..5)]
        ),
        _ => format!("/api/users/{id}"),
    };
    let user = format!("user-{:02}", fastrand::u64(..USERS));
    let mut request = Request::get(format!("http://{proxy}{path}"))
        .body(Empty::new())
        .expect("a loopback address and an ASCII path make a valid URI");
    if let Ok(value) = HeaderValue::from_str(&user) {
        request.headers_mut().insert("x-user-id", value);
    }
    (route, request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_of_a_hundred_is_the_99th() {
        let sample = RouteSample {
            requests: 100,
            failures: 0,
            latencies: (1..=100).rev().map(Duration::from_millis).collect(),
        };
        assert_eq!(sample.p99(), Some(Duration::from_millis(99)));
        assert_eq!(RouteSample::default().p99(), None);
    }
}

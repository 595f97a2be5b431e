//! Reading the proxy the way an operator would: the admin API over HTTP,
//! and the counters of `/metrics` in the Prometheus text format.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::DemoError;
use crate::gate::Status;

/// A client of one admin listener.
#[derive(Clone)]
pub(crate) struct AdminApi {
    addr: SocketAddr,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// The part of a `GET /api/migrations` entry the demo shows.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct MigrationState {
    pub(crate) route: String,
    pub(crate) stage: String,
    pub(crate) status: Status,
    pub(crate) weight: f64,
    /// The checks of the last window the gate judged.
    #[serde(default)]
    pub(crate) last_evidence: Option<EvidenceState>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct EvidenceState {
    pub(crate) checks: Vec<CheckState>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CheckState {
    pub(crate) name: String,
    pub(crate) outcome: String,
    pub(crate) detail: String,
}

impl MigrationState {
    /// The failed checks of the last judged window, as `name: detail`.
    pub(crate) fn failures(&self) -> Vec<String> {
        let checks = self.last_evidence.iter().flat_map(|e| &e.checks);
        checks
            .filter(|c| c.outcome == "fail")
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }
}

impl AdminApi {
    pub(crate) fn new(addr: SocketAddr) -> AdminApi {
        AdminApi {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The body of `GET path`, when the answer is a 200.
    pub(crate) async fn get(&self, path: &str) -> Result<String, DemoError> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| DemoError::Admin {
            path: path.into(),
            source,
        };
        let request = Request::get(format!("http://{}{path}", self.addr))
            .body(Empty::new())
            .map_err(|err| failed(err.into()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| failed(err.into()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| failed(err.into()))?
            .to_bytes();
        if !status.is_success() {
            return Err(failed(format!("status {status}").into()));
        }
        String::from_utf8(body.to_vec()).map_err(|err| failed(err.into()))
    }

    pub(crate) async fn migrations(&self) -> Result<Vec<MigrationState>, DemoError> {
        let path = "/api/migrations";
        let text = self.get(path).await?;
        serde_json::from_str(&text).map_err(|err| DemoError::Admin {
            path: path.into(),
            source: err.into(),
        })
    }

    pub(crate) async fn counters(&self) -> Result<Counters, DemoError> {
        Ok(Counters::parse(&self.get("/metrics").await?))
    }
}

/// The counters the table needs, summed over the labels it does not show.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Counters {
    /// `strangler_requests_total` by (route, backend).
    pub(crate) requests: HashMap<(String, String), f64>,
    /// The 5xx part of `requests`, by route.
    pub(crate) server_errors: HashMap<String, f64>,
    /// `strangler_shadow_requests_total` by (route, outcome).
    pub(crate) shadow: HashMap<(String, String), f64>,
}

impl Counters {
    pub(crate) fn parse(text: &str) -> Counters {
        let mut counters = Counters::default();
        for Sample {
            name,
            labels,
            value,
        } in text.lines().filter_map(sample)
        {
            let label = |key: &str| {
                labels
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or(String::new(), |(_, v)| v.to_string())
            };
            match name {
                "strangler_requests_total" => {
                    *counters
                        .requests
                        .entry((label("route"), label("backend")))
                        .or_default() += value;
                    if label("code") == "5xx" {
                        *counters.server_errors.entry(label("route")).or_default() += value;
                    }
                }
                "strangler_shadow_requests_total" => {
                    *counters
                        .shadow
                        .entry((label("route"), label("outcome")))
                        .or_default() += value;
                }
                _ => {}
            }
        }
        counters
    }

    /// What was counted since `earlier` (counters only grow, except across
    /// a restart, which the demo never does).
    pub(crate) fn since(&self, earlier: &Counters) -> Counters {
        fn minus<K: Clone + Eq + std::hash::Hash>(
            now: &HashMap<K, f64>,
            then: &HashMap<K, f64>,
        ) -> HashMap<K, f64> {
            now.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        (v - then.get(k).copied().unwrap_or(0.0)).max(0.0),
                    )
                })
                .collect()
        }
        Counters {
            requests: minus(&self.requests, &earlier.requests),
            server_errors: minus(&self.server_errors, &earlier.server_errors),
            shadow: minus(&self.shadow, &earlier.shadow),
        }
    }

    pub(crate) fn route_total(&self, route: &str) -> f64 {
        self.requests
            .iter()
            .filter(|((r, _), _)| r == route)
            .map(|(_, v)| v)
            .sum()
    }

    pub(crate) fn on_backend(&self, route: &str, backend: &str) -> f64 {
        self.requests
            .get(&(route.to_string(), backend.to_string()))
            .copied()
            .unwrap_or(0.0)
    }

    pub(crate) fn shadow_outcome(&self, route: &str, outcome: &str) -> f64 {
        self.shadow
            .get(&(route.to_string(), outcome.to_string()))
            .copied()
            .unwrap_or(0.0)
    }
}

/// One sample line of the text format, `name{a="x",b="y"} 12`.
struct Sample<'t> {
    name: &'t str,
    labels: Vec<(&'t str, &'t str)>,
    value: f64,
}

/// Comments, and lines this simple reader does not understand, give `None`.
fn sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, labels)) = series.split_once('{') else {
        return Some(Sample {
            name: series,
            labels: Vec::new(),
            value,
        });
    };
    let labels = labels.strip_suffix('}')?;
    // The demo's label values hold no commas or quotes, so a split is enough.
    let labels = labels
        .split(',')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key, value.trim_matches('"')))
        })
        .collect();
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters are summed over methods and codes, and 5xx counted apart.
    #[test]
    fn parses_request_and_shadow_counters() {
        let text = "# HELP strangler_requests_total x\n\
            strangler_requests_total{backend=\"monolith\",code=\"2xx\",method=\"GET\",route=\"orders\"} 10\n\
            strangler_requests_total{backend=\"monolith\",code=\"5xx\",method=\"GET\",route=\"orders\"} 2\n\
            strangler_requests_total{backend=\"new-svc\",code=\"2xx\",method=\"GET\",route=\"orders\"} 3\n\
            strangler_shadow_requests_total{outcome=\"match\",route=\"catalog\"} 7\n";
        let counters = Counters::parse(text);
        assert_eq!(counters.route_total("orders"), 15.0);
        assert_eq!(counters.on_backend("orders", "new-svc"), 3.0);
        assert_eq!(counters.server_errors.get("orders"), Some(&2.0));
        assert_eq!(counters.shadow_outcome("catalog", "match"), 7.0);
        assert_eq!(counters.since(&counters).route_total("orders"), 0.0);
    }
}

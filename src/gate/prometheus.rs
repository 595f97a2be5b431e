//! Instant queries to a Prometheus server, for business checks and fleet mode.
//!
//! One `GET {url}/api/v1/query?query=…` per number, answered within
//! `QUERY_TIMEOUT`. A query yields one number or nothing: an empty result,
//! or NaN (a ratio over no traffic), is "no data", which the gate treats as
//! inconclusive, never as zero.

use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// Longest wait for one answer. A gate round waits for its slowest query,
/// so a hung Prometheus delays the next round by this much, no more.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// An instant query's answer is one number, or a few series when a check
/// is written wrong; a megabyte is far more than either needs.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Why a query gave no number. The gate shows the message in the check's
/// `detail` and holds.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("`{url}` is not an http:// URL of a Prometheus server")]
    BadUrl { url: String },

    #[error("could not reach Prometheus at `{url}`")]
    Unreachable {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },

    #[error("Prometheus at `{url}` gave no answer within {after:?}")]
    Timeout { url: String, after: Duration },

    #[error("could not read Prometheus' answer")]
    Read {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("Prometheus answered {status} without the query API's JSON")]
    Status { status: StatusCode },

    #[error("Prometheus refused the query ({kind}): {message}")]
    Refused { kind: String, message: String },

    #[error(
        "the query returned {count} series; a check needs one (aggregate it, e.g. with `sum(...)`)"
    )]
    SeveralSeries { count: usize },

    #[error("the query returned a {kind}; a check needs a vector or a scalar")]
    UnexpectedResult { kind: String },
}

/// A pooled HTTP/1.1 client for the query API of any Prometheus server.
/// Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PrometheusApi {
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// `{"status": "success", "data": {...}}` or `{"status": "error", ...}`.
#[derive(Deserialize)]
struct Answer {
    status: String,
    data: Option<AnswerData>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct AnswerData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

// === impl PrometheusApi ===

impl Default for PrometheusApi {
    fn default() -> PrometheusApi {
        PrometheusApi::new()
    }
}

impl PrometheusApi {
    pub fn new() -> PrometheusApi {
        PrometheusApi {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Evaluates `promql` now on the server at `base_url` (a path prefix
    /// such as `/prometheus` is kept). `Ok(None)`: the query returned no
    /// series, or NaN.
    pub async fn query(
        &self,
        base_url: &str,
        promql: &str,
    ) -> Result<Option<f64>, PrometheusError> {
        let url = query_url(base_url, promql)?;
        let request = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|_| PrometheusError::BadUrl {
                url: base_url.into(),
            })?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|source| {
                PrometheusError::Unreachable {
                    url: base_url.into(),
                    source,
                }
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|source| PrometheusError::Read { source })?
                .to_bytes();
            Ok::<_, PrometheusError>((status, body))
        };
        let (status, body) = tokio::time::timeout(QUERY_TIMEOUT, exchange)
            .await
            .map_err(|_| PrometheusError::Timeout {
                url: base_url.into(),
                after: QUERY_TIMEOUT,
            })??;
        parse_answer(status, &body)
    }
}

/// Whether `url` can serve as `prometheus_url`. `config::compile` reports
/// the message at the key.
pub fn check_url(url: &str) -> Result<(), String> {
    match query_url(url, "up") {
        Ok(_) => Ok(()),
        Err(_) if url.starts_with("https://") => Err(format!(
            "`{url}`: only http:// is supported for Prometheus in this version"
        )),
        Err(_) => Err(format!(
            "`{url}` is not an http:// URL (write e.g. `http://prometheus:9090`)"
        )),
    }
}

fn query_url(base_url: &str, promql: &str) -> Result<Uri, PrometheusError> {
    let bad = || PrometheusError::BadUrl {
        url: base_url.into(),
    };
    let base = base_url.trim_end_matches('/');
    let uri: Uri = format!("{base}/api/v1/query?query={}", percent_encode(promql))
        .parse()
        .map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() || base.contains(['?', '#']) {
        return Err(bad());
    }
    Ok(uri)
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so
/// that PromQL's braces, quotes and `+` survive the query string.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The number in an answer of the query API. Prometheus sends its JSON
/// with error statuses too (400 for bad PromQL, 422, 503), so the body
/// is read whatever the status.
fn parse_answer(status: StatusCode, body: &[u8]) -> Result<Option<f64>, PrometheusError> {
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return Err(PrometheusError::Status { status });
    };
    if answer.status != "success" {
        return Err(PrometheusError::Refused {
            kind: answer.error_type.unwrap_or_else(|| "error".into()),
            message: answer.error.unwrap_or_default(),
        });
    }
    let Some(data) = answer.data else {
        return Err(PrometheusError::Status { status });
    };
    let sample = match data.result_type.as_str() {
        // [{"metric": {...}, "value": [1700000000.123, "0.98"]}, ...]
        "vector" => {
            let series = data.result.as_array().map(Vec::as_slice).unwrap_or(&[]);
            match series {
                [] => return Ok(None),
                [one] => one["value"][1].clone(),
                several => {
                    return Err(PrometheusError::SeveralSeries {
                        count: several.len(),
                    })
                }
            }
        }
        // [1700000000.123, "0.98"]
        "scalar" => data.result[1].clone(),
        other => {
            return Err(PrometheusError::UnexpectedResult { kind: other.into() });
        }
    };
    // Values are strings: "0.98", "NaN", "+Inf", "-Inf".
    let value = sample
        .as_str()
        .and_then(|text| match text {
            "+Inf" | "Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            text => text.parse::<f64>().ok(),
        })
        .ok_or_else(|| PrometheusError::UnexpectedResult {
            kind: format!("sample without a number ({sample})"),
        })?;
    Ok((!value.is_nan()).then_some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes the query API answers with, read as one number or none.
    #[test]
    fn answers_are_read_as_one_number_or_none() {
        let ok = StatusCode::OK;
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"0.975"]}]}}"#;
        assert_eq!(parse_answer(ok, vector).unwrap(), Some(0.975));
        let scalar =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"+Inf"]}}"#;
        assert_eq!(parse_answer(ok, scalar).unwrap(), Some(f64::INFINITY));
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_answer(ok, empty).unwrap(), None);
        let nan = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"NaN"]}]}}"#;
        assert_eq!(parse_answer(ok, nan).unwrap(), None);
        let two = br#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}"#;
        assert!(matches!(
            parse_answer(ok, two),
            Err(PrometheusError::SeveralSeries { count: 2 })
        ));
        let refused = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(matches!(
            parse_answer(StatusCode::BAD_REQUEST, refused),
            Err(PrometheusError::Refused { .. })
        ));
        assert!(matches!(
            parse_answer(StatusCode::BAD_GATEWAY, b"<html>"),
            Err(PrometheusError::Status { .. })
        ));
    }

    #[test]
    fn query_urls_keep_a_path_prefix_and_encode_promql() {
        let uri = query_url("http://prom:9090/prometheus/", "sum(rate(x{a=\"b\"}[1m]))").unwrap();
        assert_eq!(
            uri.to_string(),
            "http://prom:9090/prometheus/api/v1/query?query=sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
        assert!(check_url("http://127.0.0.1:9090").is_ok());
        assert!(check_url("https://prom").is_err());
        assert!(check_url("prom:9090").is_err());
    }
}

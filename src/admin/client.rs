//! A small client of the admin API, for `strangler migrate`.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("bad admin URL `{0}`")]
    Url(String),
    #[error("cannot reach the admin API at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("the admin API answered {status}: {body}")]
    Refused { status: StatusCode, body: String },
    #[error("the admin API's answer is not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("reading the admin API's answer failed")]
    Read(#[source] hyper::Error),
}

/// Calls `METHOD base+path`, with the bearer token from
/// `STRANGLER_ADMIN_TOKEN` when set, and parses the JSON answer.
pub async fn call(
    base: &str,
    method: Method,
    path: &str,
) -> Result<serde_json::Value, AdminClientError> {
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let mut request = Request::builder().method(method).uri(&url);
    if let Ok(token) = std::env::var("STRANGLER_ADMIN_TOKEN") {
        if !token.is_empty() {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
    }
    let request = request
        .body(Full::new(Bytes::new()))
        .map_err(|_| AdminClientError::Url(url.clone()))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response =
        client
            .request(request)
            .await
            .map_err(|source| AdminClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(AdminClientError::Read)?
        .to_bytes();
    if !status.is_success() {
        return Err(AdminClientError::Refused {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(AdminClientError::NotJson)
}

/// The migrations as a readable table.
pub fn migrations_table(views: &serde_json::Value) -> String {
    let mut out = format!(
        "{:<20} {:<12} {:<9} {:>7}  {:<28} {}\n",
        "ROUTE", "STATUS", "STAGE", "WEIGHT", "FROM -> TO", "LAST VERDICT"
    );
    let list = views.as_array().map(Vec::as_slice).unwrap_or(&[]);
    let one = [views.clone()];
    let list = if views.is_object() { &one[..] } else { list };
    for view in list {
        let text = |key: &str| view[key].as_str().unwrap_or("-").to_string();
        let verdict = view["last_evidence"]["verdict"].as_str().unwrap_or("-");
        let failing: Vec<String> = view["last_evidence"]["checks"]
            .as_array()
            .map(|checks| {
                checks
                    .iter()
                    .filter(|c| c["outcome"] != "pass")
                    .map(|c| {
                        format!(
                            "{}={}",
                            c["name"].as_str().unwrap_or("?"),
                            c["outcome"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let detail = if failing.is_empty() {
            String::new()
        } else {
            format!(" ({})", failing.join(", "))
        };
        out.push_str(&format!(
            "{:<20} {:<12} {:<9} {:>6.2}%  {:<28} {verdict}{detail}\n",
            text("route"),
            text("status"),
            text("stage"),
            view["weight"].as_f64().unwrap_or(0.0) * 100.0,
            format!("{} -> {}", text("from"), text("to")),
        ));
    }
    out
}

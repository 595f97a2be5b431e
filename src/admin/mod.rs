//! The admin HTTP API and `/metrics`, on their own (loopback) listener.
//!
//! Reads are open; mutating calls require `Authorization: Bearer TOKEN`
//! when `STRANGLER_ADMIN_TOKEN` is set.

pub mod client;
mod routes_json;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{full, ProxyBody};
use crate::gate::{MigrationError, Migrations};
use crate::metrics::Metrics;
use crate::reload::{ReloadOutcome, Reloader};
use crate::shadow::Mirror;

#[derive(Clone)]
pub struct AdminService {
    metrics: Metrics,
    reloader: Arc<Reloader>,
    migrations: Arc<Migrations>,
    mirror: Mirror,
    token: Option<Arc<str>>,
}

impl AdminService {
    pub fn new(
        metrics: Metrics,
        reloader: Arc<Reloader>,
        migrations: Arc<Migrations>,
        mirror: Mirror,
    ) -> Self {
        let token = std::env::var("STRANGLER_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .map(Into::into);
        AdminService {
            metrics,
            reloader,
            migrations,
            mirror,
            token,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path();
        let is_mutation = req.method() == Method::POST;
        if is_mutation && !self.is_authorized(&req) {
            return json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"error": "unauthorized"}),
            );
        }
        match (req.method(), path) {
            (&Method::GET, "/metrics") => text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.encode(),
            ),
            (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
            // A snapshot is always loaded once the listener is up: start
            // refuses an invalid routes directory, and a failed reload keeps
            // the old snapshot.
            (&Method::GET, "/readyz") => text(StatusCode::OK, "text/plain", "ready\n".into()),
            (&Method::GET, "/api/routes") => {
                let snapshot = self.reloader.table().load_full();
                json(
                    StatusCode::OK,
                    &routes_json::describe(&snapshot, &self.reloader.status()),
                )
            }
            (&Method::POST, "/api/reload") => {
                let reloader = self.reloader.clone();
                let outcome =
                    tokio::task::spawn_blocking(move || reloader.reload("admin API")).await;
                match outcome {
                    Ok(outcome @ ReloadOutcome::Failed { .. }) => {
                        json(StatusCode::UNPROCESSABLE_ENTITY, &outcome)
                    }
                    Ok(outcome) => json(StatusCode::OK, &outcome),
                    Err(_) => json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &serde_json::json!({"error": "reload task failed"}),
                    ),
                }
            }
            (&Method::GET, "/api/migrations") => json(StatusCode::OK, &self.migrations.views()),
            (&Method::POST, path) if path.starts_with("/api/migrations/") => {
                let rest = &path["/api/migrations/".len()..];
                let Some((route, action)) = rest.rsplit_once('/') else {
                    return json(
                        StatusCode::NOT_FOUND,
                        &serde_json::json!({"error": "not_found", "path": path}),
                    );
                };
                match self.migrations.command(route, action) {
                    Ok(view) => json(StatusCode::OK, &view),
                    Err(err @ MigrationError::UnknownRoute(_)) => json(
                        StatusCode::NOT_FOUND,
                        &serde_json::json!({"error": err.to_string()}),
                    ),
                    Err(err) => json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": err.to_string()}),
                    ),
                }
            }
            (&Method::GET, "/api/shadow/diffs") => {
                let route = query_param(req.uri().query(), "route");
                let diffs: Vec<serde_json::Value> = self
                    .mirror
                    .store
                    .recent(route.as_deref())
                    .into_iter()
                    .map(|(route, diff)| serde_json::json!({"route": route, "diff": diff}))
                    .collect();
                json(
                    StatusCode::OK,
                    &serde_json::json!({"diffs": diffs, "noise_fields": self.mirror.store.all_noise()}),
                )
            }
            _ => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "not_found", "path": path}),
            ),
        }
    }

    fn is_authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(presented.as_bytes(), token.as_bytes())
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.to_string())
    })
}

/// Compares without an early exit, so response time does not reveal how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (i, byte) in b.iter().enumerate() {
        difference |= usize::from(a.get(i).copied().unwrap_or(0) ^ byte);
    }
    difference == 0
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ProxyBody> {
    let body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
    text(status, "application/json", body + "\n")
}

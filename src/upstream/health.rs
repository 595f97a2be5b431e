//! Active health checks: `GET path` every `interval`; a backend that fails
//! is skipped (its traffic goes to the fallback) until a check passes.

use std::sync::Weak;
use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Limited};

use super::Upstream;
use crate::body::empty;

/// A health answer longer than this is not read to its end (its
/// connection is closed instead of reused).
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthSettings {
    pub path: String,
    pub interval: Duration,
}

/// Runs until the upstream is dropped (a reload replaced it).
pub fn spawn_checks(upstream: Weak<Upstream>, settings: HealthSettings) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(settings.interval);
        loop {
            ticker.tick().await;
            let Some(upstream) = upstream.upgrade() else {
                return;
            };
            let is_healthy = check(&upstream, &settings).await;
            upstream.set_healthy(is_healthy);
        }
    });
}

async fn check(upstream: &Upstream, settings: &HealthSettings) -> bool {
    let Ok(uri) = upstream.uri_for(&settings.path) else {
        return false;
    };
    let Ok(request) = Request::get(uri)
        .header("user-agent", "strangler-health")
        .body(empty())
    else {
        return false;
    };
    let deadline = settings.interval.min(Duration::from_secs(2));
    let exchange = async {
        let response = upstream.pool.send(request).await.ok()?;
        let status = response.status();
        // Read to the end, so that the connection goes back to the pool.
        let _ = Limited::new(response.into_body(), MAX_BODY).collect().await;
        Some(status)
    };
    match tokio::time::timeout(deadline, exchange).await {
        Ok(Some(status)) => status.is_success() || status.is_redirection(),
        _ => false,
    }
}

//! Backends: a pool of keep-alive connections per backend, with its timeouts.
//!
//! An `Upstream` is built when a snapshot is compiled and shared by every
//! later snapshot whose backend definition did not change, so a reload does
//! not drop warm connections.

mod breaker;
mod budget;
mod connect;
mod error;
mod health;
mod pool;
mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use prometheus::{IntCounter, IntGauge};

use crate::body::ProxyBody;
use crate::metrics::Metrics;
use crate::routing::BackendName;

use self::connect::Connector;
use self::pool::Pool;

pub use self::breaker::{BreakerSettings, CircuitBreaker};
pub use self::budget::{BudgetSettings, RetryBudget};
pub use self::error::UpstreamError;
pub use self::health::HealthSettings;
pub use self::pool::UpstreamBody;
pub use self::tls::{UpstreamTls, UpstreamTlsField, UpstreamTlsFiles};

/// Timeouts of one backend, with defaults close to Envoy's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub connect: Duration,
    /// Until the response headers arrive.
    pub response: Duration,
    /// Longest silence while a body streams.
    pub idle: Duration,
    /// How long an unused pooled connection is kept.
    pub pool_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(15),
            idle: Duration::from_secs(60),
            pool_idle: Duration::from_secs(90),
        }
    }
}

/// What defines an upstream; two backends with equal settings share a pool
/// across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamSettings {
    pub url: Uri,
    pub timeouts: Timeouts,
    pub max_idle_connections: usize,
    pub breaker: BreakerSettings,
    pub budget: BudgetSettings,
    pub health: Option<HealthSettings>,
    /// `tls:` of an `https://` backend.
    pub tls: Option<Arc<UpstreamTls>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("`{0}` is not a URL")]
    Invalid(String),
    #[error("backend URL `{0}` needs a scheme and a host, e.g. http://127.0.0.1:3000")]
    Incomplete(String),
    #[error("backend URL `{0}` has scheme `{1}`; use http or https")]
    Scheme(String, String),
}

/// Checks a backend URL.
pub fn parse_url(text: &str) -> Result<Uri, UrlError> {
    let uri: Uri = text.parse().map_err(|_| UrlError::Invalid(text.into()))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| UrlError::Incomplete(text.into()))?;
    if uri.authority().is_none() {
        return Err(UrlError::Incomplete(text.into()));
    }
    if scheme != "http" && scheme != "https" {
        return Err(UrlError::Scheme(text.into(), scheme.into()));
    }
    Ok(uri)
}

fn build_pool(settings: &UpstreamSettings, authority: &Authority, opened: IntCounter) -> Arc<Pool> {
    let tls = settings.tls.as_deref();
    let is_https = settings.url.scheme() == Some(&Scheme::HTTPS);
    let connector = Connector::new(
        &settings.url,
        tls::client_config(tls, is_https),
        tls::server_name(tls),
        settings.timeouts.connect,
        opened,
    );
    let host = HeaderValue::from_str(authority.as_str())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    Pool::start(
        connector,
        host,
        settings.max_idle_connections,
        settings.timeouts.pool_idle,
    )
}

/// A backend's client and where it lives.
pub struct Upstream {
    pub name: BackendName,
    pub settings: UpstreamSettings,
    authority: Authority,
    /// A path in the backend URL (`http://host/base`) is put before every
    /// forwarded path.
    base_path: Box<str>,
    pool: Arc<Pool>,
    /// A pool of its own for mirrored requests: they run on the shadow
    /// thread, and a connection serves requests on the runtime that opened
    /// it, so sharing one pool would put client traffic on that thread.
    mirror_pool: Arc<Pool>,
    pub breaker: CircuitBreaker,
    pub budget: RetryBudget,
    /// False while active health checks fail; always true without them.
    is_healthy: AtomicBool,
    up_gauge: IntGauge,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Upstream({} -> {})", self.name, self.settings.url)
    }
}

impl Upstream {
    /// Builds the client and starts its health checks, if any; must run
    /// inside a tokio runtime. The checks stop when the upstream is dropped.
    pub fn start(
        name: BackendName,
        settings: UpstreamSettings,
        metrics: &Metrics,
    ) -> Arc<Upstream> {
        let upstream = Arc::new(Upstream::new(name, settings, metrics));
        if let Some(health) = upstream.settings.health.clone() {
            health::spawn_checks(Arc::downgrade(&upstream), health);
        }
        upstream
    }

    fn new(name: BackendName, settings: UpstreamSettings, metrics: &Metrics) -> Upstream {
        let url = &settings.url;
        let authority = url
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("invalid"));
        let opened = metrics.upstream_connections.with_label_values(&[&name]);
        let pool = build_pool(&settings, &authority, opened.clone());
        let mirror_pool = build_pool(&settings, &authority, opened);
        let base_path = url.path().trim_end_matches('/').into();
        let up_gauge = metrics.backend_up.with_label_values(&[&name]);
        up_gauge.set(1);
        Upstream {
            breaker: CircuitBreaker::new(
                settings.breaker,
                metrics.circuit_state.with_label_values(&[&name]),
            ),
            budget: RetryBudget::new(settings.budget),
            is_healthy: AtomicBool::new(true),
            up_gauge,
            name,
            authority,
            base_path,
            pool,
            mirror_pool,
            settings,
        }
    }

    /// Whether a request may be sent now: healthy, and the circuit lets it
    /// through (in half-open, this call takes the one probe).
    pub fn admits(&self) -> bool {
        self.is_healthy.load(Ordering::Relaxed) && self.breaker.allow()
    }

    pub fn is_healthy(&self) -> bool {
        self.is_healthy.load(Ordering::Relaxed)
    }

    fn set_healthy(&self, is_healthy: bool) {
        if self.is_healthy.swap(is_healthy, Ordering::Relaxed) != is_healthy {
            tracing::warn!(backend = %self.name, is_healthy, "backend health changed");
        }
        self.up_gauge.set(i64::from(is_healthy));
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.settings.timeouts
    }

    /// The URI of `path_and_query` on this backend, in origin form
    /// (`/path?query`), as requests to it are written.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let full: PathAndQuery = if self.base_path.is_empty() {
            path_and_query.parse()?
        } else {
            format!("{}{}", self.base_path, path_and_query).parse()?
        };
        Ok(Uri::from(full))
    }

    /// Sends a request (`uri_for`) and waits for the response headers, at
    /// most the backend's response timeout.
    /// (Not an `async fn`: a layer of future around `send_on` would be
    /// one more copy of it per request.)
    pub fn send(
        &self,
        req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send + '_ {
        self.send_on(&self.pool, req)
    }

    /// `send` for mirrored requests, on the mirror pool.
    pub fn send_mirror(
        &self,
        req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send + '_ {
        self.send_on(&self.mirror_pool, req)
    }

    async fn send_on(
        &self,
        pool: &Arc<Pool>,
        req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let after = self.settings.timeouts.response;
        match tokio::time::timeout(after, pool.send(req)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(UpstreamError::classify(&self.name, err)),
            Err(_) => Err(UpstreamError::Timeout {
                backend: self.name.clone(),
                after,
            }),
        }
    }
}

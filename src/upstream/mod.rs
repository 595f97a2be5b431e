//! Backends: one pooled HTTP client per backend, with its timeouts.
//!
//! An `Upstream` is built when a snapshot is compiled and shared by every
//! later snapshot whose backend definition did not change, so a reload does
//! not drop warm connections.

mod error;

use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
use crate::routing::BackendName;

pub use self::error::UpstreamError;

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
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("`{0}` is not a URL")]
    Invalid(String),
    #[error("backend URL `{0}` needs a scheme and a host, e.g. http://127.0.0.1:3000")]
    Incomplete(String),
    #[error("backend URL `{0}` has scheme `{1}`; only http is supported here (https arrives with upstream TLS)")]
    Scheme(String, String),
}

/// Checks a backend URL.
pub fn parse_url(text: &str) -> Result<Uri, UrlError> {
    let uri: Uri = text.parse().map_err(|_| UrlError::Invalid(text.into()))?;
    let scheme = uri.scheme_str().ok_or_else(|| UrlError::Incomplete(text.into()))?;
    if uri.authority().is_none() {
        return Err(UrlError::Incomplete(text.into()));
    }
    if scheme != "http" {
        return Err(UrlError::Scheme(text.into(), scheme.into()));
    }
    Ok(uri)
}

/// A backend's client and where it lives.
pub struct Upstream {
    pub name: BackendName,
    pub settings: UpstreamSettings,
    scheme: Scheme,
    authority: Authority,
    /// A path in the backend URL (`http://host/base`) is put before every
    /// forwarded path.
    base_path: Box<str>,
    client: Client<HttpConnector, ProxyBody>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Upstream({} -> {})", self.name, self.settings.url)
    }
}

impl Upstream {
    /// Builds the client; must run inside a tokio runtime.
    pub fn new(name: BackendName, settings: UpstreamSettings) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.timeouts.connect));
        // Small answers should not wait for Nagle's algorithm.
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(settings.timeouts.pool_idle)
            .pool_max_idle_per_host(settings.max_idle_connections)
            .build(connector);
        let url = &settings.url;
        let scheme = url.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = url
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("invalid"));
        let base_path = url.path().trim_end_matches('/').into();
        Upstream {
            name,
            scheme,
            authority,
            base_path,
            client,
            settings,
        }
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.settings.timeouts
    }

    /// The absolute URI of `path_and_query` on this backend.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let full: PathAndQuery = if self.base_path.is_empty() {
            path_and_query.parse()?
        } else {
            format!("{}{}", self.base_path, path_and_query).parse()?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(full)
            .build()
    }

    /// Sends a request whose URI is already absolute (`uri_for`) and waits
    /// for the response headers, at most the backend's response timeout.
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        let after = self.settings.timeouts.response;
        match tokio::time::timeout(after, self.client.request(req)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(UpstreamError::classify(&self.name, err)),
            Err(_) => Err(UpstreamError::Timeout {
                backend: self.name.clone(),
                after,
            }),
        }
    }
}

//! Listener settings compiled from `server:`, with the edge defaults of DESIGN.md.
//!
//! They live in the snapshot, so a reload changes them; the accept loop
//! reads them once per accepted connection, so a change applies to
//! connections accepted after the reload and never to open ones.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::proxy::TrustedProxies;
use crate::telemetry::OtlpSettings;
use crate::tls::Certificates;

/// Everything `server:` sets.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub via: Option<HeaderValue>,
    pub max_body_bytes: Option<u64>,
    pub shutdown_grace: Duration,
    pub limits: ConnLimits,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Certificates of the TLS listener, loaded when the snapshot was built.
    pub tls: Option<Arc<Certificates>>,
    /// How often the certificate and key files are checked for a change.
    pub tls_check_interval: Duration,
    /// Answers carry `Server-Timing` (proxy and upstream time). Off by
    /// default: it shows anyone how long the backends take.
    pub has_server_timing: bool,
    /// `Server-Timing` names the backend that answered (`desc`). Off by
    /// default: it tells any client which service is behind a path.
    pub has_server_timing_backend: bool,
    pub shadow: ShadowSettings,
    /// OTLP export of server spans; read at start, like `shadow`.
    pub tracing: Option<OtlpSettings>,
}

/// Bounds of the shadow pipeline; applied at start (a reload does not
/// resize a running queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowSettings {
    /// A queue of 1,024 means up to 1,024 mirrored requests wait; the next
    /// is dropped and counted as `dropped`.
    pub queue: usize,
    pub concurrency: usize,
    pub diff_log: Option<std::path::PathBuf>,
    /// How much lower than the client path the shadow thread runs.
    pub nice: ShadowNice,
}

/// The shadow thread's CPU priority, below the client path's (Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowNice {
    /// `SCHED_IDLE`: the thread runs only on CPU that nothing else wants,
    /// and gives it up the moment a worker wakes.
    Idle,
    /// A nice value, from 0 (as the client path) to 19: the CPU is shared
    /// by weight, and a worker waking may wait for the end of the shadow
    /// thread's slice.
    Level(u8),
}

impl Default for ShadowSettings {
    fn default() -> Self {
        ShadowSettings {
            queue: 1024,
            concurrency: 64,
            diff_log: None,
            nice: ShadowNice::Idle,
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            via: None,
            max_body_bytes: None,
            shutdown_grace: Duration::from_secs(30),
            limits: ConnLimits::default(),
            trusted_proxies: TrustedProxies::default(),
            tls: None,
            tls_check_interval: Duration::from_secs(10),
            has_server_timing: false,
            has_server_timing_backend: false,
            shadow: ShadowSettings::default(),
            tracing: None,
        }
    }
}

/// Per-connection limits: what a slow or hostile client may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// HTTP/1: a request head must arrive whole within this time of its
    /// first byte (else 408 and close), and a new connection's first byte
    /// within this time of the accept or TLS handshake (else a silent
    /// close). Idle time between requests is `keepalive_timeout`'s. See
    /// `server::head_timeout`.
    pub header_read_timeout: Duration,
    /// Request line plus headers (HTTP/1, held by `server::head_check`), or
    /// the header list (HTTP/2); 431 beyond. At least `MIN_HEADER_BYTES`.
    pub max_header_bytes: usize,
    /// 431 beyond.
    pub max_headers: usize,
    /// Open client connections per listener; past it a new connection gets
    /// a 503 and is closed.
    pub max_connections: usize,
    /// A connection with no bytes in either direction for this long is
    /// closed gracefully (requests in flight finish first).
    pub keepalive_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
}

/// The smallest head limit `compile` accepts: a smaller one would refuse
/// ordinary browsers' requests (cookies), and it was hyper's smallest read
/// buffer when the limit was that buffer.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            keepalive_timeout: Duration::from_secs(60),
            h2_max_concurrent_streams: 100,
        }
    }
}

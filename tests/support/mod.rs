//! Test support: fake monolith and services, and the proxy under test, on loopback.
//!
//! Everything listens on `127.0.0.1:0` and is bound before the constructor
//! returns, so a test can connect at once. Dropping a handle stops its
//! server. Nothing here sleeps to synchronise: `eventually` polls an
//! asynchronous condition against a deadline, and every other wait is on
//! an event (a response, a task's end).

// Each test file uses a different part of this module.
#![allow(dead_code)]

mod backend;
#[allow(unused_imports)] // Not every test file has a fake backend.
pub use backend::*;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version,
};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request the test client sends and every answer a fake gives.
pub type TestBody = BoxBody<Bytes, BoxError>;

/// Longest a test waits for something that should happen at once. A safety
/// net against a hang, never an assertion on speed.
pub const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Bodies

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// `len` bytes of `x`, made 64 KiB at a time as the reader pulls them, so
/// that the sender never holds the whole body.
pub struct RepeatBody {
    remaining: u64,
    /// Without a known length the body goes out chunked.
    exact: bool,
    probe: Option<Arc<RssPeak>>,
}

impl RepeatBody {
    pub fn new(len: u64) -> RepeatBody {
        RepeatBody {
            remaining: len,
            exact: true,
            probe: None,
        }
    }

    /// Sent with `Transfer-Encoding: chunked` instead of a `Content-Length`.
    pub fn chunked(mut self) -> RepeatBody {
        self.exact = false;
        self
    }

    /// Samples the process's resident memory at every chunk.
    pub fn probe(mut self, peak: Arc<RssPeak>) -> RepeatBody {
        self.probe = Some(peak);
        self
    }

    pub fn boxed(self) -> TestBody {
        BodyExt::map_err(self, |never: Infallible| match never {}).boxed()
    }
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = this.remaining.min(CHUNK.len() as u64);
        this.remaining -= len;
        if let Some(probe) = &this.probe {
            probe.sample();
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &CHUNK[..len as usize],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

// ---------------------------------------------------------------------------
// Memory

/// The resident set size of this process (the proxy runs in it), in bytes.
pub fn rss_bytes() -> u64 {
    // statm counts pages; `VmRSS` in status is the same counter in KiB,
    // which spares us the page size.
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// The highest resident size seen since `now()`, sampled along a data path.
pub struct RssPeak {
    baseline: u64,
    peak: AtomicU64,
}

impl RssPeak {
    pub fn now() -> RssPeak {
        let baseline = rss_bytes();
        RssPeak {
            baseline,
            peak: AtomicU64::new(baseline),
        }
    }

    pub fn sample(&self) {
        self.peak.fetch_max(rss_bytes(), Ordering::SeqCst);
    }

    /// Peak minus baseline.
    pub fn growth(&self) -> u64 {
        self.peak
            .load(Ordering::SeqCst)
            .saturating_sub(self.baseline)
    }
}

// ---------------------------------------------------------------------------
// Route files

/// A route file: `backends` (name, URL) with the first one as `default`,
/// then `routes`, a YAML fragment of `  - name: ...` entries.
pub fn routes_file(backends: &[(&str, &str)], routes: &str) -> String {
    let mut yaml = String::from("backends:\n");
    for (name, url) in backends {
        yaml.push_str(&format!("  {name}: {{ url: \"{url}\" }}\n"));
    }
    yaml.push_str(&format!("default: {}\n", backends[0].0));
    if !routes.trim().is_empty() {
        yaml.push_str("routes:\n");
        yaml.push_str(routes.trim_start_matches('\n'));
        yaml.push('\n');
    }
    yaml
}

// ---------------------------------------------------------------------------
// HTTP client

/// An answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header value"))
    }
}

/// A pooled HTTP client (hyper-util's legacy client) aimed at one address.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, TestBody>,
    addr: SocketAddr,
}

impl HttpClient {
    /// HTTP/1.1 with keep-alive.
    pub fn http1(addr: SocketAddr) -> HttpClient {
        let inner = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        HttpClient { inner, addr }
    }

    /// HTTP/2 over cleartext, with prior knowledge (no upgrade dance).
    pub fn http2(addr: SocketAddr) -> HttpClient {
        let inner = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(HttpConnector::new());
        HttpClient { inner, addr }
    }

    /// A request builder for `path` (path and query) on this client's address.
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(
            self.request(Method::GET, path)
                .body(empty())
                .expect("request"),
        )
        .await
    }

    /// Sends and reads the whole answer; a transport error fails the test.
    pub async fn send(&self, req: Request<TestBody>) -> Reply {
        let what = format!("{} {}", req.method(), req.uri());
        self.try_send(req)
            .await
            .unwrap_or_else(|err| panic!("{what} failed: {err:?}"))
    }

    /// Sends and reads the whole answer; an error sending or reading is returned.
    pub async fn try_send(&self, req: Request<TestBody>) -> Result<Reply, BoxError> {
        let response = self.inner.request(req).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    /// Sends and returns as soon as the headers arrive, the body unread.
    pub async fn send_streaming(&self, req: Request<TestBody>) -> Response<Incoming> {
        self.inner.request(req).await.expect("response headers")
    }
}

// ---------------------------------------------------------------------------
// The proxy under test

/// `strangler::run` on loopback listeners, serving one route file from a
/// temporary `routes/` directory. Dropping the handle shuts the proxy down.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub routes_dir: PathBuf,
    client: HttpClient,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), strangler::RunError>>,
    _dir: tempfile::TempDir,
}

impl TestProxy {
    /// Writes `routes_yaml` as `routes/routes.yaml` and starts the proxy on it.
    /// Fails the test if the proxy refuses the file.
    pub async fn start(routes_yaml: &str) -> TestProxy {
        TestProxy::start_with_workers(routes_yaml, 1).await
    }

    /// `start` with `workers` worker threads, all accepting on one socket
    /// (bound without `SO_REUSEPORT`, as a library caller may give it).
    pub async fn start_with_workers(routes_yaml: &str, workers: usize) -> TestProxy {
        let dir = tempfile::tempdir().expect("temporary directory");
        let routes_dir = dir.path().join("routes");
        std::fs::create_dir(&routes_dir).expect("create routes/");
        std::fs::write(routes_dir.join("routes.yaml"), routes_yaml).expect("write routes.yaml");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let admin = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound socket has an address");
        let admin_addr = admin.local_addr().expect("bound socket has an address");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = strangler::RunConfig {
            routes_dir: routes_dir.clone(),
            state_dir: dir.path().join("state"),
            watch: false,
            workers,
        };
        // The shutdown future resolves on `shutdown()` or when the handle drops.
        let mut task = tokio::spawn(strangler::run(listener, admin, config, async move {
            let _ = stopped.await;
        }));
        // The listeners are bound, so requests would queue even now; waiting
        // for /readyz only turns a refused route file into a clear failure
        // instead of a hung request.
        let admin_client = HttpClient::http1(admin_addr);
        let started = async {
            tokio::select! {
                reply = admin_client.get("/readyz") => assert_eq!(reply.status, StatusCode::OK, "/readyz"),
                result = &mut task => panic!("the proxy stopped at start: {result:?}\n{routes_yaml}"),
            }
        };
        tokio::time::timeout(PATIENCE, started)
            .await
            .expect("the proxy answers /readyz");
        TestProxy {
            addr,
            admin_addr,
            routes_dir,
            client: HttpClient::http1(addr),
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    /// An HTTP/1.1 client of the proxy.
    pub fn client(&self) -> HttpClient {
        self.client.clone()
    }

    /// An HTTP/2 (prior knowledge) client of the proxy.
    pub fn h2_client(&self) -> HttpClient {
        HttpClient::http2(self.addr)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.client.get(path).await
    }

    /// Sends `GET path` with extra request headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.client.request(Method::GET, path);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.client.send(req.body(empty()).expect("request")).await
    }

    /// Signals shutdown and waits until `run` returns (requests in flight
    /// drain first).
    pub async fn shutdown(mut self) -> Result<(), strangler::RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = &mut self.task;
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the proxy stops within its grace period")
            .expect("the proxy task does not panic")
    }
}

// ---------------------------------------------------------------------------
// Waiting

/// Polls `condition` until it holds; fails the test after `PATIENCE`. For
/// conditions that become true asynchronously (another task's progress).
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

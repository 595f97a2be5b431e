//! Test support: fake monolith and services, and the proxy under test, on loopback.
//!
//! Everything listens on `127.0.0.1:0` and is bound before the constructor
//! returns, so a test can connect at once. Dropping a handle stops its
//! server. Nothing here sleeps to synchronise: `eventually` polls an
//! asynchronous condition against a deadline, and every other wait is on
//! an event (a response, a task's end).

// Each test file uses a different part of this module.
#![allow(dead_code)]

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
// Fake backends

/// What a fake backend does with each request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with this body.
    Fixed(&'static str),
    /// This status and body.
    Status(u16, &'static str),
    /// 200 with the request as JSON: `method`, `path` (with query),
    /// `version`, `headers` (name to list of values).
    Echo,
    /// 200 with this many bytes, made as the proxy reads them.
    Stream(u64),
    /// Reads the whole request body, counting bytes, and answers the count.
    CountUpload,
    /// Waits this long, then answers 200 `late`.
    Delay(Duration),
    /// Waits until `FakeBackend::release`, then answers 200 `released`.
    Hold,
    /// Closes each connection as soon as it is accepted.
    Close,
    /// Reads the request head, promises a long body, sends a little of it
    /// and closes the connection.
    Truncate,
    /// Accepts a WebSocket upgrade (101) and echoes every message.
    WebSocketEcho,
}

/// The last request a fake backend received, as it arrived.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header value"))
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ASCII header value"))
            .collect()
    }
}

struct BackendState {
    behaviour: Behaviour,
    response_headers: Vec<(HeaderName, HeaderValue)>,
    requests: AtomicUsize,
    connections: AtomicUsize,
    uploaded: AtomicU64,
    last: Mutex<Option<SeenRequest>>,
}

/// A fake monolith or service on `127.0.0.1:0`.
pub struct FakeBackend {
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    release: watch::Sender<bool>,
    /// Dropping the handle stops the accept loop and every connection.
    _stop: watch::Sender<()>,
}

impl FakeBackend {
    /// Answers every request with `body`, and counts requests.
    pub async fn start(body: &'static str) -> FakeBackend {
        FakeBackend::with(Behaviour::Fixed(body)).await
    }

    pub async fn with(behaviour: Behaviour) -> FakeBackend {
        FakeBackend::with_headers(behaviour, &[]).await
    }

    /// Like `with`, adding `headers` to every answer.
    pub async fn with_headers(behaviour: Behaviour, headers: &[(&str, &str)]) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound socket has an address");
        let response_headers = headers
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                    HeaderValue::from_str(value).expect("header value"),
                )
            })
            .collect();
        let state = Arc::new(BackendState {
            behaviour,
            response_headers,
            requests: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            uploaded: AtomicU64::new(0),
            last: Mutex::new(None),
        });
        let (stop, stopped) = watch::channel(());
        let (release, released) = watch::channel(false);
        // The listener is bound before we return, so callers can connect at
        // once: no sleeps, no retry loops.
        tokio::spawn(accept_loop(listener, state.clone(), stopped, released));
        FakeBackend {
            addr,
            state,
            release,
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:PORT`, for a route file.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Bytes of request body counted by `CountUpload`.
    pub fn uploaded(&self) -> u64 {
        self.state.uploaded.load(Ordering::SeqCst)
    }

    pub fn last_request(&self) -> SeenRequest {
        self.state
            .last
            .lock()
            .expect("lock")
            .clone()
            .expect("the backend has received a request")
    }

    /// Lets every `Hold` request (held now or later) answer.
    pub fn release(&self) {
        self.release.send_replace(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<BackendState>,
    mut stopped: watch::Receiver<()>,
    released: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => return,
            },
            // Only ever resolves when the handle (the sender) is dropped.
            _ = stopped.changed() => return,
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let (state, mut stopped, released) = (state.clone(), stopped.clone(), released.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = serve_connection(stream, state, released) => {}
                _ = stopped.changed() => {}
            }
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    state: Arc<BackendState>,
    released: watch::Receiver<bool>,
) {
    match state.behaviour {
        Behaviour::Close => drop(stream),
        Behaviour::Truncate => truncate(stream, &state).await,
        _ => {
            let service =
                hyper::service::service_fn(move |req| answer(req, state.clone(), released.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<BackendState>,
    mut released: watch::Receiver<bool>,
) -> Result<Response<TestBody>, Infallible> {
    let seen = SeenRequest {
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default(),
        version: req.version(),
        headers: req.headers().clone(),
    };
    *state.last.lock().expect("lock") = Some(seen.clone());
    state.requests.fetch_add(1, Ordering::SeqCst);
    let mut response = match &state.behaviour {
        Behaviour::Fixed(body) => text(200, *body),
        Behaviour::Status(status, body) => text(*status, *body),
        Behaviour::Echo => text(200, echo_json(&seen).to_string()),
        Behaviour::Stream(len) => Response::new(RepeatBody::new(*len).boxed()),
        Behaviour::CountUpload => {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    total += data.len() as u64;
                    state.uploaded.store(total, Ordering::SeqCst);
                }
            }
            text(200, total.to_string())
        }
        Behaviour::Delay(delay) => {
            tokio::time::sleep(*delay).await;
            text(200, "late")
        }
        Behaviour::Hold => {
            let _ = released.wait_for(|released| *released).await;
            text(200, "released")
        }
        Behaviour::WebSocketEcho => websocket_echo(req),
        Behaviour::Close | Behaviour::Truncate => unreachable!("served without HTTP"),
    };
    for (name, value) in &state.response_headers {
        response.headers_mut().append(name.clone(), value.clone());
    }
    Ok(response)
}

fn text(status: u16, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::from_u16(status).expect("status code");
    response
}

fn echo_json(seen: &SeenRequest) -> serde_json::Value {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &seen.headers {
        headers
            .entry(name.to_string())
            .or_default()
            .push(value.to_str().unwrap_or("?").to_string());
    }
    serde_json::json!({
        "method": seen.method.as_str(),
        "path": seen.path,
        "version": format!("{:?}", seen.version),
        "headers": headers,
    })
}

/// 101 with the accept key, then echo every data message on the upgraded
/// connection.
fn websocket_echo(mut req: Request<Incoming>) -> Response<TestBody> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return text(400, "not a WebSocket upgrade");
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = socket.next().await {
            if message.is_text() || message.is_binary() {
                if socket.send(message).await.is_err() {
                    return;
                }
            } else if message.is_close() {
                // tungstenite has queued the close reply; flush it.
                let _ = socket.close(None).await;
                return;
            }
        }
    });
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a header value"),
    );
    response
}

/// Reads one request head, then answers with a body cut short.
async fn truncate(mut stream: TcpStream, state: &BackendState) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\ncontent-type: text/plain\r\n\r\nthe first few bytes")
        .await;
    let _ = stream.flush().await;
    // Dropping the stream closes the connection 999,981 bytes early.
}

/// A URL on which nothing listens: a loopback port below the kernel's
/// ephemeral range, found refusing connections. (A port bound and released
/// at once could be handed to another test's server, binding port 0 at the
/// same moment, and the "dead" backend would answer.)
pub async fn dead_url() -> String {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    for port in (1024..ephemeral_low).rev().take(200) {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                return format!("http://127.0.0.1:{port}");
            }
            _ => continue,
        }
    }
    panic!("no refusing loopback port below {ephemeral_low}");
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

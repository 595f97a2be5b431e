//! Fake backends: a monolith or service on `127.0.0.1:0` that answers as
//! told (`Behaviour`) and remembers what it received, and a URL on which
//! nothing listens.

use super::*;

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

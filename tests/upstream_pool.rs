//! The pool of backend connections, seen from a scripted backend that
//! speaks HTTP/1.1 byte by byte: what goes on the wire, when a connection
//! is reused, and when it must not be.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

use support::{HttpClient, TestProxy, PATIENCE};

/// How the scripted backend ends an answer.
#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Waits for the next request on the same connection.
    KeepAlive,
    /// Answers with `Connection: close`, then leaves the socket open and
    /// reads nothing more: a proxy that reused it would wait in vain.
    SayCloseButLinger,
    /// Closes the socket without saying so (as a backend whose keep-alive
    /// timeout ran out between two requests).
    CloseSilently,
}

/// A request as it arrived, with the connection it came on.
#[derive(Debug, Clone)]
struct Seen {
    connection: usize,
    request_line: String,
    host: Option<String>,
}

/// An HTTP/1.1 backend on loopback that answers `200 ok-N` (N counting
/// requests from 1) and reports each request and each closed connection.
struct ScriptedBackend {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    /// Receives the number of each connection the proxy closed.
    closed: mpsc::UnboundedReceiver<usize>,
}

impl ScriptedBackend {
    async fn start(after: After) -> ScriptedBackend {
        ScriptedBackend::start_with(after, None).await
    }

    /// With `hold`, every answer waits until the notify fires.
    async fn start_with(after: After, hold: Option<Arc<Notify>>) -> ScriptedBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let state = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = state.1.fetch_add(1, Ordering::SeqCst) + 1;
                let seen = state.0.clone();
                let requests = requests.clone();
                let closed = closed_tx.clone();
                let hold = hold.clone();
                tokio::spawn(async move {
                    let is_eof = serve(stream, connection, after, seen, requests, hold).await;
                    if is_eof {
                        let _ = closed.send(connection);
                    }
                });
            }
        });
        ScriptedBackend {
            url,
            seen,
            connections,
            closed,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits until the proxy closes a connection; returns its number.
    async fn next_closed(&mut self) -> usize {
        tokio::time::timeout(PATIENCE, self.closed.recv())
            .await
            .expect("the proxy closes a backend connection")
            .expect("the backend runs")
    }
}

/// Serves one connection; true when it ended because the proxy closed it.
async fn serve(
    stream: TcpStream,
    connection: usize,
    after: After,
    seen: Arc<Mutex<Vec<Seen>>>,
    requests: Arc<AtomicUsize>,
    hold: Option<Arc<Notify>>,
) -> bool {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
        let mut host = None;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return true;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            match name.to_ascii_lowercase().as_str() {
                "host" => host = Some(value.trim().to_string()),
                "content-length" => length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return true;
        }
        seen.lock().expect("lock").push(Seen {
            connection,
            request_line: request_line.trim_end().to_string(),
            host,
        });
        if let Some(hold) = &hold {
            hold.notified().await;
        }
        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
        let text = format!("ok-{n}");
        let close = if after == After::SayCloseButLinger {
            "connection: close\r\n"
        } else {
            ""
        };
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{close}\r\n{text}",
            text.len()
        );
        if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return true;
        }
        match after {
            After::KeepAlive => {}
            After::CloseSilently => return false,
            After::SayCloseButLinger => {
                // Keeps the socket until the proxy lets go of it.
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest).await;
                return true;
            }
        }
    }
}

fn routes(url: &str, backend_extra: &str) -> String {
    format!("backends:\n  app: {{ url: \"{url}\", timeout: 5s{backend_extra} }}\ndefault: app\n")
}

/// Requests leave in origin form (`GET /path?query`), never absolute, with
/// the client's Host; an HTTP/1.0 client without Host gets the backend's.
#[tokio::test]
async fn requests_go_out_in_origin_form_with_a_host() {
    let backend = ScriptedBackend::start(After::KeepAlive).await;
    let proxy = TestProxy::start(&routes(&backend.url, "")).await;

    let reply = proxy.get("/orders/7?expand=items").await;
    assert_eq!(reply.status, StatusCode::OK);

    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(b"GET /legacy HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, client.read_to_string(&mut answer))
        .await
        .expect("an HTTP/1.0 answer ends with the connection")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");

    let seen = backend.seen();
    assert_eq!(seen[0].request_line, "GET /orders/7?expand=items HTTP/1.1");
    assert_eq!(
        seen[0].host.as_deref(),
        Some(proxy.addr.to_string().as_str())
    );
    assert_eq!(seen[1].request_line, "GET /legacy HTTP/1.1");
    let backend_authority = backend.url.trim_start_matches("http://");
    assert_eq!(seen[1].host.as_deref(), Some(backend_authority));
}

/// Answers wait until four requests are in flight together: four
/// connections open, then serve the next requests without a fifth.
#[tokio::test]
async fn connections_opened_under_concurrency_are_all_reused() {
    let hold = Arc::new(Notify::new());
    let backend = ScriptedBackend::start_with(After::KeepAlive, Some(hold.clone())).await;
    let proxy = TestProxy::start(&routes(&backend.url, "")).await;

    let concurrent: Vec<_> = (0..4)
        .map(|_| {
            let client = HttpClient::http1(proxy.addr);
            tokio::spawn(async move { client.get("/burst").await.status })
        })
        .collect();
    support::eventually("four requests reach the backend", || async {
        backend.seen().len() == 4
    })
    .await;
    assert_eq!(backend.connections(), 4);
    hold.notify_waiters();
    for request in concurrent {
        assert_eq!(request.await.expect("request task"), StatusCode::OK);
    }

    // From now on answers go out at once: permits outlive `notified()`.
    for _ in 0..8 {
        hold.notify_one();
        assert_eq!(proxy.get("/again").await.status, StatusCode::OK);
    }
    assert_eq!(backend.connections(), 4);
    let metrics = HttpClient::http1(proxy.admin_addr).get("/metrics").await;
    assert!(
        metrics
            .text()
            .lines()
            .any(|line| line == r#"strangler_upstream_connections_total{backend="app"} 4"#),
        "{}",
        metrics.text()
    );
}

/// A backend that closes an idle connection without a word: the next
/// request is served, on a new connection.
#[tokio::test]
async fn a_connection_the_backend_closed_is_replaced() {
    let mut backend = ScriptedBackend::start(After::CloseSilently).await;
    let proxy = TestProxy::start(&routes(&backend.url, "")).await;

    for expected in ["ok-1", "ok-2", "ok-3"] {
        let reply = proxy.get("/p").await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, expected));
    }
    let connections: Vec<usize> = backend.seen().iter().map(|seen| seen.connection).collect();
    assert_eq!(
        connections,
        [1, 2, 3],
        "each request on a connection of its own"
    );
    assert!(
        backend.closed.try_recv().is_err(),
        "the backend closed them, not the proxy"
    );
}

/// `Connection: close` from the backend: that connection is not lent
/// again (the backend would never answer on it).
#[tokio::test]
async fn a_connection_the_backend_said_it_closes_is_not_reused() {
    let mut backend = ScriptedBackend::start(After::SayCloseButLinger).await;
    let proxy = TestProxy::start(&routes(&backend.url, "")).await;

    for expected in ["ok-1", "ok-2"] {
        let reply = proxy.get("/p").await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, expected));
    }
    assert_eq!(backend.connections(), 2);
    let mut closed = [backend.next_closed().await, backend.next_closed().await];
    closed.sort();
    assert_eq!(closed, [1, 2], "the proxy let go of both");
}

/// `pool_idle_timeout`: an unused connection is closed by the proxy.
#[tokio::test]
async fn idle_connections_close_after_pool_idle_timeout() {
    let mut backend = ScriptedBackend::start(After::KeepAlive).await;
    let proxy = TestProxy::start(&routes(&backend.url, ", pool_idle_timeout: 50ms")).await;

    assert_eq!(proxy.get("/p").await.status, StatusCode::OK);

    assert_eq!(backend.next_closed().await, 1);
    assert_eq!(proxy.get("/p").await.text(), "ok-2");
    assert_eq!(backend.connections(), 2);
}

/// `max_idle_connections: 0`: nothing is kept; each request has its own
/// connection, closed after its answer.
#[tokio::test]
async fn max_idle_connections_zero_keeps_nothing() {
    let mut backend = ScriptedBackend::start(After::KeepAlive).await;
    let proxy = TestProxy::start(&routes(&backend.url, ", max_idle_connections: 0")).await;

    for n in 1..=3 {
        assert_eq!(proxy.get("/p").await.text(), format!("ok-{n}"));
        assert_eq!(backend.next_closed().await, n);
    }
    assert_eq!(backend.connections(), 3);
}

/// A backend named by host name (`localhost`) is resolved; when the name
/// has several addresses, one that refuses is skipped.
#[tokio::test]
async fn a_backend_host_name_is_resolved() {
    let backend = ScriptedBackend::start(After::KeepAlive).await;
    let url = backend.url.replace("127.0.0.1", "localhost");
    let proxy = TestProxy::start(&routes(&url, "")).await;

    let reply = proxy.get("/named").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(backend.seen()[0].request_line, "GET /named HTTP/1.1");
}

/// On a multi-threaded runtime, where an answer can end before its
/// connection is ready again: many clients at once are all answered, each
/// with its own answer, over a bounded number of backend connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_on_several_threads_share_a_bounded_pool() {
    const CLIENTS: usize = 8;
    const EACH: usize = 50;
    let backend = ScriptedBackend::start(After::KeepAlive).await;
    let proxy = TestProxy::start(&routes(&backend.url, "")).await;

    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let client = HttpClient::http1(proxy.addr);
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for _ in 0..EACH {
                    let reply = client.get("/p").await;
                    assert_eq!(reply.status, StatusCode::OK);
                    answers.push(reply.text().to_string());
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.expect("client task"));
    }

    // Every answer is a distinct `ok-N`: none was lost, doubled or read
    // from a connection that still held another request's bytes.
    answers.sort();
    answers.dedup();
    assert_eq!(answers.len(), CLIENTS * EACH);
    // Without reuse there would be one connection per request (400); a
    // connection still finishing its last answer may cost a few extra.
    let connections = backend.connections();
    assert!(
        connections <= 2 * CLIENTS,
        "{connections} backend connections for {CLIENTS} concurrent clients"
    );
}

//! The TLS listener: certificates chosen by SNI, rotation without a
//! restart (also under load), clear errors for bad files, and the request
//! head timeout over TLS. TLS to backends is in `upstream_tls.rs`.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls::pki_types::ServerName;
use support::*;
use tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `yaml` as `dir/routes/routes.yaml`; returns `dir/routes`.
fn write_routes(dir: &Path, yaml: &str) -> PathBuf {
    let routes = dir.join("routes");
    std::fs::create_dir_all(&routes).expect("routes/");
    std::fs::write(routes.join("routes.yaml"), yaml).expect("write routes");
    routes
}

/// Each SNI name gets its own certificate, and requests over TLS carry
/// `X-Forwarded-Proto: https`.
#[tokio::test]
async fn each_sni_name_is_served_its_certificate_and_rotation_needs_no_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new();
    let (a_cert, a_key, a_der) = ca.issue(dir.path(), "a.test");
    let (b_cert, b_key, b_der) = ca.issue(dir.path(), "b.test");
    let backend = FakeBackend::with(Behaviour::Echo).await;
    let routes = dir.path().join("routes");
    std::fs::create_dir(&routes).expect("routes/");
    let yaml = certificates_yaml(&[(&a_cert, &a_key, "a.test"), (&b_cert, &b_key, "b.test")])
        + &routes_file(&[("monolith", &backend.url())], "");
    std::fs::write(routes.join("routes.yaml"), yaml).expect("write routes");
    let proxy = TlsProxy::start(&routes, dir.path().join("state")).await;

    let (served_a, mut stream) = proxy.connect(&ca, "a.test").await;
    assert_eq!(served_a, a_der);
    let (served_b, _) = proxy.connect(&ca, "b.test").await;
    assert_eq!(served_b, b_der);

    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut answer))
        .await
        .expect("answer")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(r#""x-forwarded-proto":["https"]"#),
        "{answer}"
    );

    // Rotation: new files in place, a reload, and the new certificate is served.
    let (_, _, new_der) = ca.issue(dir.path(), "a.test");
    assert_ne!(new_der, a_der);
    proxy.reload().await;
    let (served, _) = proxy.connect(&ca, "a.test").await;
    assert_eq!(served, new_der);
    // Plain HTTP still works beside TLS.
    assert_eq!(HttpClient::http1(proxy.addr).get("/").await.status, 200);
}

/// Certificate files replaced on disk are picked up by the proxy's own
/// check (`check_interval`), with no reload asked for and no restart.
#[tokio::test]
async fn changed_certificate_files_are_served_without_a_reload() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new();
    let (cert, key, old_der) = ca.issue(dir.path(), "a.test");
    let backend = FakeBackend::start("monolith").await;
    let yaml = certificates_yaml(&[(&cert, &key, "a.test")]).replacen(
        "  tls:\n",
        "  tls:\n    check_interval: 100ms\n",
        1,
    ) + &routes_file(&[("monolith", &backend.url())], "");
    let proxy = TlsProxy::start(&write_routes(dir.path(), &yaml), dir.path().join("state")).await;
    assert_eq!(proxy.connect(&ca, "a.test").await.0, old_der);

    let (_, _, new_der) = ca.issue(dir.path(), "a.test");
    assert_ne!(new_der, old_der);
    eventually("the new certificate is served", || async {
        proxy.connect(&ca, "a.test").await.0 == new_der
    })
    .await;
}

/// `strangler check` names the file, line and column of a key that does
/// not match its certificate, and of a certificate file that is no PEM.
#[tokio::test]
async fn bad_or_mismatched_files_are_errors_at_their_key() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new();
    let (a_cert, _, _) = ca.issue(dir.path(), "a.test");
    let (_, b_key, _) = ca.issue(dir.path(), "b.test");
    let junk = dir.path().join("junk.crt");
    std::fs::write(&junk, "not a certificate").expect("write junk");
    let check = |yaml: String| refusal(&yaml);
    let tail = routes_file(&[("monolith", "http://127.0.0.1:1")], "");
    let mismatched = check(certificates_yaml(&[(&a_cert, &b_key, "a.test")]) + &tail);
    assert!(mismatched.contains(":5:14: the key in"), "{mismatched}");
    assert!(
        mismatched.contains("does not match the certificate"),
        "{mismatched}"
    );
    let not_pem = check(certificates_yaml(&[(&junk, &b_key, "a.test")]) + &tail);
    assert!(not_pem.contains(":4:15:"), "{not_pem}");
    assert!(not_pem.contains("holds no PEM certificate"), "{not_pem}");
}

/// Over TLS as in the clear: a head that starts and stalls past
/// `header_read_timeout` gets 408 and a clean close (close_notify), and a
/// connection that sends nothing after its handshake is closed without a byte.
#[tokio::test]
async fn a_stalled_head_over_tls_gets_408_and_a_silent_connection_is_closed() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new();
    let (cert, key, _) = ca.issue(dir.path(), "a.test");
    let backend = FakeBackend::start("monolith").await;
    let yaml = certificates_yaml(&[(&cert, &key, "a.test")]).replacen(
        "server:\n",
        "server:\n  header_read_timeout: 1s\n",
        1,
    ) + &routes_file(&[("monolith", &backend.url())], "");
    let proxy = TlsProxy::start(&write_routes(dir.path(), &yaml), dir.path().join("state")).await;

    let (_, mut stalled) = proxy.connect(&ca, "a.test").await;
    let (_, mut silent) = proxy.connect(&ca, "a.test").await;
    stalled
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
        .await
        .expect("write half a head");
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, stalled.read_to_string(&mut answer))
        .await
        .expect("the proxy closes the stalled connection")
        .expect("a clean TLS close");
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer:?}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer:?}");
    assert!(
        answer.ends_with("\r\n\r\n{\"error\":\"request_timeout\"}"),
        "{answer:?}"
    );

    let mut nothing = Vec::new();
    let read = tokio::time::timeout(PATIENCE, silent.read_to_end(&mut nothing))
        .await
        .expect("the proxy closes the silent connection");
    assert!(
        nothing.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&nothing)
    );
    assert!(read.is_ok(), "{read:?}");
    assert_eq!(backend.hits(), 0);
}

/// A client that chose HTTP/2 by ALPN and speaks HTTP/1 anyway is served
/// (hyper goes by the bytes), under the same head checks and limits as any
/// HTTP/1 connection: a smuggling-shaped head gets 400, an oversized one 431.
#[tokio::test]
async fn http1_spoken_after_choosing_h2_meets_the_same_head_checks() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new();
    let (cert, key, _) = ca.issue(dir.path(), "a.test");
    let backend = FakeBackend::start("monolith").await;
    let yaml = certificates_yaml(&[(&cert, &key, "a.test")])
        + &routes_file(&[("monolith", &backend.url())], "");
    let proxy = TlsProxy::start(&write_routes(dir.path(), &yaml), dir.path().join("state")).await;
    let mut config = (*ca.client_config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);

    let big = "x".repeat(70 * 1024);
    let cases = [
        (
            "a plain request",
            "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n".to_string(),
            "HTTP/1.1 200",
        ),
        (
            "length with chunked",
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_string(),
            "HTTP/1.1 400",
        ),
        (
            "an oversized head",
            format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {big}\r\n\r\n"),
            "HTTP/1.1 431",
        ),
    ];
    for (what, request, expected) in cases {
        let tcp = TcpStream::connect(proxy.tls_addr).await.expect("connect");
        let name = ServerName::try_from("a.test").expect("server name");
        let mut tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "{what}");
        tls.write_all(request.as_bytes())
            .await
            .expect("write the request");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut answer))
            .await
            .expect("the proxy answers and closes");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(expected), "{what}: {answer:?}");
    }
    assert_eq!(backend.hits(), 1);
}

/// How one TLS connection of the rotation test went.
#[derive(Debug, PartialEq, Eq)]
enum Handshake {
    /// A full handshake, with the certificate served.
    Full(Vec<u8>),
    /// A session resumed: no certificate is served.
    Resumed,
}

/// One TLS connection, one request: how the handshake went, or what failed.
async fn one_request(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<Handshake, String> {
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("a.test").expect("server name");
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let session = tls.get_ref().1;
        let served = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec())
            .ok_or("no certificate")?;
        let handshake = match session.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => Handshake::Resumed,
            _ => Handshake::Full(served),
        };
        tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if !answer.starts_with(b"HTTP/1.1 200") || !answer.ends_with(b"monolith") {
            return Err(format!("answer: {}", String::from_utf8_lossy(&answer)));
        }
        Ok(handshake)
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .unwrap_or_else(|_| Err("no answer".to_string()))
}

/// What the clients of the rotation test saw.
#[derive(Default)]
struct Load {
    /// Set once the test has seen the new certificate itself.
    is_rotated: AtomicBool,
    is_stopped: AtomicBool,
    /// Per client: connections started before and after `is_rotated`.
    before: [AtomicUsize; CLIENTS],
    after: [AtomicUsize; CLIENTS],
    served_old: AtomicUsize,
    served_new: AtomicUsize,
    resumed: AtomicUsize,
    /// Full handshakes started after `is_rotated` that got the old certificate.
    stale: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

const CLIENTS: usize = 4;

/// Certificate and key files replaced by atomic renames (a new key and a
/// new serial) while four clients open new TLS connections back to back,
/// one request each: no handshake or request fails across the rotation,
/// and once the new certificate has been served, every new full handshake
/// gets it. Two of the clients resume sessions, which must also go on
/// working across the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_fails_no_handshake() {
    // A bound on the load, whatever happens: each client stops after this many.
    const MAX_PER_CLIENT: usize = 2_000;
    const BEFORE: usize = 10;
    const AFTER: usize = 10;
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new();
    let old = ca.issue_serial(dir.path(), "old", "a.test", 1);
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(&old.cert, &cert).expect("copy certificate");
    std::fs::copy(&old.key, &key).expect("copy key");
    let backend = FakeBackend::start("monolith").await;
    let yaml = certificates_yaml(&[(&cert, &key, "a.test")])
        + &routes_file(&[("monolith", &backend.url())], "");
    let proxy = TlsProxy::start(&write_routes(dir.path(), &yaml), dir.path().join("state")).await;
    let new = ca.issue_serial(dir.path(), "new", "a.test", 2);
    assert_ne!(new.der, old.der);

    let load = Arc::new(Load::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let config = if client % 2 == 0 {
                ca.client_config()
            } else {
                ca.client_config_full_handshakes()
            };
            let load = load.clone();
            let (addr, old_der, new_der) = (proxy.tls_addr, old.der.clone(), new.der.clone());
            tokio::spawn(async move {
                for _ in 0..MAX_PER_CLIENT {
                    if load.is_stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let is_rotated = load.is_rotated.load(Ordering::SeqCst);
                    let counter = if is_rotated {
                        &load.after
                    } else {
                        &load.before
                    };
                    match one_request(addr, config.clone()).await {
                        Ok(Handshake::Resumed) => {
                            load.resumed.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Handshake::Full(served)) if served == new_der => {
                            load.served_new.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Handshake::Full(served)) if served == old_der => {
                            load.served_old.fetch_add(1, Ordering::SeqCst);
                            if is_rotated {
                                load.stale.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Ok(_) => load
                            .failures
                            .lock()
                            .expect("lock")
                            .push("an unknown certificate".into()),
                        Err(failure) => load.failures.lock().expect("lock").push(failure),
                    }
                    counter[client].fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let every_client = |is_after: bool, at_least: usize| {
        let load = load.clone();
        eventually("every client has made its connections", move || {
            let load = load.clone();
            async move {
                let counts = if is_after { &load.after } else { &load.before };
                counts.iter().all(|n| n.load(Ordering::SeqCst) >= at_least)
            }
        })
    };
    every_client(false, BEFORE).await;

    // As rotation tools do: new files beside the live ones, each renamed
    // over its live one (a rename is atomic), then the reload.
    std::fs::rename(&new.key, &key).expect("rename key");
    std::fs::rename(&new.cert, &cert).expect("rename certificate");
    proxy.reload().await;
    let config = ca.client_config_full_handshakes();
    let seen_new = async {
        loop {
            match one_request(proxy.tls_addr, config.clone()).await {
                Ok(Handshake::Full(served)) if served == new.der => return,
                Ok(_) => continue,
                Err(failure) => panic!("during the rotation: {failure}"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, seen_new)
        .await
        .expect("new connections get the new certificate");
    load.is_rotated.store(true, Ordering::SeqCst);
    every_client(true, AFTER).await;
    load.is_stopped.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("a client panicked");
    }

    let failures = load.failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(
        load.stale.load(Ordering::SeqCst),
        0,
        "old certificate after the rotation"
    );
    // Each full-handshake client made its connections on both sides.
    assert!(load.served_old.load(Ordering::SeqCst) >= CLIENTS / 2 * BEFORE);
    assert!(load.served_new.load(Ordering::SeqCst) >= CLIENTS / 2 * AFTER);
    assert!(
        load.resumed.load(Ordering::SeqCst) > 0,
        "no session was resumed"
    );
}

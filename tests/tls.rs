//! TLS at both ends: certificates chosen by SNI, rotation without a
//! restart, clear errors for bad files, and `https://` backends with a
//! custom CA.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A test CA that signs leaf certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "strangler test CA");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { cert, key }
    }

    /// A leaf for `name`, written as `dir/NAME.crt` and `dir/NAME.key`;
    /// returns the paths and the certificate's DER.
    fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = KeyPair::generate().expect("leaf key");
        let params = CertificateParams::new(vec![name.to_string()]).expect("leaf params");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed leaf");
        let (cert_path, key_path) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path, cert.der().to_vec())
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, self.cert.pem()).expect("write CA");
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.der().clone())
            .expect("CA into the trust store");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// The proxy with a TLS listener, on loopback; stops when dropped.
struct TlsProxy {
    addr: SocketAddr,
    tls_addr: SocketAddr,
    admin: HttpClient,
    _stop: oneshot::Sender<()>,
}

impl TlsProxy {
    async fn start(routes_dir: &Path, state_dir: PathBuf) -> TlsProxy {
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (proxy, tls, admin) = (
            bind().await.expect("bind"),
            bind().await.expect("bind"),
            bind().await.expect("bind"),
        );
        let (addr, tls_addr) = (
            proxy.local_addr().expect("addr"),
            tls.local_addr().expect("addr"),
        );
        let admin_addr = admin.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = strangler::RunConfig {
            routes_dir: routes_dir.to_path_buf(),
            state_dir,
            watch: false,
        };
        let listeners = strangler::Listeners {
            proxy,
            tls: Some(tls),
            admin,
        };
        let mut task = tokio::spawn(strangler::serve(listeners, config, async move {
            let _ = stopped.await;
        }));
        let admin = HttpClient::http1(admin_addr);
        let ready = async {
            tokio::select! {
                reply = admin.get("/readyz") => assert_eq!(reply.status, 200),
                result = &mut task => panic!("the proxy stopped at start: {result:?}"),
            }
        };
        tokio::time::timeout(PATIENCE, ready)
            .await
            .expect("the proxy answers /readyz");
        TlsProxy {
            addr,
            tls_addr,
            admin,
            _stop: stop,
        }
    }

    /// Handshakes as `name`; returns the certificate served and the stream.
    async fn connect(
        &self,
        ca: &Ca,
        name: &str,
    ) -> (Vec<u8>, tokio_rustls::client::TlsStream<TcpStream>) {
        let tcp = TcpStream::connect(self.tls_addr).await.expect("connect");
        let server_name = ServerName::try_from(name.to_string()).expect("server name");
        let tls = tokio_rustls::TlsConnector::from(ca.client_config())
            .connect(server_name, tcp)
            .await
            .expect("TLS handshake");
        let served = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
        (served, tls)
    }
}

fn certificates_yaml(entries: &[(&Path, &Path, &str)]) -> String {
    let mut yaml = String::from("server:\n  tls:\n    certificates:\n");
    for (cert, key, sni) in entries {
        yaml.push_str(&format!(
            "      - cert: {}\n        key: {}\n        sni: [{sni}]\n",
            cert.display(),
            key.display()
        ));
    }
    yaml
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
    let reply = proxy
        .admin
        .send(
            proxy
                .admin
                .request(http::Method::POST, "/api/reload")
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (served, _) = proxy.connect(&ca, "a.test").await;
    assert_eq!(served, new_der);
    // Plain HTTP still works beside TLS.
    assert_eq!(HttpClient::http1(proxy.addr).get("/").await.status, 200);
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
    let check = |yaml: String| {
        let routes = tempfile::tempdir().expect("temporary directory");
        std::fs::write(routes.path().join("routes.yaml"), yaml).expect("write routes");
        let metrics = strangler::metrics::Metrics::new();
        let ctx = strangler::config::CompileContext {
            metrics: &metrics,
            previous: None,
            migrations: None,
        };
        strangler::config::load(routes.path(), &ctx)
            .expect_err("the routes are refused")
            .to_string()
    };
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

/// A TLS backend that answers `secure` to everything.
async fn tls_backend(cert: &Path, key: &Path) -> SocketAddr {
    let chain: Vec<CertificateDer<'static>> =
        rustls::pki_types::pem::PemObject::pem_file_iter(cert)
            .expect("read certificate")
            .collect::<Result<_, _>>()
            .expect("PEM certificate");
    let key = rustls::pki_types::pem::PemObject::from_pem_file(key).expect("PEM key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(full("secure")))
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    addr
}

/// An `https://` backend is reached with a custom CA and a server name
/// override; without that CA the proxy refuses the backend's certificate
/// and answers `upstream_tls`.
#[tokio::test]
async fn https_backends_are_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::new();
    let (cert, key, _) = ca.issue(dir.path(), "backend.test");
    let ca_path = dir.path().join("ca.pem");
    ca.write(&ca_path);
    let backend = tls_backend(&cert, &key).await;
    let monolith = FakeBackend::start("monolith").await;
    let routes = format!(
        "backends:\n  monolith: {{ url: \"{}\" }}\n  secure:\n    url: \"https://{backend}\"\n    tls: {{ ca: {}, server_name: backend.test }}\n  unverified: {{ url: \"https://{backend}\" }}\ndefault: monolith\nroutes:\n  - name: secure\n    match: {{ prefix: /secure }}\n    backend: secure\n  - name: unverified\n    match: {{ prefix: /unverified }}\n    backend: unverified\n",
        monolith.url(),
        ca_path.display()
    );
    let proxy = TestProxy::start(&routes).await;
    let reply = proxy.get("/secure").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "secure");
    let refused = proxy.get("/unverified").await;
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert_eq!(refused.json()["error"], "upstream_tls");
}

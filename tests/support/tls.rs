//! Test support for TLS: a test CA that issues server and client
//! certificates, the proxy with a TLS listener, and an `https://` backend
//! that can require a client certificate (mTLS).
//!
//! Included with `#[path]` by the test files that need it, so `mod.rs`
//! stays as it is. Everything listens on `127.0.0.1:0`.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use crate::support::{full, HttpClient, PATIENCE};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA that signs leaf certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate issued by `Ca`, written to files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new() -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "strangler test CA");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { cert, key }
    }

    /// A server leaf for `name`, written as `dir/NAME.crt` and `dir/NAME.key`;
    /// returns the paths and the certificate's DER.
    pub fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let params = CertificateParams::new(vec![name.to_string()]).expect("leaf params");
        let issued = self.sign(params, dir, name);
        (issued.cert, issued.key, issued.der)
    }

    /// A server leaf for `name` with this serial and a new key, written as
    /// `dir/FILE.crt` and `dir/FILE.key`.
    pub fn issue_serial(&self, dir: &Path, file: &str, name: &str, serial: u64) -> Issued {
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("leaf params");
        params.serial_number = Some(SerialNumber::from(serial));
        self.sign(params, dir, file)
    }

    /// A client certificate whose subject is `CN=common_name`, for mTLS.
    pub fn issue_client(&self, dir: &Path, common_name: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, dir, common_name)
    }

    fn sign(&self, params: CertificateParams, dir: &Path, file: &str) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed leaf");
        let (cert_path, key_path) = (
            dir.join(format!("{file}.crt")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Issued {
            cert: cert_path,
            key: key_path,
            der: cert.der().to_vec(),
        }
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.cert.pem()).expect("write CA");
    }

    fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.der().clone())
            .expect("CA into the trust store");
        Arc::new(roots)
    }

    /// A client that trusts this CA and offers `http/1.1`. It resumes
    /// sessions: a resumed handshake shows the certificate of the session
    /// it resumes, not the one served now.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// `client_config` without session resumption: every handshake is
    /// full, so the certificate it shows is the one served now.
    pub fn client_config_full_handshakes(&self) -> Arc<rustls::ClientConfig> {
        let mut config = (*self.client_config()).clone();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

/// `server.tls.certificates` with one entry per `(cert, key, sni)`.
pub fn certificates_yaml(entries: &[(&Path, &Path, &str)]) -> String {
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

/// The proxy with a TLS listener, on loopback; stops when dropped.
pub struct TlsProxy {
    pub addr: SocketAddr,
    pub tls_addr: SocketAddr,
    pub admin: HttpClient,
    _stop: oneshot::Sender<()>,
}

impl TlsProxy {
    pub async fn start(routes_dir: &Path, state_dir: PathBuf) -> TlsProxy {
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
            workers: 1,
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

    /// `POST /api/reload`; fails the test unless it answers 200.
    pub async fn reload(&self) {
        let request = self
            .admin
            .request(http::Method::POST, "/api/reload")
            .body(crate::support::empty())
            .expect("request");
        let reply = self.admin.send(request).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    /// Handshakes as `name`; returns the certificate served and the stream.
    pub async fn connect(
        &self,
        ca: &Ca,
        name: &str,
    ) -> (Vec<u8>, tokio_rustls::client::TlsStream<TcpStream>) {
        self.try_connect(ca, name).await.expect("TLS handshake")
    }

    /// `connect`, with a failed connect or handshake returned.
    pub async fn try_connect(
        &self,
        ca: &Ca,
        name: &str,
    ) -> std::io::Result<(Vec<u8>, tokio_rustls::client::TlsStream<TcpStream>)> {
        let tcp = TcpStream::connect(self.tls_addr).await?;
        let server_name = ServerName::try_from(name.to_string()).expect("server name");
        let tls = tokio_rustls::TlsConnector::from(ca.client_config())
            .connect(server_name, tcp)
            .await?;
        let served = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec())
            .unwrap_or_default();
        Ok((served, tls))
    }
}

struct TlsBackendState {
    requests: AtomicUsize,
    failed_handshakes: AtomicUsize,
    /// The client certificate of each connection that completed a handshake.
    client_certs: Mutex<Vec<Option<Vec<u8>>>>,
    /// The SNI name of each connection that completed a handshake.
    server_names: Mutex<Vec<Option<String>>>,
}

/// An `https://` backend on loopback that answers `secure` to everything;
/// with a client CA it requires a client certificate that CA signed.
pub struct TlsBackend {
    pub addr: SocketAddr,
    state: Arc<TlsBackendState>,
    /// Dropping the handle stops the accept loop.
    _stop: watch::Sender<()>,
}

impl TlsBackend {
    pub async fn start(cert: &Path, key: &Path, client_ca: Option<&Ca>) -> TlsBackend {
        let chain: Vec<CertificateDer<'static>> =
            rustls::pki_types::pem::PemObject::pem_file_iter(cert)
                .expect("read certificate")
                .collect::<Result<_, _>>()
                .expect("PEM certificate");
        let key = rustls::pki_types::pem::PemObject::from_pem_file(key).expect("PEM key");
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(ca.roots(), provider())
                    .build()
                    .expect("client verifier"),
            ),
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(TlsBackendState {
            requests: AtomicUsize::new(0),
            failed_handshakes: AtomicUsize::new(0),
            client_certs: Mutex::new(Vec::new()),
            server_names: Mutex::new(Vec::new()),
        });
        let (stop, mut stopped) = watch::channel(());
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => return,
                    },
                    _ = stopped.changed() => return,
                };
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        state.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let session = tls.get_ref().1;
                    let client = session
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| cert.to_vec());
                    let sni = session.server_name().map(str::to_string);
                    state.client_certs.lock().expect("lock").push(client);
                    state.server_names.lock().expect("lock").push(sni);
                    let counted = state.clone();
                    let service = hyper::service::service_fn(move |_req| {
                        counted.requests.fetch_add(1, Ordering::SeqCst);
                        async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(full("secure")))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        TlsBackend {
            addr,
            state,
            _stop: stop,
        }
    }

    /// `https://127.0.0.1:PORT`, for a route file.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Requests served (after a complete handshake).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Handshakes this backend refused or that broke off.
    pub fn failed_handshakes(&self) -> usize {
        self.state.failed_handshakes.load(Ordering::SeqCst)
    }

    /// The client certificate of the last completed handshake, if any was shown.
    pub fn last_client_cert(&self) -> Option<Vec<u8>> {
        self.state
            .client_certs
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .flatten()
    }

    /// The SNI name of the last completed handshake, if the client sent one.
    pub fn last_server_name(&self) -> Option<String> {
        self.state
            .server_names
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .flatten()
    }
}

/// The subject's common name of a DER certificate: a minimal DER walk
/// (Certificate, tbsCertificate, subject), enough for what rcgen writes.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    let (_, certificate, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(certificate)?;
    let mut fields = Vec::new();
    while !tbs.is_empty() {
        let (tag, content, rest) = tlv(tbs)?;
        // `[0] version` is optional; the fields after it are positional.
        if tag != 0xA0 {
            fields.push(content);
        }
        tbs = rest;
    }
    // serialNumber, signature, issuer, validity, subject.
    let mut names = *fields.get(4)?;
    while !names.is_empty() {
        let (_, set, rest) = tlv(names)?;
        names = rest;
        let (_, attribute, _) = tlv(set)?;
        let (_, oid, value) = tlv(attribute)?;
        // 2.5.4.3, commonName.
        if oid == [0x55, 0x04, 0x03] {
            let (_, value, _) = tlv(value)?;
            return String::from_utf8(value.to_vec()).ok();
        }
    }
    None
}

/// One DER item: its tag, its content and what follows it.
fn tlv(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *bytes.first()?;
    let first = *bytes.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let len = bytes
            .get(2..2 + count)?
            .iter()
            .fold(0usize, |len, b| len << 8 | usize::from(*b));
        (len, 2 + count)
    };
    let content = bytes.get(header..header.checked_add(len)?)?;
    Some((tag, content, &bytes[header + len..]))
}

/// The error that loading a routes directory holding `yaml` gives (the
/// test fails if it loads).
pub fn refusal(yaml: &str) -> String {
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
}

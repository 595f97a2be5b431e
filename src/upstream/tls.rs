//! TLS to `https://` backends: system roots by default, a custom CA, a
//! client certificate (mTLS), an SNI override, and an explicit opt-out of
//! verification for tests.
//!
//! Files are read when the snapshot is compiled; their contents are part
//! of the backend's identity, so a changed CA or client certificate gives
//! the backend a new pool on the next reload.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::tls::{certified_key, parse_chain, parse_key, provider, read_file, TlsError};

/// A backend's `tls:` section, as written (paths resolved).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UpstreamTlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
}

/// Which key of `tls:` an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTlsField {
    Ca,
    Cert,
    Key,
    ServerName,
}

/// A backend's TLS client configuration, loaded and checked.
pub struct UpstreamTls {
    pub files: UpstreamTlsFiles,
    /// A hash of the files' contents: equal settings mean equal bytes.
    fingerprint: u64,
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files && self.fingerprint == other.fingerprint
    }
}

impl Eq for UpstreamTls {}

impl std::hash::Hash for UpstreamTls {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.files.hash(state);
        self.fingerprint.hash(state);
    }
}

impl UpstreamTls {
    // Runs when routes are compiled, never per request: the error's size
    // does not matter, and unboxed it reads plainly at every `?`.
    #[allow(clippy::result_large_err)]
    pub fn load(files: UpstreamTlsFiles) -> Result<UpstreamTls, (UpstreamTlsField, TlsError)> {
        let mut seen = Vec::new();
        let mut fingerprint = crate::hash::FNV_OFFSET;
        let server_name = match &files.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                (
                    UpstreamTlsField::ServerName,
                    TlsError::BadName(name.clone()),
                )
            })?),
            None => None,
        };
        let roots = match &files.ca {
            Some(path) => {
                let pem = read_file(path, &mut seen, &mut fingerprint)
                    .map_err(|e| (UpstreamTlsField::Ca, e))?;
                let mut roots = RootCertStore::empty();
                for cert in parse_chain(path, &pem).map_err(|e| (UpstreamTlsField::Ca, e))? {
                    roots.add(cert).map_err(|source| {
                        let err = TlsError::Unusable {
                            cert: path.clone(),
                            key: path.clone(),
                            source,
                        };
                        (UpstreamTlsField::Ca, err)
                    })?;
                }
                Arc::new(roots)
            }
            None => crate::tls::system_roots(),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots);
        let mut config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => {
                let cert_pem = read_file(cert, &mut seen, &mut fingerprint)
                    .map_err(|e| (UpstreamTlsField::Cert, e))?;
                let key_pem = read_file(key, &mut seen, &mut fingerprint)
                    .map_err(|e| (UpstreamTlsField::Key, e))?;
                // Each file's own error at its own key, before the pair is checked.
                let chain =
                    parse_chain(cert, &cert_pem).map_err(|e| (UpstreamTlsField::Cert, e))?;
                let private = parse_key(key, &key_pem).map_err(|e| (UpstreamTlsField::Key, e))?;
                // Checks that the key matches the certificate, with a clear error.
                certified_key(cert, &cert_pem, key, &key_pem)
                    .map_err(|e| (UpstreamTlsField::Key, e))?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|source| {
                        (
                            UpstreamTlsField::Key,
                            TlsError::Unusable {
                                cert: cert.clone(),
                                key: key.clone(),
                                source,
                            },
                        )
                    })?
            }
            (Some(_), None) => {
                return Err((
                    UpstreamTlsField::Cert,
                    TlsError::Unpaired {
                        given: "cert",
                        missing: "key",
                    },
                ))
            }
            (None, Some(_)) => {
                return Err((
                    UpstreamTlsField::Key,
                    TlsError::Unpaired {
                        given: "key",
                        missing: "cert",
                    },
                ))
            }
            (None, None) => builder.with_no_client_auth(),
        };
        if files.insecure_skip_verify {
            tracing::warn!(
                ca = ?files.ca,
                "INSECURE: `insecure_skip_verify: true` accepts ANY certificate from this backend; anyone on the path can read and change its traffic"
            );
            config
                .dangerous()
                .set_certificate_verifier(Arc::new(AcceptAnything));
        }
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Ok(UpstreamTls {
            files,
            fingerprint,
            config: Arc::new(config),
            server_name,
        })
    }
}

/// The TLS client configuration of a backend, `None` for plain HTTP.
pub(crate) fn client_config(
    tls: Option<&UpstreamTls>,
    is_https: bool,
) -> Option<Arc<ClientConfig>> {
    match (tls, is_https) {
        (_, false) => None,
        (Some(tls), true) => Some(tls.config.clone()),
        (None, true) => Some(Arc::new(default_config())),
    }
}

/// The name the backend's certificate must carry, when `server_name` says.
pub(crate) fn server_name(tls: Option<&UpstreamTls>) -> Option<ServerName<'static>> {
    tls.and_then(|t| t.server_name.clone())
}

fn default_config() -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(crate::tls::system_roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config
}

/// The pool speaks HTTP/1.1 only; a backend that offers h2 must not pick it.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Whether a failure came from TLS (handshake, certificate), looking
/// through `io::Error` wrappers, whose `source` skips the wrapped error.
pub(crate) fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    if err.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        if is_tls_failure(inner) {
            return true;
        }
    }
    err.source().is_some_and(is_tls_failure)
}

/// `insecure_skip_verify`: any certificate is accepted. Signatures are
/// still checked, so the peer must at least hold the key it shows.
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

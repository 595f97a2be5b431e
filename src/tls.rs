//! TLS termination: certificates chosen by SNI, ALPN h2 and http/1.1, TLS
//! 1.2 and 1.3 only, and certificate files re-read without a restart.
//!
//! Certificates are loaded when a snapshot is compiled (so `strangler
//! check` finds a bad or mismatched file, and a reload re-reads them) and
//! live in `ServerSettings::tls`. The handshake's resolver reads the
//! current snapshot, so a reload changes the certificate served to new
//! handshakes; open connections keep theirs. A task checks the files'
//! modification times and reloads when they change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::reload::Reloader;
use crate::routing::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("`{path}` is not valid PEM: {source}")]
    BadPem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("`{path}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("the key in `{key}` does not match the certificate in `{cert}`")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate `{cert}` or key `{key}` cannot be used: {source}")]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    /// A client certificate (to a backend) with half of its pair.
    #[error("`{given}` is set without `{missing}`: a client certificate needs both")]
    Unpaired {
        given: &'static str,
        missing: &'static str,
    },
    #[error("`{0}` is not a valid SNI name")]
    BadName(String),
    #[error("SNI name `{0}` is given to two certificates")]
    DuplicateName(String),
}

/// The crypto provider every TLS configuration here uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A file's identity for change detection: modification time and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp(Option<SystemTime>, u64);

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp(meta.modified().ok(), meta.len()))
    }
}

/// Reads a file, remembering its stamp and folding its bytes into `hash`.
pub(crate) fn read_file(
    path: &Path,
    seen: &mut Vec<(PathBuf, Option<FileStamp>)>,
    hash: &mut u64,
) -> Result<Vec<u8>, TlsError> {
    let stamp = FileStamp::of(path);
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    for part in [path.as_os_str().as_encoded_bytes(), &[0], &bytes] {
        *hash = crate::hash::fnv1a(*hash, part);
    }
    seen.push((path.to_path_buf(), stamp));
    Ok(bytes)
}

pub(crate) fn parse_chain(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadPem {
            path: path.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

pub(crate) fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| match err {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        source => TlsError::BadPem {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// A chain and its key, checked against each other.
pub(crate) fn certified_key(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = parse_chain(cert, cert_pem)?;
    let private = parse_key(key, key_pem)?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|source| match source {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        source => TlsError::Unusable {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        },
    })
}

/// One `server.tls.certificates` entry, paths resolved.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sni: Vec<String>,
}

/// Which field of an entry an error belongs to, for its FILE:LINE:COL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertField {
    Cert,
    Key,
    Sni,
}

/// The TLS listener's certificates, loaded and checked.
#[derive(Debug)]
pub struct Certificates {
    /// `(name, entry)`, exact names; `*.example.com` is stored as `.example.com`.
    names: Box<[(Box<str>, usize)]>,
    keys: Box<[Arc<CertifiedKey>]>,
    files: Vec<(PathBuf, Option<FileStamp>)>,
    /// A hash of the files' contents; part of the snapshot version, so a
    /// changed certificate makes a reload swap the snapshot.
    pub fingerprint: u64,
}

impl Certificates {
    /// Loads every entry; the first error names the entry and field.
    // Runs when routes are compiled, never per request: the error's size
    // does not matter, and unboxed it reads plainly at every `?`.
    #[allow(clippy::result_large_err)]
    pub fn load(
        entries: &[CertificateFiles],
    ) -> Result<Certificates, (usize, CertField, TlsError)> {
        let mut files = Vec::new();
        let mut hash = crate::hash::FNV_OFFSET;
        let mut keys = Vec::new();
        let mut names: Vec<(Box<str>, usize)> = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let cert_pem = read_file(&entry.cert, &mut files, &mut hash)
                .map_err(|e| (index, CertField::Cert, e))?;
            let key_pem = read_file(&entry.key, &mut files, &mut hash)
                .map_err(|e| (index, CertField::Key, e))?;
            let certified =
                certified_key(&entry.cert, &cert_pem, &entry.key, &key_pem).map_err(|e| {
                    let field = if matches!(e, TlsError::NoCertificate { .. })
                        || is_cert_pem_error(&e, &entry.cert)
                    {
                        CertField::Cert
                    } else {
                        CertField::Key
                    };
                    (index, field, e)
                })?;
            for name in &entry.sni {
                let name = normalise_name(name)
                    .ok_or_else(|| (index, CertField::Sni, TlsError::BadName(name.clone())))?;
                if names.iter().any(|(n, _)| *n == name) {
                    return Err((index, CertField::Sni, TlsError::DuplicateName(name.into())));
                }
                names.push((name, index));
            }
            keys.push(Arc::new(certified));
        }
        Ok(Certificates {
            names: names.into(),
            keys: keys.into(),
            files,
            fingerprint: hash,
        })
    }

    /// The certificate for `server_name`: an exact name, else a wildcard
    /// of its parent, else the first certificate (also for clients that
    /// send no SNI).
    pub fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let index = server_name
            .and_then(|name| {
                let name = name.trim_end_matches('.');
                let exact = self
                    .names
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name));
                let parent = name.find('.').map(|dot| &name[dot..]);
                exact.or_else(|| {
                    parent.and_then(|p| self.names.iter().find(|(n, _)| n.eq_ignore_ascii_case(p)))
                })
            })
            .map_or(0, |(_, index)| *index);
        self.keys.get(index).cloned()
    }

    /// Whether a certificate or key file changed since it was loaded.
    pub fn files_changed(&self) -> bool {
        self.files
            .iter()
            .any(|(path, stamp)| FileStamp::of(path) != *stamp)
    }
}

fn is_cert_pem_error(err: &TlsError, cert: &Path) -> bool {
    matches!(err, TlsError::BadPem { path, .. } if path == cert)
}

/// `Shop.Example.` as `shop.example`; `*.example.com` as `.example.com`.
fn normalise_name(name: &str) -> Option<Box<str>> {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let (is_wildcard, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name.as_str()),
    };
    let is_valid = !rest.is_empty()
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let normal: Box<str> = if is_wildcard {
        format!(".{rest}").into()
    } else {
        rest.into()
    };
    is_valid.then_some(normal)
}

/// Picks the certificate from the snapshot current at handshake time.
#[derive(Debug)]
struct SniResolver {
    table: Arc<ArcSwap<Snapshot>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.table.load();
        snapshot.server.tls.as_ref()?.resolve(hello.server_name())
    }
}

/// The TLS listener's acceptor: TLS 1.3 and 1.2, ALPN h2 then http/1.1.
pub fn acceptor(table: Arc<ArcSwap<Snapshot>>) -> TlsAcceptor {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { table }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// Reloads when a certificate or key file of the current snapshot
/// changes, until the returned task is aborted. A reload that fails (say,
/// a key written before its certificate) keeps the old certificates and is
/// tried again at the next check.
pub fn spawn_file_watch(reloader: Arc<Reloader>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // `server.tls.check_interval` of the current routes.
            let interval = reloader.table().load().server.tls_check_interval;
            tokio::time::sleep(interval).await;
            let certificates = reloader.table().load().server.tls.clone();
            let Some(certificates) = certificates else {
                continue;
            };
            let changed = tokio::task::spawn_blocking(move || certificates.files_changed()).await;
            if changed.unwrap_or(false) {
                let reloader = reloader.clone();
                let _ =
                    tokio::task::spawn_blocking(move || reloader.reload("certificate file change"))
                        .await;
            }
        }
    })
}

/// The operating system's trust store, read once: for `https://` backends
/// without a `ca`, and an `https` OTLP collector.
pub(crate) fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for err in &found.errors {
                tracing::warn!(error = %err, "cannot read part of the system trust store");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system root certificates found: https backends need `tls: {{ ca: FILE }}`, \
                     and an https OTLP collector cannot be verified"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_checked() {
        assert_eq!(normalise_name("Shop.Example."), Some("shop.example".into()));
        assert_eq!(normalise_name("*.example.com"), Some(".example.com".into()));
        assert_eq!(normalise_name("bad name"), None);
        assert_eq!(normalise_name("*."), None);
    }
}

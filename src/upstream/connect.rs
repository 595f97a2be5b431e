//! Opening a connection to a backend: resolve its name, connect over TCP
//! (no Nagle delay, keep-alive probes), shake hands in TLS for `https://`,
//! and start hyper's HTTP/1.1 client on it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http::Uri;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::ProxyBody;

/// How a connection attempt or an exchange failed, before it is given the
/// proxy's meaning in `UpstreamError`.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("cannot resolve `{host}`")]
    Resolve {
        host: Box<str>,
        #[source]
        source: io::Error,
    },
    #[error("`{host}` resolves to no address")]
    NoAddress { host: Box<str> },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("TLS handshake failed")]
    TlsHandshake(#[source] io::Error),
    #[error("the new connection closed before the request was sent")]
    NotSent(#[source] hyper::Error),
    #[error("HTTP/1.1 exchange failed")]
    Http(#[from] hyper::Error),
}

impl ExchangeError {
    /// Whether the request surely never left: the connection did not open,
    /// or closed before the request was written.
    pub fn is_connect(&self) -> bool {
        !matches!(self, ExchangeError::Http(_))
    }

    /// Whether it failed during the TLS handshake.
    pub fn is_tls_handshake(&self) -> bool {
        matches!(self, ExchangeError::TlsHandshake(_))
    }
}

/// Where a backend lives and how to reach it.
pub struct Connector {
    /// Without the brackets of an IPv6 literal.
    host: Box<str>,
    port: u16,
    /// Parsed once when the host is an address: no resolver call then.
    literal: Option<IpAddr>,
    /// The name is `None` when the URL's host cannot be one (and no
    /// `server_name` was given): every handshake then fails, saying so.
    tls: Option<(TlsConnector, Option<ServerName<'static>>)>,
    /// For TCP and TLS together: a handshake that stalls is a connection
    /// that did not open, and the request never left.
    timeout: Duration,
    /// `strangler_upstream_connections_total` of the backend.
    opened: IntCounter,
}

impl Connector {
    /// `tls` is the client configuration of an `https://` URL, with ALPN
    /// set; `server_name` overrides the name the certificate must carry.
    pub fn new(
        url: &Uri,
        tls: Option<Arc<ClientConfig>>,
        server_name: Option<ServerName<'static>>,
        timeout: Duration,
        opened: IntCounter,
    ) -> Connector {
        let host = url
            .host()
            .unwrap_or("invalid")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let is_https = url.scheme() == Some(&Scheme::HTTPS);
        let port = url.port_u16().unwrap_or(if is_https { 443 } else { 80 });
        let tls = tls.filter(|_| is_https).map(|config| {
            let name = server_name.or_else(|| ServerName::try_from(host.to_string()).ok());
            (TlsConnector::from(config), name)
        });
        Connector {
            host: host.into(),
            port,
            literal: host.parse().ok(),
            tls,
            timeout,
            opened,
        }
    }

    /// A new connection, ready for its first request; its I/O runs in a
    /// task of the current runtime until the connection closes.
    pub async fn connect(&self) -> Result<SendRequest<ProxyBody>, ExchangeError> {
        let tls = match &self.tls {
            None => None,
            Some((connector, Some(name))) => Some((connector, name.clone())),
            Some((_, None)) => {
                return Err(ExchangeError::TlsHandshake(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "`{}` is not a name a certificate can carry; set tls.server_name",
                        self.host
                    ),
                )))
            }
        };
        let opening = async {
            let tcp = self.tcp().await?;
            match tls {
                None => start_http1(tcp).await,
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name, tcp)
                        .await
                        .map_err(ExchangeError::TlsHandshake)?;
                    start_http1(tls).await
                }
            }
        };
        let sender = tokio::time::timeout(self.timeout, opening)
            .await
            .map_err(|_| ExchangeError::ConnectTimeout(self.timeout))??;
        self.opened.inc();
        Ok(sender)
    }

    /// Tries each address of the host in turn, as resolvers order them.
    async fn tcp(&self) -> Result<TcpStream, ExchangeError> {
        let addrs: Vec<SocketAddr> = match self.literal {
            Some(ip) => vec![SocketAddr::new(ip, self.port)],
            None => tokio::net::lookup_host((&*self.host, self.port))
                .await
                .map_err(|source| ExchangeError::Resolve {
                    host: self.host.clone(),
                    source,
                })?
                .collect(),
        };
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    configure(&stream);
                    return Ok(stream);
                }
                Err(source) => last = Some(ExchangeError::Connect { addr, source }),
            }
        }
        Err(last.unwrap_or_else(|| ExchangeError::NoAddress {
            host: self.host.clone(),
        }))
    }
}

/// Small answers should not wait for Nagle's algorithm; keep-alive probes
/// find a backend that vanished without closing.
fn configure(stream: &TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY on a backend connection");
    }
    let probes = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    if let Err(err) = socket2::SockRef::from(stream).set_tcp_keepalive(&probes) {
        tracing::debug!(error = %err, "cannot set keep-alive on a backend connection");
    }
}

async fn start_http1<T>(io: T) -> Result<SendRequest<ProxyBody>, ExchangeError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let io = TokioIo::new(crate::small_writes::Joined(io));
    let (sender, connection) = http1::Builder::new().handshake(io).await?;
    tokio::spawn(async move {
        // Upgrades: a 101 hands the socket to the tunnel (proxy/upgrade.rs).
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(error = %err, "backend connection ended with an error");
        }
    });
    Ok(sender)
}

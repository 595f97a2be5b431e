//! What can go wrong talking to a backend, in the proxy's terms.

use std::time::Duration;

use super::connect::ExchangeError;
use crate::body::BoxError;
use crate::routing::BackendName;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The connection was never established: the backend never saw the request.
    #[error("could not connect to backend `{backend}`")]
    Connect {
        backend: BackendName,
        #[source]
        source: BoxError,
    },

    #[error("backend `{backend}` gave no answer within {after:?}")]
    Timeout {
        backend: BackendName,
        after: Duration,
    },

    #[error("backend `{backend}` reset the connection")]
    Reset {
        backend: BackendName,
        #[source]
        source: BoxError,
    },

    #[error("TLS with backend `{backend}` failed")]
    Tls {
        backend: BackendName,
        #[source]
        source: BoxError,
    },

    #[error("backend `{backend}` broke the HTTP protocol")]
    Protocol {
        backend: BackendName,
        #[source]
        source: BoxError,
    },

    #[error("circuit for backend `{backend}` is open")]
    CircuitOpen { backend: BackendName },
}

/// Index into `metrics::ERROR_KINDS`.
pub type ErrorKindIndex = usize;

impl UpstreamError {
    /// The `kind` label of `strangler_upstream_errors_total`, as an index
    /// into `metrics::ERROR_KINDS` (connect, timeout, reset, tls, protocol).
    pub fn kind(&self) -> ErrorKindIndex {
        match self {
            UpstreamError::Connect { .. } | UpstreamError::CircuitOpen { .. } => 0,
            UpstreamError::Timeout { .. } => 1,
            UpstreamError::Reset { .. } => 2,
            UpstreamError::Tls { .. } => 3,
            UpstreamError::Protocol { .. } => 4,
        }
    }

    /// Whether the backend may have received (and acted on) the request.
    /// Only when it surely did not is a non-idempotent request safe to resend.
    pub fn may_have_reached_backend(&self) -> bool {
        !matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::CircuitOpen { .. }
        )
    }

    /// Whether a deadline ran out: no answer in time, or no connection.
    pub fn is_timeout(&self) -> bool {
        match self {
            UpstreamError::Timeout { .. } => true,
            UpstreamError::Connect { source, .. } => matches!(
                source.downcast_ref::<ExchangeError>(),
                Some(ExchangeError::ConnectTimeout(_))
            ),
            _ => false,
        }
    }

    pub fn backend(&self) -> &BackendName {
        match self {
            UpstreamError::Connect { backend, .. }
            | UpstreamError::Timeout { backend, .. }
            | UpstreamError::Reset { backend, .. }
            | UpstreamError::Tls { backend, .. }
            | UpstreamError::Protocol { backend, .. }
            | UpstreamError::CircuitOpen { backend } => backend,
        }
    }

    /// Sorts an exchange error into a kind by walking its causes.
    pub(crate) fn classify(backend: &BackendName, err: ExchangeError) -> UpstreamError {
        let backend = backend.clone();
        // Before `is_connect`: a failed handshake is also a failed connect,
        // but the operator needs to know it was TLS (a certificate, a name).
        // With TLS 1.3 a refused client certificate only shows on the first
        // read, as an HTTP error.
        if err.is_tls_handshake() || super::tls::is_tls_failure(&err) {
            return UpstreamError::Tls {
                backend,
                source: Box::new(err),
            };
        }
        if err.is_connect() {
            return UpstreamError::Connect {
                backend,
                source: Box::new(err),
            };
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                if matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted) {
                    return UpstreamError::Reset {
                        backend,
                        source: Box::new(err),
                    };
                }
            }
            if let Some(hyper_err) = c.downcast_ref::<hyper::Error>() {
                if hyper_err.is_incomplete_message() || hyper_err.is_closed() {
                    return UpstreamError::Reset {
                        backend,
                        source: Box::new(err),
                    };
                }
            }
            cause = c.source();
        }
        UpstreamError::Protocol {
            backend,
            source: Box::new(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classified(err: ExchangeError) -> UpstreamError {
        UpstreamError::classify(&BackendName::from("svc"), err)
    }

    #[test]
    fn a_connect_that_ran_out_of_time_is_a_timeout() {
        let err = classified(ExchangeError::ConnectTimeout(Duration::from_secs(1)));
        assert!(matches!(err, UpstreamError::Connect { .. }));
        assert!(err.is_timeout());
    }

    #[test]
    fn a_refused_connect_is_not_a_timeout() {
        let err = classified(ExchangeError::Connect {
            addr: "127.0.0.1:9".parse().expect("address"),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        });
        assert!(matches!(err, UpstreamError::Connect { .. }));
        assert!(!err.is_timeout());
    }
}

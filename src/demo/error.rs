//! Why the demo could not start or report.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot bind the {what} listener on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write the demo's files under {}", path.display())]
    Files {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The proxy refused the demo's routes: a bug in the demo.
    #[error("the proxy did not start")]
    Run(#[source] crate::RunError),

    #[error("the proxy stopped before the demo did")]
    ProxyStopped,

    #[error("admin API request `{path}` failed")]
    Admin {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

//! Tunnelling upgraded connections (WebSocket and other `Upgrade`s).
//!
//! When the backend answers 101, both sides' connections are handed over
//! by hyper and bytes are copied both ways until either side closes.

use crate::upstream::UpstreamBody;
use http::request::Parts;
use http::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::headers;
use crate::routing::RouteName;

/// The client's pending upgrade, when it asked for one. Must be taken
/// before the request is forwarded.
pub fn take_client_upgrade(parts: &mut Parts) -> Option<OnUpgrade> {
    if !headers::is_upgrade(&parts.headers) {
        return None;
    }
    parts.extensions.remove::<OnUpgrade>()
}

/// Spawns the byte pump between the client and the backend.
pub fn tunnel(client: OnUpgrade, response: &mut Response<UpstreamBody>, route: RouteName) {
    let backend = hyper::upgrade::on(response);
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(route = %route, error = %err, "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
        if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(route = %route, error = %err, "upgraded connection ended with an error");
        }
    });
}

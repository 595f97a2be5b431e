//! Header hygiene between client and backend: hop-by-hop removal,
//! `X-Forwarded-*`/`Forwarded`, `Via`, the request id.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// Marks a mirrored request; a client may not set it.
pub static X_STRANGLER_SHADOW: HeaderName = HeaderName::from_static("x-strangler-shadow");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
];

/// Whether the request asks for a protocol upgrade (e.g. WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers and those named in `Connection`. For an
/// upgrade, `Connection: upgrade` and `Upgrade` are put back: the upgrade
/// is what the client asked the backend for.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names, no hashing, and
    // nothing to do (19 hashed removals otherwise, on every message).
    let has_any = headers
        .keys()
        .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(&name));
    if !has_any {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in named.iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if let (true, Some(upgrade)) = (keep_upgrade, upgrade) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

/// What the proxy knows of the client, to tell the backend.
pub struct ForwardedFor<'a> {
    /// The believed client address (see `client::client_addr`).
    pub client_ip: IpAddr,
    /// The connection's peer.
    pub peer_ip: IpAddr,
    /// The incoming chain plus the peer, when the peer is a trusted proxy.
    pub chain: Option<&'a HeaderValue>,
    pub proto: &'static str,
    pub host: Option<&'a str>,
}

/// Rebuilds `X-Forwarded-For`: the peer's address, after the incoming chain
/// only when the peer is a trusted proxy. Sets `X-Forwarded-Proto`,
/// `X-Forwarded-Host` and RFC 7239 `Forwarded` (for the believed client).
pub fn set_forwarded(headers: &mut HeaderMap, info: &ForwardedFor) {
    match info.chain {
        Some(chain) => {
            headers.insert(&X_FORWARDED_FOR, chain.clone());
        }
        None => {
            if let Ok(value) = HeaderValue::from_str(&info.peer_ip.to_string()) {
                headers.insert(&X_FORWARDED_FOR, value);
            }
        }
    }
    let ip = info.client_ip.to_string();
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(info.proto));
    let host_value = info.host.and_then(|h| HeaderValue::from_str(h).ok());
    match &host_value {
        Some(host) => headers.insert(&X_FORWARDED_HOST, host.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    let node = match info.client_ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(_) => format!("\"[{ip}]\""),
    };
    let mut forwarded = format!("for={node};proto={}", info.proto);
    if let Some(host) = info
        .host
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
    {
        forwarded.push_str(";host=\"");
        forwarded.push_str(host);
        forwarded.push('"');
    }
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(&FORWARDED, value);
    }
}

/// The client's request id when it is sane (visible ASCII, at most 128
/// bytes), otherwise a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| {
            v.len() <= 128 && !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_graphic)
        })
        .cloned()
        .unwrap_or_else(new_request_id)
}

fn new_request_id() -> HeaderValue {
    let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    HeaderValue::from_str(&id).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut headers, false);
        assert!(headers.get("x-secret").is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert!(headers.get("keep-alive").is_none());
        assert_eq!(headers.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn forwarded_quotes_ipv6_and_replaces_spoofed_x_forwarded_for() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_FOR, "6.6.6.6".parse().unwrap());
        let ip = "::1".parse().unwrap();
        let info = ForwardedFor {
            client_ip: ip,
            peer_ip: ip,
            chain: None,
            proto: "http",
            host: Some("shop.test"),
        };
        set_forwarded(&mut headers, &info);
        assert_eq!(headers.get(&X_FORWARDED_FOR).unwrap(), "::1");
        assert_eq!(
            headers.get(&FORWARDED).unwrap(),
            "for=\"[::1]\";proto=http;host=\"shop.test\""
        );
    }
}

//! Header hygiene between client and backend: hop-by-hop removal,
//! `X-Forwarded-*`/`Forwarded`, `Via`, the request id.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Mutex;

use bytes::Bytes;

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
    // One pass over the names, comparing without hashing, finds which are
    // here: most requests carry none, and most answers of a keep-alive
    // backend only `Connection: keep-alive`. Only those are removed.
    let mut present = 0u16;
    let mut has_upgrade = false;
    for name in headers.keys() {
        if name == header::UPGRADE {
            has_upgrade = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|hop| *hop == name) {
            present |= 1 << i;
        }
    }
    if present == 0 && !has_upgrade {
        return;
    }
    // `HOP_BY_HOP[0]` is `Connection`. Its usual tokens name no header of
    // their own (`keep-alive` is removed above in any case).
    let named: Vec<HeaderName> = if present & 1 == 1 {
        connection_tokens(headers)
            .filter(|t| {
                !["keep-alive", "close", "upgrade"]
                    .iter()
                    .any(|u| t.eq_ignore_ascii_case(u))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    for name in &named {
        headers.remove(name);
    }
    for (i, hop) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*hop);
        }
    }
    let upgrade = if has_upgrade {
        headers.remove(header::UPGRADE)
    } else {
        None
    };
    if let (true, Some(upgrade)) = (keep_upgrade, upgrade) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

/// The forwarding headers that depend only on the connection's peer, built
/// once per connection rather than once per request: formatting an address
/// and copying it into header values was a tenth of a small request's cost.
#[derive(Debug)]
pub struct PeerHeaders {
    peer_ip: IpAddr,
    /// The peer's address: `X-Forwarded-For` when no chain is believed.
    peer: HeaderValue,
    /// `Forwarded` for the peer and the host last seen on this connection
    /// (a connection nearly always names one host).
    forwarded: Mutex<Option<(Option<HeaderValue>, HeaderValue)>>,
}

impl PeerHeaders {
    pub fn new(peer_ip: IpAddr) -> Self {
        let mut buf = [0u8; 64];
        let peer = HeaderValue::from_bytes(ip_text(peer_ip, &mut buf))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        PeerHeaders {
            peer_ip,
            peer,
            forwarded: Mutex::new(None),
        }
    }

    /// `Forwarded` for `client_ip`: from the cache when it is the peer and
    /// the host is the one last seen.
    fn forwarded(&self, client_ip: IpAddr, proto: &str, host: Option<&HeaderValue>) -> HeaderValue {
        if client_ip != self.peer_ip {
            return forwarded_value(client_ip, proto, host);
        }
        let Ok(mut cached) = self.forwarded.lock() else {
            return forwarded_value(client_ip, proto, host);
        };
        match &*cached {
            Some((for_host, value)) if for_host.as_ref() == host => value.clone(),
            _ => {
                let value = forwarded_value(client_ip, proto, host);
                // A copy: the request's value shares hyper's read buffer,
                // which the cache would otherwise keep for the connection's
                // whole life (and a parked connection must hold none).
                let host = host.and_then(|h| HeaderValue::from_bytes(h.as_bytes()).ok());
                *cached = Some((host, value.clone()));
                value
            }
        }
    }
}

/// What the proxy knows of the client, to tell the backend.
pub struct ForwardedFor<'a> {
    /// The believed client address (see `client::client_addr`).
    pub client_ip: IpAddr,
    /// The connection's peer.
    pub peer: &'a PeerHeaders,
    /// The incoming chain plus the peer, when the peer is a trusted proxy.
    pub chain: Option<&'a HeaderValue>,
    pub proto: &'static str,
    /// The host the client addressed (validated as an authority).
    pub host: Option<&'a HeaderValue>,
}

/// Rebuilds `X-Forwarded-For`: the peer's address, after the incoming chain
/// only when the peer is a trusted proxy. Sets `X-Forwarded-Proto`,
/// `X-Forwarded-Host` and RFC 7239 `Forwarded` (for the believed client).
pub fn set_forwarded(headers: &mut HeaderMap, info: &ForwardedFor) {
    let chain = info.chain.unwrap_or(&info.peer.peer);
    headers.insert(&X_FORWARDED_FOR, chain.clone());
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(info.proto));
    match info.host {
        Some(host) => headers.insert(&X_FORWARDED_HOST, host.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    let forwarded = info.peer.forwarded(info.client_ip, info.proto, info.host);
    headers.insert(&FORWARDED, forwarded);
}

/// `for=NODE;proto=P;host="H"` (RFC 7239), the host only when it needs no
/// escaping inside the quotes.
fn forwarded_value(client_ip: IpAddr, proto: &str, host: Option<&HeaderValue>) -> HeaderValue {
    let mut buf = [0u8; 64];
    let ip = ip_text(client_ip, &mut buf);
    let mut value = Vec::with_capacity(64);
    value.extend_from_slice(b"for=");
    match client_ip {
        IpAddr::V4(_) => value.extend_from_slice(ip),
        IpAddr::V6(_) => {
            value.extend_from_slice(b"\"[");
            value.extend_from_slice(ip);
            value.extend_from_slice(b"]\"");
        }
    }
    value.extend_from_slice(b";proto=");
    value.extend_from_slice(proto.as_bytes());
    if let Some(host) = host.filter(|h| {
        h.as_bytes()
            .iter()
            .all(|b| b.is_ascii_graphic() && *b != b'"')
    }) {
        value.extend_from_slice(b";host=\"");
        value.extend_from_slice(host.as_bytes());
        value.push(b'"');
    }
    HeaderValue::from_maybe_shared(Bytes::from(value))
        .unwrap_or_else(|_| HeaderValue::from_static("for=unknown"))
}

/// The address as text, in `buf` (an IPv6 address takes at most 45 bytes).
/// IPv4 in digits: `Display` goes through the formatting machinery, a
/// call per octet and dot, for each new connection and each access line.
pub(crate) fn ip_text(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                let text = digits.format(octet).as_bytes();
                let dot = usize::from(i > 0);
                // At most 15 bytes in all.
                if let Some(slot) = buf.get_mut(len..len + dot + text.len()) {
                    slot[..dot].copy_from_slice(&b"."[..dot]);
                    slot[dot..].copy_from_slice(text);
                    len += dot + text.len();
                }
            }
            &buf[..len]
        }
        IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let len = match write!(cursor, "{v6}") {
                Ok(()) => usize::try_from(cursor.position()).unwrap_or(0),
                Err(_) => 0,
            };
            &buf[..len]
        }
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

/// The `x-request-id` of an answer to the client. Marked sensitive, which
/// HTTP/2 sends as "never indexed": each value is new, and indexed it would
/// take an entry in the connection's HPACK table per answer, evicting the
/// headers that do repeat (`server`, `content-type`). About 3% of the CPU
/// of an HTTP/2 request (`benches/RESULTS.md`); HTTP/1 ignores the mark.
pub fn answer_request_id(request_id: &HeaderValue) -> HeaderValue {
    let mut value = request_id.clone();
    value.set_sensitive(true);
    value
}

/// 32 random hex digits, formatted on the stack.
fn new_request_id() -> HeaderValue {
    let mut id = [0u8; 32];
    super::trace::write_hex(&mut id, fastrand::u128(..));
    // Owned, not copied from a slice: the id is cloned into the upstream
    // request, and the first clone of copied bytes allocates again.
    HeaderValue::from_maybe_shared(Bytes::from_owner(id))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_request_id_is_the_same_value_marked_never_indexed() {
        let id = new_request_id();
        assert!(!id.is_sensitive());
        let answer = answer_request_id(&id);
        assert_eq!(answer, id);
        assert!(answer.is_sensitive(), "HPACK would index a unique value");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.12.7",
            "127.0.0.1",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = text.parse().expect("an address");
            assert_eq!(ip_text(ip, &mut [0; 64]), ip.to_string().as_bytes());
        }
    }

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
    fn an_upgrade_is_kept_only_when_asked_and_other_named_headers_go() {
        let upgrade_request = || {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONNECTION, "Upgrade, close, X-Hop".parse().unwrap());
            headers.insert(header::UPGRADE, "websocket".parse().unwrap());
            headers.insert("x-hop", "1".parse().unwrap());
            headers.insert(header::TE, "trailers".parse().unwrap());
            headers
        };
        let mut kept = upgrade_request();
        remove_hop_by_hop(&mut kept, true);
        assert_eq!(kept.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(kept.get(header::UPGRADE).unwrap(), "websocket");
        assert!(kept.get("x-hop").is_none() && kept.get(header::TE).is_none());
        let mut dropped = upgrade_request();
        remove_hop_by_hop(&mut dropped, false);
        assert!(dropped.is_empty(), "{dropped:?}");
    }

    #[test]
    fn forwarded_quotes_ipv6_and_replaces_spoofed_x_forwarded_for() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_FOR, "6.6.6.6".parse().unwrap());
        let ip = "::1".parse().unwrap();
        let peer = PeerHeaders::new(ip);
        let host = HeaderValue::from_static("shop.test");
        let info = ForwardedFor {
            client_ip: ip,
            peer: &peer,
            chain: None,
            proto: "http",
            host: Some(&host),
        };
        set_forwarded(&mut headers, &info);
        assert_eq!(headers.get(&X_FORWARDED_FOR).unwrap(), "::1");
        assert_eq!(
            headers.get(&FORWARDED).unwrap(),
            "for=\"[::1]\";proto=http;host=\"shop.test\""
        );
    }

    #[test]
    fn the_cached_forwarded_follows_the_host_and_the_client() {
        let peer_ip = "192.0.2.7".parse().unwrap();
        let peer = PeerHeaders::new(peer_ip);
        let (shop, admin) = (
            HeaderValue::from_static("shop.test"),
            HeaderValue::from_static("admin.test"),
        );
        let forwarded = |client_ip, host| {
            let mut headers = HeaderMap::new();
            let info = ForwardedFor {
                client_ip,
                peer: &peer,
                chain: None,
                proto: "https",
                host,
            };
            set_forwarded(&mut headers, &info);
            headers.get(&FORWARDED).unwrap().clone()
        };
        assert_eq!(
            forwarded(peer_ip, Some(&shop)),
            "for=192.0.2.7;proto=https;host=\"shop.test\""
        );
        assert_eq!(
            forwarded(peer_ip, Some(&shop)),
            "for=192.0.2.7;proto=https;host=\"shop.test\""
        );
        assert_eq!(
            forwarded(peer_ip, Some(&admin)),
            "for=192.0.2.7;proto=https;host=\"admin.test\""
        );
        assert_eq!(forwarded(peer_ip, None), "for=192.0.2.7;proto=https");
        let client = "203.0.113.9".parse().unwrap();
        assert_eq!(forwarded(client, None), "for=203.0.113.9;proto=https");
    }

    #[test]
    fn new_request_ids_are_32_hex_digits() {
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(id, new_request_id());
    }
}

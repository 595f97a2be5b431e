//! The client's address: whom to believe about it (`trusted_proxies`).
//!
//! An incoming `X-Forwarded-For` is believed only when the peer that sent
//! it is a trusted proxy. Then the client is the right-most address of the
//! chain that is not itself trusted: each trusted hop vouches for the one
//! to its left, and the first untrusted one could have written anything
//! further left. Sticky-by-IP, the access log and `Forwarded` use it.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderValue};
use ipnet::IpNet;

use super::headers::X_FORWARDED_FOR;

/// The networks whose `X-Forwarded-For` is believed; empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Box<[IpNet]>,
}

/// A `trusted_proxies` entry that is neither an address nor a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IP address or a CIDR such as 10.0.0.0/8")]
pub struct BadCidr(pub String);

impl TrustedProxies {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a single address.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<TrustedProxies, BadCidr> {
        let nets = entries
            .into_iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadCidr(entry.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies { nets: nets.into() })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// The believed client address, and the `X-Forwarded-For` to send on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    pub ip: IpAddr,
    /// The incoming chain plus the peer, when the peer is trusted and sent
    /// one; `None` means "the peer alone".
    pub chain: Option<HeaderValue>,
}

/// Decides who the client is. Costs nothing when no proxy is trusted.
pub fn client_addr(headers: &HeaderMap, peer: SocketAddr, trusted: &TrustedProxies) -> ClientAddr {
    let peer_ip = canonical(peer.ip());
    let alone = ClientAddr {
        ip: peer_ip,
        chain: None,
    };
    if trusted.is_empty() || !trusted.contains(peer_ip) {
        return alone;
    }
    let mut incoming = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        // A value that is not visible ASCII cannot be a list of addresses.
        let Ok(text) = value.to_str() else {
            return alone;
        };
        if !incoming.is_empty() {
            incoming.push_str(", ");
        }
        incoming.push_str(text.trim());
    }
    if incoming.is_empty() {
        return alone;
    }
    // Right to left: skip trusted hops; stop at the first untrusted one. An
    // entry that is not an address ends the walk: the hop to its right is
    // the last one we can vouch for.
    let mut client = peer_ip;
    for entry in incoming.rsplit(',') {
        let Some(ip) = parse_entry(entry.trim()) else {
            break;
        };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    let chain = HeaderValue::from_str(&format!("{incoming}, {peer_ip}")).ok();
    ClientAddr { ip: client, chain }
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:80`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(canonical)
}

/// `::ffff:1.2.3.4` (an IPv4 client on a dual-stack socket) as `1.2.3.4`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_FOR, xff.parse().unwrap());
        headers
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 4000)
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let addr = client_addr(&headers("6.6.6.6"), peer("203.0.113.9"), &trusted);
        assert_eq!(
            addr,
            ClientAddr {
                ip: "203.0.113.9".parse().unwrap(),
                chain: None
            }
        );
    }

    #[test]
    fn trusted_peer_yields_the_right_most_untrusted_address() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8", "192.0.2.7"]).unwrap();
        let addr = client_addr(
            &headers("6.6.6.6, 198.51.100.4, 192.0.2.7"),
            peer("10.1.2.3"),
            &trusted,
        );
        assert_eq!(addr.ip, "198.51.100.4".parse::<IpAddr>().unwrap());
        assert_eq!(
            addr.chain.unwrap(),
            "6.6.6.6, 198.51.100.4, 192.0.2.7, 10.1.2.3"
        );
    }

    #[test]
    fn garbage_in_the_chain_stops_at_the_last_vouched_hop() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let addr = client_addr(
            &headers("6.6.6.6, nonsense, 10.0.0.5"),
            peer("10.0.0.1"),
            &trusted,
        );
        assert_eq!(addr.ip, "10.0.0.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn entries_with_ports_and_mapped_addresses_are_understood() {
        let trusted = TrustedProxies::parse(["127.0.0.1"]).unwrap();
        let addr = client_addr(
            &headers("[2001:db8::1]:443"),
            peer("::ffff:127.0.0.1"),
            &trusted,
        );
        assert_eq!(addr.ip, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn bad_entries_are_refused() {
        assert_eq!(
            TrustedProxies::parse(["10.0.0.0/33"]),
            Err(BadCidr("10.0.0.0/33".into()))
        );
    }
}

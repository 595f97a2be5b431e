//! Weighted choice between backends, sticky by a key when the route says so.
//!
//! A key (user id, cookie, client address) is hashed into one of 10,000
//! buckets, the resolution of a 0.01% weight. Each backend owns a contiguous
//! range of buckets, and the incumbent (the monolith) always owns the top
//! range. Raising the new service's weight therefore only moves buckets from
//! the incumbent to it, never the other way: the assignment is monotone, and
//! every replica computes the same answer without talking to the others.

use std::net::IpAddr;

use http::{header::COOKIE, HeaderMap, HeaderName};

use super::BackendId;
use crate::hash::{fnv1a, FNV_OFFSET};

pub const BUCKETS: u32 = 10_000;

/// Where a sticky key comes from.
#[derive(Debug, Clone)]
pub enum StickyKey {
    Header(HeaderName),
    Cookie(Box<str>),
    ClientIp,
}

/// One backend's share: it owns buckets from the previous choice's
/// `upper_bucket` up to (not including) its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitChoice {
    pub backend: BackendId,
    pub upper_bucket: u32,
}

#[derive(Debug, Clone)]
pub struct Split {
    /// Ascending `upper_bucket`; the last one is the incumbent and ends at `BUCKETS`.
    pub choices: Box<[SplitChoice]>,
    pub sticky: Option<StickyKey>,
    /// Mixed into the hash so that two routes split users independently.
    pub salt: u64,
}

impl Split {
    /// Builds the ranges from `(backend, basis points)` shares; the incumbent
    /// is placed last so it keeps the top range.
    pub fn new(
        mut shares: Vec<(BackendId, u32)>,
        incumbent: Option<BackendId>,
        sticky: Option<StickyKey>,
        salt_source: &str,
    ) -> Split {
        shares.sort_by_key(|(backend, _)| Some(*backend) == incumbent);
        let mut upper = 0;
        let choices = shares
            .into_iter()
            .map(|(backend, share)| {
                upper = (upper + share).min(BUCKETS);
                SplitChoice {
                    backend,
                    upper_bucket: upper,
                }
            })
            .collect();
        Split {
            choices,
            sticky,
            salt: salt_of(salt_source),
        }
    }

    /// The backend for a bucket; buckets beyond the last range (weights that
    /// add to less than 100%) go to the incumbent.
    pub fn backend_for_bucket(&self, bucket: u32) -> Option<BackendId> {
        self.choices
            .iter()
            .find(|c| bucket < c.upper_bucket)
            .or(self.choices.last())
            .map(|c| c.backend)
    }

    /// The bucket of this request: from its sticky key when it has one,
    /// otherwise random (per request).
    pub fn bucket(&self, headers: &HeaderMap, client_ip: IpAddr) -> u32 {
        request_bucket(self.sticky.as_ref(), self.salt, headers, client_ip)
    }
}

/// The salt of a route's hash, from its name.
pub fn salt_of(route: &str) -> u64 {
    fnv1a(FNV_OFFSET, route.as_bytes())
}

/// A request's bucket: the hash of its sticky key, or random without one.
pub fn request_bucket(
    sticky: Option<&StickyKey>,
    salt: u64,
    headers: &HeaderMap,
    client_ip: IpAddr,
) -> u32 {
    let key = match sticky {
        Some(StickyKey::Header(name)) => headers.get(name).map(|v| v.as_bytes()),
        Some(StickyKey::Cookie(name)) => cookie_value(headers, name),
        Some(StickyKey::ClientIp) => {
            return match client_ip {
                IpAddr::V4(ip) => bucket_of(salt, &ip.octets()),
                IpAddr::V6(ip) => bucket_of(salt, &ip.octets()),
            }
        }
        None => None,
    };
    match key {
        Some(key) => bucket_of(salt, key),
        None => fastrand::u32(..BUCKETS),
    }
}

/// The bucket of a key: FNV-1a, stable across builds and platforms (unlike
/// std's `DefaultHasher`), so replicas of different versions agree.
pub fn bucket_of(salt: u64, key: &[u8]) -> u32 {
    let hash = fnv1a(salt, key);
    // Mix the high bits down: FNV's low bits are weak for short keys.
    let mixed = hash ^ (hash >> 32);
    (mixed % u64::from(BUCKETS)) as u32
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(new_bp: u32) -> Split {
        Split::new(
            vec![(BackendId(0), BUCKETS - new_bp), (BackendId(1), new_bp)],
            Some(BackendId(0)),
            None,
            "checkout",
        )
    }

    #[test]
    fn incumbent_keeps_the_top_range_so_raising_the_weight_only_moves_users_forward() {
        let (low, high) = (split(3_000), split(6_000));
        for bucket in 0..BUCKETS {
            let before = low.backend_for_bucket(bucket);
            let after = high.backend_for_bucket(bucket);
            if before == Some(BackendId(1)) {
                assert_eq!(after, Some(BackendId(1)), "bucket {bucket} moved back");
            }
        }
    }

    #[test]
    fn cookie_values_are_found_among_several() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "a=1; uid=42 ; b=2".parse().unwrap());
        assert_eq!(cookie_value(&headers, "uid"), Some(&b"42"[..]));
        assert_eq!(cookie_value(&headers, "zz"), None);
    }
}

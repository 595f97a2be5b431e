//! Request framing checks hyper leaves to us: what a request must not be
//! before it may be forwarded.
//!
//! hyper's HTTP/1 parser already refuses obs-fold, whitespace before a
//! colon, differing `Content-Length`s, a non-digit `Content-Length`, a
//! `Transfer-Encoding` whose last coding is not `chunked`, bad chunk sizes
//! and oversized heads (431). `server::wire` refuses, below hyper, what the
//! parser accepts or erases before we could see it (bare LF, `Content-Length`
//! with `Transfer-Encoding`, repeated `Content-Length`). What remains, and
//! what HTTP/2 requests could carry, is checked here; every refusal closes an
//! HTTP/1 connection, since after an ambiguous message nothing that follows
//! on it can be trusted.

use http::{header, HeaderMap, Method, Request};
use hyper::body::Incoming;

use super::headers::is_upgrade;
use crate::server::ConnLimits;

/// The longest request target (path and query) accepted; 414 beyond.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("CONNECT is not served: this is not a forward proxy")]
    Connect,
    #[error("header name `{0}` contains `_`")]
    UnderscoreInName(UnderscoreName),
    #[error("Transfer-Encoding other than exactly `chunked`")]
    TransferEncoding,
    #[error("Content-Length repeated or not only digits")]
    ContentLength,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndEncoding,
    #[error("an upgrade request with a body")]
    BodyOnUpgrade,
    #[error("more than {0} headers")]
    TooManyHeaders(usize),
    #[error("request target longer than {MAX_TARGET_BYTES} bytes")]
    TargetTooLong,
}

/// The first bytes of an offending header name, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderscoreName {
    bytes: [u8; 32],
    len: u8,
}

impl std::fmt::Display for UnderscoreName {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?"))
    }
}

/// Checks a request before anything is chosen or sent for it.
pub fn check(req: &Request<Incoming>, limits: &ConnLimits) -> Result<(), FramingError> {
    if req.method() == Method::CONNECT {
        return Err(FramingError::Connect);
    }
    let headers = req.headers();
    if headers.len() > limits.max_headers {
        return Err(FramingError::TooManyHeaders(limits.max_headers));
    }
    if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > MAX_TARGET_BYTES {
        return Err(FramingError::TargetTooLong);
    }
    check_names(headers)?;
    let has_encoding = check_transfer_encoding(headers)?;
    let length = check_content_length(headers)?;
    if has_encoding && length.is_some() {
        return Err(FramingError::LengthAndEncoding);
    }
    if is_upgrade(headers) && (has_encoding || length.is_some_and(|n| n > 0)) {
        return Err(FramingError::BodyOnUpgrade);
    }
    Ok(())
}

fn check_names(headers: &HeaderMap) -> Result<(), FramingError> {
    // `keys` visits each name once, however many values it has.
    match headers.keys().find(|name| name.as_str().contains('_')) {
        None => Ok(()),
        Some(name) => {
            let text = name.as_str().as_bytes();
            let len = text.len().min(32);
            let mut bytes = [0u8; 32];
            bytes[..len].copy_from_slice(&text[..len]);
            Err(FramingError::UnderscoreInName(UnderscoreName {
                bytes,
                len: len as u8,
            }))
        }
    }
}

/// Whether the request is chunked; anything but one `chunked` is refused.
fn check_transfer_encoding(headers: &HeaderMap) -> Result<bool, FramingError> {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(false),
        (Some(value), None) if value.as_bytes().eq_ignore_ascii_case(b"chunked") => Ok(true),
        _ => Err(FramingError::TransferEncoding),
    }
}

fn check_content_length(headers: &HeaderMap) -> Result<Option<u64>, FramingError> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => {
            let bytes = value.as_bytes();
            if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
                return Err(FramingError::ContentLength);
            }
            Ok(std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| text.parse().ok()))
        }
        _ => Err(FramingError::ContentLength),
    }
}

/// Whether an HTTP/1 connection must close after answering this request:
/// `server::wire` stops following the byte stream after a chunked body or
/// an upgrade, so no further request may be read from that connection.
pub fn must_close_after(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING) || headers.contains_key(header::UPGRADE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    #[test]
    fn transfer_encoding_must_be_exactly_chunked() {
        assert_eq!(
            check_transfer_encoding(&map(&[("transfer-encoding", "Chunked")])),
            Ok(true)
        );
        for bad in ["gzip, chunked", "chunked, chunked", "identity", " chunked"] {
            let headers = map(&[("transfer-encoding", bad)]);
            assert_eq!(
                check_transfer_encoding(&headers),
                Err(FramingError::TransferEncoding),
                "{bad}"
            );
        }
        let twice = map(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ]);
        assert_eq!(
            check_transfer_encoding(&twice),
            Err(FramingError::TransferEncoding)
        );
    }

    #[test]
    fn content_length_is_one_run_of_digits() {
        assert_eq!(
            check_content_length(&map(&[("content-length", "42")])),
            Ok(Some(42))
        );
        for bad in ["+42", "4 2", "0x10", "", "99999999999999999999"] {
            let headers = map(&[("content-length", bad)]);
            assert_eq!(
                check_content_length(&headers),
                Err(FramingError::ContentLength),
                "{bad:?}"
            );
        }
        let twice = map(&[("content-length", "1"), ("content-length", "1")]);
        assert_eq!(
            check_content_length(&twice),
            Err(FramingError::ContentLength)
        );
    }

    #[test]
    fn underscore_names_are_named_in_the_error() {
        let err = check_names(&map(&[("x-ok", "1"), ("x_user", "admin")])).unwrap_err();
        assert_eq!(err.to_string(), "header name `x_user` contains `_`");
    }
}

//! Path normalisation: the path that is routed is the path that is forwarded.
//!
//! Follows RFC 3986 and Envoy's edge defaults: percent-encoded unreserved
//! characters are decoded, `.` and `..` segments resolved, `//` merged,
//! and raw non-ASCII (UTF-8) characters percent-encoded, upper case.
//! Encoded slashes and backslashes, `\`, NUL and invalid or overlong UTF-8
//! are rejected, because a backend that decodes them differently could see
//! a path outside the route that was chosen. `;` parameters are kept as
//! written and match literally. Matching is case-sensitive.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path contains an encoded slash or backslash")]
    EncodedSeparator,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a NUL or control character")]
    ControlCharacter,
    #[error("the path has a malformed percent-encoding")]
    BadPercentEncoding,
    #[error("the path is not valid UTF-8 once decoded")]
    InvalidUtf8,
    #[error("the path does not start with `/`")]
    NotAbsolute,
}

/// The normalised form of `raw`; borrowed when it is already normal.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(raw)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// The common case: nothing to decode, no dot segment, no empty segment.
fn is_plain(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let clean_bytes = bytes
        .iter()
        .all(|&b| b.is_ascii_graphic() && b != b'%' && b != b'\\');
    clean_bytes
        && !raw.contains("//")
        && !raw
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` of unreserved characters, upper-cases the rest, and
/// checks that the fully decoded path would be valid UTF-8.
fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut fully_decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadPercentEncoding);
                };
                let value = hi << 4 | lo;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                    _ => {}
                }
                fully_decoded.push(value);
                if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                    out.push(value as char);
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            // Raw UTF-8, which `http` accepts in a path, is written encoded
            // (`é` as `%C3%A9`): pushing each byte as a `char` turned it into
            // mojibake, and encoding gives the raw and the encoded spelling
            // of a character one normal form, so a route matches both or neither.
            0x80..=0xff => {
                fully_decoded.push(b);
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
                i += 1;
            }
            _ => {
                fully_decoded.push(b);
                out.push(b as char);
                i += 1;
            }
        }
    }
    // std's UTF-8 check rejects overlong encodings and surrogates.
    if std::str::from_utf8(&fully_decoded).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    Ok(out)
}

/// RFC 3986 §5.2.4, plus merging of empty segments. `..` above the root
/// stays at the root.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || (trailing && !segments.is_empty()) {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_borrowed() {
        assert!(matches!(normalize("/api/orders/7"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn dots_and_double_slashes_resolve() {
        assert_eq!(
            normalize("/api/./orders//7").as_deref(),
            Ok("/api/orders/7")
        );
        assert_eq!(
            normalize("/api/v2/../orders/").as_deref(),
            Ok("/api/orders/")
        );
        assert_eq!(normalize("/../../etc").as_deref(), Ok("/etc"));
        assert_eq!(normalize("/a/..").as_deref(), Ok("/"));
    }

    #[test]
    fn unreserved_escapes_decode_and_others_stay_encoded() {
        assert_eq!(normalize("/api/%6Frders").as_deref(), Ok("/api/orders"));
        assert_eq!(normalize("/a%20b").as_deref(), Ok("/a%20b"));
        assert_eq!(normalize("/a/%2e%2e/b").as_deref(), Ok("/b"));
        assert_eq!(normalize("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
    }

    /// Found by `fuzz/` (path_normalize): raw UTF-8 came out as mojibake.
    #[test]
    fn raw_utf8_is_encoded_like_its_escaped_spelling() {
        assert_eq!(normalize("/café/./x").as_deref(), Ok("/caf%C3%A9/x"));
        assert_eq!(normalize("/café"), normalize("/caf%c3%a9"));
    }

    #[test]
    fn ambiguous_paths_are_rejected() {
        assert_eq!(normalize("/api%2Forders"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/api%5corders"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/api\\orders"), Err(PathError::Backslash));
        assert_eq!(normalize("/a%00"), Err(PathError::ControlCharacter));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("/%c0%af"), Err(PathError::InvalidUtf8));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
    }
}

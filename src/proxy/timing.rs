//! `Server-Timing` (W3C Server Timing): the proxy's and the backends' share
//! of the time to response headers, for a browser's devtools or a client log.
//!
//! Off unless `server: { server_timing: true }`: it tells anyone who asks
//! how long the backends take. The backend's name is added only on request
//! (`server_timing: { backend_name: true }`), since it tells them which
//! service answered too.

use std::io::{Cursor, Write};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

pub static SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// `proxy;dur=X, upstream;dur=Y`, in milliseconds with 3 decimals. `Y` is
/// the time from sending the request upstream to the answer's headers (every
/// attempt, fallbacks and retries included); `X` is the rest of `total`, the
/// time spent in the proxy itself. Without `upstream` (the proxy answered
/// on its own) there is only `proxy`. With `backend`, the upstream entry
/// also carries `desc="NAME"`, the backend that answered, as a quoted
/// string (RFC 9110 §5.6.4).
pub(crate) fn server_timing(
    total: Duration,
    upstream: Option<Duration>,
    backend: Option<&str>,
) -> HeaderValue {
    let proxy = total.saturating_sub(upstream.unwrap_or_default());
    // On the stack: two numbers of at most 20 digits, the names and a
    // backend name of a hundred-odd bytes fit. A longer name is left out
    // rather than allocated for.
    let mut buf = [0u8; 256];
    let written = write_entries(&mut buf, proxy, upstream, backend)
        .or_else(|| write_entries(&mut buf, proxy, upstream, None));
    match written {
        // Only bytes a header value allows are written (see `write_desc`).
        Some(len) => HeaderValue::from_bytes(&buf[..len])
            .unwrap_or_else(|_| HeaderValue::from_static("proxy")),
        // Only a duration of billions of years overflows the buffer.
        None => HeaderValue::from_static("proxy"),
    }
}

/// Writes the entries into `buf`; the length, or `None` when they do not fit.
fn write_entries(
    buf: &mut [u8],
    proxy: Duration,
    upstream: Option<Duration>,
    backend: Option<&str>,
) -> Option<usize> {
    let mut cursor = Cursor::new(buf);
    write!(cursor, "proxy;dur={:.3}", ms(proxy)).ok()?;
    if let Some(upstream) = upstream {
        write!(cursor, ", upstream;dur={:.3}", ms(upstream)).ok()?;
        if let Some(name) = backend {
            write_desc(&mut cursor, name)?;
        }
    }
    usize::try_from(cursor.position()).ok()
}

/// `;desc="NAME"`: `"` and `\` escaped with `\`; control characters,
/// which no header value may hold, become `?`.
fn write_desc(cursor: &mut Cursor<&mut [u8]>, name: &str) -> Option<()> {
    cursor.write_all(b";desc=\"").ok()?;
    for &b in name.as_bytes() {
        match b {
            b'"' | b'\\' => cursor.write_all(&[b'\\', b]).ok()?,
            b'\t' | 0x20..=0x7e | 0x80..=0xff => cursor.write_all(&[b]).ok()?,
            _ => cursor.write_all(b"?").ok()?,
        }
    }
    cursor.write_all(b"\"").ok()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_total_into_proxy_and_upstream() {
        let value = server_timing(
            Duration::from_micros(12_500),
            Some(Duration::from_micros(10_250)),
            None,
        );
        assert_eq!(value, "proxy;dur=2.250, upstream;dur=10.250");
    }

    #[test]
    fn an_answer_without_a_backend_has_only_proxy_time() {
        assert_eq!(
            server_timing(Duration::from_nanos(1_500), None, Some("orders")),
            "proxy;dur=0.002"
        );
    }

    #[test]
    fn upstream_longer_than_total_gives_zero_proxy_time() {
        let value = server_timing(
            Duration::from_millis(1),
            Some(Duration::from_millis(2)),
            None,
        );
        assert_eq!(value, "proxy;dur=0.000, upstream;dur=2.000");
    }

    #[test]
    fn the_backend_name_is_a_quoted_string_on_the_upstream_entry() {
        let value = server_timing(
            Duration::from_micros(12_500),
            Some(Duration::from_micros(10_250)),
            Some("orders-svc"),
        );
        assert_eq!(
            value,
            "proxy;dur=2.250, upstream;dur=10.250;desc=\"orders-svc\""
        );
    }

    #[test]
    fn quotes_and_backslashes_in_the_name_are_escaped_and_controls_replaced() {
        let value = server_timing(
            Duration::from_millis(2),
            Some(Duration::from_millis(1)),
            Some("a\"b\\c\u{7f}d"),
        );
        assert_eq!(
            value,
            r#"proxy;dur=1.000, upstream;dur=1.000;desc="a\"b\\c?d""#
        );
    }

    #[test]
    fn a_name_too_long_for_the_buffer_is_left_out() {
        let name = "x".repeat(400);
        let value = server_timing(
            Duration::from_millis(2),
            Some(Duration::from_millis(1)),
            Some(&name),
        );
        assert_eq!(value, "proxy;dur=1.000, upstream;dur=1.000");
    }
}

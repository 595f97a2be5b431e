//! `Server-Timing` (W3C Server Timing): the proxy's and the backends' share
//! of the time to response headers, for a browser's devtools or a client log.
//!
//! Off unless `server: { server_timing: true }`: it tells anyone who asks
//! how long the backends take. Backend names are never included.

use std::io::Write;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

pub static SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// `proxy;dur=X, upstream;dur=Y`, in milliseconds with 3 decimals. `Y` is
/// the time from sending the request upstream to the answer's headers (every
/// attempt, fallbacks and retries included); `X` is the rest of `total`, the
/// time spent in the proxy itself. Without `upstream` (the proxy answered
/// on its own) there is only `proxy`.
pub(crate) fn server_timing(total: Duration, upstream: Option<Duration>) -> HeaderValue {
    let proxy = total.saturating_sub(upstream.unwrap_or_default());
    // On the stack: two numbers of at most 20 digits and the names fit.
    let mut buf = [0u8; 96];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let written = match upstream {
        Some(upstream) => write!(
            cursor,
            "proxy;dur={:.3}, upstream;dur={:.3}",
            ms(proxy),
            ms(upstream)
        ),
        None => write!(cursor, "proxy;dur={:.3}", ms(proxy)),
    };
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    match written {
        Ok(()) => HeaderValue::from_bytes(&buf[..len]).expect("digits, letters and punctuation"),
        // Only a duration of billions of years overflows the buffer.
        Err(_) => HeaderValue::from_static("proxy"),
    }
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
        );
        assert_eq!(value, "proxy;dur=2.250, upstream;dur=10.250");
    }

    #[test]
    fn an_answer_without_a_backend_has_only_proxy_time() {
        assert_eq!(
            server_timing(Duration::from_nanos(1_500), None),
            "proxy;dur=0.002"
        );
    }

    #[test]
    fn upstream_longer_than_total_gives_zero_proxy_time() {
        let value = server_timing(Duration::from_millis(1), Some(Duration::from_millis(2)));
        assert_eq!(value, "proxy;dur=0.000, upstream;dur=2.000");
    }
}

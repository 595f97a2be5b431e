//! The access log: one line per request, written straight to stderr in the
//! log format (text or JSON) with a single `write`.
//!
//! Lines look like the rest of the log and obey `RUST_LOG` for the
//! `access` target at INFO, but skip the tracing formatter: through it a
//! line cost about 16,000 instructions, a third more than proxying the
//! request. Here it is a few hundred, into a reused per-thread buffer.
//!
//! A worker thread holds its lines (`batch_on_this_thread`) and writes them
//! together when its runtime is about to wait for events (`flush`, from
//! tokio's park hook), or at `BATCH_MAX`: under load one `write` carries
//! many lines instead of one each, and a line still leaves as soon as the
//! worker runs out of work, or within a few milliseconds when it never
//! does. nginx's `buffer=` and Envoy's flush interval hold lines for up to
//! seconds.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use super::LogFormat;

/// How lines are written, set once by `telemetry::init`; text until then.
static STYLE: OnceLock<Style> = OnceLock::new();

#[derive(Debug, Clone, Copy)]
struct Style {
    format: LogFormat,
    /// Colours as the rest of the log has them at a terminal.
    is_ansi: bool,
}

pub(super) fn set_style(format: LogFormat, is_ansi: bool) {
    let _ = STYLE.set(Style { format, is_ansi });
}

/// Whether `RUST_LOG` lets access lines through (an atomic load and the
/// filter's level check; the answer per filter is cached by tracing).
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// One request's line. Absent fields are left out, as tracing leaves out a
/// `None`.
#[derive(Debug, Default)]
pub(crate) struct AccessLine<'a> {
    /// Only for requests refused before routing ("rejected").
    pub message: Option<&'a str>,
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub span_id: Option<&'a str>,
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub route: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub status: Option<u16>,
    pub duration: Option<Duration>,
    pub error: Option<&'a str>,
}

thread_local! {
    /// The line being written, or on a batching thread the lines held.
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    static IS_BATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Lines a batching thread holds before it writes them without waiting
/// for the turn's end: about 150 lines, a few milliseconds at full load.
const BATCH_MAX: usize = 32 * 1024;

/// Makes this thread hold its lines until `flush` (or `BATCH_MAX`), for a
/// thread whose runtime calls `flush` before it parks. Dropped, the guard
/// writes what is held and ends the batching.
pub(crate) fn batch_on_this_thread() -> Batching {
    IS_BATCHING.set(true);
    Batching(())
}

#[must_use = "lines are held only while the guard lives"]
pub(crate) struct Batching(());

impl Drop for Batching {
    fn drop(&mut self) {
        flush();
        IS_BATCHING.set(false);
    }
}

/// Writes the lines this thread holds, if any.
pub(crate) fn flush() {
    BUFFER.with(|buffer| {
        if let Ok(mut buffer) = buffer.try_borrow_mut() {
            if !buffer.is_empty() {
                write_out(&mut buffer);
            }
        }
    });
}

/// A failed write is dropped: the log must never fail or stall a request.
fn write_out(buffer: &mut Vec<u8>) {
    let _ = std::io::stderr().lock().write_all(buffer);
    buffer.clear();
}

impl AccessLine<'_> {
    /// Writes the line to stderr, or holds it on a batching thread.
    pub(crate) fn write(&self) {
        let style = STYLE.get().copied().unwrap_or(Style {
            format: LogFormat::Text,
            is_ansi: false,
        });
        BUFFER.with(|buffer| {
            let Ok(mut buffer) = buffer.try_borrow_mut() else {
                return;
            };
            self.render(style, SystemTime::now(), &mut buffer);
            if !IS_BATCHING.get() || buffer.len() >= BATCH_MAX {
                write_out(&mut buffer);
            }
        });
    }

    fn render(&self, style: Style, now: SystemTime, out: &mut Vec<u8>) {
        match style.format {
            LogFormat::Text => self.render_text(style.is_ansi, now, out),
            LogFormat::Json => self.render_json(now, out),
        }
    }

    /// `2026-11-26T05:14:22.361001Z  INFO access: request_id="…" … status=200 duration_ms=3.074`
    fn render_text(&self, is_ansi: bool, now: SystemTime, out: &mut Vec<u8>) {
        if is_ansi {
            out.extend_from_slice(b"\x1b[2m");
            timestamp(out, now);
            out.extend_from_slice(b"\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2maccess:\x1b[0m");
        } else {
            timestamp(out, now);
            out.extend_from_slice(b"  INFO access:");
        }
        // ` name=`: each field brings the space before it.
        let field = |out: &mut Vec<u8>, name: &str| {
            out.push(b' ');
            if is_ansi {
                out.extend_from_slice(b"\x1b[3m");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\x1b[0m\x1b[2m=\x1b[0m");
            } else {
                out.extend_from_slice(name.as_bytes());
                out.push(b'=');
            }
        };
        if let Some(message) = self.message {
            out.push(b' ');
            out.extend_from_slice(message.as_bytes());
        }
        field(out, "request_id");
        quoted(out, self.request_id);
        field(out, "trace_id");
        quoted(out, self.trace_id);
        if let Some(span_id) = self.span_id {
            field(out, "span_id");
            quoted(out, span_id);
        }
        if let Some(client) = self.client {
            field(out, "client");
            ip(out, client);
        }
        field(out, "method");
        out.extend_from_slice(self.method.as_bytes());
        for (name, value) in [("route", self.route), ("backend", self.backend)] {
            if let Some(value) = value {
                field(out, name);
                out.extend_from_slice(value.as_bytes());
            }
        }
        if let Some(status) = self.status {
            field(out, "status");
            out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        }
        if let Some(duration) = self.duration {
            field(out, "duration_ms");
            milliseconds(out, duration);
        }
        if let Some(error) = self.error {
            field(out, "error");
            quoted(out, error);
        }
        out.push(b'\n');
    }

    /// The same fields as one JSON object, keys as tracing-subscriber's
    /// flattened JSON writes them (`timestamp`, `level`, …, `target`).
    fn render_json(&self, now: SystemTime, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\"");
        let string = |out: &mut Vec<u8>, name: &str, value: &str| {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            if is_plain(value) {
                out.push(b'"');
                out.extend_from_slice(value.as_bytes());
                out.push(b'"');
            } else {
                let _ = serde_json::to_writer(&mut *out, value);
            }
        };
        if let Some(message) = self.message {
            string(out, "message", message);
        }
        string(out, "request_id", self.request_id);
        string(out, "trace_id", self.trace_id);
        if let Some(span_id) = self.span_id {
            string(out, "span_id", span_id);
        }
        if let Some(client) = self.client {
            out.extend_from_slice(b",\"client\":\"");
            ip(out, client);
            out.push(b'"');
        }
        string(out, "method", self.method);
        if let Some(route) = self.route {
            string(out, "route", route);
        }
        if let Some(backend) = self.backend {
            string(out, "backend", backend);
        }
        if let Some(status) = self.status {
            out.extend_from_slice(b",\"status\":");
            out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        }
        if let Some(duration) = self.duration {
            out.extend_from_slice(b",\"duration_ms\":");
            milliseconds(out, duration);
        }
        if let Some(error) = self.error {
            string(out, "error", error);
        }
        out.extend_from_slice(b",\"target\":\"access\"}\n");
    }
}

/// Printable ASCII without quotes or backslashes: written as is, in
/// quotes, by both formats. Ids and most errors are. (No early exit, so
/// the loop is vectorised.)
fn is_plain(value: &str) -> bool {
    value.bytes().fold(true, |plain, b| {
        plain & (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\')
    })
}

/// A string as Rust's `Debug` quotes it, which is how tracing's text
/// format writes `&str` fields.
fn quoted(out: &mut Vec<u8>, value: &str) {
    if is_plain(value) {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{value:?}");
    }
}

fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.extend_from_slice(crate::proxy::ip_text(ip, &mut [0; 64]));
}

thread_local! {
    /// The RFC 3339 text of the current second, up to the dot: formatted
    /// once a second, not once a line.
    static SECOND: RefCell<(u64, [u8; 20])> = const { RefCell::new((u64::MAX, [0; 20])) };
}

/// `2026-11-26T05:14:22.361001Z`, UTC with microseconds, as tracing writes it.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let second = since_epoch.as_secs();
    let is_cached = SECOND.with(|cached| {
        let Ok(mut cached) = cached.try_borrow_mut() else {
            return false;
        };
        if cached.0 != second {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            // `2026-11-26T05:14:22Z`: keep all but the `Z`.
            if let Some(prefix) = text.as_bytes().get(..19) {
                cached.1[..19].copy_from_slice(prefix);
                cached.1[19] = b'.';
                cached.0 = second;
            }
        }
        let is_cached = cached.0 == second;
        if is_cached {
            out.extend_from_slice(&cached.1);
        }
        is_cached
    });
    if !is_cached {
        let _ = write!(out, "{}", humantime::format_rfc3339_micros(now));
        return;
    }
    let fraction = 1_000_000 + since_epoch.subsec_micros();
    out.extend_from_slice(&itoa::Buffer::new().format(fraction).as_bytes()[1..]);
    out.push(b'Z');
}

/// Milliseconds with microsecond precision: `3.074`, `0.210`.
fn milliseconds(out: &mut Vec<u8>, duration: Duration) {
    let micros = duration.as_micros();
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(micros / 1000).as_bytes());
    out.push(b'.');
    let fraction = digits.format(1000 + micros % 1000).as_bytes();
    out.extend_from_slice(&fraction[1..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> AccessLine<'static> {
        AccessLine {
            request_id: "a9e1e8e4abeeeb7d4786df9d46432d04",
            trace_id: "0b5a11d2e4546be9c53863ffe6a377ac",
            span_id: Some("6c334ba20cd3c4e0"),
            client: Some(IpAddr::from([127, 0, 0, 1])),
            method: "GET",
            route: Some("orders-read"),
            backend: Some("monolith"),
            status: Some(200),
            duration: Some(Duration::from_micros(3_074)),
            ..AccessLine::default()
        }
    }

    fn render(line: &AccessLine, format: LogFormat, is_ansi: bool) -> String {
        let mut out = Vec::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456);
        line.render(Style { format, is_ansi }, at, &mut out);
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn text_line_reads_like_the_rest_of_the_log() {
        assert_eq!(
            render(&line(), LogFormat::Text, false),
            "2026-11-18T11:06:40.123456Z  INFO access: \
             request_id=\"a9e1e8e4abeeeb7d4786df9d46432d04\" \
             trace_id=\"0b5a11d2e4546be9c53863ffe6a377ac\" span_id=\"6c334ba20cd3c4e0\" \
             client=127.0.0.1 method=GET route=orders-read backend=monolith status=200 \
             duration_ms=3.074\n"
        );
    }

    #[test]
    fn json_line_has_the_fields_and_target() {
        let rejected = AccessLine {
            message: Some("rejected"),
            span_id: None,
            route: None,
            backend: None,
            status: None,
            duration: None,
            error: Some("bad \"path\"\n"),
            ..line()
        };
        for (line, keys) in [(line(), 12), (rejected, 9)] {
            let text = render(&line, LogFormat::Json, false);
            assert!(text.ends_with('\n'), "{text:?}");
            let event: serde_json::Value = serde_json::from_str(&text).expect("one JSON object");
            let object = event.as_object().expect("an object");
            assert_eq!(object.len(), keys, "{text}");
            assert_eq!(event["timestamp"], "2026-11-18T11:06:40.123456Z");
            assert_eq!(event["target"], "access");
            assert_eq!(event["client"], "127.0.0.1");
            if line.message.is_some() {
                assert_eq!(event["message"], "rejected");
                assert_eq!(event["error"], "bad \"path\"\n");
            } else {
                assert_eq!(event["status"], 200);
                assert_eq!(event["duration_ms"], 3.074);
                assert_eq!(event["route"], "orders-read");
            }
        }
    }

    #[test]
    fn timestamps_follow_the_clock_across_seconds() {
        let mut out = Vec::new();
        for micros in [
            1_795_000_000_999_999,
            1_795_000_001_000_000,
            1_795_000_061_000_042,
        ] {
            timestamp(
                &mut out,
                SystemTime::UNIX_EPOCH + Duration::from_micros(micros),
            );
            out.push(b' ');
        }
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            "2026-11-18T11:06:40.999999Z 2026-11-18T11:06:41.000000Z 2026-11-18T11:07:41.000042Z "
        );
    }

    #[test]
    fn ipv6_clients_and_short_durations() {
        let v6 = AccessLine {
            client: Some("2001:db8::1".parse().expect("an address")),
            duration: Some(Duration::ZERO),
            ..line()
        };
        let text = render(&v6, LogFormat::Text, false);
        assert!(text.contains(" client=2001:db8::1 "), "{text}");
        assert!(text.ends_with(" duration_ms=0.000\n"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&render(&v6, LogFormat::Json, false)).expect("JSON");
        assert_eq!(json["client"], "2001:db8::1");
    }

    #[test]
    fn text_escapes_what_needs_it_and_colours_only_when_asked() {
        let odd = AccessLine {
            error: Some("said \"no\"\n"),
            duration: Some(Duration::from_micros(42)),
            ..line()
        };
        let text = render(&odd, LogFormat::Text, false);
        assert!(
            text.ends_with(" duration_ms=0.042 error=\"said \\\"no\\\"\\n\"\n"),
            "{text:?}"
        );
        assert!(!text.contains('\x1b'));
        let coloured = render(&line(), LogFormat::Text, true);
        assert!(coloured.contains("\x1b[32m INFO\x1b[0m"), "{coloured:?}");
    }
}

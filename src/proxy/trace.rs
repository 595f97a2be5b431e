//! W3C trace context: continue the client's trace (or start one) and tell
//! the backend which span it is a child of.
//!
//! The proxy is one span in the trace. It reads the client's `traceparent`
//! once, validates it as the W3C Trace Context spec asks, and keeps the
//! outgoing header as 55 bytes on the stack: `00-{trace id}-{proxy span
//! id}-{flags}`. The backend gets that header (its parent is the proxy's
//! span); the access log and error bodies show the trace id as a slice of
//! it. Per request that is one random number or two, one header value
//! built, and no string formatting.
//!
//! With `server.tracing` on, the same ids are those of the server span the
//! proxy exports (`telemetry::otlp`), and `sample_ratio` decides whether a
//! trace the proxy starts is sampled; a continued trace keeps its flags.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `vv-` + 32 + `-` + 16 + `-` + `ff`.
const TRACEPARENT_LEN: usize = 55;
const TRACE_ID: std::ops::Range<usize> = 3..35;
const SPAN_ID: std::ops::Range<usize> = 36..52;
const FLAGS: std::ops::Range<usize> = 53..55;
/// `sampled` (bit 0) and Trace Context level 2's `random` (bit 1); the
/// spec reserves the others, which a sender must set to zero.
const KNOWN_FLAGS: u8 = 0b11;
/// The `sampled` flag. A trace the proxy starts is marked sampled unless
/// `server.tracing.sample_ratio` says otherwise: the point of the trace id
/// in our logs is to find the same request in the services' traces, and
/// services that sample by their parent would otherwise drop it.
const SAMPLED: u8 = 0b01;
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Which of the traces the proxy starts are sampled: those whose trace id's
/// low 64 bits fall below a threshold, as OpenTelemetry's
/// `TraceIdRatioBased` sampler decides, so that the choice is a property
/// of the trace id. Continued traces keep the client's flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sampling {
    /// `ratio × 2⁶⁴`: 0 samples nothing, 2⁶⁴ everything.
    threshold: u128,
}

impl Sampling {
    /// Every trace the proxy starts is sampled (the default).
    pub(crate) const ALWAYS: Sampling = Sampling { threshold: 1 << 64 };

    /// `ratio` in 0..=1; values outside are clamped (config validates them).
    pub(crate) fn ratio(ratio: f64) -> Sampling {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        // f64 → u128 saturates; 2⁶⁴ is exact in f64.
        Sampling {
            threshold: (ratio * 18_446_744_073_709_551_616.0) as u128,
        }
    }

    fn is_sampled(self, trace_id: u128) -> bool {
        u128::from(trace_id as u64) < self.threshold
    }
}

/// The trace this request belongs to and the proxy's span in it.
#[derive(Debug, Clone)]
pub(crate) struct TraceContext {
    /// The `traceparent` the backend gets. ASCII by construction.
    traceparent: [u8; TRACEPARENT_LEN],
    /// The client's span id (16 hex digits) when its `traceparent` was
    /// valid: the parent of the proxy's span. Its `tracestate` belongs to
    /// that trace, so it is passed on only in that case.
    parent_span_id: Option<[u8; 16]>,
    /// The `sampled` flag sent upstream.
    is_sampled: bool,
}

impl TraceContext {
    /// Continues the trace of a valid `traceparent`; otherwise (absent,
    /// invalid, or sent twice) starts a new trace, sampled as `sampling` says.
    pub(crate) fn from_headers(headers: &HeaderMap, sampling: Sampling) -> TraceContext {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        let parent = match (values.next(), values.next()) {
            (Some(value), None) => parse(value.as_bytes()),
            // Two parents cannot both be right: believe neither.
            _ => None,
        };
        let mut traceparent = [b'-'; TRACEPARENT_LEN];
        traceparent[..2].copy_from_slice(b"00");
        let (parent_span_id, flags) = match parent {
            Some(parent) => {
                traceparent[TRACE_ID].copy_from_slice(&parent.trace_id);
                (Some(parent.span_id), parent.flags & KNOWN_FLAGS)
            }
            None => {
                let trace_id = nonzero(|| fastrand::u128(..));
                write_hex(&mut traceparent[TRACE_ID], trace_id);
                let flags = if sampling.is_sampled(trace_id) {
                    SAMPLED
                } else {
                    0
                };
                (None, flags)
            }
        };
        write_hex(&mut traceparent[FLAGS], u128::from(flags));
        write_hex(
            &mut traceparent[SPAN_ID],
            u128::from(nonzero(|| fastrand::u64(..))),
        );
        TraceContext {
            traceparent,
            parent_span_id,
            is_sampled: flags & SAMPLED != 0,
        }
    }

    /// 32 lowercase hex digits.
    pub(crate) fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.traceparent[TRACE_ID]).unwrap_or_default()
    }

    /// The proxy's span: the parent id the backend sees. 16 hex digits.
    pub(crate) fn span_id(&self) -> &str {
        std::str::from_utf8(&self.traceparent[SPAN_ID]).unwrap_or_default()
    }

    /// The client's span, the parent of the proxy's: 16 hex digits, or
    /// `None` when the proxy started the trace.
    pub(crate) fn parent_span_id(&self) -> Option<&str> {
        let id = self.parent_span_id.as_ref()?;
        std::str::from_utf8(id).ok()
    }

    /// Whether the trace is sampled (the flag the backend gets).
    pub(crate) fn is_sampled(&self) -> bool {
        self.is_sampled
    }

    /// Sets `traceparent` for the backend, and drops a `tracestate` that
    /// came with an invalid or absent parent.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        // Owned, not copied from a slice: the headers are cloned for each
        // attempt, and the first clone of copied bytes allocates again.
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(self.traceparent))
            .expect("hex digits and dashes are a valid header value");
        headers.insert(&TRACEPARENT, value);
        if self.parent_span_id.is_none() {
            headers.remove(&TRACESTATE);
        }
    }
}

/// The parts of a valid `traceparent` the proxy keeps.
struct Parent {
    /// Lowercase hex, as received.
    trace_id: [u8; 32],
    /// Lowercase hex, as received.
    span_id: [u8; 16],
    flags: u8,
}

/// Parses `traceparent` by the rules of W3C Trace Context §3.2 and the
/// processing model of §4.3: lowercase hex only, version `ff` invalid,
/// version `00` exactly 55 characters, a later version parsed by its first
/// four fields (and the next character, if any, must be `-`), trace id and
/// parent id not all zeros.
fn parse(value: &[u8]) -> Option<Parent> {
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_value(&value[..2])?;
    match version {
        0xff => return None,
        0x00 if value.len() != TRACEPARENT_LEN => return None,
        _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    if value[2] != b'-' || value[TRACE_ID.end] != b'-' || value[SPAN_ID.end] != b'-' {
        return None;
    }
    let trace_id = &value[TRACE_ID];
    let span_id = &value[SPAN_ID];
    if !is_nonzero_hex(trace_id) || !is_nonzero_hex(span_id) {
        return None;
    }
    let flags = hex_value(&value[FLAGS])?;
    let mut parent = Parent {
        trace_id: [0; 32],
        span_id: [0; 16],
        flags: flags as u8,
    };
    parent.trace_id.copy_from_slice(trace_id);
    parent.span_id.copy_from_slice(span_id);
    Some(parent)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn is_nonzero_hex(digits: &[u8]) -> bool {
    digits.iter().all(|&b| is_lower_hex(b)) && digits.iter().any(|&b| b != b'0')
}

/// The value of two lowercase hex digits.
fn hex_value(digits: &[u8]) -> Option<u32> {
    if !digits.iter().all(|&b| is_lower_hex(b)) {
        return None;
    }
    digits
        .iter()
        .try_fold(0, |acc, &b| Some(acc * 16 + char::from(b).to_digit(16)?))
}

/// Writes `value` as `out.len()` lowercase hex digits (the low ones).
/// Ids are whole bytes, so `out.len()` is even and at most 32. A byte at a
/// time: taking the `u128` apart a digit at a time cost 240 instructions
/// more per request (trace id, span id and request id).
pub(super) fn write_hex(out: &mut [u8], value: u128) {
    debug_assert!(out.len() % 2 == 0 && out.len() <= 32);
    let bytes = value.to_be_bytes();
    let low = &bytes[bytes.len().saturating_sub(out.len() / 2)..];
    for (pair, byte) in out.chunks_exact_mut(2).zip(low) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

/// All-zero ids are invalid; a draw of zero is drawn again.
fn nonzero<T: PartialEq + Default>(mut draw: impl FnMut() -> T) -> T {
    loop {
        let value = draw();
        if value != T::default() {
            return value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn hex_ids_are_the_low_digits_in_lowercase() {
        let value = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128;
        let mut trace_id = [0u8; 32];
        write_hex(&mut trace_id, value);
        assert_eq!(&trace_id, b"4bf92f3577b34da6a3ce929d0e0e4736");
        let mut span_id = [0u8; 16];
        write_hex(&mut span_id, value);
        assert_eq!(&span_id, b"a3ce929d0e0e4736");
        let mut flags = [0u8; 2];
        write_hex(&mut flags, 1);
        assert_eq!(&flags, b"01");
    }

    fn context(values: &[&str]) -> TraceContext {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(&TRACEPARENT, value.parse().unwrap());
        }
        TraceContext::from_headers(&headers, Sampling::ALWAYS)
    }

    fn assert_well_formed(ctx: &TraceContext) {
        let text = std::str::from_utf8(&ctx.traceparent).unwrap();
        let parsed =
            parse(text.as_bytes()).unwrap_or_else(|| panic!("{text} is not a valid traceparent"));
        assert_eq!(&parsed.trace_id[..], ctx.trace_id().as_bytes());
        assert!(text.starts_with("00-"));
    }

    #[test]
    fn a_valid_parent_is_continued_with_a_new_span() {
        let ctx = context(&[VALID]);
        assert_well_formed(&ctx);
        assert!(ctx.parent_span_id.is_some());
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(ctx.span_id(), "00f067aa0ba902b7");
        assert!(std::str::from_utf8(&ctx.traceparent)
            .unwrap()
            .ends_with("-01"));
    }

    #[test]
    fn a_missing_parent_starts_a_sampled_trace() {
        let (a, b) = (context(&[]), context(&[]));
        assert_well_formed(&a);
        assert!(a.parent_span_id.is_none());
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(std::str::from_utf8(&a.traceparent)
            .unwrap()
            .ends_with("-01"));
    }

    #[test]
    fn invalid_parents_start_a_new_trace() {
        let invalid = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for value in invalid {
            let ctx = context(&[value]);
            assert!(ctx.parent_span_id.is_none(), "{value:?} was accepted");
            assert_ne!(
                ctx.trace_id(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{value:?}"
            );
            assert_well_formed(&ctx);
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let ctx =
            context(&["cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next"]);
        assert!(ctx.parent_span_id.is_some());
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // Sent on as version 00, reserved flag bits cleared.
        assert!(std::str::from_utf8(&ctx.traceparent)
            .unwrap()
            .starts_with("00-"));
        assert!(std::str::from_utf8(&ctx.traceparent)
            .unwrap()
            .ends_with("-01"));
    }

    #[test]
    fn a_continued_trace_keeps_its_parent_and_flag() {
        let ctx = context(&[VALID]);
        assert_eq!(ctx.parent_span_id(), Some("00f067aa0ba902b7"));
        assert!(ctx.is_sampled());
        let unsampled = context(&["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"]);
        assert!(!unsampled.is_sampled());
        // The ratio applies to new traces only.
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, VALID.parse().unwrap());
        assert!(TraceContext::from_headers(&headers, Sampling::ratio(0.0)).is_sampled());
    }

    #[test]
    fn sample_ratio_decides_new_traces_and_sets_the_flag() {
        let never = TraceContext::from_headers(&HeaderMap::new(), Sampling::ratio(0.0));
        assert!(!never.is_sampled());
        assert!(std::str::from_utf8(&never.traceparent)
            .unwrap()
            .ends_with("-00"));
        assert!(TraceContext::from_headers(&HeaderMap::new(), Sampling::ratio(1.0)).is_sampled());
        assert_eq!(Sampling::ratio(1.0), Sampling::ALWAYS);
        // By the trace id's low 64 bits, as TraceIdRatioBased.
        let half = Sampling::ratio(0.5);
        assert!(half.is_sampled(0xffff_0000_0000_0000_7fff_ffff_ffff_ffff));
        assert!(!half.is_sampled(0x0000_0000_0000_0000_8000_0000_0000_0000));
        assert!(Sampling::ALWAYS.is_sampled(u128::MAX));
        assert!(!Sampling::ratio(f64::NAN).is_sampled(0));
    }

    #[test]
    fn two_parents_are_not_believed() {
        let ctx = context(&[VALID, VALID]);
        assert!(ctx.parent_span_id.is_none());
    }

    #[test]
    fn tracestate_passes_only_with_a_continued_trace() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACESTATE, "congo=t61rcWkgMzE".parse().unwrap());
        context(&[VALID]).apply(&mut headers);
        assert_eq!(headers.get(&TRACESTATE).unwrap(), "congo=t61rcWkgMzE");
        context(&["garbage"]).apply(&mut headers);
        assert!(headers.get(&TRACESTATE).is_none());
    }
}

//! Body comparison: decode, then pick JSON, text or bytes by Content-Type.

use std::borrow::Cow;
use std::error::Error;

use http::header::{self, HeaderMap, HeaderValue};

use super::super::decode::{decode_body, DecodeError};
use super::{
    json, kind_of_presence, truncate, Answer, BodyKind, CompareRules, DiffKind, Difference, Report,
};

pub(super) fn compare_bodies(
    rules: &CompareRules,
    primary: &Answer<'_>,
    candidate: &Answer<'_>,
    report: &mut Report,
) -> BodyKind {
    let declared = declared_kind(primary.headers);
    let decoded = (
        decode(primary, rules.max_decoded_bytes),
        decode(candidate, rules.max_decoded_bytes),
    );
    let (p, c) = match decoded {
        (Ok(p), Ok(c)) => (p, c),
        (p, c) => {
            let same_input = primary.body == candidate.body
                && primary
                    .headers
                    .get_all(header::CONTENT_ENCODING)
                    .iter()
                    .eq(candidate.headers.get_all(header::CONTENT_ENCODING).iter());
            // The same bytes fail the same way: nothing tells them apart.
            if !same_input {
                report.push(|| {
                    body_difference(
                        DiffKind::Changed,
                        Some(decode_outcome(&p)),
                        Some(decode_outcome(&c)),
                    )
                });
            }
            return declared.unwrap_or(BodyKind::Binary);
        }
    };

    // Equal bytes are equal under every rule; most shadow answers are, and
    // a memcmp is far cheaper than two parses. Without a Content-Type the
    // kind is still sniffed below, so that `body_kind` says the same either way.
    if let Some(kind) = declared.filter(|_| p == c) {
        return kind;
    }
    match declared {
        Some(BodyKind::Json) | None => match serde_json::from_slice(&p) {
            Ok(value) => {
                if p != c {
                    json::compare_json(rules, &value, &c, report);
                }
                BodyKind::Json
            }
            // Declared JSON but is not: JSON is text, so a line diff still
            // says something useful.
            Err(_) if declared.is_some() => {
                compare_text(&p, &c, report);
                BodyKind::Text
            }
            Err(_) => {
                compare_bytes(&p, &c, report);
                BodyKind::Binary
            }
        },
        Some(BodyKind::Text) => {
            compare_text(&p, &c, report);
            BodyKind::Text
        }
        Some(BodyKind::Binary) => {
            compare_bytes(&p, &c, report);
            BodyKind::Binary
        }
    }
}

/// `None` when there is no Content-Type: the body is then sniffed.
fn declared_kind(headers: &HeaderMap) -> Option<BodyKind> {
    let value = headers.get(header::CONTENT_TYPE)?.as_bytes();
    let essence = value
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let lower = essence.to_ascii_lowercase();
    Some(
        if lower == b"application/json" || lower.ends_with(b"+json") {
            BodyKind::Json
        } else if lower.starts_with(b"text/") {
            BodyKind::Text
        } else {
            BodyKind::Binary
        },
    )
}

fn decode<'a>(answer: &Answer<'a>, max_decoded_bytes: usize) -> Result<Cow<'a, [u8]>, DecodeError> {
    // Several Content-Encoding lines are one list, in order (RFC 9110 5.3).
    let mut values = answer.headers.get_all(header::CONTENT_ENCODING).iter();
    let Some(first) = values.next() else {
        return decode_body(None, answer.body, max_decoded_bytes);
    };
    let mut list = Cow::Borrowed(header_str(first)?);
    for value in values {
        let list = list.to_mut();
        list.push(',');
        list.push_str(header_str(value)?);
    }
    decode_body(Some(&list), answer.body, max_decoded_bytes)
}

fn header_str(value: &HeaderValue) -> Result<&str, DecodeError> {
    value.to_str().map_err(|_| DecodeError::Unsupported {
        coding: String::from_utf8_lossy(value.as_bytes()).into_owned(),
    })
}

fn decode_outcome(outcome: &Result<Cow<'_, [u8]>, DecodeError>) -> String {
    match outcome {
        Ok(body) => format!("decoded, {} bytes", body.len()),
        Err(err) => truncate(&error_chain(err)),
    }
}

/// The error and its causes on one line: the body of a difference has no
/// other place to put them.
fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

pub(super) fn body_difference(
    kind: DiffKind,
    primary: Option<String>,
    candidate: Option<String>,
) -> Difference {
    Difference {
        path: "body".to_owned(),
        field: "body".to_owned(),
        kind,
        primary,
        candidate,
    }
}

/// Lines are compared by position, so line endings (`\n` or `\r\n`) do not
/// count. Only the first differing line is listed; the rest are counted.
fn compare_text(primary: &[u8], candidate: &[u8], report: &mut Report) {
    let primary = String::from_utf8_lossy(primary);
    let candidate = String::from_utf8_lossy(candidate);
    let (mut p, mut c) = (primary.lines(), candidate.lines());
    let mut line = 0;
    let mut is_first = true;
    loop {
        line += 1;
        let (a, b) = match (p.next(), c.next()) {
            (None, None) => break,
            (a, b) if a == b => continue,
            pair => pair,
        };
        if is_first {
            is_first = false;
            report.push(|| Difference {
                path: format!("line:{line}"),
                field: "line".to_owned(),
                kind: kind_of_presence(&a, &b),
                primary: a.map(truncate),
                candidate: b.map(truncate),
            });
        } else {
            report.total += 1;
        }
    }
}

fn compare_bytes(primary: &[u8], candidate: &[u8], report: &mut Report) {
    if primary != candidate {
        report.push(|| {
            body_difference(
                DiffKind::Changed,
                Some(digest(primary)),
                Some(digest(candidate)),
            )
        });
    }
}

/// FNV-1a 64: stable across builds and releases, so digests in old diff
/// logs can still be matched. Not for security; only for telling bodies apart.
fn digest(body: &[u8]) -> String {
    let hash = crate::hash::fnv1a(crate::hash::FNV_OFFSET, body);
    format!("{} bytes, fnv1a64 {hash:016x}", body.len())
}

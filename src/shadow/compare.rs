//! Shadow comparison: did the candidate answer like the primary, and if not, where?
//!
//! Runs in the shadow task after both answers are buffered, never on the
//! client's path. Status, selected headers and body are compared; the body
//! is decoded first, then compared as JSON (structurally), text (by line)
//! or bytes, chosen by the primary's Content-Type. Each [`Difference`]
//! carries a concrete path for the diff log and a generalised `field` for
//! the `field` label of the shadow-difference metric.
//!
//! Noise learning (Diffy-style) needs no extra API: compare two primary
//! answers with [`compare`] and collect `field` from each difference.

mod body;
mod json;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::fieldpath::FieldPattern;

/// At most this many differences are listed; more are only counted, so a
/// candidate that returns garbage cannot make one comparison use unbounded
/// memory.
pub const MAX_REPORTED_DIFFERENCES: usize = 100;

/// Values in a [`Difference`] are cut to this many characters.
pub const MAX_RENDERED_CHARS: usize = 200;

// Headers that differ between any two servers, or describe one hop rather
// than the answer. Comparing them would only ever report noise, so they are
// skipped even when a rule lists them.
const NEVER_COMPARED: &[&str] = &[
    "date",
    "server",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// How two answers are compared. Built when the config is compiled.
#[derive(Debug, Clone)]
pub struct CompareRules {
    /// A field matching any of these is skipped, with everything below it.
    pub ignore_fields: Vec<FieldPattern>,
    /// Never compared, even when listed in `headers`.
    pub ignore_headers: Vec<HeaderName>,
    /// Headers to compare. Defaults to `content-type` alone.
    pub headers: Vec<HeaderName>,
    /// Compare JSON arrays as multisets: order is ignored everywhere, and
    /// elements without an equal partner are reported at `[*]`.
    pub array_order_ignored: bool,
    /// Largest absolute difference at which two JSON numbers still count as
    /// equal. `0.0` means exact (though `1` and `1.0` are always equal).
    pub number_tolerance: f64,
    /// A body that decodes to more than this is not compared; the failure is
    /// reported as a difference on `body`.
    pub max_decoded_bytes: usize,
}

impl Default for CompareRules {
    fn default() -> CompareRules {
        CompareRules {
            ignore_fields: Vec::new(),
            ignore_headers: Vec::new(),
            headers: vec![header::CONTENT_TYPE],
            array_order_ignored: false,
            number_tolerance: 0.0,
            max_decoded_bytes: 8 << 20,
        }
    }
}

/// One side's answer, as buffered by the shadow task.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
    /// Still content-encoded, as received.
    pub body: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiffKind {
    /// The value differs.
    Changed,
    /// Present in the primary's answer, absent from the candidate's.
    Missing,
    /// Present in the candidate's answer, absent from the primary's.
    Extra,
    /// A JSON value of another type (string for number, and so on), or a
    /// body that should be JSON and is not.
    Type,
}

impl DiffKind {
    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DiffKind::Changed => "changed",
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Type => "type",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Where: `status`, `header:content-type`, `body`, `line:12`, or a JSON
    /// path such as `$.items[3].price`.
    pub path: String,
    /// `path` with array indices as `[*]` and line numbers dropped: bounded
    /// in number, so fit for a metric label.
    pub field: String,
    pub kind: DiffKind,
    /// Short renderings, at most [`MAX_RENDERED_CHARS`] characters.
    pub primary: Option<String>,
    pub candidate: Option<String>,
}

/// How the body was compared, decided by the primary's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyKind {
    Json,
    Text,
    Binary,
}

impl BodyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyKind::Json => "json",
            BodyKind::Text => "text",
            BodyKind::Binary => "binary",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Comparison {
    /// The first [`MAX_REPORTED_DIFFERENCES`] differences, in walk order.
    pub differences: Vec<Difference>,
    /// Every difference found, including those not listed: past the cap,
    /// and text lines after the first differing one.
    pub total_differences: usize,
    pub body_kind: BodyKind,
}

impl Comparison {
    pub fn is_match(&self) -> bool {
        self.total_differences == 0
    }
}

/// Compares the candidate's answer with the primary's.
pub fn compare(rules: &CompareRules, primary: &Answer<'_>, candidate: &Answer<'_>) -> Comparison {
    let mut report = Report::default();
    if primary.status != candidate.status {
        report.push(|| Difference {
            path: "status".to_owned(),
            field: "status".to_owned(),
            kind: DiffKind::Changed,
            primary: Some(primary.status.to_string()),
            candidate: Some(candidate.status.to_string()),
        });
    }
    compare_headers(rules, primary.headers, candidate.headers, &mut report);
    let body_kind = body::compare_bodies(rules, primary, candidate, &mut report);
    Comparison {
        differences: report.differences,
        total_differences: report.total,
        body_kind,
    }
}

// === Report ===

#[derive(Default)]
struct Report {
    differences: Vec<Difference>,
    total: usize,
}

impl Report {
    /// Counts a difference, and builds it only if it will be listed.
    fn push(&mut self, make: impl FnOnce() -> Difference) {
        self.total += 1;
        if self.differences.len() < MAX_REPORTED_DIFFERENCES {
            self.differences.push(make());
        }
    }
}

fn kind_of_presence<T>(primary: &Option<T>, candidate: &Option<T>) -> DiffKind {
    match (primary, candidate) {
        (Some(_), None) => DiffKind::Missing,
        (None, Some(_)) => DiffKind::Extra,
        _ => DiffKind::Changed,
    }
}

// === headers ===

fn compare_headers(
    rules: &CompareRules,
    primary: &HeaderMap,
    candidate: &HeaderMap,
    report: &mut Report,
) {
    for name in &rules.headers {
        if NEVER_COMPARED.contains(&name.as_str()) || rules.ignore_headers.contains(name) {
            continue;
        }
        let mut p = primary.get_all(name).iter();
        let mut c = candidate.get_all(name).iter();
        let is_equal = loop {
            match (p.next(), c.next()) {
                (None, None) => break true,
                (Some(a), Some(b)) if header_value_eq(name, a, b) => {}
                _ => break false,
            }
        };
        if is_equal {
            continue;
        }
        report.push(|| {
            let path = format!("header:{name}");
            let primary = render_header(primary, name);
            let candidate = render_header(candidate, name);
            Difference {
                field: path.clone(),
                path,
                kind: kind_of_presence(&primary, &candidate),
                primary,
                candidate,
            }
        });
    }
}

fn header_value_eq(name: &HeaderName, a: &HeaderValue, b: &HeaderValue) -> bool {
    if name != header::CONTENT_TYPE {
        return a == b;
    }
    // `application/json; charset=UTF-8` and `application/json;charset=utf-8`
    // mean the same; a migration should not be flagged for spelling.
    a == b || squash(a).eq(squash(b))
}

fn squash(value: &HeaderValue) -> impl Iterator<Item = u8> + '_ {
    value
        .as_bytes()
        .iter()
        .filter(|b| !b.is_ascii_whitespace())
        .map(u8::to_ascii_lowercase)
}

fn render_header(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let joined: Vec<_> = values
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .collect();
    Some(truncate(&joined.join(", ")))
}

/// Cuts `text` to [`MAX_RENDERED_CHARS`] characters, marking the cut.
fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_RENDERED_CHARS) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

#[cfg(test)]
mod tests;

//! Field paths: compiled ignore patterns such as `$..request_id`, and the
//! rendering of concrete JSON paths for differences and metric labels.
//!
//! Patterns are parsed once when the config is compiled. At compare time
//! each pattern runs as a small state machine that advances one path
//! segment at a time, so the JSON walk never builds a path just to test it.
//!
//! Syntax (a subset of RFC 9535 JSONPath):
//! `$` then steps: `.name`, `.*`, `[3]`, `[*]`, `["any key"]` / `['any key']`,
//! and `..` before any of those for "at any depth". `*` selects every child,
//! object member or array element alike, as in RFC 9535.

mod parse;

use std::fmt;
use std::str::FromStr;

/// At most this many steps per pattern: the matcher keeps one bit per step
/// in a `u64`, which keeps matching allocation-free.
pub const MAX_PATTERN_STEPS: usize = 63;

/// One step of a concrete path into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

impl PathSegment {
    pub(crate) fn as_ref(&self) -> SegmentRef<'_> {
        match self {
            PathSegment::Key(key) => SegmentRef::Key(key),
            PathSegment::Index(index) => SegmentRef::Index(*index),
        }
    }
}

/// A borrowed path segment, as the JSON walk sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentRef<'a> {
    Key(&'a str),
    Index(usize),
    /// An element of an array compared as a multiset, where positions mean
    /// nothing: only `*` matches it, and it renders as `[*]`.
    AnyIndex,
}

/// A field-path pattern could not be parsed. `pos` is a byte offset into
/// the pattern text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldPathError {
    #[error("field path must start with `$`")]
    MissingRoot,

    #[error("field path `$` alone would ignore the whole body; name a field after it")]
    WholeDocument,

    #[error("at byte {pos}: expected {expected}, found `{found}`")]
    Unexpected {
        pos: usize,
        expected: &'static str,
        found: char,
    },

    #[error("at byte {pos}: expected {expected}, found the end of the path")]
    UnexpectedEnd { pos: usize, expected: &'static str },

    #[error("at byte {pos}: array index is too large")]
    IndexTooLarge { pos: usize },

    #[error("at byte {pos}: unknown escape `\\{found}` in quoted key")]
    BadEscape { pos: usize, found: char },

    #[error("field path has more than {max} steps")]
    TooManySteps { max: usize },
}

impl FieldPathError {
    /// Byte offset of the problem in the pattern text.
    pub fn position(&self) -> usize {
        match self {
            FieldPathError::MissingRoot
            | FieldPathError::WholeDocument
            | FieldPathError::TooManySteps { .. } => 0,
            FieldPathError::Unexpected { pos, .. }
            | FieldPathError::UnexpectedEnd { pos, .. }
            | FieldPathError::IndexTooLarge { pos }
            | FieldPathError::BadEscape { pos, .. } => *pos,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Key(Box<str>),
    Index(usize),
    Wildcard,
}

impl Selector {
    fn selects(&self, seg: SegmentRef<'_>) -> bool {
        match (self, seg) {
            (Selector::Wildcard, _) => true,
            (Selector::Key(want), SegmentRef::Key(got)) => **want == *got,
            (Selector::Index(want), SegmentRef::Index(got)) => *want == got,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    selector: Selector,
    /// `..`: any number of segments may come before the one selected.
    is_descendant: bool,
}

/// A compiled ignore pattern. Parse with [`FieldPattern::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPattern {
    source: Box<str>,
    steps: Box<[Step]>,
}

/// The set of pattern positions reached so far: bit `k` means "the first
/// `k` steps have matched". Bit `steps.len()` means the whole pattern has.
pub(crate) type MatchState = u64;

// === impl FieldPattern ===

impl FieldPattern {
    pub fn parse(text: &str) -> Result<FieldPattern, FieldPathError> {
        let steps = parse::Parser::new(text).parse()?;
        Ok(FieldPattern {
            source: text.into(),
            steps: steps.into_boxed_slice(),
        })
    }

    /// The pattern as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern selects exactly the node at `path`. (During a
    /// comparison, a match also skips everything below that node.)
    pub fn matches(&self, path: &[PathSegment]) -> bool {
        let state = path
            .iter()
            .fold(self.start(), |state, seg| self.advance(state, seg.as_ref()));
        self.is_complete(state)
    }

    pub(crate) fn start(&self) -> MatchState {
        1
    }

    pub(crate) fn advance(&self, state: MatchState, seg: SegmentRef<'_>) -> MatchState {
        let mut next = 0;
        let mut live = state;
        while live != 0 {
            let k = live.trailing_zeros() as usize;
            live &= live - 1;
            let Some(step) = self.steps.get(k) else {
                // A complete match has nothing left to consume.
                continue;
            };
            if step.is_descendant {
                next |= 1 << k;
            }
            if step.selector.selects(seg) {
                next |= 1 << (k + 1);
            }
        }
        next
    }

    pub(crate) fn is_complete(&self, state: MatchState) -> bool {
        state & (1 << self.steps.len()) != 0
    }
}

impl FromStr for FieldPattern {
    type Err = FieldPathError;

    fn from_str(text: &str) -> Result<FieldPattern, FieldPathError> {
        FieldPattern::parse(text)
    }
}

impl fmt::Display for FieldPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

// `-` is allowed after the first character so that `$.x-request-id`
// reads naturally; it has no other meaning in this grammar.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

// === rendering ===

/// `$.items[3].price`: the concrete path, as reported in a difference.
pub fn render_path(path: &[PathSegment]) -> String {
    render_segments(path.iter().map(PathSegment::as_ref), false)
}

/// `$.items[*].price`: array indices replaced by `[*]`, so the value set
/// stays bounded when used as a metric label. It also parses as an ignore
/// pattern covering the same field in every element.
pub fn render_generalised(path: &[PathSegment]) -> String {
    render_segments(path.iter().map(PathSegment::as_ref), true)
}

pub(crate) fn render_segments<'a>(
    path: impl IntoIterator<Item = SegmentRef<'a>>,
    generalise: bool,
) -> String {
    use fmt::Write as _;

    let mut out = String::from("$");
    for seg in path {
        match seg {
            SegmentRef::Key(key) if is_identifier(key) => {
                out.push('.');
                out.push_str(key);
            }
            SegmentRef::Key(key) => {
                out.push('[');
                push_quoted(&mut out, key);
                out.push(']');
            }
            SegmentRef::Index(_) | SegmentRef::AnyIndex if generalise => out.push_str("[*]"),
            SegmentRef::AnyIndex => out.push_str("[*]"),
            SegmentRef::Index(i) => {
                // Writing to a String cannot fail.
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

fn push_quoted(out: &mut String, key: &str) {
    use fmt::Write as _;

    out.push('"');
    for c in key.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests;

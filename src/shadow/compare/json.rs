//! Structural JSON comparison: key order never matters, arrays are compared
//! by position or as multisets, numbers within a tolerance, and ignored
//! fields are skipped with everything below them.
//!
//! Recursion depth is bounded by serde_json's parser, which refuses
//! documents nested deeper than 128 levels.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::mem;
use std::ops::ControlFlow::{self, Break, Continue};

use serde_json::{Map, Number, Value};

use super::super::fieldpath::{render_segments, FieldPattern, MatchState, SegmentRef};
use super::body::body_difference;
use super::{
    kind_of_presence, truncate, CompareRules, DiffKind, Difference, Report, MAX_RENDERED_CHARS,
};

/// Compares a parsed primary body with the candidate's raw body.
pub(super) fn compare_json(
    rules: &CompareRules,
    primary: &Value,
    candidate: &[u8],
    report: &mut Report,
) {
    let candidate: Value = match serde_json::from_slice(candidate) {
        Ok(value) => value,
        Err(err) => {
            report.push(|| {
                let primary = Some(render_value(primary));
                let candidate = Some(truncate(&format!("not JSON: {err}")));
                body_difference(DiffKind::Type, primary, candidate)
            });
            return;
        }
    };
    let mut diff = JsonDiff {
        walker: Walker::new(&rules.ignore_fields),
        // A negative or NaN tolerance would make even equal numbers differ.
        tolerance: rules.number_tolerance.max(0.0),
        is_unordered: rules.array_order_ignored,
        is_probing: false,
        report,
    };
    // Only probing breaks early, and this walk does not probe.
    let _ = diff.diff(primary, &candidate);
}

// === Walker ===

/// The current path, and where each ignore pattern stands on it.
struct Walker<'v, 'r> {
    patterns: &'r [FieldPattern],
    path: Vec<SegmentRef<'v>>,
    /// One state per pattern for each entered level, innermost last. The
    /// first frame is the patterns' start states.
    states: Vec<MatchState>,
    /// Levels entered after every pattern had failed: no pattern can match
    /// below them, so they push no frame. Most of a document is walked this
    /// way, at the cost of a counter.
    dead_levels: usize,
}

impl<'v, 'r> Walker<'v, 'r> {
    fn new(patterns: &'r [FieldPattern]) -> Walker<'v, 'r> {
        Walker {
            patterns,
            path: Vec::with_capacity(16),
            states: patterns.iter().map(FieldPattern::start).collect(),
            dead_levels: 0,
        }
    }

    /// Steps into `seg`. Returns false, having entered nothing, when an
    /// ignore pattern covers it; otherwise the caller must `leave` after.
    fn enter(&mut self, seg: SegmentRef<'v>) -> bool {
        let n = self.patterns.len();
        let base = self.states.len() - n;
        if self.dead_levels > 0 || self.states[base..].iter().all(|s| *s == 0) {
            self.dead_levels += 1;
        } else {
            let mut is_ignored = false;
            for (i, pattern) in self.patterns.iter().enumerate() {
                let next = pattern.advance(self.states[base + i], seg);
                is_ignored |= pattern.is_complete(next);
                self.states.push(next);
            }
            if is_ignored {
                self.states.truncate(base + n);
                return false;
            }
        }
        self.path.push(seg);
        true
    }

    fn leave(&mut self) {
        self.path.pop();
        if self.dead_levels > 0 {
            self.dead_levels -= 1;
        } else {
            let len = self.states.len() - self.patterns.len();
            self.states.truncate(len);
        }
    }
}

// === JsonDiff ===

struct JsonDiff<'v, 'r> {
    walker: Walker<'v, 'r>,
    tolerance: f64,
    is_unordered: bool,
    /// Set while matching multiset elements: the first difference answers
    /// "not equal", and nothing is reported.
    is_probing: bool,
    report: &'r mut Report,
}

impl<'v> JsonDiff<'v, '_> {
    /// Compares the values at the walker's current path. Breaks only when
    /// probing and a difference is found.
    fn diff(&mut self, p: &'v Value, c: &'v Value) -> ControlFlow<()> {
        match (p, c) {
            (Value::Object(a), Value::Object(b)) => self.diff_objects(a, b),
            (Value::Array(a), Value::Array(b)) if self.is_unordered => self.diff_multiset(a, b),
            (Value::Array(a), Value::Array(b)) => self.diff_ordered(a, b),
            (Value::Number(a), Value::Number(b)) if numbers_equal(a, b, self.tolerance) => {
                Continue(())
            }
            (Value::String(a), Value::String(b)) if a == b => Continue(()),
            (Value::Bool(a), Value::Bool(b)) if a == b => Continue(()),
            (Value::Null, Value::Null) => Continue(()),
            _ if mem::discriminant(p) == mem::discriminant(c) => {
                self.differ(DiffKind::Changed, Some(p), Some(c))
            }
            _ => self.differ(DiffKind::Type, Some(p), Some(c)),
        }
    }

    fn differ(&mut self, kind: DiffKind, p: Option<&Value>, c: Option<&Value>) -> ControlFlow<()> {
        if self.is_probing {
            return Break(());
        }
        let path = &self.walker.path;
        self.report.push(|| Difference {
            path: render_segments(path.iter().copied(), false),
            field: render_segments(path.iter().copied(), true),
            kind,
            primary: p.map(render_value),
            candidate: c.map(render_value),
        });
        Continue(())
    }

    /// Looks keys up rather than merging sorted maps: with serde_json's
    /// `preserve_order` feature, which any crate in the build may turn on,
    /// maps iterate in document order.
    fn diff_objects(
        &mut self,
        a: &'v Map<String, Value>,
        b: &'v Map<String, Value>,
    ) -> ControlFlow<()> {
        for (key, p) in a {
            if !self.walker.enter(SegmentRef::Key(key)) {
                continue;
            }
            let flow = match b.get(key) {
                Some(c) => self.diff(p, c),
                None => self.differ(DiffKind::Missing, Some(p), None),
            };
            self.walker.leave();
            flow?;
        }
        for (key, c) in b {
            if a.contains_key(key) || !self.walker.enter(SegmentRef::Key(key)) {
                continue;
            }
            let flow = self.differ(DiffKind::Extra, None, Some(c));
            self.walker.leave();
            flow?;
        }
        Continue(())
    }

    fn diff_ordered(&mut self, a: &'v [Value], b: &'v [Value]) -> ControlFlow<()> {
        for i in 0..a.len().max(b.len()) {
            if !self.walker.enter(SegmentRef::Index(i)) {
                continue;
            }
            let flow = match (a.get(i), b.get(i)) {
                (Some(p), Some(c)) => self.diff(p, c),
                (p, c) => self.differ(kind_of_presence(&p, &c), p, c),
            };
            self.walker.leave();
            flow?;
        }
        Continue(())
    }

    fn diff_multiset(&mut self, a: &'v [Value], b: &'v [Value]) -> ControlFlow<()> {
        if !self.walker.enter(SegmentRef::AnyIndex) {
            return Continue(());
        }
        // Elements are matched whole, so multisets of different sizes differ.
        if self.is_probing && a.len() != b.len() {
            self.walker.leave();
            return Break(());
        }
        let flow = self.match_elements(a, b);
        self.walker.leave();
        flow
    }

    /// Pairs each primary element with an equal, still unpaired candidate
    /// element, greedily. With a number tolerance "equal" is not transitive,
    /// so a cleverer pairing might leave fewer unmatched; it is not worth
    /// the cost. Unpaired elements are reported at `[*]`.
    fn match_elements(&mut self, a: &'v [Value], b: &'v [Value]) -> ControlFlow<()> {
        let mut is_taken = vec![false; b.len()];
        let mut unmatched = Vec::new();
        // Most arrays keep their order, so pairing by position first makes
        // the common case linear.
        for (i, p) in a.iter().enumerate() {
            match b.get(i) {
                Some(c) if self.equal(p, c) => is_taken[i] = true,
                _ => unmatched.push(i),
            }
        }
        let mut missing = Vec::new();
        if !unmatched.is_empty() {
            // Equal values have equal fingerprints, so a full comparison is
            // needed only within a bucket: near-linear even for shuffled arrays.
            let mut buckets: HashMap<u64, Vec<usize>> = HashMap::new();
            for (j, c) in b.iter().enumerate().filter(|(j, _)| !is_taken[*j]) {
                buckets.entry(self.fingerprint(c)).or_default().push(j);
            }
            for i in unmatched {
                let p = &a[i];
                let bucket = buckets.get_mut(&self.fingerprint(p));
                let found = bucket.and_then(|bucket| {
                    let at = bucket.iter().position(|&j| self.equal(p, &b[j]))?;
                    Some(bucket.swap_remove(at))
                });
                match found {
                    Some(j) => is_taken[j] = true,
                    None if self.is_probing => return Break(()),
                    None => missing.push(p),
                }
            }
        }
        for p in missing {
            self.differ(DiffKind::Missing, Some(p), None)?;
        }
        for (c, _) in b.iter().zip(&is_taken).filter(|(_, taken)| !**taken) {
            self.differ(DiffKind::Extra, None, Some(c))?;
        }
        Continue(())
    }

    fn equal(&mut self, p: &'v Value, c: &'v Value) -> bool {
        let was_probing = mem::replace(&mut self.is_probing, true);
        let flow = self.diff(p, c);
        self.is_probing = was_probing;
        flow.is_continue()
    }

    /// A hash that is equal for any two values `equal` accepts: it skips
    /// ignored fields, hashes maps and multisets without order, and leaves
    /// numbers out when a tolerance makes nearby numbers equal.
    fn fingerprint(&mut self, value: &'v Value) -> u64 {
        let mut h = DefaultHasher::new();
        match value {
            Value::Null => 0u8.hash(&mut h),
            Value::Bool(b) => (1u8, b).hash(&mut h),
            Value::Number(n) => {
                2u8.hash(&mut h);
                if self.tolerance == 0.0 {
                    // Through f64 so that 1 and 1.0 agree; `+ 0.0` turns
                    // -0.0 into 0.0.
                    n.as_f64().map(|f| (f + 0.0).to_bits()).hash(&mut h);
                }
            }
            Value::String(s) => (3u8, s).hash(&mut h),
            Value::Array(items) if self.is_unordered => {
                let mut sum = 0u64;
                if self.walker.enter(SegmentRef::AnyIndex) {
                    for item in items {
                        sum = sum.wrapping_add(self.fingerprint(item));
                    }
                    self.walker.leave();
                }
                (4u8, sum).hash(&mut h);
            }
            Value::Array(items) => {
                4u8.hash(&mut h);
                for (i, item) in items.iter().enumerate() {
                    if self.walker.enter(SegmentRef::Index(i)) {
                        (i, self.fingerprint(item)).hash(&mut h);
                        self.walker.leave();
                    }
                }
            }
            Value::Object(map) => {
                let mut sum = 0u64;
                for (key, item) in map {
                    if self.walker.enter(SegmentRef::Key(key)) {
                        let mut entry = DefaultHasher::new();
                        (key, self.fingerprint(item)).hash(&mut entry);
                        sum = sum.wrapping_add(entry.finish());
                        self.walker.leave();
                    }
                }
                (5u8, sum).hash(&mut h);
            }
        }
        h.finish()
    }
}

/// Integers compare exactly (no f64 rounding of large ids); anything with
/// a fraction or exponent compares as f64, so `1` equals `1.0`.
fn numbers_equal(a: &Number, b: &Number, tolerance: f64) -> bool {
    let as_integer = |n: &Number| n.as_i64().map(i128::from).or(n.as_u64().map(i128::from));
    match (as_integer(a), as_integer(b)) {
        (Some(x), Some(y)) => x == y || (x - y).unsigned_abs() as f64 <= tolerance,
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= tolerance,
            _ => a == b,
        },
    }
}

/// Compact JSON, cut to [`MAX_RENDERED_CHARS`]. Serialisation stops once
/// enough is written, so a huge subtree costs no more than a small one.
fn render_value(value: &Value) -> String {
    let mut out = Bounded {
        buf: Vec::new(),
        // Enough bytes for the character limit plus one, at 4 bytes a char.
        limit: (MAX_RENDERED_CHARS + 1) * 4,
    };
    // Running out of room is the expected way for this to fail; what was
    // written by then is what we want.
    let _ = serde_json::to_writer(&mut out, value);
    truncate(&String::from_utf8_lossy(&out.buf))
}

struct Bounded {
    buf: Vec<u8>,
    limit: usize,
}

impl io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.limit.saturating_sub(self.buf.len()));
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

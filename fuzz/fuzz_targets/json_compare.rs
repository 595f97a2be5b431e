//! `shadow::compare::compare` on two arbitrary bodies. Input layout: one
//! flags byte, the primary body's length (u16, little-endian; cut to what
//! is there), the primary body, then the candidate body. A length prefix,
//! not a separator, because compressed bodies contain every byte value.
//!
//! Invariants: never panics; a body compared with itself is a match; a JSON
//! body compared with its own re-serialisation (pretty-printed, and with
//! every array reversed when array order is ignored) is a match; the report
//! keeps its bounds (listed differences capped, counts consistent,
//! rendered values cut).
#![no_main]

use http::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use strangler::shadow::compare::{
    compare, Answer, CompareRules, Comparison, MAX_RENDERED_CHARS, MAX_REPORTED_DIFFERENCES,
};
use strangler::shadow::fieldpath::FieldPattern;

const CONTENT_TYPES: [Option<&str>; 4] = [
    Some("application/json"),
    Some("text/plain; charset=utf-8"),
    None,
    Some("application/octet-stream"),
];
const ENCODINGS: [Option<&str>; 4] = [None, Some("gzip"), Some("br"), Some("zstd")];
const IGNORED: [&str; 4] = ["$.id", "$..updated_at", "$.items[*].etag", "$.*.meta"];

fuzz_target!(|data: &[u8]| {
    let [flags, len_lo, len_hi, rest @ ..] = data else {
        return;
    };
    let flags = *flags;
    let split = usize::from(u16::from_le_bytes([*len_lo, *len_hi])).min(rest.len());
    let (primary, candidate) = rest.split_at(split);
    let rules = CompareRules {
        array_order_ignored: flags & 1 != 0,
        ignore_fields: if flags & 2 != 0 {
            IGNORED
                .iter()
                .map(|p| FieldPattern::parse(p).expect("the fixed patterns parse"))
                .collect()
        } else {
            Vec::new()
        },
        number_tolerance: if flags & 64 != 0 { 0.5 } else { 0.0 },
        // Small, so a decompression bomb costs little fuzzing time.
        max_decoded_bytes: 1 << 20,
        ..CompareRules::default()
    };
    let mut headers = HeaderMap::new();
    if let Some(ct) = CONTENT_TYPES[usize::from(flags >> 2 & 3)] {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    let plain = headers.clone();
    if let Some(ce) = ENCODINGS[usize::from(flags >> 4 & 3)] {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(ce));
    }
    let answer = |body| Answer {
        status: 200,
        headers: &headers,
        body,
    };

    for (p, c) in [(primary, candidate), (candidate, primary)] {
        check_bounds(&compare(&rules, &answer(p), &answer(c)));
    }
    let same = compare(&rules, &answer(primary), &answer(primary));
    assert!(same.is_match(), "a body differs from itself: {same:?}");

    // The same document written differently must still match.
    if let Ok(mut value) = serde_json::from_slice::<Value>(primary) {
        if rules.array_order_ignored {
            reverse_arrays(&mut value);
        }
        let rewritten = serde_json::to_vec_pretty(&value).expect("a Value serialises");
        let plain_answer = |body| Answer {
            status: 200,
            headers: &plain,
            body,
        };
        let result = compare(&rules, &plain_answer(primary), &plain_answer(&rewritten));
        check_bounds(&result);
        let is_json = !matches!(flags >> 2 & 3, 1 | 3);
        if is_json {
            assert!(
                result.is_match(),
                "a document differs from its re-serialisation {:?}: {result:?}",
                String::from_utf8_lossy(&rewritten)
            );
        }
    }
});

fn check_bounds(result: &Comparison) {
    assert!(result.differences.len() <= MAX_REPORTED_DIFFERENCES);
    assert!(result.total_differences >= result.differences.len());
    for difference in &result.differences {
        for side in [&difference.primary, &difference.candidate]
            .into_iter()
            .flatten()
        {
            // The cut adds one `…`.
            assert!(side.chars().count() <= MAX_RENDERED_CHARS + 1);
        }
    }
}

fn reverse_arrays(value: &mut Value) {
    match value {
        Value::Array(items) => {
            items.reverse();
            items.iter_mut().for_each(reverse_arrays);
        }
        Value::Object(map) => map.values_mut().for_each(reverse_arrays),
        _ => {}
    }
}

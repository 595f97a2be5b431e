use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::super::decode::{tests::encode, Coding};
use super::super::fieldpath::FieldPattern;
use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    map
}

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

fn answer<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Answer<'a> {
    Answer {
        status: 200,
        headers,
        body,
    }
}

/// Compares two JSON bodies under `rules`, both sent as application/json.
fn json(rules: &CompareRules, primary: &str, candidate: &str) -> Comparison {
    let h = headers(JSON);
    compare(
        rules,
        &answer(&h, primary.as_bytes()),
        &answer(&h, candidate.as_bytes()),
    )
}

fn rules_ignoring(patterns: &[&str]) -> CompareRules {
    CompareRules {
        ignore_fields: patterns
            .iter()
            .map(|p| FieldPattern::parse(p).expect("test pattern"))
            .collect(),
        ..CompareRules::default()
    }
}

fn summary(cmp: &Comparison) -> Vec<(&str, DiffKind)> {
    cmp.differences
        .iter()
        .map(|d| (d.path.as_str(), d.kind))
        .collect()
}

/// Object key order never matters, at any depth.
#[test]
fn key_order_is_irrelevant() {
    let cmp = json(
        &CompareRules::default(),
        r#"{"a":1,"b":{"x":[1,{"p":1,"q":2}],"y":2}}"#,
        r#"{"b":{"y":2,"x":[1,{"q":2,"p":1}]},"a":1}"#,
    );
    assert!(cmp.is_match(), "{:?}", cmp.differences);
    assert_eq!(cmp.body_kind, BodyKind::Json);
}

/// Ignored fields may differ, be missing or be extra without a mismatch.
#[test]
fn ignored_fields_do_not_mismatch() {
    let primary = r#"{"generated_at":"10:00","request_id":"a","meta":{"request_id":"b"},
        "items":[{"id":1,"etag":"x"},{"id":2,"etag":"y","more":{"request_id":"c"}}]}"#;
    let candidate = r#"{"generated_at":"10:01","meta":{"request_id":"B"},
        "items":[{"id":1,"etag":"X"},{"id":2,"more":{"request_id":"C"}}]}"#;
    let rules = rules_ignoring(&["$.generated_at", "$..request_id", "$.items[*].etag"]);
    let cmp = json(&rules, primary, candidate);
    assert!(cmp.is_match(), "{:?}", cmp.differences);
    // The same bodies do differ when nothing is ignored.
    assert_eq!(
        json(&CompareRules::default(), primary, candidate).total_differences,
        6
    );
}

/// An index-specific pattern ignores that element only.
#[test]
fn index_pattern_ignores_one_element() {
    let rules = rules_ignoring(&["$.items[0].id"]);
    let cmp = json(
        &rules,
        r#"{"items":[{"id":1},{"id":2}]}"#,
        r#"{"items":[{"id":9},{"id":8}]}"#,
    );
    assert_eq!(summary(&cmp), [("$.items[1].id", DiffKind::Changed)]);
}

/// A real change is reported with its concrete path, label and values.
#[test]
fn real_change_has_path_and_values() {
    let cmp = json(
        &CompareRules::default(),
        r#"{"stock":{"qty":5,"where":"A"}}"#,
        r#"{"stock":{"qty":4,"where":"A"}}"#,
    );
    assert_eq!(
        cmp.differences,
        [Difference {
            path: "$.stock.qty".into(),
            field: "$.stock.qty".into(),
            kind: DiffKind::Changed,
            primary: Some("5".into()),
            candidate: Some("4".into()),
        }]
    );
    assert!(!cmp.is_match());
}

/// Missing, extra and type differences are told apart.
#[test]
fn missing_extra_and_type() {
    let cmp = json(
        &CompareRules::default(),
        r#"{"a":1,"b":2,"c":"3","e":{"k":1}}"#,
        r#"{"a":1,"c":3,"d":4,"e":[1]}"#,
    );
    let mut got = summary(&cmp);
    got.sort_by_key(|(path, _)| *path);
    assert_eq!(
        got,
        [
            ("$.b", DiffKind::Missing),
            ("$.c", DiffKind::Type),
            ("$.d", DiffKind::Extra),
            ("$.e", DiffKind::Type),
        ]
    );
    let c = cmp
        .differences
        .iter()
        .find(|d| d.path == "$.c")
        .expect("c differs");
    assert_eq!(
        (c.primary.as_deref(), c.candidate.as_deref()),
        (Some("\"3\""), Some("3"))
    );
    let b = cmp
        .differences
        .iter()
        .find(|d| d.path == "$.b")
        .expect("b differs");
    assert_eq!(
        (b.primary.as_deref(), b.candidate.as_deref()),
        (Some("2"), None)
    );
}

/// A different root type is reported at `$`.
#[test]
fn root_type_change() {
    let cmp = json(&CompareRules::default(), "[]", "{}");
    assert_eq!(summary(&cmp), [("$", DiffKind::Type)]);
}

/// By default arrays compare by position; lengths show as missing/extra.
#[test]
fn arrays_in_order_report_per_index() {
    let rules = CompareRules::default();
    let cmp = json(&rules, r#"{"items":[1,2,3]}"#, r#"{"items":[1,3]}"#);
    assert_eq!(
        summary(&cmp),
        [
            ("$.items[1]", DiffKind::Changed),
            ("$.items[2]", DiffKind::Missing)
        ]
    );
    assert_eq!(cmp.differences[0].field, "$.items[*]");
    let cmp = json(&rules, r#"[1]"#, r#"[1,{"x":1}]"#);
    assert_eq!(summary(&cmp), [("$[1]", DiffKind::Extra)]);
    assert!(!json(&rules, "[1,2,3]", "[3,2,1]").is_match());
}

/// With order ignored, a permutation matches, and unpaired elements are
/// reported at `[*]`, duplicates counted.
#[test]
fn arrays_as_multisets() {
    let rules = CompareRules {
        array_order_ignored: true,
        ..CompareRules::default()
    };
    assert!(json(&rules, "[1,2,3]", "[3,2,1]").is_match());
    assert!(json(&rules, r#"[[1,2],{"a":[3,4]}]"#, r#"[{"a":[4,3]},[2,1]]"#).is_match());

    let cmp = json(
        &rules,
        r#"{"items":[{"id":1},{"id":2},{"id":3}]}"#,
        r#"{"items":[{"id":3},{"id":1},{"id":4}]}"#,
    );
    assert_eq!(
        summary(&cmp),
        [
            ("$.items[*]", DiffKind::Missing),
            ("$.items[*]", DiffKind::Extra)
        ]
    );
    assert_eq!(cmp.differences[0].primary.as_deref(), Some(r#"{"id":2}"#));
    assert_eq!(cmp.differences[1].candidate.as_deref(), Some(r#"{"id":4}"#));

    let cmp = json(&rules, "[1,1,2]", "[1,2,2]");
    assert_eq!(
        summary(&cmp),
        [("$[*]", DiffKind::Missing), ("$[*]", DiffKind::Extra)]
    );
    assert!(!json(&rules, "[1,1]", "[1]").is_match());
}

/// Ignored fields inside unordered elements do not stop them pairing.
#[test]
fn multiset_respects_ignored_fields() {
    let rules = CompareRules {
        array_order_ignored: true,
        ..rules_ignoring(&["$.items[*].etag"])
    };
    let cmp = json(
        &rules,
        r#"{"items":[{"id":1,"etag":"a"},{"id":2,"etag":"b"}]}"#,
        r#"{"items":[{"id":2,"etag":"B"},{"id":1}]}"#,
    );
    assert!(cmp.is_match(), "{:?}", cmp.differences);
}

/// Numbers: 1 equals 1.0, large integers compare exactly, and a tolerance
/// widens equality.
#[test]
fn number_tolerance() {
    let exact = CompareRules::default();
    assert!(json(&exact, r#"{"n":1}"#, r#"{"n":1.0}"#).is_match());
    assert!(json(&exact, r#"{"n":-0.0}"#, r#"{"n":0}"#).is_match());
    assert!(!json(&exact, r#"{"n":0.1}"#, r#"{"n":0.1000001}"#).is_match());
    assert!(!json(&exact, "9007199254740993", "9007199254740992").is_match());
    // Multiset pairing hashes numbers: -0.0, 0 and 0.0 must land together.
    let unordered = CompareRules {
        array_order_ignored: true,
        ..CompareRules::default()
    };
    assert!(json(&unordered, "[-0.0, 1, 2.0]", "[2, 1.0, 0]").is_match());

    let loose = CompareRules {
        number_tolerance: 0.5,
        array_order_ignored: true,
        ..CompareRules::default()
    };
    assert!(json(&loose, r#"{"n":0.1}"#, r#"{"n":0.1000001}"#).is_match());
    assert!(json(&loose, r#"{"n":100}"#, r#"{"n":100.4}"#).is_match());
    assert!(!json(&loose, r#"{"n":100}"#, r#"{"n":101}"#).is_match());
    // Tolerance also applies when pairing multiset elements.
    assert!(json(&loose, "[1, 5.2]", "[5, 1.1]").is_match());
}

/// The same float written two ways is equal under an exact rule: parsing is
/// correctly rounded (serde_json's `float_roundtrip`). Found by
/// fuzz/json_compare; the default parser landed one ULP away.
#[test]
fn float_spellings_compare_equal() {
    let exact = CompareRules::default();
    let cmp = json(
        &exact,
        r#"{"price":1925474000001453814567.0}"#,
        r#"{"price":1.9254740000014538e+21}"#,
    );
    assert!(cmp.is_match(), "{:?}", cmp.differences);
}

/// gzip, br and zstd candidate bodies are decoded before comparing.
#[test]
fn encoded_bodies_are_decoded_first() {
    let plain = br#"{"stock":{"qty":5}}"#;
    let changed = br#"{"stock":{"qty":4}}"#;
    let primary_headers = headers(JSON);
    for (coding, name) in [
        (Coding::Gzip, "gzip"),
        (Coding::Brotli, "br"),
        (Coding::Zstd, "zstd"),
    ] {
        let h = headers(&[
            ("content-type", "application/json"),
            ("content-encoding", name),
        ]);
        let same = encode(coding, plain);
        let cmp = compare(
            &CompareRules::default(),
            &answer(&primary_headers, plain),
            &answer(&h, &same),
        );
        assert!(cmp.is_match(), "{name}: {:?}", cmp.differences);
        let other = encode(coding, changed);
        let cmp = compare(
            &CompareRules::default(),
            &answer(&primary_headers, plain),
            &answer(&h, &other),
        );
        assert_eq!(
            summary(&cmp),
            [("$.stock.qty", DiffKind::Changed)],
            "{name}"
        );
    }
}

/// A compressed body that expands past the cap becomes a `body` difference.
#[test]
fn zip_bomb_is_stopped_by_cap() {
    let bomb = encode(Coding::Gzip, &vec![b' '; 4 << 20]);
    let rules = CompareRules {
        max_decoded_bytes: 1 << 20,
        ..CompareRules::default()
    };
    let plain = headers(JSON);
    let gz = headers(&[
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ]);
    let cmp = compare(&rules, &answer(&plain, b"{}"), &answer(&gz, &bomb));
    assert_eq!(summary(&cmp), [("body", DiffKind::Changed)]);
    let text = cmp.differences[0].candidate.as_deref().unwrap_or_default();
    assert!(text.contains("exceeds the 1048576-byte limit"), "{text}");
}

/// A body that is not what its Content-Encoding says is a difference with
/// the error and its cause, not a panic.
#[test]
fn decode_error_is_a_difference() {
    let plain = headers(JSON);
    let gz = headers(&[
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ]);
    let cmp = compare(
        &CompareRules::default(),
        &answer(&plain, b"{}"),
        &answer(&gz, b"{}"),
    );
    assert_eq!(summary(&cmp), [("body", DiffKind::Changed)]);
    let text = cmp.differences[0].candidate.as_deref().unwrap_or_default();
    assert!(
        text.starts_with("body is not valid `gzip` data: "),
        "{text}"
    );
    assert_eq!(
        cmp.differences[0].primary.as_deref(),
        Some("decoded, 2 bytes")
    );
}

/// A candidate that answers non-JSON for a JSON route is a type difference.
#[test]
fn candidate_not_json() {
    let cmp = json(&CompareRules::default(), r#"{"a":1}"#, "<html>oops</html>");
    assert_eq!(summary(&cmp), [("body", DiffKind::Type)]);
    let text = cmp.differences[0].candidate.as_deref().unwrap_or_default();
    assert!(text.starts_with("not JSON: "), "{text}");
}

/// Past the cap, differences are counted but not listed.
#[test]
fn reported_differences_are_capped() {
    let primary: Vec<String> = (0..1000).map(|i| format!("\"k{i}\":{i}")).collect();
    let candidate: Vec<String> = (0..1000).map(|i| format!("\"k{i}\":-{i}")).collect();
    let cmp = json(
        &CompareRules::default(),
        &format!("{{{}}}", primary.join(",")),
        &format!("{{{}}}", candidate.join(",")),
    );
    assert_eq!(cmp.differences.len(), MAX_REPORTED_DIFFERENCES);
    // `k0` is 0 on both sides.
    assert_eq!(cmp.total_differences, 999);
}

/// Long values are cut to the rendering limit, with a mark.
#[test]
fn long_values_are_truncated() {
    let long = "x".repeat(10_000);
    let cmp = json(
        &CompareRules::default(),
        &format!(r#"{{"a":"{long}"}}"#),
        r#"{"a":"short"}"#,
    );
    let primary = cmp.differences[0].primary.as_deref().unwrap_or_default();
    assert_eq!(primary.chars().count(), MAX_RENDERED_CHARS + 1);
    assert!(primary.ends_with('…'));
    assert_eq!(cmp.differences[0].candidate.as_deref(), Some("\"short\""));
}

mod envelope;

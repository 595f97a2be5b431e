//! Status, headers, and bodies that are not JSON.

use super::*;

fn with_status<'a>(status: u16, headers: &'a HeaderMap, body: &'a [u8]) -> Answer<'a> {
    Answer {
        status,
        headers,
        body,
    }
}

/// A different status is reported on `status` with both codes.
#[test]
fn status_difference() {
    let h = headers(JSON);
    let cmp = compare(
        &CompareRules::default(),
        &with_status(200, &h, b"{}"),
        &with_status(500, &h, b"{}"),
    );
    assert_eq!(
        cmp.differences,
        [Difference {
            path: "status".into(),
            field: "status".into(),
            kind: DiffKind::Changed,
            primary: Some("200".into()),
            candidate: Some("500".into()),
        }]
    );
}

/// Content-Type is compared by default, ignoring case and spacing.
#[test]
fn content_type_difference() {
    let rules = CompareRules::default();
    let json_h = headers(&[("content-type", "application/json; charset=utf-8")]);
    let same = headers(&[("content-type", "Application/JSON;charset=UTF-8")]);
    let html = headers(&[("content-type", "text/html")]);
    let none = HeaderMap::new();
    assert!(compare(&rules, &answer(&json_h, b"{}"), &answer(&same, b"{}")).is_match());

    let cmp = compare(&rules, &answer(&json_h, b"{}"), &answer(&html, b"{}"));
    assert_eq!(summary(&cmp), [("header:content-type", DiffKind::Changed)]);
    assert_eq!(cmp.differences[0].candidate.as_deref(), Some("text/html"));

    let cmp = compare(&rules, &answer(&json_h, b"{}"), &answer(&none, b"{}"));
    assert_eq!(summary(&cmp), [("header:content-type", DiffKind::Missing)]);
}

/// `date`, `server` and hop-by-hop headers are never compared, even when
/// listed; `ignore_headers` wins over `headers`.
#[test]
fn date_and_hop_by_hop_never_compared() {
    let p = headers(&[
        ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("server", "monolith"),
        ("connection", "close"),
        ("etag", "\"1\""),
    ]);
    let c = headers(&[
        ("date", "Mon, 01 Jan 2024 00:00:07 GMT"),
        ("server", "orders"),
        ("connection", "keep-alive"),
        ("etag", "\"2\""),
    ]);
    let listed =
        |names: &[&'static str]| names.iter().map(|n| HeaderName::from_static(n)).collect();
    let rules = CompareRules {
        headers: listed(&["date", "server", "connection", "etag"]),
        ignore_headers: listed(&["etag"]),
        ..CompareRules::default()
    };
    assert!(compare(&rules, &answer(&p, b""), &answer(&c, b"")).is_match());

    // Without the ignore, the etag difference shows, and only it.
    let rules = CompareRules {
        ignore_headers: Vec::new(),
        ..rules
    };
    let cmp = compare(&rules, &answer(&p, b""), &answer(&c, b""));
    assert_eq!(summary(&cmp), [("header:etag", DiffKind::Changed)]);
}

/// Text bodies: the first differing line is listed, the others counted.
#[test]
fn text_line_diff() {
    let h = headers(&[("content-type", "text/plain; charset=utf-8")]);
    let cmp = compare(
        &CompareRules::default(),
        &answer(&h, b"a\nb\nc\nd"),
        &answer(&h, b"a\r\nB\r\nc\r\nD\r\ne\r\n"),
    );
    assert_eq!(cmp.body_kind, BodyKind::Text);
    assert_eq!(
        cmp.differences,
        [Difference {
            path: "line:2".into(),
            field: "line".into(),
            kind: DiffKind::Changed,
            primary: Some("b".into()),
            candidate: Some("B".into()),
        }]
    );
    assert_eq!(cmp.total_differences, 3);

    let cmp = compare(
        &CompareRules::default(),
        &answer(&h, b"a\nb"),
        &answer(&h, b"a"),
    );
    assert_eq!(summary(&cmp), [("line:2", DiffKind::Missing)]);
    assert!(compare(
        &CompareRules::default(),
        &answer(&h, b"a\nb"),
        &answer(&h, b"a\r\nb")
    )
    .is_match());
}

/// Other bodies compare as bytes, reported with length and digest.
#[test]
fn binary_digest() {
    let h = headers(&[("content-type", "application/octet-stream")]);
    let rules = CompareRules::default();
    let cmp = compare(
        &rules,
        &answer(&h, b"\x00\x01\x02"),
        &answer(&h, b"\x00\x01\x03"),
    );
    assert_eq!(cmp.body_kind, BodyKind::Binary);
    assert_eq!(summary(&cmp), [("body", DiffKind::Changed)]);
    let (p, c) = (&cmp.differences[0].primary, &cmp.differences[0].candidate);
    assert!(p
        .as_deref()
        .unwrap_or_default()
        .starts_with("3 bytes, fnv1a64 "));
    assert_ne!(p, c);
    assert!(compare(&rules, &answer(&h, b"\xff\xfe"), &answer(&h, b"\xff\xfe")).is_match());
}

/// Without a Content-Type, a body that parses as JSON is compared as JSON,
/// and anything else as bytes.
#[test]
fn sniffed_json_without_content_type() {
    let none = HeaderMap::new();
    let rules = CompareRules::default();
    let cmp = compare(
        &rules,
        &answer(&none, br#"{"a":1,"b":2}"#),
        &answer(&none, br#"{"b":2,"a":1}"#),
    );
    assert_eq!(cmp.body_kind, BodyKind::Json);
    assert!(cmp.is_match());

    let cmp = compare(&rules, &answer(&none, b"plain"), &answer(&none, b"plain!"));
    assert_eq!(cmp.body_kind, BodyKind::Binary);
    assert_eq!(summary(&cmp), [("body", DiffKind::Changed)]);
}

/// A body declared JSON that is not JSON falls back to a line diff.
#[test]
fn invalid_primary_json_compares_as_text() {
    let h = headers(JSON);
    let cmp = compare(
        &CompareRules::default(),
        &answer(&h, b"oops\n1"),
        &answer(&h, b"oops\n2"),
    );
    assert_eq!(cmp.body_kind, BodyKind::Text);
    assert_eq!(summary(&cmp), [("line:2", DiffKind::Changed)]);
}

/// Two primary answers compared give the generalised noise labels
/// (Diffy-style noise learning uses `field`).
#[test]
fn noise_labels_from_two_primaries() {
    let cmp = json(
        &CompareRules::default(),
        r#"{"ts":1,"items":[{"price":1},{"price":2}]}"#,
        r#"{"ts":2,"items":[{"price":1},{"price":3}]}"#,
    );
    let mut fields: Vec<&str> = cmp.differences.iter().map(|d| d.field.as_str()).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["$.items[*].price", "$.ts"]);
    // The label, used as an ignore rule, silences the noise.
    let rules = rules_ignoring(&fields);
    assert!(json(
        &rules,
        r#"{"ts":1,"items":[{"price":1}]}"#,
        r#"{"ts":2,"items":[{"price":9}]}"#
    )
    .is_match());
}

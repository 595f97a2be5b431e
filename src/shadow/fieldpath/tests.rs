use super::*;

fn key(k: &str) -> PathSegment {
    PathSegment::Key(k.to_owned())
}

fn idx(i: usize) -> PathSegment {
    PathSegment::Index(i)
}

fn pattern(text: &str) -> FieldPattern {
    FieldPattern::parse(text).expect("test pattern is valid")
}

/// A plain child path matches only that field, at that depth.
#[test]
fn child_path_matches_exact_field_only() {
    let p = pattern("$.generated_at");
    assert!(p.matches(&[key("generated_at")]));
    assert!(!p.matches(&[key("meta"), key("generated_at")]));
    assert!(!p.matches(&[key("generated")]));
    assert!(!p.matches(&[]));
}

/// `..` matches the field at the top level and at any depth below.
#[test]
fn recursive_descent_matches_any_depth() {
    let p = pattern("$..request_id");
    assert!(p.matches(&[key("request_id")]));
    assert!(p.matches(&[key("a"), idx(3), key("b"), key("request_id")]));
    assert!(!p.matches(&[key("request_id"), key("x")]));
    assert!(!p.matches(&[key("a"), key("request")]));
}

/// `[*]` matches every index and `[0]` only the first.
#[test]
fn index_and_wildcard_index() {
    let any = pattern("$.items[*].etag");
    assert!(any.matches(&[key("items"), idx(0), key("etag")]));
    assert!(any.matches(&[key("items"), idx(41), key("etag")]));
    assert!(!any.matches(&[key("items"), key("etag")]));

    let first = pattern("$.items[0].id");
    assert!(first.matches(&[key("items"), idx(0), key("id")]));
    assert!(!first.matches(&[key("items"), idx(1), key("id")]));
}

/// `.*` matches any key (and, as in RFC 9535, any index) at one level.
#[test]
fn wildcard_key_spans_one_level() {
    let p = pattern("$.a.*.b");
    assert!(p.matches(&[key("a"), key("x"), key("b")]));
    assert!(p.matches(&[key("a"), idx(2), key("b")]));
    assert!(!p.matches(&[key("a"), key("x"), key("y"), key("b")]));
}

/// Bracketed keys allow any characters, with JSON-style escapes.
#[test]
fn quoted_keys_parse_with_escapes() {
    let p = pattern(r#"$["weird key"]['it\'s'].x-request-id"#);
    assert!(p.matches(&[key("weird key"), key("it's"), key("x-request-id")]));
    let q = pattern(r#"$["a\"b\\c\u0041"]"#);
    assert!(q.matches(&[key("a\"b\\cA")]));
}

/// Descent can also lead to a bracket selector.
#[test]
fn descent_into_brackets() {
    let p = pattern("$..[\"x y\"]");
    assert!(p.matches(&[key("a"), key("x y")]));
    let q = pattern("$..[*]");
    assert!(q.matches(&[key("a"), idx(1)]));
}

/// Bad syntax is refused with the byte position of the problem.
#[test]
fn bad_syntax_reports_position() {
    let cases: &[(&str, usize)] = &[
        ("generated_at", 0),
        ("$.", 2),
        ("$.items[", 8),
        ("$.items[x]", 8),
        ("$.items[1", 9),
        ("$.a b", 3),
        ("$.9lives", 2),
        ("$.a.[0]", 4),
        ("$[\"open", 7),
        ("$[\"bad\\q\"]", 7),
        ("$[99999999999999999999999]", 2),
    ];
    for (text, pos) in cases {
        let err = FieldPattern::parse(text).expect_err(text);
        assert_eq!(err.position(), *pos, "{text}: {err}");
    }
    assert_eq!(FieldPattern::parse("$"), Err(FieldPathError::WholeDocument));
    assert_eq!(FieldPattern::parse("x"), Err(FieldPathError::MissingRoot));
}

/// The error message says what was expected and what was found.
#[test]
fn error_message_is_readable() {
    let err = FieldPattern::parse("$.items[x]").expect_err("bad index");
    assert_eq!(
        err.to_string(),
        "at byte 8: expected an index, `*` or a quoted key, found `x`"
    );
}

/// Patterns longer than the matcher's bitset are refused, not truncated.
#[test]
fn too_many_steps_is_refused() {
    let long = format!("${}", ".a".repeat(MAX_PATTERN_STEPS + 1));
    assert_eq!(
        FieldPattern::parse(&long),
        Err(FieldPathError::TooManySteps {
            max: MAX_PATTERN_STEPS
        })
    );
    let fits = format!("${}", ".a".repeat(MAX_PATTERN_STEPS));
    assert!(FieldPattern::parse(&fits).is_ok());
}

/// Concrete and generalised renderings, with quoting for odd keys.
#[test]
fn render_concrete_and_generalised() {
    let path = [key("items"), idx(3), key("price")];
    assert_eq!(render_path(&path), "$.items[3].price");
    assert_eq!(render_generalised(&path), "$.items[*].price");
    assert_eq!(render_path(&[key("stock"), key("qty")]), "$.stock.qty");
    assert_eq!(render_path(&[key("weird key")]), r#"$["weird key"]"#);
    assert_eq!(render_path(&[key("1st")]), r#"$["1st"]"#);
    assert_eq!(render_path(&[key("")]), r#"$[""]"#);
    assert_eq!(render_path(&[key("q\"\n\u{1}")]), r#"$["q\"\n\u0001"]"#);
    assert_eq!(render_path(&[]), "$");
}

/// Whatever is rendered parses back into a pattern matching the same path,
/// so a label can be pasted into an ignore rule.
#[test]
fn rendering_round_trips_through_parse() {
    let path = [
        key("a b"),
        key("x-id"),
        idx(7),
        key("\"\\\t\u{2}é"),
        key("_ok"),
    ];
    let concrete = pattern(&render_path(&path));
    assert!(concrete.matches(&path));
    let general = pattern(&render_generalised(&path));
    let mut other = path.to_vec();
    other[2] = idx(9);
    assert!(general.matches(&other));
    assert!(!concrete.matches(&other));
}

/// `Display` and `as_str` give back the text as written.
#[test]
fn display_is_source_text() {
    let p: FieldPattern = "$..request_id".parse().expect("valid");
    assert_eq!(p.to_string(), "$..request_id");
    assert_eq!(p.as_str(), "$..request_id");
}

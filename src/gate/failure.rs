//! Failure by content: a JSON answer that reports a failure (a payment
//! `{"status": "failed"}` answered with 200) counts as failed for the gate
//! and the error metrics, as the route's `failure_fields` say.

use std::sync::Arc;

use crate::shadow::decode::decode_body;
use crate::shadow::fieldpath::{FieldPattern, PathSegment};

/// Only this much of an answer is kept to look for failure fields; a
/// larger answer is judged by its status alone.
pub const FAILURE_BODY_CAP: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct FailureField {
    pub pattern: FieldPattern,
    pub equals: serde_json::Value,
}

/// The route's failure fields; empty for most routes.
pub type FailureFields = Arc<[FailureField]>;

/// Whether `body` (still content-encoded) is JSON with a failure field.
pub fn body_fails(fields: &[FailureField], body: &[u8], content_encoding: Option<&str>) -> bool {
    let Ok(decoded) = decode_body(content_encoding, body, FAILURE_BODY_CAP * 8) else {
        return false;
    };
    let Ok(document) = serde_json::from_slice::<serde_json::Value>(&decoded) else {
        return false;
    };
    let mut path = Vec::new();
    fields
        .iter()
        .any(|field| any_match(&document, &mut path, field))
}

fn any_match(value: &serde_json::Value, path: &mut Vec<PathSegment>, field: &FailureField) -> bool {
    if field.pattern.matches(path) && *value == field.equals {
        return true;
    }
    match value {
        serde_json::Value::Object(map) => map.iter().any(|(key, child)| {
            path.push(PathSegment::Key(key.clone()));
            let found = any_match(child, path, field);
            path.pop();
            found
        }),
        serde_json::Value::Array(items) => items.iter().enumerate().any(|(index, child)| {
            path.push(PathSegment::Index(index));
            let found = any_match(child, path, field);
            path.pop();
            found
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(path: &str, equals: serde_json::Value) -> FailureField {
        FailureField {
            pattern: FieldPattern::parse(path).expect("valid path"),
            equals,
        }
    }

    #[test]
    fn a_failure_field_is_found_at_its_path_only() {
        let fields = [field("$.status", serde_json::json!("failed"))];
        assert!(body_fails(&fields, br#"{"status":"failed","id":1}"#, None));
        assert!(!body_fails(&fields, br#"{"status":"paid"}"#, None));
        assert!(!body_fails(
            &fields,
            br#"{"payment":{"status":"failed"}}"#,
            None
        ));
        assert!(!body_fails(&fields, b"not json", None));
        let nested = [field("$..status", serde_json::json!("failed"))];
        assert!(body_fails(
            &nested,
            br#"{"payment":{"status":"failed"}}"#,
            None
        ));
    }
}

//! Per-route request and response transforms: path rewrite, header edits.
//!
//! Compiled once per snapshot; applying them per request only copies the
//! values the route author wrote.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::matcher::PathParams;

#[derive(Debug, Clone)]
pub enum Rewrite {
    /// Replaces the matched prefix `from` with `to` (`/` strips it).
    Prefix { from: Box<str>, to: Box<str> },
    /// A whole new path; `{name}` takes a template parameter's value.
    Template(Box<str>),
}

impl Rewrite {
    /// The path to forward, given the routed (normalised) path.
    pub fn apply(&self, path: &str, params: &PathParams) -> String {
        match self {
            Rewrite::Prefix { from, to } => {
                let rest = path.strip_prefix(&**from).unwrap_or(path);
                let joined = match (to.ends_with('/'), rest.starts_with('/')) {
                    (true, true) => format!("{}{}", to, &rest[1..]),
                    (false, false) if !rest.is_empty() => format!("{to}/{rest}"),
                    _ => format!("{to}{rest}"),
                };
                if joined.is_empty() {
                    "/".to_string()
                } else {
                    joined
                }
            }
            Rewrite::Template(template) => substitute(template, params),
        }
    }
}

fn substitute(template: &str, params: &PathParams) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = rest[open + 1..open + close].trim_start_matches('*');
        if let Some((_, value)) = params.0.iter().find(|(n, _)| &**n == name) {
            out.push_str(value);
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Header edits in the order a reader expects: remove, then set, then add.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub remove: Box<[HeaderName]>,
    pub set: Box<[(HeaderName, HeaderValue)]>,
    pub add: Box<[(HeaderName, HeaderValue)]>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in self.remove.iter() {
            headers.remove(name);
        }
        for (name, value) in self.set.iter() {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in self.add.iter() {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrite_strips_or_replaces_on_segment_boundaries() {
        let strip = Rewrite::Prefix {
            from: "/api/orders".into(),
            to: "/".into(),
        };
        assert_eq!(strip.apply("/api/orders/7", &PathParams::default()), "/7");
        assert_eq!(strip.apply("/api/orders", &PathParams::default()), "/");
        let replace = Rewrite::Prefix {
            from: "/api".into(),
            to: "/v2".into(),
        };
        assert_eq!(
            replace.apply("/api/orders", &PathParams::default()),
            "/v2/orders"
        );
    }

    #[test]
    fn template_rewrite_substitutes_parameters() {
        let params = PathParams(vec![("id".into(), "42".into())]);
        let rewrite = Rewrite::Template("/v2/orders/{id}/detail".into());
        assert_eq!(rewrite.apply("/ignored", &params), "/v2/orders/42/detail");
    }
}

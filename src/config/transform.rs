//! Compiling a route's transforms: path rewrite and header edits.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue};

use super::route::{header_name, Problems};
use super::schema::{HeaderOpsSpec, RouteSpec};
use crate::routing::{HeaderOps, PathMatch, Rewrite};

pub(crate) fn compile_rewrite(
    spec: &RouteSpec,
    path: &Option<PathMatch>,
    problems: &mut Problems,
) -> Option<Rewrite> {
    let rewrite = spec.rewrite.as_ref()?;
    match (&rewrite.prefix, &rewrite.path, path) {
        (Some(to), None, Some(PathMatch::Prefix(from))) => Some(Rewrite::Prefix {
            from: if &**from == "/" {
                "".into()
            } else {
                from.clone()
            },
            to: to.as_str().into(),
        }),
        (Some(_), None, _) => {
            problems.at("rewrite.prefix", "a prefix rewrite needs `match.prefix`");
            None
        }
        (None, Some(template), _) => {
            let known = match path {
                Some(PathMatch::Template { pattern, .. }) => pattern.to_string(),
                _ => String::new(),
            };
            let missing = template
                .split('{')
                .skip(1)
                .filter_map(|p| {
                    p.split_once('}')
                        .map(|(name, _)| name.trim_start_matches('*'))
                })
                .find(|name| {
                    !known.contains(&format!("{{{name}}}"))
                        && !known.contains(&format!("{{*{name}}}"))
                });
            if !template.starts_with('/') {
                problems.at("rewrite.path", "must start with `/`");
                None
            } else if let Some(name) = missing {
                problems.at(
                    "rewrite.path",
                    format!("uses `{{{name}}}`, which `match.path` does not define"),
                );
                None
            } else {
                Some(Rewrite::Template(template.as_str().into()))
            }
        }
        _ => {
            problems.at("rewrite", "set either `prefix` or `path`");
            None
        }
    }
}

pub(crate) fn compile_header_ops(
    spec: Option<&HeaderOpsSpec>,
    key: &str,
    problems: &mut Problems,
) -> HeaderOps {
    let Some(spec) = spec else {
        return HeaderOps::default();
    };
    let mut pairs = |map: &BTreeMap<String, String>,
                     op: &str|
     -> Box<[(HeaderName, HeaderValue)]> {
        map.iter()
            .filter_map(|(name, value)| {
                let at = format!("{key}.{op}.{name}");
                let name = header_name(name, &at, problems)?;
                let value = HeaderValue::from_str(value)
                    .map_err(|_| problems.at(&at, format!("`{value}` is not a valid header value")))
                    .ok()?;
                Some((name, value))
            })
            .collect()
    };
    let set = pairs(&spec.set, "set");
    let add = pairs(&spec.add, "add");
    let remove = spec
        .remove
        .iter()
        .filter_map(|name| header_name(name, &format!("{key}.remove"), problems))
        .collect();
    HeaderOps { remove, set, add }
}

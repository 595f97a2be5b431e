//! Request conditions of a route (path, method, host, headers, query) and the
//! index that finds the candidate routes for a path without scanning them all.
//!
//! Paths are looked up in three tiers, most specific first: exact paths in a
//! hash map, templates in a `matchit` radix tree, segment prefixes by walking
//! the path's own segment boundaries. Within a tier, candidates are kept
//! sorted by `Specificity`, so the first one whose other conditions hold wins.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use super::overlap::ShapeTree;
use super::RequestView;

/// How a route's path condition matches.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(Box<str>),
    /// `/api/orders/{id}`; `pattern` is kept for `explain` and rewrites.
    Template {
        pattern: Box<str>,
        literal_segments: u16,
        has_catch_all: bool,
    },
    /// Matches whole segments: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(Box<str>),
}

/// A test on a header or query value.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(Box<str>),
    Regex(Regex),
    Present(bool),
}

impl ValueMatch {
    fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (ValueMatch::Present(wanted), value) => value.is_some() == *wanted,
            (ValueMatch::Exact(expected), Some(value)) => &**expected == value,
            (ValueMatch::Regex(re), Some(value)) => re.is_match(value),
            (_, None) => false,
        }
    }
}

/// `*.example.com` or an exact host; compared case-insensitively, port ignored.
#[derive(Debug, Clone)]
pub enum HostMatch {
    Exact(Box<str>),
    Suffix(Box<str>),
}

impl HostMatch {
    pub(crate) fn matches(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return false };
        match self {
            HostMatch::Exact(expected) => host.eq_ignore_ascii_case(expected),
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// Everything but the path that a request must satisfy.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub methods: Option<Box<[Method]>>,
    pub host: Option<HostMatch>,
    pub headers: Box<[(HeaderName, ValueMatch)]>,
    pub query: Box<[(Box<str>, ValueMatch)]>,
}

impl Conditions {
    pub fn matches(&self, req: &RequestView) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.contains(req.method) {
                return false;
            }
        }
        if let Some(host) = &self.host {
            if !host.matches(req.host) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, test)| test.matches(header_str(req.headers, name)))
            && self
                .query
                .iter()
                .all(|(name, test)| test.matches(query_value(req.query, name)))
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first value of `name` in a raw query string. Values are compared as
/// sent (not percent-decoded), which is what a route author writes for ids
/// and flags.
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// How specific a route is; the greater value wins. Fields compare in
/// order: path kind, path length, method, host, header and query counts.
/// Declaration order breaks the remaining ties (earlier wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    pub path_kind: u8,
    pub path_length: u32,
    pub has_methods: bool,
    pub has_host: bool,
    pub header_count: u16,
    pub query_count: u16,
}

impl Specificity {
    pub fn of(path: &PathMatch, conditions: &Conditions) -> Specificity {
        let (path_kind, path_length) = match path {
            PathMatch::Exact(p) => (3, p.len() as u32),
            PathMatch::Template {
                literal_segments,
                has_catch_all,
                ..
            } => (
                if *has_catch_all { 1 } else { 2 },
                u32::from(*literal_segments),
            ),
            PathMatch::Prefix(p) => (0, p.len() as u32),
        };
        Specificity {
            path_kind,
            path_length,
            has_methods: conditions.methods.is_some(),
            has_host: conditions.host.is_some(),
            header_count: conditions.headers.len() as u16,
            query_count: conditions.query.len() as u16,
        }
    }
}

/// Candidate route indices for each path key, most specific first.
#[derive(Debug, Default)]
pub struct RouteIndex {
    exact: HashMap<Box<str>, Vec<usize>>,
    /// Maps a template to its slot in `template_slots`.
    templates: matchit::Router<usize>,
    /// Per slot, its routes as (precedence rank, route index), most
    /// specific first. The rank orders routes across slots.
    template_slots: Vec<Vec<(usize, usize)>>,
    template_keys: HashMap<String, usize>,
    /// Per slot, the other slots whose templates can match a path that
    /// this one matches. Empty unless templates overlap, which is rare.
    template_overlaps: Vec<Vec<usize>>,
    template_shapes: ShapeTree,
    template_count: usize,
    prefixes: HashMap<Box<str>, Vec<usize>>,
}

/// The index of a matched route and its template parameters.
#[derive(Debug, Clone, Default)]
pub struct PathParams(pub Vec<(Box<str>, Box<str>)>);

impl RouteIndex {
    /// Adds route `id`. `routes_sorted` insertion order must be by
    /// decreasing specificity; the caller guarantees it.
    pub fn insert(&mut self, id: usize, path: &PathMatch) -> Result<(), String> {
        match path {
            PathMatch::Exact(p) => self.exact.entry(p.clone()).or_default().push(id),
            PathMatch::Prefix(p) => self.prefixes.entry(p.clone()).or_default().push(id),
            PathMatch::Template { pattern, .. } => {
                let key = positional_pattern(pattern);
                let rank = self.template_count;
                if let Some(&slot) = self.template_keys.get(&key) {
                    self.template_slots[slot].push((rank, id));
                } else {
                    let slot = self.template_slots.len();
                    self.templates
                        .insert(key.clone(), slot)
                        .map_err(|e| format!("path template `{pattern}` conflicts: {e}"))?;
                    let segments: Vec<&str> = key.split('/').collect();
                    let mut overlaps = Vec::new();
                    self.template_shapes.overlapping(&segments, &mut overlaps);
                    for &other in &overlaps {
                        self.template_overlaps[other].push(slot);
                    }
                    self.template_shapes.insert(&segments, slot);
                    self.template_overlaps.push(overlaps);
                    self.template_keys.insert(key, slot);
                    self.template_slots.push(vec![(rank, id)]);
                }
                self.template_count += 1;
            }
        }
        Ok(())
    }

    /// The first candidate (most specific) whose conditions hold.
    pub fn select<'r>(
        &self,
        req: &RequestView,
        accepts: impl Fn(usize) -> bool,
        template_of: impl Fn(usize) -> &'r str,
    ) -> Option<(usize, PathParams)> {
        let path = req.path;
        if let Some(ids) = self.exact.get(path) {
            if let Some(&id) = ids.iter().find(|&&id| accepts(id)) {
                return Some((id, PathParams::default()));
            }
        }
        if let Ok(found) = self.templates.at(path) {
            let slot = *found.value;
            // The tree's pick fits the path. A template that overlaps it may
            // fit too, and rank higher (more literal segments, or declared
            // first) or take a request the pick's conditions refuse; so the
            // best accepted route of each is compared by rank.
            let best_of = |slot: usize, is_fit_known: bool| {
                self.template_slots[slot].iter().copied().find(|&(_, id)| {
                    accepts(id) && (is_fit_known || template_matches(template_of(id), path))
                })
            };
            let best = std::iter::once(best_of(slot, true))
                .chain(
                    self.template_overlaps[slot]
                        .iter()
                        .map(|&o| best_of(o, false)),
                )
                .flatten()
                .min();
            if let Some((_, id)) = best {
                return Some((id, params_of(template_of(id), path)));
            }
        }
        for prefix in segment_prefixes(path) {
            if let Some(ids) = self.prefixes.get(prefix) {
                if let Some(&id) = ids.iter().find(|&&id| accepts(id)) {
                    return Some((id, PathParams::default()));
                }
            }
        }
        None
    }
}

/// Renames parameters to positions (`{p0}`), so two routes writing
/// `/orders/{id}` and `/orders/{order_id}` share one entry in the tree.
fn positional_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut index = 0;
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let catch_all = rest[open + 1..].starts_with('*');
        out.push_str(if catch_all { "{*p" } else { "{p" });
        out.push_str(&index.to_string());
        out.push('}');
        index += 1;
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// The path's segment-boundary prefixes, longest first: `/a/b` gives
/// `/a/b`, `/a`, `/`.
fn segment_prefixes(path: &str) -> impl Iterator<Item = &str> {
    let trimmed = path.trim_end_matches('/');
    let mut end = Some(trimmed.len());
    std::iter::from_fn(move || {
        let current = end?;
        if current == 0 {
            end = None;
            return Some("/");
        }
        end = trimmed[..current].rfind('/');
        Some(&trimmed[..current])
    })
}

/// Matches `path` against a template segment by segment, for the slow path
/// and for `explain`.
pub fn template_matches(template: &str, path: &str) -> bool {
    match_template(template, path).is_some()
}

fn params_of(template: &str, path: &str) -> PathParams {
    match_template(template, path).unwrap_or_default()
}

fn match_template(template: &str, path: &str) -> Option<PathParams> {
    let mut params = Vec::new();
    let mut path_segments = path.split('/');
    for part in template.split('/') {
        if let Some(name) = part.strip_prefix("{*").and_then(|p| p.strip_suffix('}')) {
            let rest: Vec<&str> = path_segments.collect();
            let rest = rest.join("/");
            if rest.is_empty() {
                return None;
            }
            params.push((name.into(), rest.into()));
            return Some(PathParams(params));
        }
        let segment = path_segments.next()?;
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if segment.is_empty() {
                return None;
            }
            params.push((name.into(), segment.into()));
        } else if part != segment {
            return None;
        }
    }
    path_segments.next().is_none().then_some(PathParams(params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_prefixes_walk_boundaries_longest_first() {
        let all: Vec<&str> = segment_prefixes("/api/orders/7").collect();
        assert_eq!(all, ["/api/orders/7", "/api/orders", "/api", "/"]);
        assert_eq!(segment_prefixes("/").collect::<Vec<_>>(), ["/"]);
    }

    #[test]
    fn templates_bind_parameters_and_catch_alls() {
        let params = match_template("/api/orders/{id}", "/api/orders/42").map(|p| p.0);
        assert_eq!(params, Some(vec![("id".into(), "42".into())]));
        assert!(match_template("/api/orders/{id}", "/api/orders/42/x").is_none());
        let rest = match_template("/static/{*rest}", "/static/a/b.css").map(|p| p.0);
        assert_eq!(rest, Some(vec![("rest".into(), "a/b.css".into())]));
        assert_eq!(positional_pattern("/o/{id}/i/{*rest}"), "/o/{p0}/i/{*p1}");
    }
}

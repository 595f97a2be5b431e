//! Why a request goes where it goes: every route whose path fits, in
//! precedence order, with the condition that rejected it. `strangler
//! explain` prints this.

use std::fmt;

use super::matcher::template_matches;
use super::{Decision, PathMatch, RequestView, Route, Snapshot, Target, ValueMatch};

pub struct Explanation<'s> {
    pub decision: Decision<'s>,
    pub forwarded_path: String,
    /// Routes whose path fits, most specific first, with why each lost.
    pub considered: Vec<(&'s Route, Option<String>)>,
    snapshot: &'s Snapshot,
}

pub fn explain<'s>(snapshot: &'s Snapshot, req: &RequestView) -> Explanation<'s> {
    let decision = snapshot.select(req);
    let forwarded_path = match &decision.route.rewrite {
        Some(rewrite) => rewrite.apply(req.path, &decision.params),
        None => req.path.to_string(),
    };
    let mut candidates: Vec<&Route> = snapshot
        .routes
        .iter()
        .filter(|r| path_fits(&r.path, req.path))
        .collect();
    candidates.sort_by_key(|r| std::cmp::Reverse(r.specificity));
    let considered = candidates
        .into_iter()
        .map(|route| (route, rejection(route, req)))
        .collect();
    Explanation {
        decision,
        forwarded_path,
        considered,
        snapshot,
    }
}

fn path_fits(path_match: &PathMatch, path: &str) -> bool {
    match path_match {
        PathMatch::Exact(p) => &**p == path,
        PathMatch::Template { pattern, .. } => template_matches(pattern, path),
        PathMatch::Prefix(p) => {
            &**p == "/"
                || path == &**p
                || path
                    .strip_prefix(&**p)
                    .is_some_and(|rest| rest.starts_with('/'))
        }
    }
}

/// Why `route` does not take the request, or `None` when it could.
fn rejection(route: &Route, req: &RequestView) -> Option<String> {
    let c = &route.conditions;
    if let Some(methods) = &c.methods {
        if !methods.contains(req.method) {
            return Some(format!(
                "method {} not in {}",
                req.method,
                join(methods.iter().map(|m| m.as_str()))
            ));
        }
    }
    if let Some(host) = &c.host {
        if !host.matches(req.host) {
            return Some(format!(
                "host {} does not match",
                req.host.unwrap_or("(none)")
            ));
        }
    }
    for (name, test) in c.headers.iter() {
        let value = req.headers.get(name).and_then(|v| v.to_str().ok());
        if !value_ok(test, value) {
            return Some(format!("header {name} is {}", value.unwrap_or("absent")));
        }
    }
    if !c.matches(req) {
        return Some("query condition does not hold".into());
    }
    None
}

fn value_ok(test: &ValueMatch, value: Option<&str>) -> bool {
    match (test, value) {
        (ValueMatch::Present(wanted), v) => v.is_some() == *wanted,
        (ValueMatch::Exact(e), Some(v)) => &**e == v,
        (ValueMatch::Regex(re), Some(v)) => re.is_match(v),
        (_, None) => false,
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn describe_path(path: &PathMatch) -> String {
    match path {
        PathMatch::Exact(p) => format!("path {p}"),
        PathMatch::Template { pattern, .. } => format!("template {pattern}"),
        PathMatch::Prefix(p) => format!("prefix {p}"),
    }
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let d = &self.decision;
        let route = d.route;
        let backend = self.snapshot.backend(d.primary);
        if route.declared_at.file.is_empty() {
            writeln!(
                f,
                "route:     {} (no route matched; the `default` backend takes it)",
                route.name
            )?;
        } else {
            writeln!(f, "route:     {} ({})", route.name, route.declared_at)?;
            writeln!(f, "matched:   {}", describe_path(&route.path))?;
        }
        if !d.params.0.is_empty() {
            let params: Vec<String> = d.params.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "params:    {}", params.join(", "))?;
        }
        let health = if backend.upstream.is_healthy() {
            "healthy"
        } else {
            "failing health checks"
        };
        writeln!(
            f,
            "backend:   {} ({}; circuit {}, {health})",
            backend.name,
            backend.upstream.settings.url,
            backend.upstream.breaker.state_name()
        )?;
        if let Target::Split(split) = &route.target {
            let mut lower = 0;
            let shares: Vec<String> = split
                .choices
                .iter()
                .map(|c| {
                    let share = f64::from(c.upper_bucket - lower) / 100.0;
                    lower = c.upper_bucket;
                    format!("{} {share}%", self.snapshot.backend(c.backend).name)
                })
                .collect();
            let how = match (&split.sticky, d.bucket) {
                (Some(_), Some(bucket)) => {
                    format!("sticky; this request is in bucket {bucket} of 10000")
                }
                _ => "per request (no sticky key); this run drew one at random".into(),
            };
            writeln!(f, "split:     {} ({how})", shares.join(", "))?;
        }
        if let Target::Migration(m) = &route.target {
            let share = f64::from(m.cell.weight_bp()) / 100.0;
            let stage = if m.cell.is_shadow_stage() {
                "shadow stage: mirrored to the new service"
            } else {
                "gated"
            };
            writeln!(
                f,
                "migration: {} -> {}, {share}% on the new service ({stage})",
                self.snapshot.backend(m.from).name,
                self.snapshot.backend(m.to).name
            )?;
        }
        if let Some(shadow) = &route.shadow {
            writeln!(
                f,
                "shadow:    {} ({}% sampled)",
                self.snapshot.backend(shadow.backend).name,
                f64::from(shadow.sample_bp) / 100.0
            )?;
        }
        if let Some(fallback) = route.fallback {
            writeln!(f, "fallback:  {}", self.snapshot.backend(fallback).name)?;
        }
        writeln!(f, "forwarded: {}", self.forwarded_path)?;
        if !self.considered.is_empty() {
            writeln!(f, "considered (most specific first):")?;
            for (candidate, why) in &self.considered {
                let mark = if std::ptr::eq(*candidate, route) {
                    "*"
                } else if why.is_some() {
                    "x"
                } else {
                    "-"
                };
                let reason = match why {
                    Some(why) => format!(" ({why})"),
                    None if std::ptr::eq(*candidate, route) => " (chosen)".into(),
                    None => " (less specific)".into(),
                };
                writeln!(
                    f,
                    "  {mark} {:<20} {}{reason}",
                    candidate.name,
                    describe_path(&candidate.path)
                )?;
            }
        }
        Ok(())
    }
}

//! Compiling one route entry: its match, target, transforms and checks.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use super::compile::{BackendTable, CompileContext};
use super::error::ConfigError;
use super::load::SourceFile;
use super::schema::{MatchSpec, RouteSpec, StickySpec, ValueMatchSpec};
use super::traffic::{compile_migration, compile_shadow};
use super::transform::{compile_header_ops, compile_rewrite};
use crate::gate::{Migration, MigrationPlan};
use crate::metrics::RouteMetrics;
use crate::routing::{
    Backend, BackendId, Conditions, HostMatch, HostRewrite, PathMatch, Route, SourceLocation,
    Specificity, Split, StickyKey, Target, ValueMatch, BUCKETS,
};
use crate::shadow::ShadowPolicy;

/// A route entry and where it sits, for error positions.
pub(crate) struct RouteSource<'a> {
    pub file: &'a SourceFile,
    /// `routes[N]` within the file.
    pub key: &'a str,
    pub spec: &'a crate::config::schema::RouteSpec,
}

/// Collects this route's errors, each at the position of the offending key.
pub(crate) struct Problems<'a> {
    source: &'a RouteSource<'a>,
    errors: Vec<ConfigError>,
}

impl Problems<'_> {
    pub(crate) fn at(&mut self, key: &str, message: impl Into<String>) {
        let path = if key.is_empty() {
            self.source.key.to_string()
        } else {
            format!("{}.{key}", self.source.key)
        };
        let message = format!("route `{}`: {}", self.source.spec.name, message.into());
        self.errors.push(self.source.file.error_at(&path, message));
    }
}

pub(crate) fn compile_route(
    source: &RouteSource,
    declared_at: SourceLocation,
    backends: &BackendTable,
    ctx: &CompileContext,
    backend_list: &[Backend],
) -> Result<Route, Vec<ConfigError>> {
    let spec = source.spec;
    let mut problems = Problems {
        source,
        errors: Vec::new(),
    };
    let path = compile_path(&spec.matcher, &mut problems);
    let conditions = compile_conditions(&spec.matcher, &mut problems);
    let fallback = spec.fallback.as_ref().and_then(|name| {
        backends
            .resolve(name)
            .map_err(|m| problems.at("fallback", m))
            .ok()
    });
    let (target, migration, migration_shadow) =
        match compile_target(spec, fallback, backends, ctx, &mut problems) {
            Some((target, migration, shadow)) => (Some(target), migration, shadow),
            None => (None, None, None),
        };
    let rewrite = compile_rewrite(spec, &path, &mut problems);
    let request_headers = compile_header_ops(
        spec.request_headers.as_ref(),
        "request_headers",
        &mut problems,
    );
    let response_headers = compile_header_ops(
        spec.response_headers.as_ref(),
        "response_headers",
        &mut problems,
    );
    let host_rewrite = match spec.host_rewrite.as_deref() {
        None => HostRewrite::PassThrough,
        Some("backend") => HostRewrite::Backend,
        Some(literal) => match HeaderValue::from_str(literal) {
            Ok(value) => HostRewrite::Literal(value),
            Err(_) => {
                problems.at("host_rewrite", format!("`{literal}` is not a valid host"));
                HostRewrite::PassThrough
            }
        },
    };
    let idempotency_header = match &spec.idempotency_header {
        None => HeaderName::from_static("idempotency-key"),
        Some(name) => header_name(name, "idempotency_header", &mut problems)
            .unwrap_or(HeaderName::from_static("idempotency-key")),
    };
    let explicit_shadow = spec
        .shadow
        .as_ref()
        .and_then(|s| compile_shadow(&spec.name, s, backends, &mut problems));
    let is_shadow_stage_only = explicit_shadow.is_none() && migration_shadow.is_some();
    let shadow = explicit_shadow.or(migration_shadow).map(Arc::new);
    // A migration keeps its `from` as the fallback unless told otherwise.
    let fallback = fallback.or(match &target {
        Some(Target::Migration(m)) => Some(m.from),
        _ => None,
    });
    let failure_fields = failure_fields(spec, &mut problems);
    let (Some(path), Some(target)) = (path, target) else {
        return Err(problems.errors);
    };
    if !problems.errors.is_empty() {
        return Err(problems.errors);
    }
    let name: Arc<str> = spec.name.as_str().into();
    let reachable = reachable_backends(&target, fallback, backend_list);
    if shadow.is_some() {
        ctx.metrics.init_shadow_series(&name);
    }
    if migration.is_some() {
        ctx.metrics.init_gate_series(&name);
    }
    Ok(Route {
        metrics: reuse_metrics(ctx, &name, &reachable)
            .unwrap_or_else(|| Arc::new(RouteMetrics::new(ctx.metrics, &name, &reachable))),
        name,
        declared_at,
        specificity: Specificity::of(&path, &conditions),
        path,
        conditions,
        target,
        fallback,
        retry_non_idempotent: spec.retry_non_idempotent,
        idempotency_header,
        rewrite,
        request_headers,
        response_headers,
        host_rewrite,
        max_body_bytes: spec.max_body.map(|b| b.0),
        shadow,
        is_shadow_stage_only,
        failure_fields,
        migration_plan: migration.as_ref().and_then(|m| m.1.clone()),
        migration: migration.map(|m| m.0),
        fingerprint: fingerprint(spec),
    })
}

/// A stable hash of the route's parsed entry (so comments and formatting
/// do not count as a change).
fn fingerprint(spec: &RouteSpec) -> u64 {
    crate::hash::fnv1a(crate::hash::FNV_OFFSET, format!("{spec:?}").as_bytes())
}

/// The migration's `failure_fields`, compiled.
fn failure_fields(
    spec: &RouteSpec,
    problems: &mut Problems,
) -> crate::gate::failure::FailureFields {
    let specs = spec
        .migration
        .as_ref()
        .and_then(|m| m.gate.as_ref())
        .map(|g| g.failure_fields.as_slice())
        .unwrap_or(&[]);
    specs
        .iter()
        .filter_map(
            |f| match crate::shadow::fieldpath::FieldPattern::parse(&f.field) {
                Ok(pattern) => Some(crate::gate::failure::FailureField {
                    pattern,
                    equals: f.equals.clone(),
                }),
                Err(err) => {
                    problems.at(
                        "migration.gate.failure_fields",
                        format!("bad field path `{}`: {err}", f.field),
                    );
                    None
                }
            },
        )
        .collect()
}

/// The previous snapshot's series of this route, when it reaches the same
/// backends under the same ids (most routes, on most reloads).
fn reuse_metrics(
    ctx: &CompileContext,
    name: &str,
    reachable: &[(BackendId, Arc<str>)],
) -> Option<Arc<RouteMetrics>> {
    let previous = ctx.previous?.route(name)?;
    previous
        .metrics
        .reaches_exactly(reachable)
        .then(|| previous.metrics.clone())
}

fn reachable_backends(
    target: &Target,
    fallback: Option<BackendId>,
    backends: &[Backend],
) -> Vec<(BackendId, Arc<str>)> {
    let mut ids: Vec<BackendId> = match target {
        Target::Backend(id) => vec![*id],
        Target::Split(split) => split.choices.iter().map(|c| c.backend).collect(),
        Target::Migration(m) => vec![m.from, m.to],
    };
    ids.extend(fallback);
    ids.sort();
    ids.dedup();
    ids.into_iter()
        .map(|id| (id, backends[id.0].name.clone()))
        .collect()
}

fn compile_path(spec: &MatchSpec, problems: &mut Problems) -> Option<PathMatch> {
    match (&spec.path, &spec.prefix) {
        (Some(_), Some(_)) => {
            problems.at("match", "set either `path` or `prefix`, not both");
            None
        }
        (None, None) => Some(PathMatch::Prefix("/".into())),
        (None, Some(prefix)) => {
            if !prefix.starts_with('/') {
                problems.at(
                    "match.prefix",
                    format!("prefix `{prefix}` must start with `/`"),
                );
                return None;
            }
            if prefix.contains(['{', '}', '?', '#']) {
                problems.at("match.prefix", format!("prefix `{prefix}` may not contain `{{`, `}}`, `?` or `#`; use `path` for templates"));
                return None;
            }
            let trimmed = prefix.trim_end_matches('/');
            Some(PathMatch::Prefix(if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.into()
            }))
        }
        (Some(path), None) => {
            if !path.starts_with('/') {
                problems.at("match.path", format!("path `{path}` must start with `/`"));
                return None;
            }
            if !path.contains(['{', '}']) {
                return Some(PathMatch::Exact(path.as_str().into()));
            }
            match check_template(path) {
                Ok((literal_segments, has_catch_all)) => Some(PathMatch::Template {
                    pattern: path.as_str().into(),
                    literal_segments,
                    has_catch_all,
                }),
                Err(message) => {
                    problems.at(
                        "match.path",
                        format!("bad path template `{path}`: {message}"),
                    );
                    None
                }
            }
        }
    }
}

/// Checks a template: each `{name}` is a whole segment, names are unique,
/// a `{*rest}` comes last. Returns the literal segment count.
fn check_template(path: &str) -> Result<(u16, bool), String> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut names = Vec::new();
    let mut literal = 0u16;
    let mut catch_all = false;
    for (i, segment) in segments.iter().enumerate() {
        if let Some(inner) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (name, is_catch_all) = match inner.strip_prefix('*') {
                Some(name) => (name, true),
                None => (inner, false),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "parameter `{{{inner}}}` needs a name of letters, digits or `_`"
                ));
            }
            if names.contains(&name) {
                return Err(format!("parameter `{name}` appears twice"));
            }
            if is_catch_all && i + 1 != segments.len() {
                return Err(format!("catch-all `{{*{name}}}` must be the last segment"));
            }
            catch_all |= is_catch_all;
            names.push(name);
        } else if segment.contains(['{', '}']) {
            return Err(format!("segment `{segment}` mixes text and a parameter; a parameter must be a whole segment"));
        } else {
            literal += 1;
        }
    }
    Ok((literal, catch_all))
}

fn compile_conditions(spec: &MatchSpec, problems: &mut Problems) -> Conditions {
    let methods = spec.methods.as_ref().map(|methods| {
        methods
            .iter()
            .filter_map(
                |m| match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => Some(method),
                    Err(_) => {
                        problems.at("match.methods", format!("`{m}` is not an HTTP method"));
                        None
                    }
                },
            )
            .collect::<Box<[Method]>>()
    });
    let host = spec.host.as_ref().map(|host| match host.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') => {
            HostMatch::Suffix(suffix.to_ascii_lowercase().into())
        }
        _ => HostMatch::Exact(host.to_ascii_lowercase().into()),
    });
    let headers = spec
        .headers
        .iter()
        .filter_map(|(name, test)| {
            let key = format!("match.headers.{name}");
            let name = header_name(name, &key, problems)?;
            Some((name, value_match(test, &key, problems)?))
        })
        .collect();
    let query = spec
        .query
        .iter()
        .filter_map(|(name, test)| {
            let key = format!("match.query.{name}");
            Some((name.as_str().into(), value_match(test, &key, problems)?))
        })
        .collect();
    Conditions {
        methods,
        host,
        headers,
        query,
    }
}

pub(crate) fn header_name(name: &str, key: &str, problems: &mut Problems) -> Option<HeaderName> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| problems.at(key, format!("`{name}` is not a valid header name")))
        .ok()
}

fn value_match(spec: &ValueMatchSpec, key: &str, problems: &mut Problems) -> Option<ValueMatch> {
    match spec {
        ValueMatchSpec::Exact(value) => Some(ValueMatch::Exact(value.as_str().into())),
        ValueMatchSpec::Rule(rule) => match (&rule.regex, rule.present) {
            (Some(pattern), None) => {
                // Anchored: a route author writing `v2` means the whole value.
                match Regex::new(&format!("^(?:{pattern})$")) {
                    Ok(re) => Some(ValueMatch::Regex(re)),
                    Err(err) => {
                        problems.at(key, format!("bad regex `{pattern}`: {err}"));
                        None
                    }
                }
            }
            (None, Some(present)) => Some(ValueMatch::Present(present)),
            _ => {
                problems.at(
                    key,
                    "write a value, `{ regex: ... }` or `{ present: true|false }`",
                );
                None
            }
        },
    }
}

type CompiledTarget = (
    Target,
    Option<(Arc<Migration>, Option<Box<MigrationPlan>>)>,
    Option<ShadowPolicy>,
);

fn compile_target(
    spec: &RouteSpec,
    fallback: Option<BackendId>,
    backends: &BackendTable,
    ctx: &CompileContext,
    problems: &mut Problems,
) -> Option<CompiledTarget> {
    let chosen = [
        spec.backend.is_some(),
        spec.split.is_some(),
        spec.migration.is_some(),
    ];
    match chosen.iter().filter(|c| **c).count() {
        0 => {
            problems.at("", "needs one of `backend`, `split` or `migration`");
            return None;
        }
        1 => {}
        _ => {
            problems.at("", "set only one of `backend`, `split` or `migration`");
            return None;
        }
    }
    if let Some(name) = &spec.backend {
        let target = backends
            .resolve(name)
            .map_err(|m| problems.at("backend", m))
            .ok()?;
        return Some((Target::Backend(target), None, None));
    }
    if let Some(migration) = &spec.migration {
        let sticky = migration
            .sticky
            .as_ref()
            .or(spec.sticky.as_ref())
            .and_then(|s| sticky_key(s, problems));
        let (target, migration, plan, shadow) = compile_migration(
            migration,
            &spec.name,
            sticky,
            backends,
            ctx.migrations,
            problems,
        )?;
        return Some((
            Target::Migration(target),
            Some((migration, Some(Box::new(plan)))),
            Some(shadow),
        ));
    }
    let split = spec.split.as_ref()?;
    compile_split(split, spec, fallback, backends, problems).map(|s| (Target::Split(s), None, None))
}

fn compile_split(
    weights: &BTreeMap<String, crate::config::values::Percent>,
    spec: &RouteSpec,
    fallback: Option<BackendId>,
    backends: &BackendTable,
    problems: &mut Problems,
) -> Option<Split> {
    let mut shares = Vec::new();
    for (name, weight) in weights {
        match backends.resolve(name) {
            Ok(id) => shares.push((id, weight.basis_points())),
            Err(m) => problems.at(&format!("split.{name}"), m),
        }
    }
    let total: u32 = shares.iter().map(|(_, w)| w).sum();
    if total > BUCKETS {
        problems.at(
            "split",
            format!(
                "weights add up to {}%, more than 100%",
                f64::from(total) / 100.0
            ),
        );
        return None;
    }
    if shares.is_empty() {
        problems.at("split", "lists no backend");
        return None;
    }
    // The incumbent takes the top range and any remainder below 100%.
    let incumbent = fallback
        .filter(|f| shares.iter().any(|(id, _)| id == f))
        .or_else(|| shares.iter().max_by_key(|(_, w)| *w).map(|(id, _)| *id));
    if let Some((_, share)) = shares.iter_mut().find(|(id, _)| Some(*id) == incumbent) {
        *share += BUCKETS - total;
    }
    let sticky = spec.sticky.as_ref().and_then(|s| sticky_key(s, problems));
    Some(Split::new(shares, incumbent, sticky, &spec.name))
}

fn sticky_key(spec: &StickySpec, problems: &mut Problems) -> Option<StickyKey> {
    match (&spec.header, &spec.cookie, spec.client_ip) {
        (Some(name), None, false) => {
            header_name(name, "sticky.header", problems).map(StickyKey::Header)
        }
        (None, Some(cookie), false) => Some(StickyKey::Cookie(cookie.as_str().into())),
        (None, None, true) => Some(StickyKey::ClientIp),
        _ => {
            problems.at(
                "sticky",
                "set exactly one of `header`, `cookie` or `client_ip: true`",
            );
            None
        }
    }
}

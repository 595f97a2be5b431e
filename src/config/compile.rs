//! Validate merged route files and compile them into an immutable `Snapshot`.
//!
//! Every problem is collected with its FILE:LINE:COL, so `strangler check`
//! shows all of them at once. Work that would otherwise happen per request
//! (parsing names and values, compiling regexes, sorting by specificity,
//! resolving metric handles) happens here, once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::error::{did_you_mean, ConfigError};
use super::load::SourceFile;
use super::route::{compile_route, RouteSource};
use super::schema::BackendSpec;
use super::server::{compile_server, compile_upstream_tls};
use crate::gate::Migrations;
use crate::metrics::{Metrics, RouteMetrics};
use crate::routing::{
    Backend, BackendId, BackendName, Conditions, HeaderOps, HostRewrite, PathMatch, Route,
    RouteIndex, Snapshot, SourceLocation, Specificity, Target, DEFAULT_ROUTE,
};
use crate::upstream::{
    parse_url, BreakerSettings, BudgetSettings, HealthSettings, Timeouts, Upstream,
    UpstreamSettings, UpstreamTls,
};
use std::time::Duration;

/// What a compilation may reuse and where it records.
pub struct CompileContext<'a> {
    pub metrics: &'a Metrics,
    /// Upstreams of this snapshot are reused when their settings are equal.
    pub previous: Option<&'a Snapshot>,
    /// Where migrations live across reloads; `None` (e.g. `check`) builds
    /// throwaway ones.
    pub migrations: Option<&'a Migrations>,
}

/// A snapshot ready to serve, and the warnings found on the way.
#[derive(Debug)]
pub struct Compiled {
    pub snapshot: Snapshot,
    pub warnings: Vec<ConfigError>,
}

/// Backend names and ids, for the route compiler.
pub(crate) struct BackendTable {
    pub names: BTreeMap<String, BackendId>,
}

impl BackendTable {
    /// Resolves a backend reference, or explains what is wrong with it.
    pub fn resolve(&self, name: &str) -> Result<BackendId, String> {
        self.names.get(name).copied().ok_or_else(|| {
            let hint = did_you_mean(name, self.names.keys().map(String::as_str));
            format!("unknown backend `{name}`{hint}")
        })
    }
}

pub fn compile(files: &[SourceFile], ctx: &CompileContext) -> Result<Compiled, Vec<ConfigError>> {
    let files: Vec<&SourceFile> = files.iter().collect();
    compile_refs(&files, ctx)
}

/// `compile` over borrowed files (e.g. parsed files a reload kept).
pub fn compile_refs(
    files: &[&SourceFile],
    ctx: &CompileContext,
) -> Result<Compiled, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let (backends, table) = compile_backends(files, ctx, &mut errors);
    let server = compile_server(files, &mut errors);

    let default_backend = resolve_default(files, &table, &mut errors);
    let mut routes = Vec::new();
    let mut seen_names: HashMap<String, SourceLocation> = HashMap::new();
    for file in files {
        for (index, spec) in file.content.routes.iter().enumerate() {
            let key = format!("routes[{index}]");
            let source = RouteSource {
                file,
                key: &key,
                spec,
            };
            let location = SourceLocation {
                file: file.display.clone(),
                line: file.marks.find(&key).line,
            };
            if spec.name == DEFAULT_ROUTE {
                errors.push(file.error_at(
                    &format!("{key}.name"),
                    "the route name `default` is reserved for unmatched requests",
                ));
            } else if let Some(first) = seen_names.get(&spec.name) {
                errors.push(file.error_at(
                    &format!("{key}.name"),
                    format!(
                        "duplicate route name `{}` (first declared at {first})",
                        spec.name
                    ),
                ));
            } else {
                seen_names.insert(spec.name.clone(), location.clone());
            }
            match compile_route(&source, location, &table, ctx, &backends) {
                Ok(route) => routes.push(route),
                Err(mut route_errors) => errors.append(&mut route_errors),
            }
        }
    }

    let mut index = RouteIndex::default();
    let order = precedence_order(&routes);
    for &id in &order {
        if let Err(message) = index.insert(id, &routes[id].path) {
            let route = &routes[id];
            errors.push(ConfigError {
                file: route.declared_at.file.clone(),
                line: route.declared_at.line,
                column: 1,
                message: format!("route `{}`: {message}", route.name),
            });
        }
    }
    let Some(default_backend) = default_backend else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let warnings = shadowed_route_warnings(&routes, &order);
    let default_route = default_route(default_backend, &backends, ctx.metrics);
    let version = version_of(files, server.tls.as_ref().map_or(0, |tls| tls.fingerprint));
    Ok(Compiled {
        snapshot: Snapshot {
            version,
            by_name: routes
                .iter()
                .enumerate()
                .map(|(i, r)| (r.name.clone(), i))
                .collect(),
            routes: routes.into_boxed_slice(),
            backends: backends.into_boxed_slice(),
            default_route,
            server,
            index,
        },
        warnings,
    })
}

fn compile_backends(
    files: &[&SourceFile],
    ctx: &CompileContext,
    errors: &mut Vec<ConfigError>,
) -> (Vec<Backend>, BackendTable) {
    let mut backends = Vec::new();
    let mut names = BTreeMap::new();
    let mut declared_in: HashMap<&str, &str> = HashMap::new();
    for file in files {
        for (name, spec) in &file.content.backends {
            let key = format!("backends.{name}");
            if let Some(first) = declared_in.get(name.as_str()) {
                errors.push(
                    file.error_at(&key, format!("backend `{name}` is also defined in {first}")),
                );
                continue;
            }
            declared_in.insert(name, &file.display);
            let tls = match spec
                .tls
                .as_ref()
                .map(|tls| compile_upstream_tls(file, &key, tls))
                .transpose()
            {
                Ok(tls) => tls,
                Err(err) => {
                    errors.push(err);
                    continue;
                }
            };
            match upstream_settings(spec, tls) {
                Ok(settings) => {
                    let name: BackendName = name.as_str().into();
                    let upstream = reuse_upstream(ctx.previous, &name, &settings)
                        .unwrap_or_else(|| Upstream::start(name.clone(), settings, ctx.metrics));
                    names.insert(name.to_string(), BackendId(backends.len()));
                    backends.push(Backend { name, upstream });
                }
                Err(message) => errors.push(file.error_at(&format!("{key}.url"), message)),
            }
        }
    }
    (backends, BackendTable { names })
}

fn upstream_settings(
    spec: &BackendSpec,
    tls: Option<Arc<UpstreamTls>>,
) -> Result<UpstreamSettings, String> {
    let url = parse_url(&spec.url).map_err(|e| e.to_string())?;
    let defaults = Timeouts::default();
    Ok(UpstreamSettings {
        url,
        timeouts: Timeouts {
            connect: spec.connect_timeout.map_or(defaults.connect, |d| d.0),
            response: spec.timeout.map_or(defaults.response, |d| d.0),
            idle: spec.idle_timeout.map_or(defaults.idle, |d| d.0),
            pool_idle: spec.pool_idle_timeout.map_or(defaults.pool_idle, |d| d.0),
        },
        max_idle_connections: spec.max_idle_connections.unwrap_or(usize::MAX),
        breaker: match &spec.circuit {
            None => BreakerSettings::default(),
            Some(circuit) => BreakerSettings {
                consecutive_failures: circuit
                    .consecutive_failures
                    .unwrap_or(BreakerSettings::default().consecutive_failures),
                open_for: circuit
                    .open_for
                    .map_or(BreakerSettings::default().open_for, |d| d.0),
            },
        },
        budget: match &spec.retry_budget {
            None => BudgetSettings::default(),
            Some(budget) => BudgetSettings {
                ratio_milli: budget
                    .ratio
                    .map_or(BudgetSettings::default().ratio_milli, |p| {
                        (p.0 * 1000.0).round() as u32
                    }),
                min_per_second: budget
                    .min_per_second
                    .unwrap_or(BudgetSettings::default().min_per_second),
            },
        },
        tls,
        health: match &spec.health {
            None => None,
            Some(health) if !health.path.starts_with('/') => {
                return Err(format!("health path `{}` must start with `/`", health.path))
            }
            Some(health) => Some(HealthSettings {
                path: health.path.clone(),
                interval: health.interval.map_or(Duration::from_secs(5), |d| d.0),
            }),
        },
    })
}

/// Keeps the warm pool of a backend whose definition did not change.
fn reuse_upstream(
    previous: Option<&Snapshot>,
    name: &BackendName,
    settings: &UpstreamSettings,
) -> Option<Arc<Upstream>> {
    previous?
        .backends
        .iter()
        .find(|b| b.name == *name && b.upstream.settings == *settings)
        .map(|b| b.upstream.clone())
}

fn resolve_default(
    files: &[&SourceFile],
    table: &BackendTable,
    errors: &mut Vec<ConfigError>,
) -> Option<BackendId> {
    let mut found: Option<(&SourceFile, &str)> = None;
    for file in files {
        if let Some(name) = &file.content.default {
            if let Some((first, _)) = found {
                errors.push(file.error_at(
                    "default",
                    format!("`default` is also set in {}", first.display),
                ));
                continue;
            }
            found = Some((file, name));
        }
    }
    match found {
        Some((file, name)) => match table.resolve(name) {
            Ok(id) => Some(id),
            Err(message) => {
                errors.push(file.error_at("default", message));
                None
            }
        },
        None => {
            let file = files
                .first()
                .map(|f| f.display.clone())
                .unwrap_or_else(|| "routes".into());
            errors.push(ConfigError {
                file,
                line: 1,
                column: 1,
                message:
                    "no `default` backend: add `default: <backend>` (where unmatched requests go)"
                        .into(),
            });
            None
        }
    }
}

fn default_route(backend: BackendId, backends: &[Backend], metrics: &Metrics) -> Route {
    let name: Arc<str> = DEFAULT_ROUTE.into();
    let path = PathMatch::Prefix("/".into());
    let conditions = Conditions::default();
    Route {
        metrics: Arc::new(RouteMetrics::new(
            metrics,
            &name,
            &[(backend, backends[backend.0].name.clone())],
        )),
        name,
        declared_at: SourceLocation::default(),
        specificity: Specificity::of(&path, &conditions),
        path,
        conditions,
        target: Target::Backend(backend),
        fallback: None,
        retry_non_idempotent: false,
        idempotency_header: http::HeaderName::from_static("idempotency-key"),
        rewrite: None,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        host_rewrite: HostRewrite::PassThrough,
        max_body_bytes: None,
        shadow: None,
        is_shadow_stage_only: false,
        migration: None,
        failure_fields: Default::default(),
        migration_plan: None,
        fingerprint: 0,
    }
}

/// Route ids from the most to the least specific; declaration order breaks ties.
fn precedence_order(routes: &[Route]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..routes.len()).collect();
    order.sort_by(|&a, &b| {
        routes[b]
            .specificity
            .cmp(&routes[a].specificity)
            .then(a.cmp(&b))
    });
    order
}

/// A route can never match when one before it in precedence has the same
/// path and no condition that the later one lacks.
fn shadowed_route_warnings(routes: &[Route], order: &[usize]) -> Vec<ConfigError> {
    // Only routes with the same path can cover one another, so each route is
    // compared with the earlier routes of its path, not with every earlier
    // route: that was quadratic, and took seconds for 10,000 routes.
    let mut earlier_by_path: HashMap<(u8, std::borrow::Cow<str>), Vec<usize>> = HashMap::new();
    let mut warnings = Vec::new();
    for &later in order {
        let same_path = earlier_by_path
            .entry(path_key(&routes[later].path))
            .or_default();
        let shadowing = same_path
            .iter()
            .copied()
            .find(|&earlier| covers(&routes[earlier], &routes[later]));
        same_path.push(later);
        if let Some(earlier) = shadowing {
            let (r, by) = (&routes[later], &routes[earlier]);
            warnings.push(ConfigError {
                file: r.declared_at.file.clone(),
                line: r.declared_at.line,
                column: 1,
                message: format!(
                    "warning: route `{}` can never match: route `{}` ({}) takes every request it would",
                    r.name, by.name, by.declared_at
                ),
            });
        }
    }
    warnings
}

fn covers(earlier: &Route, later: &Route) -> bool {
    let same_path = match (&earlier.path, &later.path) {
        (PathMatch::Exact(a), PathMatch::Exact(b))
        | (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
        (PathMatch::Template { pattern: a, .. }, PathMatch::Template { pattern: b, .. }) => {
            strip_param_names(a) == strip_param_names(b)
        }
        _ => false,
    };
    let (e, l) = (&earlier.conditions, &later.conditions);
    let methods_cover = match (&e.methods, &l.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(em), Some(lm)) => lm.iter().all(|m| em.contains(m)),
    };
    same_path && methods_cover && e.host.is_none() && e.headers.is_empty() && e.query.is_empty()
}

/// Equal for two paths exactly when `covers` finds them the same path.
fn path_key(path: &PathMatch) -> (u8, std::borrow::Cow<'_, str>) {
    match path {
        PathMatch::Exact(p) => (0, (&**p).into()),
        PathMatch::Prefix(p) => (1, (&**p).into()),
        PathMatch::Template { pattern, .. } => (2, strip_param_names(pattern).into()),
    }
}

fn strip_param_names(pattern: &str) -> String {
    let mut out = String::new();
    let mut depth = false;
    for c in pattern.chars() {
        match c {
            '{' => {
                depth = true;
                out.push('{');
            }
            '}' => {
                depth = false;
                out.push('}');
            }
            _ if depth => {}
            _ => out.push(c),
        }
    }
    out
}

/// A short hash of the files' names and contents: the same files give the
/// same version on every replica.
/// `tls_fingerprint` stands for the certificate files, so that a changed
/// certificate is a new version.
fn version_of(files: &[&SourceFile], tls_fingerprint: u64) -> Arc<str> {
    let mut hash: u64 = crate::hash::FNV_OFFSET ^ tls_fingerprint;
    for file in files {
        let name = file
            .path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        for part in [name.as_bytes(), &[0], file.text.as_bytes(), &[0]] {
            hash = crate::hash::fnv1a(hash, part);
        }
    }
    format!("{:012x}", hash >> 16).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::parse;
    use crate::config::marks::Marks;

    /// The routes named in shadowing warnings of a one-file table.
    fn shadowed(routes: &str) -> Vec<String> {
        let text = format!(
            "backends:\n  a: {{ url: \"http://127.0.0.1:1\" }}\ndefault: a\nroutes:\n{routes}"
        );
        let display: Arc<str> = "routes.yaml".into();
        let file = SourceFile {
            content: parse(display.clone(), &text).expect("parses"),
            marks: Marks::index(&text),
            display,
            path: "routes.yaml".into(),
            text,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // Upstream clients are built inside a runtime.
        let _guard = runtime.enter();
        let metrics = Metrics::new();
        let ctx = CompileContext {
            metrics: &metrics,
            previous: None,
            migrations: None,
        };
        let compiled = compile(&[file], &ctx).expect("compiles");
        compiled
            .warnings
            .iter()
            .map(|w| {
                w.message
                    .split('`')
                    .nth(1)
                    .expect("a route name")
                    .to_string()
            })
            .collect()
    }

    fn route(name: &str, rule: &str) -> String {
        format!("  - name: {name}\n    match: {rule}\n    backend: a\n")
    }

    /// A template is the same path as another whose parameters have other names.
    #[test]
    fn a_template_differing_only_in_parameter_names_is_shadowed() {
        let routes =
            route("first", "{ path: \"/o/{id}\" }") + &route("second", "{ path: \"/o/{order}\" }");
        assert_eq!(shadowed(&routes), ["second"]);
    }

    /// A route with methods shadows a later one only if it takes all of its methods.
    #[test]
    fn a_route_is_shadowed_only_by_one_whose_methods_include_its_own() {
        let routes = route("get", "{ prefix: \"/o\", methods: [GET] }")
            + &route("get-again", "{ prefix: \"/o\", methods: [GET] }")
            + &route("post", "{ prefix: \"/o\", methods: [POST] }");
        assert_eq!(shadowed(&routes), ["get-again"]);
    }

    /// An exact path and a prefix with the same text are different paths.
    #[test]
    fn the_same_text_as_exact_path_and_as_prefix_shadows_nothing() {
        let routes = route("exact", "{ path: \"/o\" }") + &route("prefix", "{ prefix: \"/o\" }");
        assert_eq!(shadowed(&routes), Vec::<String>::new());
    }
}

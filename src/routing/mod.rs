//! The compiled route table and route selection: given a request and the
//! active snapshot, decide where it goes.
//!
//! Everything here that runs per request only reads data that
//! `config::compile` prepared; nothing is parsed here.

mod diff;
mod explain;
mod matcher;
mod overlap;
mod split;
mod transform;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::gate::{Migration, MigrationCell, MigrationPlan};
use crate::metrics::RouteMetrics;
use crate::shadow::ShadowPolicy;
use crate::upstream::Upstream;

pub use self::diff::RouteChanges;
pub use self::explain::{explain, Explanation};
pub(crate) use self::matcher::RouteIndex;
pub use self::matcher::{Conditions, HostMatch, PathMatch, PathParams, Specificity, ValueMatch};
pub use self::split::{bucket_of, request_bucket, salt_of, Split, SplitChoice, StickyKey, BUCKETS};
pub use self::transform::{HeaderOps, Rewrite};
/// Listener settings from `server:`; defined with the listener that uses them.
pub use crate::server::ServerSettings;

/// A route's name; cheap to clone, used as a metric label.
pub type RouteName = Arc<str>;
/// A backend's name as written under `backends:`.
pub type BackendName = Arc<str>;

/// A backend's position in `Snapshot::backends`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub usize);

/// The name of the route that takes what no route matches.
pub const DEFAULT_ROUTE: &str = "default";

/// What `select` reads of a request. The path is already normalised.
#[derive(Debug)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Host without port, from the URI authority or the `Host` header.
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
}

/// Where a file's item was declared, for `explain` and warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceLocation {
    pub file: Arc<str>,
    pub line: usize,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Where a route sends traffic.
#[derive(Debug, Clone)]
pub enum Target {
    Backend(BackendId),
    Split(Split),
    /// A gated migration: the share on `to` is the migration's current weight.
    Migration(MigrationTarget),
}

/// The request-time part of a migration: a lock-free weight.
#[derive(Debug, Clone)]
pub struct MigrationTarget {
    pub from: BackendId,
    pub to: BackendId,
    pub cell: Arc<MigrationCell>,
    pub sticky: Option<StickyKey>,
    pub salt: u64,
}

impl MigrationTarget {
    /// The new service owns buckets below the weight, so raising the
    /// weight only moves users onto it (monotone, as for `split`).
    pub fn choose(&self, headers: &HeaderMap, client_ip: IpAddr) -> (BackendId, Option<u32>) {
        let weight = self.cell.weight_bp();
        if weight == 0 {
            return (self.from, None);
        }
        let bucket = request_bucket(self.sticky.as_ref(), self.salt, headers, client_ip);
        (
            if bucket < weight { self.to } else { self.from },
            Some(bucket),
        )
    }
}

/// What `Host` the upstream request carries.
#[derive(Debug, Clone)]
pub enum HostRewrite {
    PassThrough,
    /// The authority of the backend's URL.
    Backend,
    Literal(HeaderValue),
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: RouteName,
    pub declared_at: SourceLocation,
    pub path: PathMatch,
    pub conditions: Conditions,
    pub specificity: Specificity,
    pub target: Target,
    pub fallback: Option<BackendId>,
    /// Whether a non-idempotent request may be re-sent after it may have
    /// reached the first backend.
    pub retry_non_idempotent: bool,
    /// A request carrying this header may be retried like an idempotent one.
    pub idempotency_header: HeaderName,
    pub rewrite: Option<Rewrite>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub host_rewrite: HostRewrite,
    pub max_body_bytes: Option<u64>,
    pub shadow: Option<Arc<ShadowPolicy>>,
    /// The shadow policy applies only while the migration is in its shadow stage.
    pub is_shadow_stage_only: bool,
    pub migration: Option<Arc<Migration>>,
    /// JSON answers that count as failures (the migration's `failure_fields`).
    pub failure_fields: crate::gate::failure::FailureFields,
    /// The plan as this snapshot's files state it; applied to the shared
    /// migration when the snapshot is swapped in.
    pub migration_plan: Option<Box<MigrationPlan>>,
    /// Shared with the previous snapshot's route of the same name when its
    /// backends are the same: a reload does not re-resolve unchanged series.
    pub metrics: Arc<RouteMetrics>,
    /// A hash of the route's source entry: equal means unchanged.
    pub fingerprint: u64,
}

/// A backend of the snapshot. The upstream (and its connection pool) is
/// shared with the previous snapshot when the backend did not change.
#[derive(Debug)]
pub struct Backend {
    pub name: BackendName,
    pub upstream: Arc<Upstream>,
}

/// The compiled route table. Built once per (re)load, never mutated.
#[derive(Debug)]
pub struct Snapshot {
    /// A short hash of the source files.
    pub version: Arc<str>,
    /// In declaration order.
    pub routes: Box<[Route]>,
    pub backends: Box<[Backend]>,
    /// Takes what no route matches; named `default`.
    pub default_route: Route,
    pub server: ServerSettings,
    pub(crate) index: RouteIndex,
    /// Route positions by name, for reloads and the admin API.
    pub(crate) by_name: std::collections::HashMap<RouteName, usize>,
}

/// Where one request goes, and why. `explain` prints this value.
#[derive(Debug)]
pub struct Decision<'s> {
    pub route: &'s Route,
    pub primary: BackendId,
    pub params: PathParams,
    /// The split bucket of this request, when the route splits.
    pub bucket: Option<u32>,
}

impl Snapshot {
    /// The route for this request (most specific wins), and its backend.
    pub fn select(&self, req: &RequestView) -> Decision<'_> {
        let found = self.index.select(
            req,
            |id| self.routes[id].conditions.matches(req),
            |id| match &self.routes[id].path {
                PathMatch::Template { pattern, .. } => pattern,
                _ => "",
            },
        );
        let (route, params) = match found {
            Some((id, params)) => (&self.routes[id], params),
            None => (&self.default_route, PathParams::default()),
        };
        let (primary, bucket) = match &route.target {
            Target::Backend(id) => (*id, None),
            Target::Split(split) => {
                let bucket = split.bucket(req.headers, req.client_ip);
                let backend = split
                    .backend_for_bucket(bucket)
                    .unwrap_or(self.default_backend());
                (backend, Some(bucket))
            }
            Target::Migration(migration) => migration.choose(req.headers, req.client_ip),
        };
        Decision {
            route,
            primary,
            params,
            bucket,
        }
    }

    pub fn backend(&self, id: BackendId) -> &Backend {
        &self.backends[id.0]
    }

    pub fn default_backend(&self) -> BackendId {
        match self.default_route.target {
            Target::Backend(id) => id,
            Target::Split(_) | Target::Migration(_) => BackendId(0),
        }
    }

    pub fn backend_id(&self, name: &str) -> Option<BackendId> {
        self.backends
            .iter()
            .position(|b| &*b.name == name)
            .map(BackendId)
    }

    pub fn route(&self, name: &str) -> Option<&Route> {
        self.by_name.get(name).map(|&i| &self.routes[i])
    }
}

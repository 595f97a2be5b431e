//! The active snapshot as JSON, for `GET /api/routes`.

use serde_json::{json, Value};

use crate::reload::ReloadStatus;
use crate::routing::{PathMatch, Route, Snapshot, Target};

pub fn describe(snapshot: &Snapshot, status: &ReloadStatus) -> Value {
    json!({
        "version": &*snapshot.version,
        "last_success_unix": status.last_success_unix,
        "last_error": status.last_error,
        "default": &*snapshot.backend(snapshot.default_backend()).name,
        "backends": snapshot.backends.iter().map(|b| json!({
            "name": &*b.name,
            "url": b.upstream.settings.url.to_string(),
        })).collect::<Vec<_>>(),
        "routes": snapshot.routes.iter().map(|r| route(snapshot, r)).collect::<Vec<_>>(),
    })
}

fn route(snapshot: &Snapshot, route: &Route) -> Value {
    let path = match &route.path {
        PathMatch::Exact(p) => json!({"path": &**p}),
        PathMatch::Template { pattern, .. } => json!({"path": &**pattern}),
        PathMatch::Prefix(p) => json!({"prefix": &**p}),
    };
    let target = match &route.target {
        Target::Backend(id) => json!({"backend": &*snapshot.backend(*id).name}),
        Target::Split(split) => {
            let mut lower = 0;
            let shares: serde_json::Map<String, Value> = split
                .choices
                .iter()
                .map(|c| {
                    let share = f64::from(c.upper_bucket - lower) / 100.0;
                    lower = c.upper_bucket;
                    (snapshot.backend(c.backend).name.to_string(), json!(share))
                })
                .collect();
            json!({"split_percent": shares})
        }
        Target::Migration(m) => json!({"migration": {
            "from": &*snapshot.backend(m.from).name,
            "to": &*snapshot.backend(m.to).name,
            "weight": f64::from(m.cell.weight_bp()) / 10_000.0,
        }}),
    };
    json!({
        "name": &*route.name,
        "declared_at": route.declared_at.to_string(),
        "match": path,
        "methods": route.conditions.methods.as_ref().map(|m| m.iter().map(|m| m.as_str().to_string()).collect::<Vec<_>>()),
        "target": target,
        "fallback": route.fallback.map(|f| snapshot.backend(f).name.to_string()),
    })
}

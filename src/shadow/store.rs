//! The bounded store of recent mismatches per route, redacted, for
//! `GET /api/shadow/diffs`; and the per-route bounds on noise fields and
//! mismatch metric labels.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use http::HeaderMap;
use serde::Serialize;

/// Recent mismatches kept per route; older ones are dropped.
const RECENT_PER_ROUTE: usize = 50;
/// Distinct `field` label values per route; the rest count as `other`.
const FIELD_LABELS_PER_ROUTE: usize = 20;
const NOISE_FIELDS_PER_ROUTE: usize = 100;
/// Bodies are kept only this long in the store.
const BODY_EXCERPT_BYTES: usize = 2048;
/// Never stored in clear.
const SECRET_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

#[derive(Debug, Clone, Serialize)]
pub struct FieldDiff {
    pub path: String,
    pub kind: &'static str,
    pub primary: Option<String>,
    pub candidate: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffRecord {
    pub at_unix_ms: u64,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub request_headers: Vec<(String, String)>,
    pub primary_status: u16,
    pub candidate_status: u16,
    pub differences: Vec<FieldDiff>,
    pub total_differences: usize,
    /// Differences in fields known to vary between two primary answers.
    pub noise: Vec<String>,
    pub primary_body: String,
    pub candidate_body: String,
}

#[derive(Default)]
struct RouteDiffs {
    recent: VecDeque<DiffRecord>,
    noise: BTreeSet<String>,
    field_labels: BTreeSet<String>,
}

/// Shared by the shadow workers and the admin API; the lock is taken once
/// per comparison, never on the client's path.
#[derive(Default)]
pub struct DiffStore {
    routes: Mutex<HashMap<String, RouteDiffs>>,
}

impl DiffStore {
    pub fn push(&self, route: &str, record: DiffRecord) {
        if let Ok(mut routes) = self.routes.lock() {
            let entry = routes.entry(route.to_string()).or_default();
            if entry.recent.len() == RECENT_PER_ROUTE {
                entry.recent.pop_front();
            }
            entry.recent.push_back(record);
        }
    }

    /// Most recent first.
    pub fn recent(&self, route: Option<&str>) -> Vec<(String, DiffRecord)> {
        let Ok(routes) = self.routes.lock() else {
            return Vec::new();
        };
        let mut out: Vec<(String, DiffRecord)> = routes
            .iter()
            .filter(|(name, _)| route.is_none_or(|r| r == name.as_str()))
            .flat_map(|(name, diffs)| diffs.recent.iter().map(move |d| (name.clone(), d.clone())))
            .collect();
        out.sort_by_key(|entry| std::cmp::Reverse(entry.1.at_unix_ms));
        out
    }

    pub fn learn_noise(&self, route: &str, fields: impl IntoIterator<Item = String>) {
        if let Ok(mut routes) = self.routes.lock() {
            let noise = &mut routes.entry(route.to_string()).or_default().noise;
            for field in fields {
                if noise.len() < NOISE_FIELDS_PER_ROUTE {
                    noise.insert(field);
                }
            }
        }
    }

    pub fn noise(&self, route: &str) -> BTreeSet<String> {
        self.routes
            .lock()
            .ok()
            .and_then(|r| r.get(route).map(|d| d.noise.clone()))
            .unwrap_or_default()
    }

    pub fn all_noise(&self) -> HashMap<String, Vec<String>> {
        let Ok(routes) = self.routes.lock() else {
            return HashMap::new();
        };
        routes
            .iter()
            .filter(|(_, d)| !d.noise.is_empty())
            .map(|(name, d)| (name.clone(), d.noise.iter().cloned().collect()))
            .collect()
    }

    /// The metric label for `field`: itself while the route has fewer than
    /// `FIELD_LABELS_PER_ROUTE` distinct fields, else `other`.
    pub fn field_label(&self, route: &str, field: &str) -> String {
        let Ok(mut routes) = self.routes.lock() else {
            return "other".into();
        };
        let labels = &mut routes.entry(route.to_string()).or_default().field_labels;
        if labels.contains(field) || labels.len() < FIELD_LABELS_PER_ROUTE {
            labels.insert(field.to_string());
            field.to_string()
        } else {
            "other".into()
        }
    }
}

/// Request headers as stored: secrets replaced by `[redacted]`.
pub fn redacted_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = if SECRET_HEADERS.contains(&name.as_str()) {
                "[redacted]".to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.to_string(), value)
        })
        .collect()
}

pub fn excerpt(body: &[u8]) -> String {
    let cut = body.len().min(BODY_EXCERPT_BYTES);
    let mut text = String::from_utf8_lossy(&body[..cut]).into_owned();
    if body.len() > cut {
        text.push_str("…[truncated]");
    }
    text
}

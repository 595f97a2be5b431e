//! The route-level change between two snapshots: what a reload (or a
//! change under review) does to traffic.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::{Route, Snapshot, Target, BUCKETS};

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// One line per route whose traffic shares move, e.g.
    /// `checkout: checkout-svc 5% -> 25%, monolith 95% -> 75%`.
    pub traffic: Vec<String>,
}

impl RouteChanges {
    pub fn between(old: &Snapshot, new: &Snapshot) -> RouteChanges {
        // By name once, not `Snapshot::route` per route: that scan made a
        // reload of 10,000 routes quadratic.
        let old_routes: HashMap<&str, &Route> = old.routes.iter().map(|r| (&*r.name, r)).collect();
        let new_names: HashSet<&str> = new.routes.iter().map(|r| &*r.name).collect();
        let mut changes = RouteChanges::default();
        for route in new.routes.iter() {
            match old_routes.get(&*route.name) {
                None => changes.added.push(route.name.to_string()),
                Some(before) if before.fingerprint != route.fingerprint => {
                    changes.changed.push(route.name.to_string());
                    let (was, is) = (shares(old, &before.target), shares(new, &route.target));
                    if was != is {
                        changes.traffic.push(format!(
                            "{}: {} -> {}",
                            route.name,
                            render(&was),
                            render(&is)
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        for route in old.routes.iter() {
            if !new_names.contains(&*route.name) {
                changes.removed.push(route.name.to_string());
            }
        }
        changes
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// `(backend, basis points)` of a target, by backend name.
fn shares(snapshot: &Snapshot, target: &Target) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = match target {
        Target::Backend(id) => vec![(snapshot.backend(*id).name.to_string(), BUCKETS)],
        // The share moves with the gate, not with the file.
        Target::Migration(m) => vec![
            (
                format!("{} (migrating from)", snapshot.backend(m.from).name),
                BUCKETS,
            ),
            (format!("{} (migrating to)", snapshot.backend(m.to).name), 0),
        ],
        Target::Split(split) => {
            let mut lower = 0;
            split
                .choices
                .iter()
                .map(|c| {
                    let share = c.upper_bucket - lower;
                    lower = c.upper_bucket;
                    (snapshot.backend(c.backend).name.to_string(), share)
                })
                .collect()
        }
    };
    out.sort();
    out
}

fn render(shares: &[(String, u32)]) -> String {
    let parts: Vec<String> = shares
        .iter()
        .map(|(name, bp)| format!("{name} {}%", f64::from(*bp) / 100.0))
        .collect();
    parts.join(", ")
}

impl fmt::Display for RouteChanges {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{} added, {} removed, {} changed",
            self.added.len(),
            self.removed.len(),
            self.changed.len()
        )?;
        for (label, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !names.is_empty() {
                write!(f, "; {label}: {}", names.join(", "))?;
            }
        }
        Ok(())
    }
}

//! The demo's route table: written as an ordinary routes directory, so the
//! proxy loads (and reloads) it like any other, and a newcomer can read it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The route names of the demo table, what each shows, and which backend
/// is "the new service" when the table reports a share.
pub(crate) struct DemoRoute {
    pub(crate) name: &'static str,
    /// The new service of this route, if any.
    pub(crate) new_backend: Option<&'static str>,
    /// What the table shows in the stage column for routes without a migration.
    pub(crate) fixed_stage: Option<&'static str>,
}

pub(crate) const ROUTES: [DemoRoute; 5] = [
    DemoRoute {
        name: "catalog",
        new_backend: None,
        fixed_stage: Some("shadow only"),
    },
    DemoRoute {
        name: "search",
        new_backend: Some(NEW_SVC),
        fixed_stage: Some("split 20%"),
    },
    DemoRoute {
        name: "orders",
        new_backend: Some(NEW_SVC),
        fixed_stage: None,
    },
    DemoRoute {
        name: "billing",
        new_backend: Some(BILLING_SVC),
        fixed_stage: None,
    },
    DemoRoute {
        name: "default",
        new_backend: None,
        fixed_stage: Some("monolith"),
    },
];

pub(crate) const NEW_SVC: &str = "new-svc";
pub(crate) const BILLING_SVC: &str = "billing-svc";

/// The file the demo writes inside its routes directory.
pub(crate) const FILE_NAME: &str = "demo.yaml";

/// The gate settings of both demo migrations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoGate {
    /// The sliding window of evidence the gate judges.
    pub window: Duration,
    /// How often the gate looks at the window.
    pub interval: Duration,
    /// Requests needed on each side (and shadow comparisons) before any check runs.
    pub min_requests: u64,
    /// Passing windows in a row needed to move to the next stage.
    pub promote_after: u32,
}

impl Default for DemoGate {
    /// Short enough that, at the demo's traffic, the good migration
    /// completes and the bad one rolls back within a minute.
    fn default() -> DemoGate {
        DemoGate {
            window: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            min_requests: 30,
            promote_after: 2,
        }
    }
}

/// Where the demo's backends listen.
pub(crate) struct BackendAddrs {
    pub(crate) monolith: SocketAddr,
    pub(crate) faithful: SocketAddr,
    pub(crate) buggy: SocketAddr,
}

/// Writes `FILE_NAME` into `dir` (created if missing).
pub(crate) fn write(dir: &Path, backends: &BackendAddrs, gate: &DemoGate) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(FILE_NAME), render(backends, gate))
}

fn render(backends: &BackendAddrs, gate: &DemoGate) -> String {
    let BackendAddrs {
        monolith,
        faithful,
        buggy,
    } = backends;
    let DemoGate {
        window,
        interval,
        min_requests,
        promote_after,
    } = gate;
    let (window, interval) = (window.as_millis(), interval.as_millis());
    // `min_match_rate: 95%` rather than the default 99%: with all answers
    // matching, the gate's confidence bound clears 95% after ~50
    // comparisons but 99% only after ~270, more than a short window holds.
    // `max_p99_ratio: 2`: a p99 over a few dozen requests is noisy on a
    // busy laptop; the buggy service is 3× slower and still fails it.
    let gate = format!(
        "{{ window: {window}ms, interval: {interval}ms, min_requests: {min_requests}, promote_after: {promote_after},\n              \
         max_p99_ratio: 2, min_match_rate: 95% }}"
    );
    format!(
        r#"# Written by `strangler demo`. Edit it while the demo runs: the proxy reloads.
backends:
  monolith:    {{ url: "http://{monolith}" }}
  # The faithful new service: same JSON, keys in another order.
  {NEW_SVC}:     {{ url: "http://{faithful}", timeout: 2s }}
  # The buggy one: `amount` as a string, 10% 500s, 3x latency.
  {BILLING_SVC}: {{ url: "http://{buggy}", timeout: 2s }}
default: monolith

routes:
  # Shadow: the monolith answers, the new service gets a copy to compare.
  - name: catalog
    match: {{ path: "/api/catalog/{{id}}", methods: [GET] }}
    backend: monolith
    shadow:
      backend: {NEW_SVC}
      sample: 100%
      compare: {{ ignore: ["$.generated_at"] }}

  # Split: 20% of users, sticky by user id, on the new service.
  - name: search
    match: {{ path: "/api/search", methods: [GET] }}
    split: {{ {NEW_SVC}: 20, monolith: 80 }}
    sticky: {{ header: x-user-id }}
    fallback: monolith

  # Gated migration to the faithful service: should reach 100%.
  - name: orders
    match: {{ prefix: "/api/orders" }}
    migration:
      from: monolith
      to: {NEW_SVC}
      stages: [shadow, 10%, 50%, 100%]
      gate: {gate}

  # Gated migration to the buggy service: should be rolled back.
  - name: billing
    match: {{ prefix: "/api/billing" }}
    migration:
      from: monolith
      to: {BILLING_SVC}
      stages: [shadow, 10%, 50%, 100%]
      gate: {gate}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, CompileContext};
    use crate::metrics::Metrics;

    /// The generated file is a valid routes directory with the demo's routes.
    #[tokio::test]
    async fn demo_routes_compile() {
        let dir =
            std::env::temp_dir().join(format!("strangler-demo-routes-test-{}", std::process::id()));
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let backends = BackendAddrs {
            monolith: addr(3000),
            faithful: addr(3001),
            buggy: addr(3002),
        };
        write(&dir, &backends, &DemoGate::default()).expect("write demo routes");
        let metrics = Metrics::new();
        let compiled = config::load(
            &dir,
            &CompileContext {
                metrics: &metrics,
                previous: None,
                migrations: None,
            },
        );
        let _ = std::fs::remove_dir_all(&dir);
        let compiled =
            compiled.unwrap_or_else(|errors| panic!("demo routes do not compile:\n{errors}"));
        for route in ROUTES.iter().filter(|r| r.name != "default") {
            assert!(
                compiled
                    .snapshot
                    .routes
                    .iter()
                    .any(|r| &*r.name == route.name),
                "route `{}` missing",
                route.name
            );
        }
    }
}

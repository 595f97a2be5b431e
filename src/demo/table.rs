//! The live table: every few seconds, one line per demo route with its
//! stage, traffic, share on the new service, 5xx ratio, p99 and shadow
//! match rate, and a line for each migration that moved.
//!
//! Stage, share, errors and match rate come from the admin API
//! (`/api/migrations` and the counters of `/metrics`), as an operator would
//! read them; p99 is the client's view, from the traffic generator.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::routes::{DemoRoute, ROUTES};
use super::scrape::{AdminApi, Counters, MigrationState};
use super::traffic::{RouteSample, TrafficStats};
use crate::gate::Status;

/// Prints the table every `every` until `stop` turns true.
pub(crate) async fn run(
    admin: AdminApi,
    stats: Arc<TrafficStats>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut table = Table {
        before: admin.counters().await.unwrap_or_default(),
        last_tick: Some(Instant::now()),
        ..Table::default()
    };
    // Seen once here, so that a move before the first tick is still reported.
    for migration in admin.migrations().await.unwrap_or_default() {
        let _ = table.movement(&migration);
    }
    let _ = stats.take();
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let (counters, migrations) = match tokio::try_join!(admin.counters(), admin.migrations()) {
            Ok(both) => both,
            Err(err) => {
                println!("(cannot read the admin API: {err})");
                continue;
            }
        };
        print!(
            "{}",
            table.render(started.elapsed(), counters, &migrations, stats.take())
        );
    }
}

/// What the previous tick saw, to print rates and moves.
#[derive(Default)]
struct Table {
    before: Counters,
    last_tick: Option<Instant>,
    stages: HashMap<String, (String, Status)>,
}

impl Table {
    fn render(
        &mut self,
        elapsed: Duration,
        counters: Counters,
        migrations: &[MigrationState],
        samples: HashMap<&'static str, RouteSample>,
    ) -> String {
        let now = Instant::now();
        let seconds = self
            .last_tick
            .map_or(1.0, |t| now.duration_since(t).as_secs_f64())
            .max(0.001);
        self.last_tick = Some(now);
        let delta = counters.since(&self.before);
        self.before = counters;

        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{:>4}s  {:<9} {:<20} {:>6} {:>8} {:>7} {:>8} {:>7}",
            elapsed.as_secs(),
            "route",
            "stage",
            "req/s",
            "new svc",
            "5xx",
            "p99",
            "match"
        );
        for route in &ROUTES {
            let migration = migrations.iter().find(|m| m.route == route.name);
            let row = Row::of(route, migration, &delta, samples.get(route.name), seconds);
            let _ = writeln!(
                out,
                "       {:<9} {:<20} {:>6.1} {:>8} {:>7} {:>8} {:>7}",
                route.name, row.stage, row.rate, row.share, row.errors, row.p99, row.matches
            );
        }
        for migration in migrations {
            if let Some(line) = self.movement(migration) {
                let _ = writeln!(out, "       » {line}");
            }
        }
        out
    }

    /// A line when `migration` changed stage or status since the last tick.
    fn movement(&mut self, migration: &MigrationState) -> Option<String> {
        let now = (migration.stage.clone(), migration.status);
        let before = self.stages.insert(migration.route.clone(), now.clone())?;
        if before == now {
            return None;
        }
        let route = &migration.route;
        Some(match migration.status {
            Status::RolledBack => {
                let why = migration.failures().join("; ");
                format!("{route}: rolled back at {} ({why})", migration.stage)
            }
            Status::Completed => format!(
                "{route}: {} → {}, migration completed",
                before.0, migration.stage
            ),
            Status::Paused => format!("{route}: paused at {}", migration.stage),
            Status::Running if before.0 != now.0 => {
                format!("{route}: promoted {} → {}", before.0, migration.stage)
            }
            Status::Running => format!("{route}: running again at {}", migration.stage),
        })
    }
}

/// One route's cells, already formatted.
struct Row {
    stage: String,
    rate: f64,
    share: String,
    errors: String,
    p99: String,
    matches: String,
}

impl Row {
    fn of(
        route: &DemoRoute,
        migration: Option<&MigrationState>,
        delta: &Counters,
        sample: Option<&RouteSample>,
        seconds: f64,
    ) -> Row {
        let stage = match (migration, route.fixed_stage) {
            (Some(m), _) => format!("{} {}", m.stage, status_label(m.status)),
            (None, Some(fixed)) => fixed.to_string(),
            (None, None) => "-".to_string(),
        };
        let total = delta.route_total(route.name);
        let share = match route.new_backend {
            Some(_) if total == 0.0 => "-".to_string(),
            Some(backend) => percent(delta.on_backend(route.name, backend) / total),
            None => "0%".to_string(),
        };
        let errors = match delta.server_errors.get(route.name) {
            _ if total == 0.0 => "-".to_string(),
            Some(count) => percent(count / total),
            None => percent(0.0),
        };
        let (matched, mismatched) = (
            delta.shadow_outcome(route.name, "match"),
            delta.shadow_outcome(route.name, "mismatch"),
        );
        let matches = if matched + mismatched == 0.0 {
            "-".to_string()
        } else {
            percent(matched / (matched + mismatched))
        };
        let p99 = sample
            .and_then(RouteSample::p99)
            .map_or("-".to_string(), |p| {
                format!("{:.1}ms", p.as_secs_f64() * 1e3)
            });
        Row {
            stage,
            rate: total / seconds,
            share,
            errors,
            p99,
            matches,
        }
    }
}

fn status_label(status: Status) -> &'static str {
    match status {
        Status::Running => "running",
        Status::Paused => "paused",
        Status::RolledBack => "ROLLED BACK",
        Status::Completed => "completed",
    }
}

fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(stage: &str, status: Status) -> MigrationState {
        MigrationState {
            route: "orders".into(),
            stage: stage.into(),
            status,
            weight: 0.0,
            last_evidence: None,
        }
    }

    /// A move is reported once, when it happens; the first sight is not a move.
    #[test]
    fn movement_is_reported_once() {
        let mut table = Table::default();
        assert_eq!(table.movement(&state("shadow", Status::Running)), None);
        assert_eq!(
            table.movement(&state("10%", Status::Running)).as_deref(),
            Some("orders: promoted shadow → 10%")
        );
        assert_eq!(table.movement(&state("10%", Status::Running)), None);
    }

    /// Shares and error ratios are over the requests counted since the last tick.
    #[test]
    fn row_uses_the_delta() {
        let text = "strangler_requests_total{backend=\"new-svc\",code=\"2xx\",method=\"GET\",route=\"orders\"} 1\n\
            strangler_requests_total{backend=\"monolith\",code=\"5xx\",method=\"GET\",route=\"orders\"} 3\n";
        let delta = Counters::parse(text);
        let row = Row::of(
            &ROUTES[2],
            Some(&state("10%", Status::Running)),
            &delta,
            None,
            2.0,
        );
        assert_eq!(
            (row.stage.as_str(), row.share.as_str(), row.errors.as_str()),
            ("10% running", "25.0%", "75.0%")
        );
        assert_eq!(row.rate, 2.0);
    }
}

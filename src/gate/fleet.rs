//! Fleet mode (`gate.source: prometheus`): the gate's evidence and the
//! fleet's stage, read from Prometheus over the metrics of every replica.
//!
//! Each replica's local windows see only its share of the traffic. Here
//! the same numbers come from the counters all replicas export, summed by
//! Prometheus, so every replica that asks judges the same evidence and
//! reaches the same verdict. The queries aggregate exactly as the
//! recording rules in `deploy/prometheus/recording.rules.yml` do (a sum
//! over instances per route and backend), but over the gate's own window
//! instead of the rules' fixed 1m and 5m, and from the raw counters, so
//! that they need nothing but the scrape.
//!
//! Everything here is pure: `FleetQuery` writes the PromQL, the caller
//! asks, `FleetReadings` turns the numbers into `SideEvidence`, and
//! `stage_move` says whether this replica must follow the fleet.

use std::time::Duration;

use super::verdict::StageKind;
use super::window::{MatchEvidence, SideEvidence};

/// What to read for one migration, as of its current stage.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetQuery {
    pub route: String,
    pub from: String,
    pub to: String,
    /// The stage kind the readings are for: in the shadow stage the new
    /// side is the mirrored calls, not live traffic.
    pub kind: StageKind,
    /// The window, cut to the time since this replica entered the stage:
    /// evidence from one stage says little about the next.
    pub range: Duration,
}

/// One number fleet mode reads. The order is the order of `FleetQuery::promql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    OldRequests,
    OldFailures,
    OldP50,
    OldP99,
    NewRequests,
    NewFailures,
    NewP50,
    NewP99,
    Matches,
    Compared,
    StageMax,
    StageMin,
}

/// What one side did in the range, as Prometheus reports it. `None`: no data.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SideReadings {
    pub requests: Option<f64>,
    pub failures: Option<f64>,
    /// Seconds.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// The numbers of one fleet read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FleetReadings {
    pub old: SideReadings,
    pub new: SideReadings,
    /// Shadow comparisons that matched, and all that compared (match or
    /// mismatch; a candidate error counts as a new-side failure instead,
    /// as in the local windows).
    pub matches: Option<f64>,
    pub compared: Option<f64>,
    /// `max` and `min` of `strangler_migration_stage{route}` over the
    /// replicas (-1: rolled back).
    pub stage_max: Option<f64>,
    pub stage_min: Option<f64>,
}

/// What a running replica does about the fleet's stage before judging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetMove {
    /// Some replica rolled back: roll back too.
    FollowRollback,
    /// Some replica is at a later stage: move there.
    Adopt(usize),
    /// Judge the evidence. `may_promote` is false while the fleet reports
    /// a stage ahead of this one that cannot be adopted (a replica with
    /// other stages in its route file).
    Judge { may_promote: bool },
}

// === impl FleetQuery ===

impl FleetQuery {
    /// The PromQL of every reading.
    pub fn promql(&self) -> Vec<(Reading, String)> {
        let route = label_value(&self.route);
        let range = format!("{}s", self.range.as_secs_f64().ceil().max(1.0));
        let old = format!(r#"route="{route}",backend="{}""#, label_value(&self.from));
        let mut queries = vec![
            (Reading::OldRequests, requests(&old, &range)),
            (Reading::OldFailures, failures(&old, &range)),
            (
                Reading::OldP50,
                quantile(0.5, "strangler_request_duration_seconds", &old, &range),
            ),
            (
                Reading::OldP99,
                quantile(0.99, "strangler_request_duration_seconds", &old, &range),
            ),
        ];
        match self.kind {
            StageKind::Traffic => {
                let new = format!(r#"route="{route}",backend="{}""#, label_value(&self.to));
                queries.extend([
                    (Reading::NewRequests, requests(&new, &range)),
                    (Reading::NewFailures, failures(&new, &range)),
                    (
                        Reading::NewP50,
                        quantile(0.5, "strangler_request_duration_seconds", &new, &range),
                    ),
                    (
                        Reading::NewP99,
                        quantile(0.99, "strangler_request_duration_seconds", &new, &range),
                    ),
                ]);
            }
            StageKind::Shadow => {
                // The candidate's calls: every one that answered (compared)
                // or failed; its latency only from the answers, as the
                // shadow path observes it.
                let shadow = |outcomes: &str| {
                    format!(
                        r#"sum(increase(strangler_shadow_requests_total{{route="{route}",outcome=~"{outcomes}"}}[{range}]))"#
                    )
                };
                let candidate = format!(r#"route="{route}",side="candidate""#);
                queries.extend([
                    (Reading::NewRequests, shadow("match|mismatch|error")),
                    (Reading::NewFailures, shadow("error")),
                    (
                        Reading::NewP50,
                        quantile(0.5, "strangler_shadow_duration_seconds", &candidate, &range),
                    ),
                    (
                        Reading::NewP99,
                        quantile(
                            0.99,
                            "strangler_shadow_duration_seconds",
                            &candidate,
                            &range,
                        ),
                    ),
                ]);
            }
        }
        let shadow = |outcomes: &str| {
            format!(
                r#"sum(increase(strangler_shadow_requests_total{{route="{route}",outcome=~"{outcomes}"}}[{range}]))"#
            )
        };
        queries.extend([
            (Reading::Matches, shadow("match")),
            (Reading::Compared, shadow("match|mismatch")),
            (
                Reading::StageMax,
                format!(r#"max(strangler_migration_stage{{route="{route}"}})"#),
            ),
            (
                Reading::StageMin,
                format!(r#"min(strangler_migration_stage{{route="{route}"}})"#),
            ),
        ]);
        queries
    }
}

fn requests(selector: &str, range: &str) -> String {
    format!("sum(increase(strangler_requests_total{{{selector}}}[{range}]))")
}

/// Failures, 0 (not absent) when the side had requests but its failure
/// counter was never scraped: the `or` of the recording rules.
fn failures(selector: &str, range: &str) -> String {
    format!(
        "sum(increase(strangler_request_failures_total{{{selector}}}[{range}]) or increase(strangler_requests_total{{{selector}}}[{range}]) * 0)"
    )
}

fn quantile(q: f64, histogram: &str, selector: &str, range: &str) -> String {
    format!(
        "histogram_quantile({q}, sum by (le) (rate({histogram}_bucket{{{selector}}}[{range}])))"
    )
}

/// A PromQL string literal's content: backslashes and quotes escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

// === impl FleetReadings ===

impl FleetReadings {
    pub fn set(&mut self, reading: Reading, value: Option<f64>) {
        let slot = match reading {
            Reading::OldRequests => &mut self.old.requests,
            Reading::OldFailures => &mut self.old.failures,
            Reading::OldP50 => &mut self.old.p50,
            Reading::OldP99 => &mut self.old.p99,
            Reading::NewRequests => &mut self.new.requests,
            Reading::NewFailures => &mut self.new.failures,
            Reading::NewP50 => &mut self.new.p50,
            Reading::NewP99 => &mut self.new.p99,
            Reading::Matches => &mut self.matches,
            Reading::Compared => &mut self.compared,
            Reading::StageMax => &mut self.stage_max,
            Reading::StageMin => &mut self.stage_min,
        };
        *slot = value;
    }

    /// The evidence `evaluate` takes, built from the numbers. Counts come
    /// from `increase`, which extrapolates to the range's edges, so they
    /// are rounded, and failures are capped at requests. No data counts
    /// as no requests: the gate holds for `min_requests`. The sides carry
    /// no latency samples: rules for fleet mode use
    /// `LatencyTest::QuantileRatio`.
    pub fn evidence(&self, kind: StageKind) -> (SideEvidence, SideEvidence, Option<MatchEvidence>) {
        let side = |readings: &SideReadings| {
            let requests = count(readings.requests);
            SideEvidence {
                requests,
                failures: count(readings.failures).min(requests),
                p50: seconds(readings.p50),
                p99: seconds(readings.p99),
                samples: Vec::new(),
            }
        };
        let total = count(self.compared);
        let shadow = MatchEvidence {
            matches: count(self.matches).min(total),
            total,
        };
        let has_shadow = kind == StageKind::Shadow || shadow.total > 0;
        (
            side(&self.old),
            side(&self.new),
            has_shadow.then_some(shadow),
        )
    }
}

fn count(value: Option<f64>) -> u64 {
    match value {
        // Saturating float-to-int cast; negatives and NaN were ruled out.
        Some(v) if v.is_finite() && v > 0.0 => v.round() as u64,
        _ => 0,
    }
}

fn seconds(value: Option<f64>) -> Option<Duration> {
    value
        .filter(|v| v.is_finite() && *v >= 0.0)
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
}

// === stage_move ===

/// How a running replica at stage `own` (of `stage_count`) follows the
/// fleet, given `max`/`min` of `strangler_migration_stage` over the
/// replicas. A rollback anywhere wins, unless `ignores_rollback` (a person
/// resumed this replica while others are still rolled back); then a later
/// stage is adopted; only a replica not behind the fleet may promote.
pub fn stage_move(
    own: usize,
    stage_count: usize,
    readings: &FleetReadings,
    ignores_rollback: bool,
) -> FleetMove {
    if !ignores_rollback && readings.stage_min.is_some_and(|min| min < 0.0) {
        return FleetMove::FollowRollback;
    }
    let own_f = own as f64;
    match readings.stage_max {
        Some(max) if max > own_f && max < stage_count as f64 => {
            // An exact small integer: a stage index of this route file.
            FleetMove::Adopt(max as usize)
        }
        Some(max) if max > own_f => FleetMove::Judge { may_promote: false },
        _ => FleetMove::Judge { may_promote: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(kind: StageKind) -> FleetQuery {
        FleetQuery {
            route: "orders".into(),
            from: "monolith".into(),
            to: "orders-svc".into(),
            kind,
            range: Duration::from_millis(2_500),
        }
    }

    /// Numbers as Prometheus returns them (extrapolated, fractional, some
    /// absent) become evidence with whole counts, quantiles as durations,
    /// and no samples.
    #[test]
    fn readings_become_evidence() {
        let mut readings = FleetReadings::default();
        for (reading, value) in [
            (Reading::OldRequests, Some(1_000.4)),
            (Reading::OldFailures, Some(9.6)),
            (Reading::OldP50, Some(0.012)),
            (Reading::OldP99, Some(0.080)),
            (Reading::NewRequests, Some(499.5)),
            (Reading::NewFailures, Some(600.0)),
            (Reading::NewP50, Some(f64::NAN)),
            (Reading::NewP99, Some(f64::INFINITY)),
            (Reading::Matches, None),
            (Reading::Compared, None),
            (Reading::StageMax, Some(2.0)),
            (Reading::StageMin, Some(1.0)),
        ] {
            readings.set(reading, value);
        }
        let (old, new, shadow) = readings.evidence(StageKind::Traffic);
        assert_eq!((old.requests, old.failures), (1_000, 10));
        assert_eq!(old.p50, Some(Duration::from_millis(12)));
        assert_eq!(old.p99, Some(Duration::from_millis(80)));
        assert!(old.samples.is_empty());
        assert_eq!(
            (new.requests, new.failures),
            (500, 500),
            "failures capped at requests"
        );
        assert_eq!((new.p50, new.p99), (None, None));
        assert_eq!(
            shadow, None,
            "no comparisons in a traffic stage: no match check"
        );

        let (_, _, shadow) = readings.evidence(StageKind::Shadow);
        assert_eq!(
            shadow,
            Some(MatchEvidence {
                matches: 0,
                total: 0
            })
        );
        readings.set(Reading::Compared, Some(200.0));
        readings.set(Reading::Matches, Some(199.2));
        let (_, _, shadow) = readings.evidence(StageKind::Traffic);
        assert_eq!(
            shadow,
            Some(MatchEvidence {
                matches: 199,
                total: 200
            })
        );
    }

    /// Fleet evidence through `evaluate`: a p99 three times the monolith's
    /// fails on the ratio alone, and no data holds for `min_requests`.
    #[test]
    fn fleet_evidence_is_judged_with_the_quantile_ratio_alone() {
        use crate::gate::{evaluate, CheckName, CheckOutcome, GateRules, LatencyTest, Verdict};
        let rules = GateRules {
            min_requests: 100,
            max_error_rate_increase: 0.01,
            max_error_rate: Some(0.25),
            max_p99_ratio: 1.5,
            max_p50_ratio: None,
            min_match_rate: 0.99,
            confidence: 0.95,
            promote_after: 3,
            latency_test: LatencyTest::QuantileRatio,
        };
        let side = |p99| SideReadings {
            requests: Some(1_000.0),
            failures: Some(5.0),
            p50: Some(0.01),
            p99: Some(p99),
        };
        let slow = FleetReadings {
            old: side(0.1),
            new: side(0.3),
            ..FleetReadings::default()
        };
        let (old, new, shadow) = slow.evidence(StageKind::Traffic);
        let evidence = evaluate(&rules, StageKind::Traffic, &old, &new, shadow.as_ref());
        let p99 = evidence.check(CheckName::P99Ratio).expect("p99 checked");
        assert_eq!(p99.outcome, CheckOutcome::Fail);
        assert!(p99.detail.contains("ratio alone"), "{}", p99.detail);
        assert_eq!(evidence.verdict, Verdict::Rollback);

        let healthy = FleetReadings {
            new: side(0.11),
            ..slow
        };
        let (old, new, shadow) = healthy.evidence(StageKind::Traffic);
        let evidence = evaluate(&rules, StageKind::Traffic, &old, &new, shadow.as_ref());
        assert_eq!(evidence.verdict, Verdict::Promote, "{evidence:?}");

        let (old, new, shadow) = FleetReadings::default().evidence(StageKind::Traffic);
        let evidence = evaluate(&rules, StageKind::Traffic, &old, &new, shadow.as_ref());
        assert_eq!(evidence.verdict, Verdict::Hold);
        assert!(evidence.is_thin());
    }

    /// The queries name the route and each side's backend, use the range
    /// in whole seconds, and in the shadow stage read the candidate from
    /// the shadow metrics.
    #[test]
    fn queries_name_the_route_and_sides() {
        let traffic = query(StageKind::Traffic).promql();
        assert_eq!(traffic.len(), 12);
        let text = |queries: &[(Reading, String)], reading| {
            queries
                .iter()
                .find(|(r, _)| *r == reading)
                .map(|(_, q)| q.clone())
                .expect("every reading has a query")
        };
        assert_eq!(
            text(&traffic, Reading::NewRequests),
            r#"sum(increase(strangler_requests_total{route="orders",backend="orders-svc"}[3s]))"#
        );
        assert!(text(&traffic, Reading::OldP99).starts_with(
            r#"histogram_quantile(0.99, sum by (le) (rate(strangler_request_duration_seconds_bucket{route="orders",backend="monolith"}[3s])))"#
        ));
        let shadow = query(StageKind::Shadow).promql();
        assert!(text(&shadow, Reading::NewP99).contains(r#"side="candidate""#));
        assert!(text(&shadow, Reading::NewFailures).contains(r#"outcome=~"error""#));
        assert_eq!(label_value(r#"a"b\c"#), r#"a\"b\\c"#);
    }

    /// A rollback anywhere is followed, unless a person resumed this
    /// replica; a later stage is adopted; a stage the route file does not
    /// have blocks promotion.
    #[test]
    fn replicas_follow_the_fleet_stage() {
        let fleet = |max, min| FleetReadings {
            stage_max: Some(max),
            stage_min: Some(min),
            ..FleetReadings::default()
        };
        assert_eq!(
            stage_move(1, 4, &fleet(2.0, -1.0), false),
            FleetMove::FollowRollback
        );
        assert_eq!(
            stage_move(1, 4, &fleet(2.0, -1.0), true),
            FleetMove::Adopt(2)
        );
        assert_eq!(
            stage_move(1, 4, &fleet(1.0, 1.0), false),
            FleetMove::Judge { may_promote: true }
        );
        assert_eq!(
            stage_move(1, 4, &fleet(7.0, 1.0), false),
            FleetMove::Judge { may_promote: false }
        );
        assert_eq!(
            stage_move(0, 4, &FleetReadings::default(), false),
            FleetMove::Judge { may_promote: true },
            "no replica scraped yet"
        );
    }
}

//! The gate's look at one migration, in two steps so that no lock is held
//! across I/O: `due` says whether the interval has passed and what to ask
//! Prometheus, `tick_with` judges under the lock once the answers are in.

use std::time::Instant;

use super::{
    enter_stage, push_history, EvidenceSource, Migration, MigrationView, Runtime, Stage, Status,
};
use crate::gate::checks::hard_ceiling_check;
use crate::gate::external::{unreadable_fleet, External, GateQuery};
use crate::gate::fleet::{stage_move, FleetMove, FleetQuery};
use crate::gate::{evaluate, Check, CheckName, CheckOutcome, Evidence, StageKind, Verdict};

/// What one look at a migration decided.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub verdict: Verdict,
    pub view: MigrationView,
    /// `gate` when this replica judged the evidence, `fleet` when it
    /// followed another replica's stage (fleet mode). Only the first is a
    /// gate decision to count and announce.
    pub by: &'static str,
}

impl Migration {
    /// Whether the gate should look at this migration now, and what it
    /// must fetch first (nothing for a local gate without business checks).
    pub fn due(&self, now: Instant) -> Option<GateQuery> {
        let runtime = self.state.lock().ok()?;
        if !is_due(&runtime, now) {
            return None;
        }
        let stage = runtime.plan.stages.get(runtime.stage).copied()?;
        let plan = &runtime.plan;
        let fleet = (plan.source == EvidenceSource::Prometheus).then(|| FleetQuery {
            route: self.route.clone(),
            from: plan.from.clone(),
            to: plan.to.clone(),
            kind: kind_of(stage),
            range: plan.window.min(now.duration_since(runtime.stage_started)),
        });
        Some(GateQuery {
            prometheus_url: plan.prometheus_url.clone(),
            checks: plan.business_checks.clone(),
            fleet,
        })
    }

    /// Runs the gate if its interval has passed, with what `due` asked to
    /// fetch. Returns what was decided, holds included.
    pub fn tick_with(&self, now: Instant, unix: u64, external: External) -> Option<Judgement> {
        let mut runtime = self.state.lock().ok()?;
        if !is_due(&runtime, now) {
            return None;
        }
        let stage = runtime.plan.stages.get(runtime.stage).copied()?;
        let kind = kind_of(stage);
        let mut may_promote = true;
        let evidence = match runtime.plan.source {
            EvidenceSource::Local => {
                let (old, new, matches) = (
                    runtime.old.snapshot(now),
                    runtime.new.snapshot(now),
                    runtime.matches.snapshot(now),
                );
                let shadow = (kind == StageKind::Shadow || matches.total > 0).then_some(&matches);
                evaluate(&runtime.plan.rules, kind, &old, &new, shadow)
            }
            EvidenceSource::Prometheus => {
                // Read for another stage kind (the stage moved while
                // Prometheus answered): ask again in the next round.
                let fleet = external.fleet.filter(|f| f.kind == kind)?;
                match fleet.readings {
                    Err(err) => Evidence {
                        verdict: Verdict::Hold,
                        checks: vec![unreadable_fleet(&err)],
                    },
                    Ok(readings) => {
                        if readings.stage_min.is_some_and(|min| min >= 0.0) {
                            runtime.ignores_fleet_rollback = false;
                        }
                        let stage_count = runtime.plan.stages.len();
                        let ignores = runtime.ignores_fleet_rollback;
                        match stage_move(runtime.stage, stage_count, &readings, ignores) {
                            FleetMove::FollowRollback => {
                                runtime.status = Status::RolledBack;
                                return Some(self.follow(
                                    &mut runtime,
                                    now,
                                    unix,
                                    stage,
                                    Verdict::Rollback,
                                ));
                            }
                            FleetMove::Adopt(index) => {
                                enter_stage(&mut runtime, index, now);
                                return Some(self.follow(
                                    &mut runtime,
                                    now,
                                    unix,
                                    stage,
                                    Verdict::Promote,
                                ));
                            }
                            FleetMove::Judge {
                                may_promote: allowed,
                            } => may_promote = allowed,
                        }
                        let (old, new, shadow) = readings.evidence(kind);
                        evaluate(&runtime.plan.rules, kind, &old, &new, shadow.as_ref())
                    }
                }
            }
        };
        let mut extra = external.checks;
        if runtime.plan.source == EvidenceSource::Prometheus {
            extra.extend(local_ceiling(&runtime, now));
        }
        let evidence = evidence.with_checks(extra);
        runtime.last_check = now;
        let promote_after = runtime.plan.rules.promote_after;
        let mut verdict = runtime.gate.observe(&evidence, promote_after);
        if verdict == Verdict::Promote && !may_promote {
            // The fleet is at a stage this route file does not have: some
            // replica runs other stages. Moving on would only widen the split.
            verdict = Verdict::Hold;
        }
        runtime.last = Some(evidence.clone());
        match verdict {
            Verdict::Promote => self.advance(&mut runtime, now),
            Verdict::Rollback => runtime.status = Status::RolledBack,
            Verdict::Hold => {}
        }
        if verdict != Verdict::Hold {
            push_history(
                &mut runtime,
                unix,
                stage,
                verdict.as_str(),
                "gate",
                Some(evidence),
            );
        }
        self.publish(&runtime);
        Some(Judgement {
            verdict,
            view: self.view_of(&runtime),
            by: "gate",
        })
    }

    /// Records a stage change taken from the fleet (already applied to
    /// `runtime`), and publishes it.
    fn follow(
        &self,
        runtime: &mut Runtime,
        now: Instant,
        unix: u64,
        from_stage: Stage,
        verdict: Verdict,
    ) -> Judgement {
        runtime.last_check = now;
        push_history(runtime, unix, from_stage, verdict.as_str(), "fleet", None);
        self.publish(runtime);
        Judgement {
            verdict,
            view: self.view_of(runtime),
            by: "fleet",
        }
    }
}

/// Fleet mode still records this replica's own traffic. Its hard error
/// ceiling, failing, rolls back even when Prometheus is down or a scrape
/// behind: a broken deploy must not keep its share while the fleet's
/// numbers are out of reach. A passing or thin local ceiling says
/// nothing the fleet's numbers do not, and is left out.
fn local_ceiling(runtime: &Runtime, now: Instant) -> Option<Check> {
    let ceiling = runtime.plan.rules.max_error_rate?;
    let mut check = hard_ceiling_check(ceiling, &runtime.new.snapshot(now));
    if check.outcome != CheckOutcome::Fail {
        return None;
    }
    check.name = CheckName::LocalErrorCeiling;
    check.detail = format!("on this replica: {}", check.detail);
    Some(check)
}

fn is_due(runtime: &Runtime, now: Instant) -> bool {
    runtime.status == Status::Running
        && now.saturating_duration_since(runtime.last_check) >= runtime.plan.interval
}

fn kind_of(stage: Stage) -> StageKind {
    if stage == Stage::Shadow {
        StageKind::Shadow
    } else {
        StageKind::Traffic
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::gate::external::FleetEvidence;
    use crate::gate::fleet::FleetReadings;
    use crate::gate::prometheus::PrometheusError;
    use crate::gate::{GateRules, LatencyTest, MigrationPlan, Side};

    const INTERVAL: Duration = Duration::from_secs(1);

    fn fleet_plan() -> MigrationPlan {
        MigrationPlan {
            from: "monolith".into(),
            to: "new".into(),
            stages: vec![Stage::Share(500), Stage::Share(5_000), Stage::Share(10_000)],
            rules: GateRules {
                min_requests: 10,
                max_error_rate_increase: 0.01,
                max_error_rate: Some(0.25),
                max_p99_ratio: 1.5,
                max_p50_ratio: None,
                min_match_rate: 0.99,
                confidence: 0.95,
                promote_after: 1,
                latency_test: LatencyTest::QuantileRatio,
            },
            window: Duration::from_secs(60),
            interval: INTERVAL,
            failure_statuses: Vec::new(),
            webhook: None,
            source: EvidenceSource::Prometheus,
            business_checks: Vec::new(),
            prometheus_url: Some("http://127.0.0.1:9".into()),
        }
    }

    fn fleet(readings: Result<FleetReadings, PrometheusError>) -> External {
        External {
            checks: Vec::new(),
            fleet: Some(FleetEvidence {
                kind: StageKind::Traffic,
                readings,
            }),
        }
    }

    fn stages(max: f64, min: f64) -> FleetReadings {
        FleetReadings {
            stage_max: Some(max),
            stage_min: Some(min),
            ..FleetReadings::default()
        }
    }

    fn later() -> Instant {
        Instant::now() + INTERVAL
    }

    /// `due` asks for the fleet's numbers over the time since the stage
    /// began, and nothing before the interval has passed.
    #[test]
    fn due_asks_for_the_fleet_readings_on_its_interval() {
        let migration = Migration::new("orders".into(), fleet_plan(), 0, Status::Running);
        assert_eq!(migration.due(Instant::now()), None);
        let query = migration.due(later()).expect("due after the interval");
        let fleet = query.fleet.expect("fleet mode");
        assert_eq!(
            (fleet.kind, fleet.from.as_str()),
            (StageKind::Traffic, "monolith")
        );
        assert!(
            fleet.range <= INTERVAL + Duration::from_millis(100),
            "{:?}",
            fleet.range
        );
    }

    /// An unreadable Prometheus holds, with the reason in the evidence.
    #[test]
    fn an_unreadable_fleet_holds() {
        let migration = Migration::new("orders".into(), fleet_plan(), 0, Status::Running);
        let unreachable = Err(PrometheusError::SeveralSeries { count: 2 });
        let judged = migration
            .tick_with(later(), 0, fleet(unreachable))
            .expect("judged");
        assert_eq!((judged.verdict, judged.by), (Verdict::Hold, "gate"));
        let evidence = judged.view.last_evidence.expect("evidence");
        assert_eq!(evidence.checks[0].name, CheckName::FleetQuery);
    }

    /// This replica's own errors over the hard ceiling roll back even when
    /// Prometheus cannot be read.
    #[test]
    fn the_local_ceiling_rolls_back_without_prometheus() {
        let migration = Migration::new("orders".into(), fleet_plan(), 0, Status::Running);
        for n in 0..40 {
            migration.record(Side::New, n % 2 == 0, Duration::from_millis(5));
        }
        let unreachable = Err(PrometheusError::SeveralSeries { count: 2 });
        let judged = migration
            .tick_with(later(), 0, fleet(unreachable))
            .expect("judged");
        assert_eq!(judged.verdict, Verdict::Rollback);
        assert_eq!(judged.view.status, Status::RolledBack);
        let evidence = judged.view.last_evidence.expect("evidence");
        assert!(
            evidence.check(CheckName::LocalErrorCeiling).is_some(),
            "{evidence:?}"
        );
    }

    /// A replica behind the fleet adopts its stage; one that sees a
    /// rollback follows it, unless a person resumed it after one.
    #[test]
    fn replicas_adopt_and_follow_the_fleet_stage() {
        let migration = Migration::new("orders".into(), fleet_plan(), 0, Status::Running);
        let judged = migration
            .tick_with(later(), 0, fleet(Ok(stages(1.0, 0.0))))
            .expect("judged");
        assert_eq!((judged.verdict, judged.by), (Verdict::Promote, "fleet"));
        assert_eq!((judged.view.stage_index, judged.view.weight), (1, 0.5));

        let judged = migration
            .tick_with(later() + INTERVAL, 0, fleet(Ok(stages(1.0, -1.0))))
            .expect("judged");
        assert_eq!((judged.verdict, judged.by), (Verdict::Rollback, "fleet"));
        assert_eq!(
            (judged.view.status, judged.view.weight),
            (Status::RolledBack, 0.0)
        );

        migration.command("resume", 0).expect("resume");
        let judged = migration
            .tick_with(later() + INTERVAL * 2, 0, fleet(Ok(stages(1.0, -1.0))))
            .expect("judged");
        assert_eq!(
            (judged.by, judged.view.status),
            ("gate", Status::Running),
            "the resume sticks"
        );

        // Once no replica reports a rollback, the next one is followed again.
        migration.tick_with(later() + INTERVAL * 3, 0, fleet(Ok(stages(1.0, 1.0))));
        let judged = migration
            .tick_with(later() + INTERVAL * 4, 0, fleet(Ok(stages(1.0, -1.0))))
            .expect("judged");
        assert_eq!((judged.verdict, judged.by), (Verdict::Rollback, "fleet"));
    }
}

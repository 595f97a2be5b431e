//! The gate's look at one migration, in two steps so that no lock is held
//! across I/O: `due` says whether the interval has passed and what to ask
//! Prometheus, `tick_with` judges under the lock once the answers are in.

use std::time::Instant;

use super::{
    enter_stage, push_history, EvidenceSource, Migration, MigrationView, Runtime, Stage, Status,
};
use crate::gate::external::{unreadable_fleet, External, GateQuery};
use crate::gate::fleet::{stage_move, FleetMove, FleetQuery};
use crate::gate::{evaluate, Evidence, StageKind, Verdict};

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
        let evidence = evidence.with_checks(external.checks);
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

//! Gate scenarios end to end: traffic recorded into windows, evaluated, folded into a `GateState`.

use std::time::{Duration, Instant};

use super::window::SplitMix64;
use super::*;

const WINDOW: Duration = Duration::from_secs(60);
const INTERVAL: Duration = Duration::from_secs(10);

fn rules() -> GateRules {
    GateRules {
        min_requests: 500,
        max_error_rate_increase: 0.005,
        max_error_rate: Some(0.2),
        max_p99_ratio: 1.2,
        max_p50_ratio: Some(1.2),
        min_match_rate: 0.995,
        confidence: 0.95,
        promote_after: 3,
        latency_test: LatencyTest::MannWhitney,
    }
}

/// How one side behaves: latency uniform in [ms, 2·ms), a share of slow
/// answers at `tail_factor`×, and exactly `errors.0` failures in every
/// `errors.1` requests (integers, so that the counts in tests are exact).
#[derive(Clone, Copy)]
struct Profile {
    ms: f64,
    errors: (u64, u64),
    tail_share: f64,
    tail_factor: f64,
}

const HEALTHY: Profile = Profile {
    ms: 20.0,
    errors: (1, 100),
    tail_share: 0.0,
    tail_factor: 1.0,
};

/// One side of a route and its deterministic traffic generator.
struct Side {
    window: SideWindow,
    profile: Profile,
    sent: u64,
    rng: SplitMix64,
}

impl Side {
    fn new(t0: Instant, seed: u64, profile: Profile) -> Side {
        Side {
            window: SideWindow::new(WINDOW, t0, seed).unwrap(),
            profile,
            sent: 0,
            rng: SplitMix64::new(seed.wrapping_add(1000)),
        }
    }

    /// Sends `n` requests spread evenly over the `INTERVAL` ending at `end`.
    fn send(&mut self, end: Instant, n: u64) {
        let p = self.profile;
        for k in 0..n {
            let at = end - INTERVAL + INTERVAL.mul_f64(k as f64 / n as f64);
            // Request i fails when floor(i · num / den) steps up.
            let (num, den) = p.errors;
            let i = self.sent;
            let is_failure = (i + 1) * num / den > i * num / den;
            let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let tail = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let factor = if tail < p.tail_share {
                p.tail_factor
            } else {
                1.0
            };
            let latency = Duration::from_secs_f64(p.ms * (1.0 + u) * factor / 1000.0);
            self.window.record(at, is_failure, latency);
            self.sent += 1;
        }
    }
}

/// A migrating route at a traffic stage: `old_n` and `new_n` requests per interval.
struct Route {
    now: Instant,
    old: Side,
    new: Side,
}

impl Route {
    fn new(old: Profile, new: Profile) -> Route {
        let t0 = Instant::now();
        Route {
            now: t0,
            old: Side::new(t0, 1, old),
            new: Side::new(t0, 2, new),
        }
    }

    fn interval(&mut self, old_n: u64, new_n: u64) -> Evidence {
        self.interval_with(&rules(), old_n, new_n)
    }

    fn interval_with(&mut self, rules: &GateRules, old_n: u64, new_n: u64) -> Evidence {
        self.now += INTERVAL;
        self.old.send(self.now, old_n);
        self.new.send(self.now, new_n);
        evaluate(
            rules,
            StageKind::Traffic,
            &self.old.window.snapshot(self.now),
            &self.new.window.snapshot(self.now),
            None,
        )
    }
}

fn outcome(ev: &Evidence, name: CheckName) -> Option<CheckOutcome> {
    ev.check(name).map(|c| c.outcome)
}

/// Two healthy, equal services promote after exactly `promote_after` windows.
#[test]
fn healthy_equal_services_promote_after_three_windows() {
    let mut route = Route::new(HEALTHY, HEALTHY);
    let mut state = GateState::new();
    let mut decisions = Vec::new();
    for _ in 0..3 {
        let ev = route.interval(2000, 500);
        assert_eq!(ev.verdict, Verdict::Promote, "{ev:#?}");
        decisions.push(state.observe(&ev, 3));
    }
    assert_eq!(decisions, [Verdict::Hold, Verdict::Hold, Verdict::Promote]);
    // The run starts over for the next stage.
    assert_eq!(state.consecutive_passes(), 0);
}

/// 30% errors against 1% rolls back on the first window, from the z-test
/// alone (the hard ceiling is off here).
#[test]
fn thirty_percent_errors_roll_back() {
    let bad = Profile {
        errors: (3, 10),
        ..HEALTHY
    };
    let mut route = Route::new(HEALTHY, bad);
    let ev = route.interval_with(
        &GateRules {
            max_error_rate: None,
            ..rules()
        },
        2000,
        500,
    );
    assert_eq!(outcome(&ev, CheckName::ErrorRate), Some(CheckOutcome::Fail));
    assert_eq!(outcome(&ev, CheckName::HardErrorCeiling), None);
    assert_eq!(GateState::new().observe(&ev, 3), Verdict::Rollback);
}

/// A service three times slower never promotes; with this much evidence it
/// rolls back on the latency checks.
#[test]
fn three_times_slower_never_promotes() {
    let slow = Profile {
        ms: 60.0,
        ..HEALTHY
    };
    let mut route = Route::new(HEALTHY, slow);
    let mut state = GateState::new();
    for _ in 0..6 {
        let ev = route.interval(2000, 500);
        assert_eq!(
            outcome(&ev, CheckName::P99Ratio),
            Some(CheckOutcome::Fail),
            "{ev:#?}"
        );
        assert_eq!(outcome(&ev, CheckName::P50Ratio), Some(CheckOutcome::Fail));
        assert_eq!(outcome(&ev, CheckName::ErrorRate), Some(CheckOutcome::Pass));
        assert_eq!(state.observe(&ev, 3), Verdict::Rollback);
    }
}

/// A slow tail (5% of answers 10× slower) with a normal body: the p99 is
/// far over, but the rank test cannot prove the service slower as a whole,
/// so the gate holds, and never promotes.
#[test]
fn slow_tail_holds_but_never_promotes() {
    let tail = Profile {
        tail_share: 0.05,
        tail_factor: 10.0,
        ..HEALTHY
    };
    let mut route = Route::new(HEALTHY, tail);
    let mut state = GateState::new();
    for _ in 0..6 {
        let ev = route.interval(2000, 500);
        assert_eq!(
            outcome(&ev, CheckName::P99Ratio),
            Some(CheckOutcome::Inconclusive),
            "{ev:#?}"
        );
        assert_eq!(outcome(&ev, CheckName::P50Ratio), Some(CheckOutcome::Pass));
        assert_eq!(state.observe(&ev, 3), Verdict::Hold);
        assert_eq!(state.consecutive_passes(), 0);
    }
}

/// 4 failures in 120 requests (3.3% against 1%) is over the allowance but
/// not proof: Hold, not Rollback, and the run of passes starts over.
#[test]
fn a_handful_of_errors_holds_and_resets_the_run() {
    let unlucky = Profile {
        errors: (1, 30),
        ..HEALTHY
    };
    let mut route = Route::new(HEALTHY, unlucky);
    route.now += INTERVAL;
    route.old.send(route.now, 5000);
    route.new.send(route.now, 120);
    let new = route.new.window.snapshot(route.now);
    assert_eq!((new.requests, new.failures), (120, 4));
    let small = GateRules {
        min_requests: 100,
        ..rules()
    };
    let ev = evaluate(
        &small,
        StageKind::Traffic,
        &route.old.window.snapshot(route.now),
        &new,
        None,
    );
    assert_eq!(
        outcome(&ev, CheckName::ErrorRate),
        Some(CheckOutcome::Inconclusive),
        "{ev:#?}"
    );
    assert_eq!(
        outcome(&ev, CheckName::HardErrorCeiling),
        Some(CheckOutcome::Pass)
    );
    assert_eq!(ev.verdict, Verdict::Hold);

    let mut state = GateState::new();
    let pass = Route::new(HEALTHY, HEALTHY).interval(2000, 500);
    state.observe(&pass, 3);
    state.observe(&pass, 3);
    assert_eq!(state.consecutive_passes(), 2);
    assert_eq!(state.observe(&ev, 3), Verdict::Hold);
    assert_eq!(state.consecutive_passes(), 0);
}

/// Below `min_requests` the gate holds, runs no statistical check, and
/// keeps the run of passes: the next passing window promotes.
#[test]
fn thin_evidence_holds_without_resetting_the_run() {
    let mut route = Route::new(HEALTHY, HEALTHY);
    let mut state = GateState::new();
    assert_eq!(state.observe(&route.interval(2000, 500), 3), Verdict::Hold);
    assert_eq!(state.observe(&route.interval(2000, 500), 3), Verdict::Hold);

    let mut quiet = Route::new(HEALTHY, HEALTHY);
    let thin = quiet.interval(2000, 100);
    assert_eq!(thin.verdict, Verdict::Hold);
    assert!(thin.is_thin());
    assert_eq!(outcome(&thin, CheckName::ErrorRate), None);
    assert_eq!(state.observe(&thin, 3), Verdict::Hold);
    assert_eq!(state.consecutive_passes(), 2);

    assert_eq!(
        state.observe(&route.interval(2000, 500), 3),
        Verdict::Promote
    );
}

/// The hard ceiling rolls back from 20 requests on, below `min_requests`.
#[test]
fn hard_ceiling_rolls_back_before_min_requests() {
    let broken = Profile {
        errors: (2, 5),
        ..HEALTHY
    };
    let mut route = Route::new(HEALTHY, broken);
    let ev = route.interval(2000, 25);
    assert!(ev.is_thin());
    assert_eq!(
        outcome(&ev, CheckName::HardErrorCeiling),
        Some(CheckOutcome::Fail)
    );
    assert_eq!(ev.verdict, Verdict::Rollback);

    // 10 requests, all failed: too few even for the ceiling.
    let mut early = Route::new(
        HEALTHY,
        Profile {
            errors: (1, 1),
            ..HEALTHY
        },
    );
    let ev = early.interval(2000, 10);
    assert_eq!(
        outcome(&ev, CheckName::HardErrorCeiling),
        Some(CheckOutcome::Inconclusive)
    );
    assert_eq!(ev.verdict, Verdict::Hold);
}

/// A bad minute rolls back while it is in the window and stops counting
/// once the window has moved past it.
#[test]
fn a_bad_burst_expires_with_the_window() {
    let mut route = Route::new(HEALTHY, HEALTHY);
    route.new.profile.errors = (3, 10);
    assert_eq!(route.interval(2000, 500).verdict, Verdict::Rollback);
    route.new.profile.errors = (1, 100);
    let mut verdicts = Vec::new();
    for _ in 0..6 {
        verdicts.push(route.interval(2000, 500).verdict);
    }
    // Five windows still hold the burst; the sixth (60 s later) does not.
    assert_eq!(&verdicts[..5], [Verdict::Rollback; 5]);
    assert_eq!(verdicts[5], Verdict::Promote);
}

fn shadow_stage(matches: u64, total: u64) -> Evidence {
    let none = SideEvidence::default();
    let shadow = MatchEvidence { matches, total };
    evaluate(&rules(), StageKind::Shadow, &none, &none, Some(&shadow))
}

/// In the shadow stage the match rate decides: 99.9% of 10 000 passes a
/// 99.5% threshold, 95% fails, and few comparisons hold.
#[test]
fn shadow_match_rate_decides_the_shadow_stage() {
    let good = shadow_stage(9_990, 10_000);
    assert_eq!(
        outcome(&good, CheckName::MatchRate),
        Some(CheckOutcome::Pass)
    );
    assert_eq!(good.verdict, Verdict::Promote, "{good:#?}");

    let bad = shadow_stage(950, 1_000);
    assert_eq!(
        outcome(&bad, CheckName::MatchRate),
        Some(CheckOutcome::Fail)
    );
    assert_eq!(bad.verdict, Verdict::Rollback);

    // 99.67% of 600: above the threshold, but the bound is not yet.
    let unsure = shadow_stage(598, 600);
    assert_eq!(
        outcome(&unsure, CheckName::MatchRate),
        Some(CheckOutcome::Inconclusive)
    );
    assert!(!unsure.is_thin());

    assert!(shadow_stage(300, 300).is_thin());
    let none = SideEvidence::default();
    let no_shadow = evaluate(&rules(), StageKind::Shadow, &none, &none, None);
    assert_eq!(no_shadow.verdict, Verdict::Hold);
}

/// When the shadow path records the candidate's latency, a slow candidate
/// fails the shadow stage even with perfect matches.
#[test]
fn shadow_stage_uses_candidate_evidence_when_present() {
    let mut route = Route::new(
        HEALTHY,
        Profile {
            ms: 60.0,
            ..HEALTHY
        },
    );
    route.now += INTERVAL;
    route.old.send(route.now, 2000);
    route.new.send(route.now, 2000);
    let shadow = MatchEvidence {
        matches: 10_000,
        total: 10_000,
    };
    let old = route.old.window.snapshot(route.now);
    let new = route.new.window.snapshot(route.now);
    let ev = evaluate(&rules(), StageKind::Shadow, &old, &new, Some(&shadow));
    assert_eq!(outcome(&ev, CheckName::MatchRate), Some(CheckOutcome::Pass));
    assert_eq!(outcome(&ev, CheckName::P99Ratio), Some(CheckOutcome::Fail));
    assert_eq!(ev.verdict, Verdict::Rollback);
}

/// The evidence serialises with the documented names.
#[test]
fn evidence_serialises_with_stable_names() {
    let json = serde_json::to_value(shadow_stage(950, 1_000)).unwrap();
    assert_eq!(json["verdict"], "rollback");
    let names: Vec<_> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, ["min_requests", "match_rate"]);
    assert_eq!(json["checks"][1]["outcome"], "fail");
    assert_eq!(CheckName::P99Ratio.as_str(), "p99_ratio");
    assert_eq!(Verdict::Hold.as_str(), "hold");
}

/// Unusable rules are refused with the field named.
#[test]
fn rules_validation() {
    assert_eq!(rules().validate(), Ok(()));
    assert_eq!(
        GateRules {
            confidence: 1.0,
            ..rules()
        }
        .validate(),
        Err(GateRulesError::Confidence { value: 1.0 })
    );
    assert_eq!(
        GateRules {
            min_match_rate: 99.5,
            ..rules()
        }
        .validate(),
        Err(GateRulesError::Rate {
            field: "min_match_rate",
            value: 99.5
        })
    );
    assert!(GateRules {
        max_p50_ratio: Some(f64::NAN),
        ..rules()
    }
    .validate()
    .is_err());
    assert_eq!(
        GateRules {
            promote_after: 0,
            ..rules()
        }
        .validate(),
        Err(GateRulesError::PromoteAfterZero)
    );
}

/// With `min_requests` below the hard ceiling's own minimum, a window
/// that passes every other check passes: the ceiling does not hold it.
#[test]
fn ceiling_below_its_minimum_does_not_hold_a_promotion() {
    let rules = GateRules {
        min_requests: 10,
        max_error_rate_increase: 0.01,
        max_error_rate: Some(0.25),
        max_p99_ratio: 2.0,
        max_p50_ratio: None,
        min_match_rate: 0.95,
        confidence: 0.95,
        promote_after: 2,
        latency_test: LatencyTest::MannWhitney,
    };
    let side = |requests| SideEvidence {
        requests,
        ..SideEvidence::default()
    };
    let mut old = side(100);
    let mut new = side(12);
    for evidence in [&mut old, &mut new] {
        evidence.p50 = Some(std::time::Duration::from_millis(5));
        evidence.p99 = Some(std::time::Duration::from_millis(9));
    }
    let evidence = evaluate(&rules, StageKind::Traffic, &old, &new, None);
    assert_eq!(
        evidence
            .check(CheckName::HardErrorCeiling)
            .map(|c| c.outcome),
        Some(CheckOutcome::Inconclusive)
    );
    assert_eq!(evidence.verdict, Verdict::Promote);
}

//! The individual checks of a gate evaluation, one function per check.
//!
//! Each returns a `Check` whatever happens: a statistic that cannot be
//! computed makes its check inconclusive (the gate holds), never an error.

use std::time::Duration;

use super::stats::{self, Proportion, StatsError};
use super::verdict::{Check, CheckName, CheckOutcome, LatencyTest, HARD_CEILING_MIN_REQUESTS};
use super::window::{MatchEvidence, SideEvidence};

pub(super) fn hard_ceiling_check(ceiling: f64, new: &SideEvidence) -> Check {
    let observed = ratio(new.failures, new.requests);
    let (outcome, detail) = if new.requests < HARD_CEILING_MIN_REQUESTS {
        (
            CheckOutcome::Inconclusive,
            format!(
                "{} requests; the ceiling applies from {HARD_CEILING_MIN_REQUESTS}",
                new.requests
            ),
        )
    } else if observed > ceiling {
        (
            CheckOutcome::Fail,
            format!(
                "{} of {} requests failed, above the hard ceiling",
                new.failures, new.requests
            ),
        )
    } else {
        (
            CheckOutcome::Pass,
            format!("{} of {} requests failed", new.failures, new.requests),
        )
    };
    Check {
        name: CheckName::HardErrorCeiling,
        outcome,
        observed,
        threshold: ceiling,
        detail,
    }
}

/// Pass on the point estimate (observed increase within the allowance),
/// Fail only on significance. Passing on the upper confidence bound
/// instead would need thousands of requests on the new side per window
/// to ever promote from a 1% stage; the promote-after-N rule and the
/// stage ladder already guard against a lucky window.
pub(super) fn error_check(
    allowed: f64,
    alpha: f64,
    old: &SideEvidence,
    new: &SideEvidence,
) -> Check {
    let observed = ratio(new.failures, new.requests) - ratio(old.failures, old.requests);
    let mut check = Check {
        name: CheckName::ErrorRate,
        outcome: CheckOutcome::Inconclusive,
        observed,
        threshold: allowed,
        detail: String::new(),
    };
    if observed <= allowed {
        check.outcome = CheckOutcome::Pass;
        check.detail = format!("error ratio increase {observed:.4} is within {allowed:.4}");
        return check;
    }
    let p_value = Proportion::new(new.failures, new.requests).and_then(|new_p| {
        let old_p = Proportion::new(old.failures, old.requests)?;
        stats::increase_p_value(new_p, old_p, allowed)
    });
    (check.outcome, check.detail) = significance(
        p_value,
        alpha,
        "error ratio increase is above the allowance",
    );
    check
}

/// Pass when the quantile ratio is within the allowance. Above it, Fail
/// only if Mann-Whitney says new is slower than old × allowance, so a
/// noisy p99 (it rests on 1% of the requests) alone never rolls back; a
/// slow tail with a normal body holds instead. With
/// `LatencyTest::QuantileRatio` (fleet mode, no samples) the ratio alone
/// decides.
pub(super) fn latency_check(
    name: CheckName,
    max_ratio: f64,
    test: LatencyTest,
    alpha: f64,
    (old_q, new_q): (Option<Duration>, Option<Duration>),
    (old, new): (&SideEvidence, &SideEvidence),
) -> Check {
    let mut check = Check {
        name,
        outcome: CheckOutcome::Inconclusive,
        observed: f64::NAN,
        threshold: max_ratio,
        detail: "no latency recorded".to_owned(),
    };
    let (Some(old_q), Some(new_q)) = (old_q, new_q) else {
        return check;
    };
    // A 1 µs floor: a monolith answering "instantly" must not divide by zero.
    check.observed = new_q.as_secs_f64() / old_q.as_secs_f64().max(1e-6);
    if check.observed <= max_ratio {
        check.outcome = CheckOutcome::Pass;
        check.detail = format!("{new_q:?} against {old_q:?}");
        return check;
    }
    if test == LatencyTest::QuantileRatio {
        check.outcome = CheckOutcome::Fail;
        check.detail = format!(
            "{new_q:?} against {old_q:?}: over the allowed ratio (fleet mode judges the ratio alone, without a rank test)"
        );
        return check;
    }
    let p_value = stats::mann_whitney_slower(&new.samples, &old.samples, max_ratio);
    (check.outcome, check.detail) =
        significance(p_value, alpha, "new latency is above the allowed ratio");
    check
}

/// Pass when the Wilson lower bound clears the threshold, Fail when the
/// upper bound is below it (the shortfall is significant), else Inconclusive.
pub(super) fn match_check(min_rate: f64, confidence: f64, shadow: Option<&MatchEvidence>) -> Check {
    let mut check = Check {
        name: CheckName::MatchRate,
        outcome: CheckOutcome::Inconclusive,
        observed: f64::NAN,
        threshold: min_rate,
        detail: "no shadow comparisons recorded".to_owned(),
    };
    let Some(shadow) = shadow else {
        return check;
    };
    let bounds = Proportion::new(shadow.matches, shadow.total).and_then(|p| {
        check.observed = p.ratio();
        stats::wilson_bounds(p, confidence)
    });
    match bounds {
        Ok(b) if b.lower >= min_rate => {
            check.outcome = CheckOutcome::Pass;
            check.detail = format!("match rate lower bound {:.5}", b.lower);
        }
        Ok(b) if b.upper < min_rate => {
            check.outcome = CheckOutcome::Fail;
            check.detail = format!("match rate upper bound {:.5} is below the minimum", b.upper);
        }
        Ok(b) => {
            check.detail = format!(
                "match rate between {:.5} and {:.5}; need more comparisons",
                b.lower, b.upper
            );
        }
        Err(err) => check.detail = err.to_string(),
    }
    check
}

/// The outcome of a check whose point estimate is already over its limit.
fn significance(
    p_value: Result<f64, StatsError>,
    alpha: f64,
    claim: &str,
) -> (CheckOutcome, String) {
    match p_value {
        Ok(p) if p < alpha => (CheckOutcome::Fail, format!("{claim} (p = {p:.4})")),
        Ok(p) => (
            CheckOutcome::Inconclusive,
            format!("{claim} but not significantly (p = {p:.4})"),
        ),
        Err(err) => (CheckOutcome::Inconclusive, err.to_string()),
    }
}

fn ratio(count: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        count as f64 / total as f64
    }
}

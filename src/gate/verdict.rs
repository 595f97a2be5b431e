//! The gate's verdict: compare the new service with the monolith over one window, then decide.
//!
//! `evaluate` turns one window of evidence into a list of checks and a
//! verdict for that window alone; `GateState` turns a run of verdicts into
//! a decision (promote only after several passing windows in a row). Both
//! are pure: the caller snapshots the windows, calls these, and acts.
//!
//! The checks are built so that noise holds and only evidence rolls back:
//! a check fails only when a one-sided test says, with the configured
//! confidence, that the new service is worse than allowed. The exception is
//! the hard error ceiling, which bounds the damage a broken service can do
//! before the statistics catch up.

use std::sync::Arc;

use serde::{Serialize, Serializer};

use super::checks::{error_check, hard_ceiling_check, latency_check, match_check};
use super::window::{MatchEvidence, SideEvidence};

/// Below this many requests on the new side the hard error ceiling is not
/// applied: 1 failure in 3 requests is not a 33% error rate anyone should
/// act on, while 20 requests bound the blast radius at a handful of errors.
pub const HARD_CEILING_MIN_REQUESTS: u64 = 20;

/// The gate of one migrating route, compiled from its `gate:` config.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRules {
    /// Each side (or the shadow comparisons in the shadow stage) needs this
    /// many requests in the window before any statistical check runs.
    pub min_requests: u64,
    /// Allowed increase of the new error ratio over the monolith's,
    /// absolute: 0.005 allows 1.0% → 1.5%.
    pub max_error_rate_increase: f64,
    /// New error ratio above which the route rolls back at once, from
    /// `HARD_CEILING_MIN_REQUESTS` requests on, whatever `min_requests` says.
    pub max_error_rate: Option<f64>,
    pub max_p99_ratio: f64,
    pub max_p50_ratio: Option<f64>,
    /// Share of shadow comparisons that must match, e.g. 0.995.
    pub min_match_rate: f64,
    /// One-sided confidence of every test, e.g. 0.95: a rollback is wrong
    /// (the service was fine) at most 5% of the time per check.
    pub confidence: f64,
    /// Passing windows in a row needed to promote.
    pub promote_after: u32,
    /// How a latency quantile over its allowed ratio is judged.
    pub latency_test: LatencyTest,
}

/// What makes a latency check over its ratio fail rather than hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LatencyTest {
    /// Fail only when Mann-Whitney on the latency samples says the new
    /// service is slower than allowed. Needs the samples that local
    /// windows keep.
    #[default]
    MannWhitney,
    /// Fail on the quantile ratio alone. Fleet mode reads quantiles from
    /// Prometheus histograms and has no samples to rank, so a p99 over its
    /// ratio there rolls back without a significance test.
    QuantileRatio,
}

/// Why gate rules are unusable. `config::compile` reports these.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateRulesError {
    #[error("gate `confidence` must be above 0.5 and below 1, got {value}")]
    Confidence { value: f64 },

    #[error("gate `{field}` must be a rate between 0 and 1, got {value}")]
    Rate { field: &'static str, value: f64 },

    #[error("gate `{field}` must be a ratio above 0, got {value}")]
    Ratio { field: &'static str, value: f64 },

    #[error("gate `promote_after` must be at least 1")]
    PromoteAfterZero,
}

/// What kind of stage the route is in, as far as the gate cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// The new service sees only mirrored traffic; its answers are compared.
    Shadow,
    /// The new service answers a share of live traffic.
    Traffic,
}

/// The label values of `strangler_gate_decisions_total{decision}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Promote,
    Hold,
    Rollback,
}

/// One line of the gate's report. The name is an enum so that `GateState`
/// can `match` on it; it serialises to a plain string: the snake_case name
/// of a built-in check, or the configured name of a business check
/// (`config::compile` refuses business names that clash with built-ins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckName {
    MinRequests,
    HardErrorCeiling,
    ErrorRate,
    P99Ratio,
    P50Ratio,
    MatchRate,
    /// Fleet mode could not read the built-in evidence from Prometheus.
    FleetQuery,
    /// Fleet mode: the hard ceiling on this replica's own window, listed
    /// only when it fails (a safety net while Prometheus lags or is down).
    LocalErrorCeiling,
    /// A `gate.checks` entry: a PromQL query and its bounds.
    Business(Arc<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckOutcome {
    Pass,
    Fail,
    Inconclusive,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: CheckName,
    pub outcome: CheckOutcome,
    /// What was measured (a count, ratio or rate); NaN (JSON null) when
    /// nothing could be measured.
    pub observed: f64,
    pub threshold: f64,
    /// One sentence for the operator, with the p-value or bound behind the outcome.
    pub detail: String,
}

/// The verdict on one window, with the checks behind it. `Promote` here
/// means "this window passed"; `GateState` decides whether to act on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub verdict: Verdict,
    pub checks: Vec<Check>,
}

/// Consecutive passing windows of one route in its current stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateState {
    consecutive_passes: u32,
}

// === impl GateRules ===

impl GateRules {
    pub fn validate(&self) -> Result<(), GateRulesError> {
        if !(self.confidence > 0.5 && self.confidence < 1.0) {
            return Err(GateRulesError::Confidence {
                value: self.confidence,
            });
        }
        let rates = [
            (
                "max_error_rate_increase",
                Some(self.max_error_rate_increase),
            ),
            ("max_error_rate", self.max_error_rate),
            ("min_match_rate", Some(self.min_match_rate)),
        ];
        for (field, value) in rates {
            if let Some(value) = value.filter(|v| !(0.0..=1.0).contains(v)) {
                return Err(GateRulesError::Rate { field, value });
            }
        }
        let ratios = [
            ("max_p99_ratio", Some(self.max_p99_ratio)),
            ("max_p50_ratio", self.max_p50_ratio),
        ];
        for (field, value) in ratios {
            if let Some(value) = value.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(GateRulesError::Ratio { field, value });
            }
        }
        if self.promote_after == 0 {
            return Err(GateRulesError::PromoteAfterZero);
        }
        Ok(())
    }
}

// === impl Verdict, CheckName ===

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Promote => "promote",
            Verdict::Hold => "hold",
            Verdict::Rollback => "rollback",
        }
    }
}

impl CheckName {
    /// The names of the built-in checks, which business checks may not take.
    pub const BUILT_IN: [&'static str; 8] = [
        "min_requests",
        "hard_error_ceiling",
        "error_rate",
        "p99_ratio",
        "p50_ratio",
        "match_rate",
        "fleet_query",
        "local_error_ceiling",
    ];

    pub fn as_str(&self) -> &str {
        match self {
            CheckName::MinRequests => "min_requests",
            CheckName::HardErrorCeiling => "hard_error_ceiling",
            CheckName::ErrorRate => "error_rate",
            CheckName::P99Ratio => "p99_ratio",
            CheckName::P50Ratio => "p50_ratio",
            CheckName::MatchRate => "match_rate",
            CheckName::FleetQuery => "fleet_query",
            CheckName::LocalErrorCeiling => "local_error_ceiling",
            CheckName::Business(name) => name,
        }
    }
}

impl Serialize for CheckName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

// === impl Evidence ===

impl Evidence {
    /// Whether this window held too few requests to judge. Such a Hold
    /// says nothing about the service, so `GateState` keeps its count.
    pub fn is_thin(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.name == CheckName::MinRequests && c.outcome != CheckOutcome::Pass)
    }

    pub fn check(&self, name: CheckName) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Adds checks judged elsewhere (business checks from Prometheus) and
    /// decides again: one failing check rolls back, one inconclusive holds.
    pub fn with_checks(mut self, extra: Vec<Check>) -> Evidence {
        self.checks.extend(extra);
        self.verdict = verdict_of(&self.checks);
        self
    }
}

// === evaluate ===

/// Judges one window. `old` is the monolith, `new` the new service; in the
/// shadow stage `new` holds what the shadow copies measured (leave it empty
/// if the shadow path does not record it) and `shadow` the comparisons. In
/// a traffic stage `shadow` is optional; when given, its match rate must
/// pass too.
///
/// Rules are expected to be validated; an out-of-range `confidence` is
/// clamped rather than trusted, so this never panics.
pub fn evaluate(
    rules: &GateRules,
    stage: StageKind,
    old: &SideEvidence,
    new: &SideEvidence,
    shadow: Option<&MatchEvidence>,
) -> Evidence {
    let confidence = if rules.confidence.is_finite() {
        rules.confidence.clamp(0.5, 0.999_999)
    } else {
        0.95
    };
    let alpha = 1.0 - confidence;
    let mut checks = Vec::with_capacity(6);

    // In the shadow stage the side evidence is optional: the shadow path
    // may not record the candidate's errors and latency at all.
    let uses_sides = stage == StageKind::Traffic || new.requests > 0;

    if let Some(ceiling) = rules.max_error_rate.filter(|_| uses_sides) {
        checks.push(hard_ceiling_check(ceiling, new));
    }

    let uses_shadow = stage == StageKind::Shadow || shadow.is_some();
    let shadow_total = shadow.map_or(0, |s| s.total);
    let smallest = match (uses_sides, uses_shadow) {
        (true, true) => old.requests.min(new.requests).min(shadow_total),
        (true, false) => old.requests.min(new.requests),
        (false, _) => shadow_total,
    };
    let is_thin = smallest < rules.min_requests;
    checks.push(Check {
        name: CheckName::MinRequests,
        outcome: if is_thin {
            CheckOutcome::Inconclusive
        } else {
            CheckOutcome::Pass
        },
        observed: smallest as f64,
        threshold: rules.min_requests as f64,
        detail: if is_thin {
            format!(
                "not enough evidence: {smallest} requests, {} needed",
                rules.min_requests
            )
        } else {
            format!("{smallest} requests on the thinnest side")
        },
    });

    // With thin evidence the tests below are skipped, not run and ignored:
    // a normal approximation on a dozen requests can "prove" anything.
    if !is_thin {
        if uses_sides {
            checks.push(error_check(rules.max_error_rate_increase, alpha, old, new));
            checks.push(latency_check(
                CheckName::P99Ratio,
                rules.max_p99_ratio,
                rules.latency_test,
                alpha,
                (old.p99, new.p99),
                (old, new),
            ));
            if let Some(max) = rules.max_p50_ratio {
                checks.push(latency_check(
                    CheckName::P50Ratio,
                    max,
                    rules.latency_test,
                    alpha,
                    (old.p50, new.p50),
                    (old, new),
                ));
            }
        }
        if uses_shadow {
            checks.push(match_check(rules.min_match_rate, confidence, shadow));
        }
    }

    let verdict = verdict_of(&checks);
    Evidence { verdict, checks }
}

/// Any failing check rolls back; all passing promote; anything else holds.
fn verdict_of(checks: &[Check]) -> Verdict {
    // The hard ceiling only ever rolls back. Below its own minimum it has
    // nothing to say, and must not hold a promotion that `min_requests`
    // allows (with `min_requests` under 20 it would block every one).
    let is_passing = |c: &Check| {
        c.outcome == CheckOutcome::Pass
            || (c.name == CheckName::HardErrorCeiling && c.outcome == CheckOutcome::Inconclusive)
    };
    if checks.iter().any(|c| c.outcome == CheckOutcome::Fail) {
        Verdict::Rollback
    } else if checks.iter().all(is_passing) {
        Verdict::Promote
    } else {
        Verdict::Hold
    }
}

// === impl GateState ===

impl GateState {
    pub fn new() -> GateState {
        GateState::default()
    }

    pub fn consecutive_passes(&self) -> u32 {
        self.consecutive_passes
    }

    /// Folds one window's evidence into the run and says what to do:
    ///
    /// - Rollback: at once, and the run starts over.
    /// - a passing window: counts; Promote once `promote_after` windows in
    ///   a row passed, and the run starts over for the next stage.
    /// - a Hold from thin evidence (below `min_requests`): the run is kept
    ///   but not extended. A quiet night says nothing against the service,
    ///   and resetting would make low-traffic routes unable to promote.
    /// - any other Hold (a test over its limit but not significant, a
    ///   missing measurement): the run starts over. That window was a
    ///   doubt, and the passes before it must be earned again.
    pub fn observe(&mut self, evidence: &Evidence, promote_after: u32) -> Verdict {
        match evidence.verdict {
            Verdict::Rollback => {
                self.consecutive_passes = 0;
                Verdict::Rollback
            }
            Verdict::Promote => {
                self.consecutive_passes = self.consecutive_passes.saturating_add(1);
                if self.consecutive_passes >= promote_after.max(1) {
                    self.consecutive_passes = 0;
                    Verdict::Promote
                } else {
                    Verdict::Hold
                }
            }
            Verdict::Hold if evidence.is_thin() => Verdict::Hold,
            Verdict::Hold => {
                self.consecutive_passes = 0;
                Verdict::Hold
            }
        }
    }
}

//! Business checks: a PromQL query, exported by the services themselves,
//! whose value must stay within bounds for a stage to be promoted.
//!
//! Like Flagger's metric templates: a value outside its bounds fails the
//! window (rollback); a query that fails or returns no data is
//! inconclusive (hold), never a pass.

use std::sync::Arc;

use super::prometheus::PrometheusError;
use super::verdict::{Check, CheckName, CheckOutcome};

/// One `gate.checks` entry, compiled. At least one bound is set
/// (`config::compile` makes sure), and `min <= max`.
#[derive(Debug, Clone, PartialEq)]
pub struct BusinessCheck {
    pub name: Arc<str>,
    pub query: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl BusinessCheck {
    /// Judges one answer of the query.
    pub fn judge(&self, answer: Result<Option<f64>, PrometheusError>) -> Check {
        let mut check = Check {
            name: CheckName::Business(self.name.clone()),
            outcome: CheckOutcome::Inconclusive,
            observed: f64::NAN,
            threshold: self.min.or(self.max).unwrap_or(f64::NAN),
            detail: String::new(),
        };
        let value = match answer {
            Ok(Some(value)) => value,
            Ok(None) => {
                check.detail = "the query returned no data".into();
                return check;
            }
            Err(err) => {
                check.detail = format!("the query failed: {}", chain(&err));
                return check;
            }
        };
        check.observed = value;
        match (self.min, self.max) {
            (Some(min), _) if value < min => {
                check.outcome = CheckOutcome::Fail;
                check.detail = format!("{value} is below the minimum {min}");
            }
            (_, Some(max)) if value > max => {
                check.outcome = CheckOutcome::Fail;
                check.threshold = max;
                check.detail = format!("{value} is above the maximum {max}");
            }
            _ => {
                check.outcome = CheckOutcome::Pass;
                check.detail = format!("{value} is within {}", self.bounds());
            }
        }
        check
    }

    fn bounds(&self) -> String {
        match (self.min, self.max) {
            (Some(min), Some(max)) => format!("[{min}, {max}]"),
            (Some(min), None) => format!("[{min}, ∞)"),
            (None, Some(max)) => format!("(-∞, {max}]"),
            (None, None) => "(-∞, ∞)".into(),
        }
    }
}

/// An error and its causes on one line, for a check's `detail`.
pub(super) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment_success() -> BusinessCheck {
        BusinessCheck {
            name: "payment-success".into(),
            query: "sum(rate(payments_ok_total[1m])) / sum(rate(payments_total[1m]))".into(),
            min: Some(0.98),
            max: None,
        }
    }

    /// Within bounds passes, outside fails, and no number holds.
    #[test]
    fn values_are_judged_against_their_bounds() {
        let check = payment_success();
        assert_eq!(check.judge(Ok(Some(0.99))).outcome, CheckOutcome::Pass);
        let low = check.judge(Ok(Some(0.9)));
        assert_eq!(low.outcome, CheckOutcome::Fail);
        assert_eq!(low.observed, 0.9);
        assert_eq!(check.judge(Ok(None)).outcome, CheckOutcome::Inconclusive);
        let failed = check.judge(Err(PrometheusError::SeveralSeries { count: 3 }));
        assert_eq!(failed.outcome, CheckOutcome::Inconclusive);
        assert!(failed.detail.contains("3 series"), "{}", failed.detail);

        let latency = BusinessCheck {
            max: Some(0.5),
            min: None,
            ..payment_success()
        };
        let slow = latency.judge(Ok(Some(0.7)));
        assert_eq!((slow.outcome, slow.threshold), (CheckOutcome::Fail, 0.5));
    }

    /// The check serialises under its configured name.
    #[test]
    fn business_checks_serialise_under_their_name() {
        let json = serde_json::to_value(payment_success().judge(Ok(Some(0.99)))).unwrap();
        assert_eq!(json["name"], "payment-success");
        assert_eq!(json["outcome"], "pass");
    }
}

//! A retry budget per backend, as in Envoy and Linkerd: retries may add at
//! most `ratio` of the live traffic (plus a small floor per second), so
//! that during an outage retries cannot multiply the load.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// Tokens are counted in thousandths, so a 20% ratio deposits 200 per request.
const SCALE: i64 = 1_000;
/// The bucket never holds more than this many retries' worth.
const MAX_TOKENS: i64 = 100 * SCALE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BudgetSettings {
    /// Retries per request, in thousandths (200 = 20%).
    pub ratio_milli: u32,
    /// Retries always allowed per second.
    pub min_per_second: u32,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            ratio_milli: 200,
            min_per_second: 10,
        }
    }
}

pub struct RetryBudget {
    settings: BudgetSettings,
    tokens: AtomicI64,
    /// Whole seconds since `epoch` of the last floor refill.
    refilled_second: AtomicU64,
    epoch: Instant,
}

impl RetryBudget {
    pub fn new(settings: BudgetSettings) -> Self {
        RetryBudget {
            settings,
            tokens: AtomicI64::new(i64::from(settings.min_per_second) * SCALE),
            refilled_second: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Called for every request sent to the backend.
    pub fn deposit(&self) {
        self.add(i64::from(self.settings.ratio_milli));
    }

    fn add(&self, amount: i64) {
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some((t + amount).min(MAX_TOKENS))
            });
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_withdraw(&self) -> bool {
        let second = self.epoch.elapsed().as_secs();
        let last = self.refilled_second.load(Ordering::Acquire);
        if second > last
            && self
                .refilled_second
                .compare_exchange(last, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.add(i64::from(self.settings.min_per_second) * SCALE);
        }
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t >= SCALE).then_some(t - SCALE)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_the_ratio_of_live_requests() {
        let budget = RetryBudget::new(BudgetSettings {
            ratio_milli: 100,
            min_per_second: 0,
        });
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 10, "10% of 100 requests");
    }
}

//! A circuit breaker per backend: after consecutive failures it opens, and
//! the backend's traffic goes straight to the fallback (or gets 503) until
//! a single probe, let through after `open_for`, succeeds.
//!
//! Lock-free: the state is a few atomics, read on every request.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntGauge;

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BreakerSettings {
    /// Failures in a row that open the circuit (0 disables the breaker).
    pub consecutive_failures: u32,
    /// How long it stays open before one probe is let through.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            consecutive_failures: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: AtomicU8,
    failures: AtomicU32,
    /// Milliseconds since `epoch` when the circuit last opened.
    opened_at_ms: AtomicU64,
    epoch: Instant,
    gauge: IntGauge,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings, gauge: IntGauge) -> Self {
        gauge.set(i64::from(CLOSED));
        CircuitBreaker {
            settings,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            gauge,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a request may be sent now. In the open state, the first call
    /// after `open_for` becomes the half-open probe; others are refused
    /// until the probe's outcome is known.
    pub fn allow(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => {
                let waited = self
                    .now_ms()
                    .saturating_sub(self.opened_at_ms.load(Ordering::Acquire));
                let is_due = waited >= self.settings.open_for.as_millis() as u64;
                is_due && self.transition(OPEN, HALF_OPEN)
            }
            _ => false,
        }
    }

    pub fn on_success(&self) {
        self.failures.store(0, Ordering::Release);
        if self.state.load(Ordering::Acquire) != CLOSED {
            self.state.store(CLOSED, Ordering::Release);
            self.gauge.set(i64::from(CLOSED));
            tracing::info!("circuit closed");
        }
    }

    pub fn on_failure(&self) {
        if self.settings.consecutive_failures == 0 {
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let state = self.state.load(Ordering::Acquire);
        if state == HALF_OPEN || (state == CLOSED && failures >= self.settings.consecutive_failures)
        {
            self.opened_at_ms.store(self.now_ms(), Ordering::Release);
            if self.transition(state, OPEN) {
                tracing::warn!(failures, "circuit opened");
            }
        }
    }

    fn transition(&self, from: u8, to: u8) -> bool {
        let moved = self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            self.gauge.set(i64::from(to));
        }
        moved
    }

    /// `closed`, `half-open` or `open`, for `explain` and the admin API.
    pub fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            CLOSED => "closed",
            HALF_OPEN => "half-open",
            _ => "open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for: Duration) -> CircuitBreaker {
        let gauge = IntGauge::new("test_circuit", "test").expect("valid gauge");
        CircuitBreaker::new(
            BreakerSettings {
                consecutive_failures: 3,
                open_for,
            },
            gauge,
        )
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let b = breaker(Duration::from_secs(3600));
        b.on_failure();
        b.on_failure();
        b.on_success();
        b.on_failure();
        b.on_failure();
        assert!(b.allow(), "two failures after a success keep it closed");
        b.on_failure();
        assert!(!b.allow());
        assert_eq!(b.state_name(), "open");
    }

    #[test]
    fn a_due_open_circuit_lets_one_probe_through_and_closes_on_its_success() {
        let b = breaker(Duration::ZERO);
        for _ in 0..3 {
            b.on_failure();
        }
        assert!(b.allow(), "the probe");
        assert!(!b.allow(), "only one probe at a time");
        b.on_success();
        assert_eq!(b.state_name(), "closed");
    }

    #[test]
    fn a_failed_probe_reopens() {
        let b = breaker(Duration::ZERO);
        for _ in 0..3 {
            b.on_failure();
        }
        assert!(b.allow());
        b.on_failure();
        assert_eq!(b.state_name(), "open");
    }
}

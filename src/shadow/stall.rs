//! Whether the shadow thread was kept off the CPU while a mirror was in
//! flight: its timeout then says nothing of the candidate.
//!
//! The shadow thread runs at a low priority, so a busy host can stop it for
//! seconds. A mirror whose deadline falls in or just after such a stall
//! times out whatever the candidate did, maybe before its request was even
//! written; counted as an error, it would roll a healthy migration back.
//! A timer that fires late is the sign of a stall: while mirrors are in
//! flight, the watch sets one every `TICK` and notes when one fires late.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How often the watch looks at the clock while mirrors are in flight.
const TICK: Duration = Duration::from_millis(50);
/// Lateness that marks a stall: on a thread that runs, timers fire within
/// a millisecond or two.
pub(super) const STALL: Duration = Duration::from_millis(100);
/// `due_us` when no mirror is in flight and the watch sleeps.
const IDLE: u64 = u64::MAX;
/// Least time between two warnings of mirrors skipped for stalls.
const WARN_EVERY: Duration = Duration::from_secs(60);

pub(super) struct StallWatch {
    origin: Instant,
    /// Microseconds from `origin` to the end of the latest stall; 0: none yet.
    last_stall_end_us: AtomicU64,
    /// When the watch's next tick is due, in microseconds from `origin`.
    due_us: AtomicU64,
    in_flight: AtomicUsize,
    wake: Notify,
    /// Mirrors skipped for a stall since the last warning.
    skipped: AtomicU64,
    /// When the last warning was logged, in microseconds from `origin`; 0: never.
    warned_us: AtomicU64,
}

/// Held by a mirror in flight: the watch ticks while any is held.
pub(super) struct InFlight(Arc<StallWatch>);

impl InFlight {
    pub(super) fn watch(&self) -> &StallWatch {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The watch's ticking task, stopped when this is dropped.
pub(super) struct Ticking(tokio::task::JoinHandle<()>);

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl StallWatch {
    /// A watch whose ticks run on the current runtime (the thread the
    /// mirrors run on) until `Ticking` is dropped or the runtime ends.
    pub(super) fn start() -> (Arc<StallWatch>, Ticking) {
        let watch = Arc::new(StallWatch {
            origin: Instant::now(),
            last_stall_end_us: AtomicU64::new(0),
            due_us: AtomicU64::new(IDLE),
            in_flight: AtomicUsize::new(0),
            wake: Notify::new(),
            skipped: AtomicU64::new(0),
            warned_us: AtomicU64::new(0),
        });
        let ticking = Ticking(tokio::spawn(tick(watch.clone())));
        (watch, ticking)
    }

    /// Marks a mirror in flight until the guard is dropped.
    pub(super) fn in_flight(self: &Arc<Self>) -> InFlight {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            // Armed here rather than when the ticking task next runs: a
            // stall that starts now is seen even if it keeps that task
            // from running until after it.
            self.arm(Instant::now());
            self.wake.notify_one();
        }
        InFlight(self.clone())
    }

    /// Whether the thread stalled at any time since `since`, including a
    /// stall that has just ended and whose late tick has not run yet.
    pub(super) fn stalled_since(&self, since: Instant) -> bool {
        let now = self.micros(Instant::now());
        let due = self.due_us.load(Ordering::Acquire);
        let overdue = due != IDLE && now > due + STALL.as_micros() as u64;
        let last_end = self.last_stall_end_us.load(Ordering::Acquire);
        overdue || (last_end != 0 && last_end >= self.micros(since))
    }

    /// Counts a mirror skipped for a stall. An operator sees only
    /// `skipped` counts otherwise, and a migration that stays in its shadow
    /// stage for want of comparisons: at most once a minute, the log says
    /// why and what to change.
    pub(super) fn count_skip(&self) {
        if let Some(skipped) = self.skips_to_report(Instant::now()) {
            tracing::warn!(
                skipped,
                "the shadow thread was kept off the CPU while mirrors were in flight: their timeouts \
                 count as `skipped`, not against the candidate. If other work keeps this host's \
                 cores busy, give the thread a larger share with `server.shadow.nice` (10, or 0 \
                 for the workers' own priority; the default, idle, gets only unused CPU)"
            );
        }
    }

    /// The skips to report now, if a warning is due: the first one, then
    /// no more often than `WARN_EVERY`.
    fn skips_to_report(&self, now: Instant) -> Option<u64> {
        self.skipped.fetch_add(1, Ordering::AcqRel);
        let now = self.micros(now).max(1);
        let warned = self.warned_us.load(Ordering::Acquire);
        if warned != 0 && now < warned + WARN_EVERY.as_micros() as u64 {
            return None;
        }
        self.warned_us
            .compare_exchange(warned, now, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(self.skipped.swap(0, Ordering::AcqRel))
    }

    fn arm(&self, now: Instant) {
        self.due_us
            .store(self.micros(now + TICK), Ordering::Release);
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_micros() as u64
    }
}

async fn tick(watch: Arc<StallWatch>) {
    loop {
        let due = watch.due_us.load(Ordering::Acquire);
        if due == IDLE {
            watch.wake.notified().await;
            continue;
        }
        tokio::time::sleep_until((watch.origin + Duration::from_micros(due)).into()).await;
        let now = Instant::now();
        if watch.micros(now) > due + STALL.as_micros() as u64 {
            watch
                .last_stall_end_us
                .store(watch.micros(now).max(1), Ordering::Release);
        }
        if watch.in_flight.load(Ordering::Acquire) > 0 {
            watch.arm(now);
        } else {
            watch.due_us.store(IDLE, Ordering::Release);
            // A mirror that started since the load above has armed the
            // watch and left a wake-up: the next turn sees it.
            if watch.in_flight.load(Ordering::Acquire) > 0 {
                watch.arm(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_thread_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// The runtime's only thread blocked past the lateness that marks a
    /// stall, with a mirror in flight.
    #[test]
    fn a_blocked_thread_with_a_mirror_in_flight_is_a_stall() {
        let runtime = one_thread_runtime();
        let stalled = runtime.block_on(async {
            let (watch, _ticking) = StallWatch::start();
            let since = Instant::now();
            let _in_flight = watch.in_flight();
            std::thread::sleep(STALL * 3);
            watch.stalled_since(since)
        });
        assert!(stalled);
    }

    /// Seen also after the watch's late tick ran, and not for a mirror
    /// that started after the stall ended.
    #[test]
    fn a_stall_is_remembered_for_mirrors_that_started_before_its_end() {
        let runtime = one_thread_runtime();
        let (before, after) = runtime.block_on(async {
            let (watch, _ticking) = StallWatch::start();
            let _in_flight = watch.in_flight();
            let before = Instant::now();
            std::thread::sleep(STALL * 3);
            // Let the ticking task run its late tick.
            for _ in 0..1000 {
                if watch.last_stall_end_us.load(Ordering::Acquire) != 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let after = Instant::now();
            (watch.stalled_since(before), watch.stalled_since(after))
        });
        assert_eq!((before, after), (true, false));
    }

    /// The first skip is reported at once; the next ones together, once
    /// `WARN_EVERY` has passed.
    #[test]
    fn skips_are_reported_at_most_once_per_interval() {
        let runtime = one_thread_runtime();
        let reports = runtime.block_on(async {
            let (watch, _ticking) = StallWatch::start();
            let now = Instant::now();
            [
                watch.skips_to_report(now),
                watch.skips_to_report(now + WARN_EVERY / 2),
                watch.skips_to_report(now + WARN_EVERY / 2),
                watch.skips_to_report(now + WARN_EVERY),
            ]
        });
        assert_eq!(reports, [Some(1), None, None, Some(3)]);
    }

    /// No mirror in flight: the watch does not tick, and nothing blocks
    /// anything, so there is no stall to report.
    #[test]
    fn an_idle_watch_reports_no_stall() {
        let runtime = one_thread_runtime();
        let stalled = runtime.block_on(async {
            let (watch, _ticking) = StallWatch::start();
            let since = Instant::now();
            tokio::task::yield_now().await;
            watch.stalled_since(since)
        });
        assert!(!stalled);
    }
}

//! Sliding time windows of gate evidence: one per side (monolith, new service) of a route.
//!
//! The proxy calls `record` once per request and the gate calls `snapshot`
//! once per interval. A window is a ring of `BUCKETS` time buckets, each
//! `window / BUCKETS` wide; a bucket is reused (and so its evidence dropped)
//! when the clock has moved a whole window past it. A snapshot therefore
//! covers between 11/12 and 12/12 of the window, never more.
//!
//! The types are not synchronised: the caller keeps each in a
//! `std::sync::Mutex` (not tokio's; the lock is never held across an
//! `.await`). `record` does a few additions, one `leading_zeros` and at most
//! one RNG step, and never allocates, so the critical section is a few
//! instructions. `snapshot` copies at most a few thousand samples; sorting
//! and testing them happens after the lock is released.
//!
//! Time is an explicit `Instant` argument so that tests move the clock by
//! adding durations instead of sleeping.

use std::time::{Duration, Instant};

/// Number of time buckets in a window: expiry happens in steps of 1/12.
const BUCKETS: usize = 12;

/// Raw latency samples kept per bucket for the Mann-Whitney test. 256 per
/// bucket is at most 3072 per side, plenty for a rank test, in 12 KiB.
pub const RESERVOIR_PER_BUCKET: usize = 256;

// Latency histogram: log-linear buckets over microseconds, 8 per power of
// two (HDR-style). A bucket is at most 1/8 of its lower edge wide, so a
// reported quantile is within about 6% of the truth, and both sides share
// the same edges, so equal services give a ratio of exactly 1.
const SUB_BUCKET_BITS: u32 = 3;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// Latencies from 2^27 µs (about 134 s) up share the top bucket.
const MAX_MICROS_EXP: u32 = 27;
const HISTOGRAM_LEN: usize =
    (MAX_MICROS_EXP - SUB_BUCKET_BITS) as usize * SUB_BUCKETS + SUB_BUCKETS;
const MAX_MICROS: u64 = (1 << MAX_MICROS_EXP) - 1;

/// Why a window could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("gate window {window:?} is too short; it must be at least {min:?}")]
    TooShort { window: Duration, min: Duration },
}

/// What one side of a route did during the window, as the gate sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SideEvidence {
    pub requests: u64,
    pub failures: u64,
    /// `None` when the window holds no request.
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    /// Latencies in seconds, an approximately uniform sample of the window's
    /// requests (see `SideWindow::snapshot`).
    pub samples: Vec<f64>,
}

/// Shadow comparisons during the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MatchEvidence {
    pub matches: u64,
    pub total: u64,
}

/// Evidence for one side of one route over a sliding window.
#[derive(Debug)]
pub struct SideWindow {
    ring: Ring<SideBucket>,
    rng: SplitMix64,
    seed: u64,
}

/// Shadow match counts for one route over a sliding window.
#[derive(Debug)]
pub struct MatchWindow {
    ring: Ring<MatchBucket>,
}

// === impl SideWindow ===

impl SideWindow {
    /// `start` is the window's clock origin; `seed` makes sampling
    /// reproducible (use a different one per side so they do not sample in
    /// lockstep).
    pub fn new(window: Duration, start: Instant, seed: u64) -> Result<SideWindow, WindowError> {
        Ok(SideWindow {
            ring: Ring::new(window, start, SideBucket::new)?,
            rng: SplitMix64::new(seed),
            seed,
        })
    }

    /// Counts one finished request. Failed requests count towards latency
    /// too: a timeout is the slowest answer there is, and leaving it out
    /// would flatter a service that times out.
    pub fn record(&mut self, now: Instant, is_failure: bool, latency: Duration) {
        let Some(bucket) = self.ring.slot_for(now) else {
            return; // older than the window already
        };
        bucket.requests += 1;
        bucket.failures += u64::from(is_failure);
        let micros = u64::try_from(latency.as_micros()).map_or(MAX_MICROS, |m| m.min(MAX_MICROS));
        let index = histogram_index(micros);
        bucket.histogram[index] = bucket.histogram[index].saturating_add(1);
        // Reservoir sampling (Vitter's algorithm R): after n requests each
        // one is in the reservoir with probability 256/n. MAX_MICROS fits u32.
        let sample = u32::try_from(micros).unwrap_or(u32::MAX);
        if bucket.reservoir.len() < RESERVOIR_PER_BUCKET {
            bucket.reservoir.push(sample);
        } else if let Ok(j) = usize::try_from(self.rng.below(bucket.requests)) {
            if let Some(slot) = bucket.reservoir.get_mut(j) {
                *slot = sample;
            }
        }
    }

    /// The evidence of the last window as of `now`.
    ///
    /// Busy buckets keep a smaller share of their requests in the reservoir
    /// than quiet ones, so pooling reservoirs as they are would over-weight
    /// quiet periods, and differently per side (at a 1% stage the new side
    /// never fills its reservoir while the monolith always does). Each
    /// bucket therefore contributes in proportion to its request count,
    /// down to the smallest sampling rate of any bucket.
    pub fn snapshot(&self, now: Instant) -> SideEvidence {
        let mut evidence = SideEvidence::default();
        let mut histogram = [0u64; HISTOGRAM_LEN];
        let mut min_rate = 1.0_f64;
        for (_, b) in self.ring.live(now) {
            evidence.requests += b.requests;
            evidence.failures += b.failures;
            for (sum, &count) in histogram.iter_mut().zip(b.histogram.iter()) {
                *sum += u64::from(count);
            }
            if b.requests > 0 {
                min_rate = min_rate.min(b.reservoir.len() as f64 / b.requests as f64);
            }
        }
        evidence.p50 = quantile(&histogram, evidence.requests, 0.50);
        evidence.p99 = quantile(&histogram, evidence.requests, 0.99);

        for (epoch, b) in self.ring.live(now) {
            let take = ((b.requests as f64 * min_rate).round() as usize).min(b.reservoir.len());
            // Seeded from the bucket, so the same snapshot twice is the same sample.
            let mut rng = SplitMix64::new(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut pool = b.reservoir.clone();
            // Partial Fisher-Yates: the first `take` entries become a uniform
            // subset. The reservoir's own order is not random (early arrivals
            // sit at the front), so taking a prefix directly would not do.
            for i in 0..take {
                let span = (pool.len() - i) as u64;
                let j = i + usize::try_from(rng.below(span)).unwrap_or(0);
                pool.swap(i, j);
            }
            evidence
                .samples
                .extend(pool[..take].iter().map(|&us| f64::from(us) / 1e6));
        }
        evidence
    }
}

// === impl MatchWindow ===

impl MatchWindow {
    pub fn new(window: Duration, start: Instant) -> Result<MatchWindow, WindowError> {
        Ok(MatchWindow {
            ring: Ring::new(window, start, MatchBucket::default)?,
        })
    }

    /// Counts one finished shadow comparison. The caller decides what a
    /// candidate error is (normally a non-match); dropped shadows are not
    /// comparisons and are not recorded.
    pub fn record(&mut self, now: Instant, is_match: bool) {
        if let Some(bucket) = self.ring.slot_for(now) {
            bucket.total += 1;
            bucket.matches += u64::from(is_match);
        }
    }

    pub fn snapshot(&self, now: Instant) -> MatchEvidence {
        self.ring
            .live(now)
            .fold(MatchEvidence::default(), |acc, (_, b)| MatchEvidence {
                matches: acc.matches + b.matches,
                total: acc.total + b.total,
            })
    }
}

// === buckets ===

trait Bucket {
    /// Empties the bucket for reuse without giving back its memory.
    fn clear(&mut self);
}

#[derive(Debug)]
struct SideBucket {
    requests: u64,
    failures: u64,
    histogram: Box<[u32; HISTOGRAM_LEN]>,
    /// Latency in microseconds.
    reservoir: Vec<u32>,
}

impl SideBucket {
    fn new() -> SideBucket {
        SideBucket {
            requests: 0,
            failures: 0,
            histogram: Box::new([0; HISTOGRAM_LEN]),
            // Allocated once here so that `record` never allocates.
            reservoir: Vec::with_capacity(RESERVOIR_PER_BUCKET),
        }
    }
}

impl Bucket for SideBucket {
    fn clear(&mut self) {
        self.requests = 0;
        self.failures = 0;
        self.histogram.fill(0);
        self.reservoir.clear();
    }
}

#[derive(Debug, Default)]
struct MatchBucket {
    matches: u64,
    total: u64,
}

impl Bucket for MatchBucket {
    fn clear(&mut self) {
        *self = MatchBucket::default();
    }
}

// === impl Ring ===

/// The time-bucket ring shared by both window kinds. A bucket is tagged
/// with its epoch (bucket number since `start`) so that stale buckets are
/// recognised lazily, without a background task.
#[derive(Debug)]
struct Ring<T> {
    start: Instant,
    bucket_millis: u64,
    slots: Box<[(Option<u64>, T)]>,
}

impl<T: Bucket> Ring<T> {
    fn new(window: Duration, start: Instant, make: impl Fn() -> T) -> Result<Ring<T>, WindowError> {
        let bucket_millis = u64::try_from(window.as_millis()).unwrap_or(u64::MAX) / BUCKETS as u64;
        if bucket_millis == 0 {
            return Err(WindowError::TooShort {
                window,
                min: Duration::from_millis(BUCKETS as u64),
            });
        }
        Ok(Ring {
            start,
            bucket_millis,
            slots: (0..BUCKETS).map(|_| (None, make())).collect(),
        })
    }

    fn epoch(&self, now: Instant) -> u64 {
        let elapsed = u64::try_from(now.saturating_duration_since(self.start).as_millis());
        elapsed.unwrap_or(u64::MAX) / self.bucket_millis
    }

    /// The bucket `now` falls into, emptied first if it still holds
    /// evidence from a window ago. `None` when `now` is so late to arrive
    /// (a request that started long ago) that its bucket was already reused.
    fn slot_for(&mut self, now: Instant) -> Option<&mut T> {
        let epoch = self.epoch(now);
        let (tag, bucket) = &mut self.slots[(epoch % BUCKETS as u64) as usize];
        match *tag {
            Some(t) if t == epoch => {}
            Some(t) if t > epoch => return None,
            _ => {
                bucket.clear();
                *tag = Some(epoch);
            }
        }
        Some(bucket)
    }

    /// Buckets inside the window ending at `now`, with their epochs.
    fn live(&self, now: Instant) -> impl Iterator<Item = (u64, &T)> {
        let current = self.epoch(now);
        self.slots
            .iter()
            .filter_map(move |(tag, bucket)| match *tag {
                Some(t) if t <= current && current - t < BUCKETS as u64 => Some((t, bucket)),
                _ => None,
            })
    }
}

// === latency histogram ===

fn histogram_index(micros: u64) -> usize {
    if micros < 2 * SUB_BUCKETS as u64 {
        return micros as usize; // exact below 16 µs
    }
    let exp = 63 - micros.leading_zeros(); // 4..MAX_MICROS_EXP
    let shift = exp - SUB_BUCKET_BITS;
    let top = (micros >> shift) as usize; // SUB_BUCKETS..2*SUB_BUCKETS
    shift as usize * SUB_BUCKETS + top
}

/// The middle of histogram bucket `index`, in microseconds.
fn histogram_value(index: usize) -> f64 {
    if index < 2 * SUB_BUCKETS {
        return index as f64;
    }
    let shift = index / SUB_BUCKETS - 1;
    let top = index - shift * SUB_BUCKETS;
    let lower = (top as u64) << shift;
    let width = 1u64 << shift;
    lower as f64 + (width - 1) as f64 / 2.0
}

/// The `q` quantile (nearest rank) of a merged histogram holding `total` values.
fn quantile(histogram: &[u64; HISTOGRAM_LEN], total: u64, q: f64) -> Option<Duration> {
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (index, &count) in histogram.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(Duration::from_nanos(
                (histogram_value(index) * 1000.0) as u64,
            ));
        }
    }
    None
}

// === rng ===

/// SplitMix64 (Steele, Lea, Flood 2014): one add and three multiply-xors
/// per number, statistically fine for sampling, and seedable so tests and
/// snapshots are reproducible. Not for anything an attacker may predict.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0), by Lemire's multiply-shift; the
    /// bias is below n / 2^64, far beneath anything a gate could notice.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;

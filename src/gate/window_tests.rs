//! Tests of the sliding windows; the clock is moved by hand, nothing sleeps.

use super::*;

const WINDOW: Duration = Duration::from_secs(60); // buckets of 5 s

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Evidence older than the window drops out, one bucket at a time.
#[test]
fn evidence_expires_after_the_window() {
    let t0 = Instant::now();
    let mut w = SideWindow::new(WINDOW, t0, 1).unwrap();
    for _ in 0..10 {
        w.record(t0, true, ms(10));
    }
    for _ in 0..5 {
        w.record(t0 + Duration::from_secs(30), false, ms(20));
    }

    let mid = w.snapshot(t0 + Duration::from_secs(59));
    assert_eq!((mid.requests, mid.failures), (15, 10));

    // 60 s on, the first bucket (0–5 s) is out; the one at 30 s is not.
    let later = w.snapshot(t0 + Duration::from_secs(60));
    assert_eq!((later.requests, later.failures), (5, 0));
    assert_eq!(later.samples.len(), 5);
    assert!(later.p50.unwrap() >= ms(19) && later.p50.unwrap() <= ms(21));

    let gone = w.snapshot(t0 + Duration::from_secs(91));
    assert_eq!(gone, SideEvidence::default());
}

/// A reused bucket starts empty, and a record that arrives after its bucket
/// was reused is dropped rather than counted in the wrong window.
#[test]
fn reused_bucket_starts_empty_and_late_records_are_dropped() {
    let t0 = Instant::now();
    let mut w = SideWindow::new(WINDOW, t0, 1).unwrap();
    w.record(t0, true, ms(5));
    let t1 = t0 + WINDOW; // same ring slot as t0, one window later
    w.record(t1, false, ms(5));
    w.record(t0, true, ms(5)); // late: its slot now belongs to t1
    let ev = w.snapshot(t1);
    assert_eq!((ev.requests, ev.failures), (1, 0));
}

/// Match windows expire the same way.
#[test]
fn match_window_counts_and_expires() {
    let t0 = Instant::now();
    let mut w = MatchWindow::new(WINDOW, t0).unwrap();
    for i in 0..100 {
        w.record(t0 + ms(i * 100), i % 10 != 0);
    }
    let ev = w.snapshot(t0 + ms(10_000));
    assert_eq!(
        ev,
        MatchEvidence {
            matches: 90,
            total: 100
        }
    );
    assert_eq!(w.snapshot(t0 + ms(75_000)).total, 0);
}

/// p50 and p99 from the histogram are within its 6% resolution.
#[test]
fn histogram_quantiles_are_close() {
    let t0 = Instant::now();
    let mut w = SideWindow::new(WINDOW, t0, 7).unwrap();
    for i in 1..=1000 {
        w.record(t0, false, ms(i));
    }
    let ev = w.snapshot(t0);
    let p50 = ev.p50.unwrap().as_secs_f64();
    let p99 = ev.p99.unwrap().as_secs_f64();
    assert!((p50 / 0.500 - 1.0).abs() < 0.06, "p50 {p50}");
    assert!((p99 / 0.990 - 1.0).abs() < 0.06, "p99 {p99}");
}

/// Histogram buckets are contiguous and each value lies in its own bucket.
#[test]
fn histogram_index_round_trips() {
    let mut last = 0;
    for micros in [
        0, 1, 15, 16, 17, 100, 1_000, 123_456, 10_000_000, MAX_MICROS,
    ] {
        let i = histogram_index(micros);
        assert!(i >= last && i < HISTOGRAM_LEN, "{micros} -> {i}");
        last = i;
        let mid = histogram_value(i);
        assert!(
            (mid - micros as f64).abs() <= micros as f64 / 16.0 + 0.5,
            "{micros} vs {mid}"
        );
    }
    assert_eq!(histogram_index(MAX_MICROS), HISTOGRAM_LEN - 1);
}

/// A busy bucket keeps at most RESERVOIR_PER_BUCKET samples, and latencies
/// beyond the histogram's range are clamped, not lost.
#[test]
fn reservoir_is_bounded() {
    let t0 = Instant::now();
    let mut w = SideWindow::new(WINDOW, t0, 3).unwrap();
    for i in 0..10_000 {
        w.record(t0, false, ms(i % 100));
    }
    w.record(t0, false, Duration::from_secs(3600));
    let ev = w.snapshot(t0);
    assert_eq!(ev.requests, 10_001);
    assert_eq!(ev.samples.len(), RESERVOIR_PER_BUCKET);
}

/// The reservoir is a fair sample: its mean is near the stream's mean even
/// though the stream is sorted (early and late values equally likely kept).
#[test]
fn reservoir_is_uniform() {
    let t0 = Instant::now();
    let mut w = SideWindow::new(WINDOW, t0, 11).unwrap();
    for i in 0..20_000u64 {
        w.record(t0, false, Duration::from_micros(i));
    }
    let ev = w.snapshot(t0);
    let mean = ev.samples.iter().sum::<f64>() / ev.samples.len() as f64;
    // Uniform over 0..20 ms: mean 10 ms, sd of the mean of 256 ≈ 0.36 ms.
    assert!((mean - 0.010).abs() < 0.0015, "mean {mean}");
}

/// Busy and quiet buckets contribute samples in proportion to their traffic.
#[test]
fn pooled_samples_follow_traffic() {
    let t0 = Instant::now();
    let mut w = SideWindow::new(WINDOW, t0, 5).unwrap();
    for _ in 0..2_560 {
        w.record(t0, false, ms(100)); // busy bucket: 10% sampled
    }
    let quiet = t0 + Duration::from_secs(10);
    for _ in 0..100 {
        w.record(quiet, false, ms(1)); // quiet bucket: fully sampled
    }
    let ev = w.snapshot(quiet);
    let fast = ev.samples.iter().filter(|&&s| s < 0.05).count();
    assert_eq!(ev.samples.len(), 256 + 10);
    assert_eq!(fast, 10);
    // Same snapshot, same sample.
    assert_eq!(w.snapshot(quiet).samples, ev.samples);
}

/// A window shorter than one millisecond per bucket is refused.
#[test]
fn too_short_window_is_an_error() {
    let t0 = Instant::now();
    assert!(matches!(
        SideWindow::new(ms(5), t0, 0),
        Err(WindowError::TooShort { .. })
    ));
    assert!(MatchWindow::new(ms(12), t0).is_ok());
}

/// `below` stays in range and covers it.
#[test]
fn rng_below_is_in_range() {
    let mut rng = SplitMix64::new(42);
    let mut seen = [false; 10];
    for _ in 0..1000 {
        let v = rng.below(10) as usize;
        assert!(v < 10);
        seen[v] = true;
    }
    assert!(seen.iter().all(|&s| s));
    assert_eq!(rng.below(0), 0);
}

//! The gate's statistics: normal distribution, two-proportion z-test, Mann-Whitney U, Wilson bounds.
//!
//! Everything here runs once per gate interval on a window snapshot, never
//! per request, so clarity wins over speed. All tests are one-sided because
//! the gate only asks "is the new service worse?": being better is never a
//! reason to roll back.

use std::cmp::Ordering;

/// Why a statistic could not be computed. The gate turns any of these into
/// an inconclusive check rather than a verdict.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("{count} events out of {total} requests is not a proportion")]
    CountExceedsTotal { count: u64, total: u64 },

    #[error("the {side} sample is empty")]
    EmptySample { side: &'static str },

    #[error("`{name}` must be {expected}, got {value}")]
    InvalidParameter {
        name: &'static str,
        expected: &'static str,
        value: f64,
    },
}

/// `count` events (failures, matches) out of `total` trials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proportion {
    count: u64,
    total: u64,
}

/// A two-sided pair of one-sided bounds, each holding at the given confidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub lower: f64,
    pub upper: f64,
}

// === impl Proportion ===

impl Proportion {
    pub fn new(count: u64, total: u64) -> Result<Proportion, StatsError> {
        if count > total {
            return Err(StatsError::CountExceedsTotal { count, total });
        }
        Ok(Proportion { count, total })
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The point estimate; 0 for an empty proportion so that callers can
    /// print it without special cases (tests check `total` first).
    pub fn ratio(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.count as f64 / self.total as f64
        }
    }
}

// === normal distribution ===

/// Complementary error function, Numerical Recipes' `erfcc` (Chebyshev
/// fit, fractional error below 1.2e-7 everywhere). Good enough for
/// p-values compared against 0.05 or 0.01, and it keeps us off a stats crate.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Standard normal CDF, Φ(x).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// P(Z > z), the one-sided p-value of a z statistic. Computed from `erfc`
/// directly rather than `1 - Φ(z)` so that small p-values keep their digits.
pub fn normal_upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Φ⁻¹(p): the z whose CDF is `p`, for turning a confidence into a bound.
///
/// Bisection on `normal_cdf`: it is called once per evaluation, and being
/// the exact inverse of our own CDF keeps bounds and p-values consistent.
pub fn normal_quantile(p: f64) -> Result<f64, StatsError> {
    if !(p > 0.0 && p < 1.0) {
        return Err(StatsError::InvalidParameter {
            name: "probability",
            expected: "strictly between 0 and 1",
            value: p,
        });
    }
    // Φ(±12) is 1 or 0 to double precision, so the root is inside.
    let (mut lo, mut hi) = (-12.0_f64, 12.0_f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(0.5 * (lo + hi))
}

// === tests ===

/// One-sided two-proportion z-test: the p-value of "new's ratio exceeds
/// old's by more than `margin`" (H0: p_new − p_old ≤ margin).
///
/// Uses the Agresti–Caffo adjustment (one extra event and one extra
/// non-event on each side) for both the estimate and its standard error.
/// Without it, a side with zero failures has a standard error of zero and
/// a single unlucky failure on the other side looks infinitely significant;
/// with it, the test behaves well from a few dozen requests on, which is
/// exactly where "a few unlucky requests" must not trigger a rollback.
pub fn increase_p_value(new: Proportion, old: Proportion, margin: f64) -> Result<f64, StatsError> {
    if new.total == 0 {
        return Err(StatsError::EmptySample { side: "new" });
    }
    if old.total == 0 {
        return Err(StatsError::EmptySample { side: "old" });
    }
    if !(margin.is_finite() && (-1.0..1.0).contains(&margin)) {
        return Err(StatsError::InvalidParameter {
            name: "margin",
            expected: "a finite number in [-1, 1)",
            value: margin,
        });
    }
    let adjusted = |p: Proportion| {
        let n = p.total as f64 + 2.0;
        ((p.count as f64 + 1.0) / n, n)
    };
    let (p_new, n_new) = adjusted(new);
    let (p_old, n_old) = adjusted(old);
    // Both adjusted ratios are strictly inside (0, 1), so se > 0.
    let se = (p_new * (1.0 - p_new) / n_new + p_old * (1.0 - p_old) / n_old).sqrt();
    let z = (p_new - p_old - margin) / se;
    Ok(normal_upper_tail(z))
}

/// Wilson score bounds of a proportion, each one-sided at `confidence`
/// (0.95 gives the lower and upper 95% bounds, i.e. a 90% two-sided interval).
///
/// Wilson rather than the normal interval because match rates sit near 1,
/// where the normal interval collapses to a point and overshoots 100%.
pub fn wilson_bounds(p: Proportion, confidence: f64) -> Result<Interval, StatsError> {
    if p.total == 0 {
        return Err(StatsError::EmptySample { side: "shadow" });
    }
    let z = normal_quantile(confidence)?;
    let n = p.total as f64;
    let phat = p.ratio();
    let z2 = z * z;
    let center = phat + z2 / (2.0 * n);
    let spread = z * (phat * (1.0 - phat) / n + z2 / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z2 / n;
    // At 0 or n events one bound is exactly 0 or 1; computed, it would
    // come out a rounding error away, possibly outside [0, 1].
    let lower = if p.count == 0 {
        0.0
    } else {
        ((center - spread) / denom).clamp(0.0, 1.0)
    };
    let upper = if p.count == p.total {
        1.0
    } else {
        ((center + spread) / denom).clamp(0.0, 1.0)
    };
    Ok(Interval { lower, upper })
}

/// One-sided Mann-Whitney U test: the p-value of "new latencies are
/// stochastically larger than old latencies multiplied by `ratio`".
///
/// Scaling the old sample by the allowed ratio turns "slower than allowed"
/// into a plain two-sample question. Normal approximation with the tie
/// correction and a continuity correction of 0.5; the gate only runs it on
/// samples of at least `min_requests`, far past where the approximation is
/// good. O((n+m) log(n+m)) for the sort.
pub fn mann_whitney_slower(new: &[f64], old: &[f64], ratio: f64) -> Result<f64, StatsError> {
    if new.is_empty() {
        return Err(StatsError::EmptySample { side: "new" });
    }
    if old.is_empty() {
        return Err(StatsError::EmptySample { side: "old" });
    }
    if !(ratio.is_finite() && ratio > 0.0) {
        return Err(StatsError::InvalidParameter {
            name: "ratio",
            expected: "a finite number above 0",
            value: ratio,
        });
    }
    let mut pooled: Vec<(f64, bool)> = new
        .iter()
        .map(|&v| (v, true))
        .chain(old.iter().map(|&v| (v * ratio, false)))
        .collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));

    let n = pooled.len();
    let mut rank_sum_new = 0.0;
    let mut tie_term = 0.0; // Σ (t³ − t) over groups of tied values
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && pooled[j + 1].0.total_cmp(&pooled[i].0) == Ordering::Equal {
            j += 1;
        }
        // Ranks are 1-based; a tie group shares the average of its ranks.
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        let new_in_group = pooled[i..=j].iter().filter(|(_, is_new)| *is_new).count();
        rank_sum_new += avg_rank * new_in_group as f64;
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        i = j + 1;
    }

    let (n1, n2, nf) = (new.len() as f64, old.len() as f64, n as f64);
    let u = rank_sum_new - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let variance = n1 * n2 / 12.0 * ((nf + 1.0) - tie_term / (nf * (nf - 1.0)));
    if variance <= 0.0 {
        // Every value tied: nothing says new is slower.
        return Ok(1.0);
    }
    let z = (u - mean - 0.5) / variance.sqrt();
    Ok(normal_upper_tail(z))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values below were computed with Python's math.erfc from the
    // textbook formulas, and the Wilson and Φ values agree with published tables.

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Φ matches table values to 1e-7.
    #[test]
    fn normal_cdf_matches_table_values() {
        assert!(close(normal_cdf(1.96), 0.975_002_1, 1e-7));
        assert!(close(normal_cdf(1.645), 0.950_015_1, 1e-7));
        assert!(close(normal_cdf(-1.0), 0.158_655_3, 1e-7));
        assert!(close(normal_cdf(0.0), 0.5, 1e-7));
        // In the tail the fractional error matters, not the absolute one.
        assert!(close(normal_upper_tail(3.0) / 0.001_349_898, 1.0, 1e-6));
    }

    /// Φ⁻¹ inverts Φ and refuses probabilities outside (0, 1).
    #[test]
    fn normal_quantile_inverts_cdf() {
        let z95 = normal_quantile(0.95).unwrap();
        assert!(close(z95, 1.644_853_6, 1e-6), "{z95}");
        assert!(close(normal_quantile(0.975).unwrap(), 1.959_964, 1e-5));
        assert!(normal_quantile(1.0).is_err());
        assert!(normal_quantile(f64::NAN).is_err());
    }

    /// 30/100 vs 10/100: z = 3.5696, p = 1.788e-4 with no margin, and
    /// z = 1.7491, p = 0.04014 with a 10-point margin (Agresti–Caffo).
    #[test]
    fn increase_test_matches_hand_computed_values() {
        let new = Proportion::new(30, 100).unwrap();
        let old = Proportion::new(10, 100).unwrap();
        let p0 = increase_p_value(new, old, 0.0).unwrap();
        assert!(close(p0, 1.787_64e-4, 1e-8), "{p0}");
        let p10 = increase_p_value(new, old, 0.10).unwrap();
        assert!(close(p10, 0.040_137, 1e-5), "{p10}");
    }

    /// 4 failures in 120 against 1% of 5000 is not significant at 5%
    /// (p = 0.0760): a handful of errors is not proof.
    #[test]
    fn increase_test_is_not_fooled_by_a_handful_of_errors() {
        let new = Proportion::new(4, 120).unwrap();
        let old = Proportion::new(50, 5000).unwrap();
        let p = increase_p_value(new, old, 0.005).unwrap();
        assert!(close(p, 0.076_036, 1e-5), "{p}");
        // A single failure against a perfect monolith is not either.
        let one = Proportion::new(1, 50).unwrap();
        let none = Proportion::new(0, 50).unwrap();
        assert!(increase_p_value(one, none, 0.0).unwrap() > 0.05);
    }

    /// Bad inputs are typed errors, not NaN p-values.
    #[test]
    fn increase_test_rejects_bad_input() {
        assert_eq!(
            Proportion::new(3, 2),
            Err(StatsError::CountExceedsTotal { count: 3, total: 2 })
        );
        let empty = Proportion::new(0, 0).unwrap();
        let some = Proportion::new(1, 10).unwrap();
        assert_eq!(
            increase_p_value(empty, some, 0.0),
            Err(StatsError::EmptySample { side: "new" })
        );
        assert!(increase_p_value(some, some, f64::NAN).is_err());
    }

    /// 90/100 at z = 1.96 gives the textbook Wilson interval (0.8256, 0.9448).
    #[test]
    fn wilson_matches_textbook_interval() {
        let b = wilson_bounds(Proportion::new(90, 100).unwrap(), 0.975).unwrap();
        assert!(close(b.lower, 0.825_633, 1e-5), "{b:?}");
        assert!(close(b.upper, 0.944_771, 1e-5), "{b:?}");
    }

    /// 9990/10000 has a 95% lower bound of 0.99833; 950/1000 an upper bound
    /// of 0.96017; 0/10 stays inside [0, 1].
    #[test]
    fn wilson_bounds_near_the_edges() {
        let high = wilson_bounds(Proportion::new(9990, 10_000).unwrap(), 0.95).unwrap();
        assert!(close(high.lower, 0.998_328, 1e-5), "{high:?}");
        let low = wilson_bounds(Proportion::new(950, 1000).unwrap(), 0.95).unwrap();
        assert!(close(low.upper, 0.960_172, 1e-5), "{low:?}");
        let zero = wilson_bounds(Proportion::new(0, 10).unwrap(), 0.975).unwrap();
        assert_eq!(zero.lower, 0.0);
        let all = wilson_bounds(Proportion::new(10, 10).unwrap(), 0.975).unwrap();
        assert_eq!(all.upper, 1.0);
        assert!(close(all.lower, 1.0 - 0.277_540, 1e-5), "{all:?}");
        assert!(close(zero.upper, 0.277_540, 1e-5), "{zero:?}");
    }

    /// new = [3,4,5] all above old = [1,2]: U = 6, var = 3, p = 0.07446.
    #[test]
    fn mann_whitney_without_ties() {
        let p = mann_whitney_slower(&[3.0, 4.0, 5.0], &[1.0, 2.0], 1.0).unwrap();
        assert!(close(p, 0.074_457, 1e-5), "{p}");
    }

    /// new = [1,2,2,3,3,4], old = [1,1,2,2,3]: U = 21, and the ties bring
    /// the variance from 30 down to 27.545, so p = 0.14733 (0.1562 without
    /// the correction).
    #[test]
    fn mann_whitney_applies_tie_correction() {
        let new = [1.0, 2.0, 2.0, 3.0, 3.0, 4.0];
        let old = [1.0, 1.0, 2.0, 2.0, 3.0];
        let p = mann_whitney_slower(&new, &old, 1.0).unwrap();
        assert!(close(p, 0.147_332, 1e-5), "{p}");
    }

    /// Scaling old by the allowed ratio: new = [2,4,6] is exactly 2× old =
    /// [1,2,3], which is within a ratio of 2 (U = 4.5, p = 0.5903).
    #[test]
    fn mann_whitney_scales_old_by_ratio() {
        let p = mann_whitney_slower(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0], 2.0).unwrap();
        assert!(close(p, 0.590_262, 1e-5), "{p}");
        let unscaled = mann_whitney_slower(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0], 1.0).unwrap();
        assert!(unscaled < p);
    }

    /// All-equal samples carry no evidence; empty ones are errors.
    #[test]
    fn mann_whitney_degenerate_input() {
        assert_eq!(mann_whitney_slower(&[1.0; 4], &[1.0; 4], 1.0), Ok(1.0));
        assert_eq!(
            mann_whitney_slower(&[], &[1.0], 1.0),
            Err(StatsError::EmptySample { side: "new" })
        );
        assert!(mann_whitney_slower(&[1.0], &[1.0], 0.0).is_err());
    }
}

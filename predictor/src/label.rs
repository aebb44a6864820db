//! Labelling reads as fast or slow from their latency distribution.
//!
//! A read is **slow** when its latency is strictly greater than a threshold
//! (`latency_us > threshold_us`); the threshold comes from one of two rules:
//!
//! * [`LabelRule::Inflection`] — the LinnOS "tangent" method: cap the latency
//!   distribution at its 97th percentile, normalise both axes of the empirical
//!   CDF to `[0, 1]` and take the latency `x` that maximises `CDF(x) - x`, i.e.
//!   the point where the CDF's slope falls to 1 (its knee). When the CDF has
//!   no knee at all (e.g. a uniform distribution, where `CDF(x) ≈ x`
//!   everywhere and the argmax is pure noise), the rule falls back to the p97
//!   cap itself, so roughly the slowest 3% are labelled slow.
//! * [`LabelRule::Percentile`] — a fixed percentile `P` (nearest rank), so
//!   roughly `100 - P` percent of reads are labelled slow.

use std::fmt;

use thiserror::Error;

/// The percentile at which the tangent method caps the distribution.
pub const INFLECTION_CAP_PERCENTILE: f64 = 97.0;

/// Below this value of `max(CDF(x) - x)` (normalised units) the CDF is
/// considered to have no knee and [`LabelRule::Inflection`] falls back to the
/// p97 cap.
pub const MIN_KNEE_GAIN: f64 = 0.05;

/// How the slow/fast threshold is derived from observed read latencies.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum LabelRule {
    /// Inflection point of the latency CDF (tangent method, capped at p97).
    #[default]
    Inflection,
    /// A fixed percentile in `(0, 100)`: slow if above the P-th percentile.
    Percentile(f64),
}

impl fmt::Display for LabelRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelRule::Inflection => f.write_str("inflection"),
            LabelRule::Percentile(p) => write!(f, "p{p}"),
        }
    }
}

impl LabelRule {
    /// Parses `inflection`, `pNN`, `percentile:NN` or a bare number `NN`
    /// (a percentile strictly between 0 and 100, fractions allowed).
    pub fn parse(s: &str) -> Result<Self, LabelError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("inflection") || t.eq_ignore_ascii_case("tangent") {
            return Ok(LabelRule::Inflection);
        }
        let num = t
            .strip_prefix("percentile:")
            .or_else(|| t.strip_prefix('p'))
            .or_else(|| t.strip_prefix('P'))
            .unwrap_or(t);
        let p: f64 = num
            .parse()
            .map_err(|_| LabelError::BadRule(s.to_string()))?;
        LabelRule::Percentile(p).validate()?;
        Ok(LabelRule::Percentile(p))
    }

    /// Checks the rule's parameters (a percentile must lie in `(0, 100)`).
    pub fn validate(self) -> Result<Self, LabelError> {
        match self {
            LabelRule::Percentile(p) if !(p > 0.0 && p < 100.0) => {
                Err(LabelError::PercentileOutOfRange(p))
            }
            _ => Ok(self),
        }
    }
}

/// Errors from threshold computation.
#[derive(Debug, Error, PartialEq)]
pub enum LabelError {
    /// No latencies were given.
    #[error("cannot compute a latency threshold from zero reads")]
    NoSamples,
    /// The percentile is not strictly between 0 and 100.
    #[error("percentile {0} is out of range: it must lie strictly between 0 and 100")]
    PercentileOutOfRange(f64),
    /// The rule string could not be parsed.
    #[error("unknown label rule '{0}': expected 'inflection', 'pNN' or 'percentile:NN'")]
    BadRule(String),
}

/// The outcome of applying a [`LabelRule`] to a set of latencies.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Threshold {
    /// Reads with `latency_us > threshold_us` are slow.
    pub threshold_us: u32,
    /// How many latencies the threshold was computed from.
    pub samples: u64,
    /// Fraction of those latencies labelled slow.
    pub slow_fraction: f64,
    /// For the inflection rule: `max(CDF(x) - x)` in normalised units (the
    /// strength of the knee); `None` for percentile rules.
    pub knee_gain: Option<f64>,
    /// True when the inflection rule found no knee and fell back to p97.
    pub fallback: bool,
}

/// True when a read with this latency counts as slow under `threshold_us`.
#[inline]
pub fn is_slow(latency_us: u32, threshold_us: u32) -> bool {
    latency_us > threshold_us
}

/// Nearest-rank percentile of an ascending-sorted, non-empty slice.
fn percentile_sorted(sorted: &[u32], p: f64) -> u32 {
    debug_assert!(!sorted.is_empty());
    let n = sorted.len();
    // Nearest rank: the smallest value with at least p% of samples <= it.
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// The P-th percentile (nearest rank) of `latencies`, `p` in `(0, 100)`.
pub fn percentile_threshold(latencies: &[u32], p: f64) -> Result<u32, LabelError> {
    LabelRule::Percentile(p).validate()?;
    if latencies.is_empty() {
        return Err(LabelError::NoSamples);
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    Ok(percentile_sorted(&sorted, p))
}

/// The tangent-method threshold of an ascending-sorted, non-empty slice.
/// Returns `(threshold, knee_gain, fallback)`.
fn inflection_sorted(sorted: &[u32]) -> (u32, f64, bool) {
    let cap = percentile_sorted(sorted, INFLECTION_CAP_PERCENTILE);
    // The capped sample: everything up to and including the p97 value.
    let capped_len = sorted.partition_point(|&v| v <= cap);
    let capped = &sorted[..capped_len];
    let lo = capped[0];
    if cap == lo {
        // Degenerate: (almost) all latencies equal; nothing in the body is slow.
        return (cap, 0.0, false);
    }
    let span = f64::from(cap - lo);
    let n = capped_len as f64;
    let mut best = (lo, f64::NEG_INFINITY);
    let mut i = 0;
    while i < capped_len {
        let v = capped[i];
        // Right-continuous empirical CDF: count of samples <= v.
        let mut j = i + 1;
        while j < capped_len && capped[j] == v {
            j += 1;
        }
        let y = j as f64 / n;
        let x = f64::from(v - lo) / span;
        let gain = y - x;
        if gain > best.1 {
            best = (v, gain);
        }
        i = j;
    }
    if best.1 < MIN_KNEE_GAIN {
        (cap, best.1, true)
    } else {
        (best.0, best.1, false)
    }
}

/// The inflection-point threshold (tangent method, capped at p97) of
/// `latencies`.
pub fn inflection_threshold(latencies: &[u32]) -> Result<u32, LabelError> {
    if latencies.is_empty() {
        return Err(LabelError::NoSamples);
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    Ok(inflection_sorted(&sorted).0)
}

/// Applies `rule` to `latencies` and reports the threshold and how many
/// reads it labels slow.
pub fn compute_threshold(latencies: &[u32], rule: LabelRule) -> Result<Threshold, LabelError> {
    rule.validate()?;
    if latencies.is_empty() {
        return Err(LabelError::NoSamples);
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let (threshold_us, knee_gain, fallback) = match rule {
        LabelRule::Inflection => {
            let (t, g, f) = inflection_sorted(&sorted);
            (t, Some(g), f)
        }
        LabelRule::Percentile(p) => (percentile_sorted(&sorted, p), None, false),
    };
    let fast = sorted.partition_point(|&v| v <= threshold_us);
    let n = sorted.len();
    Ok(Threshold {
        threshold_us,
        samples: n as u64,
        slow_fraction: (n - fast) as f64 / n as f64,
        knee_gain,
        fallback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small deterministic generator for test distributions (SplitMix64).
    fn rng(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed;
        move || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn parse_rules() {
        assert_eq!(LabelRule::parse("inflection"), Ok(LabelRule::Inflection));
        assert_eq!(LabelRule::parse("p95"), Ok(LabelRule::Percentile(95.0)));
        assert_eq!(
            LabelRule::parse("percentile:99.5"),
            Ok(LabelRule::Percentile(99.5))
        );
        assert_eq!(LabelRule::parse("90"), Ok(LabelRule::Percentile(90.0)));
        assert_eq!(
            LabelRule::parse("p100"),
            Err(LabelError::PercentileOutOfRange(100.0))
        );
        assert!(matches!(
            LabelRule::parse("median"),
            Err(LabelError::BadRule(_))
        ));
        assert_eq!(LabelRule::Percentile(95.0).to_string(), "p95");
        assert_eq!(LabelRule::Inflection.to_string(), "inflection");
    }

    #[test]
    fn empty_input_is_an_error() {
        assert_eq!(inflection_threshold(&[]), Err(LabelError::NoSamples));
        assert_eq!(percentile_threshold(&[], 90.0), Err(LabelError::NoSamples));
    }

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile_threshold(&v, 90.0), Ok(90));
        assert_eq!(percentile_threshold(&v, 99.0), Ok(99));
        assert_eq!(percentile_threshold(&v, 0.5), Ok(1));
        let t = compute_threshold(&v, LabelRule::Percentile(90.0)).expect("threshold");
        assert_eq!(t.threshold_us, 90);
        assert!((t.slow_fraction - 0.10).abs() < 1e-12);
    }

    #[test]
    fn bimodal_threshold_lands_between_modes() {
        // 92% fast reads around 100 µs (80..120), 8% slow around 2000 µs.
        let mut r = rng(7);
        let mut v = Vec::new();
        for _ in 0..9200 {
            v.push(80 + (r() * 40.0) as u32);
        }
        for _ in 0..800 {
            v.push(1500 + (r() * 1000.0) as u32);
        }
        let t = compute_threshold(&v, LabelRule::Inflection).expect("threshold");
        assert!(!t.fallback);
        assert!(
            t.threshold_us >= 115 && t.threshold_us < 1500,
            "threshold {} not between the modes",
            t.threshold_us
        );
        assert!((t.slow_fraction - 0.08).abs() < 0.005, "{t:?}");
        assert!(t.knee_gain.is_some_and(|g| g > 0.8));
    }

    #[test]
    fn long_tail_knee_is_at_the_tail_start() {
        // A tight body plus a long tail with a small slope: the knee is where
        // the body ends.
        let mut v: Vec<u32> = (0..9000).map(|i| 100 + i % 50).collect();
        v.extend((0..1000).map(|i| 150 + i * 10));
        let t = inflection_threshold(&v).expect("threshold");
        assert!((149..=250).contains(&t), "threshold {t}");
    }

    #[test]
    fn exponential_knee_matches_the_closed_form() {
        // For Exp(λ) capped at p97 the tangent point is where
        // e^{-λx} = 0.97 / ln(1/0.03), i.e. the ~72nd percentile.
        let mut r = rng(11);
        let v: Vec<u32> = (0..200_000)
            .map(|_| (-(1.0 - r()).ln() * 1000.0) as u32)
            .collect();
        let t = compute_threshold(&v, LabelRule::Inflection).expect("threshold");
        let expect = -(0.97 / (1.0f64 / 0.03).ln()).ln() * 1000.0;
        assert!(
            (f64::from(t.threshold_us) - expect).abs() < 100.0,
            "threshold {} expected ~{expect}",
            t.threshold_us
        );
        assert!(!t.fallback);
    }

    #[test]
    fn uniform_has_no_knee_and_falls_back_to_p97() {
        let v: Vec<u32> = (0..10_000).map(|i| 100 + i / 10).collect();
        let t = compute_threshold(&v, LabelRule::Inflection).expect("threshold");
        assert!(t.fallback, "{t:?}");
        assert_eq!(t.threshold_us, percentile_threshold(&v, 97.0).expect("p97"));
        assert!(t.slow_fraction > 0.02 && t.slow_fraction < 0.04, "{t:?}");
    }

    #[test]
    fn constant_latencies_label_nothing_slow() {
        let v = vec![250u32; 1000];
        let t = compute_threshold(&v, LabelRule::Inflection).expect("threshold");
        assert_eq!(t.threshold_us, 250);
        assert_eq!(t.slow_fraction, 0.0);
        assert!(!is_slow(250, t.threshold_us));
        assert!(is_slow(251, t.threshold_us));
    }
}

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
//! * [`LabelRule::MedianMultiple`] — `K` times the median latency: slow
//!   means "K times what this device usually takes", whatever share of the
//!   reads that is. A percentile assumes the share: on a device that stalls
//!   more often than `100 - P` percent of the time it lands inside the
//!   stalls and labels most of them fast.
//! * [`LabelRule::LowerOf`] — the lower of a percentile and a median
//!   multiple, `min(p98,4x-median)` (`augur train`'s default): at least the
//!   slowest 2% are slow, and more when the device stalls more often than
//!   that.
//!
//! On top of either rule, [`PeriodRule`] gives *period labels* (after
//! Heimdall's period-based labelling): a read is also slow when it was issued
//! inside a slow period of its replica, i.e. when at least
//! [`PeriodRule::min_slow_fraction`] of that replica's reads issued within
//! ±[`PeriodRule::window_us`] of it were slow. A device in garbage
//! collection answers some reads fast (those between erases, or on idle
//! channels) and some very slowly; per-read labels teach a model to bet on
//! the fast ones from momentary signals, which stop meaning anything once the
//! router sends reads elsewhere. Period labels teach it to avoid the whole
//! degraded period instead, while isolated slow reads (jitter) stay isolated.

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
    /// A multiple `K > 1` of the median: slow if above `K x p50`.
    MedianMultiple(f64),
    /// The lower of the P-th percentile and `K x p50`: `(P, K)`.
    LowerOf(f64, f64),
}

impl fmt::Display for LabelRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelRule::Inflection => f.write_str("inflection"),
            LabelRule::Percentile(p) => write!(f, "p{p}"),
            LabelRule::MedianMultiple(k) => write!(f, "{k}x-median"),
            LabelRule::LowerOf(p, k) => write!(f, "min(p{p},{k}x-median)"),
        }
    }
}

impl LabelRule {
    /// Parses `inflection`, `Kx-median` (a multiple above 1, e.g.
    /// `4x-median`), `pNN`, `percentile:NN`, a bare number `NN` (a
    /// percentile strictly between 0 and 100, fractions allowed), or
    /// `min(pNN,Kx-median)`.
    pub fn parse(s: &str) -> Result<Self, LabelError> {
        let t = s.trim();
        if let Some(inner) = t.strip_prefix("min(").and_then(|r| r.strip_suffix(')')) {
            let bad = || LabelError::BadRule(s.to_string());
            let (a, b) = inner.split_once(',').ok_or_else(bad)?;
            return match (Self::parse(a)?, Self::parse(b)?) {
                (LabelRule::Percentile(p), LabelRule::MedianMultiple(k))
                | (LabelRule::MedianMultiple(k), LabelRule::Percentile(p)) => {
                    Ok(LabelRule::LowerOf(p, k))
                }
                _ => Err(bad()),
            };
        }
        if t.eq_ignore_ascii_case("inflection") || t.eq_ignore_ascii_case("tangent") {
            return Ok(LabelRule::Inflection);
        }
        if let Some(k) = t.strip_suffix("x-median") {
            let k: f64 = k.parse().map_err(|_| LabelError::BadRule(s.to_string()))?;
            return LabelRule::MedianMultiple(k).validate();
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
            LabelRule::MedianMultiple(k) if !(k > 1.0 && k <= 1000.0) => {
                Err(LabelError::MultipleOutOfRange(k))
            }
            LabelRule::LowerOf(p, k) => {
                LabelRule::Percentile(p).validate()?;
                LabelRule::MedianMultiple(k).validate()?;
                Ok(self)
            }
            _ => Ok(self),
        }
    }
}

/// Period labelling: see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PeriodRule {
    /// Half-width of the window around each read, µs.
    pub window_us: u32,
    /// Fraction of slow reads in the window that makes it a slow period, in `(0, 1]`.
    pub min_slow_fraction: f64,
}

impl fmt::Display for PeriodRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "period ±{} µs >= {}% slow",
            self.window_us,
            self.min_slow_fraction * 100.0
        )
    }
}

impl PeriodRule {
    /// Checks the parameters: a non-zero window and a fraction in `(0, 1]`.
    pub fn validate(self) -> Result<Self, LabelError> {
        if self.window_us == 0 {
            return Err(LabelError::BadPeriod(
                "the window must be at least 1 µs".into(),
            ));
        }
        if !(self.min_slow_fraction > 0.0 && self.min_slow_fraction <= 1.0) {
            return Err(LabelError::BadPeriod(format!(
                "the slow fraction must lie in (0, 1], got {}",
                self.min_slow_fraction
            )));
        }
        Ok(self)
    }

    /// Period labels for reads given as `(replica, issue time ns, slow)`, in
    /// any order; the result is in the same order. A read keeps its own slow
    /// label and is also slow when at least `min_slow_fraction` of its
    /// replica's reads issued within `±window_us` of it (itself included)
    /// are slow. O(n log n), two pointers per replica over the sorted times.
    pub fn apply(&self, reads: &[(u16, u64, bool)]) -> Vec<bool> {
        let w = u64::from(self.window_us) * 1000;
        let mut order: Vec<usize> = (0..reads.len()).collect();
        order.sort_unstable_by_key(|&i| (reads[i].0, reads[i].1));
        let mut out: Vec<bool> = reads.iter().map(|r| r.2).collect();
        let mut start = 0;
        while start < order.len() {
            let rep = reads[order[start]].0;
            let end = start + order[start..].partition_point(|&i| reads[i].0 == rep);
            let group = &order[start..end];
            // Window [lo, hi) of `group` around each read, and its slow count.
            let (mut lo, mut hi, mut slow) = (0usize, 0usize, 0usize);
            for &i in group {
                let t = reads[i].1;
                while hi < group.len() && reads[group[hi]].1 <= t.saturating_add(w) {
                    slow += usize::from(reads[group[hi]].2);
                    hi += 1;
                }
                while reads[group[lo]].1 < t.saturating_sub(w) {
                    slow -= usize::from(reads[group[lo]].2);
                    lo += 1;
                }
                let n = hi - lo;
                if slow as f64 >= self.min_slow_fraction * n as f64 {
                    out[i] = true;
                }
            }
            start = end;
        }
        out
    }
}

/// Gap left between two logs by [`join_logs`]: longer than any period
/// window can reach (twice the largest `window_us`, in ns).
pub const LOG_GAP_NS: u64 = 2 * u32::MAX as u64 * 1000;

/// Joins training logs into one record list for [`PeriodRule`] labels:
/// each log's issue times are moved to start [`LOG_GAP_NS`] after the
/// previous log's last one. Every log counts its time from its own start
/// and numbers its own replicas from 0, so concatenated as they are,
/// replica 0 of one device and replica 0 of another would share one
/// timeline, and a slow period of the one would label the other's reads.
pub fn join_logs<I>(logs: I) -> Vec<augur_feature_store::TrainingRecord>
where
    I: IntoIterator<Item = Vec<augur_feature_store::TrainingRecord>>,
{
    let mut all = Vec::new();
    let mut start = 0u64;
    for log in logs {
        let first = log.iter().map(|r| r.time_ns).min().unwrap_or(0);
        let mut end = start;
        for mut r in log {
            r.time_ns = r.time_ns - first + start;
            end = end.max(r.time_ns);
            all.push(r);
        }
        start = end.saturating_add(LOG_GAP_NS);
    }
    all
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
    /// The median multiple is not above 1 (or absurdly large).
    #[error("median multiple {0} is out of range: it must be above 1 and at most 1000")]
    MultipleOutOfRange(f64),
    /// The period rule's parameters are out of range.
    #[error("bad period label rule: {0}")]
    BadPeriod(String),
    /// The rule string could not be parsed.
    #[error(
        "unknown label rule '{0}': expected 'inflection', 'Kx-median', 'pNN', 'percentile:NN' or 'min(pNN,Kx-median)'"
    )]
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

/// `k` times the median (nearest rank) of a sorted, non-empty slice.
fn median_multiple_sorted(sorted: &[u32], k: f64) -> u32 {
    let median = f64::from(percentile_sorted(sorted, 50.0));
    (median * k).round().min(f64::from(u32::MAX)) as u32
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
        LabelRule::MedianMultiple(k) => (median_multiple_sorted(&sorted, k), None, false),
        LabelRule::LowerOf(p, k) => (
            percentile_sorted(&sorted, p).min(median_multiple_sorted(&sorted, k)),
            None,
            false,
        ),
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

    /// Uniform draws in `[0, 1)` for test distributions.
    fn rng(seed: u64) -> impl FnMut() -> f64 {
        let mut r = augur_rng::Rng::new(seed);
        move || r.next_f64()
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
        assert_eq!(
            LabelRule::parse("4x-median"),
            Ok(LabelRule::MedianMultiple(4.0))
        );
        assert_eq!(LabelRule::MedianMultiple(2.5).to_string(), "2.5x-median");
        assert_eq!(
            LabelRule::parse("1x-median"),
            Err(LabelError::MultipleOutOfRange(1.0))
        );
        assert!(matches!(
            LabelRule::parse("fourx-median"),
            Err(LabelError::BadRule(_))
        ));
        let t = compute_threshold(
            &[100, 100, 120, 150, 900, 2000],
            LabelRule::MedianMultiple(4.0),
        )
        .unwrap();
        // Nearest-rank median of six is the third value, 120.
        assert_eq!((t.threshold_us, t.slow_fraction), (480, 2.0 / 6.0));
        for text in ["min(p98,4x-median)", "min(4x-median, p98)"] {
            assert_eq!(LabelRule::parse(text), Ok(LabelRule::LowerOf(98.0, 4.0)));
        }
        assert_eq!(
            LabelRule::LowerOf(98.0, 4.0).to_string(),
            "min(p98,4x-median)"
        );
        for bad in ["min(p98)", "min(p98,p99)", "min(p98,4x-median"] {
            assert!(LabelRule::parse(bad).is_err(), "{bad}");
        }
        // The lower of the two: 4 x median (480) below p99 (2000), p60 (150) below 480.
        let lat = [100, 100, 120, 150, 900, 2000];
        let t = compute_threshold(&lat, LabelRule::LowerOf(99.0, 4.0)).unwrap();
        assert_eq!(t.threshold_us, 480);
        let t = compute_threshold(&lat, LabelRule::LowerOf(60.0, 4.0)).unwrap();
        assert_eq!(t.threshold_us, 150);
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

    #[test]
    fn period_labels_spread_dense_slow_reads_and_keep_isolated_ones_isolated() {
        let rule = PeriodRule {
            window_us: 1000,
            min_slow_fraction: 0.25,
        };
        // Replica 0: reads every 100 µs for 10 ms; those at 4.0..=4.3 ms are
        // slow (4 in the ±1 ms window of 21 reads around 4.1 ms = 19%...).
        let mut reads: Vec<(u16, u64, bool)> = Vec::new();
        for k in 0..100u64 {
            let t = k * 100_000;
            reads.push((0, t, (40..44).contains(&k)));
        }
        let none = rule.apply(&reads);
        // 4 slow of 21 is below 25%: only the slow reads themselves.
        assert_eq!(none, reads.iter().map(|r| r.2).collect::<Vec<_>>());
        // Make 40..50 slow: 10 of 21 around 4.5 ms is a slow period.
        for r in &mut reads[40..50] {
            r.2 = true;
        }
        let got = rule.apply(&reads);
        let slow: Vec<usize> = (0..100).filter(|&k| got[k]).collect();
        // Read k's window holds reads k-10..=k+10; it is slow when at least
        // 25% of them (6 of 21, or of fewer at the edges) are slow.
        let want: Vec<usize> = (0..100)
            .filter(|&k: &usize| {
                let (lo, hi) = (k.saturating_sub(10), (k + 10).min(99));
                let n = hi - lo + 1;
                let s = (lo..=hi).filter(|j| (40..50).contains(j)).count();
                s as f64 >= 0.25 * n as f64
            })
            .collect();
        assert_eq!(slow, want);
        assert!(slow.contains(&35) && slow.contains(&54) && !slow.contains(&20));
        // Another replica's reads at the same times are not affected, and the
        // input order does not matter.
        let mut mixed: Vec<(u16, u64, bool)> = reads.clone();
        mixed.extend(reads.iter().map(|&(_, t, _)| (1, t, false)));
        mixed.reverse();
        let got2 = rule.apply(&mixed);
        for (k, r) in mixed.iter().enumerate() {
            if r.0 == 1 {
                assert!(!got2[k]);
            } else {
                assert_eq!(got2[k], got[(r.1 / 100_000) as usize]);
            }
        }
    }

    #[test]
    fn joined_logs_keep_each_devices_periods_apart() {
        use augur_feature_store::{Op, TrainingRecord};
        let rule = PeriodRule {
            window_us: 4000,
            min_slow_fraction: 0.1,
        };
        // Two logs, each of replica 0 from its own t = 0: the first slow for
        // its first 5 ms, the second fast throughout.
        let log = |slow: bool| -> Vec<TrainingRecord> {
            (0..100u64)
                .map(|k| TrainingRecord {
                    time_ns: 1_000 + k * 100_000,
                    replica: 0,
                    op: Op::Read,
                    latency_us: if slow && k < 50 { 5_000 } else { 100 },
                    ..TrainingRecord::default()
                })
                .collect()
        };
        let label = |recs: &[TrainingRecord]| -> Vec<bool> {
            let keyed: Vec<(u16, u64, bool)> = recs
                .iter()
                .map(|r| (r.replica, r.time_ns, is_slow(r.latency_us, 1000)))
                .collect();
            rule.apply(&keyed)
        };
        let fast_alone = label(&log(false)).iter().filter(|&&y| y).count();
        assert_eq!(fast_alone, 0);
        // Concatenated as they are, the first log's slow period spills over.
        let mut naive = log(true);
        naive.extend(log(false));
        assert!(label(&naive)[100..].iter().any(|&y| y));
        // Joined, the second log's reads stay fast, and each log keeps its
        // order and spacing.
        let joined = join_logs([log(true), log(false)]);
        let got = label(&joined);
        assert_eq!(got[..100], label(&log(true))[..]);
        assert!(got[100..].iter().all(|&y| !y));
        assert_eq!(joined[0].time_ns, 0);
        assert_eq!(joined[1].time_ns, 100_000);
        assert_eq!(joined[100].time_ns, joined[99].time_ns + LOG_GAP_NS);
        assert!(join_logs(Vec::<Vec<TrainingRecord>>::new()).is_empty());
    }

    #[test]
    fn period_rule_rejects_bad_parameters() {
        let ok = PeriodRule {
            window_us: 4000,
            min_slow_fraction: 0.1,
        };
        assert!(ok.validate().is_ok());
        assert_eq!(ok.to_string(), "period ±4000 µs >= 10% slow");
        for (w, f) in [(0, 0.1), (10, 0.0), (10, 1.5), (10, f64::NAN)] {
            let e = PeriodRule {
                window_us: w,
                min_slow_fraction: f,
            }
            .validate()
            .unwrap_err();
            assert!(e.to_string().starts_with("bad period label rule"), "{e}");
        }
        assert!(ok.apply(&[]).is_empty());
    }
}

//! Evaluating a model against recorded reads: accuracy, false-submit and
//! false-revoke rates, ROC AUC and the confusion matrix, for both the f32
//! reference path and the integer fast path.
//!
//! Terms (LinnOS): the positive class is **slow** (`latency_us >
//! threshold_us`). A *false submit* is a slow read predicted fast (it would
//! have been submitted to a slow replica); a *false revoke* is a fast read
//! predicted slow (it would have been needlessly rerouted). A model predicts
//! slow when its score is `> 0`.

use std::cmp::Ordering;
use std::fmt::Write as _;

use augur_feature_store::{Op, TrainingRecord};
use serde::Serialize;

use crate::features::ReadInfo;
use crate::label::is_slow;
use crate::model::Model;

/// Confusion matrix with the slow class as positive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// Slow reads predicted slow (true positives).
    pub true_slow: u64,
    /// Slow reads predicted fast (false negatives: false submits).
    pub false_submit: u64,
    /// Fast reads predicted slow (false positives: false revokes).
    pub false_revoke: u64,
    /// Fast reads predicted fast (true negatives).
    pub true_fast: u64,
}

impl Confusion {
    /// Adds one prediction.
    #[inline]
    pub fn add(&mut self, truly_slow: bool, predicted_slow: bool) {
        match (truly_slow, predicted_slow) {
            (true, true) => self.true_slow += 1,
            (true, false) => self.false_submit += 1,
            (false, true) => self.false_revoke += 1,
            (false, false) => self.true_fast += 1,
        }
    }

    /// Total predictions counted.
    pub fn total(&self) -> u64 {
        self.true_slow + self.false_submit + self.false_revoke + self.true_fast
    }

    /// Fraction of correct predictions; `None` when empty.
    pub fn accuracy(&self) -> Option<f64> {
        ratio(self.true_slow + self.true_fast, self.total())
    }

    /// Of truly slow reads, the fraction predicted fast; `None` without slow reads.
    pub fn false_submit_rate(&self) -> Option<f64> {
        ratio(self.false_submit, self.true_slow + self.false_submit)
    }

    /// Of truly fast reads, the fraction predicted slow; `None` without fast reads.
    pub fn false_revoke_rate(&self) -> Option<f64> {
        ratio(self.false_revoke, self.false_revoke + self.true_fast)
    }

    /// Precision of the slow class; `None` when nothing was predicted slow.
    pub fn slow_precision(&self) -> Option<f64> {
        ratio(self.true_slow, self.true_slow + self.false_revoke)
    }

    /// Recall of the slow class (`1 - false_submit_rate`).
    pub fn slow_recall(&self) -> Option<f64> {
        ratio(self.true_slow, self.true_slow + self.false_submit)
    }

    /// Recall of the fast class (`1 - false_revoke_rate`).
    pub fn fast_recall(&self) -> Option<f64> {
        ratio(self.true_fast, self.true_fast + self.false_revoke)
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Metrics of one inference path. Rates are `None` (JSON `null`) where their
/// denominator is zero, e.g. `auc` when only one class is present.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PathMetrics {
    /// Fraction of reads classified correctly.
    pub accuracy: Option<f64>,
    /// Of truly slow reads, the fraction predicted fast.
    pub false_submit_rate: Option<f64>,
    /// Of truly fast reads, the fraction predicted slow.
    pub false_revoke_rate: Option<f64>,
    /// ROC AUC of the score against the slow label (ties count one half).
    pub auc: Option<f64>,
    /// The confusion matrix behind the rates.
    pub confusion: Confusion,
}

impl PathMetrics {
    /// Metrics from the scores (`> 0` = predicted slow) and the true labels.
    pub fn from_scores<T: Copy>(
        scores: &[T],
        truly_slow: &[bool],
        predicted_slow: impl Fn(T) -> bool,
        cmp: impl Fn(&T, &T) -> Ordering,
    ) -> Self {
        let mut confusion = Confusion::default();
        for (&s, &y) in scores.iter().zip(truly_slow) {
            confusion.add(y, predicted_slow(s));
        }
        PathMetrics {
            accuracy: confusion.accuracy(),
            false_submit_rate: confusion.false_submit_rate(),
            false_revoke_rate: confusion.false_revoke_rate(),
            auc: roc_auc_by(scores, truly_slow, cmp),
            confusion,
        }
    }
}

/// Evaluation of a model on a set of reads, for the f32 and integer paths.
///
/// JSON shape: `{"reads": .., "slow_reads": .., "threshold_us": ..,
/// "f32": {"accuracy", "false_submit_rate", "false_revoke_rate", "auc",
/// "confusion": {..}}, "int": {..}}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    /// Reads evaluated (other operations in the input are ignored).
    pub reads: u64,
    /// Of those, reads whose latency exceeded the threshold.
    pub slow_reads: u64,
    /// The slow/fast threshold used for the true labels.
    pub threshold_us: u32,
    /// The f32 reference path.
    #[serde(rename = "f32")]
    pub float: PathMetrics,
    /// The integer fast path.
    pub int: PathMetrics,
}

/// Evaluates `model` on the reads in `records` (other ops are skipped),
/// labelling a read slow when `latency_us > threshold_us`.
pub fn evaluate(model: &Model, records: &[TrainingRecord], threshold_us: u32) -> EvalReport {
    let truth: Vec<bool> = records
        .iter()
        .filter(|r| r.op == Op::Read)
        .map(|r| is_slow(r.latency_us, threshold_us))
        .collect();
    evaluate_labelled(model, records, &truth, threshold_us)
}

/// Evaluates `model` on the reads in `records` (other ops are skipped)
/// against labels of one's own (`truth[k]` for the k-th read, e.g. period
/// labels); `threshold_us` is only reported.
///
/// # Panics
/// If `truth` does not have one label per read.
pub fn evaluate_labelled(
    model: &Model,
    records: &[TrainingRecord],
    truth: &[bool],
    threshold_us: u32,
) -> EvalReport {
    let reads: Vec<&TrainingRecord> = records.iter().filter(|r| r.op == Op::Read).collect();
    assert_eq!(truth.len(), reads.len(), "one label per read");
    let mut f32_scores = Vec::with_capacity(reads.len());
    let mut int_scores = Vec::with_capacity(reads.len());
    for r in &reads {
        let info = ReadInfo {
            size_bytes: r.size_bytes,
        };
        f32_scores.push(model.score_f32(&r.features, info));
        int_scores.push(model.score_int(&r.features, info));
    }
    EvalReport {
        reads: reads.len() as u64,
        slow_reads: truth.iter().filter(|&&s| s).count() as u64,
        threshold_us,
        float: PathMetrics::from_scores(&f32_scores, truth, |s| s > 0.0, f32::total_cmp),
        int: PathMetrics::from_scores(&int_scores, truth, |s| s > 0, i64::cmp),
    }
}

impl EvalReport {
    /// Accuracy lost by quantization, in percentage points (f32 - int);
    /// `None` when there were no reads.
    pub fn quantization_loss_points(&self) -> Option<f64> {
        Some((self.float.accuracy? - self.int.accuracy?) * 100.0)
    }

    /// A human-readable table of both paths and their confusion matrices.
    pub fn render_text(&self) -> String {
        fn pct(v: Option<f64>) -> String {
            v.map_or_else(|| "n/a".to_string(), |v| format!("{:.2}%", v * 100.0))
        }
        fn num(v: Option<f64>) -> String {
            v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"))
        }
        let mut s = String::new();
        let slow_pct = ratio(self.slow_reads, self.reads).map_or(0.0, |v| v * 100.0);
        let _ = writeln!(
            s,
            "reads: {} ({} slow = {:.2}%), slow if latency > {} µs",
            self.reads, self.slow_reads, slow_pct, self.threshold_us
        );
        let _ = writeln!(
            s,
            "{:<5} {:>9} {:>13} {:>13} {:>7} {:>11} {:>11}",
            "path", "accuracy", "false-submit", "false-revoke", "AUC", "slow-prec", "slow-recall"
        );
        for (name, m) in [("f32", &self.float), ("int", &self.int)] {
            let _ = writeln!(
                s,
                "{:<5} {:>9} {:>13} {:>13} {:>7} {:>11} {:>11}",
                name,
                pct(m.accuracy),
                pct(m.false_submit_rate),
                pct(m.false_revoke_rate),
                num(m.auc),
                pct(m.confusion.slow_precision()),
                pct(m.confusion.slow_recall()),
            );
        }
        if let Some(d) = self.quantization_loss_points() {
            let _ = writeln!(s, "quantization cost: {d:+.3} accuracy points (f32 - int)");
        }
        for (name, m) in [("f32", &self.float), ("int", &self.int)] {
            let c = &m.confusion;
            let w = [c.true_slow, c.false_submit, c.false_revoke, c.true_fast]
                .iter()
                .map(|v| v.to_string().len())
                .max()
                .unwrap_or(1)
                .max(14);
            let _ = writeln!(s, "confusion ({name}): rows = truth, columns = prediction");
            let _ = writeln!(
                s,
                "  {:<10} {:>w$} {:>w$}",
                "", "predicted slow", "predicted fast"
            );
            let _ = writeln!(
                s,
                "  {:<10} {:>w$} {:>w$}",
                "slow", c.true_slow, c.false_submit
            );
            let _ = writeln!(
                s,
                "  {:<10} {:>w$} {:>w$}",
                "fast", c.false_revoke, c.true_fast
            );
        }
        s
    }
}

/// ROC AUC of f32 scores (higher = more likely slow) against labels.
/// See [`roc_auc_by`].
pub fn roc_auc_f32(scores: &[f32], truly_slow: &[bool]) -> Option<f64> {
    roc_auc_by(scores, truly_slow, f32::total_cmp)
}

/// ROC AUC of integer scores against labels. See [`roc_auc_by`].
pub fn roc_auc_i64(scores: &[i64], truly_slow: &[bool]) -> Option<f64> {
    roc_auc_by(scores, truly_slow, i64::cmp)
}

/// Rank-based ROC AUC (Mann–Whitney U): the probability that a random slow
/// read scores higher than a random fast one, with ties counting one half
/// (tied scores get their average rank). `None` when either class is empty.
/// Only the first `min(scores.len(), truly_slow.len())` pairs are used.
pub fn roc_auc_by<T: Copy>(
    scores: &[T],
    truly_slow: &[bool],
    cmp: impl Fn(&T, &T) -> Ordering,
) -> Option<f64> {
    let n = scores.len().min(truly_slow.len());
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| cmp(&scores[a], &scores[b]));
    let positives = truly_slow[..n].iter().filter(|&&y| y).count() as u64;
    let negatives = n as u64 - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Sum of (1-based, tie-averaged) ranks of the positives, doubled to stay
    // in integers: a tie group occupying ranks i+1..=j has average rank
    // (i+1+j)/2.
    let mut rank_sum_x2: u128 = 0;
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && cmp(&scores[idx[j]], &scores[idx[i]]) == Ordering::Equal {
            j += 1;
        }
        let pos_in_group = idx[i..j].iter().filter(|&&k| truly_slow[k]).count() as u128;
        rank_sum_x2 += pos_in_group * (i as u128 + 1 + j as u128);
        i = j;
    }
    let p = u128::from(positives);
    // U = R - P(P+1)/2, AUC = U / (P N); everything doubled.
    let u_x2 = rank_sum_x2 - p * (p + 1);
    Some(u_x2 as f64 / (2.0 * positives as f64 * negatives as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_perfect_inverse_and_random() {
        let y = [false, false, true, true];
        assert_eq!(roc_auc_f32(&[0.1, 0.2, 0.8, 0.9], &y), Some(1.0));
        assert_eq!(roc_auc_f32(&[0.9, 0.8, 0.2, 0.1], &y), Some(0.0));
        // All tied: every pair counts one half.
        assert_eq!(roc_auc_i64(&[5, 5, 5, 5], &y), Some(0.5));
    }

    #[test]
    fn auc_hand_computed_with_ties() {
        // Positives: 0.8, 0.4, 0.4; negatives: 0.9, 0.4, 0.1, 0.2.
        // Pairs (pos > neg = 1, tie = 0.5):
        //   0.8 vs {0.9:0, 0.4:1, 0.1:1, 0.2:1} = 3
        //   0.4 vs {0.9:0, 0.4:0.5, 0.1:1, 0.2:1} = 2.5   (twice)
        // AUC = (3 + 2.5 + 2.5) / 12 = 8/12.
        let s = [0.8f32, 0.9, 0.4, 0.4, 0.1, 0.4, 0.2];
        let y = [true, false, true, false, false, true, false];
        let auc = roc_auc_f32(&s, &y).expect("both classes present");
        assert!((auc - 8.0 / 12.0).abs() < 1e-12, "{auc}");
        let si: Vec<i64> = s.iter().map(|v| (v * 10.0) as i64).collect();
        assert_eq!(roc_auc_i64(&si, &y), Some(auc));
    }

    #[test]
    fn auc_hand_computed_no_ties() {
        // Scores 1..=6 with labels n p n p p n: positives at ranks 2, 4, 5.
        // U = (2 + 4 + 5) - 3*4/2 = 5; AUC = 5 / 9.
        let y = [false, true, false, true, true, false];
        let s = [1i64, 2, 3, 4, 5, 6];
        let auc = roc_auc_i64(&s, &y).expect("both classes");
        assert!((auc - 5.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn auc_undefined_for_one_class() {
        assert_eq!(roc_auc_f32(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(roc_auc_f32(&[], &[]), None);
    }

    #[test]
    fn confusion_rates() {
        let mut c = Confusion::default();
        for _ in 0..8 {
            c.add(true, true);
        }
        for _ in 0..2 {
            c.add(true, false);
        }
        for _ in 0..9 {
            c.add(false, true);
        }
        for _ in 0..81 {
            c.add(false, false);
        }
        assert_eq!(c.total(), 100);
        assert_eq!(c.accuracy(), Some(0.89));
        assert_eq!(c.false_submit_rate(), Some(0.2));
        assert_eq!(c.false_revoke_rate(), Some(0.1));
        assert_eq!(Confusion::default().accuracy(), None);
    }

    #[test]
    fn json_field_names() {
        let m = PathMetrics::from_scores(
            &[1i64, -1, 3, -2],
            &[true, false, false, true],
            |s| s > 0,
            i64::cmp,
        );
        let r = EvalReport {
            reads: 4,
            slow_reads: 2,
            threshold_us: 100,
            float: m,
            int: m,
        };
        let v = serde_json::to_value(&r).expect("serializes");
        for path in ["f32", "int"] {
            for field in ["accuracy", "false_submit_rate", "false_revoke_rate", "auc"] {
                assert!(v[path][field].is_number(), "{path}.{field}: {v}");
            }
        }
        assert_eq!(v["f32"]["accuracy"], 0.5);
        assert_eq!(v["int"]["false_submit_rate"], 0.5);
        assert_eq!(v["int"]["false_revoke_rate"], 0.5);
        assert_eq!(v["int"]["confusion"]["false_submit"], 1);
        let text = r.render_text();
        assert!(text.contains("false-submit") && text.contains("confusion (int)"));
    }
}

//! Online adaptation, the slow path: retrain on the device's recent reads
//! and install the result only when it has earned it.
//!
//! LiteFlow's shape, with its two gaps closed. An [`Adapter`] keeps the
//! newest reads of the live training log. A round trains a candidate on the
//! older part (burn, the same recipe as `augur train`) and judges it on the
//! newest part, held back from training. It installs only when all three
//! gates pass, each measured, none assumed:
//!
//! 1. **Converged**: the last [`AdaptConfig::converge_epochs`] epochs
//!    lowered the best validation loss by at most
//!    [`AdaptConfig::converge_tol`] of it, or by at most
//!    [`AdaptConfig::converge_abs`] (the loss has stopped improving; the
//!    weights kept are the best epoch's). LiteFlow's check is hard-coded to
//!    true.
//! 2. **Different enough**: its decisions differ from the active model's on
//!    at least [`AdaptConfig::min_differ`] of the held-back reads
//!    (LiteFlow's fidelity gate: an update that changes nothing is churn).
//! 3. **No worse**: on the held-back reads, labelled as the candidate was
//!    trained to label them (its threshold, and the slow periods of the
//!    recipe), its accuracy is at least the active model's and its
//!    false-submit rate at most the active model's.
//!
//! The daemon runs rounds on a background thread at idle priority; the
//! benchmark runs them between simulated-clock steps, so an adaptation run
//! on the simulated clock is exact and repeatable.

use std::collections::VecDeque;

use augur_feature_store::{Op, TrainingLog, TrainingRecord};
use augur_predictor::eval::evaluate_labelled;
use augur_predictor::label::{PeriodRule, compute_threshold, is_slow};
use augur_predictor::train::{EpochStats, MAX_PERIOD_SLOW_SHARE, Progress, TrainConfig, train};
use augur_predictor::{Model, ReadInfo};
use serde::Serialize;

/// How often and on what the adapter retrains, and its gates.
#[derive(Clone, Debug)]
pub struct AdaptConfig {
    /// Newest reads kept.
    pub window: usize,
    /// Reads that must arrive between two rounds.
    pub min_new: usize,
    /// Share of the window (the newest reads) held back to judge on.
    pub holdout: f64,
    /// Gate 1: the last this many epochs...
    pub converge_epochs: usize,
    /// ...lowered the best validation loss by at most this share of it...
    pub converge_tol: f64,
    /// ...or by at most this much (a loss near zero moves little but by a
    /// large share).
    pub converge_abs: f64,
    /// Gate 2: least share of held-back reads on which the decisions differ.
    pub min_differ: f64,
    /// Largest share of wall time a round trains for: after each batch it
    /// sleeps so that training takes at most this share of one core (1:
    /// no sleeping). Bounds what a round takes from the I/O threads.
    pub duty: f64,
    /// The training recipe.
    pub train: TrainConfig,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        AdaptConfig {
            window: 200_000,
            min_new: 50_000,
            holdout: 0.25,
            converge_epochs: 3,
            converge_tol: 0.05,
            converge_abs: 0.01,
            min_differ: 0.02,
            duty: 1.0,
            train: TrainConfig {
                // Short rounds: the window is small and the device may move on.
                max_epochs: 12,
                patience: 3,
                period: TrainConfig::recipe().period,
                ..TrainConfig::recipe()
            },
        }
    }
}

/// Puts the calling thread in SCHED_IDLE: it runs only when nothing else
/// wants the CPU, so training never competes with the I/O threads.
pub fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param
    // that outlives the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(
            "adapt: SCHED_IDLE refused: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// What a round measured, for the model history.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RoundMetrics {
    /// Reads trained on.
    pub trained_reads: usize,
    /// Reads judged on (held back).
    pub judged_reads: usize,
    /// The candidate's slow threshold (with its period rule, the labels of
    /// the judgement).
    pub threshold_us: u32,
    /// Validation loss per epoch.
    pub val_losses: Vec<f64>,
    /// Gate 1 held.
    pub converged: bool,
    /// Share of judged reads on which the two models decide differently.
    pub differ: f64,
    /// Active model's accuracy on the judged reads.
    pub active_accuracy: f64,
    /// Candidate's accuracy on the judged reads.
    pub candidate_accuracy: f64,
    /// Active model's false-submit rate (slow reads predicted fast).
    pub active_false_submit: f64,
    /// Candidate's false-submit rate.
    pub candidate_false_submit: f64,
    /// Training time, seconds.
    pub train_seconds: f64,
}

impl RoundMetrics {
    /// One line for logs and `model history`: what was measured, without
    /// the training time (wall clock, so that a simulated-clock run prints
    /// the same line on any machine; it is in `train_seconds`).
    pub fn summary(&self) -> String {
        format!(
            "accuracy {:.3} -> {:.3}, false-submit {:.3} -> {:.3}, decisions differ on {:.1}%, val loss {}{}, {} reads trained, {} judged, threshold {} us",
            self.active_accuracy,
            self.candidate_accuracy,
            self.active_false_submit,
            self.candidate_false_submit,
            self.differ * 100.0,
            self.val_losses
                .iter()
                .map(|l| format!("{l:.4}"))
                .collect::<Vec<_>>()
                .join(" "),
            if self.converged {
                " (converged)"
            } else {
                " (not converged)"
            },
            self.trained_reads,
            self.judged_reads,
            self.threshold_us,
        )
    }
}

/// The outcome of a round.
#[derive(Debug)]
pub enum Verdict {
    /// Install this model.
    Install(Box<Model>, RoundMetrics),
    /// Keep the active model, for this reason.
    Reject(String, RoundMetrics),
}

/// Gate 1: the last `n` epochs lowered the best validation loss by at most
/// `tol` of it or by at most `abs`; there must be more than `n` epochs.
pub fn converged(history: &[EpochStats], n: usize, tol: f64, abs: f64) -> bool {
    let n = n.max(1);
    if history.len() <= n {
        return false;
    }
    let best = |h: &[EpochStats]| h.iter().map(|e| e.val_loss).fold(f64::INFINITY, f64::min);
    let before = best(&history[..history.len() - n]);
    let now = best(history);
    let gain = before - now;
    now.is_finite() && before.is_finite() && (gain <= tol * now || gain <= abs)
}

/// Share of `reads` on which the two models decide differently (integer path).
pub fn differ_share(a: &Model, b: &Model, reads: &[TrainingRecord]) -> f64 {
    let mut n = 0usize;
    let mut d = 0usize;
    for r in reads.iter().filter(|r| r.op == Op::Read) {
        let info = ReadInfo {
            size_bytes: r.size_bytes,
        };
        n += 1;
        d += usize::from(
            (a.score_int(&r.features, info) > 0) != (b.score_int(&r.features, info) > 0),
        );
    }
    if n == 0 { 0.0 } else { d as f64 / n as f64 }
}

/// The labels a candidate is judged by: slow above `threshold_us`, and,
/// with `period`, in a slow period of its replica (as training labels them).
pub fn labels(held: &[TrainingRecord], threshold_us: u32, period: Option<PeriodRule>) -> Vec<bool> {
    let keyed: Vec<(u16, u64, bool)> = held
        .iter()
        .filter(|r| r.op == Op::Read)
        .map(|r| (r.replica, r.time_ns, is_slow(r.latency_us, threshold_us)))
        .collect();
    match period {
        Some(p) => p.apply(&keyed),
        None => keyed.iter().map(|k| k.2).collect(),
    }
}

/// The reads' labels as a model trained on them alone by the recipe
/// ([`TrainConfig::recipe`]) would have had them: its threshold rule over
/// their latencies, and its slow periods (unless they would mark most reads
/// slow, as training drops them then). `None` without reads. This judges any
/// model by the same rule, whatever threshold it carries.
pub fn recipe_labels(reads: &[TrainingRecord]) -> Option<(Vec<bool>, u32)> {
    let recipe = TrainConfig::recipe();
    let lat: Vec<u32> = reads
        .iter()
        .filter(|r| r.op == Op::Read)
        .map(|r| r.latency_us)
        .collect();
    let threshold = compute_threshold(&lat, recipe.label).ok()?.threshold_us;
    let with_period = labels(reads, threshold, recipe.period);
    let share = with_period.iter().filter(|&&s| s).count() as f64 / with_period.len() as f64;
    if share > MAX_PERIOD_SLOW_SHARE {
        return Some((labels(reads, threshold, None), threshold));
    }
    Some((with_period, threshold))
}

/// Gates 2 and 3: judges `candidate` against `active` on `held` with the
/// labels `truth` (one per read); fills `m`.
pub fn judge(
    active: &Model,
    candidate: &Model,
    held: &[TrainingRecord],
    truth: &[bool],
    threshold_us: u32,
    cfg: &AdaptConfig,
    m: &mut RoundMetrics,
) -> Result<(), String> {
    let a = evaluate_labelled(active, held, truth, threshold_us).int;
    let c = evaluate_labelled(candidate, held, truth, threshold_us).int;
    m.judged_reads = held.iter().filter(|r| r.op == Op::Read).count();
    m.threshold_us = threshold_us;
    m.active_accuracy = a.accuracy.unwrap_or(0.0);
    m.candidate_accuracy = c.accuracy.unwrap_or(0.0);
    // No slow read held back: nobody submitted one falsely.
    m.active_false_submit = a.false_submit_rate.unwrap_or(0.0);
    m.candidate_false_submit = c.false_submit_rate.unwrap_or(0.0);
    m.differ = differ_share(active, candidate, held);
    if m.differ < cfg.min_differ {
        return Err(format!(
            "decisions differ on only {:.2}% of recent reads (gate: {:.2}%)",
            m.differ * 100.0,
            cfg.min_differ * 100.0
        ));
    }
    if m.candidate_accuracy < m.active_accuracy {
        return Err(format!(
            "less accurate on recent reads ({:.3} < {:.3})",
            m.candidate_accuracy, m.active_accuracy
        ));
    }
    if m.candidate_false_submit > m.active_false_submit {
        return Err(format!(
            "more false submits on recent reads ({:.3} > {:.3})",
            m.candidate_false_submit, m.active_false_submit
        ));
    }
    Ok(())
}

/// The newest reads and the rounds run on them.
pub struct Adapter {
    cfg: AdaptConfig,
    recent: VecDeque<TrainingRecord>,
    new_reads: usize,
    rounds: u64,
}

impl Adapter {
    /// An adapter with nothing seen yet.
    pub fn new(cfg: AdaptConfig) -> Self {
        Adapter {
            recent: VecDeque::with_capacity(cfg.window.min(1 << 20)),
            cfg,
            new_reads: 0,
            rounds: 0,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &AdaptConfig {
        &self.cfg
    }

    /// Takes completed records (reads are kept, the oldest go first).
    pub fn offer(&mut self, recs: &[TrainingRecord]) {
        for r in recs.iter().filter(|r| r.op == Op::Read) {
            if self.recent.len() == self.cfg.window {
                self.recent.pop_front();
            }
            self.recent.push_back(*r);
            self.new_reads += 1;
        }
    }

    /// Takes everything waiting in a live training log.
    pub fn drain(&mut self, log: &TrainingLog) {
        let mut batch = Vec::with_capacity(4096);
        loop {
            batch.clear();
            let n = log.get(4096, &mut batch);
            if n == 0 {
                return;
            }
            self.offer(&batch);
            log.truncate(n);
        }
    }

    /// Whether enough new reads have come in for a round.
    pub fn ready(&self) -> bool {
        self.new_reads >= self.cfg.min_new && self.recent.len() >= self.cfg.min_new
    }

    /// Reads held now (at most the window).
    pub fn held(&self) -> usize {
        self.recent.len()
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// Trains a candidate on the older reads and judges it against `active`
    /// on the newest. Blocking (seconds); call it off the I/O path.
    pub fn round(&mut self, active: &Model) -> Verdict {
        self.take_round().run(active)
    }

    /// What a round needs, taken now (the new-read count restarts), so the
    /// training itself can run on another thread ([`Round::run`]).
    pub fn take_round(&mut self) -> Round {
        self.rounds += 1;
        self.new_reads = 0;
        Round {
            reads: self.recent.iter().copied().collect(),
            cfg: self.cfg.clone(),
            number: self.rounds,
        }
    }
}

/// One round's input: a copy of the window and the configuration.
pub struct Round {
    reads: Vec<TrainingRecord>,
    cfg: AdaptConfig,
    number: u64,
}

impl Round {
    /// Trains and judges (see [`Adapter::round`]).
    pub fn run(self, active: &Model) -> Verdict {
        let all = &self.reads;
        let cut = ((all.len() as f64) * (1.0 - self.cfg.holdout.clamp(0.05, 0.95))) as usize;
        let (older, held) = all.split_at(cut);
        let mut cfg = self.cfg.train.clone();
        cfg.inputs = Some(active.feature_set());
        cfg.seed = cfg.seed.wrapping_add(self.number);
        cfg.data_description = format!(
            "online adaptation round {}, {} reads",
            self.number,
            older.len()
        );
        let mut m = RoundMetrics {
            trained_reads: older.len(),
            ..RoundMetrics::default()
        };
        let duty = self.cfg.duty.clamp(0.01, 1.0);
        let mut batch_start = std::time::Instant::now();
        let mut pace = |p: Progress| {
            if duty < 1.0 && matches!(p, Progress::Batch { .. }) {
                let busy = batch_start.elapsed();
                std::thread::sleep(busy.mul_f64(1.0 / duty - 1.0));
                batch_start = std::time::Instant::now();
            }
        };
        let (cand, report) = match train(older, &cfg, &mut pace) {
            Ok(x) => x,
            Err(e) => return Verdict::Reject(format!("training failed: {e}"), m),
        };
        m.train_seconds = report.train_seconds;
        m.val_losses = report.history.iter().map(|e| e.val_loss).collect();
        m.converged = converged(
            &report.history,
            self.cfg.converge_epochs,
            self.cfg.converge_tol,
            self.cfg.converge_abs,
        );
        let threshold = report.label.threshold_us;
        let period = cfg
            .period
            .filter(|_| report.period_labels_dropped.is_none());
        let truth = labels(held, threshold, period);
        let judged = judge(active, &cand, held, &truth, threshold, &self.cfg, &mut m);
        if !m.converged {
            return Verdict::Reject(
                format!(
                    "training did not converge (the last {} epochs still lowered the validation loss by more than {:.0}% and {})",
                    self.cfg.converge_epochs,
                    self.cfg.converge_tol * 100.0,
                    self.cfg.converge_abs
                ),
                m,
            );
        }
        match judged {
            Ok(()) => Verdict::Install(Box::new(cand), m),
            Err(why) => Verdict::Reject(why, m),
        }
    }
}

#[cfg(test)]
mod tests;

//! Training a slow-read predictor with burn (autodiff over the pure-Rust CPU
//! backend, `flex`).
//!
//! [`train`] takes completed I/O records (only reads are samples), labels
//! them with a [`LabelRule`], splits them into a training and a validation
//! set (seeded, stratified by label), and trains one of four architectures
//! ([`Arch`]) with Adam on a class-weighted cross-entropy in which a missed
//! slow read (a *false submit*) costs [`TrainConfig::false_submit_weight`]
//! times a needless reroute (a *false revoke*). Training stops early when the
//! validation loss has not improved for [`TrainConfig::patience`] epochs, and
//! the weights of the best epoch are kept. The result is a [`Model`]
//! (quantized by `Model::from_layers`) with its [`TrainingMeta`] filled in,
//! and a [`TrainReport`] whose validation metrics are measured through the
//! model's own f32 and integer inference paths.
//!
//! # Reproducibility
//!
//! Everything random comes from one seed: weight initialisation (our own
//! generator, a PyTorch-style uniform `±1/sqrt(fan_in)`; burn's global
//! backend RNG is seeded too but never drawn from), the train/validation
//! split and the per-epoch shuffles. The CPU backend runs the same operations
//! in the same order, so two runs with the same records and configuration
//! give bit-identical weights (checked by a test).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use augur_feature_store::{Op, TrainingRecord};
use augur_rng::Rng;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;
use thiserror::Error;

use crate::eval::{EvalReport, evaluate, evaluate_labelled};
use crate::features::{
    FeatureSet, HEIMDALL_INPUTS, LINNOS_EXT_INPUTS, LINNOS_INPUTS, LINNOS_WRITE_INPUTS, MinMax,
    ReadInfo, encode_linnos, encode_linnos_ext, encode_linnos_write, heimdall_raw,
};
use crate::label::{LabelError, LabelRule, PeriodRule, Threshold, compute_threshold, is_slow};
mod data;
mod meta;
mod net;
#[cfg(test)]
mod tests;

pub use data::MAX_PERIOD_SLOW_SHARE;
use data::*;
use meta::*;
pub use meta::{utc_date, utc_date_today};
use net::*;

use crate::model::{Activation, Layer, MAX_STR, Model, ModelError, TrainingMeta};

/// Network architecture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// LinnOS: 31 -> 256 (ReLU) -> 2.
    #[default]
    Base,
    /// LinnOS plus one hidden layer: 31 -> 256 -> 256 -> 2.
    Deep1,
    /// LinnOS plus two hidden layers: 31 -> 256 -> 256 -> 256 -> 2.
    Deep2,
    /// Heimdall: 12 MinMax-scaled inputs -> 128 -> 16 -> 1.
    Heimdall,
}

impl Arch {
    /// All architectures.
    pub const ALL: [Arch; 4] = [Arch::Base, Arch::Deep1, Arch::Deep2, Arch::Heimdall];

    /// The name used on the command line and in model metadata.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Base => "base",
            Arch::Deep1 => "deep1",
            Arch::Deep2 => "deep2",
            Arch::Heimdall => "heimdall",
        }
    }

    /// Parses `base`, `deep1` (or `+1`), `deep2` (or `+2`), `heimdall`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "base" | "linnos" => Some(Arch::Base),
            "deep1" | "+1" | "base+1" => Some(Arch::Deep1),
            "deep2" | "+2" | "base+2" => Some(Arch::Deep2),
            "heimdall" => Some(Arch::Heimdall),
            _ => None,
        }
    }

    /// The feature set the architecture consumes.
    pub fn feature_set(self) -> FeatureSet {
        match self {
            Arch::Heimdall => FeatureSet::Heimdall,
            _ => FeatureSet::LinnOs,
        }
    }

    /// Layer widths from input to output, e.g. `[31, 256, 2]`.
    pub fn widths(self) -> Vec<usize> {
        match self {
            Arch::Base => vec![LINNOS_INPUTS, 256, 2],
            Arch::Deep1 => vec![LINNOS_INPUTS, 256, 256, 2],
            Arch::Deep2 => vec![LINNOS_INPUTS, 256, 256, 256, 2],
            Arch::Heimdall => vec![HEIMDALL_INPUTS, 128, 16, 1],
        }
    }

    /// `name (w0-w1-...)`, e.g. `base (31-256-2)`.
    pub fn describe(self) -> String {
        let w: Vec<String> = self.widths().iter().map(usize::to_string).collect();
        format!("{} ({})", self.name(), w.join("-"))
    }
}

/// Which replicas' reads to train on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplicaSelection {
    /// All replicas' reads together (one model for the array).
    #[default]
    Pooled,
    /// Only this replica's reads (LinnOS: one model per device).
    Only(u16),
}

impl ReplicaSelection {
    /// Whether a record of `replica` is selected.
    pub fn matches(self, replica: u16) -> bool {
        match self {
            ReplicaSelection::Pooled => true,
            ReplicaSelection::Only(r) => r == replica,
        }
    }

    /// `pooled` or `replica N`.
    pub fn describe(self) -> String {
        match self {
            ReplicaSelection::Pooled => "pooled".to_string(),
            ReplicaSelection::Only(r) => format!("replica {r}"),
        }
    }
}

/// Training configuration. [`Default`] gives the LinnOS setup.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Network architecture.
    pub arch: Arch,
    /// The LinnOS-family encoding to feed base, deep1 or deep2 instead of
    /// plain LinnOS: `linnos-ext` (also the oldest pending age and the
    /// recent read maximum, 39 inputs) or `linnos-write` (those and two
    /// write latencies, 47). `None`: the architecture's own (LinnOS for
    /// base/deep1/deep2, Heimdall for heimdall).
    pub inputs: Option<FeatureSet>,
    /// Which replicas' reads to use.
    pub replicas: ReplicaSelection,
    /// How reads are labelled slow.
    pub label: LabelRule,
    /// Also label slow the reads issued in a slow period of their replica
    /// (see [`PeriodRule`]); `None`: per-read labels only (LinnOS).
    pub period: Option<PeriodRule>,
    /// Loss weight of a slow read relative to a fast one: a false submit
    /// (slow predicted fast) costs this many times a false revoke. LinnOS: 5.
    pub false_submit_weight: f32,
    /// Fraction of reads held out for validation, in `(0, 1)`.
    pub validation_fraction: f64,
    /// Upper bound on epochs.
    pub max_epochs: usize,
    /// Stop after this many epochs without validation-loss improvement (0
    /// behaves as 1).
    pub patience: usize,
    /// An epoch improves when its validation loss is below the best so far
    /// by more than this.
    pub min_delta: f64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Seed for initialisation, split and shuffles.
    pub seed: u64,
    /// Free text describing the data (file names...), stored in the model.
    pub data_description: String,
    /// The date stored in the model (`yyyy-mm-dd`); `None` = today (UTC).
    /// Set it to make model files byte-reproducible.
    pub date: Option<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            arch: Arch::Base,
            inputs: None,
            replicas: ReplicaSelection::Pooled,
            label: LabelRule::Inflection,
            period: None,
            false_submit_weight: 5.0,
            validation_fraction: 0.2,
            max_epochs: 40,
            patience: 5,
            min_delta: 1e-4,
            batch_size: 256,
            learning_rate: 1e-3,
            seed: 42,
            data_description: String::new(),
            date: None,
        }
    }
}

impl TrainConfig {
    /// The shipped model's recipe, which `augur train` does by default:
    /// LinnOS's base network on `linnos-write` inputs, labels
    /// `min(p98,4x-median)` with ±4 ms period labels (10% slow), false
    /// submits weighted 5, at most 8 epochs with patience 4, seed 1.
    pub fn recipe() -> Self {
        TrainConfig {
            inputs: Some(FeatureSet::LinnOsWrite),
            label: LabelRule::LowerOf(98.0, 4.0),
            period: Some(PeriodRule {
                window_us: 4000,
                min_slow_fraction: 0.1,
            }),
            max_epochs: 8,
            patience: 4,
            seed: 1,
            ..TrainConfig::default()
        }
    }

    /// The feature set trained: [`inputs`](Self::inputs) if set, else the
    /// architecture's.
    pub fn feature_set(&self) -> FeatureSet {
        self.inputs.unwrap_or_else(|| self.arch.feature_set())
    }

    /// Layer widths from input to output for this configuration.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = self.arch.widths();
        w[0] = self.feature_set().n_inputs();
        w
    }

    /// Checks the numeric parameters.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: String| Err(TrainError::InvalidConfig(what));
        match (self.arch, self.inputs) {
            (Arch::Heimdall, Some(fs)) if fs != FeatureSet::Heimdall => {
                return bad(format!(
                    "the {fs} inputs are for the LinnOS architectures (base, deep1, deep2), not heimdall"
                ));
            }
            (a, Some(FeatureSet::Heimdall)) if a != Arch::Heimdall => {
                return bad(format!(
                    "the heimdall inputs need the heimdall architecture, not {}",
                    a.name()
                ));
            }
            _ => {}
        }
        if !(self.false_submit_weight.is_finite() && self.false_submit_weight > 0.0) {
            return bad(format!(
                "false-submit weight must be a positive number, got {}",
                self.false_submit_weight
            ));
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return bad(format!(
                "validation fraction must lie strictly between 0 and 1, got {}",
                self.validation_fraction
            ));
        }
        if self.max_epochs == 0 {
            return bad("max epochs must be at least 1".to_string());
        }
        if self.batch_size == 0 {
            return bad("batch size must be at least 1".to_string());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!(
                "learning rate must be a positive number, got {}",
                self.learning_rate
            ));
        }
        self.label.validate()?;
        if let Some(p) = self.period {
            p.validate()?;
        }
        Ok(())
    }
}

/// Per-epoch statistics.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EpochStats {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean weighted training loss over the epoch's batches.
    pub train_loss: f64,
    /// Weighted validation loss after the epoch.
    pub val_loss: f64,
    /// Validation accuracy after the epoch (f32 network output).
    pub val_accuracy: f64,
    /// Of slow validation reads, the fraction predicted fast.
    pub val_false_submit_rate: f64,
    /// Of fast validation reads, the fraction predicted slow.
    pub val_false_revoke_rate: f64,
    /// Whether this epoch is the best so far (weights kept).
    pub improved: bool,
    /// Seconds since training started.
    pub elapsed_s: f64,
}

/// Progress events, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Progress {
    /// Data is labelled and split; training starts.
    Prepared {
        /// Training samples (reads).
        train_samples: usize,
        /// Validation samples (reads).
        validation_samples: usize,
        /// The slow/fast threshold.
        threshold_us: u32,
        /// Fraction of all selected reads labelled slow.
        slow_fraction: f64,
        /// Batches per epoch.
        batches_per_epoch: usize,
        /// The epoch cap.
        max_epochs: usize,
    },
    /// One optimiser step done.
    Batch {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based batch within the epoch.
        batch: usize,
        /// Batches per epoch.
        batches: usize,
        /// This batch's loss.
        loss: f64,
    },
    /// An epoch finished and was validated.
    Epoch(EpochStats),
    /// Validation loss stopped improving; training ends early.
    EarlyStopped {
        /// The last epoch run.
        epoch: usize,
        /// The epoch whose weights are kept.
        best_epoch: usize,
    },
}

/// What training did and how well the result does on the validation set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainReport {
    /// Architecture trained.
    pub arch: Arch,
    /// Feature set the model consumes.
    pub feature_set: String,
    /// Layer widths, input to output.
    pub widths: Vec<usize>,
    /// `pooled` or `replica N`.
    pub replicas: String,
    /// The label rule, e.g. `inflection` or `p95`.
    pub label_rule: String,
    /// The threshold and label balance over all selected reads.
    pub label: Threshold,
    /// Reads used (after the replica filter).
    pub reads: usize,
    /// Records skipped because they were not reads or not selected.
    pub skipped_records: usize,
    /// Training-set size.
    pub train_samples: usize,
    /// Validation-set size.
    pub validation_samples: usize,
    /// Epochs run.
    pub epochs_run: usize,
    /// Epoch whose weights were kept (lowest validation loss).
    pub best_epoch: usize,
    /// Whether early stopping ended training before the epoch cap.
    pub stopped_early: bool,
    /// With period labels asked for: the share of reads they would have
    /// marked slow, when that was above [`MAX_PERIOD_SLOW_SHARE`] and the
    /// per-read labels were used instead (the device is slow most of the
    /// time, so "avoid the slow period" has nowhere to send reads).
    pub period_labels_dropped: Option<f64>,
    /// Per-epoch history.
    pub history: Vec<EpochStats>,
    /// The final model on the validation set, f32 and integer paths,
    /// against per-read labels (what `augur eval` reports).
    pub validation: EvalReport,
    /// The same against the period labels it was trained on, when
    /// [`TrainConfig::period`] was set.
    pub validation_period: Option<EvalReport>,
    /// Wall-clock training time in seconds (preparation included).
    pub train_seconds: f64,
}

impl TrainReport {
    /// A short human-readable summary followed by the validation table.
    pub fn render_text(&self) -> String {
        format!(
            "trained {} ({}, {} features) on {} reads ({}), label {} -> slow if > {} µs ({:.2}% slow)\n\
             {} train / {} validation samples; {} epochs, best {}{}; {:.1} s\n{}",
            self.arch.name(),
            self.widths
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("-"),
            self.feature_set,
            self.reads,
            self.replicas,
            self.label_rule,
            self.label.threshold_us,
            self.label.slow_fraction * 100.0,
            self.train_samples,
            self.validation_samples,
            self.epochs_run,
            self.best_epoch,
            if self.stopped_early {
                " (early stop)"
            } else {
                ""
            },
            self.train_seconds,
            match &self.validation_period {
                Some(p) => format!(
                    "against per-read labels:\n{}against the period labels trained on:\n{}",
                    self.validation.render_text(),
                    p.render_text()
                ),
                None => self.validation.render_text(),
            }
        )
    }
}

/// Training errors.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A configuration value is out of range.
    #[error("invalid training configuration: {0}")]
    InvalidConfig(String),
    /// No reads survived the filters.
    #[error("no read records to train on ({selection}; {records} records given)")]
    NoReads {
        /// The replica selection.
        selection: String,
        /// How many records were given in total.
        records: usize,
    },
    /// The label threshold could not be computed.
    #[error("labelling reads: {0}")]
    Label(#[from] LabelError),
    /// Too few reads of one class to train and validate.
    #[error(
        "need at least 2 slow and 2 fast reads to train and validate, got {slow} slow and \
         {fast} fast with threshold {threshold_us} µs (label rule {rule})"
    )]
    TooFewOfAClass {
        /// Slow reads.
        slow: usize,
        /// Fast reads.
        fast: usize,
        /// The threshold used.
        threshold_us: u32,
        /// The label rule.
        rule: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "training diverged: the loss became {loss} in epoch {epoch} (try a lower learning rate)"
    )]
    Diverged {
        /// Epoch of the divergence.
        epoch: usize,
        /// The offending loss value.
        loss: f64,
    },
    /// Reading tensor data back from burn failed.
    #[error("reading weights back from the training backend: {0}")]
    Backend(String),
    /// The trained layers were rejected by the model builder.
    #[error("building the model from trained layers: {0}")]
    Model(#[source] ModelError),
    /// The built model's f32 path disagrees with the trained network (the
    /// feature encoding or scaling of training and inference differ).
    #[error(
        "the built model disagrees with the trained network on sample {index}: model score \
         {model}, network score {network} (training and inference preprocessing differ)"
    )]
    Inconsistent {
        /// Validation sample index.
        index: usize,
        /// `Model::score_f32`.
        model: f32,
        /// The training-side forward pass.
        network: f32,
    },
}

/// Training's random stream number `stream` for `seed` (init, split,
/// shuffles and tests each draw from their own).
fn stream_rng(seed: u64, stream: u64) -> Rng {
    Rng::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// Trains a model on the reads in `records` according to `cfg`, reporting
/// progress through `progress`. Deterministic for a given input and config.
pub fn train(
    records: &[TrainingRecord],
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Model, TrainReport), TrainError> {
    let started = Instant::now();
    cfg.validate()?;
    let fs = cfg.feature_set();
    let widths = cfg.widths();
    let d_in = widths[0];
    let n_out = widths[widths.len() - 1];

    let Split {
        reads,
        labels,
        threshold,
        labelled_slow_fraction,
        period_dropped,
        train_idx,
        val_idx,
    } = labelled_split(records, cfg)?;
    // The period rule in effect (none when its labels were dropped).
    let period = cfg.period.filter(|_| period_dropped.is_none());

    let (feats, scaler) = features(fs, &reads, &train_idx, d_in);
    let row = |i: usize| &feats[i * d_in..(i + 1) * d_in];

    let batch_size = cfg.batch_size.min(train_idx.len());
    let batches = train_idx.len().div_ceil(batch_size);
    progress(Progress::Prepared {
        train_samples: train_idx.len(),
        validation_samples: val_idx.len(),
        threshold_us: threshold.threshold_us,
        slow_fraction: labelled_slow_fraction,
        batches_per_epoch: batches,
        max_epochs: cfg.max_epochs,
    });

    let w_slow = f64::from(cfg.false_submit_weight);
    let val_x: Vec<f32> = val_idx
        .iter()
        .flat_map(|&i| row(i).iter().copied())
        .collect();
    let val_y: Vec<bool> = val_idx.iter().map(|&i| labels[i]).collect();
    let data = Batches {
        feats: &feats,
        labels: &labels,
        d_in,
        n_out,
        w_slow,
        batch_size,
        batches,
    };
    let Fitted {
        layers,
        best_epoch,
        history,
        stopped_early,
    } = fit(
        cfg, &widths, &data, &train_idx, &val_x, &val_y, started, progress,
    )?;

    // ---- build, check and evaluate the model ----
    let val_records: Vec<TrainingRecord> = val_idx.iter().map(|&i| *reads[i]).collect();
    let label_rule = label_rule_text(cfg, &threshold, period_dropped);
    let mut meta = training_meta(
        cfg,
        &label_rule,
        &threshold,
        format!(
            "{} reads ({}), {:.2}% slow, {} train / {} validation",
            reads.len(),
            cfg.replicas.describe(),
            labelled_slow_fraction * 100.0,
            train_idx.len(),
            val_idx.len()
        ),
    );
    let model = Model::from_layers(fs, layers.clone(), scaler.clone(), meta.clone())
        .map_err(TrainError::Model)?;
    check_consistent(&model, &layers, &val_records, &val_x, d_in)?;
    let validation = evaluate(&model, &val_records, threshold.threshold_us);
    let validation_period = period.map(|_| {
        let truth: Vec<bool> = val_idx.iter().map(|&i| labels[i]).collect();
        evaluate_labelled(&model, &val_records, &truth, threshold.threshold_us)
    });
    meta.metrics = metrics_of(
        &validation,
        validation_period.as_ref(),
        labelled_slow_fraction,
        val_records.len(),
        train_idx.len(),
        threshold.slow_fraction,
        best_epoch,
    );
    let model = Model::from_layers(fs, layers, scaler, meta).map_err(TrainError::Model)?;

    let report = TrainReport {
        arch: cfg.arch,
        feature_set: fs.name().to_string(),
        widths: cfg.widths(),
        replicas: cfg.replicas.describe(),
        label_rule,
        label: threshold,
        reads: reads.len(),
        skipped_records: records.len() - reads.len(),
        train_samples: train_idx.len(),
        validation_samples: val_idx.len(),
        epochs_run: history.len(),
        best_epoch,
        stopped_early,
        period_labels_dropped: period_dropped,
        validation_period,
        history,
        validation,
        train_seconds: started.elapsed().as_secs_f64(),
    };
    Ok((model, report))
}

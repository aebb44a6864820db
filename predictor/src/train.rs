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
    FeatureSet, HEIMDALL_INPUTS, LINNOS_EXT_INPUTS, LINNOS_INPUTS, MinMax, ReadInfo, encode_linnos,
    encode_linnos_ext, heimdall_raw,
};
use crate::label::{LabelError, LabelRule, PeriodRule, Threshold, compute_threshold, is_slow};
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
    /// Also feed the oldest pending age and the recent read maximum (feature set
    /// `linnos-ext`, 39 inputs); base, deep1 and deep2 only.
    pub extended: bool,
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
            extended: false,
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
    /// The feature set trained: the architecture's, or `linnos-ext` with
    /// [`extended`](Self::extended).
    pub fn feature_set(&self) -> FeatureSet {
        match (self.arch, self.extended) {
            (Arch::Heimdall, _) | (_, false) => self.arch.feature_set(),
            (_, true) => FeatureSet::LinnOsExt,
        }
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
        if self.extended && self.arch == Arch::Heimdall {
            return bad("the extended inputs are for the LinnOS architectures (base, deep1, deep2), not heimdall".into());
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

/// The trained network: linear layers with ReLU between them.
#[derive(Module, Debug)]
struct Net {
    layers: Vec<Linear>,
}

impl Net {
    fn init(widths: &[usize], rng: &mut Rng, device: &Device) -> Self {
        let layers = widths
            .windows(2)
            .map(|w| {
                let (d_in, d_out) = (w[0], w[1]);
                let k = 1.0 / (d_in as f64).sqrt();
                let mut uni = |n: usize| -> Vec<f32> {
                    (0..n)
                        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * k) as f32)
                        .collect()
                };
                // burn stores weights as [d_input, d_output].
                let weight = uni(d_in * d_out);
                let bias = uni(d_out);
                Linear {
                    weight: Param::from_tensor(Tensor::from_data(
                        TensorData::new(weight, [d_in, d_out]),
                        device,
                    )),
                    bias: Some(Param::from_tensor(Tensor::from_data(
                        TensorData::new(bias, [d_out]),
                        device,
                    ))),
                }
            })
            .collect();
        Net { layers }
    }

    fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }

    /// The weights as model layers (row-major `[outputs][inputs]`).
    fn to_layers(&self) -> Result<Vec<Layer>, TrainError> {
        let last = self.layers.len().saturating_sub(1);
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let w = l.weight.val();
                let [d_in, d_out] = w.dims();
                let w: Vec<f32> = w
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| TrainError::Backend(format!("{e:?}")))?;
                let bias: Vec<f32> = match &l.bias {
                    Some(b) => b
                        .val()
                        .into_data()
                        .try_to_vec::<f32>()
                        .map_err(|e| TrainError::Backend(format!("{e:?}")))?,
                    None => vec![0.0; d_out],
                };
                let mut weights = vec![0.0f32; d_in * d_out];
                for r in 0..d_in {
                    for c in 0..d_out {
                        weights[c * d_in + r] = w[r * d_out + c];
                    }
                }
                Ok(Layer {
                    inputs: d_in,
                    outputs: d_out,
                    weights,
                    bias,
                    activation: if i < last {
                        Activation::Relu
                    } else {
                        Activation::None
                    },
                })
            })
            .collect()
    }
}

/// Plain f32 forward pass over model layers; returns the "slow" score
/// (`out[1] - out[0]` for two outputs, `out[0]` for one).
fn score_layers(layers: &[Layer], input: &[f32]) -> f32 {
    let mut x = input.to_vec();
    for l in layers {
        let mut y = l.bias.clone();
        for (o, yo) in y.iter_mut().enumerate() {
            let row = &l.weights[o * l.inputs..(o + 1) * l.inputs];
            *yo += row.iter().zip(&x).map(|(w, v)| w * v).sum::<f32>();
            if l.activation == Activation::Relu {
                *yo = yo.max(0.0);
            }
        }
        x = y;
    }
    match x.as_slice() {
        [a, b] => b - a,
        [a] => *a,
        _ => 0.0,
    }
}

/// Encodes one read's features (unscaled for Heimdall).
fn encode(fs: FeatureSet, r: &TrainingRecord, out: &mut Vec<f32>) {
    match fs {
        FeatureSet::LinnOs => {
            let mut f = [0.0f32; LINNOS_INPUTS];
            encode_linnos(&r.features, &mut f);
            out.extend_from_slice(&f);
        }
        FeatureSet::LinnOsExt => {
            let mut f = [0.0f32; LINNOS_EXT_INPUTS];
            encode_linnos_ext(&r.features, &mut f);
            out.extend_from_slice(&f);
        }
        FeatureSet::Heimdall => {
            let mut f = [0.0f32; HEIMDALL_INPUTS];
            heimdall_raw(
                &r.features,
                ReadInfo {
                    size_bytes: r.size_bytes,
                },
                &mut f,
            );
            out.extend_from_slice(&f);
        }
    }
}

/// Shortens `s` to at most `max` bytes on a character boundary, ending in
/// `...` when cut.
fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max.saturating_sub(3);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str("...");
}

/// Today's date (UTC) as `yyyy-mm-dd`, from the system clock.
pub fn utc_date_today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_date(secs)
}

/// The UTC calendar date of a Unix time, as `yyyy-mm-dd`.
pub fn utc_date(unix_secs: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = (unix_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Weighted loss and confusion counts of raw network outputs.
struct ValStats {
    loss: f64,
    accuracy: f64,
    false_submit_rate: f64,
    false_revoke_rate: f64,
}

fn val_stats(outputs: &[f32], n_out: usize, labels: &[bool], w_slow: f64) -> ValStats {
    let (mut loss, mut wsum) = (0.0f64, 0.0f64);
    let (mut tp, mut fn_, mut fp, mut tn) = (0u64, 0u64, 0u64, 0u64);
    for (o, &y) in outputs.chunks_exact(n_out).zip(labels) {
        let w = if y { w_slow } else { 1.0 };
        let (score, l) = if n_out == 2 {
            let (a, b) = (f64::from(o[0]), f64::from(o[1]));
            let m = a.max(b);
            let lse = m + ((a - m).exp() + (b - m).exp()).ln();
            (b - a, lse - if y { b } else { a })
        } else {
            let z = f64::from(o[0]);
            let sp = z.max(0.0) + (-z.abs()).exp().ln_1p();
            (z, sp - if y { z } else { 0.0 })
        };
        loss += w * l;
        wsum += w;
        match (y, score > 0.0) {
            (true, true) => tp += 1,
            (true, false) => fn_ += 1,
            (false, true) => fp += 1,
            (false, false) => tn += 1,
        }
    }
    let r = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    ValStats {
        loss: if wsum > 0.0 { loss / wsum } else { 0.0 },
        accuracy: r(tp + tn, tp + tn + fp + fn_),
        false_submit_rate: r(fn_, tp + fn_),
        false_revoke_rate: r(fp, fp + tn),
    }
}

/// The reads of a training run, labelled, with a stratified, seeded split.
struct Split<'a> {
    reads: Vec<&'a TrainingRecord>,
    labels: Vec<bool>,
    threshold: Threshold,
    labelled_slow_fraction: f64,
    /// Set when period labels would have marked more than
    /// [`MAX_PERIOD_SLOW_SHARE`] of the reads slow (that share): the
    /// per-read labels were kept instead.
    period_dropped: Option<f64>,
    train_idx: Vec<usize>,
    val_idx: Vec<usize>,
}

/// Most of the reads period labels may mark slow before training keeps the
/// per-read labels instead (see [`TrainReport::period_labels_dropped`]).
pub const MAX_PERIOD_SLOW_SHARE: f64 = 0.5;

/// Selects the reads `cfg` trains on, labels them (threshold, then period
/// labels) and splits them into training and validation sets per class.
fn labelled_split<'a>(
    records: &'a [TrainingRecord],
    cfg: &TrainConfig,
) -> Result<Split<'a>, TrainError> {
    // ---- data: reads of the selected replicas, labelled ----
    let reads: Vec<&TrainingRecord> = records
        .iter()
        .filter(|r| r.op == Op::Read && cfg.replicas.matches(r.replica))
        .collect();
    if reads.is_empty() {
        return Err(TrainError::NoReads {
            selection: cfg.replicas.describe(),
            records: records.len(),
        });
    }
    let latencies: Vec<u32> = reads.iter().map(|r| r.latency_us).collect();
    let threshold = compute_threshold(&latencies, cfg.label)?;
    let mut labels: Vec<bool> = latencies
        .iter()
        .map(|&l| is_slow(l, threshold.threshold_us))
        .collect();
    let mut period_dropped = None;
    if let Some(p) = cfg.period {
        let keyed: Vec<(u16, u64, bool)> = reads
            .iter()
            .zip(&labels)
            .map(|(r, &y)| (r.replica, r.time_ns, y))
            .collect();
        let periodic = p.apply(&keyed);
        let share = periodic.iter().filter(|&&y| y).count() as f64 / periodic.len() as f64;
        // A device that is in a slow period most of the time has no fast
        // periods to send reads to: period labels would teach "always slow".
        // Keep the per-read labels then, and say so.
        if share > MAX_PERIOD_SLOW_SHARE {
            period_dropped = Some(share);
        } else {
            labels = periodic;
        }
    }
    let labelled_slow_fraction = labels.iter().filter(|&&y| y).count() as f64 / labels.len() as f64;
    let mut slow_idx: Vec<usize> = (0..reads.len()).filter(|&i| labels[i]).collect();
    let mut fast_idx: Vec<usize> = (0..reads.len()).filter(|&i| !labels[i]).collect();
    if slow_idx.len() < 2 || fast_idx.len() < 2 {
        return Err(TrainError::TooFewOfAClass {
            slow: slow_idx.len(),
            fast: fast_idx.len(),
            threshold_us: threshold.threshold_us,
            rule: cfg.label.to_string(),
        });
    }

    // ---- stratified, seeded split ----
    let mut split_rng = stream_rng(cfg.seed, 1);
    split_rng.shuffle(&mut slow_idx);
    split_rng.shuffle(&mut fast_idx);
    let n_val = |n: usize| -> usize {
        ((n as f64 * cfg.validation_fraction).round() as usize).clamp(1, n - 1)
    };
    let (vs, vf) = (n_val(slow_idx.len()), n_val(fast_idx.len()));
    let mut val_idx: Vec<usize> = slow_idx[..vs]
        .iter()
        .chain(&fast_idx[..vf])
        .copied()
        .collect();
    val_idx.sort_unstable();
    let mut train_idx: Vec<usize> = slow_idx[vs..]
        .iter()
        .chain(&fast_idx[vf..])
        .copied()
        .collect();
    train_idx.sort_unstable();

    Ok(Split {
        reads,
        labels,
        threshold,
        labelled_slow_fraction,
        period_dropped,
        train_idx,
        val_idx,
    })
}

/// The weighted loss of one batch: cross-entropy over two outputs, or binary
/// cross-entropy with logits over one. `tb` holds, per sample, the weighted
/// one-hot target (two outputs) or (weight, weight * label) (one output).
#[allow(clippy::too_many_arguments)]
fn batch_loss(
    net: &Net,
    xb: &[f32],
    tb: &[f32],
    n: usize,
    d_in: usize,
    n_out: usize,
    wsum: f64,
    device: &Device,
) -> Tensor<1> {
    let x = Tensor::<2>::from_data(TensorData::new(xb.to_vec(), [n, d_in]), device);
    let out = net.forward(x);
    let t = Tensor::<2>::from_data(TensorData::new(tb.to_vec(), [n, 2]), device);
    if n_out == 2 {
        (log_softmax(out, 1) * t).sum().neg().div_scalar(wsum)
    } else {
        // Weighted binary cross-entropy with logits:
        // w * (softplus(z) - y z), softplus(z) = max(z,0) + ln(1 + e^-|z|).
        let w = t.clone().slice([0..n, 0..1]);
        let wy = t.slice([0..n, 1..2]);
        let sp = out.clone().clamp_min(0.0) + out.clone().abs().neg().exp().log1p();
        (sp * w - out * wy).sum().div_scalar(wsum)
    }
}

/// The metrics a trained model's metadata records.
fn metrics_of(
    validation: &EvalReport,
    validation_period: Option<&EvalReport>,
    labelled_slow_fraction: f64,
    val_reads: usize,
    train_reads: usize,
    slow_fraction: f64,
    best_epoch: usize,
) -> Vec<(String, f64)> {
    let mut metrics: Vec<(String, f64)> = Vec::new();
    for (path, m) in [("f32", &validation.float), ("int", &validation.int)] {
        let mut put = |name: &str, v: Option<f64>| {
            if let Some(v) = v {
                metrics.push((format!("val_{name}_{path}"), v));
            }
        };
        put("accuracy", m.accuracy);
        put("false_submit_rate", m.false_submit_rate);
        put("false_revoke_rate", m.false_revoke_rate);
        put("auc", m.auc);
    }
    if let Some(v) = validation_period {
        for (path, m) in [("f32", &v.float), ("int", &v.int)] {
            if let Some(a) = m.accuracy {
                metrics.push((format!("val_period_accuracy_{path}"), a));
            }
            if let Some(a) = m.false_submit_rate {
                metrics.push((format!("val_period_false_submit_rate_{path}"), a));
            }
        }
        metrics.push(("period_slow_fraction".to_string(), labelled_slow_fraction));
    }
    metrics.push(("val_reads".to_string(), val_reads as f64));
    metrics.push(("train_reads".to_string(), train_reads as f64));
    metrics.push(("slow_fraction".to_string(), slow_fraction));
    metrics.push(("best_epoch".to_string(), best_epoch as f64));
    metrics
}

/// The trained network's outputs on the validation rows (no autodiff).
fn validation_outputs(
    net: &Net,
    val_x: &[f32],
    d_in: usize,
    n_out: usize,
    plain: &Device,
) -> Result<Vec<f32>, TrainError> {
    let vnet = net.valid();
    let mut outputs = Vec::with_capacity(val_x.len() / d_in.max(1) * n_out);
    for chunk in val_x.chunks(4096 * d_in) {
        let n = chunk.len() / d_in;
        let x = Tensor::<2>::from_data(TensorData::new(chunk.to_vec(), [n, d_in]), plain);
        let o = vnet
            .forward(x)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Backend(format!("{e:?}")))?;
        outputs.extend_from_slice(&o);
    }
    Ok(outputs)
}

/// Fills one batch's inputs `xb` and targets `tb` (see [`batch_loss`]) for
/// the rows in `chunk`; returns the batch's total sample weight.
#[allow(clippy::too_many_arguments)]
fn fill_batch(
    chunk: &[usize],
    feats: &[f32],
    labels: &[bool],
    d_in: usize,
    n_out: usize,
    w_slow: f64,
    xb: &mut Vec<f32>,
    tb: &mut Vec<f32>,
) -> f64 {
    let mut wsum = 0.0f64;
    for &i in chunk {
        xb.extend_from_slice(&feats[i * d_in..(i + 1) * d_in]);
        let y = labels[i];
        let w = if y { w_slow } else { 1.0 };
        wsum += w;
        if n_out == 2 {
            // Weighted one-hot target for the cross-entropy.
            let (f, s) = if y { (0.0, w) } else { (w, 0.0) };
            tb.push(f as f32);
            tb.push(s as f32);
        } else {
            tb.push(w as f32); // weight
            tb.push(if y { w as f32 } else { 0.0 }); // weight * label
        }
    }
    wsum
}

/// The f32 input rows of `reads` (`d_in` values each), MinMax-scaled for
/// Heimdall with a scaler fitted on the training rows only.
fn features(
    fs: FeatureSet,
    reads: &[&TrainingRecord],
    train_idx: &[usize],
    d_in: usize,
) -> (Vec<f32>, Option<MinMax>) {
    let mut feats: Vec<f32> = Vec::with_capacity(reads.len() * d_in);
    for r in reads {
        encode(fs, r, &mut feats);
    }
    let scaler = if fs == FeatureSet::Heimdall {
        // Fit on the training split only; the model applies the same scaler.
        let s = MinMax::fit(
            d_in,
            train_idx.iter().map(|&i| &feats[i * d_in..(i + 1) * d_in]),
        );
        for row in feats.chunks_exact_mut(d_in) {
            s.apply(row);
        }
        Some(s)
    } else {
        None
    };
    (feats, scaler)
}

/// The model's own f32 path must agree with the network we trained.
fn check_consistent(
    model: &Model,
    layers: &[Layer],
    val_records: &[TrainingRecord],
    val_x: &[f32],
    d_in: usize,
) -> Result<(), TrainError> {
    for (k, r) in val_records.iter().take(64).enumerate() {
        let net_score = score_layers(layers, &val_x[k * d_in..(k + 1) * d_in]);
        let model_score = model.score_f32(
            &r.features,
            ReadInfo {
                size_bytes: r.size_bytes,
            },
        );
        let tol = 1e-3 * (1.0 + net_score.abs());
        if (net_score - model_score).abs() > tol || !model_score.is_finite() {
            return Err(TrainError::Inconsistent {
                index: k,
                model: model_score,
                network: net_score,
            });
        }
    }
    Ok(())
}

/// The model's metadata (metrics are filled in once evaluated).
fn training_meta(
    cfg: &TrainConfig,
    label_rule: &str,
    threshold: &Threshold,
    summary: String,
) -> TrainingMeta {
    TrainingMeta {
        data: {
            let mut data = if cfg.data_description.is_empty() {
                summary
            } else {
                format!("{}; {summary}", cfg.data_description)
            };
            truncate_utf8(&mut data, MAX_STR);
            data
        },
        date: cfg.date.clone().unwrap_or_else(utc_date_today),
        seed: cfg.seed,
        arch: if cfg.extended {
            format!("{}+ext", cfg.arch.name())
        } else {
            cfg.arch.name().to_string()
        },
        label_rule: label_rule.to_string(),
        threshold_us: threshold.threshold_us,
        metrics: Vec::new(),
    }
}

/// The rows one training epoch draws its batches from.
struct Batches<'a> {
    feats: &'a [f32],
    labels: &'a [bool],
    d_in: usize,
    n_out: usize,
    w_slow: f64,
    batch_size: usize,
    batches: usize,
}

/// One pass over the training rows in `order`, a gradient step per batch.
/// Returns the network after the pass, the weighted loss sum and its weight.
#[allow(clippy::too_many_arguments)]
fn train_epoch(
    mut net: Net,
    optim: &mut ModuleOptimizer,
    order: &[usize],
    d: &Batches<'_>,
    epoch: usize,
    lr: f64,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Net, f64, f64), TrainError> {
    let (mut epoch_loss, mut epoch_w) = (0.0f64, 0.0f64);
    let mut xb: Vec<f32> = Vec::with_capacity(d.batch_size * d.d_in);
    let mut tb: Vec<f32> = Vec::with_capacity(d.batch_size * 2);
    for (b, chunk) in order.chunks(d.batch_size).enumerate() {
        let n = chunk.len();
        xb.clear();
        tb.clear();
        let wsum = fill_batch(
            chunk, d.feats, d.labels, d.d_in, d.n_out, d.w_slow, &mut xb, &mut tb,
        );
        let loss = batch_loss(&net, &xb, &tb, n, d.d_in, d.n_out, wsum, device);
        let loss_value = f64::from(loss.clone().into_scalar::<f32>());
        if !loss_value.is_finite() {
            return Err(TrainError::Diverged {
                epoch,
                loss: loss_value,
            });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(lr, net, grads);
        epoch_loss += loss_value * wsum;
        epoch_w += wsum;
        progress(Progress::Batch {
            epoch,
            batch: b + 1,
            batches: d.batches,
            loss: loss_value,
        });
    }
    Ok((net, epoch_loss, epoch_w))
}

/// What [`fit`] leaves: the best epoch's layers and the epochs' record.
struct Fitted {
    layers: Vec<Layer>,
    best_epoch: usize,
    history: Vec<EpochStats>,
    stopped_early: bool,
}

/// Trains the network: seeded initialisation, then epochs of shuffled
/// batches, each followed by validation; keeps the best epoch's weights and
/// stops once `cfg.patience` epochs have not improved on it.
#[allow(clippy::too_many_arguments)]
fn fit(
    cfg: &TrainConfig,
    widths: &[usize],
    data: &Batches<'_>,
    train_idx: &[usize],
    val_x: &[f32],
    val_y: &[bool],
    started: Instant,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, TrainError> {
    // ---- network and optimiser ----
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    // Nothing below draws from burn's RNG; seed it anyway so that any future
    // use stays reproducible.
    device.seed(cfg.seed);
    let mut init_rng = stream_rng(cfg.seed, 2);
    let mut net = Net::init(widths, &mut init_rng, &device);
    let mut optim = AdamConfig::new().init();

    let mut shuffle_rng = stream_rng(cfg.seed, 3);
    let mut order = train_idx.to_vec();
    let mut history = Vec::new();
    let mut best: Option<(f64, usize, Vec<Layer>)> = None;
    let mut since_best = 0usize;
    let mut stopped_early = false;

    for epoch in 1..=cfg.max_epochs {
        shuffle_rng.shuffle(&mut order);
        let (next, epoch_loss, epoch_w) = train_epoch(
            net,
            &mut optim,
            &order,
            data,
            epoch,
            cfg.learning_rate,
            &device,
            progress,
        )?;
        net = next;
        let outputs = validation_outputs(&net, val_x, data.d_in, data.n_out, &plain)?;
        let vs = val_stats(&outputs, data.n_out, val_y, data.w_slow);
        if !vs.loss.is_finite() {
            return Err(TrainError::Diverged {
                epoch,
                loss: vs.loss,
            });
        }
        let improved = best
            .as_ref()
            .is_none_or(|(b, _, _)| vs.loss < b - cfg.min_delta);
        if improved {
            best = Some((vs.loss, epoch, net.to_layers()?));
            since_best = 0;
        } else {
            since_best += 1;
        }
        let stats = EpochStats {
            epoch,
            train_loss: if epoch_w > 0.0 {
                epoch_loss / epoch_w
            } else {
                0.0
            },
            val_loss: vs.loss,
            val_accuracy: vs.accuracy,
            val_false_submit_rate: vs.false_submit_rate,
            val_false_revoke_rate: vs.false_revoke_rate,
            improved,
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        history.push(stats);
        progress(Progress::Epoch(stats));
        if since_best >= cfg.patience.max(1) && epoch < cfg.max_epochs {
            stopped_early = true;
            let best_epoch = best.as_ref().map_or(epoch, |b| b.1);
            progress(Progress::EarlyStopped { epoch, best_epoch });
            break;
        }
    }

    let (_, best_epoch, layers) = match best {
        Some(b) => b,
        None => (f64::NAN, 0, net.to_layers()?),
    };
    Ok(Fitted {
        layers,
        best_epoch,
        history,
        stopped_early,
    })
}

/// How the labels were made, for the report and the model's metadata.
fn label_rule_text(
    cfg: &TrainConfig,
    threshold: &Threshold,
    period_dropped: Option<f64>,
) -> String {
    let rule = if threshold.fallback {
        format!("{} (no knee: p97 fallback)", cfg.label)
    } else {
        cfg.label.to_string()
    };
    match (cfg.period, period_dropped) {
        (Some(p), Some(share)) => format!(
            "{rule} (per read: {p} would mark {:.0}% of reads slow)",
            share * 100.0
        ),
        (Some(p), None) => format!("{rule}, {p}"),
        (None, _) => rule,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use augur_feature_store::{Completed, HISTORY_LEN, HistorySnapshot};

    /// Reads whose latency is high iff the recent latencies are high.
    pub(crate) fn separable(n: usize, seed: u64) -> Vec<TrainingRecord> {
        let mut rng = stream_rng(seed, 99);
        (0..n)
            .map(|i| {
                let slow = rng.next_f64() < 0.1;
                let base = if slow { 2000 } else { 100 };
                let spread = if slow { 3000.0 } else { 400.0 };
                let mut recent = [Completed::default(); HISTORY_LEN];
                for c in &mut recent {
                    *c = Completed {
                        latency_us: base + (rng.next_f64() * spread) as u32,
                        pending_pages_at_issue: (rng.next_f64() * 20.0) as u32,
                        pending_ios_at_issue: (rng.next_f64() * 5.0) as u32,
                        size_bytes: 4096,
                    };
                }
                TrainingRecord {
                    time_ns: i as u64 * 1000,
                    replica: (i % 2) as u16,
                    op: if i % 7 == 3 { Op::Write } else { Op::Read },
                    size_bytes: 4096,
                    offset: 0,
                    latency_us: if slow {
                        3000 + (rng.next_f64() * 2000.0) as u32
                    } else {
                        80 + (rng.next_f64() * 200.0) as u32
                    },
                    features: HistorySnapshot {
                        pending_pages: (rng.next_f64() * 30.0) as u32,
                        pending_ios: (rng.next_f64() * 8.0) as u32,
                        recent,
                        len: HISTORY_LEN as u8,
                        ..HistorySnapshot::default()
                    },
                }
            })
            .collect()
    }

    fn small_cfg(arch: Arch, seed: u64) -> TrainConfig {
        TrainConfig {
            arch,
            max_epochs: 3,
            batch_size: 64,
            seed,
            date: Some("2026-01-01".to_string()),
            ..TrainConfig::default()
        }
    }

    #[test]
    fn arch_parsing_and_shapes() {
        for a in Arch::ALL {
            assert_eq!(Arch::parse(a.name()), Some(a));
        }
        assert_eq!(Arch::parse("+2"), Some(Arch::Deep2));
        assert_eq!(Arch::parse("nope"), None);
        assert_eq!(Arch::Base.describe(), "base (31-256-2)");
        assert_eq!(Arch::Heimdall.describe(), "heimdall (12-128-16-1)");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_767_225_599), "2025-12-31");
        assert_eq!(utc_date_today().len(), 10);
    }

    #[test]
    fn same_seed_same_weights_other_seed_differs() {
        let recs = separable(600, 1);
        let run = |seed| {
            train(&recs, &small_cfg(Arch::Base, seed), &mut |_| {})
                .expect("trains")
                .0
        };
        let (a, b, c) = (run(7), run(7), run(8));
        assert_eq!(
            a.layers(),
            b.layers(),
            "same seed must give identical weights"
        );
        assert_eq!(a.meta(), b.meta());
        assert_eq!(
            a.to_bytes(),
            b.to_bytes(),
            "model files must be byte-identical"
        );
        assert_ne!(a.layers(), c.layers());
    }

    #[test]
    fn meta_and_report_are_filled() {
        let recs = separable(500, 2);
        let mut events = Vec::new();
        let cfg = TrainConfig {
            data_description: "synthetic".to_string(),
            replicas: ReplicaSelection::Only(1),
            ..small_cfg(Arch::Deep1, 3)
        };
        let (model, report) = train(&recs, &cfg, &mut |p| events.push(p)).expect("trains");
        let m = model.meta();
        assert_eq!(m.arch, "deep1");
        assert_eq!(m.seed, 3);
        assert_eq!(m.date, "2026-01-01");
        assert_eq!(m.label_rule, "inflection");
        assert!(m.data.starts_with("synthetic; "));
        assert_eq!(m.threshold_us, report.label.threshold_us);
        for key in [
            "val_accuracy_f32",
            "val_accuracy_int",
            "val_false_submit_rate_f32",
            "val_false_revoke_rate_int",
        ] {
            assert!(m.metrics.iter().any(|(k, _)| k == key), "missing {key}");
        }
        assert_eq!(model.layers().len(), 3);
        assert_eq!(model.layers()[0].inputs, 31);
        assert_eq!(model.layers()[2].outputs, 2);
        let replica1 = recs
            .iter()
            .filter(|r| r.replica == 1 && r.op == Op::Read)
            .count();
        assert_eq!(report.reads, replica1);
        assert_eq!(report.train_samples + report.validation_samples, replica1);
        assert!(matches!(events[0], Progress::Prepared { .. }));
        let epochs = events
            .iter()
            .filter(|e| matches!(e, Progress::Epoch(_)))
            .count();
        assert_eq!(epochs, report.epochs_run);
        assert!(
            report
                .render_text()
                .contains("deep1 (31-256-256-2, linnos features)")
        );
    }

    #[test]
    fn extended_inputs_train_a_linnos_ext_model() {
        let mut recs = separable(800, 6);
        // Make the extra inputs carry the signal too.
        for r in &mut recs {
            let slow = r.latency_us > 1000;
            r.features.read_max_us = if slow { 3000 } else { 300 };
            r.features.oldest_pending_us = if slow { 900 } else { 100 };
        }
        let cfg = TrainConfig {
            extended: true,
            max_epochs: 6,
            ..small_cfg(Arch::Base, 2)
        };
        assert_eq!(cfg.widths(), vec![39, 256, 2]);
        let (model, report) = train(&recs, &cfg, &mut |_| {}).expect("trains");
        assert_eq!(model.feature_set(), FeatureSet::LinnOsExt);
        assert_eq!(model.layers()[0].inputs, 39);
        assert_eq!(model.meta().arch, "base+ext");
        let acc = report.validation.int.accuracy.unwrap_or(0.0);
        assert!(acc > 0.95, "extended validation accuracy {acc}");
        assert!(
            report
                .render_text()
                .contains("base (39-256-2, linnos-ext features)")
        );

        let e = TrainConfig {
            extended: true,
            ..small_cfg(Arch::Heimdall, 1)
        }
        .validate()
        .expect_err("heimdall has no extended inputs");
        assert!(e.to_string().contains("heimdall"), "{e}");
    }

    /// One replica, a read every 100 µs for 400 ms; from 100 to 200 ms it is
    /// degraded: its read maximum says so, and one read in eight takes 3 ms.
    fn degraded_period() -> Vec<TrainingRecord> {
        (0..4000u64)
            .map(|k| {
                let degraded = (1000..2000).contains(&k);
                let slow = degraded && k % 8 == 0;
                TrainingRecord {
                    time_ns: k * 100_000,
                    replica: 0,
                    op: Op::Read,
                    size_bytes: 4096,
                    offset: 0,
                    latency_us: if slow { 3000 } else { 100 },
                    features: HistorySnapshot {
                        read_max_us: if degraded { 3000 } else { 200 },
                        oldest_pending_us: 100,
                        ..HistorySnapshot::default()
                    },
                }
            })
            .collect()
    }

    /// A device in a slow period nearly all the time: one read in eight is
    /// slow throughout, so ±2 ms period labels would mark every read slow.
    #[test]
    fn period_labels_that_would_mark_most_reads_slow_are_dropped() {
        let recs: Vec<TrainingRecord> = (0..4000u64)
            .map(|k| TrainingRecord {
                time_ns: k * 100_000,
                replica: 0,
                op: Op::Read,
                size_bytes: 4096,
                offset: 0,
                latency_us: if k % 8 == 0 { 3000 } else { 100 },
                features: HistorySnapshot {
                    read_max_us: 3000,
                    oldest_pending_us: 100,
                    ..HistorySnapshot::default()
                },
            })
            .collect();
        let cfg = TrainConfig {
            extended: true,
            label: LabelRule::Percentile(80.0),
            period: Some(PeriodRule {
                window_us: 2000,
                min_slow_fraction: 0.1,
            }),
            ..small_cfg(Arch::Base, 5)
        };
        let (model, report) = train(&recs, &cfg, &mut |_| {}).expect("trains");
        let share = report.period_labels_dropped.expect("period labels dropped");
        assert!(share > MAX_PERIOD_SLOW_SHARE, "{share}");
        // Trained on per-read labels: an eighth slow, and no period metrics.
        assert!((report.label.slow_fraction - 0.125).abs() < 0.01);
        assert!(report.validation_period.is_none());
        assert!(
            report.label_rule.contains("per read"),
            "{}",
            report.label_rule
        );
        // ...so the model does not call every read slow.
        let snap = recs[1].features;
        assert!(model.score_int(&snap, ReadInfo { size_bytes: 4096 }) <= 0);
    }

    #[test]
    fn period_labels_teach_avoiding_a_degraded_period() {
        let recs = degraded_period();
        let cfg = TrainConfig {
            extended: true,
            label: LabelRule::Percentile(95.0),
            max_epochs: 20,
            patience: 20,
            learning_rate: 3e-3,
            ..small_cfg(Arch::Base, 5)
        };
        let probe = |m: &Model, read_max_us| {
            let snap = HistorySnapshot {
                read_max_us,
                oldest_pending_us: 100,
                ..HistorySnapshot::default()
            };
            m.score_int(&snap, ReadInfo { size_bytes: 4096 })
        };
        // Per-read labels: 1 in 8 slow is below the 1 in 6 at which a 5x
        // false-submit weight makes "slow" pay, so the period reads fast.
        let (plain, _) = train(&recs, &cfg, &mut |_| {}).expect("trains");
        assert!(probe(&plain, 3000) <= 0, "per-read labels predict fast");
        // Period labels (±2 ms, 21 reads of which 2-3 slow >= 10%): the
        // whole degraded period is slow, the rest is fast.
        let cfg = TrainConfig {
            period: Some(PeriodRule {
                window_us: 2000,
                min_slow_fraction: 0.1,
            }),
            ..cfg
        };
        let (model, report) = train(&recs, &cfg, &mut |_| {}).expect("trains");
        assert!(probe(&model, 3000) > 0, "period labels predict slow");
        assert!(probe(&model, 200) <= 0);
        assert!(
            report.label_rule.contains("period ±2000 µs"),
            "{}",
            report.label_rule
        );
        assert!(model.meta().label_rule.contains("period"));
        let v = report
            .validation_period
            .as_ref()
            .expect("period validation");
        assert!(v.slow_reads > report.validation.slow_reads);
        assert!(v.int.accuracy.unwrap_or(0.0) > 0.99, "{}", v.render_text());
        assert!(
            report
                .render_text()
                .contains("against the period labels trained on")
        );
    }

    #[test]
    fn heimdall_trains_with_a_scaler() {
        let recs = separable(800, 4);
        let cfg = TrainConfig {
            max_epochs: 8,
            learning_rate: 3e-3,
            ..small_cfg(Arch::Heimdall, 5)
        };
        let (model, report) = train(&recs, &cfg, &mut |_| {}).expect("trains");
        assert_eq!(model.feature_set(), FeatureSet::Heimdall);
        assert_eq!(model.layers().last().map(|l| l.outputs), Some(1));
        let acc = report.validation.float.accuracy.unwrap_or(0.0);
        assert!(acc > 0.9, "heimdall validation accuracy {acc}");
    }

    #[test]
    fn errors_name_the_problem() {
        let recs = separable(100, 5);
        let cfg = TrainConfig {
            replicas: ReplicaSelection::Only(9),
            ..small_cfg(Arch::Base, 1)
        };
        let e = train(&recs, &cfg, &mut |_| {}).expect_err("no reads");
        assert!(e.to_string().contains("replica 9"), "{e}");

        let mut flat = separable(100, 5);
        for r in &mut flat {
            r.latency_us = 100;
        }
        let e = train(&flat, &small_cfg(Arch::Base, 1), &mut |_| {}).expect_err("one class");
        assert!(
            matches!(e, TrainError::TooFewOfAClass { slow: 0, .. }),
            "{e}"
        );

        let cfg = TrainConfig {
            validation_fraction: 1.0,
            ..TrainConfig::default()
        };
        let e = train(&recs, &cfg, &mut |_| {}).expect_err("bad config");
        assert!(e.to_string().contains("validation fraction"), "{e}");
    }

    /// Timing on 200k noisy records (not separable); run with
    /// `cargo test -p augur-predictor --release -- --ignored --nocapture train_200k`.
    #[test]
    #[ignore = "timing run, ~minutes"]
    fn train_200k_timing() {
        let mut recs = separable(200_000, 9);
        // Make it harder: 3% of labels disagree with the history.
        let mut rng = stream_rng(9, 5);
        for r in &mut recs {
            if rng.next_f64() < 0.03 {
                r.latency_us = if r.latency_us > 1000 { 150 } else { 4000 };
            }
        }
        for arch in Arch::ALL {
            let cfg = TrainConfig {
                arch,
                max_epochs: 10,
                patience: 3,
                date: Some("2026-01-01".to_string()),
                ..TrainConfig::default()
            };
            let t = Instant::now();
            let (_, report) = train(&recs, &cfg, &mut |p| {
                if let Progress::Epoch(s) = p {
                    eprintln!(
                        "  {} epoch {:2}: train loss {:.4} val loss {:.4} acc {:.4} ({:.1} s)",
                        arch.name(),
                        s.epoch,
                        s.train_loss,
                        s.val_loss,
                        s.val_accuracy,
                        s.elapsed_s
                    );
                }
            })
            .expect("trains");
            let secs = t.elapsed().as_secs_f64();
            eprintln!(
                "{}: {} epochs in {secs:.1} s ({:.2} s/epoch)\n{}",
                arch.describe(),
                report.epochs_run,
                secs / report.epochs_run as f64,
                report.render_text()
            );
        }
    }

    #[test]
    fn rng_shuffle_is_a_permutation() {
        let mut r = stream_rng(1, 1);
        let mut v: Vec<usize> = (0..1000).collect();
        r.shuffle(&mut v);
        let mut s = v.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_ne!(v, s);
    }
}

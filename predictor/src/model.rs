//! The model: f32 layers, their quantized integer form, training metadata, and
//! the self-describing binary model file.
//!
//! # Model file format, version 1
//!
//! All integers are little-endian; `f32`/`f64` are IEEE-754 little-endian.
//! There is no padding. `str` is a `u32` byte length followed by that many
//! bytes of UTF-8.
//!
//! | offset | size | field                                                                 |
//! |--------|------|-----------------------------------------------------------------------|
//! | 0      | 8    | magic `b"AUGURMDL"`                                                   |
//! | 8      | 2    | `u16` format version = 1                                              |
//! | 10     | 1    | `u8` feature set: 0 = LinnOS (31 inputs), 1 = Heimdall (12), 3 = linnos-ext (39), 4 = linnos-write (47); 2 (an earlier linnos-ext) is refused |
//! | 11     | 1    | `u8` number of layers `L`, 1..=[`MAX_LAYERS`]                          |
//! | 12     | 4    | `u32` number of model inputs (must equal the feature set's)           |
//! | 16     | 4    | `u32` flags: bit 0 = MinMax scaler present (set iff Heimdall); other bits 0 |
//! | 20     | ...  | scaler, if flag bit 0: `n_inputs` x `f32` min, then `n_inputs` x `f32` max |
//!
//! Then `L` layers, in order from the input; layer `k` (1-based) is:
//!
//! | size              | field                                                         |
//! |-------------------|---------------------------------------------------------------|
//! | 4                 | `u32` inputs `n` (layer 1: the model inputs; else the previous layer's outputs), 1..=[`MAX_WIDTH`] |
//! | 4                 | `u32` outputs `m`, 1..=[`MAX_WIDTH`]; the last layer has 1 or 2 |
//! | 1                 | `u8` activation: 1 = ReLU (every hidden layer), 0 = none (the last layer) |
//! | 1                 | `i8` weight exponent `e_k`, in [`MIN_WEIGHT_EXP`]..=[`MAX_WEIGHT_EXP`] |
//! | 1                 | `u8` output shift `r_k`, 0..=[`MAX_OUT_SHIFT`]; 0 for the last layer |
//! | 1                 | `u8` reserved, 0                                              |
//! | 4·m·n             | `f32` weights, row-major `[m][n]` (row = one output)           |
//! | 4·m               | `f32` bias                                                    |
//! | 2·m·n             | `i16` quantized weights `Wq`, row-major `[m][n]`, each in -32767..=32767 |
//! | 8·m               | `i64` quantized bias `bq`                                      |
//!
//! Then the training metadata:
//!
//! | size | field                                                              |
//! |------|--------------------------------------------------------------------|
//! | str  | data the model was trained on (<= [`MAX_STR`] bytes)                |
//! | str  | date                                                               |
//! | 8    | `u64` seed                                                         |
//! | str  | architecture (e.g. `base`, `+1`, `+2`, `heimdall`)                 |
//! | str  | label rule (e.g. `inflection`, `p95`)                              |
//! | 4    | `u32` slow threshold, µs                                           |
//! | 4    | `u32` number of metrics, <= [`MAX_METRICS`]                         |
//! | ...  | per metric: `str` name (<= 256 bytes), `f64` value                  |
//!
//! and last a `u32` CRC-32 (IEEE 802.3 polynomial, as `crc32fast`) of every
//! byte before it. Nothing may follow the checksum.
//!
//! # Validation
//!
//! [`Model::from_bytes`] checks, in this order: magic; version; header fields
//! and sizes (every count is bounded before anything is allocated, and every
//! section is checked against the bytes left, so a hostile file cannot make
//! the parser allocate more than a small multiple of its own size); shape
//! chaining and activations; no trailing bytes; the checksum; then the
//! semantics: finite f32 weights, bias and scaler (`min <= max`), exponents and
//! shifts in range, and every quantized value within rounding (0.5) of its f32
//! counterpart times its scale, and within the bounds that the integer path's
//! overflow proof needs (see [`crate::infer`]). The first problem found is
//! returned as a [`ModelError`] whose message names it.
//!
//! # Quantization (per-layer power-of-two scales)
//!
//! With `a_0` the input exponent of the feature set (0 for LinnOS digits, 10
//! for Heimdall fixed point), layer `k` has input exponent `a_{k-1}`, weight
//! exponent `e_k`, output shift `r_k`, and output exponent
//! `a_k = a_{k-1} + e_k - r_k`:
//! `Wq = round(W * 2^e_k)` and `bq = round(b * 2^(a_{k-1} + e_k))`, rounding
//! half away from zero. [`Model::from_layers`] picks the largest `e_k` with
//! `max |Wq| <= 32767` and the bias within its bound, and for hidden layers
//! `r_k = max(0, a_{k-1} + e_k - 16)` so hidden activations carry 16
//! fractional bits. (Hidden layers after the first multiply a copy of their inputs
//! rescaled per input to 16 bits and scale the dot product back, step 2b in
//! [`crate::infer`]; the scale of their accumulators is still
//! `2^(a_{k-1} + e_k)`.) See [`crate::infer`] for the integer forward pass.

use std::fmt;
use std::path::Path;

use augur_rng::Rng;

use crate::features::{FeatureSet, IntScaler, MinMax};
use crate::infer::Packed;

/// Magic bytes at the start of every model file.
pub const MAGIC: [u8; 8] = *b"AUGURMDL";
/// The model file format version this build reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Most layers a model may have.
pub const MAX_LAYERS: usize = 8;
/// Widest layer (inputs or outputs) a model may have.
pub const MAX_WIDTH: usize = 1024;
/// Longest metadata string, bytes.
pub const MAX_STR: usize = 4096;
/// Longest metric name, bytes.
pub const MAX_METRIC_NAME: usize = 256;
/// Most metrics in the metadata.
pub const MAX_METRICS: usize = 64;
/// Largest magnitude of a quantized weight.
pub const W_QMAX: i32 = 32767;
/// Largest magnitude of a quantized bias of layer 1 (the i32-accumulated layer).
pub const B1_QMAX: i64 = 1 << 30;
/// Largest magnitude of a quantized bias of layers 2 and later.
pub const B_QMAX: i64 = 1 << 40;
/// Smallest weight exponent.
pub const MIN_WEIGHT_EXP: i32 = -32;
/// Largest weight exponent.
pub const MAX_WEIGHT_EXP: i32 = 40;
/// Largest output shift of a hidden layer.
pub const MAX_OUT_SHIFT: u32 = 62;
/// Fractional bits [`Model::from_layers`] gives hidden activations.
pub const ACT_EXP: i32 = 16;
/// Bound on the magnitude of every activation exponent `a_k`.
pub const MAX_ACT_EXP: i32 = 64;

/// Activation function of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// max(x, 0). Every hidden layer.
    Relu,
    /// Identity. The output layer.
    None,
}

impl Activation {
    fn code(self) -> u8 {
        match self {
            Activation::None => 0,
            Activation::Relu => 1,
        }
    }
}

/// One dense f32 layer as trained.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// Number of inputs.
    pub inputs: usize,
    /// Number of outputs.
    pub outputs: usize,
    /// Row-major `[outputs][inputs]`.
    pub weights: Vec<f32>,
    /// One per output.
    pub bias: Vec<f32>,
    /// Applied to the outputs.
    pub activation: Activation,
}

/// A layer in integer form (see the module docs and [`crate::infer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantLayer {
    /// Number of inputs.
    pub inputs: usize,
    /// Number of outputs.
    pub outputs: usize,
    /// Applied to the outputs (ReLU for hidden layers, none for the last).
    pub activation: Activation,
    /// `a_{k-1}`: integer input `x` of this layer stands for `x / 2^in_exp`.
    pub in_exp: i32,
    /// `e_k`: `Wq = round(W * 2^weight_exp)`.
    pub weight_exp: i32,
    /// `r_k`: right shift (with rounding) applied after the ReLU.
    pub out_shift: u32,
    /// Quantized weights, row-major `[outputs][inputs]`, each in -32767..=32767.
    pub weights: Vec<i16>,
    /// Quantized bias `round(b * 2^(in_exp + weight_exp))`.
    pub bias: Vec<i64>,
}

impl QuantLayer {
    /// `a_k`: exponent of this layer's integer outputs.
    pub fn out_exp(&self) -> i32 {
        self.in_exp + self.weight_exp - self.out_shift as i32
    }
}

/// How a model was made.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainingMeta {
    /// Training data (files, profiles, or a description).
    pub data: String,
    /// When it was trained.
    pub date: String,
    /// RNG seed of the training run.
    pub seed: u64,
    /// Architecture name (`base`, `+1`, `+2`, `heimdall`, ...).
    pub arch: String,
    /// How labels were made (`inflection`, `p95`, ...).
    pub label_rule: String,
    /// The slow threshold the labels used, µs.
    pub threshold_us: u32,
    /// Named metrics (validation accuracy etc.).
    pub metrics: Vec<(String, f64)>,
}

/// Why a model could not be built, loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing the file failed.
    #[error("model file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not start with [`MAGIC`].
    #[error("not an Augur model file (bad magic {found:02x?}, expected \"AUGURMDL\")")]
    BadMagic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// The format version is not [`FORMAT_VERSION`].
    #[error("unsupported format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The file ends before a section it announces.
    #[error("model file truncated: {what} need {need} bytes, {left} left")]
    Truncated {
        /// The section.
        what: String,
        /// Bytes the section needs.
        need: usize,
        /// Bytes left in the file.
        left: usize,
    },
    /// Bytes after the checksum.
    #[error("model file has {0} trailing bytes after the checksum")]
    TrailingBytes(usize),
    /// The CRC-32 does not match.
    #[error("checksum mismatch (file says {stored:#010x}, contents give {computed:#010x})")]
    ChecksumMismatch {
        /// Checksum stored in the file.
        stored: u32,
        /// Checksum of the contents.
        computed: u32,
    },
    /// A count or size beyond the format's limits.
    #[error("{what} is {value}, more than the limit {max}")]
    TooLarge {
        /// What is too large.
        what: String,
        /// Its value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// Layer shapes do not chain, or do not fit the feature set.
    #[error("bad shape: {0}")]
    Shape(String),
    /// A quantized value disagrees with its f32 value or exceeds its bound.
    #[error("bad quantization: {0}")]
    Quantization(String),
    /// Anything else that is wrong (non-finite weight, unknown code, bad UTF-8...).
    #[error("invalid model: {0}")]
    Invalid(String),
    /// No default model was shipped with this build.
    #[error(
        "no default model is built into this binary (predictor/models/default.augm missing at build time)"
    )]
    NoDefaultModel,
}

/// A validated model: f32 layers, their integer form, and the packed
/// weights the fast path runs on. Immutable once built; share it with `Arc`.
#[derive(Clone)]
pub struct Model {
    pub(crate) fs: FeatureSet,
    pub(crate) layers: Vec<Layer>,
    pub(crate) quant: Vec<QuantLayer>,
    pub(crate) scaler: Option<MinMax>,
    pub(crate) int_scaler: Option<IntScaler>,
    pub(crate) meta: TrainingMeta,
    pub(crate) packed: Packed,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("feature_set", &self.fs)
            .field("shape", &self.shape_string())
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Model {
    fn eq(&self, o: &Self) -> bool {
        self.fs == o.fs
            && self.layers == o.layers
            && self.quant == o.quant
            && self.scaler == o.scaler
            && self.meta == o.meta
    }
}

fn shape_err(msg: String) -> ModelError {
    ModelError::Shape(msg)
}

/// Round half away from zero (f64::round), the rounding of every quantized value.
fn qround(v: f64) -> f64 {
    v.round()
}

/// Checks that do not depend on quantization: shapes, activations, finiteness, scaler.
fn check_structure(
    fs: FeatureSet,
    layers: &[Layer],
    scaler: Option<&MinMax>,
) -> Result<(), ModelError> {
    if layers.is_empty() {
        return Err(shape_err("a model needs at least one layer".into()));
    }
    if layers.len() > MAX_LAYERS {
        return Err(ModelError::TooLarge {
            what: "number of layers".into(),
            value: layers.len() as u64,
            max: MAX_LAYERS as u64,
        });
    }
    let mut prev = fs.n_inputs();
    let last = layers.len() - 1;
    for (k, l) in layers.iter().enumerate() {
        let n = k + 1;
        if l.inputs != prev {
            return Err(shape_err(if k == 0 {
                format!(
                    "layer 1 takes {} inputs but feature set {} has {}",
                    l.inputs,
                    fs.name(),
                    prev
                )
            } else {
                format!(
                    "layer {n} takes {} inputs but layer {k} has {prev} outputs",
                    l.inputs
                )
            }));
        }
        for (what, v) in [("inputs", l.inputs), ("outputs", l.outputs)] {
            if v == 0 {
                return Err(shape_err(format!("layer {n} has 0 {what}")));
            }
            if v > MAX_WIDTH {
                return Err(ModelError::TooLarge {
                    what: format!("layer {n} {what}"),
                    value: v as u64,
                    max: MAX_WIDTH as u64,
                });
            }
        }
        if l.weights.len() != l.inputs * l.outputs {
            return Err(shape_err(format!(
                "layer {n} has {} weights, {}x{} needs {}",
                l.weights.len(),
                l.outputs,
                l.inputs,
                l.inputs * l.outputs
            )));
        }
        if l.bias.len() != l.outputs {
            return Err(shape_err(format!(
                "layer {n} has {} biases for {} outputs",
                l.bias.len(),
                l.outputs
            )));
        }
        if k == last {
            if l.outputs > 2 {
                return Err(shape_err(format!(
                    "the last layer (layer {n}) has {} outputs; a model outputs 1 or 2",
                    l.outputs
                )));
            }
            if l.activation != Activation::None {
                return Err(shape_err(format!(
                    "the last layer (layer {n}) must have no activation"
                )));
            }
        } else if l.activation != Activation::Relu {
            return Err(shape_err(format!("hidden layer {n} must use ReLU")));
        }
        if let Some(i) = l.weights.iter().position(|w| !w.is_finite()) {
            return Err(ModelError::Invalid(format!(
                "layer {n} weight {i} is not finite ({})",
                l.weights[i]
            )));
        }
        if let Some(i) = l.bias.iter().position(|w| !w.is_finite()) {
            return Err(ModelError::Invalid(format!(
                "layer {n} bias {i} is not finite ({})",
                l.bias[i]
            )));
        }
        prev = l.outputs;
    }
    match (fs, scaler) {
        (FeatureSet::LinnOs | FeatureSet::LinnOsExt | FeatureSet::LinnOsWrite, Some(_)) => {
            return Err(ModelError::Invalid(
                "a LinnOS model has no MinMax scaler".into(),
            ));
        }
        (FeatureSet::Heimdall, None) => {
            return Err(ModelError::Invalid(
                "a Heimdall model needs a MinMax scaler".into(),
            ));
        }
        (FeatureSet::Heimdall, Some(s)) => {
            if s.min.len() != fs.n_inputs() || s.max.len() != fs.n_inputs() {
                return Err(shape_err(format!(
                    "MinMax scaler has {}/{} entries, the feature set has {} inputs",
                    s.min.len(),
                    s.max.len(),
                    fs.n_inputs()
                )));
            }
            for (i, (&lo, &hi)) in s.min.iter().zip(&s.max).enumerate() {
                if !lo.is_finite() || !hi.is_finite() || lo > hi {
                    return Err(ModelError::Invalid(format!(
                        "MinMax scaler input {i}: min {lo}, max {hi} (need finite, min <= max)"
                    )));
                }
            }
        }
        (FeatureSet::LinnOs | FeatureSet::LinnOsExt | FeatureSet::LinnOsWrite, None) => {}
    }
    Ok(())
}

/// Checks a quantized layer against its f32 layer and the integer bounds.
fn check_quant(k: usize, l: &Layer, q: &QuantLayer, last: bool) -> Result<(), ModelError> {
    let n = k + 1;
    if !(MIN_WEIGHT_EXP..=MAX_WEIGHT_EXP).contains(&q.weight_exp) {
        return Err(ModelError::Quantization(format!(
            "layer {n} weight exponent {} outside {MIN_WEIGHT_EXP}..={MAX_WEIGHT_EXP}",
            q.weight_exp
        )));
    }
    if last && q.out_shift != 0 {
        return Err(ModelError::Quantization(format!(
            "the last layer (layer {n}) has output shift {} (must be 0)",
            q.out_shift
        )));
    }
    if q.out_shift > MAX_OUT_SHIFT {
        return Err(ModelError::Quantization(format!(
            "layer {n} output shift {} > {MAX_OUT_SHIFT}",
            q.out_shift
        )));
    }
    if q.out_exp().abs() > MAX_ACT_EXP {
        return Err(ModelError::Quantization(format!(
            "layer {n} output exponent {} outside -{MAX_ACT_EXP}..={MAX_ACT_EXP}",
            q.out_exp()
        )));
    }
    if q.weights.len() != l.weights.len() || q.bias.len() != l.bias.len() {
        return Err(shape_err(format!(
            "layer {n} quantized sizes differ from the f32 ones"
        )));
    }
    let ws = (q.weight_exp as f64).exp2();
    for (i, (&wq, &w)) in q.weights.iter().zip(&l.weights).enumerate() {
        let wq = wq as i32;
        if wq.abs() > W_QMAX {
            return Err(ModelError::Quantization(format!(
                "layer {n} quantized weight {i} is {wq}, outside -{W_QMAX}..={W_QMAX}"
            )));
        }
        let exact = w as f64 * ws;
        if (wq as f64 - exact).abs() > 0.5 {
            return Err(ModelError::Quantization(format!(
                "layer {n} quantized weight {i} is {wq}, but {w} x 2^{} = {exact}",
                q.weight_exp
            )));
        }
    }
    let bmax = if k == 0 { B1_QMAX } else { B_QMAX };
    let bs = ((q.in_exp + q.weight_exp) as f64).exp2();
    for (i, (&bq, &b)) in q.bias.iter().zip(&l.bias).enumerate() {
        if bq.unsigned_abs() > bmax as u64 {
            return Err(ModelError::Quantization(format!(
                "layer {n} quantized bias {i} is {bq}, magnitude above {bmax}"
            )));
        }
        let exact = b as f64 * bs;
        if (bq as f64 - exact).abs() > 0.5 {
            return Err(ModelError::Quantization(format!(
                "layer {n} quantized bias {i} is {bq}, but {b} x 2^{} = {exact}",
                q.in_exp + q.weight_exp
            )));
        }
    }
    Ok(())
}

/// Quantize one layer with exponent `e` (no bound checks).
fn quantize_with(l: &Layer, in_exp: i32, e: i32, out_shift: u32) -> QuantLayer {
    let ws = (e as f64).exp2();
    let bs = ((in_exp + e) as f64).exp2();
    QuantLayer {
        inputs: l.inputs,
        outputs: l.outputs,
        activation: l.activation,
        in_exp,
        weight_exp: e,
        out_shift,
        weights: l
            .weights
            .iter()
            .map(|&w| qround(w as f64 * ws) as i16)
            .collect(),
        bias: l
            .bias
            .iter()
            .map(|&b| qround(b as f64 * bs) as i64)
            .collect(),
    }
}

/// Choose exponents and quantize every layer (see the module docs).
fn quantize(fs: FeatureSet, layers: &[Layer]) -> Result<Vec<QuantLayer>, ModelError> {
    let mut a = fs.input_exp();
    let mut out = Vec::with_capacity(layers.len());
    let last = layers.len() - 1;
    for (k, l) in layers.iter().enumerate() {
        let wmax = l.weights.iter().fold(0f64, |m, &w| m.max((w as f64).abs()));
        let bmax_f = l.bias.iter().fold(0f64, |m, &b| m.max((b as f64).abs()));
        let bbound = if k == 0 { B1_QMAX } else { B_QMAX } as f64;
        let mut e = MAX_WEIGHT_EXP;
        if wmax > 0.0 {
            e = e.min((W_QMAX as f64 / wmax).log2().floor() as i32 + 1);
        }
        // Walk down to the largest exponent whose rounded values fit.
        loop {
            if e < MIN_WEIGHT_EXP {
                return Err(ModelError::Quantization(format!(
                    "layer {} weights/bias too large to quantize (max |w| {wmax}, max |b| {bmax_f})",
                    k + 1
                )));
            }
            let wfit = qround(wmax * (e as f64).exp2()) <= W_QMAX as f64;
            let bfit = qround(bmax_f * ((a + e) as f64).exp2()) <= bbound;
            if wfit && bfit {
                break;
            }
            e -= 1;
        }
        let r = if k == last {
            0
        } else {
            (a + e - ACT_EXP).clamp(0, MAX_OUT_SHIFT as i32) as u32
        };
        let q = quantize_with(l, a, e, r);
        if q.out_exp().abs() > MAX_ACT_EXP {
            return Err(ModelError::Quantization(format!(
                "layer {} output exponent {} out of range",
                k + 1,
                q.out_exp()
            )));
        }
        a = q.out_exp();
        out.push(q);
    }
    Ok(out)
}

/// Byte writer for the file format.
struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f32s(&mut self, v: &[f32]) {
        for x in v {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
}

/// Reads layer `k` (0-based) of a model file: its header, f32 weights and
/// bias, and their quantized form. `prev` is the width feeding it and
/// `in_exp` the exponent of its integer inputs.
fn read_layer(
    r: &mut R<'_>,
    k: usize,
    prev: usize,
    in_exp: i32,
) -> Result<(Layer, QuantLayer), ModelError> {
    let n = k + 1;
    let hdr = |s: &'static str| move || format!("layer {n} {s}");
    let inputs = r.u32(&hdr("input count"))? as usize;
    let outputs = r.u32(&hdr("output count"))? as usize;
    for (what, v) in [("inputs", inputs), ("outputs", outputs)] {
        if v > MAX_WIDTH {
            return Err(ModelError::TooLarge {
                what: format!("layer {n} {what}"),
                value: v as u64,
                max: MAX_WIDTH as u64,
            });
        }
        if v == 0 {
            return Err(shape_err(format!("layer {n} has 0 {what}")));
        }
    }
    if inputs != prev {
        return Err(shape_err(if k == 0 {
            format!("layer 1 takes {inputs} inputs but the model has {prev}")
        } else {
            format!("layer {n} takes {inputs} inputs but layer {k} has {prev} outputs")
        }));
    }
    let act = match r.u8(&hdr("activation"))? {
        0 => Activation::None,
        1 => Activation::Relu,
        c => {
            return Err(ModelError::Invalid(format!(
                "layer {n} has unknown activation code {c}"
            )));
        }
    };
    let weight_exp = r.u8(&hdr("weight exponent"))? as i8 as i32;
    let out_shift = r.u8(&hdr("output shift"))? as u32;
    let reserved = r.u8(&hdr("reserved byte"))?;
    if reserved != 0 {
        return Err(ModelError::Invalid(format!(
            "layer {n} reserved byte is {reserved}, must be 0"
        )));
    }
    let nw = inputs * outputs; // <= 2^20, no overflow
    let weights = r.f32s(nw, &hdr("weights"))?;
    let bias = r.f32s(outputs, &hdr("bias"))?;
    let qw = r
        .take(nw * 2, &hdr("quantized weights"))?
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let qb = r
        .take(outputs * 8, &hdr("quantized bias"))?
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    let q = QuantLayer {
        inputs,
        outputs,
        activation: act,
        in_exp,
        weight_exp,
        out_shift,
        weights: qw,
        bias: qb,
    };
    let layer = Layer {
        inputs,
        outputs,
        weights,
        bias,
        activation: act,
    };
    Ok((layer, q))
}

/// Reads a model file's training metadata (after the layers).
fn read_meta(r: &mut R<'_>) -> Result<TrainingMeta, ModelError> {
    let data = r.str(MAX_STR, &|| "metadata: data".into())?;
    let date = r.str(MAX_STR, &|| "metadata: date".into())?;
    let seed = r.u64(&|| "metadata: seed".into())?;
    let arch = r.str(MAX_STR, &|| "metadata: arch".into())?;
    let label_rule = r.str(MAX_STR, &|| "metadata: label rule".into())?;
    let threshold_us = r.u32(&|| "metadata: threshold".into())?;
    let n_metrics = r.u32(&|| "metadata: metric count".into())? as usize;
    if n_metrics > MAX_METRICS {
        return Err(ModelError::TooLarge {
            what: "metric count".into(),
            value: n_metrics as u64,
            max: MAX_METRICS as u64,
        });
    }
    let mut metrics = Vec::with_capacity(n_metrics);
    for i in 0..n_metrics {
        let name = r.str(MAX_METRIC_NAME, &|| format!("metadata: metric {i} name"))?;
        let v = r.f64(&|| format!("metadata: metric {i} value"))?;
        metrics.push((name, v));
    }
    Ok(TrainingMeta {
        data,
        date,
        seed,
        arch,
        label_rule,
        threshold_us,
        metrics,
    })
}

/// Bounds-checked byte reader; every read names its section for errors.
struct R<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> R<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], ModelError> {
        if n > self.left() {
            return Err(ModelError::Truncated {
                what: what(),
                need: n,
                left: self.left(),
            });
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], ModelError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, ModelError> {
        Ok(self.arr::<1>(what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16, ModelError> {
        Ok(u16::from_le_bytes(self.arr(what)?))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn f64(&mut self, what: &dyn Fn() -> String) -> Result<f64, ModelError> {
        Ok(f64::from_le_bytes(self.arr(what)?))
    }
    fn f32s(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<Vec<f32>, ModelError> {
        let s = self.take(n * 4, what)?;
        Ok(s.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    fn str(&mut self, max: usize, what: &dyn Fn() -> String) -> Result<String, ModelError> {
        let len = self.u32(&|| format!("{} length", what()))? as usize;
        if len > max {
            return Err(ModelError::TooLarge {
                what: format!("{} length", what()),
                value: len as u64,
                max: max as u64,
            });
        }
        let s = self.take(len, what)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| ModelError::Invalid(format!("{} is not UTF-8", what())))
    }
}

impl Model {
    /// Build from trained f32 layers; validates and quantizes. The last layer
    /// has 2 outputs (LinnOS-style: slow if `out[1] > out[0]`) or 1 output
    /// (Heimdall-style: slow if `out[0] > 0`); hidden layers use ReLU and the
    /// last layer none. `scaler` is required for Heimdall and refused for LinnOS.
    pub fn from_layers(
        fs: FeatureSet,
        layers: Vec<Layer>,
        scaler: Option<MinMax>,
        meta: TrainingMeta,
    ) -> Result<Model, ModelError> {
        check_structure(fs, &layers, scaler.as_ref())?;
        check_meta(&meta)?;
        let quant = quantize(fs, &layers)?;
        let last = layers.len() - 1;
        for (k, (l, q)) in layers.iter().zip(&quant).enumerate() {
            check_quant(k, l, q, k == last)?;
        }
        Ok(Self::assemble(fs, layers, quant, scaler, meta))
    }

    fn assemble(
        fs: FeatureSet,
        layers: Vec<Layer>,
        quant: Vec<QuantLayer>,
        scaler: Option<MinMax>,
        meta: TrainingMeta,
    ) -> Model {
        let packed = Packed::new(&quant);
        let int_scaler = scaler.as_ref().map(MinMax::to_int);
        Model {
            fs,
            layers,
            quant,
            scaler,
            int_scaler,
            meta,
            packed,
        }
    }

    /// Read and validate a model file.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Write the model file (to a temporary name in the same directory, then
    /// renamed over `path`, so a reader never sees half a file). A `path`
    /// that exists and is not a plain file (a symlink, `/dev/null`, a FIFO)
    /// is written through instead: renaming over it would replace it.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let io = |source| ModelError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Ok(m) = std::fs::symlink_metadata(path)
            && !m.file_type().is_file()
        {
            return std::fs::write(path, self.to_bytes()).map_err(io);
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        std::fs::write(&tmp, self.to_bytes()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Serialize in the format described in the module docs.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(self.file_size_hint()));
        w.0.extend_from_slice(&MAGIC);
        w.u16(FORMAT_VERSION);
        w.u8(self.fs.code());
        w.u8(self.layers.len() as u8);
        w.u32(self.fs.n_inputs() as u32);
        w.u32(u32::from(self.scaler.is_some()));
        if let Some(s) = &self.scaler {
            w.f32s(&s.min);
            w.f32s(&s.max);
        }
        for (l, q) in self.layers.iter().zip(&self.quant) {
            w.u32(l.inputs as u32);
            w.u32(l.outputs as u32);
            w.u8(l.activation.code());
            w.u8(q.weight_exp as i8 as u8);
            w.u8(q.out_shift as u8);
            w.u8(0);
            w.f32s(&l.weights);
            w.f32s(&l.bias);
            for &v in &q.weights {
                w.0.extend_from_slice(&v.to_le_bytes());
            }
            for &v in &q.bias {
                w.0.extend_from_slice(&v.to_le_bytes());
            }
        }
        let m = &self.meta;
        w.str(&m.data);
        w.str(&m.date);
        w.u64(m.seed);
        w.str(&m.arch);
        w.str(&m.label_rule);
        w.u32(m.threshold_us);
        w.u32(m.metrics.len() as u32);
        for (name, v) in &m.metrics {
            w.str(name);
            w.0.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&w.0);
        w.u32(crc);
        w.0
    }

    fn file_size_hint(&self) -> usize {
        64 + self
            .layers
            .iter()
            .map(|l| 12 + l.weights.len() * 6 + l.bias.len() * 12)
            .sum::<usize>()
    }

    /// Parse and validate a model file (see the module docs for the order of
    /// checks). Never panics and never allocates more than a small multiple of
    /// `b.len()`.
    pub fn from_bytes(b: &[u8]) -> Result<Model, ModelError> {
        let mut r = R { b, pos: 0 };
        if b.len() < MAGIC.len() && MAGIC.starts_with(b) {
            return Err(ModelError::Truncated {
                what: "magic".into(),
                need: MAGIC.len(),
                left: b.len(),
            });
        }
        let magic = r.take(MAGIC.len().min(b.len()), &|| "magic".into())?;
        if magic != MAGIC {
            return Err(ModelError::BadMagic {
                found: magic.to_vec(),
            });
        }
        let version = r.u16(&|| "format version".into())?;
        if version != FORMAT_VERSION {
            return Err(ModelError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let fs_code = r.u8(&|| "feature set".into())?;
        let fs = FeatureSet::from_code(fs_code).ok_or_else(|| {
            ModelError::Invalid(if fs_code == FeatureSet::RETIRED_CODE {
                "feature set code 2 is an earlier linnos-ext (its read maximum was \
                 time-windowed) that this build no longer computes: retrain the model"
                    .into()
            } else {
                format!("unknown feature set code {fs_code}")
            })
        })?;
        let n_layers = r.u8(&|| "layer count".into())? as usize;
        if n_layers == 0 {
            return Err(shape_err("a model needs at least one layer".into()));
        }
        if n_layers > MAX_LAYERS {
            return Err(ModelError::TooLarge {
                what: "number of layers".into(),
                value: n_layers as u64,
                max: MAX_LAYERS as u64,
            });
        }
        let n_inputs = r.u32(&|| "input count".into())? as usize;
        if n_inputs != fs.n_inputs() {
            return Err(shape_err(format!(
                "file says {n_inputs} inputs but feature set {} has {}",
                fs.name(),
                fs.n_inputs()
            )));
        }
        let flags = r.u32(&|| "flags".into())?;
        if flags & !1 != 0 {
            return Err(ModelError::Invalid(format!(
                "unknown flags {flags:#x} (this build knows bit 0)"
            )));
        }
        let scaler = if flags & 1 != 0 {
            let min = r.f32s(n_inputs, &|| "MinMax scaler minima".into())?;
            let max = r.f32s(n_inputs, &|| "MinMax scaler maxima".into())?;
            Some(MinMax { min, max })
        } else {
            None
        };

        let mut layers = Vec::with_capacity(n_layers);
        let mut quant = Vec::with_capacity(n_layers);
        let mut prev = n_inputs;
        let mut a = fs.input_exp();
        for k in 0..n_layers {
            let (layer, q) = read_layer(&mut r, k, prev, a)?;
            a = q.out_exp();
            prev = layer.outputs;
            layers.push(layer);
            quant.push(q);
        }
        let meta = read_meta(&mut r)?;
        let body_end = r.pos;
        let stored = r.u32(&|| "checksum".into())?;
        if r.left() != 0 {
            return Err(ModelError::TrailingBytes(r.left()));
        }
        let computed = crc32fast::hash(&b[..body_end]);
        if stored != computed {
            return Err(ModelError::ChecksumMismatch { stored, computed });
        }
        check_structure(fs, &layers, scaler.as_ref())?;
        check_meta(&meta)?;
        let last = layers.len() - 1;
        for (k, (l, q)) in layers.iter().zip(&quant).enumerate() {
            check_quant(k, l, q, k == last)?;
        }
        Ok(Self::assemble(fs, layers, quant, scaler, meta))
    }

    /// The shipped default model, built into the binary from
    /// `predictor/models/default.augm` when that file exists at build time.
    pub fn default_model() -> Result<Model, ModelError> {
        #[cfg(augur_default_model)]
        {
            Self::from_bytes(include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/models/default.augm"
            )))
        }
        #[cfg(not(augur_default_model))]
        {
            Err(ModelError::NoDefaultModel)
        }
    }

    /// The model's id: the CRC-32 of its file encoding (the checksum the
    /// file ends with), as 8 lowercase hex digits.
    pub fn id(&self) -> String {
        let b = self.to_bytes();
        let n = b.len();
        format!(
            "{:08x}",
            u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]])
        )
    }

    /// Which feature encoding the model consumes.
    pub fn feature_set(&self) -> FeatureSet {
        self.fs
    }

    /// The f32 layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The integer layers (what the generated C code embeds).
    pub fn quantized_layers(&self) -> &[QuantLayer] {
        &self.quant
    }

    /// The Heimdall MinMax scaler, if any.
    pub fn scaler(&self) -> Option<&MinMax> {
        self.scaler.as_ref()
    }

    /// The integer scaler derived from [`Model::scaler`], if any.
    pub fn int_scaler(&self) -> Option<&IntScaler> {
        self.int_scaler.as_ref()
    }

    /// Training metadata.
    pub fn meta(&self) -> &TrainingMeta {
        &self.meta
    }

    /// Number of outputs of the last layer (1 or 2).
    pub fn n_outputs(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// e.g. `31-256-2`.
    pub fn shape_string(&self) -> String {
        let mut s = self.fs.n_inputs().to_string();
        for l in &self.layers {
            s.push('-');
            s.push_str(&l.outputs.to_string());
        }
        s
    }

    /// A human summary, for `augur model show`.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let m = &self.meta;
        let _ = writeln!(
            s,
            "Augur model, format v{FORMAT_VERSION}, feature set {} ({} inputs)",
            self.fs.name(),
            self.fs.n_inputs()
        );
        let params: usize = self
            .layers
            .iter()
            .map(|l| l.weights.len() + l.bias.len())
            .sum();
        let _ = writeln!(
            s,
            "shape {} ({params} parameters), decision: {}",
            self.shape_string(),
            if self.n_outputs() == 2 {
                "slow if out[1] > out[0]"
            } else {
                "slow if out[0] > 0"
            }
        );
        let _ = writeln!(
            s,
            "integer path: input scale 2^{}, per-layer power-of-two weight scales",
            self.fs.input_exp()
        );
        for (k, (l, q)) in self.layers.iter().zip(&self.quant).enumerate() {
            let wmax = l.weights.iter().fold(0f32, |a, w| a.max(w.abs()));
            let _ = writeln!(
                s,
                "  layer {}: {:>4} -> {:<4} {:<4} weights x2^{:<3} shift {:<2} out scale 2^{:<3} max|w| {:.4}",
                k + 1,
                l.inputs,
                l.outputs,
                if l.activation == Activation::Relu {
                    "relu"
                } else {
                    "none"
                },
                q.weight_exp,
                q.out_shift,
                q.out_exp(),
                wmax
            );
        }
        if let Some(sc) = &self.scaler {
            let _ = writeln!(s, "MinMax scaler:");
            for (i, (lo, hi)) in sc.min.iter().zip(&sc.max).enumerate() {
                let _ = writeln!(s, "  input {i:>2}: [{lo}, {hi}]");
            }
        }
        let _ = writeln!(s, "trained on: {}", m.data);
        let _ = writeln!(s, "date: {}  seed: {}  arch: {}", m.date, m.seed, m.arch);
        let _ = writeln!(
            s,
            "labels: {} (slow above {} us)",
            m.label_rule, m.threshold_us
        );
        for (k, v) in &m.metrics {
            let _ = writeln!(s, "  {k}: {v}");
        }
        s
    }

    /// A model with random weights (uniform, Glorot-scaled, seeded), for
    /// tests and benchmarks. Not a trained model: its decisions mean nothing.
    /// `hidden` lists the hidden layer widths; `outputs` is 1 or 2.
    pub fn random(
        fs: FeatureSet,
        hidden: &[usize],
        outputs: usize,
        seed: u64,
    ) -> Result<Model, ModelError> {
        let mut rng = Rng::new(seed);
        let mut layers = Vec::new();
        let mut prev = fs.n_inputs();
        let widths: Vec<usize> = hidden.iter().copied().chain([outputs]).collect();
        for (k, &m) in widths.iter().enumerate() {
            let lim = (6.0 / (prev + m) as f64).sqrt();
            let weights = (0..prev * m)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * lim) as f32)
                .collect();
            let bias = (0..m)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * 0.1) as f32)
                .collect();
            layers.push(Layer {
                inputs: prev,
                outputs: m,
                weights,
                bias,
                activation: if k + 1 == widths.len() {
                    Activation::None
                } else {
                    Activation::Relu
                },
            });
            prev = m;
        }
        let scaler = (fs == FeatureSet::Heimdall).then(|| {
            let max = (0..fs.n_inputs())
                .map(|_| (rng.next_f64() * 100_000.0) as f32 + 1.0)
                .collect();
            MinMax {
                min: vec![0.0; fs.n_inputs()],
                max,
            }
        });
        let meta = TrainingMeta {
            data: "random weights (benchmark/test model, not trained)".into(),
            date: String::new(),
            seed,
            arch: format!("random {}", hidden.len()),
            label_rule: "none".into(),
            threshold_us: 0,
            metrics: Vec::new(),
        };
        Model::from_layers(fs, layers, scaler, meta)
    }
}

fn check_meta(m: &TrainingMeta) -> Result<(), ModelError> {
    for (what, s) in [
        ("data", &m.data),
        ("date", &m.date),
        ("arch", &m.arch),
        ("label rule", &m.label_rule),
    ] {
        if s.len() > MAX_STR {
            return Err(ModelError::TooLarge {
                what: format!("metadata {what} length"),
                value: s.len() as u64,
                max: MAX_STR as u64,
            });
        }
    }
    if m.metrics.len() > MAX_METRICS {
        return Err(ModelError::TooLarge {
            what: "metric count".into(),
            value: m.metrics.len() as u64,
            max: MAX_METRICS as u64,
        });
    }
    for (name, _) in &m.metrics {
        if name.len() > MAX_METRIC_NAME {
            return Err(ModelError::TooLarge {
                what: format!("metric name {name:?} length"),
                value: name.len() as u64,
                max: MAX_METRIC_NAME as u64,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(fs: FeatureSet) -> Model {
        let mut m = Model::random(fs, &[4], 2, 3).unwrap();
        m.meta = TrainingMeta {
            data: "unit test".into(),
            date: "2026-11-26".into(),
            seed: 3,
            arch: "tiny".into(),
            label_rule: "p95".into(),
            threshold_us: 850,
            metrics: vec![("accuracy".into(), 0.93), ("auc".into(), 0.97)],
        };
        m
    }

    /// Recompute the trailing checksum after editing a file.
    fn fix_crc(b: &mut [u8]) {
        let n = b.len() - 4;
        let c = crc32fast::hash(&b[..n]);
        b[n..].copy_from_slice(&c.to_le_bytes());
    }

    /// Offset of layer 1's header (after the fixed header and scaler).
    fn layer1_off(m: &Model) -> usize {
        20 + m.scaler.as_ref().map_or(0, |s| 8 * s.len())
    }

    #[test]
    fn round_trip() {
        for fs in [
            FeatureSet::LinnOs,
            FeatureSet::LinnOsExt,
            FeatureSet::LinnOsWrite,
            FeatureSet::Heimdall,
        ] {
            for m in [small(fs), Model::random(fs, &[256, 256], 2, 9).unwrap()] {
                let b = m.to_bytes();
                let m2 = Model::from_bytes(&b).unwrap();
                assert_eq!(m, m2);
                assert_eq!(m2.to_bytes(), b);
                // The id is the file's own checksum.
                let n = b.len();
                let crc = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
                assert_eq!(m2.id(), format!("{crc:08x}"));
            }
        }
        assert_ne!(
            small(FeatureSet::LinnOs).id(),
            small(FeatureSet::LinnOsExt).id()
        );
        let m = small(FeatureSet::LinnOs);
        let p = std::env::temp_dir().join(format!("augur-model-test-{}.augm", std::process::id()));
        m.save(&p).unwrap();
        let m2 = Model::load(&p).unwrap();
        let _ = std::fs::remove_file(&p);
        assert_eq!(m, m2);
        assert!(matches!(Model::load(&p), Err(ModelError::Io { .. })));
    }

    /// Saving through a path that is not a plain file writes into what it
    /// names instead of renaming a new file over it (`--out /dev/null` once
    /// replaced /dev/null with a model).
    #[test]
    fn save_writes_through_a_symlink_instead_of_replacing_it() {
        let dir = std::env::temp_dir().join(format!("augur-model-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (target, link) = (dir.join("real.augm"), dir.join("link.augm"));
        std::fs::write(&target, b"old").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let m = small(FeatureSet::LinnOsWrite);
        m.save(&link).unwrap();
        let still_link = std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink();
        let loaded = Model::load(&target);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(still_link, "the symlink was replaced");
        assert_eq!(loaded.unwrap(), m);
    }

    #[test]
    fn rejects_every_truncation() {
        for fs in [
            FeatureSet::LinnOs,
            FeatureSet::LinnOsExt,
            FeatureSet::Heimdall,
        ] {
            let b = small(fs).to_bytes();
            for n in 0..b.len() {
                match Model::from_bytes(&b[..n]) {
                    Err(ModelError::Truncated { .. }) => {}
                    other => panic!("prefix {n}/{}: {other:?}", b.len()),
                }
            }
        }
        let b = Model::random(FeatureSet::LinnOs, &[256], 2, 1)
            .unwrap()
            .to_bytes();
        let e = Model::from_bytes(&b[..20 + 12 + 123]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "model file truncated: layer 1 weights need 31744 bytes, 123 left"
        );
    }

    #[test]
    fn rejects_every_single_bit_flip() {
        for fs in [
            FeatureSet::LinnOs,
            FeatureSet::LinnOsExt,
            FeatureSet::Heimdall,
        ] {
            let b = small(fs).to_bytes();
            let mut c = b.clone();
            for i in 0..b.len() {
                for bit in 0..8 {
                    c[i] ^= 1 << bit;
                    assert!(
                        Model::from_bytes(&c).is_err(),
                        "flip of byte {i} bit {bit} accepted"
                    );
                    c[i] ^= 1 << bit;
                }
            }
            // A flip inside the weights with an intact structure is a checksum error.
            let mut c = b.clone();
            c[layer1_off(&small(fs)) + 12 + 1] ^= 0x10;
            assert!(matches!(
                Model::from_bytes(&c),
                Err(ModelError::ChecksumMismatch { .. })
            ));
        }
    }

    #[test]
    fn rejects_wrong_version_and_magic() {
        let mut b = small(FeatureSet::LinnOs).to_bytes();
        b[8..10].copy_from_slice(&7u16.to_le_bytes());
        let e = Model::from_bytes(&b).unwrap_err();
        assert!(matches!(
            e,
            ModelError::UnsupportedVersion {
                found: 7,
                supported: 1
            }
        ));
        assert_eq!(
            e.to_string(),
            "unsupported format version 7 (this build reads 1)"
        );
        let mut b = small(FeatureSet::LinnOs).to_bytes();
        b[0] = b'X';
        assert!(matches!(
            Model::from_bytes(&b),
            Err(ModelError::BadMagic { .. })
        ));
        assert!(matches!(
            Model::from_bytes(b"hello world, not a model"),
            Err(ModelError::BadMagic { .. })
        ));
    }

    #[test]
    fn rejects_the_retired_linnos_ext_code_by_name() {
        let mut b = small(FeatureSet::LinnOsExt).to_bytes();
        assert_eq!(b[10], 3);
        b[10] = FeatureSet::RETIRED_CODE;
        fix_crc(&mut b);
        let e = Model::from_bytes(&b).unwrap_err();
        assert!(e.to_string().contains("retrain the model"), "{e}");
        b[10] = 9;
        fix_crc(&mut b);
        let e = Model::from_bytes(&b).unwrap_err();
        assert!(e.to_string().contains("unknown feature set code 9"), "{e}");
    }

    #[test]
    fn rejects_wrong_shape() {
        let m = Model::random(FeatureSet::LinnOs, &[8, 6], 2, 1).unwrap();
        // Layer 2's input count: header + layer 1 (12 + 31*8*6 + 8*12) bytes.
        let off = layer1_off(&m) + 12 + 31 * 8 * 6 + 8 * 12;
        let mut b = m.to_bytes();
        assert_eq!(&b[off..off + 4], &8u32.to_le_bytes());
        b[off..off + 4].copy_from_slice(&7u32.to_le_bytes());
        fix_crc(&mut b);
        let e = Model::from_bytes(&b).unwrap_err();
        assert!(matches!(e, ModelError::Shape(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "bad shape: layer 2 takes 7 inputs but layer 1 has 8 outputs"
        );

        // Feature-set mismatch.
        let mut b = m.to_bytes();
        b[10] = 1;
        fix_crc(&mut b);
        assert!(matches!(Model::from_bytes(&b), Err(ModelError::Shape(_))));

        // from_layers checks shapes too.
        let mut layers = m.layers().to_vec();
        layers[1].inputs = 9;
        let e = Model::from_layers(FeatureSet::LinnOs, layers, None, TrainingMeta::default());
        assert!(matches!(e, Err(ModelError::Shape(_))));
        let mut layers = m.layers().to_vec();
        layers[2].activation = Activation::Relu;
        let e = Model::from_layers(FeatureSet::LinnOs, layers, None, TrainingMeta::default());
        assert!(matches!(e, Err(ModelError::Shape(_))));
        let layers = m.layers().to_vec();
        let e = Model::from_layers(FeatureSet::Heimdall, layers, None, TrainingMeta::default());
        assert!(matches!(e, Err(ModelError::Shape(_))));
    }

    #[test]
    fn rejects_absurd_sizes() {
        let m = small(FeatureSet::LinnOs);
        let off = layer1_off(&m);
        let mut b = m.to_bytes();
        b[off + 4..off + 8].copy_from_slice(&0x8000_0000u32.to_le_bytes());
        let e = Model::from_bytes(&b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "layer 1 outputs is 2147483648, more than the limit 1024"
        );
        let mut b = m.to_bytes();
        b[11] = 200;
        assert!(matches!(
            Model::from_bytes(&b),
            Err(ModelError::TooLarge { .. })
        ));
        // The first metadata string's length.
        let meta = off + 12 + 31 * 4 * 6 + 4 * 12 + 12 + 4 * 2 * 6 + 2 * 12;
        let mut b = m.to_bytes();
        assert_eq!(&b[meta..meta + 4], &9u32.to_le_bytes()); // "unit test"
        b[meta..meta + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Model::from_bytes(&b),
            Err(ModelError::TooLarge { .. })
        ));
        // A full-size layer claimed by a short file: truncated, not allocated.
        let mut b = m.to_bytes();
        b[off + 4..off + 8].copy_from_slice(&1024u32.to_le_bytes());
        assert!(matches!(
            Model::from_bytes(&b),
            Err(ModelError::Truncated { .. })
        ));
    }

    #[test]
    fn rejects_inconsistent_quantization_and_non_finite() {
        let m = small(FeatureSet::LinnOs);
        let off = layer1_off(&m) + 12 + 31 * 4 * 4 + 4 * 4; // first quantized weight
        let mut b = m.to_bytes();
        let w = i16::from_le_bytes([b[off], b[off + 1]]);
        b[off..off + 2].copy_from_slice(&(w.wrapping_add(2)).to_le_bytes());
        fix_crc(&mut b);
        let e = Model::from_bytes(&b).unwrap_err();
        assert!(matches!(e, ModelError::Quantization(_)), "{e}");

        let off = layer1_off(&m) + 12; // first f32 weight
        let mut b = m.to_bytes();
        b[off..off + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        fix_crc(&mut b);
        let e = Model::from_bytes(&b).unwrap_err();
        assert!(matches!(e, ModelError::Invalid(_)), "{e}");

        let mut b = m.to_bytes();
        b.push(0);
        assert!(matches!(
            Model::from_bytes(&b),
            Err(ModelError::TrailingBytes(1))
        ));
    }

    #[test]
    fn describe_mentions_the_essentials() {
        let d = small(FeatureSet::Heimdall).describe();
        eprintln!("{d}");
        for s in [
            "heimdall",
            "12-4-2",
            "unit test",
            "accuracy",
            "p95",
            "850",
            "MinMax",
        ] {
            assert!(d.contains(s), "{s} missing from:\n{d}");
        }
    }

    #[test]
    fn quantization_uses_the_full_range() {
        let m = Model::random(FeatureSet::LinnOs, &[256, 256], 2, 5).unwrap();
        for q in m.quantized_layers() {
            let max = q.weights.iter().map(|w| (*w as i32).abs()).max().unwrap();
            assert!(max > W_QMAX / 2, "layer max |Wq| {max}");
        }
        let q = m.quantized_layers();
        assert_eq!(q[0].in_exp, 0);
        assert_eq!(q[1].in_exp, q[0].out_exp());
        assert!(q[1].in_exp <= ACT_EXP);
    }

    /// Writes the fuzz seed corpus: `cargo test -p augur-predictor --lib
    /// write_fuzz_seed_corpus -- --ignored` (into predictor/fuzz/corpus/model_from_bytes).
    #[test]
    #[ignore]
    fn write_fuzz_seed_corpus() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/model_from_bytes");
        std::fs::create_dir_all(&dir).unwrap();
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            ("linnos-31-4-2", small(FeatureSet::LinnOs).to_bytes()),
            ("heimdall-12-4-2", small(FeatureSet::Heimdall).to_bytes()),
            (
                "linnos-31-2",
                Model::random(FeatureSet::LinnOs, &[], 2, 1)
                    .unwrap()
                    .to_bytes(),
            ),
            (
                "linnos-31-3-3-3-1",
                Model::random(FeatureSet::LinnOs, &[3, 3, 3], 1, 2)
                    .unwrap()
                    .to_bytes(),
            ),
            (
                "heimdall-12-8-4-1",
                Model::random(FeatureSet::Heimdall, &[8, 4], 1, 3)
                    .unwrap()
                    .to_bytes(),
            ),
        ];
        let base = small(FeatureSet::LinnOs).to_bytes();
        let mut v = base.clone();
        v[8] = 2;
        files.push(("mutant-version-2", v));
        files.push(("mutant-truncated", base[..base.len() / 2].to_vec()));
        let mut v = base.clone();
        v[100] ^= 4;
        files.push(("mutant-bitflip", v));
        let mut v = base.clone();
        let off = layer1_off(&small(FeatureSet::LinnOs)) + 4;
        v[off..off + 4].copy_from_slice(&1024u32.to_le_bytes());
        fix_crc(&mut v);
        files.push(("mutant-wide-layer", v));
        files.push(("mutant-empty", Vec::new()));
        for (name, b) in files {
            std::fs::write(dir.join(name), b).unwrap();
        }
    }

    #[test]
    fn default_model_is_absent_or_valid() {
        match Model::default_model() {
            Ok(m) => {
                eprintln!("{}", m.describe());
                assert_eq!(m.n_outputs().clamp(1, 2), m.n_outputs());
            }
            Err(e) => assert!(matches!(e, ModelError::NoDefaultModel)),
        }
    }
}

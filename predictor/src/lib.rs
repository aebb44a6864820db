//! Feature encodings, model file, CPU inference (f32 and integer), training,
//! quantization and evaluation for the slow-I/O predictor.
//!
//! - [`features`]: the LinnOS (31 digits), `linnos-ext` (39), `linnos-write`
//!   (47: with write latencies) and Heimdall (12 features) encodings.
//! - [`model`]: f32 + quantized layers, the self-describing model file.
//! - [`infer`]: the f32 path and the bit-specified integer fast path.
//! - [`slow`]: the [`SlowPredictor`] seam the routing policies call, and
//!   [`ModelPredictor`], its integer-path implementation.
//! - `train`, `label`, `eval`, `trace`: training from logs and traces.
//!
//! C code generation for the kernel module is not built yet.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod cgen;
pub mod features;
pub mod infer;
pub mod model;
pub mod slow;

pub mod eval;
pub mod label;
pub mod trace;
pub mod train;

pub use features::{
    FeatureSet, HEIMDALL_INPUTS, IntScaler, LINNOS_EXT_INPUTS, LINNOS_INPUTS, LINNOS_WRITE_INPUTS,
    MinMax, ReadInfo, encode_linnos, encode_linnos_ext, encode_linnos_write, heimdall_raw,
};
pub use infer::{Kernel, ScoreInput, Scratch};
pub use model::{Activation, Layer, Model, ModelError, QuantLayer, TrainingMeta};
pub use slow::{
    ModelPredictor, PendingScores, PredictInput, ScoredOn, SlowPredictor, Wake, score_waiting,
};

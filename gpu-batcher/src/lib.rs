//! Batched inference of the slow-I/O predictor on the GPU (burn + wgpu), and
//! the per-batch choice between it and the CPU from costs calibrated on the
//! machine.
//!
//! A [`Gpu`] is one wgpu adapter, opened once ([`Gpu::open`] says plainly
//! why there is none). A [`GpuModel`] is a [`Model`]'s f32 layers uploaded to
//! it; [`GpuModel::scores`] runs a batch (dense + ReLU per hidden layer, then
//! the output layer and the slow score, `out[1] - out[0]`) and reads the
//! scores back. Each batch is padded to the next of [`BUCKETS`], so the
//! device compiles one pipeline per bucket, all of them at
//! [`GpuModel::warm`] rather than on the I/O path.
//!
//! The GPU runs the predictor's f32 path, not its integer path: its
//! decisions match the f32 path's except where a score lies within
//! [`DECISION_MARGIN`] of zero (summation order differs on the device).
//! [`agreement`] measures that on a test set.
//!
//! [`calibrate()`] measures, per bucket, the CPU integer path against the GPU
//! round trip (hot and after an idle gap) and derives the crossover.
//!
//! [`Offload`] is `--predict-on`: it wraps each model the router uses in a
//! predictor that places every batch on the CPU or the GPU
//! ([`placement`]: the modes, the [`CostCurve`] they decide from, the
//! contention back-off). On the real clock the GPU side is one thread that
//! owns the device and gathers the batches waiting together into one call;
//! a batch waits for its own answer until a deadline and then falls back to
//! the CPU. On the simulated clock the GPU side is a curve: batches are
//! scored on the CPU and charged the curve's round trip.
//!
//! `AUGUR_GPU=off` makes [`Gpu::open`] report no adapter (to exercise the
//! CPU fallback on a machine that has one).

use augur_predictor::Model;

pub mod calibrate;
#[cfg(feature = "wgpu")]
mod device;
pub mod offload;
pub mod placement;
#[cfg(feature = "wgpu")]
mod worker;

#[cfg(feature = "wgpu")]
pub use calibrate::calibrate;
pub use calibrate::{CalibrateOptions, Calibration};
#[cfg(feature = "wgpu")]
pub use device::{Gpu, GpuModel};
pub use offload::{Offload, OffloadOptions, OffloadStatus};
pub use placement::{CostCurve, PredictOn};

/// Batch sizes a batch is padded up to (one compiled pipeline each).
pub const BUCKETS: [usize; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Largest batch the device takes at once.
pub const MAX_BATCH: usize = BUCKETS[BUCKETS.len() - 1];

/// Scores closer to zero than this may decide either way on the GPU and
/// the CPU f32 path (f32 sums in another order; measured differences on
/// lavapipe are about 1e-6, this leaves room for other devices).
pub const DECISION_MARGIN: f32 = 1e-3;

/// The bucket a batch of `n` is padded to, `None` above [`MAX_BATCH`].
pub fn bucket_for(n: usize) -> Option<usize> {
    BUCKETS.iter().copied().find(|&b| b >= n.max(1))
}

/// Why the GPU path is not there or refused a batch.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No wgpu adapter (no GPU, no Vulkan driver).
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// Built without the `wgpu` feature.
    #[error("this build has no GPU support (built without the augur-gpu-batcher `wgpu` feature)")]
    NotBuilt,
    /// A batch larger than [`MAX_BATCH`].
    #[error("batch of {n} reads is over the largest bucket ({MAX_BATCH})")]
    BatchTooLarge {
        /// Its size.
        n: usize,
    },
    /// Inputs that do not fit the model.
    #[error("{got} input values for {n} reads of {width} inputs each")]
    Shape {
        /// Values given.
        got: usize,
        /// Reads.
        n: usize,
        /// Inputs per read.
        width: usize,
    },
    /// The device failed during a batch.
    #[error("GPU batch failed: {0}")]
    Device(String),
}

/// How the GPU's decisions compare with the CPU f32 path on a test set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Agreement {
    /// Reads compared.
    pub reads: usize,
    /// Reads decided differently.
    pub disagreements: usize,
    /// Of those, the largest |CPU score| (how far from zero a disagreement
    /// got; must stay under [`DECISION_MARGIN`]).
    pub worst_margin: f32,
    /// Largest |GPU score - CPU score| over all reads.
    pub max_score_diff: f32,
}

impl Agreement {
    /// True when every disagreement lies within [`DECISION_MARGIN`].
    pub fn within_margin(&self) -> bool {
        self.disagreements == 0 || self.worst_margin < DECISION_MARGIN
    }
}

/// Compares GPU `gpu` scores with the CPU f32 path of `model` on the
/// encoded inputs `xs` (`n_inputs()` values per read).
pub fn agreement(model: &Model, xs: &[f32], gpu: &[f32]) -> Agreement {
    let width = model.feature_set().n_inputs();
    let mut a = Agreement::default();
    for (x, &g) in xs.chunks_exact(width).zip(gpu) {
        let c = model.score_f32_encoded(x);
        a.reads += 1;
        a.max_score_diff = a.max_score_diff.max((g - c).abs());
        if (g > 0.0) != (c > 0.0) {
            a.disagreements += 1;
            a.worst_margin = a.worst_margin.max(c.abs());
        }
    }
    a
}

#[cfg(test)]
mod tests;

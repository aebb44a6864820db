//! Batched inference of the slow-I/O predictor on the GPU (burn + wgpu), and
//! the per-batch choice between it and the CPU from costs calibrated on the
//! machine.
//!
//! A [`Gpu`] is one wgpu adapter, opened once ([`Gpu::open`] says plainly
//! why there is none). A [`GpuModel`] is a [`Model`]'s f32 layers uploaded to
//! it; [`GpuModel::scores`] runs a batch (dense + ReLU per hidden layer, then
//! the output layer and the slow score, `out[1] - out[0]`) and reads the
//! scores back. Each batch is padded to the next of [`BUCKETS`], so the
//! device compiles a bounded set of pipelines, all of them at
//! [`GpuModel::warm`] rather than on the I/O path.
//!
//! Two implementations of that forward pass exist ([`GpuKernel`]):
//!
//! * `fused` (the default, at every bucket): one cubecl kernel for the
//!   whole network, one dispatch per batch (one upload, one readback).
//!   A workgroup scores 16 reads (4 vectors of 4; fewer in buckets under
//!   16); each of its 32 units computes 8 neurons of each hidden layer for
//!   all 16 reads, layer after layer through shared memory, and the output
//!   layer, folded into one score vector, is a shared-memory reduction. No
//!   subgroup operations, so lavapipe runs it.
//! * `ops`: burn's tensor ops, `x.matmul(w) + b` and ReLU per layer (one
//!   dispatch each), then one readback.
//!
//! Both pass the same agreement checks against the CPU f32 path
//! (`tests/lavapipe.rs`). On lavapipe (Mesa's software Vulkan, 2 cores),
//! round trip per batch, p50 / p99 in microseconds, both alternating in one
//! run (`cargo run --release -p augur-gpu-batcher --example kernels`, 200
//! batches per cell, fewer where they would take over 3 s):
//!
//! | shape | batch 1 fused | batch 1 ops | batch 64 fused | batch 64 ops | batch 1024 fused | batch 1024 ops |
//! |-------|---------------|-------------|----------------|--------------|------------------|----------------|
//! | base 31-256-2 | 216 / 376 | 578 / 912 | 499 / 605 | 1372 / 1775 | 1460 / 2390 | 6273 / 11045 |
//! | +1 31-256-256-2 | 413 / 479 | 957 / 1396 | 748 / 1804 | 1991 / 3500 | 6128 / 11317 | 15345 / 24841 |
//! | +2 31-256-256-256-2 | 481 / 531 | 1319 / 1560 | 1157 / 1972 | 2930 / 4741 | 12326 / 27156 | 24553 / 45843 |
//!
//! The fused kernel was faster at every bucket of every shape (2.1x to 4.9x
//! at the median), so it is what [`GpuModel::scores`] runs.
//! `AUGUR_GPU_KERNEL=ops` (or `fused`), read when a model is uploaded,
//! makes every batch run that one instead, and `augur gpu calibrate
//! --kernel ops|fused` times either, so the comparison can be repeated on
//! another device. `AUGUR_FUSED_TILE` (neurons per unit, default 8) and
//! `AUGUR_FUSED_ROWS` (vectors of 4 reads per workgroup, default 4) are the
//! fused kernel's two tuning knobs, for experiments; the defaults were the
//! fastest on lavapipe of tile 1-16 and rows 1-8.
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
//! the I/O thread that sent a batch goes on with other work, is woken when
//! the answer is there, and scores the batch on the CPU itself if it is not
//! there by a deadline. On the simulated clock the GPU side is a curve:
//! batches are scored on the CPU and collected the curve's round trip later
//! in simulated time.
//!
//! `AUGUR_GPU=off` makes [`Gpu::open`] report no adapter (to exercise the
//! CPU fallback on a machine that has one).

use augur_predictor::Model;

pub mod calibrate;
#[cfg(feature = "wgpu")]
mod device;
#[cfg(feature = "wgpu")]
mod fused;
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

/// The two implementations of the forward pass on the device. Both run
/// the f32 path and pass the same agreement checks; they differ in cost.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum GpuKernel {
    /// One cubecl kernel for the whole network: one dispatch per batch.
    #[default]
    Fused,
    /// burn's tensor ops, `x.matmul(w) + b` and ReLU per layer: several
    /// dispatches per batch.
    Ops,
}

impl GpuKernel {
    /// Both, fused first.
    pub const ALL: [GpuKernel; 2] = [GpuKernel::Fused, GpuKernel::Ops];

    /// `fused` or `ops`.
    pub fn name(self) -> &'static str {
        match self {
            GpuKernel::Fused => "fused",
            GpuKernel::Ops => "ops",
        }
    }

    /// The kernel named `s` (`fused` or `ops`).
    pub fn parse(s: &str) -> Option<GpuKernel> {
        GpuKernel::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The kernel `AUGUR_GPU_KERNEL` names, if it is set to `fused` or
    /// `ops` (anything else is ignored).
    pub fn from_env() -> Option<GpuKernel> {
        std::env::var("AUGUR_GPU_KERNEL")
            .ok()
            .and_then(|v| GpuKernel::parse(&v))
    }

    /// The kernel that runs a batch padded to `bucket` unless
    /// `AUGUR_GPU_KERNEL` says otherwise: the fused one at every bucket
    /// (measured faster at each on lavapipe; see the crate docs). Per
    /// bucket so that a device where the winner depends on the batch size
    /// can say so here.
    pub fn default_for(_bucket: usize) -> GpuKernel {
        GpuKernel::Fused
    }
}

impl std::fmt::Display for GpuKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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

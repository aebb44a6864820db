//! Calibration: what a batch costs on each device, per bucket, measured on
//! this machine for one model, and the crossover the costs give.
//!
//! The CPU side is the predictor's real integer path
//! (`Model::score_int_batch_encoded`, the kernel the router runs); the GPU
//! side is a whole round trip of [`GpuModel::scores`]: upload, dispatch and
//! readback. Both start from encoded inputs. The GPU is timed hot (batches
//! back to back) and after an idle gap (a device that has been idle may
//! clock down or page its buffers out: the first batch after a gap is what
//! a lightly loaded array sees).

use std::time::Duration;
#[cfg(feature = "wgpu")]
use std::time::Instant;

#[cfg(feature = "wgpu")]
use augur_predictor::{Kernel, Model, Scratch};
use serde::{Deserialize, Serialize};

use crate::GpuKernel;
use crate::placement::{CostCurve, CurvePoint};
#[cfg(feature = "wgpu")]
use crate::{BUCKETS, Gpu, GpuError, GpuModel};

/// How much to measure.
#[derive(Clone, Debug)]
pub struct CalibrateOptions {
    /// Timed batches per bucket and device, hot.
    pub reps: usize,
    /// Timed batches per bucket after an idle gap.
    pub idle_reps: usize,
    /// The idle gap.
    pub idle_gap: Duration,
    /// Largest bucket measured.
    pub max_bucket: usize,
    /// The GPU kernel to time; `None`: the one [`GpuModel::scores`] runs
    /// for each bucket.
    pub kernel: Option<GpuKernel>,
}

impl Default for CalibrateOptions {
    fn default() -> Self {
        CalibrateOptions {
            reps: 200,
            idle_reps: 5,
            idle_gap: Duration::from_millis(200),
            max_bucket: crate::MAX_BATCH,
            kernel: None,
        }
    }
}

impl CalibrateOptions {
    /// A short calibration for a daemon's start (a second or two on
    /// lavapipe): fewer repetitions, one short idle gap per bucket.
    pub fn quick() -> CalibrateOptions {
        CalibrateOptions {
            reps: 24,
            idle_reps: 1,
            idle_gap: Duration::from_millis(20),
            max_bucket: crate::MAX_BATCH,
            kernel: None,
        }
    }
}

/// p50 and p99 of a set of timings, nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
}

impl Cost {
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    fn of(mut ns: Vec<u64>) -> Cost {
        ns.sort_unstable();
        let at = |q: f64| ns[((q * ns.len() as f64).ceil() as usize).clamp(1, ns.len()) - 1];
        Cost {
            p50_ns: at(0.5),
            p99_ns: at(0.99),
        }
    }
}

/// One bucket's costs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketCost {
    /// Batch size.
    pub bucket: usize,
    /// CPU integer path, per batch.
    pub cpu: Cost,
    /// GPU round trip, batches back to back.
    pub gpu_hot: Cost,
    /// GPU round trip, the first batch after an idle gap.
    pub gpu_after_idle: Cost,
    /// The GPU kernel timed (calibrations from before there were two ran
    /// the burn ops: that is what one without the field reads as).
    #[serde(default = "ops_kernel")]
    pub kernel: GpuKernel,
}

fn ops_kernel() -> GpuKernel {
    GpuKernel::Ops
}

impl BucketCost {
    /// Whether the GPU's hot median beats the CPU's.
    pub fn gpu_faster(&self) -> bool {
        self.gpu_hot.p50_ns < self.cpu.p50_ns
    }
}

/// The costs of one model on this machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The model's id.
    pub model: String,
    /// Its shape, e.g. `31-256-2`.
    pub shape: String,
    /// The CPU integer kernel (`avx2` or `portable`).
    pub cpu_kernel: String,
    /// One entry per bucket, smallest first.
    pub buckets: Vec<BucketCost>,
    /// The smallest bucket from which the GPU's hot median beats the CPU's
    /// at every larger bucket measured; `None` when the CPU wins somewhere
    /// at the top (or everywhere).
    pub crossover: Option<usize>,
    /// The idle gap, ms.
    pub idle_gap_ms: u64,
}

impl Calibration {
    /// The medians (and the GPU's p99) as the curve `--predict-on auto`
    /// decides from.
    pub fn curve(&self) -> CostCurve {
        CostCurve {
            shape: self.shape.clone(),
            points: self
                .buckets
                .iter()
                .map(|b| CurvePoint {
                    bucket: b.bucket,
                    cpu_ns: b.cpu.p50_ns,
                    gpu_ns: b.gpu_hot.p50_ns,
                    gpu_p99_ns: b.gpu_hot.p99_ns,
                })
                .collect(),
        }
    }
}

#[cfg(feature = "wgpu")]
fn time<F: FnMut()>(reps: usize, mut f: F) -> Vec<u64> {
    (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as u64
        })
        .collect()
}

/// Measures `model` on the CPU and on `gpu`, bucket by bucket.
#[cfg(feature = "wgpu")]
pub fn calibrate(
    gpu: &Gpu,
    model: &Model,
    opts: &CalibrateOptions,
) -> Result<Calibration, GpuError> {
    let gm = GpuModel::upload(gpu, model);
    match opts.kernel {
        Some(k) => gm.warm_with(k)?,
        None => gm.warm()?,
    }
    let width = model.feature_set().n_inputs();
    let mut scratch = Scratch::for_model(model);
    let mut buckets = Vec::new();
    for &b in BUCKETS.iter().filter(|&&b| b <= opts.max_bucket) {
        // Inputs as the LinnOS encoders write them (digits); every value is
        // in range for every feature set.
        let xi: Vec<i32> = (0..b * width).map(|k| (k * 7 % 10) as i32).collect();
        let xf: Vec<f32> = xi.iter().map(|&v| v as f32).collect();
        let kernel = opts.kernel.unwrap_or_else(|| gm.kernel_for(b));
        let mut out = vec![0i64; b];
        let cpu = time(opts.reps, || {
            model.score_int_batch_encoded(&xi, &mut out, &mut scratch, Kernel::Auto);
            std::hint::black_box(&out);
        });
        let mut failed = None;
        let hot = time(opts.reps, || {
            if let Err(e) = gm.scores_with(kernel, &xf, b) {
                failed.get_or_insert(e);
            }
        });
        let mut idle = Vec::with_capacity(opts.idle_reps);
        for _ in 0..opts.idle_reps.max(1) {
            std::thread::sleep(opts.idle_gap);
            idle.extend(time(1, || {
                if let Err(e) = gm.scores_with(kernel, &xf, b) {
                    failed.get_or_insert(e);
                }
            }));
        }
        if let Some(e) = failed {
            return Err(e);
        }
        buckets.push(BucketCost {
            bucket: b,
            cpu: Cost::of(cpu),
            gpu_hot: Cost::of(hot),
            gpu_after_idle: Cost::of(idle),
            kernel,
        });
    }
    let crossover = crossover(&buckets);
    Ok(Calibration {
        model: model.id(),
        shape: model.shape_string(),
        cpu_kernel: model.int_kernel_name().to_string(),
        buckets,
        crossover,
        idle_gap_ms: opts.idle_gap.as_millis() as u64,
    })
}

/// The smallest bucket from which the GPU wins at every larger one.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn crossover(buckets: &[BucketCost]) -> Option<usize> {
    let from = match buckets.iter().rposition(|c| !c.gpu_faster()) {
        None => 0,
        Some(i) => i + 1,
    };
    buckets.get(from).map(|c| c.bucket)
}

/// The two curves as a table, and the crossover.
pub fn render(c: &Calibration) -> String {
    use std::fmt::Write;
    let us = |ns: u64| format!("{:.1}", ns as f64 / 1000.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "model {} ({}), CPU kernel {}; per batch, microseconds",
        c.model, c.shape, c.cpu_kernel
    );
    let _ = writeln!(
        s,
        "{:>6} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>8} {:>7}",
        "batch",
        "cpu p50",
        "cpu p99",
        "gpu p50",
        "gpu p99",
        "idle p50",
        "idle p99",
        "faster",
        "kernel"
    );
    for b in &c.buckets {
        let _ = writeln!(
            s,
            "{:>6} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>8} {:>7}",
            b.bucket,
            us(b.cpu.p50_ns),
            us(b.cpu.p99_ns),
            us(b.gpu_hot.p50_ns),
            us(b.gpu_hot.p99_ns),
            us(b.gpu_after_idle.p50_ns),
            us(b.gpu_after_idle.p99_ns),
            if b.gpu_faster() { "gpu" } else { "cpu" },
            b.kernel.name()
        );
    }
    let _ = match c.crossover {
        Some(b) => writeln!(s, "crossover: the GPU is faster from batch {b} up"),
        None => writeln!(
            s,
            "crossover: none; the CPU is faster at the largest batch measured"
        ),
    };
    let _ = writeln!(
        s,
        "(idle: the first batch after {} ms without GPU work)",
        c.idle_gap_ms
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(b: usize, cpu: u64, gpu: u64) -> BucketCost {
        let c = |ns| Cost {
            p50_ns: ns,
            p99_ns: ns,
        };
        BucketCost {
            bucket: b,
            cpu: c(cpu),
            gpu_hot: c(gpu),
            gpu_after_idle: c(gpu),
            kernel: GpuKernel::Fused,
        }
    }

    #[test]
    fn the_crossover_is_where_the_gpu_wins_from_then_on() {
        let cpu_wins = [bucket(1, 1, 9), bucket(2, 2, 9)];
        assert_eq!(crossover(&cpu_wins), None);
        let gpu_wins = [bucket(1, 9, 1), bucket(2, 9, 1)];
        assert_eq!(crossover(&gpu_wins), Some(1));
        // A win at 2 that does not last is not a crossover; 8 is.
        let mixed = [
            bucket(1, 1, 9),
            bucket(2, 9, 1),
            bucket(4, 1, 9),
            bucket(8, 9, 1),
            bucket(16, 9, 1),
        ];
        assert_eq!(crossover(&mixed), Some(8));
        assert_eq!(crossover(&[]), None);
    }

    #[test]
    fn costs_are_nearest_rank_percentiles() {
        let c = Cost::of((1..=100).rev().collect());
        assert_eq!((c.p50_ns, c.p99_ns), (50, 99));
        let one = Cost::of(vec![7]);
        assert_eq!((one.p50_ns, one.p99_ns), (7, 7));
    }
}

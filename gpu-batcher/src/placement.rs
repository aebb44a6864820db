//! Which device scores a batch: the `--predict-on` modes, the per-bucket
//! cost curve they decide from, and the back-off from a GPU that another
//! tenant keeps busy.
//!
//! Nothing here touches a device, so the same decisions run on the real
//! clock (a curve calibrated at start) and on the simulated one (a curve
//! from a calibration file), where a GPU batch is charged its curve cost.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::{BUCKETS, bucket_for};

/// Where batches of predictions may run (`--predict-on`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PredictOn {
    /// Every batch on the CPU integer path.
    Cpu,
    /// Every batch on the GPU (up to the largest bucket; larger on the CPU).
    Gpu,
    /// Each batch where its calibrated cost is lower.
    Auto,
    /// As `Auto`, and back to the CPU while the GPU's round trips run well
    /// above the calibrated baseline (another tenant), probing again later.
    AutoContention,
}

impl PredictOn {
    /// Every mode's name, as `--predict-on` takes it.
    pub const NAMES: [&'static str; 4] = ["cpu", "gpu", "auto", "auto+contention"];

    /// Parses a `--predict-on` value.
    pub fn parse(s: &str) -> Result<PredictOn, String> {
        match s {
            "cpu" => Ok(PredictOn::Cpu),
            "gpu" => Ok(PredictOn::Gpu),
            "auto" => Ok(PredictOn::Auto),
            "auto+contention" => Ok(PredictOn::AutoContention),
            other => Err(format!(
                "--predict-on '{other}': one of {}",
                PredictOn::NAMES.join(", ")
            )),
        }
    }

    /// Its `--predict-on` name.
    pub fn name(self) -> &'static str {
        match self {
            PredictOn::Cpu => "cpu",
            PredictOn::Gpu => "gpu",
            PredictOn::Auto => "auto",
            PredictOn::AutoContention => "auto+contention",
        }
    }
}

/// One bucket of a [`CostCurve`], nanoseconds per batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Batch size.
    pub bucket: usize,
    /// The CPU integer path, median.
    pub cpu_ns: u64,
    /// The GPU round trip, hot median.
    pub gpu_ns: u64,
    /// The GPU round trip, hot 99th percentile (the contention baseline
    /// and the deadline's base).
    pub gpu_p99_ns: u64,
}

/// What a batch costs on each device, per bucket, for one model shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostCurve {
    /// The model shape it was measured for, e.g. `31-256-2`.
    pub shape: String,
    /// Smallest bucket first; not empty.
    pub points: Vec<CurvePoint>,
}

impl CostCurve {
    /// The point of the bucket `n` is padded to (the largest measured when
    /// `n` is beyond it).
    fn point(&self, n: usize) -> &CurvePoint {
        let b = bucket_for(n).unwrap_or(usize::MAX);
        self.points
            .iter()
            .find(|p| p.bucket >= b)
            .unwrap_or_else(|| &self.points[self.points.len() - 1])
    }

    /// GPU round trip of a batch of `n` (it is padded to its bucket), ns.
    pub fn gpu_ns(&self, n: usize) -> u64 {
        self.point(n).gpu_ns
    }

    /// GPU round trip p99 of a batch of `n`, ns.
    pub fn gpu_p99_ns(&self, n: usize) -> u64 {
        self.point(n).gpu_p99_ns
    }

    /// CPU cost of a batch of `n`, ns: linear between the measured
    /// buckets (the CPU does not pad), scaled beyond the largest.
    pub fn cpu_ns(&self, n: usize) -> u64 {
        let n = n.max(1) as u64;
        let mut lo = (0u64, 0u64);
        for p in &self.points {
            let (b, c) = (p.bucket as u64, p.cpu_ns);
            if n <= b {
                if b == lo.0 {
                    return c;
                }
                return lo.1 + (c.saturating_sub(lo.1)) * (n - lo.0) / (b - lo.0);
            }
            lo = (b, c);
        }
        lo.1 * n / lo.0.max(1)
    }

    /// True when a batch of `n` is cheaper on the GPU.
    pub fn gpu_pays(&self, n: usize) -> bool {
        n <= crate::MAX_BATCH && self.gpu_ns(n) < self.cpu_ns(n)
    }

    /// GPU time to score `n` inputs queued together: calls of at most
    /// [`crate::MAX_BATCH`] one after another, ns.
    pub fn gpu_ns_queued(&self, n: usize) -> u64 {
        let full = (n / crate::MAX_BATCH) as u64;
        let rest = n % crate::MAX_BATCH;
        full * self.gpu_ns(crate::MAX_BATCH) + if rest > 0 { self.gpu_ns(rest) } else { 0 }
    }

    /// True when the GPU is cheaper at some bucket.
    pub fn pays_somewhere(&self) -> bool {
        self.points.iter().any(|p| p.gpu_ns < p.cpu_ns)
    }

    /// The smallest batch size from which the GPU pays at every larger
    /// bucket measured; `None` when the CPU wins at the top.
    pub fn crossover(&self) -> Option<usize> {
        let from = match self.points.iter().rposition(|p| p.gpu_ns >= p.cpu_ns) {
            None => 0,
            Some(i) => i + 1,
        };
        self.points.get(from).map(|p| p.bucket)
    }

    /// The same GPU costs with the CPU side replaced by a linear model
    /// (`per_call_ns + per_item_ns * n`): the simulated clock charges CPU
    /// batches that way, so `auto` must compare against it.
    pub fn with_linear_cpu(mut self, per_call_ns: u64, per_item_ns: u64) -> CostCurve {
        for p in &mut self.points {
            p.cpu_ns = per_call_ns + per_item_ns * p.bucket as u64;
        }
        self
    }

    /// Checks that the points are usable: buckets from [`BUCKETS`], in
    /// increasing order, at least one.
    pub fn validate(&self) -> Result<(), String> {
        if self.points.is_empty() {
            return Err("the cost curve has no buckets".into());
        }
        let mut last = 0;
        for p in &self.points {
            if !BUCKETS.contains(&p.bucket) || p.bucket <= last {
                return Err(format!(
                    "cost curve bucket {} is not a power of two up to {} in increasing order",
                    p.bucket,
                    crate::MAX_BATCH
                ));
            }
            last = p.bucket;
        }
        Ok(())
    }
}

/// Tuning of the contention back-off.
#[derive(Clone, Copy, Debug)]
pub struct ContentionConfig {
    /// Back off when the smoothed ratio of round trip to calibrated p99
    /// exceeds this.
    pub ratio: f64,
    /// How long a back-off lasts before the GPU is probed again, ns.
    pub probe_after_ns: u64,
}

impl Default for ContentionConfig {
    fn default() -> Self {
        ContentionConfig {
            ratio: 2.0,
            probe_after_ns: 500_000_000,
        }
    }
}

/// The back-off of `auto+contention`: the GPU worker reports each round
/// trip; while the smoothed ratio to the calibrated p99 stays above the
/// threshold, batches go to the CPU until a probe finds the GPU quick
/// again.
#[derive(Debug)]
pub struct Contention {
    cfg: ContentionConfig,
    /// Smoothed ratio (round trip / calibrated p99), updated by the worker.
    ewma: Mutex<f64>,
    /// Back off until this time (ns on the worker's clock); 0 = not.
    until_ns: AtomicU64,
    backoffs: AtomicU64,
}

impl Contention {
    /// A tracker that has seen nothing yet.
    pub fn new(cfg: ContentionConfig) -> Contention {
        Contention {
            cfg,
            ewma: Mutex::new(1.0),
            until_ns: AtomicU64::new(0),
            backoffs: AtomicU64::new(0),
        }
    }

    /// Records a GPU round trip of `rt_ns` for a batch whose calibrated
    /// p99 is `baseline_ns`, at `now_ns`.
    pub fn observe(&self, rt_ns: u64, baseline_ns: u64, now_ns: u64) {
        let ratio = rt_ns as f64 / baseline_ns.max(1) as f64;
        let mut e = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        *e = 0.75 * *e + 0.25 * ratio;
        if *e > self.cfg.ratio {
            self.until_ns
                .store(now_ns + self.cfg.probe_after_ns, Relaxed);
            self.backoffs.fetch_add(1, Relaxed);
            // The probe after the back-off decides at once: one more slow
            // round trip keeps the smoothed ratio above the threshold.
            *e = self.cfg.ratio;
        }
    }

    /// True while backed off at `now_ns`.
    pub fn backed_off(&self, now_ns: u64) -> bool {
        now_ns < self.until_ns.load(Relaxed)
    }

    /// How many times it has backed off.
    pub fn backoffs(&self) -> u64 {
        self.backoffs.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(points: &[(usize, u64, u64)]) -> CostCurve {
        CostCurve {
            shape: "t".into(),
            points: points
                .iter()
                .map(|&(bucket, cpu_ns, gpu_ns)| CurvePoint {
                    bucket,
                    cpu_ns,
                    gpu_ns,
                    gpu_p99_ns: 2 * gpu_ns,
                })
                .collect(),
        }
    }

    #[test]
    fn modes_parse_by_name() {
        for n in PredictOn::NAMES {
            assert_eq!(PredictOn::parse(n).unwrap().name(), n);
        }
        let e = PredictOn::parse("fpga").unwrap_err();
        assert!(e.contains("'fpga'") && e.contains("auto+contention"), "{e}");
    }

    #[test]
    fn the_curve_pads_the_gpu_and_interpolates_the_cpu() {
        let c = curve(&[
            (1, 100, 5000),
            (2, 200, 5000),
            (4, 400, 5000),
            (8, 800, 500),
        ]);
        assert_eq!(c.gpu_ns(3), 5000);
        assert_eq!(c.cpu_ns(3), 300);
        assert_eq!(c.cpu_ns(6), 600);
        assert_eq!(c.cpu_ns(16), 1600);
        // 5 pads to 8 (500 ns) and costs the CPU 500 ns: a tie stays on the CPU.
        assert!(!c.gpu_pays(4) && !c.gpu_pays(5) && c.gpu_pays(6) && c.gpu_pays(8));
        // Beyond the largest bucket measured: the top point's costs.
        assert_eq!(c.gpu_ns(100), 500);
        assert_eq!(c.crossover(), Some(8));
        assert_eq!(curve(&[(1, 1, 9)]).crossover(), None);
        assert!(c.validate().is_ok());
        assert!(curve(&[(2, 1, 1), (1, 1, 1)]).validate().is_err());
        assert!(curve(&[(3, 1, 1)]).validate().is_err());
        assert!(curve(&[]).validate().is_err());
        let lin = c.clone().with_linear_cpu(1000, 10);
        assert_eq!(lin.cpu_ns(1), 1010);
        assert_eq!(lin.cpu_ns(8), 1080);
        assert!(!lin.gpu_pays(4) && lin.gpu_pays(8));
    }

    #[test]
    fn contention_backs_off_on_slow_round_trips_and_probes_again() {
        let c = Contention::new(ContentionConfig {
            ratio: 2.0,
            probe_after_ns: 1000,
        });
        // Round trips at the baseline: never backs off.
        for t in 0..100 {
            c.observe(100, 100, t);
        }
        assert_eq!(c.backoffs(), 0);
        assert!(!c.backed_off(100));
        // Ten times the baseline: backs off within a few batches.
        let mut t = 200;
        loop {
            c.observe(1000, 100, t);
            if c.backed_off(t) {
                break;
            }
            t += 1;
            assert!(t < 210, "never backed off");
        }
        assert_eq!(c.backoffs(), 1);
        assert!(c.backed_off(t + 999) && !c.backed_off(t + 1000));
        // The probe is still slow: backs off again at once.
        c.observe(1000, 100, t + 1000);
        assert_eq!(c.backoffs(), 2);
        // A quick probe: stays on the GPU.
        c.observe(100, 100, t + 3000);
        assert!(!c.backed_off(t + 3000));
        assert_eq!(c.backoffs(), 2);
    }
}

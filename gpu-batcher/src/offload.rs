//! `--predict-on`: one [`Offload`] per daemon or bench run decides, batch by
//! batch, whether the CPU integer path or the GPU scores it, and wraps each
//! model the router uses in a predictor that does so.
//!
//! On the real clock the GPU side is the GPU thread (`worker`): a batch sent
//! there waits for its own answer until a deadline (by default twice the
//! calibrated p99 round trip of its bucket, at least 200 µs) and is scored
//! on the CPU if the GPU has not answered by then. The I/O thread does wait
//! for that long at most: its reads need their decisions before they can be
//! issued. On the simulated clock the GPU side is a cost curve: the batch is
//! scored on the CPU (exactly, the same on any machine) and charged the
//! curve's GPU round trip, so a simulated run shows what `auto` would do.

use std::sync::Arc;
#[cfg(feature = "wgpu")]
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
#[cfg(feature = "wgpu")]
use std::time::Instant;

use augur_predictor::{ModelPredictor, PredictInput, ScoredOn, SlowPredictor};
use serde::Serialize;

#[cfg(feature = "wgpu")]
use crate::GpuError;
use crate::placement::{ContentionConfig, CostCurve, PredictOn};
#[cfg(feature = "wgpu")]
use crate::worker::Worker;

/// Smallest deadline a GPU batch gets when none is given.
pub const MIN_DEADLINE: Duration = Duration::from_micros(200);

/// How an [`Offload`] behaves.
#[derive(Clone, Copy, Debug)]
pub struct OffloadOptions {
    /// Where batches may run.
    pub mode: PredictOn,
    /// How long a batch waits for the GPU before the CPU scores it; `None`
    /// for twice the calibrated p99 of its bucket (at least
    /// [`MIN_DEADLINE`]).
    pub deadline: Option<Duration>,
    /// Gather batches waiting for the same model into one device call.
    pub merge: bool,
    /// The back-off of `auto+contention`.
    pub contention: ContentionConfig,
}

impl Default for OffloadOptions {
    fn default() -> Self {
        OffloadOptions {
            mode: PredictOn::Auto,
            deadline: None,
            merge: true,
            contention: ContentionConfig::default(),
        }
    }
}

enum Engine {
    /// No GPU: every batch on the CPU.
    None,
    /// The simulated clock: GPU batches charged this curve.
    Sim(Arc<CostCurve>),
    /// A real device behind the GPU thread.
    #[cfg(feature = "wgpu")]
    Real(Worker),
}

/// The per-run placement of prediction batches (see the module docs).
pub struct Offload {
    opts: OffloadOptions,
    engine: Engine,
    note: String,
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload")
            .field("mode", &self.opts.mode)
            .field("note", &self.note)
            .finish()
    }
}

/// What `augur ctl status` and the bench report say of the placement.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OffloadStatus {
    /// `--predict-on` as asked.
    pub mode: String,
    /// `cpu`, `gpu` or `simulated`: what can actually run batches.
    pub device: String,
    /// The start-up line that explains it.
    pub note: String,
    /// Per calibrated model shape, the batch size from which the GPU pays.
    pub crossovers: Vec<(String, Option<usize>)>,
    /// Device calls the GPU thread made.
    pub gpu_calls: u64,
    /// Of those, calls that gathered several batches.
    pub merged_calls: u64,
    /// Batches the GPU thread answered or failed (one call may answer many).
    pub gpu_jobs: u64,
    /// Batches the GPU thread skipped because their caller had given up.
    pub skipped: u64,
    /// Device failures.
    pub failures: u64,
    /// Times `auto+contention` backed off to the CPU.
    pub backoffs: u64,
    /// Added to each GPU round trip (drills), µs.
    pub extra_delay_us: u64,
    /// The latest device failure.
    pub last_error: Option<String>,
}

impl Offload {
    /// Every batch on the CPU.
    pub fn cpu() -> Arc<Offload> {
        Arc::new(Offload {
            opts: OffloadOptions {
                mode: PredictOn::Cpu,
                ..OffloadOptions::default()
            },
            engine: Engine::None,
            note: "predict-on cpu: every batch on the CPU".into(),
        })
    }

    /// For the simulated clock: `mode` decides from `curve` (whose CPU side
    /// should be the clock's own CPU cost, see
    /// [`CostCurve::with_linear_cpu`]); GPU batches are charged its GPU side.
    pub fn simulated(mode: PredictOn, curve: CostCurve) -> Arc<Offload> {
        if mode == PredictOn::Cpu {
            return Offload::cpu();
        }
        let note = format!(
            "predict-on {} on the simulated clock: GPU round trips from the {} curve, crossover {}",
            mode.name(),
            curve.shape,
            match curve.crossover() {
                Some(b) => format!("at batch {b}"),
                None => "none (the CPU wins at every batch size)".into(),
            }
        );
        Arc::new(Offload {
            opts: OffloadOptions {
                mode,
                ..OffloadOptions::default()
            },
            engine: Engine::Sim(Arc::new(curve)),
            note,
        })
    }

    /// Opens the GPU for `opts.mode` and gets `model` onto it (upload,
    /// pipelines, a quick calibration: seconds on a software driver).
    /// No adapter: `auto` modes fall back to the CPU (said in
    /// [`Offload::note`]); `gpu` fails.
    #[cfg(feature = "wgpu")]
    pub fn start(
        opts: OffloadOptions,
        model: &augur_predictor::Model,
    ) -> Result<Arc<Offload>, GpuError> {
        if opts.mode == PredictOn::Cpu {
            return Ok(Offload::cpu());
        }
        let gpu = match crate::Gpu::open() {
            Ok(g) => g,
            Err(e) if opts.mode == PredictOn::Gpu => return Err(e),
            Err(e) => {
                return Ok(Arc::new(Offload {
                    opts,
                    engine: Engine::None,
                    note: format!(
                        "predict-on {}: {e}; every batch runs on the CPU",
                        opts.mode.name()
                    ),
                }));
            }
        };
        let w = Worker::start(
            gpu,
            opts.merge,
            crate::placement::Contention::new(opts.contention),
        );
        let model = Arc::new(model.clone());
        w.load(model.clone());
        if !w.wait_ready(&model.id(), Duration::from_secs(300)) {
            let why = w
                .shared
                .last_error()
                .unwrap_or_else(|| "timed out getting the model onto the GPU".into());
            if opts.mode == PredictOn::Gpu {
                return Err(GpuError::Device(why));
            }
            return Ok(Arc::new(Offload {
                opts,
                engine: Engine::None,
                note: format!(
                    "predict-on {}: {why}; every batch runs on the CPU",
                    opts.mode.name()
                ),
            }));
        }
        let curve = w.shared.curve(&model.shape_string());
        let note = match (opts.mode, curve.and_then(|c| c.crossover())) {
            (PredictOn::Gpu, _) => "predict-on gpu: every batch on the GPU".to_string(),
            (m, Some(b)) => format!(
                "predict-on {}: the GPU pays from batch {b} (calibrated at start); smaller batches on the CPU",
                m.name()
            ),
            (m, None) => format!(
                "predict-on {}: the CPU is faster at every batch size on this GPU (calibrated at start); batches run on the CPU",
                m.name()
            ),
        };
        Ok(Arc::new(Offload {
            opts,
            engine: Engine::Real(w),
            note,
        }))
    }

    /// Without GPU support built in: `gpu` fails, the rest run on the CPU.
    #[cfg(not(feature = "wgpu"))]
    pub fn start(
        opts: OffloadOptions,
        _model: &augur_predictor::Model,
    ) -> Result<Arc<Offload>, crate::GpuError> {
        match opts.mode {
            PredictOn::Gpu => Err(crate::GpuError::NotBuilt),
            PredictOn::Cpu => Ok(Offload::cpu()),
            m => Ok(Arc::new(Offload {
                opts,
                engine: Engine::None,
                note: format!(
                    "predict-on {}: {}; every batch runs on the CPU",
                    m.name(),
                    crate::GpuError::NotBuilt
                ),
            })),
        }
    }

    /// The line that says what the placement will do (print it at start).
    pub fn note(&self) -> &str {
        &self.note
    }

    /// `--predict-on` as asked.
    pub fn mode(&self) -> PredictOn {
        self.opts.mode
    }

    /// Makes every GPU round trip `d` longer (drills and tests: a GPU that
    /// another tenant keeps busy). No effect without a real GPU.
    pub fn set_extra_delay(&self, d: Duration) {
        #[cfg(feature = "wgpu")]
        if let Engine::Real(w) = &self.engine {
            w.shared.extra_delay_ns.store(d.as_nanos() as u64, Relaxed);
        }
        let _ = d;
    }

    /// Replaces the calibrated curve of `curve.shape` (what-if runs with a
    /// curve measured elsewhere, and tests that need a GPU that pays). No
    /// effect without a real GPU.
    pub fn set_curve(&self, curve: CostCurve) {
        #[cfg(feature = "wgpu")]
        if let Engine::Real(w) = &self.engine {
            w.shared.set_curve(curve.clone());
        }
        let _ = curve;
    }

    /// The predictor the router should use for `p`: `p` itself when every
    /// batch runs on the CPU, else one that places each batch. A new model
    /// is sent to the GPU at once (upload, pipelines, calibration for a new
    /// shape) and its batches stay on the CPU until it is there.
    pub fn predictor(self: &Arc<Self>, p: Arc<ModelPredictor>) -> Arc<dyn SlowPredictor> {
        match &self.engine {
            Engine::None => return p,
            Engine::Sim(_) => {}
            #[cfg(feature = "wgpu")]
            Engine::Real(w) => {
                // `auto` on a GPU calibrated slower at every size for this
                // shape would never use the copy: do not make one.
                let useless = self.opts.mode != PredictOn::Gpu
                    && w.shared
                        .curve(&p.model().shape_string())
                        .is_some_and(|c| !c.pays_somewhere());
                if !useless {
                    w.load(Arc::new(p.model().clone()));
                }
            }
        }
        let m = p.model();
        let out_exp = m.quantized_layers().last().map_or(0, |l| l.out_exp());
        Arc::new(Dispatch {
            id: m.id(),
            shape: m.shape_string(),
            scale: 2f64.powi(out_exp),
            width: m.feature_set().n_inputs(),
            cpu: p,
            offload: self.clone(),
        })
    }

    /// Counters and the calibrated crossovers.
    pub fn status(&self) -> OffloadStatus {
        let mut s = OffloadStatus {
            mode: self.opts.mode.name().into(),
            note: self.note.clone(),
            ..OffloadStatus::default()
        };
        match &self.engine {
            Engine::None => s.device = "cpu".into(),
            Engine::Sim(c) => {
                s.device = "simulated".into();
                s.crossovers = vec![(c.shape.clone(), c.crossover())];
            }
            #[cfg(feature = "wgpu")]
            Engine::Real(w) => {
                let sh = &w.shared;
                s.device = "gpu".into();
                s.crossovers = sh.crossovers();
                s.gpu_calls = sh.calls.load(Relaxed);
                s.merged_calls = sh.merged_calls.load(Relaxed);
                s.gpu_jobs = sh.jobs.load(Relaxed);
                s.skipped = sh.skipped.load(Relaxed);
                s.failures = sh.failures.load(Relaxed);
                s.backoffs = sh.contention.backoffs();
                s.extra_delay_us = sh.extra_delay_ns.load(Relaxed) / 1000;
                s.last_error = sh.last_error();
            }
        }
        s
    }

    /// Whether a batch of `n` should go to the GPU, by the mode and curve.
    fn wants_gpu(&self, curve: &CostCurve, n: usize, backed_off: impl FnOnce() -> bool) -> bool {
        match self.opts.mode {
            PredictOn::Cpu => false,
            PredictOn::Gpu => n <= crate::MAX_BATCH,
            PredictOn::Auto => curve.gpu_pays(n),
            PredictOn::AutoContention => curve.gpu_pays(n) && !backed_off(),
        }
    }
}

/// A model behind an [`Offload`]: each batch scored where the offload says.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
struct Dispatch {
    cpu: Arc<ModelPredictor>,
    offload: Arc<Offload>,
    id: String,
    shape: String,
    /// `2^a` of the last layer: a GPU score times this is on the integer
    /// path's scale, so scores from both devices compare.
    scale: f64,
    width: usize,
}

#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
impl Dispatch {
    /// A GPU (f32) score on the integer scale, with the same sign.
    fn to_int(&self, s: f32) -> i64 {
        let v = (s as f64 * self.scale)
            .round()
            .clamp(-(2f64.powi(62)), 2f64.powi(62)) as i64;
        if s > 0.0 { v.max(1) } else { v.min(0) }
    }

    #[cfg(feature = "wgpu")]
    fn on_gpu(&self, w: &Worker, inputs: &[PredictInput], out: &mut [i64]) -> ScoredOn {
        let sh = &w.shared;
        let n = inputs.len();
        let curve = match sh.curve(&self.shape) {
            Some(c) if !sh.loading.load(Relaxed) && sh.is_ready(&self.id) => c,
            _ => return self.cpu.score_batch_placed(inputs, out),
        };
        if !self
            .offload
            .wants_gpu(&curve, n, || sh.contention.backed_off(sh.now_ns()))
        {
            return self.cpu.score_batch_placed(inputs, out);
        }
        let m = self.cpu.model();
        let mut xs = Vec::with_capacity(n * self.width);
        let mut buf = [0f32; augur_predictor::features::MAX_INPUTS];
        for i in inputs {
            let k = m.encode_f32(&i.snapshot, i.read, &mut buf);
            xs.extend_from_slice(&buf[..k]);
        }
        let deadline = self
            .offload
            .opts
            .deadline
            .unwrap_or_else(|| Duration::from_nanos(2 * curve.gpu_p99_ns(n)).max(MIN_DEADLINE));
        let t = Instant::now();
        let (rx, cancelled) = w.submit(&self.id, xs, n);
        match rx.recv_timeout(deadline) {
            Ok(Ok(scores)) if scores.len() == n => {
                for (o, s) in out.iter_mut().zip(scores) {
                    *o = self.to_int(s);
                }
                ScoredOn::Gpu {
                    round_trip_ns: t.elapsed().as_nanos() as u64,
                }
            }
            _ => {
                cancelled.store(true, Relaxed);
                let waited_ns = t.elapsed().as_nanos() as u64;
                self.cpu.score_batch(inputs, out);
                ScoredOn::GpuMissed { waited_ns }
            }
        }
    }
}

impl SlowPredictor for Dispatch {
    fn name(&self) -> &str {
        self.cpu.name()
    }

    fn score_batch(&self, inputs: &[PredictInput], out: &mut [i64]) {
        self.score_batch_placed(inputs, out);
    }

    fn score_batch_placed(&self, inputs: &[PredictInput], out: &mut [i64]) -> ScoredOn {
        match &self.offload.engine {
            Engine::None => self.cpu.score_batch_placed(inputs, out),
            Engine::Sim(curve) => {
                let n = inputs.len();
                let gpu = self.offload.wants_gpu(curve, n, || false);
                self.cpu.score_batch(inputs, out);
                if gpu {
                    ScoredOn::Gpu {
                        round_trip_ns: curve.gpu_ns(n),
                    }
                } else {
                    ScoredOn::Cpu
                }
            }
            #[cfg(feature = "wgpu")]
            Engine::Real(w) => self.on_gpu(w, inputs, out),
        }
    }

    fn slow_threshold_us(&self) -> Option<u32> {
        self.cpu.slow_threshold_us()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::CurvePoint;
    use augur_feature_store::HistorySnapshot;
    use augur_predictor::{FeatureSet, Model, ReadInfo};

    fn inputs(n: usize) -> Vec<PredictInput> {
        (0..n as u32)
            .map(|i| PredictInput {
                replica: (i % 3) as u16,
                snapshot: HistorySnapshot {
                    pending_ios: i % 40,
                    pending_pages: 3 * i % 90,
                    oldest_pending_us: 37 * i % 900,
                    read_max_us: 100 + 71 * i % 3000,
                    ..HistorySnapshot::default()
                },
                read: ReadInfo { size_bytes: 4096 },
            })
            .collect()
    }

    #[test]
    fn the_simulated_gpu_takes_the_batches_past_the_crossover_and_scores_exactly() {
        let m = Model::random(FeatureSet::LinnOs, &[256], 2, 7).unwrap();
        let cpu = Arc::new(ModelPredictor::new(m, "m"));
        let curve = CostCurve {
            shape: "31-256-2".into(),
            points: [1, 2, 4, 8, 16]
                .iter()
                .map(|&b| CurvePoint {
                    bucket: b,
                    cpu_ns: 0,
                    gpu_ns: 3000,
                    gpu_p99_ns: 4000,
                })
                .collect(),
        }
        .with_linear_cpu(200, 300);
        assert_eq!(curve.crossover(), Some(16));
        for (mode, n, want) in [
            (PredictOn::Auto, 4, ScoredOn::Cpu),
            (
                PredictOn::Auto,
                16,
                ScoredOn::Gpu {
                    round_trip_ns: 3000,
                },
            ),
            (
                PredictOn::Gpu,
                1,
                ScoredOn::Gpu {
                    round_trip_ns: 3000,
                },
            ),
            (PredictOn::Cpu, 16, ScoredOn::Cpu),
        ] {
            let off = Offload::simulated(mode, curve.clone());
            let p = off.predictor(cpu.clone());
            let ins = inputs(n);
            let mut got = vec![0i64; n];
            let mut exact = vec![0i64; n];
            assert_eq!(p.score_batch_placed(&ins, &mut got), want, "{mode:?} {n}");
            cpu.score_batch(&ins, &mut exact);
            assert_eq!(got, exact, "the simulated GPU scores on the CPU, exactly");
        }
    }

    #[test]
    fn gpu_scores_keep_their_sign_on_the_integer_scale() {
        let m = Model::random(FeatureSet::LinnOs, &[16], 2, 3).unwrap();
        let d = Dispatch {
            cpu: Arc::new(ModelPredictor::new(m, "m")),
            offload: Offload::cpu(),
            id: String::new(),
            shape: String::new(),
            scale: 1024.0,
            width: 31,
        };
        assert_eq!(d.to_int(1.0), 1024);
        assert_eq!(d.to_int(1e-9), 1, "slow stays slow");
        assert_eq!(d.to_int(0.0), 0);
        assert_eq!(d.to_int(-1e-9), 0, "fast stays fast");
        assert_eq!(d.to_int(-2.0), -2048);
    }
}

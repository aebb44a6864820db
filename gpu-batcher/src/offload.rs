//! `--predict-on`: one [`Offload`] per daemon or bench run decides, batch by
//! batch, whether the CPU integer path or the GPU scores it, and wraps each
//! model the router uses in a predictor that does so.
//!
//! A batch goes to the GPU only through [`SlowPredictor::submit_batch`],
//! which returns at once: the router parks the batch's reads, the GPU
//! thread (`worker`) answers and calls the caller's [`Wake`], and the reads
//! are routed then. A batch not answered by its deadline (by default twice
//! the calibrated p99 round trip of its bucket, at least 200 µs) is scored
//! on the CPU by the caller ([`PendingScores::give_up`]), and the GPU
//! thread skips it if it has not started it. No I/O thread waits for the
//! GPU. On the simulated clock the GPU side is a cost curve: the batch is
//! scored on the CPU at submission (exactly, the same on any machine) and
//! collected the curve's round trip later in simulated time, so a simulated
//! run shows what `auto` would do.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
#[cfg(feature = "wgpu")]
use std::time::Instant;

use augur_predictor::{ModelPredictor, PendingScores, PredictInput, ScoredOn, SlowPredictor, Wake};
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

/// The simulated GPU: one device, one call at a time (batches are not
/// gathered), on the array's clock.
struct SimGpu {
    curve: CostCurve,
    /// When the last call handed to it ends, simulated ns.
    busy_until_ns: Mutex<u64>,
    calls: AtomicU64,
}

enum Engine {
    /// No GPU: every batch on the CPU.
    None,
    /// The simulated clock: GPU batches take this curve's round trips, one
    /// after another.
    Sim(SimGpu),
    /// A real device behind the GPU thread.
    #[cfg(feature = "wgpu")]
    Real(Worker),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The per-run placement of prediction batches (see the module docs).
pub struct Offload {
    opts: OffloadOptions,
    engine: Engine,
    note: String,
    kept_busy: AtomicU64,
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
    /// Batches kept on the CPU because the GPU's backlog (the call running
    /// and the batches queued ahead) would have made their answer late.
    pub kept_busy: u64,
    /// Added to each GPU round trip (drills), µs.
    pub extra_delay_us: u64,
    /// The latest device failure.
    pub last_error: Option<String>,
}

impl Offload {
    /// Every batch on the CPU.
    pub fn cpu() -> Arc<Offload> {
        Arc::new(Offload {
            kept_busy: AtomicU64::new(0),
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
            kept_busy: AtomicU64::new(0),
            opts: OffloadOptions {
                mode,
                ..OffloadOptions::default()
            },
            engine: Engine::Sim(SimGpu {
                curve,
                busy_until_ns: Mutex::new(0),
                calls: AtomicU64::new(0),
            }),
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
                    kept_busy: AtomicU64::new(0),
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
                kept_busy: AtomicU64::new(0),
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
            kept_busy: AtomicU64::new(0),
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
                kept_busy: AtomicU64::new(0),
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
            Engine::Sim(g) => {
                s.device = "simulated".into();
                s.crossovers = vec![(g.curve.shape.clone(), g.curve.crossover())];
                s.gpu_calls = g.calls.load(Relaxed);
                s.gpu_jobs = s.gpu_calls;
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
        s.kept_busy = self.kept_busy.load(Relaxed);
        s
    }

    /// How long a batch of `n` may wait for the GPU before the CPU takes
    /// it back.
    fn deadline(&self, curve: &CostCurve, n: usize) -> Duration {
        self.opts
            .deadline
            .unwrap_or_else(|| Duration::from_nanos(2 * curve.gpu_p99_ns(n)).max(MIN_DEADLINE))
    }

    /// Whether a routing batch whose first round scores `n_first` and whose
    /// candidates number `n_all` should go to the GPU, whose backlog would
    /// hold it `backlog_ns` before its own call: by the mode, the curve,
    /// and whether its answer would come in time. `busy` counts the
    /// batches the backlog alone kept on the CPU.
    fn wants_gpu(
        &self,
        curve: &CostCurve,
        n_first: usize,
        n_all: usize,
        backlog_ns: u64,
        busy: &AtomicU64,
        backed_off: impl FnOnce() -> bool,
    ) -> bool {
        if n_all > crate::MAX_BATCH {
            return false;
        }
        let alone = curve.gpu_ns(n_all);
        let answer = backlog_ns.saturating_add(alone);
        // What the GPU's answer must beat: the CPU's first round under the
        // auto modes; under `gpu`, the batch's own deadline.
        let limit = match self.opts.mode {
            PredictOn::Cpu => return false,
            PredictOn::Gpu => self.deadline(curve, n_all).as_nanos() as u64,
            PredictOn::Auto | PredictOn::AutoContention => curve.cpu_ns(n_first),
        };
        if alone >= limit && self.opts.mode != PredictOn::Gpu {
            return false;
        }
        if answer >= limit {
            busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        self.opts.mode != PredictOn::AutoContention || !backed_off()
    }
}

/// A model behind an [`Offload`]: each batch scored where the offload says.
struct Dispatch {
    cpu: Arc<ModelPredictor>,
    offload: Arc<Offload>,
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    id: String,
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    shape: String,
    /// `2^a` of the last layer: a GPU score times this is on the integer
    /// path's scale, so scores from both devices compare.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    scale: f64,
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    width: usize,
}

/// A GPU (f32) score on the integer scale `scale`, with the same sign.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn to_int(s: f32, scale: f64) -> i64 {
    let v = (s as f64 * scale)
        .round()
        .clamp(-(2f64.powi(62)), 2f64.powi(62)) as i64;
    if s > 0.0 { v.max(1) } else { v.min(0) }
}

impl Dispatch {
    /// The calibrated curve of this model's shape, once the model is on the
    /// device and the device is free for batches.
    #[cfg(feature = "wgpu")]
    fn ready_curve(&self, w: &Worker) -> Option<Arc<CostCurve>> {
        let sh = &w.shared;
        sh.curve(&self.shape)
            .filter(|_| !sh.loading.load(Relaxed) && sh.is_ready(&self.id))
    }

    #[cfg(feature = "wgpu")]
    fn submit_gpu(
        &self,
        w: &Worker,
        inputs: &[PredictInput],
        wake: &Arc<dyn Wake>,
    ) -> Option<Box<dyn PendingScores>> {
        let n = inputs.len();
        let curve = self.ready_curve(w)?;
        let m = self.cpu.model();
        let mut xs = Vec::with_capacity(n * self.width);
        let mut buf = [0f32; augur_predictor::features::MAX_INPUTS];
        for i in inputs {
            let k = m.encode_f32(&i.snapshot, i.read, &mut buf);
            xs.extend_from_slice(&buf[..k]);
        }
        let deadline = self.offload.deadline(&curve, n);
        let (rx, cancelled) = w.submit(&self.id, xs, n, Some(wake.clone()));
        Some(Box::new(GpuPending {
            rx,
            cancelled,
            start: Instant::now(),
            deadline,
            scale: self.scale,
            cpu: self.cpu.clone(),
        }))
    }
}

/// A batch on the GPU thread.
#[cfg(feature = "wgpu")]
struct GpuPending {
    rx: std::sync::mpsc::Receiver<Result<Vec<f32>, GpuError>>,
    cancelled: Arc<std::sync::atomic::AtomicBool>,
    start: Instant,
    deadline: Duration,
    scale: f64,
    cpu: Arc<ModelPredictor>,
}

#[cfg(feature = "wgpu")]
impl PendingScores for GpuPending {
    fn try_take(&mut self, inputs: &[PredictInput], out: &mut [i64]) -> Option<ScoredOn> {
        use std::sync::mpsc::TryRecvError;
        match self.rx.try_recv() {
            Err(TryRecvError::Empty) => None,
            Ok(Ok(scores)) if scores.len() == out.len() => {
                for (o, s) in out.iter_mut().zip(scores) {
                    *o = to_int(s, self.scale);
                }
                Some(ScoredOn::Gpu {
                    round_trip_ns: self.start.elapsed().as_nanos() as u64,
                })
            }
            // A failed device call (or a gone GPU thread): the CPU decides.
            _ => Some(self.give_up(inputs, out)),
        }
    }

    fn deadline_ns(&self) -> u64 {
        self.deadline.as_nanos() as u64
    }

    fn give_up(&mut self, inputs: &[PredictInput], out: &mut [i64]) -> ScoredOn {
        self.cancelled.store(true, Relaxed);
        let waited_ns = self.start.elapsed().as_nanos() as u64;
        self.cpu.score_batch(inputs, out);
        ScoredOn::GpuMissed { waited_ns }
    }
}

/// A batch on the simulated GPU: scored on the CPU at submission (exactly,
/// the same on any machine), collected a modelled round trip later.
struct SimPending {
    scores: Vec<i64>,
    round_trip_ns: u64,
}

impl PendingScores for SimPending {
    fn try_take(&mut self, _inputs: &[PredictInput], out: &mut [i64]) -> Option<ScoredOn> {
        out.copy_from_slice(&self.scores);
        Some(ScoredOn::Gpu {
            round_trip_ns: self.round_trip_ns,
        })
    }

    fn deadline_ns(&self) -> u64 {
        u64::MAX
    }

    fn modelled_ns(&self) -> Option<u64> {
        Some(self.round_trip_ns)
    }

    fn give_up(&mut self, _inputs: &[PredictInput], out: &mut [i64]) -> ScoredOn {
        out.copy_from_slice(&self.scores);
        ScoredOn::GpuMissed { waited_ns: 0 }
    }
}

impl SlowPredictor for Dispatch {
    fn name(&self) -> &str {
        self.cpu.name()
    }

    /// Here, on the CPU: batches reach the GPU only through
    /// [`SlowPredictor::submit_batch`], so no caller waits for it.
    fn score_batch(&self, inputs: &[PredictInput], out: &mut [i64]) {
        self.cpu.score_batch(inputs, out);
    }

    fn offload_pays(&self, now_ns: u64, n_first: usize, n_all: usize) -> bool {
        let off = &self.offload;
        match &off.engine {
            Engine::None => false,
            Engine::Sim(g) => {
                let backlog = lock(&g.busy_until_ns).saturating_sub(now_ns);
                off.wants_gpu(&g.curve, n_first, n_all, backlog, &off.kept_busy, || false)
            }
            #[cfg(feature = "wgpu")]
            Engine::Real(w) => self.ready_curve(w).is_some_and(|c| {
                let sh = &w.shared;
                let backlog = sh.backlog_ns(&c, n_all);
                off.wants_gpu(&c, n_first, n_all, backlog, &off.kept_busy, || {
                    sh.contention.backed_off(sh.now_ns())
                })
            }),
        }
    }

    fn submit_batch(
        &self,
        now_ns: u64,
        inputs: &[PredictInput],
        wake: &Arc<dyn Wake>,
    ) -> Option<Box<dyn PendingScores>> {
        match &self.offload.engine {
            Engine::None => None,
            Engine::Sim(g) => {
                let _ = wake;
                let mut scores = vec![0i64; inputs.len()];
                self.cpu.score_batch(inputs, &mut scores);
                // One call at a time: this one starts when the last ends.
                let mut busy = lock(&g.busy_until_ns);
                let done = (*busy).max(now_ns) + g.curve.gpu_ns(inputs.len());
                *busy = done;
                g.calls.fetch_add(1, Relaxed);
                Some(Box::new(SimPending {
                    scores,
                    round_trip_ns: done - now_ns,
                }))
            }
            #[cfg(feature = "wgpu")]
            Engine::Real(w) => self.submit_gpu(w, inputs, wake),
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
    use augur_predictor::{FeatureSet, Model, ReadInfo, score_waiting};

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
        let gpu = ScoredOn::Gpu {
            round_trip_ns: 3000,
        };
        for (mode, n, want) in [
            (PredictOn::Auto, 4, ScoredOn::Cpu),
            (PredictOn::Auto, 16, gpu),
            (PredictOn::Gpu, 1, gpu),
            (PredictOn::Cpu, 16, ScoredOn::Cpu),
        ] {
            let off = Offload::simulated(mode, curve.clone());
            let p = off.predictor(cpu.clone());
            let ins = inputs(n);
            let mut got = vec![0i64; n];
            let mut exact = vec![0i64; n];
            assert_eq!(
                score_waiting(p.as_ref(), &ins, &mut got),
                want,
                "{mode:?} {n}"
            );
            cpu.score_batch(&ins, &mut exact);
            assert_eq!(got, exact, "the simulated GPU scores on the CPU, exactly");
        }
        // One call over every candidate pays against the CPU's first round
        // alone only when it is cheaper than that round.
        let off = Offload::simulated(PredictOn::Auto, curve.clone());
        let p = off.predictor(cpu.clone());
        assert!(p.offload_pays(0, 16, 16) && !p.offload_pays(0, 8, 16));
        let wake: Arc<dyn Wake> = Arc::new(Never);
        let pending = p
            .submit_batch(0, &inputs(16), &wake)
            .expect("simulated GPU");
        assert_eq!(pending.modelled_ns(), Some(3000));
        // One device: a batch handed over while that call runs waits for it,
        // and one that would wait longer than the CPU takes stays here.
        let pending = p.submit_batch(1000, &inputs(16), &wake).unwrap();
        assert_eq!(pending.modelled_ns(), Some(5000));
        assert!(
            p.offload_pays(6000, 16, 16),
            "a 3 us wait still pays against 5 us"
        );
        assert!(!p.offload_pays(1000, 16, 16), "a 5 us wait does not");
        assert_eq!(off.status().kept_busy, 1);
    }

    struct Never;
    impl Wake for Never {
        fn wake(&self) {}
    }

    #[test]
    fn gpu_scores_keep_their_sign_on_the_integer_scale() {
        assert_eq!(to_int(1.0, 1024.0), 1024);
        assert_eq!(to_int(1e-9, 1024.0), 1, "slow stays slow");
        assert_eq!(to_int(0.0, 1024.0), 0);
        assert_eq!(to_int(-1e-9, 1024.0), 0, "fast stays fast");
        assert_eq!(to_int(-2.0, 1024.0), -2048);
    }
}

//! The GPU thread: the one thread that touches the device. I/O threads hand
//! it batches over a channel and go on; it answers each on the batch's own
//! channel and wakes its sender. It uploads models, compiles and calibrates them before
//! they are used, and gathers the batches waiting for the same model into
//! one device call (batches from several queues share one round trip).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use augur_predictor::{Model, Wake};

use crate::calibrate::{CalibrateOptions, calibrate};
use crate::placement::{Contention, CostCurve};
use crate::{Gpu, GpuError, GpuModel, MAX_BATCH, bucket_for};

/// Models kept on the device (the active one and the ones a rollback may
/// bring back soon).
const RESIDENT: usize = 4;

/// One batch for the device.
pub(crate) struct Job {
    model: String,
    xs: Vec<f32>,
    n: usize,
    reply: SyncSender<Result<Vec<f32>, GpuError>>,
    cancelled: Arc<AtomicBool>,
    /// Told once the answer is on `reply`.
    wake: Option<Arc<dyn Wake>>,
}

impl Job {
    fn answer(self, r: Result<Vec<f32>, GpuError>) {
        let _ = self.reply.send(r);
        if let Some(w) = self.wake {
            w.wake();
        }
    }
}

enum Msg {
    Load(Arc<Model>),
    Batch(Job),
}

/// What the I/O threads and the status read of the worker.
pub(crate) struct Shared {
    /// Ids of the models uploaded and warmed, newest last.
    ready: Mutex<Vec<String>>,
    ready_cv: Condvar,
    /// Per model shape, the calibrated costs.
    curves: Mutex<HashMap<String, Arc<CostCurve>>>,
    /// True while a model is being uploaded or calibrated (the device is
    /// busy: batches stay on the CPU meanwhile instead of missing their
    /// deadline).
    pub(crate) loading: AtomicBool,
    pub(crate) contention: Contention,
    /// Drills and tests: added to every round trip, ns (a GPU made slow).
    pub(crate) extra_delay_ns: AtomicU64,
    merge: bool,
    epoch: Instant,
    pub(crate) calls: AtomicU64,
    pub(crate) merged_calls: AtomicU64,
    pub(crate) jobs: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
    /// Inputs and batches handed over and not yet in a device call.
    queued_items: AtomicU64,
    queued_jobs: AtomicU64,
    /// Inputs in the device call running now (0: idle), and when it began.
    running_items: AtomicU64,
    running_since_ns: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Nanoseconds since the worker started (the contention tracker's clock).
    pub(crate) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(crate) fn is_ready(&self, id: &str) -> bool {
        lock(&self.ready).iter().any(|r| r == id)
    }

    pub(crate) fn curve(&self, shape: &str) -> Option<Arc<CostCurve>> {
        lock(&self.curves).get(shape).cloned()
    }

    pub(crate) fn set_curve(&self, c: CostCurve) {
        lock(&self.curves).insert(c.shape.clone(), Arc::new(c));
    }

    /// Per calibrated shape, its crossover.
    pub(crate) fn crossovers(&self) -> Vec<(String, Option<usize>)> {
        let mut v: Vec<_> = lock(&self.curves)
            .iter()
            .map(|(k, c)| (k.clone(), c.crossover()))
            .collect();
        v.sort();
        v
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// How long a batch of `n` handed over now would wait before its own
    /// device call starts, by `curve`: the rest of the running call, then
    /// the batches queued ahead (in one call each, or gathered when
    /// merging), ns.
    pub(crate) fn backlog_ns(&self, curve: &CostCurve, n: usize) -> u64 {
        let running = self.running_items.load(Relaxed) as usize;
        let left = if running == 0 {
            0
        } else {
            let took = self
                .now_ns()
                .saturating_sub(self.running_since_ns.load(Relaxed));
            curve.gpu_ns(running).saturating_sub(took)
        };
        let items = self.queued_items.load(Relaxed) as usize;
        let queued = if self.merge {
            // Gathered with this batch: its call is longer, not later.
            curve
                .gpu_ns_queued(items + n)
                .saturating_sub(curve.gpu_ns(n))
        } else {
            let jobs = self.queued_jobs.load(Relaxed);
            jobs * curve.gpu_ns((items / jobs.max(1) as usize).max(1))
        };
        left + queued
    }

    fn dequeued(&self, jobs: &[Job]) {
        let items: usize = jobs.iter().map(|j| j.n).sum();
        self.queued_items.fetch_sub(items as u64, Relaxed);
        self.queued_jobs.fetch_sub(jobs.len() as u64, Relaxed);
    }
}

/// The handle the dispatchers hold.
pub(crate) struct Worker {
    tx: Mutex<Sender<Msg>>,
    pub(crate) shared: Arc<Shared>,
}

impl Worker {
    /// Starts the GPU thread on `gpu`.
    pub(crate) fn start(gpu: Gpu, merge: bool, contention: Contention) -> Worker {
        let shared = Arc::new(Shared {
            ready: Mutex::new(Vec::new()),
            ready_cv: Condvar::new(),
            curves: Mutex::new(HashMap::new()),
            loading: AtomicBool::new(false),
            contention,
            extra_delay_ns: AtomicU64::new(0),
            merge,
            epoch: Instant::now(),
            calls: AtomicU64::new(0),
            merged_calls: AtomicU64::new(0),
            jobs: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            queued_items: AtomicU64::new(0),
            queued_jobs: AtomicU64::new(0),
            running_items: AtomicU64::new(0),
            running_since_ns: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let s = shared.clone();
        // The thread ends when the last sender goes (the worker is dropped).
        std::thread::Builder::new()
            .name("augur-gpu".into())
            .spawn(move || run(gpu, rx, s))
            .expect("spawning the GPU thread");
        Worker {
            tx: Mutex::new(tx),
            shared,
        }
    }

    /// Asks the thread to upload, warm and (for a new shape) calibrate
    /// `model`; returns at once. [`Worker::wait_ready`] waits for it.
    pub(crate) fn load(&self, model: Arc<Model>) {
        if self.shared.is_ready(&model.id()) {
            return;
        }
        self.shared.loading.store(true, Relaxed);
        let _ = lock(&self.tx).send(Msg::Load(model));
    }

    /// Waits until `id` is ready (true) or `timeout` passes (false).
    pub(crate) fn wait_ready(&self, id: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut r = lock(&self.shared.ready);
        while !r.iter().any(|x| x == id) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            r = self
                .shared
                .ready_cv
                .wait_timeout(r, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Hands a batch of `n` encoded reads to the thread. The answer comes
    /// on the receiver, and then `wake` is called; setting the flag tells
    /// the thread not to bother (the caller gave up waiting).
    pub(crate) fn submit(
        &self,
        model: &str,
        xs: Vec<f32>,
        n: usize,
        wake: Option<Arc<dyn Wake>>,
    ) -> (Receiver<Result<Vec<f32>, GpuError>>, Arc<AtomicBool>) {
        let (reply, rx) = mpsc::sync_channel(1);
        let cancelled = Arc::new(AtomicBool::new(false));
        let job = Job {
            model: model.to_string(),
            xs,
            n,
            reply,
            cancelled: cancelled.clone(),
            wake,
        };
        self.shared.queued_items.fetch_add(n as u64, Relaxed);
        self.shared.queued_jobs.fetch_add(1, Relaxed);
        // If the thread is gone, the receiver reports a closed channel.
        let _ = lock(&self.tx).send(Msg::Batch(job));
        (rx, cancelled)
    }
}

fn run(gpu: Gpu, rx: Receiver<Msg>, s: Arc<Shared>) {
    let mut models: Vec<GpuModel> = Vec::new();
    let mut stash: Option<Msg> = None;
    loop {
        let msg = match stash.take() {
            Some(m) => m,
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => return,
            },
        };
        match msg {
            Msg::Load(m) => {
                load(&gpu, &m, &mut models, &s);
                s.loading.store(false, Relaxed);
            }
            Msg::Batch(first) => {
                let mut jobs = vec![first];
                let mut total = jobs[0].n;
                if s.merge {
                    loop {
                        match rx.try_recv() {
                            Ok(Msg::Batch(j))
                                if j.model == jobs[0].model && total + j.n <= MAX_BATCH =>
                            {
                                total += j.n;
                                jobs.push(j);
                            }
                            Ok(other) => {
                                stash = Some(other);
                                break;
                            }
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                }
                run_jobs(jobs, &models, &s);
            }
        }
    }
}

fn load(gpu: &Gpu, m: &Model, models: &mut Vec<GpuModel>, s: &Shared) {
    let id = m.id();
    if models.iter().any(|g| g.id() == id) {
        return;
    }
    let gm = GpuModel::upload(gpu, m);
    let shape = m.shape_string();
    let result = gm.warm().and_then(|()| {
        if s.curve(&shape).is_none() {
            let c = calibrate(gpu, m, &CalibrateOptions::quick())?;
            lock(&s.curves).insert(shape, Arc::new(c.curve()));
        }
        Ok(())
    });
    if let Err(e) = result {
        s.failures.fetch_add(1, Relaxed);
        *lock(&s.last_error) = Some(format!("loading model {id} on the GPU: {e}"));
        return;
    }
    if models.len() == RESIDENT {
        let old = models.remove(0);
        lock(&s.ready).retain(|r| r != old.id());
    }
    models.push(gm);
    // Not loading any more before anyone is told it is ready: a caller
    // woken by `wait_ready` must find the device free for its batches.
    s.loading.store(false, Relaxed);
    lock(&s.ready).push(id);
    s.ready_cv.notify_all();
}

fn run_jobs(mut jobs: Vec<Job>, models: &[GpuModel], s: &Shared) {
    s.dequeued(&jobs);
    // Batches whose caller already gave up are not worth the device.
    let before = jobs.len();
    jobs.retain(|j| !j.cancelled.load(Relaxed));
    s.skipped.fetch_add((before - jobs.len()) as u64, Relaxed);
    if jobs.is_empty() {
        return;
    }
    let Some(gm) = models.iter().find(|g| g.id() == jobs[0].model) else {
        for j in jobs {
            let why = format!("model {} is not on the GPU", j.model);
            j.answer(Err(GpuError::Device(why)));
        }
        return;
    };
    let total: usize = jobs.iter().map(|j| j.n).sum();
    let xs: Vec<f32> = if jobs.len() == 1 {
        std::mem::take(&mut jobs[0].xs)
    } else {
        jobs.iter().flat_map(|j| j.xs.iter().copied()).collect()
    };
    let t = Instant::now();
    s.running_since_ns.store(s.now_ns(), Relaxed);
    s.running_items.store(total as u64, Relaxed);
    let delay = s.extra_delay_ns.load(Relaxed);
    if delay > 0 {
        std::thread::sleep(Duration::from_nanos(delay));
    }
    let r = gm.scores(&xs, total);
    let rt = t.elapsed().as_nanos() as u64;
    s.running_items.store(0, Relaxed);
    s.calls.fetch_add(1, Relaxed);
    s.jobs.fetch_add(jobs.len() as u64, Relaxed);
    if jobs.len() > 1 {
        s.merged_calls.fetch_add(1, Relaxed);
    }
    if let Some(curve) = s.curve(gm.shape()) {
        let b = bucket_for(total).unwrap_or(MAX_BATCH);
        s.contention.observe(rt, curve.gpu_p99_ns(b), s.now_ns());
    }
    match r {
        Ok(scores) => {
            let mut at = 0;
            for j in jobs {
                let n = j.n;
                j.answer(Ok(scores[at..at + n].to_vec()));
                at += n;
            }
        }
        Err(e) => {
            s.failures.fetch_add(1, Relaxed);
            *lock(&s.last_error) = Some(e.to_string());
            for j in jobs {
                j.answer(Err(GpuError::Device(e.to_string())));
            }
        }
    }
}

//! What a running daemon answers with: its array, models and recorder, and
//! the handling of each [`Command`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use augur_gpu_batcher::Offload;
use augur_predictor::{ModelPredictor, SlowPredictor};
use serde_json::json;

use super::models::{ModelBook, ModelEntry};
use super::protocol::{Command, Reply};
use super::tap::LogTap;
use crate::adapt::{AdaptConfig, Adapter, Round, Verdict};
use crate::array::{Array, ArrayStats, LatencyHist, ReplicaCounts};
use crate::emu::Profile;
use crate::route::Policy;

/// How long one "interval" of `status` lasts.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A counters-and-histograms sample, for per-interval rates.
#[derive(Clone)]
struct Sample {
    at: Instant,
    stats: ArrayStats,
    replicas: Vec<ReplicaCounts>,
    latency: Vec<LatencyHist>,
}

/// Who a daemon is, for `status` and `augur list`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DaemonInfo {
    /// `ublk` or `fuse`.
    pub frontend: &'static str,
    /// The socket's name: `ublk0`, or `fuse-` and the mount path.
    pub name: String,
    /// What users open: `/dev/ublkb0`, or the FUSE file.
    pub device: String,
}

/// A daemon's state as the control socket sees it. Everything here runs on
/// the control thread; the I/O threads only see the array's atomics.
pub struct Daemon {
    info: DaemonInfo,
    array: Array,
    started: Instant,
    book: Mutex<ModelBook>,
    /// The live training log's consumer (recording, adaptation).
    tap: LogTap,
    /// The two latest samples (older, newer), refreshed every [`INTERVAL`].
    samples: Mutex<(Sample, Sample)>,
    /// Where prediction batches run; every model installed goes through it.
    offload: Arc<Offload>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("info", self.info()).finish()
    }
}

impl Daemon {
    /// The state of a daemon serving `array`, whose model is `model`
    /// (loaded for every policy, so `policy set linnos` needs no file).
    pub fn new(info: DaemonInfo, array: Array, model: ModelEntry, offload: Arc<Offload>) -> Self {
        let s = Self::sample_of(&array);
        Daemon {
            offload,
            info,
            tap: LogTap::new(array.clone()),
            array,
            started: Instant::now(),
            book: Mutex::new(ModelBook::new(model)),
            samples: Mutex::new((s.clone(), s)),
        }
    }

    /// Who it is.
    pub fn info(&self) -> &DaemonInfo {
        &self.info
    }

    /// The array it serves.
    pub fn array(&self) -> &Array {
        &self.array
    }

    /// The active model.
    pub fn model(&self) -> ModelEntry {
        lock(&self.book).active().clone()
    }

    /// Where its prediction batches run.
    pub fn offload(&self) -> &Arc<Offload> {
        &self.offload
    }

    /// How long it has been up.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn sample_of(array: &Array) -> Sample {
        Sample {
            at: Instant::now(),
            stats: array.stats(),
            replicas: array
                .replica_status()
                .into_iter()
                .map(|r| r.counts)
                .collect(),
            latency: array.read_latency(),
        }
    }

    /// Takes a new sample if the newer one is an [`INTERVAL`] old (called
    /// by the control thread between requests).
    pub fn tick(&self) {
        let mut s = lock(&self.samples);
        if s.1.at.elapsed() >= INTERVAL {
            let new = Self::sample_of(&self.array);
            s.0 = std::mem::replace(&mut s.1, new);
        }
    }

    fn degraded(&self) -> bool {
        self.array.live_count() < self.array.replica_count()
    }

    /// Answers one command.
    pub fn handle(&self, cmd: Command) -> Reply {
        let r = match cmd {
            Command::Status => Ok(self.status()),
            Command::Stats => Ok(self.stats()),
            Command::ModelShow => Ok(self.model_show()),
            Command::ModelLoad { file } => self.model_load(&file),
            Command::ModelHistory => Ok(json!({ "events": lock(&self.book).history() })),
            Command::ModelRollback => self.model_rollback(),
            Command::ModelSave { file } => self.model_save(&file),
            Command::PolicySet { name } => self.policy_set(&name),
            Command::RecordStart { file } => self.record_start(&file),
            Command::RecordStop => self.record_stop(),
            Command::EmuSetProfile { profile } => self.emu_set_profile(&profile),
            Command::ReplicaFail { replica } => self.member(self.array.fail_replica(replica)),
            Command::ReplicaRemove { replica } => self.member(self.array.remove_replica(replica)),
            Command::ReplicaAdd { spec } => self.member(self.array.add_replica(&spec)),
            Command::ReplicaReplace { replica, spec } => {
                self.member(self.array.replace_replica(replica, &spec))
            }
            Command::Scrub { repair } => self
                .array
                .scrub(repair)
                .map(|()| json!({ "started": true, "repair": repair })),
            Command::SyncRate { bytes_per_s } => {
                self.array.set_sync_rate(bytes_per_s);
                tracing::info!("resync/rebuild/scrub rate limit now {bytes_per_s} bytes/s");
                Ok(json!({ "bytes_per_s": bytes_per_s }))
            }
        };
        match r {
            Ok(v) => Reply::ok(v, self.degraded()),
            Err(e) => Reply::error(e, self.degraded()),
        }
    }

    fn member(
        &self,
        r: Result<crate::array::MemberChange, String>,
    ) -> Result<serde_json::Value, String> {
        let c = r?;
        tracing::warn!("{}", c.what);
        Ok(json!(c))
    }

    fn status(&self) -> serde_json::Value {
        let (older, _) = lock(&self.samples).clone();
        let now = Self::sample_of(&self.array);
        let secs = now.at.duration_since(older.at).as_secs_f64().max(1e-9);
        let replicas: Vec<_> = self
            .array
            .replica_status()
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let lat = now.latency[i].since(&older.latency[i]);
                let c = r.counts.since(&older.replicas[i]);
                json!({
                    "replica": i,
                    "spec": r.spec,
                    "live": r.live,
                    "state": r.state,
                    "pending_regions": r.pending_regions,
                    "pending": self.array.pending_ios(i),
                    "iops": ((c.reads + c.writes + c.other) as f64 / secs).round() as u64,
                    "read_p50_us": lat.quantile_us(0.5),
                    "read_p99_us": lat.quantile_us(0.99),
                    "read_p999_us": lat.quantile_us(0.999),
                    "reads_in_interval": lat.count(),
                })
            })
            .collect();
        let d = now.stats.since(&older.stats);
        let book = lock(&self.book);
        json!({
            "frontend": self.info.frontend,
            "name": self.info.name,
            "device": self.info.device,
            "pid": std::process::id(),
            "uptime_s": self.started.elapsed().as_secs(),
            "policy": self.array.policy().name(),
            "model": book.active().id,
            "model_source": book.active().source,
            "recording": self.tap.recording().map(|f| f.display().to_string()),
            "adapting": self.tap.adapting(),
            "predict_on": self.offload.status(),
            "interval_s": (secs * 1000.0).round() / 1000.0,
            "iops": ((d.reads + d.writes + d.flushes + d.discards + d.write_zeroes) as f64 / secs)
                .round() as u64,
            "replicas": replicas,
            "sync": self.array.sync_status(),
            "bitmap": self.array.bitmap_status(),
        })
    }

    fn stats(&self) -> serde_json::Value {
        let s = self.array.stats();
        let judged = s.judged_reads;
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let replicas: Vec<_> = self
            .array
            .replica_status()
            .iter()
            .enumerate()
            .map(|(i, r)| json!({ "replica": i, "spec": r.spec, "live": r.live, "counts": r.counts }))
            .collect();
        json!({
            "uptime_s": self.started.elapsed().as_secs(),
            "counters": s,
            "replicas": replicas,
            "predictor": {
                "device": "cpu",
                "predictions": s.predictions,
                "predicted_slow": s.predicted_slow,
                "judged_reads": judged,
                "observed_slow": s.observed_slow,
                "accuracy": ratio(s.correct_predictions, judged),
                // As `augur eval`: of the reads that were slow, the share predicted fast.
                "false_submit_rate": ratio(s.false_submits, s.observed_slow),
            },
        })
    }

    fn model_show(&self) -> serde_json::Value {
        let book = lock(&self.book);
        let mut v = book.active().describe();
        v["policy"] = json!(self.array.policy().name());
        v["rollback_to"] = json!(book.previous().map(|m| m.id.clone()));
        v
    }

    /// The active policy rebuilt around `model`.
    fn policy_with(&self, name: &str, model: &ModelEntry) -> Result<Policy, String> {
        let p: Arc<dyn SlowPredictor> = self.offload.predictor(model.predictor.clone());
        Policy::from_name(name, Some(p)).map_err(|e| e.to_string())
    }

    fn model_load(&self, file: &str) -> Result<serde_json::Value, String> {
        // Read and validate here, on the control thread; the I/O threads
        // only ever see a complete model.
        let loaded = match ModelPredictor::load(file) {
            Ok(p) => ModelEntry::new(p, file),
            Err(e) => {
                let why = format!("{file}: {e}; the active model stays");
                lock(&self.book).reject(None, file.to_string(), why.clone());
                return Err(why);
            }
        };
        let mut book = lock(&self.book);
        let policy = self.policy_with(self.array.policy().name(), &loaded)?;
        self.array.set_policy(policy);
        let new = loaded.id.clone();
        let old = book.install(loaded, "load");
        tracing::info!("model {} ({file}) replaced {}", new, old.id);
        Ok(json!({ "old": old.id, "new": new, "source": file }))
    }

    fn model_rollback(&self) -> Result<serde_json::Value, String> {
        let mut book = lock(&self.book);
        let prev = book
            .previous()
            .cloned()
            .ok_or("no earlier model to roll back to")?;
        let policy = self.policy_with(self.array.policy().name(), &prev)?;
        self.array.set_policy(policy);
        let (old, new) = book.rollback().ok_or("no earlier model to roll back to")?;
        tracing::info!("model rolled back from {} to {}", old.id, new.id);
        Ok(json!({ "old": old.id, "new": new.id, "source": new.source }))
    }

    fn model_save(&self, file: &Path) -> Result<serde_json::Value, String> {
        let active = lock(&self.book).active().clone();
        // Never replace a file: it may be a model someone still needs.
        if std::fs::symlink_metadata(file).is_ok() {
            return Err(format!("{}: exists; not overwritten", file.display()));
        }
        active
            .predictor
            .model()
            .save(file)
            .map_err(|e| e.to_string())?;
        tracing::info!("model {} saved to {}", active.id, file.display());
        Ok(json!({ "id": active.id, "file": file.display().to_string(), "source": active.source }))
    }

    fn policy_set(&self, name: &str) -> Result<serde_json::Value, String> {
        let book = lock(&self.book);
        let policy = self.policy_with(name, book.active())?;
        let new = policy.name().to_string();
        let old = self.array.set_policy(policy);
        tracing::info!("policy {} replaced {}", new, old.name());
        Ok(json!({ "old": old.name(), "new": new }))
    }

    fn record_start(&self, file: &Path) -> Result<serde_json::Value, String> {
        self.tap.start_recording(file)?;
        Ok(json!({ "file": file.display().to_string() }))
    }

    fn record_stop(&self) -> Result<serde_json::Value, String> {
        let r = self.tap.stop_recording()?;
        Ok(json!({
            "file": r.file.display().to_string(),
            "records": r.records,
            "dropped": r.dropped,
        }))
    }

    fn emu_set_profile(&self, spec: &str) -> Result<serde_json::Value, String> {
        let p = if spec.ends_with(".toml") || spec.contains('/') {
            Profile::from_file(Path::new(spec))
        } else {
            Profile::builtin(spec)
        }
        .map_err(|e| e.to_string())?;
        let n = self.array.set_emu_profile(&p).map_err(|e| e.to_string())?;
        tracing::info!("{n} emulated replica(s) now run profile {}", p.name);
        Ok(json!({ "profile": p.name, "replicas": n }))
    }

    /// Runs online adaptation ([`crate::adapt`]) on a thread at idle
    /// priority until `stop` is set: the live training log feeds an
    /// [`Adapter`], a round runs every `every` once enough reads came in,
    /// and each install or rejection goes into the model history.
    pub fn start_adapter(
        self: &Arc<Self>,
        cfg: AdaptConfig,
        every: Duration,
        stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<()>, String> {
        let adapter = Arc::new(Mutex::new(Adapter::new(cfg)));
        self.tap.attach_adapter(adapter.clone())?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("augur-adapt".into())
            .spawn(move || {
                crate::adapt::idle_priority();
                let mut last = Instant::now();
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() < every {
                        continue;
                    }
                    // Only the copy of the window is taken under the lock.
                    let round = {
                        let mut a = lock(&adapter);
                        a.ready().then(|| (a.take_round(), a.rounds()))
                    };
                    if let Some((round, n)) = round {
                        last = Instant::now();
                        me.adapt_round(round, n);
                    }
                }
                me.tap.detach_adapter();
            })
            .map_err(|e| {
                self.tap.detach_adapter();
                format!("starting the adaptation thread: {e}")
            })
    }

    /// One round: train, judge, install or reject, write it down.
    fn adapt_round(&self, round: Round, n: u64) {
        let active = lock(&self.book).active().clone();
        let source = format!("adapt round {n}");
        match round.run(active.predictor.model()) {
            Verdict::Install(m, metrics) => {
                let entry = ModelEntry::new(ModelPredictor::new(*m, source.clone()), source);
                let mut book = lock(&self.book);
                // The active model may have been swapped by hand meanwhile:
                // then this candidate was judged against another one.
                if book.active().id != active.id {
                    let why = format!(
                        "the active model changed to {} during the round; candidate dropped",
                        book.active().id
                    );
                    book.reject(Some(entry.id.clone()), entry.source.clone(), why);
                    return;
                }
                match self.policy_with(self.array.policy().name(), &entry) {
                    Ok(p) => {
                        self.array.set_policy(p);
                        tracing::info!("adapt: installed {} ({})", entry.id, metrics.summary());
                        let note = format!(
                            "{}, trained in {:.1} s",
                            metrics.summary(),
                            metrics.train_seconds
                        );
                        book.install_noting(entry, "adapt", &note);
                    }
                    Err(e) => book.reject(Some(entry.id.clone()), entry.source.clone(), e),
                }
            }
            Verdict::Reject(why, metrics) => {
                tracing::info!("adapt: round {n} rejected: {why} ({})", metrics.summary());
                let note = format!(
                    "{why}: {}, trained in {:.1} s",
                    metrics.summary(),
                    metrics.train_seconds
                );
                lock(&self.book).reject(None, source, note);
            }
        }
    }

    /// Stops a recording still running (daemon exit), keeping what it wrote.
    pub fn finish(&self) {
        self.tap.finish();
    }
}

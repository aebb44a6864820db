//! The replica array: N equal-sized replicas behind one address space.
//!
//! Writes, flushes, discards and write-zeroes go to every live replica and
//! complete when all of them have; reads go to one replica chosen by the
//! routing [`Policy`]. A replica whose I/O fails is marked failed: reads stop
//! going to it, writes continue on the others, and the event is logged and
//! counted. With no replica left, requests fail with `EIO`.
//!
//! The data path is a [`Queue`]: one per thread, each owning one io_uring on
//! which it submits the replica I/O of the requests handed to it, the
//! emulator's completion delays (io_uring timeouts) and hedge timers. There is
//! no hand-off between threads and no thread per I/O. Requests handed to a
//! queue between two polls are routed together in one batch.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`Array`]: its replicas, configuration, opening and status |
//! | `replica.rs` | replica specs and opening their backings |
//! | `meta.rs` | the metadata sidecars: identity, generation, bitmap on disk |
//! | `assemble.rs` | reading them at open: identity checks, what to resync |
//! | `bitmap.rs` | the write-intent bitmap and each replica's pending regions |
//! | `sync.rs` | the background thread: bitmap clearing, resync, rebuild, scrub |
//! | `members.rs` | operator changes: fail, remove, add, replace a replica |
//! | `queue.rs` | [`Queue`]'s request state machine: route, fan out, retry, complete |
//! | `ring.rs` | the queue's io_uring: issuing replica I/O, timers, reaping |
//! | `sim.rs` | the same on the simulated clock: an event heap, no I/O |
//! | `slots.rs` | per-request and per-replica-I/O tables |
//! | `hedge.rs` | the latency window behind hedging |
//! | `stats.rs` | the named counters |
//! | `buf.rs` | aligned buffers for O_DIRECT |
//! | `error.rs` | [`ArrayError`] |

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use augur_feature_store::{HistorySnapshot, ReplicaHistory, TrainingLog};

use crate::emu::{Clock, FlashEmu};
use crate::route::{MAX_REPLICAS, Policy, PredictCost, ReplicaView};

mod assemble;
mod bitmap;
mod buf;
mod error;
mod hedge;
mod members;
pub mod meta;
mod parked;
mod queue;
mod replica;
mod ring;
pub(crate) mod signals;
mod sim;
mod slots;
mod stall;
mod stats;
mod sync;

pub use buf::AlignedBuf;
pub use error::ArrayError;
pub use members::MemberChange;
pub use meta::MetaOptions;
pub use queue::{Completion, Queue, Request};
pub use replica::{Backing, ReplicaSpec, SECTOR, open_backing};
pub use stall::{DEFAULT_STALL_AFTER, StallDump, StallRequest, StallSub, Watchdog};
pub use stats::{
    ArrayStats, LAT_BUCKETS, LatencyHist, ReplicaCounts, ReplicaStatus, lat_bucket, lat_bucket_top,
};
pub use sync::{DEFAULT_SYNC_RATE, ScrubReport, SyncKind, SyncStatus};

use stall::Heartbeat;
use stats::{Counters, LatencyTable, ReplicaCounters};

/// What an open queue shares with the rest of the array: the counters and
/// histograms it alone writes (summed by [`Array::stats`]) and its
/// heartbeat (watched by the [`Watchdog`]).
pub(crate) struct QueueTables {
    pub(crate) counters: Arc<Counters>,
    pub(crate) latency: Arc<LatencyTable>,
    pub(crate) beat: Arc<Heartbeat>,
}

/// A fault to inject into one replica, for tests and demonstrations: from the
/// given point on, every I/O to it fails with `EIO`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultPlan {
    /// Fail after this many I/Os to the replica.
    pub after_ios: Option<u64>,
    /// Fail from this time (ns since the array opened).
    pub at_ns: Option<u64>,
}

/// How to build an [`Array`].
#[derive(Clone, Debug)]
pub struct ArrayConfig {
    /// The replicas, 2 to 8 (1 is accepted for overhead measurements).
    pub replicas: Vec<ReplicaSpec>,
    /// Create missing replica files with this size.
    pub create_size: Option<u64>,
    /// Most I/Os in flight to one replica from one queue; more wait in order.
    pub replica_depth: u32,
    /// Seeds the emulators (replica i gets seed + i) and the `random` policy.
    pub seed: u64,
    /// Percentile of recent read latency after which `hedge` sends a second copy.
    pub hedge_percentile: f64,
    /// Fault injection, by replica index.
    pub faults: Vec<(usize, FaultPlan)>,
    /// Run on the simulated clock (no files, no io_uring, no data) instead
    /// of the real one.
    pub simulate: Option<SimOptions>,
    /// Keep identity and a write-intent bitmap in sidecar files, resync
    /// after a crash, allow rebuilds and scrubs (`None`: none of that, as a
    /// scratch array in a test or benchmark wants; ignored when simulated).
    pub meta: Option<MetaOptions>,
    /// Rate limit of resync, rebuild and scrub, bytes per second (0: none).
    pub sync_rate: u64,
    /// A request in flight longer than this is a stall: its queue logs one
    /// dump of its state and counts it (`Duration::ZERO`: never).
    pub stall_after: std::time::Duration,
}

/// How a simulated array runs: replicas of `size` bytes that hold no data,
/// whose I/O completes when their emulator says, in simulated time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimOptions {
    /// Device size in bytes.
    pub size: u64,
    /// What each predictor call costs on the simulated clock.
    pub predict_cost: PredictCost,
}

impl ArrayConfig {
    /// A configuration with the defaults: depth 64 per replica, seed 1, p95 hedging.
    pub fn new(replicas: Vec<ReplicaSpec>) -> Self {
        ArrayConfig {
            replicas,
            create_size: None,
            replica_depth: 64,
            seed: 1,
            hedge_percentile: 95.0,
            faults: Vec::new(),
            simulate: None,
            meta: None,
            sync_rate: DEFAULT_SYNC_RATE,
            stall_after: DEFAULT_STALL_AFTER,
        }
    }

    /// Replica files [`Array::open`] will create (`create_size` set and the
    /// file missing), so a front-end can remove them again if it fails.
    pub fn files_to_create(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self
            .replicas
            .iter()
            .filter(|s| self.create_size.is_some() && !s.path.exists())
            .map(|s| s.path.clone())
            .collect();
        if let Some(m) = &self.meta {
            let cars: Vec<PathBuf> = v.iter().map(|p| m.sidecar(p)).collect();
            v.extend(cars);
        }
        v
    }
}

/// What backs one replica slot; replaced whole when the operator replaces
/// the replica (the old one is kept until the array closes, so that no
/// file descriptor an I/O in flight names is reused).
pub(crate) struct Backend {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
    /// The backing (none on the simulated clock, or once removed).
    pub(crate) file: Option<File>,
    pub(crate) direct: bool,
    pub(crate) emu: Option<Mutex<FlashEmu>>,
    pub(crate) fault: FaultPlan,
}

pub(crate) struct Replica {
    pub(crate) backend: ArcSwap<Backend>,
    pub(crate) history: ReplicaHistory,
    pub(crate) failed: AtomicBool,
    /// Taken out by the operator (`replica remove`): a failed slot without a backing.
    pub(crate) removed: AtomicBool,
    pub(crate) ios: AtomicU64,
    pub(crate) counters: ReplicaCounters,
}

pub(crate) struct Inner {
    pub(crate) replicas: Vec<Replica>,
    pub(crate) size: u64,
    /// Where the array's time comes from (real or simulated).
    pub(crate) clock: Clock,
    /// What a prediction batch costs on the simulated clock.
    pub(crate) predict_cost: PredictCost,
    /// The routing policy (and its model), swapped whole while I/O runs.
    pub(crate) policy: ArcSwap<Policy>,
    pub(crate) replica_depth: u32,
    pub(crate) seed: u64,
    pub(crate) hedge_percentile: f64,
    /// Where completed reads' training records go while recording.
    pub(crate) log: ArcSwapOption<TrainingLog>,
    /// Events that are no queue's (a replica marked failed) and the totals
    /// of queues that have closed.
    pub(crate) counters: Counters,
    /// The shared tables of the open queues.
    pub(crate) queue_counters: Mutex<Vec<QueueTables>>,
    /// The read-latency histograms of queues that have closed.
    pub(crate) latency: LatencyTable,
    /// The write-intent bitmap and pending regions (arrays with metadata).
    pub(crate) intent: Option<bitmap::Intent>,
    /// The background thread's status and wake-up.
    pub(crate) sync: Arc<sync::SyncShared>,
    /// Backings replaced while the array runs, kept open until it closes.
    pub(crate) retired: Mutex<Vec<Arc<Backend>>>,
    /// The metadata options (for sidecars of replicas added later).
    pub(crate) meta: Option<MetaOptions>,
    /// The device the array is served as (never accepted as a replica).
    pub(crate) device: Mutex<Option<PathBuf>>,
    /// Age (ns, on the array's clock) after which a request in flight is a stall.
    pub(crate) stall_after_ns: u64,
}

/// A replicated block device in a process: open it, then drive it through
/// one [`Queue`] per thread.
#[derive(Clone)]
pub struct Array {
    inner: Arc<Inner>,
}

impl Array {
    /// Opens (and, with `create_size`, creates) the replicas and checks that
    /// they fit together. On error nothing this call created is left behind.
    pub fn open(cfg: ArrayConfig, policy: Policy) -> Result<Array, ArrayError> {
        check_config(&cfg)?;
        let (backings, size, clock, predict_cost): (Vec<Option<(File, bool)>>, _, _, _) =
            match &cfg.simulate {
                Some(sim) => {
                    check_simulated(&cfg, sim)?;
                    let none = (0..cfg.replicas.len()).map(|_| None).collect();
                    (none, sim.size, Clock::simulated(), sim.predict_cost)
                }
                None => {
                    let (files, size) = open_files(&cfg)?;
                    let some = files.into_iter().map(Some).collect();
                    (some, size, Clock::real(), PredictCost::default())
                }
            };
        let replicas = cfg
            .replicas
            .iter()
            .zip(backings)
            .enumerate()
            .map(|(i, (s, b))| Replica {
                backend: ArcSwap::from_pointee(Backend {
                    path: s.path.clone(),
                    text: s.text.clone(),
                    direct: b.as_ref().is_some_and(|b| b.1),
                    file: b.map(|b| b.0),
                    emu: s
                        .profile
                        .clone()
                        .map(|p| Mutex::new(FlashEmu::new(p, cfg.seed.wrapping_add(i as u64)))),
                    fault: cfg
                        .faults
                        .iter()
                        .find(|(r, _)| *r == i)
                        .map(|(_, f)| *f)
                        .unwrap_or_default(),
                }),
                history: ReplicaHistory::new(),
                failed: AtomicBool::new(false),
                removed: AtomicBool::new(false),
                ios: AtomicU64::new(0),
                counters: ReplicaCounters::default(),
            })
            .collect();
        let meta = cfg.meta.clone().filter(|_| cfg.simulate.is_none());
        let assembly = match &meta {
            Some(m) => {
                let paths: Vec<PathBuf> = cfg.replicas.iter().map(|s| s.path.clone()).collect();
                Some(assemble::assemble(m, &paths, size)?)
            }
            None => None,
        };
        let (intent, start) = match assembly {
            Some(a) => (Some(a.intent), a.start),
            None => (None, None),
        };
        let sync = Arc::new(sync::SyncShared::default());
        sync.rate.store(cfg.sync_rate, Relaxed);
        let array = Array {
            inner: Arc::new(Inner {
                intent,
                sync,
                retired: Mutex::new(Vec::new()),
                device: Mutex::new(None),
                stall_after_ns: cfg.stall_after.as_nanos().min(u64::MAX as u128) as u64,
                meta,
                replicas,
                size,
                clock,
                predict_cost,
                policy: ArcSwap::from_pointee(policy),
                replica_depth: cfg.replica_depth,
                seed: cfg.seed,
                hedge_percentile: cfg.hedge_percentile,
                log: ArcSwapOption::empty(),
                counters: Counters::default(),
                queue_counters: Mutex::new(Vec::new()),
                latency: LatencyTable::new(cfg.replicas.len()),
            }),
        };
        if array.inner.intent.is_some() {
            sync::start(&array.inner);
            if start.is_some() {
                array.inner.sync.kick();
            }
        }
        Ok(array)
    }

    /// Same as [`Array::open`], recording every completed read into `log`.
    pub fn open_with_log(
        cfg: ArrayConfig,
        policy: Policy,
        log: Arc<TrainingLog>,
    ) -> Result<Array, ArrayError> {
        let a = Array::open(cfg, policy)?;
        a.set_log(Some(log));
        Ok(a)
    }

    /// Starts (`Some`) or stops (`None`) recording completed reads' training
    /// records into a log, while I/O runs; returns the log it replaced.
    pub fn set_log(&self, log: Option<Arc<TrainingLog>>) -> Option<Arc<TrainingLog>> {
        self.inner.log.swap(log)
    }

    /// Device size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// Number of replicas (live or failed).
    pub fn replica_count(&self) -> usize {
        self.inner.replicas.len()
    }

    /// Number of live replicas.
    pub fn live_count(&self) -> usize {
        self.inner
            .replicas
            .iter()
            .filter(|r| !r.failed.load(Relaxed))
            .count()
    }

    /// The routing policy in use now.
    pub fn policy(&self) -> Arc<Policy> {
        self.inner.policy.load_full()
    }

    /// Replaces the routing policy (with its model) while I/O runs and
    /// returns the one it replaced. Lock-free for the queues: a batch being
    /// routed finishes with the old policy, the next one uses the new.
    pub fn set_policy(&self, policy: Policy) -> Arc<Policy> {
        self.inner.policy.swap(Arc::new(policy))
    }

    /// Nanoseconds since the array opened (the clock of the emulators and logs).
    pub fn now_ns(&self) -> u64 {
        self.inner.now_ns()
    }

    /// Per replica, the GC windows its emulator remembers (`(start, end)`
    /// in ns on [`Array::now_ns`]'s clock, oldest first; see
    /// [`FlashEmu::gc_windows`]); empty for a replica that is not emulated.
    pub fn gc_windows(&self) -> Vec<Vec<(u64, u64)>> {
        self.inner
            .replicas
            .iter()
            .map(|r| match &r.backend.load().emu {
                Some(emu) => emu
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .gc_windows()
                    .collect(),
                None => Vec::new(),
            })
            .collect()
    }

    /// The clock the array runs on.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Opens a queue for one thread, with an io_uring of `ring_entries`.
    pub fn queue(&self, id: u32, ring_entries: u32) -> Result<Queue, ArrayError> {
        Queue::new(self.inner.clone(), id, ring_entries)
    }

    /// The counters, all queues together.
    pub fn stats(&self) -> ArrayStats {
        // Under the lock a closing queue takes to hand its totals over, so
        // its counts are in exactly one of the two places.
        let open = self
            .inner
            .queue_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut s = self.inner.counters.snapshot();
        for q in open.iter() {
            s.add(&q.counters.snapshot());
        }
        s
    }

    /// Switches every emulated replica to `profile` from now on; returns how
    /// many there were. The profile must be valid.
    pub fn set_emu_profile(&self, profile: &crate::emu::Profile) -> Result<usize, ArrayError> {
        profile
            .validate()
            .map_err(|e| ArrayError::BadSpec(e.to_string()))?;
        let now = self.now_ns();
        let mut n = 0;
        for (i, r) in self.inner.replicas.iter().enumerate() {
            if let Some(emu) = &r.backend.load().emu {
                let mut e = emu.lock().unwrap_or_else(|p| p.into_inner());
                // A new seed per switch, so a switch back is not a replay.
                let seed = self.inner.seed.wrapping_add(i as u64) ^ now.rotate_left(17);
                e.set_profile(profile.clone(), seed, now);
                n += 1;
            }
        }
        if n == 0 {
            return Err(ArrayError::BadSpec(
                "no replica is emulated (emu:PROFILE:PATH), so there is no profile to set".into(),
            ));
        }
        Ok(n)
    }

    /// I/Os pending on replica `i` now.
    pub fn pending_ios(&self, i: usize) -> u32 {
        self.inner
            .replicas
            .get(i)
            .map_or(0, |r| r.history.pending().1)
    }

    /// Each replica's read-latency histogram since the array opened (every
    /// read it answered, hedged copies included; the replica's own time).
    pub fn read_latency(&self) -> Vec<LatencyHist> {
        let open = self
            .inner
            .queue_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (0..self.inner.replicas.len())
            .map(|i| {
                let mut h = self.inner.latency.snapshot(i);
                for q in open.iter() {
                    h.add(&q.latency.snapshot(i));
                }
                h
            })
            .collect()
    }

    /// Each replica's state and counters.
    pub fn replica_status(&self) -> Vec<ReplicaStatus> {
        self.inner
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let b = r.backend.load();
                let pending = self
                    .inner
                    .intent
                    .as_ref()
                    .map_or(0, |it| it.pending_count(i));
                ReplicaStatus {
                    spec: b.text.clone(),
                    live: !r.failed.load(Relaxed),
                    direct: b.direct,
                    counts: r.counters.snapshot(),
                    state: if r.removed.load(Relaxed) {
                        "removed"
                    } else if r.failed.load(Relaxed) {
                        "failed"
                    } else if pending > 0 {
                        "syncing"
                    } else {
                        "in-sync"
                    },
                    pending_regions: pending as u64,
                }
            })
            .collect()
    }

    /// The background resync/rebuild/scrub: whether one runs and how far it is.
    pub fn sync_status(&self) -> SyncStatus {
        self.inner.sync.status()
    }

    /// The write-intent bitmap: (regions, dirty now, region size), if the
    /// array keeps metadata.
    pub fn bitmap_status(&self) -> Option<BitmapStatus> {
        let it = self.inner.intent.as_ref()?;
        let book = it.lock_book();
        Some(BitmapStatus {
            array_id: meta::id_text(book.array_id),
            generation: book.generation,
            regions: it.regions as u64,
            region_size: it.region_size,
            dirty: it.dirty.count() as u64,
            marked_total: it.marked.load(Relaxed),
            cleared_total: it.cleared.load(Relaxed),
            write_errors: it.errors.load(Relaxed),
        })
    }

    /// Starts a scrub in the background (see [`SyncStatus::last_scrub`]
    /// for its result); refused while a resync or rebuild runs.
    pub fn scrub(&self, repair: bool) -> Result<(), String> {
        let Some(it) = self.inner.intent.as_ref() else {
            return Err(
                "this array keeps no metadata (started with --no-bitmap): it cannot scrub".into(),
            );
        };
        let pending = it.any_pending().len();
        if pending > 0 {
            return Err(format!(
                "{pending} region(s) still to resync or rebuild: scrub once that is done"
            ));
        }
        self.inner.sync.request_scrub(repair)
    }

    /// Stops the background thread (bitmap clearing, a resync, rebuild or
    /// scrub in progress: those resume at the next start). A front-end calls
    /// it when it stops serving, so that the clean stop (flush, bitmap
    /// cleared) follows as soon as the last handle goes, not after a copy.
    pub fn close(&self) {
        self.inner.sync.stop();
    }

    /// Sets the resync/rebuild/scrub rate limit, bytes per second (0: none).
    pub fn set_sync_rate(&self, rate: u64) {
        self.inner.sync.rate.store(rate, Relaxed);
    }
}

/// The write-intent bitmap's state, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BitmapStatus {
    /// The array's identity.
    pub array_id: String,
    /// Its generation (bumped at each membership change).
    pub generation: u64,
    /// Regions in the bitmap.
    pub regions: u64,
    /// Bytes per region.
    pub region_size: u64,
    /// Regions dirty now.
    pub dirty: u64,
    /// Regions marked dirty since start.
    pub marked_total: u64,
    /// Regions cleared since start.
    pub cleared_total: u64,
    /// Metadata writes that failed.
    pub write_errors: u64,
}

/// The checks every array's configuration must pass, before anything is opened.
fn check_config(cfg: &ArrayConfig) -> Result<(), ArrayError> {
    let n = cfg.replicas.len();
    if n == 0 || n > MAX_REPLICAS {
        return Err(ArrayError::BadSpec(format!(
            "an array needs 1 to {MAX_REPLICAS} replicas, got {n}"
        )));
    }
    if cfg.replica_depth == 0 {
        return Err(ArrayError::BadSpec(
            "replica depth must be at least 1".into(),
        ));
    }
    if let Some(s) = cfg.create_size
        && (s == 0 || s % 4096 != 0)
    {
        return Err(ArrayError::BadSpec(format!(
            "--size {s} must be a non-zero multiple of 4096"
        )));
    }
    for (i, _) in &cfg.faults {
        if *i >= n {
            return Err(ArrayError::BadSpec(format!(
                "fault injection names replica {i}, but there are {n}"
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for s in &cfg.replicas {
        if !seen.insert(s.path.clone()) {
            return Err(ArrayError::BadSpec(format!(
                "replica {} is given twice",
                s.path.display()
            )));
        }
    }
    Ok(())
}

/// A simulated array has no files: every replica must be emulated (its
/// latency is the emulator's alone), and the size is given.
fn check_simulated(cfg: &ArrayConfig, sim: &SimOptions) -> Result<(), ArrayError> {
    check_emulated(cfg)?;
    if sim.size == 0 || !sim.size.is_multiple_of(4096) {
        return Err(ArrayError::BadSpec(format!(
            "size {} must be a non-zero multiple of 4096",
            sim.size
        )));
    }
    Ok(())
}

/// Checks that the replicas of `cfg` can be opened (created, with
/// `create_size`) and agree in size, and leaves nothing behind: a tool
/// refuses bad replicas with this before it does anything slow (calibrating
/// a GPU), with the same error opening the array would give.
/// On the simulated clock (`simulated`) there are no files: every replica
/// must be emulated, and that is all this checks.
pub fn check_replicas(cfg: &ArrayConfig, simulated: bool) -> Result<(), ArrayError> {
    if simulated {
        return check_emulated(cfg);
    }
    let existed: Vec<bool> = cfg.replicas.iter().map(|s| s.path.exists()).collect();
    drop(open_files(cfg)?);
    for (s, existed) in cfg.replicas.iter().zip(existed) {
        if !existed {
            let _ = std::fs::remove_file(&s.path);
        }
    }
    Ok(())
}

/// Every replica is emulated, as the simulated clock needs.
fn check_emulated(cfg: &ArrayConfig) -> Result<(), ArrayError> {
    match cfg.replicas.iter().find(|s| s.profile.is_none()) {
        Some(s) => Err(ArrayError::BadSpec(format!(
            "replica {} is not emulated: the simulated clock needs emu:PROFILE:PATH replicas (or --clock real)",
            s.text
        ))),
        None => Ok(()),
    }
}

/// Opens (and, with `create_size`, creates) every replica's backing and
/// checks that the sizes agree. On error nothing this call created is left.
fn open_files(cfg: &ArrayConfig) -> Result<(Vec<(File, bool)>, u64), ArrayError> {
    let n = cfg.replicas.len();
    let mut backings = Vec::with_capacity(n);
    let cleanup = |backings: &Vec<(PathBuf, bool)>| {
        for (p, created) in backings {
            if *created {
                let _ = std::fs::remove_file(p);
            }
        }
    };
    let mut opened = Vec::with_capacity(n);
    for s in &cfg.replicas {
        match open_backing(&s.path, cfg.create_size) {
            Ok(b) => {
                opened.push((s.path.clone(), b.created));
                backings.push(b);
            }
            Err(e) => {
                cleanup(&opened);
                return Err(e);
            }
        }
    }
    let size = backings[0].size;
    if backings.iter().any(|b| b.size != size) {
        let list: Vec<String> = cfg
            .replicas
            .iter()
            .zip(&backings)
            .map(|(s, b)| format!("{} is {} bytes", s.path.display(), b.size))
            .collect();
        cleanup(&opened);
        return Err(ArrayError::SizeMismatch(list.join(", ")));
    }
    if size == 0 || size % 4096 != 0 {
        cleanup(&opened);
        return Err(ArrayError::BadSpec(format!(
            "replica size {size} must be a non-zero multiple of 4096"
        )));
    }
    Ok((
        backings.into_iter().map(|b| (b.file, b.direct)).collect(),
        size,
    ))
}

impl Inner {
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// True when replica `i` takes I/O.
    #[inline]
    pub(crate) fn is_live(&self, i: usize) -> bool {
        !self.replicas[i].failed.load(SeqCst)
    }

    /// True when replica `i` may answer a read of `offset..+len`: live, and
    /// holding that range's data (not waiting for a resync or rebuild).
    #[inline]
    pub(crate) fn readable(&self, i: usize, offset: u64, len: u32) -> bool {
        self.is_live(i)
            && self
                .intent
                .as_ref()
                .is_none_or(|it| it.readable(i, offset, len))
    }

    /// Reads `buf.len()` bytes of replica `i` at `offset` (outside the
    /// queues: resync, rebuild, scrub).
    pub(crate) fn read_replica(
        &self,
        i: usize,
        offset: u64,
        buf: &mut [u8],
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let b = self.replicas[i].backend.load();
        let f = b
            .file
            .as_ref()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF))?;
        f.read_exact_at(buf, offset)
    }

    /// Writes `buf` to replica `i` at `offset` (outside the queues).
    pub(crate) fn write_replica(&self, i: usize, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let b = self.replicas[i].backend.load();
        let f = b
            .file
            .as_ref()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF))?;
        f.write_all_at(buf, offset)
    }

    /// fdatasync on every live replica; false if one failed (it is marked failed).
    pub(crate) fn flush_live(&self) -> bool {
        let mut ok = true;
        for i in 0..self.replicas.len() {
            if !self.is_live(i) {
                continue;
            }
            let b = self.replicas[i].backend.load();
            if let Some(f) = b.file.as_ref()
                && let Err(e) = f.sync_data()
            {
                self.mark_failed(i, &format!("fdatasync failed: {e}"));
                ok = false;
            }
        }
        ok
    }

    pub(crate) fn mark_failed(&self, i: usize, why: &str) {
        let r = &self.replicas[i];
        if !r.failed.swap(true, SeqCst) {
            if let Some(it) = &self.intent {
                it.drop_pending(i);
                let mut book = it.lock_book();
                book.members[i] = bitmap::Member::Out;
                it.change(&mut book);
            }
            self.counters.replica_failures.fetch_add(1, Relaxed);
            let live = self
                .replicas
                .iter()
                .filter(|r| !r.failed.load(Relaxed))
                .count();
            tracing::error!(
                "replica {i} ({}) FAILED: {why}; reads no longer go to it, writes continue on {live} live replica(s)",
                r.backend.load().path.display()
            );
            if live == 0 {
                tracing::error!("no live replica left: every request now fails with EIO");
            }
        }
    }
}

impl ReplicaView for Inner {
    fn replica_count(&self) -> usize {
        self.replicas.len()
    }
    fn is_live(&self, i: usize) -> bool {
        Inner::is_live(self, i)
    }
    fn snapshot(&self, i: usize, now_ns: u64) -> HistorySnapshot {
        self.replicas[i].history.snapshot_at(now_ns)
    }
    fn pending_ios(&self, i: usize) -> u32 {
        self.replicas[i].history.pending().1
    }
    fn forecast_read_ns(&self, i: usize, now_ns: u64, offset: u64, len: u32) -> Option<u64> {
        let b = self.replicas[i].backend.load();
        let emu = b.emu.as_ref()?;
        let emu = emu.lock().unwrap_or_else(|p| p.into_inner());
        Some(emu.peek_read_latency(now_ns, offset, len))
    }
    fn stall_age_ns(&self, i: usize, now_ns: u64) -> Option<u64> {
        let b = self.replicas[i].backend.load();
        let emu = b.emu.as_ref()?;
        let emu = emu.lock().unwrap_or_else(|p| p.into_inner());
        emu.stalled_since(now_ns).map(|t| now_ns.saturating_sub(t))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A clean stop: the background thread ends, every replica is
        // flushed, and the bitmap is cleared (when nothing is missing).
        if let Some(it) = &self.intent {
            self.sync.stop();
            let flushed = self.flush_live();
            if flushed {
                it.clean_stop();
            }
        }
    }
}

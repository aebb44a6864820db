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

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use augur_feature_store::{
    HistorySnapshot, Op, ReplicaHistory, Ticket, TrainingLog, TrainingRecord,
};
use io_uring::{IoUring, opcode, squeue, types};

use crate::buf::AlignedBuf;
use crate::emu::rng::Rng;
use crate::emu::{FlashEmu, Outcome};
use crate::error::ArrayError;
use crate::policy::{
    MAX_REPLICAS, Policy, PolicyKind, ReadInfo, ReplicaView, Route, RouteScratch, next_after,
};
use crate::replica::{ReplicaSpec, SECTOR, open_backing};

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
        }
    }

    /// Replica files [`Array::open`] will create (`create_size` set and the
    /// file missing), so a front-end can remove them again if it fails.
    pub fn files_to_create(&self) -> Vec<PathBuf> {
        self.replicas
            .iter()
            .filter(|s| self.create_size.is_some() && !s.path.exists())
            .map(|s| s.path.clone())
            .collect()
    }
}

/// Per-replica counters, readable while I/O runs.
#[derive(Debug, Default)]
struct ReplicaCounters {
    reads: AtomicU64,
    writes: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
}

struct Replica {
    path: PathBuf,
    text: String,
    file: File,
    direct: bool,
    emu: Option<Mutex<FlashEmu>>,
    history: ReplicaHistory,
    failed: AtomicBool,
    fault: FaultPlan,
    ios: AtomicU64,
    counters: ReplicaCounters,
}

/// Array-wide counters (all queues together).
#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    write_zeroes: AtomicU64,
    rerouted: AtomicU64,
    hedges: AtomicU64,
    hedge_wins: AtomicU64,
    predictions: AtomicU64,
    all_slow: AtomicU64,
    read_retries: AtomicU64,
    failed_requests: AtomicU64,
    replica_failures: AtomicU64,
}

struct Inner {
    replicas: Vec<Replica>,
    size: u64,
    start: Instant,
    policy: Policy,
    replica_depth: u32,
    seed: u64,
    hedge_percentile: f64,
    log: Option<Arc<TrainingLog>>,
    counters: Counters,
}

/// A replicated block device in a process: open it, then drive it through
/// one [`Queue`] per thread.
#[derive(Clone)]
pub struct Array {
    inner: Arc<Inner>,
}

/// A snapshot of the array's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArrayStats {
    /// Read requests completed.
    pub reads: u64,
    /// Write requests completed.
    pub writes: u64,
    /// Flush requests completed.
    pub flushes: u64,
    /// Discard requests completed.
    pub discards: u64,
    /// Write-zeroes requests completed.
    pub write_zeroes: u64,
    /// Reads sent to a replica other than their primary.
    pub rerouted: u64,
    /// Hedged second copies sent (extra replica reads).
    pub hedges: u64,
    /// Hedged copies that answered first.
    pub hedge_wins: u64,
    /// Predictor calls.
    pub predictions: u64,
    /// Reads for which every replica was predicted slow.
    pub all_slow: u64,
    /// Reads retried on another replica after an error.
    pub read_retries: u64,
    /// Requests that failed (no replica could serve them).
    pub failed_requests: u64,
    /// Replicas marked failed.
    pub replica_failures: u64,
}

/// The state of one replica, for status displays.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicaStatus {
    /// The spec it was opened from.
    pub spec: String,
    /// False once marked failed.
    pub live: bool,
    /// True when opened with O_DIRECT.
    pub direct: bool,
    /// Replica reads issued.
    pub reads: u64,
    /// Replica writes issued.
    pub writes: u64,
    /// Replica flushes, discards and write-zeroes issued.
    pub other: u64,
    /// Replica I/O errors seen.
    pub errors: u64,
}

impl Array {
    /// Opens (and, with `create_size`, creates) the replicas and checks that
    /// they fit together. On error nothing this call created is left behind.
    pub fn open(cfg: ArrayConfig, policy: Policy) -> Result<Array, ArrayError> {
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
        let replicas = cfg
            .replicas
            .iter()
            .zip(backings)
            .enumerate()
            .map(|(i, (s, b))| Replica {
                path: s.path.clone(),
                text: s.text.clone(),
                file: b.file,
                direct: b.direct,
                emu: s
                    .profile
                    .clone()
                    .map(|p| Mutex::new(FlashEmu::new(p, cfg.seed.wrapping_add(i as u64)))),
                history: ReplicaHistory::new(),
                failed: AtomicBool::new(false),
                fault: cfg
                    .faults
                    .iter()
                    .find(|(r, _)| *r == i)
                    .map(|(_, f)| *f)
                    .unwrap_or_default(),
                ios: AtomicU64::new(0),
                counters: ReplicaCounters::default(),
            })
            .collect();
        Ok(Array {
            inner: Arc::new(Inner {
                replicas,
                size,
                start: Instant::now(),
                policy,
                replica_depth: cfg.replica_depth,
                seed: cfg.seed,
                hedge_percentile: cfg.hedge_percentile,
                log: None,
                counters: Counters::default(),
            }),
        })
    }

    /// Same as [`Array::open`], recording every completed read into `log`.
    pub fn open_with_log(
        cfg: ArrayConfig,
        policy: Policy,
        log: Arc<TrainingLog>,
    ) -> Result<Array, ArrayError> {
        let mut a = Array::open(cfg, policy)?;
        if let Some(inner) = Arc::get_mut(&mut a.inner) {
            inner.log = Some(log);
        }
        Ok(a)
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

    /// The routing policy in use.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Nanoseconds since the array opened (the clock of the emulators and logs).
    pub fn now_ns(&self) -> u64 {
        self.inner.now_ns()
    }

    /// Opens a queue for one thread, with an io_uring of `ring_entries`.
    pub fn queue(&self, id: u32, ring_entries: u32) -> Result<Queue, ArrayError> {
        Queue::new(self.inner.clone(), id, ring_entries)
    }

    /// The counters, all queues together.
    pub fn stats(&self) -> ArrayStats {
        let c = &self.inner.counters;
        ArrayStats {
            reads: c.reads.load(Relaxed),
            writes: c.writes.load(Relaxed),
            flushes: c.flushes.load(Relaxed),
            discards: c.discards.load(Relaxed),
            write_zeroes: c.write_zeroes.load(Relaxed),
            rerouted: c.rerouted.load(Relaxed),
            hedges: c.hedges.load(Relaxed),
            hedge_wins: c.hedge_wins.load(Relaxed),
            predictions: c.predictions.load(Relaxed),
            all_slow: c.all_slow.load(Relaxed),
            read_retries: c.read_retries.load(Relaxed),
            failed_requests: c.failed_requests.load(Relaxed),
            replica_failures: c.replica_failures.load(Relaxed),
        }
    }

    /// Each replica's state and counters.
    pub fn replica_status(&self) -> Vec<ReplicaStatus> {
        self.inner
            .replicas
            .iter()
            .map(|r| ReplicaStatus {
                spec: r.text.clone(),
                live: !r.failed.load(Relaxed),
                direct: r.direct,
                reads: r.counters.reads.load(Relaxed),
                writes: r.counters.writes.load(Relaxed),
                other: r.counters.other.load(Relaxed),
                errors: r.counters.errors.load(Relaxed),
            })
            .collect()
    }
}

impl Inner {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn mark_failed(&self, i: usize, why: &str) {
        let r = &self.replicas[i];
        if !r.failed.swap(true, Relaxed) {
            self.counters.replica_failures.fetch_add(1, Relaxed);
            let live = self
                .replicas
                .iter()
                .filter(|r| !r.failed.load(Relaxed))
                .count();
            tracing::error!(
                "replica {i} ({}) FAILED: {why}; reads no longer go to it, writes continue on {live} live replica(s)",
                r.path.display()
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
        !self.replicas[i].failed.load(Relaxed)
    }
    fn snapshot(&self, i: usize, now_ns: u64) -> HistorySnapshot {
        self.replicas[i].history.snapshot_at(now_ns)
    }
    fn forecast_read_ns(&self, i: usize, now_ns: u64, offset: u64, len: u32) -> Option<u64> {
        let emu = self.replicas[i].emu.as_ref()?;
        let emu = emu.lock().unwrap_or_else(|p| p.into_inner());
        Some(emu.peek_read_latency(now_ns, offset, len))
    }
}

/// One block request handed to a [`Queue`].
#[derive(Debug)]
pub struct Request {
    /// What to do.
    pub op: Op,
    /// Byte offset (a multiple of 512).
    pub offset: u64,
    /// Length in bytes (a multiple of 512; 0 for flush).
    pub len: u32,
    /// Data to write, or space to read into (len bytes); `None` for the others.
    pub buf: Option<AlignedBuf>,
    /// Caller's tag, returned in the completion.
    pub user: u64,
}

/// A finished request.
#[derive(Debug)]
pub struct Completion {
    /// The request's tag.
    pub user: u64,
    /// 0 on success, a negative errno otherwise.
    pub result: i32,
    /// The request's buffer (for reads, holding the data; it may be a
    /// different allocation of the same length when a hedged copy won).
    pub buf: Option<AlignedBuf>,
    /// The replica that served a read.
    pub replica: Option<u16>,
}

/// user_data layout: index in bits 0..32, kind in bits 32..40, generation above.
const UD_IO: u64 = 1;
const UD_DELAY: u64 = 2;
const UD_HEDGE: u64 = 3;

fn ud(kind: u64, idx: usize, generation: u32) -> u64 {
    (idx as u64) | (kind << 32) | ((generation as u64 & 0xFF_FFFF) << 40)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SubKind {
    /// A read's first copy, into the request's buffer.
    Main,
    /// A hedged read copy, into its own buffer.
    Hedge,
    /// One replica's share of a write, flush, discard or write-zeroes.
    Copy,
}

struct Sub {
    req: usize,
    replica: u16,
    kind: SubKind,
    op: Op,
    ticket: Option<Ticket>,
    issue_ns: u64,
    emu_done_ns: u64,
    res: i32,
    /// The result that means success: the length for reads and writes, else 0.
    expect: i32,
    buf: Option<AlignedBuf>,
    snap: Option<HistorySnapshot>,
    /// Kernel reads the timespec when the SQE is submitted; boxed so the
    /// address stays put while the sub table grows.
    ts: Box<types::Timespec>,
}

struct Slot {
    active: bool,
    generation: u32,
    op: Op,
    offset: u64,
    len: u32,
    user: u64,
    buf: Option<AlignedBuf>,
    outstanding: u32,
    ok: u32,
    done: bool,
    primary: u16,
    tried: u16,
    hedged: bool,
    start_ns: u64,
    ts: Box<types::Timespec>,
}

/// Rolling percentile of recent read latencies, for hedging.
struct LatencyWindow {
    samples: Vec<u64>,
    next: usize,
    filled: bool,
    since: u32,
    threshold_ns: u64,
    pct: f64,
    scratch: Vec<u64>,
}

const WINDOW: usize = 2048;
/// Hedge delay used until the window has enough samples.
const DEFAULT_HEDGE_NS: u64 = 2_000_000;
const MIN_HEDGE_NS: u64 = 20_000;

impl LatencyWindow {
    fn new(pct: f64) -> Self {
        LatencyWindow {
            samples: vec![0; WINDOW],
            next: 0,
            filled: false,
            since: 0,
            threshold_ns: DEFAULT_HEDGE_NS,
            pct,
            scratch: Vec::with_capacity(WINDOW),
        }
    }

    fn record(&mut self, ns: u64) {
        self.samples[self.next] = ns;
        self.next = (self.next + 1) % WINDOW;
        if self.next == 0 {
            self.filled = true;
        }
        self.since += 1;
        let have = if self.filled { WINDOW } else { self.next };
        if have >= 128 && self.since >= 256 {
            self.since = 0;
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.samples[..have]);
            let k = ((have as f64 * self.pct / 100.0) as usize).min(have - 1);
            let (_, v, _) = self.scratch.select_nth_unstable(k);
            self.threshold_ns = (*v).max(MIN_HEDGE_NS);
        }
    }
}

/// One thread's handle on the array: its own io_uring, its own request and
/// replica-I/O tables. Hand it requests with [`Queue::submit`], collect
/// completions with [`Queue::poll`].
pub struct Queue {
    inner: Arc<Inner>,
    ring: IoUring,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    subs: Vec<Sub>,
    free_subs: Vec<usize>,
    incoming: Vec<usize>,
    waiting: Vec<VecDeque<usize>>,
    inflight: Vec<u32>,
    ready: Vec<Completion>,
    failed_now: Vec<usize>,
    window: LatencyWindow,
    rng: Rng,
    scratch: RouteScratch,
    reads: Vec<ReadInfo>,
    read_slots: Vec<usize>,
    routes: Vec<Route>,
    active: usize,
    subs_busy: usize,
    unsubmitted: bool,
    cqes: Vec<(u64, i32)>,
    /// The policy may hedge, so the latency window is kept.
    hedging: bool,
    /// Request buffers not handed back in a completion, kept for the caller
    /// (see [`Queue::keep_released`]).
    released: Vec<AlignedBuf>,
    keep_released: bool,
}

impl Queue {
    fn new(inner: Arc<Inner>, id: u32, entries: u32) -> Result<Queue, ArrayError> {
        // COOP_TASKRUN: completions are run when this thread enters the
        // kernel anyway, instead of interrupting it (5.19+; plain otherwise).
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .build(entries.max(8))
            .or_else(|_| IoUring::new(entries.max(8)))
            .map_err(ArrayError::Ring)?;
        let n = inner.replicas.len();
        let seed = inner.seed ^ ((id as u64 + 1) << 48);
        let pct = inner.hedge_percentile;
        let hedging = matches!(
            inner.policy.kind(),
            PolicyKind::Hedge | PolicyKind::Linnos { hedge: true, .. }
        );
        Ok(Queue {
            inner,
            ring,
            slots: Vec::new(),
            free_slots: Vec::new(),
            subs: Vec::new(),
            free_subs: Vec::new(),
            incoming: Vec::new(),
            waiting: vec![VecDeque::new(); n],
            inflight: vec![0; n],
            ready: Vec::new(),
            failed_now: Vec::new(),
            window: LatencyWindow::new(pct),
            rng: Rng::new(seed),
            scratch: RouteScratch::default(),
            reads: Vec::new(),
            read_slots: Vec::new(),
            routes: Vec::new(),
            active: 0,
            subs_busy: 0,
            unsubmitted: false,
            cqes: Vec::new(),
            hedging,
            released: Vec::new(),
            keep_released: false,
        })
    }

    /// Requests taken and not yet completed (including completions not yet polled).
    pub fn in_flight(&self) -> usize {
        self.active
    }

    /// Keeps request buffers that do not come back in a completion (a read's
    /// own buffer when its hedged copy answered first, released once the
    /// slower copy has finished) for [`Queue::take_released`], instead of
    /// freeing them. A front-end with long-lived buffers (ublk) reuses them.
    pub fn keep_released(&mut self, on: bool) {
        self.keep_released = on;
        if !on {
            self.released.clear();
        }
    }

    /// Moves the buffers kept since the last call into `out`.
    pub fn take_released(&mut self, out: &mut Vec<AlignedBuf>) {
        out.append(&mut self.released);
    }

    /// Registers `fd`, an eventfd, on this queue's io_uring: the kernel bumps
    /// it for every completion posted there. A front-end that waits on a ring
    /// of its own (ublk) reads the eventfd from that ring, so one thread
    /// sleeps on both, then calls [`Queue::poll`] without waiting.
    pub fn register_eventfd(&self, fd: std::os::unix::io::RawFd) -> std::io::Result<()> {
        self.ring.submitter().register_eventfd(fd)
    }

    /// Turns the registered eventfd's notifications off or on (a flag in the
    /// ring the kernel reads as it posts each completion). An owner about to
    /// reap anyway turns them off around [`Queue::poll`], so completions of
    /// its own submissions do not wake it a second time; after turning them
    /// back on it checks [`Queue::has_completions`] before sleeping.
    pub fn set_eventfd_enabled(&mut self, on: bool) {
        let cq = self.ring.completion();
        if on {
            cq.enable_eventfd();
        } else {
            cq.disable_eventfd();
        }
    }

    /// True when completions wait in the ring, not yet reaped by [`Queue::poll`].
    pub fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Takes a request. It is routed and issued at the next [`Queue::poll`],
    /// together with every other request taken since the last one.
    pub fn submit(&mut self, req: Request) {
        if let Err(msg) = self.check(&req) {
            tracing::debug!("rejected request: {msg}");
            self.active += 1;
            self.ready.push(Completion {
                user: req.user,
                result: -libc::EINVAL,
                buf: req.buf,
                replica: None,
            });
            return;
        }
        let now = self.inner.now_ns();
        let idx = self.alloc_slot();
        let s = &mut self.slots[idx];
        s.active = true;
        s.generation = s.generation.wrapping_add(1);
        s.op = req.op;
        s.offset = req.offset;
        s.len = req.len;
        s.user = req.user;
        s.buf = req.buf;
        s.outstanding = 0;
        s.ok = 0;
        s.done = false;
        s.tried = 0;
        s.hedged = false;
        s.start_ns = now;
        self.active += 1;
        self.incoming.push(idx);
    }

    fn check(&self, req: &Request) -> Result<(), String> {
        let need_buf = matches!(req.op, Op::Read | Op::Write);
        if need_buf {
            match &req.buf {
                Some(b) if b.len() == req.len as usize => {}
                Some(b) => return Err(format!("buffer is {} bytes, request {}", b.len(), req.len)),
                None => return Err("read/write without a buffer".into()),
            }
        }
        if req.op == Op::Flush {
            return Ok(());
        }
        if req.len == 0 {
            return Err("zero-length request".into());
        }
        if !req.offset.is_multiple_of(SECTOR) || !(req.len as u64).is_multiple_of(SECTOR) {
            return Err(format!(
                "offset {} / length {} not multiples of {SECTOR}",
                req.offset, req.len
            ));
        }
        if req
            .offset
            .checked_add(req.len as u64)
            .is_none_or(|end| end > self.inner.size)
        {
            return Err(format!(
                "range {}+{} beyond the device ({} bytes)",
                req.offset, req.len, self.inner.size
            ));
        }
        Ok(())
    }

    fn alloc_slot(&mut self) -> usize {
        if let Some(i) = self.free_slots.pop() {
            return i;
        }
        self.slots.push(Slot {
            active: false,
            generation: 0,
            op: Op::Read,
            offset: 0,
            len: 0,
            user: 0,
            buf: None,
            outstanding: 0,
            ok: 0,
            done: false,
            primary: 0,
            tried: 0,
            hedged: false,
            start_ns: 0,
            ts: Box::new(types::Timespec::new()),
        });
        self.slots.len() - 1
    }

    fn alloc_sub(&mut self, req: usize, replica: u16, kind: SubKind, op: Op) -> usize {
        let idx = match self.free_subs.pop() {
            Some(i) => i,
            None => {
                self.subs.push(Sub {
                    req: 0,
                    replica: 0,
                    kind: SubKind::Copy,
                    op: Op::Read,
                    ticket: None,
                    issue_ns: 0,
                    emu_done_ns: 0,
                    res: 0,
                    expect: 0,
                    buf: None,
                    snap: None,
                    ts: Box::new(types::Timespec::new()),
                });
                self.subs.len() - 1
            }
        };
        let s = &mut self.subs[idx];
        self.subs_busy += 1;
        s.req = req;
        s.replica = replica;
        s.kind = kind;
        s.op = op;
        s.ticket = None;
        s.res = 0;
        s.expect = 0;
        s.buf = None;
        s.snap = None;
        idx
    }

    /// Routes and issues what was submitted, waits for at least `min_complete`
    /// completions if `wait` (or until `timeout_ns` passes, when given), and
    /// moves every finished request into `out`. Returns how many it moved.
    pub fn poll(
        &mut self,
        out: &mut Vec<Completion>,
        wait: bool,
        timeout_ns: Option<u64>,
    ) -> std::io::Result<usize> {
        self.dispatch_incoming();
        self.process_failed_now();
        if self.ready.is_empty() && wait && (self.active > 0 || self.subs_busy > 0) {
            if let Some(t) = timeout_ns {
                let ts = types::Timespec::new()
                    .sec(t / 1_000_000_000)
                    .nsec((t % 1_000_000_000) as u32);
                let args = types::SubmitArgs::new().timespec(&ts);
                match self.ring.submitter().submit_with_args(1, &args) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) => return Err(e),
                }
            } else {
                match self.ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) => return Err(e),
                }
            }
            self.unsubmitted = false;
        } else if self.unsubmitted {
            self.ring.submit()?;
            self.unsubmitted = false;
        }
        loop {
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            let got = cqes.len();
            for &(user, res) in &cqes {
                self.on_cqe(user, res);
            }
            cqes.clear();
            self.cqes = cqes;
            self.process_failed_now();
            if self.unsubmitted {
                self.ring.submit()?;
                self.unsubmitted = false;
            }
            if got == 0 {
                break;
            }
        }
        let n = self.ready.len();
        self.active -= n.min(self.active);
        out.append(&mut self.ready);
        Ok(n)
    }

    fn dispatch_incoming(&mut self) {
        if self.incoming.is_empty() {
            return;
        }
        let incoming = std::mem::take(&mut self.incoming);
        self.reads.clear();
        self.read_slots.clear();
        for &idx in &incoming {
            let s = &self.slots[idx];
            if s.op == Op::Read {
                self.reads.push(ReadInfo {
                    offset: s.offset,
                    len: s.len,
                });
                self.read_slots.push(idx);
            } else {
                self.start_multi(idx);
            }
        }
        if !self.reads.is_empty() {
            let now = self.inner.now_ns();
            let inner = self.inner.clone();
            let ok = inner.policy.route_batch(
                inner.as_ref(),
                now,
                &self.reads,
                &mut self.rng,
                &mut self.scratch,
                &mut self.routes,
            );
            let c = &inner.counters;
            for k in 0..self.read_slots.len() {
                let idx = self.read_slots[k];
                if !ok {
                    self.finish_request(idx, -libc::EIO, None);
                    continue;
                }
                let r = self.routes[k];
                if r.rerouted {
                    c.rerouted.fetch_add(1, Relaxed);
                }
                if r.predictions > 0 {
                    c.predictions.fetch_add(r.predictions as u64, Relaxed);
                }
                if r.all_slow {
                    c.all_slow.fetch_add(1, Relaxed);
                }
                let s = &mut self.slots[idx];
                s.primary = r.replica;
                self.start_read(idx, r.replica, SubKind::Main);
                if r.hedge && next_after(inner.as_ref(), r.replica).is_some() {
                    self.arm_hedge(idx);
                }
            }
        }
        self.incoming = incoming;
        self.incoming.clear();
    }

    fn start_read(&mut self, idx: usize, replica: u16, kind: SubKind) {
        let s = &mut self.slots[idx];
        s.tried |= 1 << replica;
        s.outstanding += 1;
        let len = s.len as usize;
        let sub = self.alloc_sub(idx, replica, kind, Op::Read);
        if kind == SubKind::Hedge {
            self.subs[sub].buf = Some(AlignedBuf::new(len));
        }
        self.issue(sub);
    }

    fn start_multi(&mut self, idx: usize) {
        let n = self.inner.replicas.len();
        let op = self.slots[idx].op;
        for r in 0..n {
            if self.inner.replicas[r].failed.load(Relaxed) {
                continue;
            }
            self.slots[idx].outstanding += 1;
            let sub = self.alloc_sub(idx, r as u16, SubKind::Copy, op);
            self.issue(sub);
        }
        if self.slots[idx].outstanding == 0 {
            self.finish_request(idx, -libc::EIO, None);
        }
    }

    fn arm_hedge(&mut self, idx: usize) {
        let t = self.window.threshold_ns;
        let s = &mut self.slots[idx];
        *s.ts = types::Timespec::new()
            .sec(t / 1_000_000_000)
            .nsec((t % 1_000_000_000) as u32);
        let e = opcode::Timeout::new(&*s.ts as *const types::Timespec)
            .build()
            .user_data(ud(UD_HEDGE, idx, s.generation));
        self.push(e);
    }

    /// Issues a replica I/O now, or queues it behind the replica's depth limit.
    fn issue(&mut self, sub: usize) {
        let r = self.subs[sub].replica as usize;
        if self.inflight[r] >= self.inner.replica_depth {
            self.waiting[r].push_back(sub);
            return;
        }
        self.inflight[r] += 1;
        let inner = self.inner.clone();
        let rep = &inner.replicas[r];
        let now = inner.now_ns();
        let (op, kind, req) = {
            let s = &self.subs[sub];
            (s.op, s.kind, s.req)
        };
        let (offset, len) = (self.slots[req].offset, self.slots[req].len);
        let io_no = rep.ios.fetch_add(1, Relaxed);
        match op {
            Op::Read => rep.counters.reads.fetch_add(1, Relaxed),
            Op::Write => rep.counters.writes.fetch_add(1, Relaxed),
            _ => rep.counters.other.fetch_add(1, Relaxed),
        };
        let snap = (op == Op::Read && inner.log.is_some()).then(|| rep.history.snapshot_at(now));
        let ticket = rep.history.on_submit_at(op, len, now);
        let injected = rep.fault.after_ios.is_some_and(|n| io_no >= n)
            || rep.fault.at_ns.is_some_and(|t| now >= t);
        let outcome = match &rep.emu {
            Some(m) => m
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .submit(now, op, offset, len),
            None => Outcome::CompleteAt(now),
        };
        {
            let s = &mut self.subs[sub];
            s.ticket = Some(ticket);
            s.issue_ns = now;
            s.snap = snap;
            s.expect = if matches!(op, Op::Read | Op::Write) {
                len as i32
            } else {
                0
            };
            s.emu_done_ns = match outcome {
                Outcome::CompleteAt(t) => t,
                Outcome::Fail => now,
            };
        }
        if injected || outcome == Outcome::Fail || rep.failed.load(Relaxed) {
            self.subs[sub].res = -libc::EIO;
            self.failed_now.push(sub);
            return;
        }
        let fd = types::Fd(rep.file.as_raw_fd());
        let user = ud(UD_IO, sub, 0);
        let e = match op {
            Op::Read => {
                let ptr = match kind {
                    SubKind::Hedge => self.subs[sub].buf.as_mut().map(|b| b.as_mut_ptr()),
                    _ => self.slots[req].buf.as_mut().map(|b| b.as_mut_ptr()),
                };
                let Some(ptr) = ptr else {
                    self.subs[sub].res = -libc::EINVAL;
                    self.failed_now.push(sub);
                    return;
                };
                opcode::Read::new(fd, ptr, len).offset(offset).build()
            }
            Op::Write => {
                let Some(ptr) = self.slots[req].buf.as_ref().map(|b| b.as_ptr()) else {
                    self.subs[sub].res = -libc::EINVAL;
                    self.failed_now.push(sub);
                    return;
                };
                opcode::Write::new(fd, ptr, len).offset(offset).build()
            }
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Discard => opcode::Fallocate::new(fd, len as u64)
                .offset(offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            Op::WriteZeroes => opcode::Fallocate::new(fd, len as u64)
                .offset(offset)
                .mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
        };
        self.push(e.user_data(user));
    }

    fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: every pointer in `e` (buffers in slots/subs, boxed
            // timespecs) stays valid until its completion is reaped: buffers
            // are only released after their sub-I/O finished, and timespecs
            // are read by the kernel at submission.
            let pushed = unsafe { self.ring.submission().push(&e) };
            if pushed.is_ok() {
                self.unsubmitted = true;
                return;
            }
            if let Err(err) = self.ring.submit() {
                tracing::error!("io_uring submit failed: {err}");
            }
        }
    }

    fn process_failed_now(&mut self) {
        while let Some(sub) = self.failed_now.pop() {
            let res = self.subs[sub].res;
            self.finish_sub(sub, res);
        }
    }

    fn on_cqe(&mut self, user: u64, res: i32) {
        let idx = (user & 0xFFFF_FFFF) as usize;
        let kind = (user >> 32) & 0xFF;
        let generation = (user >> 40) as u32;
        match kind {
            UD_IO => {
                let now = self.inner.now_ns();
                let s = &self.subs[idx];
                let res = if res >= 0 && res != s.expect {
                    -libc::EIO
                } else {
                    res
                };
                // Fallbacks for backings without fallocate modes.
                if res == -libc::EOPNOTSUPP {
                    match s.op {
                        Op::Discard => {
                            self.finish_after_delay(idx, 0, now);
                            return;
                        }
                        Op::WriteZeroes => {
                            self.zero_by_write(idx);
                            return;
                        }
                        _ => {}
                    }
                }
                self.finish_after_delay(idx, res, now);
            }
            UD_DELAY => {
                let res = self.subs[idx].res;
                self.finish_sub(idx, res);
            }
            UD_HEDGE => {
                let s = &self.slots[idx];
                if s.active && (s.generation & 0xFF_FFFF) == generation && !s.done && !s.hedged {
                    self.fire_hedge(idx);
                }
            }
            _ => tracing::error!("unexpected io_uring completion {user:#x}"),
        }
    }

    fn finish_after_delay(&mut self, sub: usize, res: i32, now: u64) {
        let s = &mut self.subs[sub];
        s.res = res;
        if res >= 0 && s.emu_done_ns > now {
            let t = s.emu_done_ns - now;
            *s.ts = types::Timespec::new()
                .sec(t / 1_000_000_000)
                .nsec((t % 1_000_000_000) as u32);
            let e = opcode::Timeout::new(&*s.ts as *const types::Timespec)
                .build()
                .user_data(ud(UD_DELAY, sub, 0));
            self.push(e);
        } else {
            self.finish_sub(sub, res);
        }
    }

    /// WRITE_ZEROES on a backing without FALLOC_FL_ZERO_RANGE: write zeroes
    /// from a buffer the sub-I/O owns until it completes.
    fn zero_by_write(&mut self, sub: usize) {
        let req = self.subs[sub].req;
        let (offset, len) = (self.slots[req].offset, self.slots[req].len);
        let r = self.subs[sub].replica as usize;
        let fd = types::Fd(self.inner.replicas[r].file.as_raw_fd());
        let mut zeroes = AlignedBuf::new(len as usize);
        let ptr = zeroes.as_mut_ptr();
        let s = &mut self.subs[sub];
        s.buf = Some(zeroes);
        s.expect = len as i32;
        let e = opcode::Write::new(fd, ptr, len)
            .offset(offset)
            .build()
            .user_data(ud(UD_IO, sub, 0));
        self.push(e);
    }

    fn fire_hedge(&mut self, idx: usize) {
        let inner = self.inner.clone();
        let (primary, tried) = (self.slots[idx].primary as usize, self.slots[idx].tried);
        let n = inner.replicas.len();
        let target = (1..n)
            .map(|k| (primary + k) % n)
            .find(|&i| tried & (1 << i) == 0 && !inner.replicas[i].failed.load(Relaxed));
        if let Some(t) = target {
            self.slots[idx].hedged = true;
            inner.counters.hedges.fetch_add(1, Relaxed);
            self.start_read(idx, t as u16, SubKind::Hedge);
        }
    }

    /// A replica I/O is over (after any emulated delay).
    fn finish_sub(&mut self, sub: usize, res: i32) {
        let now = self.inner.now_ns();
        let inner = self.inner.clone();
        let (r, req, kind, op) = {
            let s = &self.subs[sub];
            (s.replica as usize, s.req, s.kind, s.op)
        };
        let rep = &inner.replicas[r];
        let latency_ns = now.saturating_sub(self.subs[sub].issue_ns);
        let latency_us = (latency_ns / 1000).min(u32::MAX as u64) as u32;
        if let Some(t) = self.subs[sub].ticket.take() {
            rep.history.on_complete(t, latency_us);
        }
        if res < 0 {
            rep.counters.errors.fetch_add(1, Relaxed);
            let err = std::io::Error::from_raw_os_error(-res);
            inner.mark_failed(r, &format!("{op:?} I/O failed: {err}"));
        } else if op == Op::Read
            && let (Some(log), Some(snap)) = (inner.log.as_ref(), self.subs[sub].snap)
        {
            log.push(TrainingRecord {
                time_ns: self.subs[sub].issue_ns,
                replica: r as u16,
                op,
                size_bytes: self.slots[req].len,
                offset: self.slots[req].offset,
                latency_us,
                features: snap,
            });
        }
        let hedge_buf = self.subs[sub].buf.take();
        self.subs_busy -= 1;
        self.free_subs.push(sub);
        self.inflight[r] -= 1;
        if let Some(next) = self.waiting[r].pop_front() {
            self.issue(next);
        }
        let slot = &mut self.slots[req];
        slot.outstanding -= 1;
        match slot.op {
            Op::Read => {
                if slot.done {
                    self.maybe_release(req);
                    return;
                }
                if res >= 0 {
                    if kind == SubKind::Hedge {
                        inner.counters.hedge_wins.fetch_add(1, Relaxed);
                    }
                    if self.hedging {
                        self.window.record(now.saturating_sub(slot.start_ns));
                    }
                    let buf = if kind == SubKind::Hedge {
                        hedge_buf
                    } else {
                        slot.buf.take()
                    };
                    self.finish_request(req, 0, buf.map(|b| (b, r as u16)));
                    return;
                }
                if slot.outstanding > 0 {
                    return; // the other copy may still succeed
                }
                // Retry on a live replica not yet tried.
                let tried = slot.tried;
                let retry = (0..inner.replicas.len())
                    .find(|&i| tried & (1 << i) == 0 && !inner.replicas[i].failed.load(Relaxed));
                match retry {
                    Some(i) => {
                        inner.counters.read_retries.fetch_add(1, Relaxed);
                        self.start_read(req, i as u16, SubKind::Main);
                    }
                    None => self.finish_request(req, -libc::EIO, None),
                }
            }
            _ => {
                if res >= 0 {
                    slot.ok += 1;
                }
                if slot.outstanding == 0 {
                    let result = if slot.ok > 0 { 0 } else { -libc::EIO };
                    self.finish_request(req, result, None);
                }
            }
        }
    }

    /// Delivers a request's completion; the slot is reused once no replica
    /// I/O of it is still running.
    fn finish_request(&mut self, idx: usize, result: i32, read: Option<(AlignedBuf, u16)>) {
        let c = &self.inner.counters;
        let s = &mut self.slots[idx];
        match s.op {
            Op::Read => c.reads.fetch_add(1, Relaxed),
            Op::Write => c.writes.fetch_add(1, Relaxed),
            Op::Flush => c.flushes.fetch_add(1, Relaxed),
            Op::Discard => c.discards.fetch_add(1, Relaxed),
            Op::WriteZeroes => c.write_zeroes.fetch_add(1, Relaxed),
        };
        if result < 0 {
            c.failed_requests.fetch_add(1, Relaxed);
        }
        s.done = true;
        let (buf, replica) = match read {
            Some((b, r)) => (Some(b), Some(r)),
            // Failures are only delivered once no copy reads into the buffer.
            None => (s.buf.take(), None),
        };
        self.ready.push(Completion {
            user: s.user,
            result,
            buf,
            replica,
        });
        self.maybe_release(idx);
    }

    fn maybe_release(&mut self, idx: usize) {
        let s = &mut self.slots[idx];
        if s.done && s.outstanding == 0 && s.active {
            s.active = false;
            let buf = s.buf.take();
            self.free_slots.push(idx);
            if self.keep_released
                && let Some(b) = buf
            {
                self.released.push(b);
            }
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Buffers may still be in the kernel's hands: wait for every replica
        // I/O of this queue (up to 30 s) before freeing them.
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.subs_busy > 0 && std::time::Instant::now() < deadline {
            if self.poll(&mut out, true, Some(10_000_000)).is_err() {
                break;
            }
        }
        if self.subs_busy > 0 {
            // A replica that never answers: leak the buffers rather than
            // free memory the kernel may still write into.
            tracing::error!(
                "{} replica I/O(s) still running after 30 s; leaking their buffers",
                self.subs_busy
            );
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(std::mem::take(&mut self.subs));
        }
    }
}

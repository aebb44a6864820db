//! A [`Queue`]'s request state machine: take requests, route the reads of
//! one batch together, fan writes out to every live replica, retry a failed
//! read elsewhere, and deliver completions. How replica I/O reaches the
//! device is the queue's [`Io`]: the io_uring (`ring.rs`) on the real clock,
//! the event heap (`sim.rs`) on the simulated one. Everything else here is
//! the same code on both.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use augur_feature_store::{Op, TrainingRecord};
use augur_rng::Rng;
use io_uring::{IoUring, types};

use super::hedge::LatencyWindow;
use super::parked::{Parked, QueueWake};
use super::sim::SimEvents;
use super::slots::{Slot, Sub, SubKind};
use super::stall::{EventKind, EventLog, Heartbeat};
use super::stats::{Counters, LatencyTable, bump};
use super::{AlignedBuf, ArrayError, Inner, QueueTables, SECTOR};
use crate::emu::{Clock, Outcome};
use crate::route::{PendingRead, Policy, PolicyKind, Route, RouteScratch, ScoredOn, next_after};

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

/// How a queue carries out replica I/O and timers.
// One per queue, so size does not matter; boxing the ring would add a
// pointer chase to every submission on the real data path.
#[allow(clippy::large_enum_variant)]
pub(super) enum Io {
    /// The real clock: SQEs on the queue's own io_uring.
    Ring(IoUring),
    /// The simulated clock: events on a heap, in simulated time.
    Sim(SimEvents),
}

impl Io {
    pub(super) fn is_sim(&self) -> bool {
        matches!(self, Io::Sim(_))
    }
}

/// One thread's handle on the array: its own io_uring, its own request and
/// replica-I/O tables. Hand it requests with [`Queue::submit`], collect
/// completions with [`Queue::poll`].
pub struct Queue {
    pub(super) inner: Arc<Inner>,
    /// The queue's number (as the front-end gave it), for logs.
    pub(super) id: u32,
    /// Recent events, for a stall dump (`stall.rs`).
    pub(super) events: EventLog,
    /// The request (slot, generation) a stall was last reported for.
    pub(super) stall_seen: Option<(usize, u32)>,
    /// Its progress, for the watchdog (`stall.rs`).
    pub(super) beat: Arc<Heartbeat>,
    /// This queue's own counters (registered with the array, written only here).
    pub(super) counters: Arc<Counters>,
    /// Its read-latency histograms (per replica), summed by the array.
    pub(super) latency: Arc<LatencyTable>,
    /// How replica I/O and timers are carried out.
    pub(super) io: Io,
    pub(super) slots: Vec<Slot>,
    pub(super) free_slots: Vec<usize>,
    pub(super) subs: Vec<Sub>,
    pub(super) free_subs: Vec<usize>,
    pub(super) incoming: Vec<usize>,
    pub(super) waiting: Vec<VecDeque<usize>>,
    pub(super) inflight: Vec<u32>,
    pub(super) ready: Vec<Completion>,
    pub(super) failed_now: Vec<usize>,
    pub(super) window: LatencyWindow,
    pub(super) rng: Rng,
    pub(super) scratch: RouteScratch,
    pub(super) reads: Vec<PendingRead>,
    pub(super) read_slots: Vec<usize>,
    pub(super) routes: Vec<Route>,
    pub(super) active: usize,
    pub(super) subs_busy: usize,
    pub(super) unsubmitted: bool,
    pub(super) cqes: Vec<(u64, i32)>,
    /// The policy may hedge, so the latency window is kept.
    pub(super) hedging: bool,
    /// The policy hedges to the untried replica with the fewest I/Os in
    /// flight (`augur`), not the next one after the primary.
    pub(super) hedge_to_least: bool,
    /// Hedges the policy may send per 100 reads (`augur`), `None`: no limit.
    pub(super) hedge_budget_pct: Option<u32>,
    /// Hedges left in the budget, in hundredths (each read adds the
    /// budget, each hedge takes 100, at most [`HEDGE_BURST`] hedges' worth).
    pub(super) hedge_tokens: u32,
    /// Request buffers not handed back in a completion, kept for the caller
    /// (see [`Queue::keep_released`]).
    pub(super) released: Vec<AlignedBuf>,
    pub(super) keep_released: bool,
    /// Routing batches waiting for predictions on another thread (`parked.rs`).
    pub(super) parked: Vec<Parked>,
    pub(super) free_parked: Vec<usize>,
    pub(super) parked_live: usize,
    /// How that thread wakes this queue (made at the first such batch).
    pub(super) waker: Option<QueueWake>,
    /// Writes waiting for a region the sync worker holds (`bitmap.rs`).
    pub(super) deferred: Vec<usize>,
    /// The retry timer of the deferred writes is armed.
    pub(super) retry_armed: bool,
    pub(super) retry_ts: Box<types::Timespec>,
}

/// The most hedges a budgeted policy saves up for a burst.
const HEDGE_BURST: u32 = 256;

/// Whether a policy sends hedged copies (so the queue keeps a latency window).
fn hedges(policy: &Policy) -> bool {
    policy.hedge_percentile().is_some()
        || matches!(
            policy.kind(),
            PolicyKind::Hedge | PolicyKind::Linnos { hedge: true, .. }
        )
}

impl Queue {
    pub(super) fn new(inner: Arc<Inner>, id: u32, entries: u32) -> Result<Queue, ArrayError> {
        // COOP_TASKRUN: completions are run when this thread enters the
        // kernel anyway, instead of interrupting it (5.19+; plain otherwise).
        let io = match &inner.clock {
            Clock::Sim(time) => Io::Sim(SimEvents::new(time.clone())),
            // COOP_TASKRUN: completions are run when this thread enters the
            // kernel anyway, instead of interrupting it (5.19+; plain otherwise).
            // A CQ of four times the SQ: stale hedge timers and emulated
            // delays can finish together after a long descheduling, and
            // the overflow list (which poll collects) is the slow path.
            Clock::Real(_) => Io::Ring(
                IoUring::builder()
                    .setup_coop_taskrun()
                    .setup_cqsize(entries.max(8) * 4)
                    .build(entries.max(8))
                    .or_else(|_| IoUring::new(entries.max(8)))
                    .map_err(ArrayError::Ring)?,
            ),
        };
        let n = inner.replicas.len();
        let seed = inner.seed ^ ((id as u64 + 1) << 48);
        let pct = inner.hedge_percentile;
        let hedging = hedges(&inner.policy.load());
        let counters = Arc::new(Counters::default());
        let latency = Arc::new(LatencyTable::new(n));
        let beat = Arc::new(Heartbeat::new(id));
        inner
            .queue_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(QueueTables {
                counters: counters.clone(),
                latency: latency.clone(),
                beat: beat.clone(),
            });
        Ok(Queue {
            inner,
            id,
            events: EventLog::default(),
            stall_seen: None,
            beat,
            counters,
            latency,
            io,
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
            hedge_to_least: false,
            hedge_budget_pct: None,
            hedge_tokens: 0,
            released: Vec::new(),
            keep_released: false,
            parked: Vec::new(),
            free_parked: Vec::new(),
            parked_live: 0,
            waker: None,
            deferred: Vec::new(),
            retry_armed: false,
            retry_ts: Box::new(types::Timespec::new()),
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

    /// Takes a request. It is routed and issued at the next [`Queue::poll`],
    /// together with every other request taken since the last one.
    pub fn submit(&mut self, req: Request) {
        if let Err(msg) = self.check(&req) {
            tracing::debug!("rejected request: {msg}");
            self.active += 1;
            self.beat.in_flight(self.active);
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
        s.intent = false;
        s.start_ns = now;
        self.active += 1;
        self.beat.in_flight(self.active);
        self.events.push(EventKind::Submit, req.user, 0);
        self.incoming.push(idx);
    }

    fn check(&self, req: &Request) -> Result<(), String> {
        // Simulated replicas hold no data: buffers are optional there.
        let need_buf = matches!(req.op, Op::Read | Op::Write) && !self.io.is_sim();
        if need_buf {
            match &req.buf {
                Some(b) if b.len() == req.len as usize => {}
                Some(b) => return Err(format!("buffer is {} bytes, request {}", b.len(), req.len)),
                None if need_buf => return Err("read/write without a buffer".into()),
                None => {}
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
            pred: 0,
            slow_us: 0,
            intent: false,
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
                    in_delay: false,
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
        s.in_delay = false;
        idx
    }

    pub(super) fn dispatch_incoming(&mut self) {
        if self.incoming.is_empty() {
            return;
        }
        let incoming = std::mem::take(&mut self.incoming);
        self.reads.clear();
        self.read_slots.clear();
        for &idx in &incoming {
            let s = &self.slots[idx];
            if s.op == Op::Read {
                self.reads.push(PendingRead {
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
            // One policy, so one model, for the whole batch: a swap that
            // lands meanwhile is seen by the next batch. A guard, not a
            // clone: no allocation, no lock.
            let policy = inner.policy.load();
            self.hedging = hedges(&policy);
            self.hedge_to_least = policy.hedges_to_least_pending();
            self.hedge_budget_pct = policy.hedge_budget_pct();
            self.window
                .set_pct(policy.hedge_percentile().unwrap_or(inner.hedge_percentile));
            let slow_us = policy.slow_threshold_us().unwrap_or(0);
            // Predictions on another thread (the GPU): the reads wait
            // parked, this thread goes on.
            if self.try_park(&policy, now, slow_us) {
                self.incoming = incoming;
                self.incoming.clear();
                return;
            }
            let ok = policy.route_batch(
                inner.as_ref(),
                now,
                &self.reads,
                &mut self.rng,
                &mut self.scratch,
                &mut self.routes,
            );
            // On the simulated clock the predictor's work takes time: the
            // batch's reads are issued once it is done.
            if let Io::Sim(sim) = &self.io {
                sim.charge(inner.predict_cost.of_placed(self.scratch.placed()));
            }
            for &(n, on) in self.scratch.placed() {
                self.count_placed(u64::from(n), on);
            }
            let slots = std::mem::take(&mut self.read_slots);
            if ok {
                let routes = std::mem::take(&mut self.routes);
                self.issue_routed(&slots, &routes, slow_us);
                self.routes = routes;
            } else {
                for &idx in &slots {
                    self.finish_request(idx, -libc::EIO, None);
                }
            }
            self.read_slots = slots;
        }
        self.incoming = incoming;
        self.incoming.clear();
    }

    /// Bumps the per-device counters for one predictor call of `n` inputs.
    pub(super) fn count_placed(&self, n: u64, on: ScoredOn) {
        let c = &self.counters;
        match on {
            ScoredOn::Cpu => {
                bump(&c.cpu_batches, 1);
                bump(&c.cpu_items, n);
            }
            ScoredOn::Gpu { .. } => {
                bump(&c.gpu_batches, 1);
                bump(&c.gpu_items, n);
            }
            ScoredOn::GpuMissed { .. } => {
                bump(&c.gpu_missed_batches, 1);
                bump(&c.cpu_batches, 1);
                bump(&c.cpu_items, n);
            }
        }
    }

    /// Issues routed reads: `routes[k]` is where `slots[k]` goes.
    pub(super) fn issue_routed(&mut self, slots: &[usize], routes: &[Route], slow_us: u32) {
        let inner = self.inner.clone();
        for (&idx, &r) in slots.iter().zip(routes) {
            let mut r = r;
            // A region some replica does not hold yet (resync, rebuild):
            // the read goes to the lowest-numbered replica that holds it,
            // whatever the policy said, and is not hedged.
            if inner.intent.is_some() {
                let (offset, len) = (self.slots[idx].offset, self.slots[idx].len);
                if !inner.readable(r.replica as usize, offset, len)
                    || (0..inner.replicas.len())
                        .any(|i| inner.is_live(i) && !inner.readable(i, offset, len))
                {
                    if let Some(i) =
                        (0..inner.replicas.len()).find(|&i| inner.readable(i, offset, len))
                    {
                        r.replica = i as u16;
                    }
                    r.hedge = false;
                    r.rerouted = false;
                    bump(&self.counters.pinned_reads, 1);
                }
            }
            if r.rerouted {
                bump(&self.counters.rerouted, 1);
            }
            if r.predictions > 0 {
                bump(&self.counters.predictions, r.predictions as u64);
            }
            if r.all_slow {
                bump(&self.counters.all_slow, 1);
            }
            if r.slow_verdicts > 0 {
                bump(&self.counters.predicted_slow, u64::from(r.slow_verdicts));
            }
            let s = &mut self.slots[idx];
            s.primary = r.replica;
            s.pred = match r.verdict {
                None => 0,
                Some(false) => 1,
                Some(true) => 2,
            };
            s.slow_us = slow_us;
            self.start_read(idx, r.replica, SubKind::Main);
            if let Some(pct) = self.hedge_budget_pct {
                self.hedge_tokens = (self.hedge_tokens + pct).min(HEDGE_BURST * 100);
            }
            if r.hedge && next_after(inner.as_ref(), r.replica).is_some() {
                self.arm_hedge(idx);
            }
        }
    }

    /// Whether the policy's hedge budget allows one more hedge (always,
    /// for a policy without one), taking it.
    fn take_hedge_token(&mut self) -> bool {
        if self.hedge_budget_pct.is_none() {
            return true;
        }
        let ok = self.hedge_tokens >= 100;
        if ok {
            self.hedge_tokens -= 100;
        }
        ok
    }

    pub(super) fn start_read(&mut self, idx: usize, replica: u16, kind: SubKind) {
        let s = &mut self.slots[idx];
        s.tried |= 1 << replica;
        s.outstanding += 1;
        let len = s.len as usize;
        let sub = self.alloc_sub(idx, replica, kind, Op::Read);
        if kind == SubKind::Hedge && !self.io.is_sim() {
            self.subs[sub].buf = Some(AlignedBuf::new(len));
        }
        self.issue(sub);
    }

    fn start_multi(&mut self, idx: usize) {
        let n = self.inner.replicas.len();
        let op = self.slots[idx].op;
        if op != Op::Flush
            && let Some(intent) = self.inner.intent.as_ref()
        {
            let (offset, len) = (self.slots[idx].offset, self.slots[idx].len);
            if !intent.begin_write(offset, len) {
                // The sync worker holds a region of it: try again shortly.
                bump(&self.counters.deferred_writes, 1);
                self.deferred.push(idx);
                self.arm_retry();
                return;
            }
            self.slots[idx].intent = true;
        }
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

    /// Issues a replica I/O now, or queues it behind the replica's depth limit.
    pub(super) fn issue(&mut self, sub: usize) {
        let r = self.subs[sub].replica as usize;
        if self.inflight[r] >= self.inner.replica_depth {
            self.waiting[r].push_back(sub);
            return;
        }
        self.inflight[r] += 1;
        let inner = self.inner.clone();
        let rep = &inner.replicas[r];
        let now = inner.now_ns();
        let (op, req) = {
            let s = &self.subs[sub];
            (s.op, s.req)
        };
        let (offset, len) = (self.slots[req].offset, self.slots[req].len);
        let io_no = rep.ios.fetch_add(1, Relaxed);
        match op {
            Op::Read => rep.counters.read_bytes.fetch_add(u64::from(len), Relaxed),
            Op::Write => rep
                .counters
                .written_bytes
                .fetch_add(u64::from(len), Relaxed),
            _ => 0,
        };
        match op {
            Op::Read => rep.counters.reads.fetch_add(1, Relaxed),
            Op::Write => rep.counters.writes.fetch_add(1, Relaxed),
            _ => rep.counters.other.fetch_add(1, Relaxed),
        };
        let snap =
            (op == Op::Read && inner.log.load().is_some()).then(|| rep.history.snapshot_at(now));
        let ticket = rep.history.on_submit_at(op, len, now);
        let backend = rep.backend.load();
        let injected = backend.fault.after_ios.is_some_and(|n| io_no >= n)
            || backend.fault.at_ns.is_some_and(|t| now >= t);
        let outcome = match &backend.emu {
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
        self.submit_io(sub);
    }

    /// Writes deferred behind a locked region: start those whose regions
    /// are free again, re-arm the timer for the rest.
    pub(super) fn retry_deferred(&mut self) {
        self.retry_armed = false;
        for idx in std::mem::take(&mut self.deferred) {
            self.start_multi(idx);
        }
    }

    pub(super) fn fire_hedge(&mut self, idx: usize) {
        let inner = self.inner.clone();
        let (primary, tried) = (self.slots[idx].primary as usize, self.slots[idx].tried);
        let (offset, len) = (self.slots[idx].offset, self.slots[idx].len);
        let n = inner.replicas.len();
        let mut untried = (1..n).map(|k| (primary + k) % n).filter(|&i| {
            tried & (1 << i) == 0 && inner.is_live(i) && inner.readable(i, offset, len)
        });
        let target = if self.hedge_to_least {
            untried.min_by_key(|&i| inner.replicas[i].history.pending().1)
        } else {
            untried.next()
        };
        if let Some(t) = target
            && self.take_hedge_token()
        {
            self.slots[idx].hedged = true;
            bump(&self.counters.hedges, 1);
            self.start_read(idx, t as u16, SubKind::Hedge);
        }
    }

    /// A replica I/O is over (after any emulated delay).
    pub(super) fn finish_sub(&mut self, sub: usize, res: i32) {
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
        if op == Op::Read && res >= 0 {
            self.latency.record(r, u64::from(latency_us));
        }
        if res < 0 {
            rep.counters.errors.fetch_add(1, Relaxed);
            let err = std::io::Error::from_raw_os_error(-res);
            inner.mark_failed(r, &format!("{op:?} I/O failed: {err}"));
        } else if op == Op::Read
            && let (Some(log), Some(snap)) = (&*inner.log.load(), self.subs[sub].snap)
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
                        bump(&self.counters.hedge_wins, 1);
                    }
                    if self.hedging {
                        self.window.record(now.saturating_sub(slot.start_ns));
                    }
                    // The replica's own time, as the model's labels are.
                    let us = u64::from(latency_us);
                    // Judge the prediction on the replica it was made for
                    // (a hedged copy's answer says nothing about it).
                    if slot.pred != 0 && slot.slow_us > 0 && kind == SubKind::Main {
                        // Slow as the labels say: above the threshold.
                        let slow = us > u64::from(slot.slow_us);
                        bump(&self.counters.judged_reads, 1);
                        if slow {
                            bump(&self.counters.observed_slow, 1);
                        }
                        if slow && slot.pred == 1 {
                            bump(&self.counters.false_submits, 1);
                        }
                        if slow == (slot.pred == 2) {
                            bump(&self.counters.correct_predictions, 1);
                        }
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
                // Retry on a live replica not yet tried that holds the data.
                let (tried, offset, len) = (slot.tried, slot.offset, slot.len);
                let retry = (0..inner.replicas.len())
                    .find(|&i| tried & (1 << i) == 0 && inner.readable(i, offset, len));
                match retry {
                    Some(i) => {
                        bump(&self.counters.read_retries, 1);
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
    pub(super) fn finish_request(
        &mut self,
        idx: usize,
        result: i32,
        read: Option<(AlignedBuf, u16)>,
    ) {
        let s = &mut self.slots[idx];
        if s.intent {
            s.intent = false;
            if let Some(it) = self.inner.intent.as_ref() {
                it.end_write(s.offset, s.len);
            }
        }
        match s.op {
            Op::Read => bump(&self.counters.reads, 1),
            Op::Write => bump(&self.counters.writes, 1),
            Op::Flush => bump(&self.counters.flushes, 1),
            Op::Discard => bump(&self.counters.discards, 1),
            Op::WriteZeroes => bump(&self.counters.write_zeroes, 1),
        };
        if result < 0 {
            bump(&self.counters.failed_requests, 1);
        }
        s.done = true;
        self.events.push(EventKind::Done, s.user, result);
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

    pub(super) fn maybe_release(&mut self, idx: usize) {
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

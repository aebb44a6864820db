//! Per-replica live state: pending-I/O counters, the seqlock-protected
//! history of the last [`HISTORY_LEN`] completed reads, and the latencies of
//! the last [`WRITE_HISTORY_LEN`] completed writes.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crossbeam_utils::{Backoff, CachePadded};

/// Number of completed reads kept per replica (LinnOS uses the last 4).
pub const HISTORY_LEN: usize = 4;

/// Number of completed writes whose latency is kept per replica. Garbage
/// collection slows every write it overlaps, so the least of the last few
/// write latencies tells a GC window from queueing within a few writes.
pub const WRITE_HISTORY_LEN: usize = 4;

/// Unit in which pending I/O is counted (LinnOS counts 4 KiB pages).
pub const PAGE_SIZE: u32 = 4096;

/// log2 of the width of one in-flight age bucket in ns (2^17 ns, about 131 µs).
pub const AGE_BUCKET_SHIFT: u32 = 17;
/// Number of in-flight age buckets: ages are tracked up to
/// `AGE_BUCKETS << AGE_BUCKET_SHIFT` ns (about 8.4 ms). An I/O pending longer
/// than that shares its bucket with newer ones and is reported younger.
pub const AGE_BUCKETS: usize = 64;

/// Completed reads summarised by one slot of the read-maximum ring.
pub const READ_MAX_GROUP: u64 = 8;
/// Slots in the read-maximum ring: [`ReplicaHistory::read_max_us`] covers
/// the last `(READ_MAX_SLOTS - 1) * READ_MAX_GROUP + 1` to
/// `READ_MAX_SLOTS * READ_MAX_GROUP` completed reads (57 to 64).
pub const READ_MAX_SLOTS: usize = 8;
/// log2 of the read-maximum ring's clock unit in ns (2^20 ns, about 1 ms).
pub const READ_MAX_TIME_SHIFT: u32 = 20;
/// A slot whose newest read completed this many clock units ago or more
/// (about 268 ms) is forgotten.
pub const READ_MAX_STALE_UNITS: u32 = 256;

/// A read-maximum slot's latency (µs, capped: about 16.8 s) and clock are
/// 24-bit fields; this masks one.
const FIELD: u64 = (1 << 24) - 1;

/// Kind of block I/O; only reads enter the history, every op counts as pending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Read data (the only op LinnOS predicts and remembers).
    #[default]
    Read = 0,
    /// Write data.
    Write = 1,
    /// Flush the volatile cache (counts 1 pending I/O, 0 pages).
    Flush = 2,
    /// Discard (TRIM) a range.
    Discard = 3,
    /// Write zeroes to a range.
    WriteZeroes = 4,
}

impl Op {
    /// Every op, in discriminant order (handy for tests and encoders).
    pub const ALL: [Op; 5] = [Op::Read, Op::Write, Op::Flush, Op::Discard, Op::WriteZeroes];

    /// Decode the `repr(u8)` discriminant; `None` for an unknown byte.
    pub fn from_u8(v: u8) -> Option<Op> {
        Op::ALL.get(usize::from(v)).copied()
    }

    /// True for [`Op::Read`], the only op that is pushed into the history.
    pub fn is_read(self) -> bool {
        self == Op::Read
    }
}

impl TryFrom<u8> for Op {
    type Error = u8;
    /// Decode a discriminant byte; the error is the rejected byte.
    fn try_from(v: u8) -> Result<Self, u8> {
        Op::from_u8(v).ok_or(v)
    }
}

/// Pending-I/O weight of one op in 4 KiB pages: `ceil(size / 4096)` (so at
/// least 1 for a non-zero size), and 0 for a flush, which moves no data.
pub fn pages_for(op: Op, size_bytes: u32) -> u32 {
    match op {
        Op::Flush => 0,
        _ => size_bytes.div_ceil(PAGE_SIZE),
    }
}

/// One completed read as the history remembers it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completed {
    /// Observed latency, microseconds (not capped here; encoders cap).
    pub latency_us: u32,
    /// Replica's pending I/O in 4 KiB pages when this read was issued.
    pub pending_pages_at_issue: u32,
    /// Replica's pending I/O count when this read was issued.
    pub pending_ios_at_issue: u32,
    /// Size of the read in bytes.
    pub size_bytes: u32,
}

/// A consistent copy of one replica's state, taken without locks.
///
/// The history part (`recent`, `len`) is one atomic view (never torn); the
/// pending pair is read with a single atomic load, so pages and ios always
/// belong together too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistorySnapshot {
    /// Pending I/O now, in 4 KiB pages (rounded up per I/O).
    pub pending_pages: u32,
    /// Pending I/O count now.
    pub pending_ios: u32,
    /// Last completed reads, newest first; entries beyond `len` are zero.
    pub recent: [Completed; HISTORY_LEN],
    /// How many of `recent` are real (0..=HISTORY_LEN).
    pub len: u8,
    /// Age in µs of the oldest I/O (any op) pending on the replica, rounded
    /// up to its age bucket; 0 when nothing is pending or the I/O was not
    /// timed (see [`ReplicaHistory::oldest_pending_us`]).
    pub oldest_pending_us: u32,
    /// Largest latency in µs among the last 57 to 64 timed reads that
    /// completed on the replica, leaving out those that completed more than
    /// about 268 ms ago; 0 if none is left (see
    /// [`ReplicaHistory::read_max_us`]).
    pub read_max_us: u32,
    /// Latencies in µs of the last completed writes, newest first; entries
    /// beyond `write_len` are zero (see [`ReplicaHistory::recent_writes`]).
    pub write_recent_us: [u32; WRITE_HISTORY_LEN],
    /// How many of `write_recent_us` are real (0..=WRITE_HISTORY_LEN).
    pub write_len: u8,
}

impl HistorySnapshot {
    /// The real entries of `recent` (newest first), i.e. `&recent[..len]`.
    pub fn completed(&self) -> &[Completed] {
        &self.recent[..usize::from(self.len).min(HISTORY_LEN)]
    }

    /// The real entries of `write_recent_us` (newest first).
    pub fn writes(&self) -> &[u32] {
        &self.write_recent_us[..usize::from(self.write_len).min(WRITE_HISTORY_LEN)]
    }
}

/// What [`ReplicaHistory::on_submit`] hands out and `on_complete` takes back:
/// the op, its page weight, and the replica's pending state at issue time.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    /// The submitted op.
    pub op: Op,
    /// Its size in bytes.
    pub size_bytes: u32,
    /// Its weight in pending pages (see [`pages_for`]); subtracted on completion.
    pub pages: u32,
    /// Pending pages just before this I/O was counted.
    pub pending_pages_at_issue: u32,
    /// Pending I/O count just before this I/O was counted.
    pub pending_ios_at_issue: u32,
    /// Age bucket epoch (`now_ns >> AGE_BUCKET_SHIFT`) of a timed submit
    /// ([`ReplicaHistory::on_submit_at`]); `None` for an untimed one.
    pub issue_epoch: Option<u64>,
    /// Issue time of a timed submit (caller's clock, ns).
    pub issue_ns: Option<u64>,
}

/// Pack (ios, pages) into one word so both change with one atomic RMW.
#[inline]
fn pack(ios: u32, pages: u32) -> u64 {
    (u64::from(ios) << 32) | u64::from(pages)
}

/// Inverse of [`pack`]: returns (pages, ios).
#[inline]
fn unpack(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

/// The seqlock-protected part: a ring of completed reads.
///
/// Every field is an atomic so that a reader racing a writer performs no data
/// race (no UB); the sequence counter only decides whether the copy is kept.
struct SeqHistory {
    /// Even: stable. Odd: a writer is inside. Bumped by 2 per push.
    seq: AtomicU64,
    /// Ring index of the newest entry (always `< HISTORY_LEN`).
    head: AtomicU32,
    /// Number of valid entries (saturates at `HISTORY_LEN`).
    len: AtomicU32,
    /// `[latency_us, pending_pages_at_issue, pending_ios_at_issue, size_bytes]`.
    entries: [[AtomicU32; 4]; HISTORY_LEN],
}

/// Per-replica live state: pending counters + history of the last completed reads.
///
/// All methods take `&self` and may be called from any thread; none allocates
/// or takes a lock. Writers of the history serialise on the seqlock (a CAS),
/// readers never block writers and retry only while a push is in progress.
pub struct ReplicaHistory {
    /// Pending `(ios << 32) | pages`, one word so the pair is never torn.
    pending: CachePadded<AtomicU64>,
    hist: CachePadded<SeqHistory>,
    /// Timed pending I/Os per issue epoch, a ring of [`AGE_BUCKETS`]
    /// (epoch `e` lives in `e % AGE_BUCKETS`): the oldest non-empty bucket
    /// gives the age of the oldest pending I/O.
    inflight: CachePadded<[AtomicU32; AGE_BUCKETS]>,
    /// Timed reads completed so far, and per group `g` of [`READ_MAX_GROUP`]
    /// of them (slot `g % READ_MAX_SLOTS`): `tag (g mod 2^16) << 48 | max
    /// latency µs << 24 | clock of the newest completion (2^24 units)`.
    read_max: CachePadded<(AtomicU64, [AtomicU64; READ_MAX_SLOTS])>,
    /// Writes completed so far, and the ring of the last
    /// [`WRITE_HISTORY_LEN`] write latencies (µs; write `n` in slot `n % LEN`).
    writes: CachePadded<(AtomicU64, [AtomicU32; WRITE_HISTORY_LEN])>,
}

impl Default for ReplicaHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplicaHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaHistory")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

impl ReplicaHistory {
    /// An idle replica: nothing pending, empty history.
    pub fn new() -> Self {
        Self {
            pending: CachePadded::new(AtomicU64::new(0)),
            hist: CachePadded::new(SeqHistory {
                seq: AtomicU64::new(0),
                head: AtomicU32::new(0),
                len: AtomicU32::new(0),
                entries: [const { [const { AtomicU32::new(0) }; 4] }; HISTORY_LEN],
            }),
            inflight: CachePadded::new([const { AtomicU32::new(0) }; AGE_BUCKETS]),
            read_max: CachePadded::new((
                AtomicU64::new(0),
                [const { AtomicU64::new(0) }; READ_MAX_SLOTS],
            )),
            writes: CachePadded::new((
                AtomicU64::new(0),
                [const { AtomicU32::new(0) }; WRITE_HISTORY_LEN],
            )),
        }
    }

    /// Count an I/O as pending; returns the Ticket needed at completion
    /// (it records pending pages/ios *before* adding this I/O, i.e. at issue time).
    ///
    /// Pending pages are kept in 32 bits; more than 2^32 pages (16 TiB) in
    /// flight on one replica is not supported.
    pub fn on_submit(&self, op: Op, size_bytes: u32) -> Ticket {
        let pages = pages_for(op, size_bytes);
        // Relaxed: the counters are statistics; nothing else is published with them.
        let prev = self.pending.fetch_add(pack(1, pages), Ordering::Relaxed);
        let (pending_pages_at_issue, pending_ios_at_issue) = unpack(prev);
        Ticket {
            op,
            size_bytes,
            pages,
            pending_pages_at_issue,
            pending_ios_at_issue,
            issue_epoch: None,
            issue_ns: None,
        }
    }

    /// Like [`on_submit`](Self::on_submit), and also remembers the issue time
    /// (`now_ns` on the caller's monotonic clock) so that
    /// [`oldest_pending_us`](Self::oldest_pending_us) can see this I/O.
    pub fn on_submit_at(&self, op: Op, size_bytes: u32, now_ns: u64) -> Ticket {
        let mut t = self.on_submit(op, size_bytes);
        let epoch = now_ns >> AGE_BUCKET_SHIFT;
        self.inflight[(epoch % AGE_BUCKETS as u64) as usize].fetch_add(1, Ordering::Relaxed);
        t.issue_epoch = Some(epoch);
        t.issue_ns = Some(now_ns);
        t
    }

    /// Age in µs, at `now_ns`, of the oldest timed I/O still pending, or 0
    /// if none is. Measured from the start of its age bucket, so it is an
    /// upper bound, at most one bucket (131 µs) above the true age. Reads
    /// [`AGE_BUCKETS`] counters; no lock, no allocation.
    pub fn oldest_pending_us(&self, now_ns: u64) -> u32 {
        let now_epoch = now_ns >> AGE_BUCKET_SHIFT;
        for back in (0..AGE_BUCKETS as u64).rev() {
            let Some(e) = now_epoch.checked_sub(back) else {
                continue;
            };
            if self.inflight[(e % AGE_BUCKETS as u64) as usize].load(Ordering::Relaxed) != 0 {
                let age_ns = now_ns - (e << AGE_BUCKET_SHIFT);
                return u32::try_from(age_ns / 1000).unwrap_or(u32::MAX);
            }
        }
        0
    }

    /// [`on_submit_with_snapshot`](Self::on_submit_with_snapshot) for a timed
    /// submit: the snapshot also carries the oldest pending age at issue
    /// (before this I/O is counted).
    pub fn on_submit_with_snapshot_at(
        &self,
        op: Op,
        size_bytes: u32,
        now_ns: u64,
    ) -> (Ticket, HistorySnapshot) {
        let oldest_pending_us = self.oldest_pending_us(now_ns);
        let ticket = self.on_submit_at(op, size_bytes, now_ns);
        let snap = self.issue_snapshot(&ticket, oldest_pending_us, self.read_max_us(now_ns));
        (ticket, snap)
    }

    /// The snapshot a just-submitted I/O saw: its ticket's at-issue pending
    /// counts, the history now, and the given timed signals.
    fn issue_snapshot(
        &self,
        ticket: &Ticket,
        oldest_pending_us: u32,
        read_max_us: u32,
    ) -> HistorySnapshot {
        let (recent, len) = self.read_history();
        let (write_recent_us, write_len) = self.recent_writes();
        HistorySnapshot {
            pending_pages: ticket.pending_pages_at_issue,
            pending_ios: ticket.pending_ios_at_issue,
            recent,
            len,
            oldest_pending_us,
            read_max_us,
            write_recent_us,
            write_len,
        }
    }

    /// Like [`on_submit`](Self::on_submit), but also returns the feature
    /// snapshot at issue time (pending_* are the ticket's at-issue values),
    /// which is what a prediction or a [`crate::TrainingRecord`] needs.
    pub fn on_submit_with_snapshot(&self, op: Op, size_bytes: u32) -> (Ticket, HistorySnapshot) {
        let ticket = self.on_submit(op, size_bytes);
        let snap = self.issue_snapshot(&ticket, 0, 0);
        (ticket, snap)
    }

    /// Un-count the I/O; if it was a read, push it into the history, if a
    /// write, its latency into the write ring (any thread).
    ///
    /// Each ticket must be completed exactly once.
    pub fn on_complete(&self, ticket: Ticket, latency_us: u32) {
        let prev = self
            .pending
            .fetch_sub(pack(1, ticket.pages), Ordering::Relaxed);
        let (pages, ios) = unpack(prev);
        debug_assert!(
            ios >= 1 && pages >= ticket.pages,
            "on_complete without a matching on_submit (pending ios {ios}, pages {pages}, ticket {ticket:?})"
        );
        if let Some(e) = ticket.issue_epoch {
            self.inflight[(e % AGE_BUCKETS as u64) as usize].fetch_sub(1, Ordering::Relaxed);
        }
        if ticket.op.is_read() {
            if let Some(t0) = ticket.issue_ns {
                self.note_read_max(t0.saturating_add(u64::from(latency_us) * 1000), latency_us);
            }
            self.push_completed(Completed {
                latency_us,
                pending_pages_at_issue: ticket.pending_pages_at_issue,
                pending_ios_at_issue: ticket.pending_ios_at_issue,
                size_bytes: ticket.size_bytes,
            });
        } else if ticket.op == Op::Write {
            self.push_write(latency_us);
        }
    }

    /// Remember one completed write's latency (µs) in the write ring.
    pub fn push_write(&self, latency_us: u32) {
        let (count, ring) = &*self.writes;
        let n = count.fetch_add(1, Ordering::Relaxed);
        ring[(n % WRITE_HISTORY_LEN as u64) as usize].store(latency_us, Ordering::Relaxed);
    }

    /// The last completed writes' latencies (µs), newest first, and how many
    /// there are. Not a seqlock: under completions racing on other threads an
    /// entry may already hold a newer write's latency, which is as good a
    /// signal; with one completing thread (the array's) it is exact.
    pub fn recent_writes(&self) -> ([u32; WRITE_HISTORY_LEN], u8) {
        let (count, ring) = &*self.writes;
        let n = count.load(Ordering::Relaxed);
        let len = n.min(WRITE_HISTORY_LEN as u64) as usize;
        let mut out = [0u32; WRITE_HISTORY_LEN];
        for (j, o) in out.iter_mut().enumerate().take(len) {
            let k = (n - 1 - j as u64) % WRITE_HISTORY_LEN as u64;
            *o = ring[k as usize].load(Ordering::Relaxed);
        }
        (out, len as u8)
    }

    /// Fold a timed read completed at `done_ns` into the slot of its group
    /// (a CAS loop on one word; the slot of a group 8 groups back is taken over).
    fn note_read_max(&self, done_ns: u64, latency_us: u32) {
        let (count, slots) = &*self.read_max;
        let g = count.fetch_add(1, Ordering::Relaxed) / READ_MAX_GROUP;
        let slot = &slots[(g % READ_MAX_SLOTS as u64) as usize];
        let tag = g & 0xffff;
        let clock = (done_ns >> READ_MAX_TIME_SHIFT) & FIELD;
        let lat = u64::from(latency_us).min(FIELD);
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let new = if cur >> 48 == tag {
                let (m, c) = ((cur >> 24) & FIELD, cur & FIELD);
                // Completions of one group may land out of order: keep the newer clock.
                let newer = clock.wrapping_sub(c) & FIELD;
                let c = if newer < 1 << 23 { clock } else { c };
                (tag << 48) | (m.max(lat) << 24) | c
            } else {
                (tag << 48) | (lat << 24) | clock
            };
            if new == cur {
                return;
            }
            match slot.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(v) => cur = v,
            }
        }
    }

    /// Largest latency (µs) among the last 57 to 64 timed reads completed on
    /// the replica, leaving out groups of [`READ_MAX_GROUP`] whose newest read
    /// completed [`READ_MAX_STALE_UNITS`] clock units (about 268 ms) or more
    /// before `now_ns`; 0 if none is left.
    ///
    /// It is counted in reads, not time: while the router sends no reads to
    /// a replica, what was last seen of it stays (until it goes stale),
    /// instead of fading as if the replica had recovered. 8 loads; no lock.
    pub fn read_max_us(&self, now_ns: u64) -> u32 {
        let (count, slots) = &*self.read_max;
        let n = count.load(Ordering::Relaxed);
        if n == 0 {
            return 0;
        }
        let newest = (n - 1) / READ_MAX_GROUP;
        let now_clock = (now_ns >> READ_MAX_TIME_SHIFT) & FIELD;
        let mut m = 0u64;
        for slot in slots.iter() {
            let v = slot.load(Ordering::Relaxed);
            let behind = newest.wrapping_sub(v >> 48) & 0xffff;
            let age = now_clock.wrapping_sub(v & FIELD) & FIELD;
            // A completion time is issue + latency, so it may lie a little
            // after `now` (`age` wraps to just below 2^24): fresh too.
            let fresh = age < u64::from(READ_MAX_STALE_UNITS) || age > FIELD - (1 << 15);
            if v != 0 && behind < READ_MAX_SLOTS as u64 && fresh {
                m = m.max((v >> 24) & FIELD);
            }
        }
        m as u32
    }

    /// Push a completed read into the history without touching the pending
    /// counters (trace replay, warm-up from a log, tests).
    pub fn push_completed(&self, c: Completed) {
        let h = &*self.hist;
        // Writer lock: CAS the sequence from even `s` to odd `s + 1`.
        // Acquire pairs with the previous writer's Release store of `s`, so
        // its ring updates are visible to us.
        let backoff = Backoff::new();
        let mut s = h.seq.load(Ordering::Relaxed);
        loop {
            if s & 1 == 1 {
                backoff.snooze();
                s = h.seq.load(Ordering::Relaxed);
                continue;
            }
            match h.seq.compare_exchange_weak(
                s,
                s.wrapping_add(1),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(cur) => s = cur,
            }
        }
        // Orders the odd sequence before the data stores below: a reader that
        // observes any of them (then issues its Acquire fence) is guaranteed
        // to re-read a sequence != the even value it started with.
        fence(Ordering::Release);

        let head = (h.head.load(Ordering::Relaxed) as usize + 1) % HISTORY_LEN;
        let e = &h.entries[head];
        e[0].store(c.latency_us, Ordering::Relaxed);
        e[1].store(c.pending_pages_at_issue, Ordering::Relaxed);
        e[2].store(c.pending_ios_at_issue, Ordering::Relaxed);
        e[3].store(c.size_bytes, Ordering::Relaxed);
        h.head.store(head as u32, Ordering::Relaxed);
        let len = h.len.load(Ordering::Relaxed);
        if (len as usize) < HISTORY_LEN {
            h.len.store(len + 1, Ordering::Relaxed);
        }

        // Unlock: publish the data with the next even sequence.
        h.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// A consistent snapshot (never torn), lock-free for readers; its
    /// `oldest_pending_us` is 0 (use [`snapshot_at`](Self::snapshot_at)).
    pub fn snapshot(&self) -> HistorySnapshot {
        let (recent, len) = self.read_history();
        let (write_recent_us, write_len) = self.recent_writes();
        let (pending_pages, pending_ios) = unpack(self.pending.load(Ordering::Relaxed));
        HistorySnapshot {
            pending_pages,
            pending_ios,
            recent,
            len,
            oldest_pending_us: 0,
            read_max_us: 0,
            write_recent_us,
            write_len,
        }
    }

    /// [`snapshot`](Self::snapshot) plus the oldest pending age and the
    /// recent read maximum at `now_ns`.
    pub fn snapshot_at(&self, now_ns: u64) -> HistorySnapshot {
        HistorySnapshot {
            oldest_pending_us: self.oldest_pending_us(now_ns),
            read_max_us: self.read_max_us(now_ns),
            ..self.snapshot()
        }
    }

    /// Pending I/O now as `(pages, ios)`, without reading the history.
    pub fn pending(&self) -> (u32, u32) {
        unpack(self.pending.load(Ordering::Relaxed))
    }

    /// Seqlock read side: copy the ring, keep the copy only if the sequence
    /// was even and unchanged around it.
    fn read_history(&self) -> ([Completed; HISTORY_LEN], u8) {
        let h = &*self.hist;
        let backoff = Backoff::new();
        loop {
            // Acquire pairs with the writer's Release unlock store.
            let s1 = h.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                // Values read here may be torn; they are only used if the
                // sequence check below passes, and any value is memory safe.
                let head = h.head.load(Ordering::Relaxed) as usize % HISTORY_LEN;
                let len = (h.len.load(Ordering::Relaxed) as usize).min(HISTORY_LEN);
                let mut recent = [Completed::default(); HISTORY_LEN];
                for (i, slot) in recent.iter_mut().enumerate().take(len) {
                    let e = &h.entries[(head + HISTORY_LEN - i) % HISTORY_LEN];
                    *slot = Completed {
                        latency_us: e[0].load(Ordering::Relaxed),
                        pending_pages_at_issue: e[1].load(Ordering::Relaxed),
                        pending_ios_at_issue: e[2].load(Ordering::Relaxed),
                        size_bytes: e[3].load(Ordering::Relaxed),
                    };
                }
                // Keeps the data loads above before the re-check below, and
                // synchronises with the writer's Release fence if we saw any
                // of its stores.
                fence(Ordering::Acquire);
                let s2 = h.seq.load(Ordering::Relaxed);
                if s1 == s2 {
                    return (recent, len as u8);
                }
            }
            backoff.snooze();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    #[test]
    fn write_ring_keeps_the_last_write_latencies_newest_first() {
        let h = ReplicaHistory::new();
        assert_eq!(h.recent_writes(), ([0; WRITE_HISTORY_LEN], 0));
        for (k, lat) in [30u32, 40, 500].into_iter().enumerate() {
            let t = h.on_submit_at(Op::Write, 4096, k as u64);
            h.on_complete(t, lat);
        }
        // Reads and flushes do not enter the write ring.
        let t = h.on_submit_at(Op::Read, 4096, 9);
        h.on_complete(t, 7000);
        let t = h.on_submit_at(Op::Flush, 0, 9);
        h.on_complete(t, 7000);
        assert_eq!(h.recent_writes(), ([500, 40, 30, 0], 3));
        let snap = h.snapshot_at(10);
        assert_eq!(snap.writes(), &[500, 40, 30]);
        for lat in [1u32, 2, 3] {
            h.push_write(lat);
        }
        assert_eq!(h.recent_writes(), ([3, 2, 1, 500], 4));
        assert_eq!(h.snapshot().writes(), &[3, 2, 1, 500]);
    }

    #[test]
    fn pages_round_up_and_flush_is_zero() {
        assert_eq!(pages_for(Op::Read, 0), 0);
        assert_eq!(pages_for(Op::Read, 1), 1);
        assert_eq!(pages_for(Op::Read, 4096), 1);
        assert_eq!(pages_for(Op::Write, 4097), 2);
        assert_eq!(pages_for(Op::Discard, u32::MAX), 1 << 20);
        assert_eq!(pages_for(Op::Flush, 1 << 20), 0);
        assert_eq!(Op::try_from(4), Ok(Op::WriteZeroes));
        assert_eq!(Op::try_from(5), Err(5));
    }

    #[test]
    fn read_max_covers_the_last_reads_and_forgets_stale_ones() {
        const U: u64 = 1 << READ_MAX_TIME_SHIFT;
        let h = ReplicaHistory::new();
        assert_eq!(h.read_max_us(0), 0);
        // Untimed reads and timed writes do not count.
        let u = h.on_submit(Op::Read, 4096);
        h.on_complete(u, 9000);
        let w = h.on_submit_at(Op::Write, 4096, 0);
        h.on_complete(w, 9000);
        assert_eq!(h.read_max_us(U), 0);
        // A slow read, then fast ones: seen until 57..=64 reads later.
        let t0 = 10 * U;
        let slow = h.on_submit_at(Op::Read, 4096, t0);
        h.on_complete(slow, 3000);
        assert_eq!(h.read_max_us(t0 + 3_000_000), 3000);
        assert_eq!(h.snapshot_at(t0 + 3_000_000).read_max_us, 3000);
        assert_eq!(
            h.snapshot().read_max_us,
            0,
            "the untimed snapshot leaves it out"
        );
        let mut t = t0 + 4_000_000;
        for k in 1..=64u64 {
            let r = h.on_submit_at(Op::Read, 4096, t);
            h.on_complete(r, 100 + k as u32);
            t += 100_000;
            let m = h.read_max_us(t);
            if k < (READ_MAX_SLOTS as u64 - 1) * READ_MAX_GROUP {
                assert_eq!(m, 3000, "after {k} fast reads");
            }
            if k == 64 {
                assert_eq!(m, 164, "the slow read has left the window");
            }
        }
        // No reads for a while: the memory stays (counted in reads)...
        let later = t + u64::from(READ_MAX_STALE_UNITS - 2) * U;
        assert_eq!(h.read_max_us(later), 164);
        // ...until it goes stale.
        assert_eq!(
            h.read_max_us(t + u64::from(READ_MAX_STALE_UNITS + 1) * U),
            0
        );
    }

    #[test]
    fn read_max_keeps_a_slow_read_while_no_reads_complete() {
        let h = ReplicaHistory::new();
        let r = h.on_submit_at(Op::Read, 4096, 1_000_000);
        h.on_complete(r, 2500);
        // Writes keep completing; the read maximum does not fade with time.
        let mut t = 5_000_000;
        for _ in 0..1000 {
            let w = h.on_submit_at(Op::Write, 4096, t);
            h.on_complete(w, 50);
            t += 100_000;
        }
        assert_eq!(h.read_max_us(t), 2500);
    }

    #[test]
    fn oldest_pending_age_follows_the_oldest_timed_io() {
        const B: u64 = 1 << AGE_BUCKET_SHIFT;
        let h = ReplicaHistory::new();
        let t0 = 10 * B + 5;
        assert_eq!(h.oldest_pending_us(t0), 0);
        let a = h.on_submit_at(Op::Read, 4096, t0);
        let b = h.on_submit_at(Op::Write, 4096, t0 + 3 * B);
        // Untimed submits are invisible to the age.
        let u = h.on_submit(Op::Read, 4096);
        let now = t0 + 7 * B;
        // Measured from the start of a's bucket (10 * B): an upper bound
        // at most one bucket above a's true age.
        assert_eq!(h.oldest_pending_us(now), ((now - 10 * B) / 1000) as u32);
        let (_, snap) = h.on_submit_with_snapshot_at(Op::Read, 4096, now);
        assert_eq!(snap.oldest_pending_us, ((now - 10 * B) / 1000) as u32);
        assert_eq!(h.snapshot_at(now).oldest_pending_us, snap.oldest_pending_us);
        assert_eq!(h.snapshot().oldest_pending_us, 0);
        h.on_complete(a, 100);
        assert_eq!(h.oldest_pending_us(now), ((now - 13 * B) / 1000) as u32);
        h.on_complete(b, 100);
        h.on_complete(u, 100);
        // Only the read submitted with the snapshot is left, in now's bucket.
        assert!(h.oldest_pending_us(now) < (B / 1000) as u32 + 1);
        // Near time zero the scan must not underflow.
        let z = ReplicaHistory::new();
        let t = z.on_submit_at(Op::Read, 512, 0);
        assert_eq!(z.oldest_pending_us(B / 2), (B / 2 / 1000) as u32);
        z.on_complete(t, 1);
        assert_eq!(z.oldest_pending_us(B / 2), 0);
    }

    #[test]
    fn ticket_records_pending_at_issue_and_flush_counts_one_io() {
        let h = ReplicaHistory::new();
        let a = h.on_submit(Op::Write, 8192);
        assert_eq!((a.pending_pages_at_issue, a.pending_ios_at_issue), (0, 0));
        let f = h.on_submit(Op::Flush, 0);
        assert_eq!((f.pending_pages_at_issue, f.pending_ios_at_issue), (2, 1));
        let (r, snap) = h.on_submit_with_snapshot(Op::Read, 100);
        assert_eq!((r.pending_pages_at_issue, r.pending_ios_at_issue), (2, 2));
        assert_eq!((snap.pending_pages, snap.pending_ios), (2, 2));
        assert_eq!(h.pending(), (3, 3));
        h.on_complete(f, 5);
        assert_eq!(h.pending(), (3, 2));
        h.on_complete(a, 5);
        h.on_complete(r, 77);
        let s = h.snapshot();
        assert_eq!((s.pending_pages, s.pending_ios), (0, 0));
        // Only the read entered the history.
        assert_eq!(s.len, 1);
        assert_eq!(
            s.recent[0],
            Completed {
                latency_us: 77,
                pending_pages_at_issue: 2,
                pending_ios_at_issue: 2,
                size_bytes: 100
            }
        );
        assert_eq!(s.recent[1], Completed::default());
    }

    #[test]
    fn history_is_newest_first_and_bounded() {
        let h = ReplicaHistory::new();
        for k in 1..=10u32 {
            let t = h.on_submit(Op::Read, 4096);
            h.on_complete(t, k);
            let s = h.snapshot();
            assert_eq!(usize::from(s.len), (k as usize).min(HISTORY_LEN));
            for (i, c) in s.completed().iter().enumerate() {
                assert_eq!(c.latency_us, k - i as u32);
            }
            for c in &s.recent[usize::from(s.len)..] {
                assert_eq!(*c, Completed::default());
            }
        }
    }

    #[test]
    fn pending_counters_return_to_zero_after_balanced_threads() {
        let h = Arc::new(ReplicaHistory::new());
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let h = Arc::clone(&h);
                std::thread::spawn(move || {
                    let mut held = Vec::with_capacity(8);
                    for i in 0..20_000u32 {
                        let op = Op::ALL[((i + t) % 5) as usize];
                        let size = (i.wrapping_mul(2_654_435_761) >> 12) % (1 << 20);
                        held.push(h.on_submit(op, size));
                        if held.len() == 8 || i % 3 == 0 {
                            // Complete out of order.
                            while let Some(tk) = held.pop() {
                                h.on_complete(tk, i);
                            }
                        }
                    }
                    for tk in held {
                        h.on_complete(tk, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker panicked");
        }
        let s = h.snapshot();
        assert_eq!((s.pending_pages, s.pending_ios), (0, 0));
        assert_eq!(usize::from(s.len), HISTORY_LEN);
    }

    // Every field of a pushed entry is derived from one value `k`, so an
    // entry mixing two pushes is detectable.
    fn entry_for(k: u32) -> (u32, u32, u32) {
        (
            k.wrapping_mul(2_654_435_761),
            !k,
            k.rotate_left(13) ^ 0x5bd1_e995,
        )
    }

    fn check_snapshot(s: &HistorySnapshot, writers: u32, last_newest: &mut [u32]) {
        let len = usize::from(s.len);
        assert!(len <= HISTORY_LEN, "len {len}");
        for c in &s.recent[len..] {
            assert_eq!(*c, Completed::default(), "non-zero entry beyond len: {s:?}");
        }
        let mut prev_n: Vec<Option<u32>> = vec![None; writers as usize];
        for (i, c) in s.completed().iter().enumerate() {
            let k = c.latency_us;
            let (p, q, z) = entry_for(k);
            assert_eq!(
                (
                    c.pending_pages_at_issue,
                    c.pending_ios_at_issue,
                    c.size_bytes
                ),
                (p, q, z),
                "torn entry {i}: {s:?}"
            );
            let (w, n) = ((k >> 24) as usize, k & 0xff_ffff);
            assert!(w < writers as usize, "unknown writer in {s:?}");
            match prev_n[w] {
                // A writer's entries in the window are its latest pushes:
                // consecutive, newest first.
                Some(prev) => assert_eq!(n + 1, prev, "entry {i} out of order: {s:?}"),
                None => {
                    // Newest entry per writer never goes backwards.
                    assert!(n >= last_newest[w], "stale snapshot: {s:?}");
                    last_newest[w] = n;
                }
            }
            prev_n[w] = Some(n);
        }
    }

    /// Would catch a torn snapshot: writers push entries derived from one
    /// counter each, readers check every snapshot for internal consistency.
    #[test]
    fn snapshot_never_torn_under_concurrent_writers() {
        const WRITERS: u32 = 2;
        const READERS: usize = 2;
        let run_for = Duration::from_millis(1000);
        let h = Arc::new(ReplicaHistory::new());
        let stop = Arc::new(AtomicBool::new(false));

        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (h, stop) = (Arc::clone(&h), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) && n < 0xff_ffff {
                        n += 1;
                        if n.is_multiple_of(16) {
                            // Leave the 2 CI cores to the readers now and then.
                            std::thread::yield_now();
                        }
                        let k = (w << 24) | n;
                        let (p, q, z) = entry_for(k);
                        if n.is_multiple_of(2) {
                            // Through the public submit/complete path.
                            let mut t = h.on_submit(Op::Read, 4096);
                            t.pending_pages_at_issue = p;
                            t.pending_ios_at_issue = q;
                            t.size_bytes = z;
                            h.on_complete(t, k);
                        } else {
                            h.push_completed(Completed {
                                latency_us: k,
                                pending_pages_at_issue: p,
                                pending_ios_at_issue: q,
                                size_bytes: z,
                            });
                        }
                    }
                    n
                })
            })
            .collect();
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (h, stop) = (Arc::clone(&h), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut last_newest = vec![0u32; WRITERS as usize];
                    let mut snaps = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        check_snapshot(&h.snapshot(), WRITERS, &mut last_newest);
                        snaps += 1;
                    }
                    snaps
                })
            })
            .collect();

        let start = Instant::now();
        while start.elapsed() < run_for {
            // Also check from this thread.
            let mut last_newest = vec![0u32; WRITERS as usize];
            check_snapshot(&h.snapshot(), WRITERS, &mut last_newest);
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        let pushed: u32 = writers
            .into_iter()
            .map(|t| t.join().expect("writer panicked"))
            .sum();
        let snaps: u64 = readers
            .into_iter()
            .map(|t| t.join().expect("reader panicked (torn snapshot?)"))
            .sum();
        assert!(pushed > 1000, "writers made too little progress: {pushed}");
        assert!(snaps > 1000, "readers made too little progress: {snaps}");
        let s = h.snapshot();
        assert_eq!(usize::from(s.len), HISTORY_LEN);
        assert_eq!((s.pending_pages, s.pending_ios), (0, 0));
    }
}

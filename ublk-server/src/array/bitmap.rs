//! The write-intent bitmap, and which regions each replica does not hold yet.
//!
//! The device is cut into regions (4 MiB by default). Before the first write
//! into a clean region starts, its bit is set and the bitmap is written
//! durably to every member's sidecar; a writer into a region already dirty
//! touches only two atomics. A background tick clears regions lazily: once a
//! region has had no write for a whole tick and none is in flight, the
//! replicas are flushed and its bit is cleared. While the array is degraded
//! (a replica failed or missing) nothing is cleared, so a replica that comes
//! back needs only the regions written since.
//!
//! Each replica also has a *pending* set: regions whose data it does not
//! hold yet (dirty regions after a crash, on every replica but the chosen
//! source; every region of a replica being rebuilt). Reads avoid a replica
//! in its pending regions, and the sync worker (`sync.rs`) empties the sets.
//! To copy a region the worker *locks* it: writers into a locked region are
//! deferred, and the worker waits for those in flight to finish.
//!
//! Writers and the clearing tick (and the worker) meet on two per-region
//! atomics with sequentially consistent order: a writer counts itself in
//! flight, then reads the dirty bit (or the lock); the tick clears the bit
//! (the worker sets the lock), then reads the in-flight count. One of the
//! two always sees the other.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Mutex, MutexGuard};

use super::meta::{MetaError, Record, Sidecar, SlotState, id_text};

/// A set of regions, safe to read and change from any thread.
#[derive(Debug)]
pub(crate) struct Bitset {
    words: Vec<AtomicU64>,
}

impl Bitset {
    pub(crate) fn new(bits: usize) -> Self {
        Bitset {
            words: (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    #[inline]
    pub(crate) fn get(&self, i: usize) -> bool {
        self.words[i / 64].load(SeqCst) & (1 << (i % 64)) != 0
    }
    /// Sets bit `i`; true if it was clear.
    pub(crate) fn set(&self, i: usize) -> bool {
        self.words[i / 64].fetch_or(1 << (i % 64), SeqCst) & (1 << (i % 64)) == 0
    }
    /// Clears bit `i`; true if it was set.
    pub(crate) fn clear(&self, i: usize) -> bool {
        self.words[i / 64].fetch_and(!(1 << (i % 64)), SeqCst) & (1 << (i % 64)) != 0
    }
    pub(crate) fn count(&self) -> usize {
        self.words
            .iter()
            .map(|w| w.load(Relaxed).count_ones() as usize)
            .sum()
    }
    pub(crate) fn words(&self) -> Vec<u64> {
        self.words.iter().map(|w| w.load(SeqCst)).collect()
    }
    pub(crate) fn or_words(&self, w: &[u64]) {
        for (a, b) in self.words.iter().zip(w) {
            a.fetch_or(*b, SeqCst);
        }
    }
    /// The set bits, lowest first.
    pub(crate) fn ones(&self) -> Vec<usize> {
        let mut v = Vec::new();
        for (k, w) in self.words.iter().enumerate() {
            let mut x = w.load(SeqCst);
            while x != 0 {
                v.push(k * 64 + x.trailing_zeros() as usize);
                x &= x - 1;
            }
        }
        v
    }
}

/// A replica's place in the array, as the metadata records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Member {
    /// Holds the data (outside its pending regions).
    InSync,
    /// Being rebuilt from the others.
    Rebuilding,
    /// Failed or removed: gets no metadata writes.
    Out,
}

/// What is written to the sidecars besides the bitmap.
#[derive(Debug)]
pub(crate) struct Book {
    pub(crate) array_id: u128,
    pub(crate) size: u64,
    pub(crate) generation: u64,
    pub(crate) degraded_since: u64,
    pub(crate) seq: u64,
    pub(crate) members: Vec<Member>,
    pub(crate) sidecars: Vec<Option<Sidecar>>,
}

/// The array's write-intent state (see the module doc).
#[derive(Debug)]
pub(crate) struct Intent {
    pub(crate) region_size: u64,
    shift: u32,
    pub(crate) regions: usize,
    pub(crate) dirty: Bitset,
    inflight: Vec<AtomicU32>,
    writes: Vec<AtomicU32>,
    locked: Bitset,
    /// Per replica: regions it does not hold yet.
    pending: Vec<Bitset>,
    pending_n: Vec<AtomicUsize>,
    /// Regions whose bits the tick saw idle last time, with their write counts.
    idle_seen: Mutex<Vec<(usize, u32)>>,
    pub(crate) book: Mutex<Book>,
    /// Bitmap writes that failed (logged once each).
    pub(crate) errors: AtomicU64,
    /// Regions marked dirty / cleared since start.
    pub(crate) marked: AtomicU64,
    pub(crate) cleared: AtomicU64,
}

impl Intent {
    pub(crate) fn new(region_size: u64, book: Book) -> Intent {
        let regions = Record::regions_for(book.size, region_size);
        let n = book.members.len();
        Intent {
            region_size,
            shift: region_size.trailing_zeros(),
            regions,
            dirty: Bitset::new(regions),
            inflight: (0..regions).map(|_| AtomicU32::new(0)).collect(),
            writes: (0..regions).map(|_| AtomicU32::new(0)).collect(),
            locked: Bitset::new(regions),
            pending: (0..n).map(|_| Bitset::new(regions)).collect(),
            pending_n: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            idle_seen: Mutex::new(Vec::new()),
            book: Mutex::new(book),
            errors: AtomicU64::new(0),
            marked: AtomicU64::new(0),
            cleared: AtomicU64::new(0),
        }
    }

    /// The regions `offset..offset+len` touches.
    #[inline]
    pub(crate) fn span(&self, offset: u64, len: u32) -> std::ops::RangeInclusive<usize> {
        let first = (offset >> self.shift) as usize;
        let last = ((offset + u64::from(len.max(1)) - 1) >> self.shift) as usize;
        first..=last.min(self.regions - 1)
    }

    /// Byte range of region `r`.
    pub(crate) fn region_range(&self, r: usize, size: u64) -> (u64, u64) {
        let start = (r as u64) << self.shift;
        (start, (start + self.region_size).min(size))
    }

    pub(crate) fn lock_book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A write into `offset..+len` starts: false if a region is locked by
    /// the sync worker (defer the write and try again). Marks clean regions
    /// dirty, durably, before returning true.
    pub(crate) fn begin_write(&self, offset: u64, len: u32) -> bool {
        let span = self.span(offset, len);
        if span.clone().any(|r| self.locked.get(r)) {
            return false;
        }
        for r in span.clone() {
            self.inflight[r].fetch_add(1, SeqCst);
        }
        if span.clone().any(|r| self.locked.get(r)) {
            for r in span {
                self.inflight[r].fetch_sub(1, SeqCst);
            }
            return false;
        }
        let mut clean = false;
        for r in span.clone() {
            self.writes[r].fetch_add(1, Relaxed);
            clean |= !self.dirty.get(r);
        }
        if clean {
            let mut book = self.lock_book();
            let mut new = 0;
            for r in span {
                if self.dirty.set(r) {
                    new += 1;
                }
            }
            if new > 0 {
                self.marked.fetch_add(new, Relaxed);
                self.store(&mut book);
            }
        }
        true
    }

    /// A write begun with [`Intent::begin_write`] has finished on every replica.
    pub(crate) fn end_write(&self, offset: u64, len: u32) {
        for r in self.span(offset, len) {
            self.inflight[r].fetch_sub(1, SeqCst);
        }
    }

    /// Writes the book and bitmap to every member's sidecar.
    pub(crate) fn store(&self, book: &mut Book) {
        book.seq += 1;
        let bitmap = self.dirty.words();
        let count = book.members.len() as u16;
        for (i, sc) in book.sidecars.iter().enumerate() {
            let (Some(sc), m) = (sc, book.members[i]) else {
                continue;
            };
            if m == Member::Out {
                continue;
            }
            let rec = Record {
                array_id: book.array_id,
                index: i as u16,
                count,
                size: book.size,
                region_size: self.region_size,
                generation: book.generation,
                degraded_since: book.degraded_since,
                seq: book.seq,
                state: if m == Member::Rebuilding {
                    SlotState::Rebuilding
                } else {
                    SlotState::InSync
                },
                bitmap: bitmap.clone(),
            };
            if let Err(e) = sc.store(&rec) {
                self.store_failed(&e);
            }
        }
    }

    fn store_failed(&self, e: &MetaError) {
        if self.errors.fetch_add(1, Relaxed) == 0 {
            tracing::error!(
                "writing the array's metadata failed: {e}; crash consistency is not guaranteed until it works again"
            );
        }
    }

    /// A membership change: bumps the generation (and, when a replica
    /// left, records from when the bitmap covers its absence), then stores.
    pub(crate) fn change(&self, book: &mut Book) {
        book.generation += 1;
        let degraded = book.members.iter().any(|m| *m != Member::InSync)
            || self.pending_n.iter().any(|n| n.load(SeqCst) > 0);
        if degraded && book.degraded_since == 0 {
            book.degraded_since = book.generation;
        } else if !degraded {
            book.degraded_since = 0;
        }
        self.store(book);
    }

    /// True when replica `i` holds the data of `offset..+len`.
    #[inline]
    pub(crate) fn readable(&self, i: usize, offset: u64, len: u32) -> bool {
        self.pending_n[i].load(SeqCst) == 0
            || !self.span(offset, len).any(|r| self.pending[i].get(r))
    }

    /// Regions replica `i` does not hold yet.
    pub(crate) fn pending_count(&self, i: usize) -> usize {
        self.pending_n[i].load(SeqCst)
    }

    /// True if replica `i` lacks region `r`.
    pub(crate) fn is_pending(&self, i: usize, r: usize) -> bool {
        self.pending[i].get(r)
    }

    /// Marks regions `rs` as not held by replica `i`.
    pub(crate) fn add_pending(&self, i: usize, rs: impl IntoIterator<Item = usize>) {
        for r in rs {
            if self.pending[i].set(r) {
                self.pending_n[i].fetch_add(1, SeqCst);
            }
        }
    }

    /// Region `r` now holds the data on replica `i`.
    pub(crate) fn done_pending(&self, i: usize, r: usize) {
        if self.pending[i].clear(r) {
            self.pending_n[i].fetch_sub(1, SeqCst);
        }
    }

    /// Forgets replica `i`'s pending regions (it failed or left).
    pub(crate) fn drop_pending(&self, i: usize) {
        for r in self.pending[i].ones() {
            self.done_pending(i, r);
        }
    }

    /// Regions some replica lacks, lowest first.
    pub(crate) fn any_pending(&self) -> Vec<usize> {
        let mut v: Vec<usize> = Vec::new();
        for p in &self.pending {
            v.extend(p.ones());
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Takes region `r` for the sync worker: new writes into it are
    /// deferred; returns once those in flight have finished (false if they
    /// did not within `patience`, and the lock is released again).
    pub(crate) fn lock_region(&self, r: usize, patience: std::time::Duration) -> bool {
        self.locked.set(r);
        let deadline = std::time::Instant::now() + patience;
        while self.inflight[r].load(SeqCst) != 0 {
            if std::time::Instant::now() > deadline {
                self.locked.clear(r);
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        true
    }

    /// Gives region `r` back to writers.
    pub(crate) fn unlock_region(&self, r: usize) {
        self.locked.clear(r);
    }

    /// The lazy clear, run every tick: regions idle since the last tick
    /// (no write started, none in flight) are cleared after `flush` made
    /// the replicas' data durable. Nothing is cleared while the array is
    /// degraded or a replica lacks regions. Returns how many were cleared.
    pub(crate) fn tick(&self, flush: impl FnOnce() -> bool) -> usize {
        let mut seen = self.idle_seen.lock().unwrap_or_else(|p| p.into_inner());
        let healthy = {
            let book = self.lock_book();
            book.members.iter().all(|m| *m == Member::InSync)
        } && self.pending_n.iter().all(|n| n.load(SeqCst) == 0);
        if !healthy {
            seen.clear();
            return 0;
        }
        // Candidates: dirty, nothing in flight, and no write since the
        // previous tick saw them so.
        let now: Vec<(usize, u32)> = self
            .dirty
            .ones()
            .into_iter()
            .filter(|&r| self.inflight[r].load(SeqCst) == 0)
            .map(|r| (r, self.writes[r].load(SeqCst)))
            .collect();
        let ripe: Vec<(usize, u32)> = now.iter().copied().filter(|c| seen.contains(c)).collect();
        *seen = now;
        if ripe.is_empty() {
            return 0;
        }
        if !flush() {
            return 0;
        }
        let mut book = self.lock_book();
        let mut n = 0;
        for (r, w) in ripe {
            if self.writes[r].load(SeqCst) != w {
                continue;
            }
            self.dirty.clear(r);
            if self.inflight[r].load(SeqCst) != 0 || self.writes[r].load(SeqCst) != w {
                self.dirty.set(r);
                continue;
            }
            n += 1;
        }
        if n > 0 {
            self.cleared.fetch_add(n as u64, Relaxed);
            self.store(&mut book);
        }
        seen.retain(|(r, _)| self.dirty.get(*r));
        n
    }

    /// At a clean stop: every write has finished and been flushed, so the
    /// whole bitmap is cleared (unless degraded or incomplete).
    pub(crate) fn clean_stop(&self) {
        let mut book = self.lock_book();
        let healthy = book.members.iter().all(|m| *m == Member::InSync)
            && self.pending_n.iter().all(|n| n.load(SeqCst) == 0)
            && self.inflight.iter().all(|n| n.load(SeqCst) == 0);
        if healthy {
            let n = self.dirty.count();
            for r in self.dirty.ones() {
                self.dirty.clear(r);
            }
            self.cleared.fetch_add(n as u64, Relaxed);
        }
        self.store(&mut book);
        tracing::info!(
            "array {}: metadata written at stop ({} dirty region(s) left)",
            &id_text(book.array_id)[..8],
            self.dirty.count()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(dir: &std::path::Path, n: usize) -> Intent {
        let sidecars = (0..n)
            .map(|i| Some(Sidecar::open(&dir.join(format!("r{i}.augur-meta"))).unwrap()))
            .collect();
        Intent::new(
            1 << 20,
            Book {
                array_id: 7,
                size: 10 << 20,
                generation: 1,
                degraded_since: 0,
                seq: 0,
                members: vec![Member::InSync; n],
                sidecars,
            },
        )
    }

    #[test]
    fn marks_durably_and_clears_lazily() {
        let d = tempfile::tempdir().unwrap();
        let it = intent(d.path(), 2);
        assert!(it.begin_write((1 << 20) - 512, 1024)); // regions 0 and 1
        for i in 0..2 {
            let r = Record::load(&d.path().join(format!("r{i}.augur-meta")))
                .unwrap()
                .unwrap();
            assert_eq!(r.bitmap[0], 0b11, "replica {i}");
            assert_eq!(r.index, i as u16);
        }
        // In flight: never cleared.
        assert_eq!(it.tick(|| true), 0);
        assert_eq!(it.tick(|| true), 0);
        it.end_write((1 << 20) - 512, 1024);
        // Idle for one tick first, then cleared (after the flush).
        assert_eq!(it.tick(|| true), 0);
        assert_eq!(it.tick(|| false), 0, "no clear when the flush fails");
        assert_eq!(it.tick(|| true), 2);
        let r = Record::load(&d.path().join("r1.augur-meta"))
            .unwrap()
            .unwrap();
        assert_eq!(r.bitmap[0], 0);
        // A write between two ticks keeps the region dirty.
        assert!(it.begin_write(0, 512));
        it.end_write(0, 512);
        assert_eq!(it.tick(|| true), 0);
        assert!(it.begin_write(0, 512));
        it.end_write(0, 512);
        assert_eq!(it.tick(|| true), 0);
        assert_eq!(it.tick(|| true), 1);
    }

    #[test]
    fn degraded_array_keeps_its_bits() {
        let d = tempfile::tempdir().unwrap();
        let it = intent(d.path(), 2);
        it.lock_book().members[1] = Member::Out;
        assert!(it.begin_write(0, 4096));
        it.end_write(0, 4096);
        for _ in 0..4 {
            assert_eq!(it.tick(|| true), 0);
        }
        assert_eq!(it.dirty.count(), 1);
    }

    #[test]
    fn locked_regions_defer_writers_and_wait_for_those_in_flight() {
        let d = tempfile::tempdir().unwrap();
        let it = std::sync::Arc::new(intent(d.path(), 2));
        assert!(it.begin_write(3 << 20, 4096));
        // In flight: the lock is not granted within its patience.
        assert!(!it.lock_region(3, std::time::Duration::from_millis(5)));
        let it2 = it.clone();
        let t = std::thread::spawn(move || it2.lock_region(3, std::time::Duration::from_secs(10)));
        std::thread::sleep(std::time::Duration::from_millis(20));
        it.end_write(3 << 20, 4096);
        assert!(t.join().unwrap());
        assert!(!it.begin_write(3 << 20, 512), "locked: deferred");
        assert!(it.begin_write(4 << 20, 512), "the next region is not");
        it.end_write(4 << 20, 512);
        it.unlock_region(3);
        assert!(it.begin_write(3 << 20, 512));
        it.end_write(3 << 20, 512);
    }

    #[test]
    fn pending_regions_steer_reads() {
        let d = tempfile::tempdir().unwrap();
        let it = intent(d.path(), 3);
        it.add_pending(1, [2, 5]);
        assert!(it.readable(0, 2 << 20, 4096));
        assert!(!it.readable(1, 2 << 20, 4096));
        assert!(it.readable(1, 3 << 20, 4096));
        assert!(
            !it.readable(1, (3 << 20) - 512, 4096),
            "a read spanning into region 3 from 2"
        );
        assert_eq!(it.any_pending(), vec![2, 5]);
        it.done_pending(1, 2);
        assert!(it.readable(1, 2 << 20, 4096));
        it.drop_pending(1);
        assert_eq!(it.pending_count(1), 0);
    }
}

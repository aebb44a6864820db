//! [`TrainingLog`]: a bounded lock-free multi-producer, single-consumer ring
//! of [`TrainingRecord`]s with LAKE-style `get`/`truncate`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use crate::record::{RECORD_SIZE, TrainingRecord};

/// 64-bit words needed to hold one encoded record.
const WORDS: usize = RECORD_SIZE.div_ceil(8);

/// One ring slot. `seq` is the slot's state for ring position `p`
/// (`p % capacity == index`): `2p` = free for the producer of `p`,
/// `2p + 1` = holds the record of `p`. Freeing sets `2(p + capacity)`.
/// The record is stored as atomic words so nothing here needs `unsafe`.
struct Slot {
    seq: AtomicU64,
    words: [AtomicU64; WORDS],
}

/// Bounded lock-free multi-producer queue of TrainingRecords, one consumer.
///
/// A Vyukov-style ring with a per-slot sequence number: producers reserve a
/// position by CAS on the tail, write the record, then publish it by a
/// Release store of the slot's sequence; the consumer reads published slots
/// in order. `push` never blocks or allocates; when the ring is full the
/// record is dropped and counted in [`dropped`](Self::dropped) (training
/// data is best-effort, the I/O path must never wait for the trainer).
///
/// **Single consumer:** [`get`](Self::get) and [`truncate`](Self::truncate)
/// must be called from one thread at a time (typically one trainer thread).
/// Concurrent calls are detected and panic rather than corrupt the queue.
pub struct TrainingLog {
    slots: Box<[Slot]>,
    /// Next position a producer will reserve.
    tail: CachePadded<AtomicU64>,
    /// Oldest unconsumed position (written only by the consumer).
    head: CachePadded<AtomicU64>,
    pushed: CachePadded<AtomicU64>,
    dropped: CachePadded<AtomicU64>,
    consumer_busy: AtomicBool,
}

impl std::fmt::Debug for TrainingLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainingLog")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .field("pushed", &self.pushed())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// Marks the consumer side busy for the duration of a `get`/`truncate`.
struct ConsumerGuard<'a>(&'a AtomicBool);

impl Drop for ConsumerGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl TrainingLog {
    /// A log holding at most `capacity` records (all memory is allocated
    /// here). A capacity of 0 makes a log that drops every record.
    pub fn new(capacity: usize) -> Self {
        let slots = (0..capacity as u64)
            .map(|i| Slot {
                seq: AtomicU64::new(2 * i),
                words: [const { AtomicU64::new(0) }; WORDS],
            })
            .collect();
        Self {
            slots,
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            pushed: CachePadded::new(AtomicU64::new(0)),
            dropped: CachePadded::new(AtomicU64::new(0)),
            consumer_busy: AtomicBool::new(false),
        }
    }

    /// Maximum number of records held at once.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Never blocks; returns false (and counts a drop) when full.
    pub fn push(&self, rec: TrainingRecord) -> bool {
        let cap = self.slots.len() as u64;
        if cap == 0 {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[(pos % cap) as usize];
            // Acquire pairs with the consumer's Release when it freed the slot.
            let seq = slot.seq.load(Ordering::Acquire);
            if seq == 2 * pos {
                match self.tail.compare_exchange_weak(
                    pos,
                    pos + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let mut bytes = [0u8; WORDS * 8];
                        bytes[..RECORD_SIZE].copy_from_slice(&rec.to_bytes());
                        for (w, chunk) in slot.words.iter().zip(bytes.chunks_exact(8)) {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(chunk);
                            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
                        }
                        // Publish: the consumer's Acquire load of 2pos+1 sees the words.
                        slot.seq.store(2 * pos + 1, Ordering::Release);
                        self.pushed.fetch_add(1, Ordering::Relaxed);
                        return true;
                    }
                    Err(cur) => pos = cur,
                }
            } else if seq < 2 * pos {
                // The slot still belongs to the previous lap. If nobody moved
                // the tail meanwhile, the ring is full.
                let cur = self.tail.load(Ordering::Relaxed);
                if cur == pos {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                pos = cur;
            } else {
                // Another producer already took `pos`.
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    fn consumer(&self) -> ConsumerGuard<'_> {
        assert!(
            !self.consumer_busy.swap(true, Ordering::Acquire),
            "TrainingLog::get/truncate called from two threads at once (single consumer only)"
        );
        ConsumerGuard(&self.consumer_busy)
    }

    /// The published record at `pos`, if the producer has finished it.
    fn read_slot(&self, pos: u64) -> Option<TrainingRecord> {
        let cap = self.slots.len() as u64;
        let slot = &self.slots[(pos % cap) as usize];
        if slot.seq.load(Ordering::Acquire) != 2 * pos + 1 {
            return None;
        }
        let mut bytes = [0u8; WORDS * 8];
        for (w, chunk) in slot.words.iter().zip(bytes.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        let mut rec = [0u8; RECORD_SIZE];
        rec.copy_from_slice(&bytes[..RECORD_SIZE]);
        // Only `push` writes slots, from a valid record; a failure here is a
        // bug in this module, not bad input.
        Some(TrainingRecord::from_bytes(&rec).expect("TrainingLog slot holds a valid record"))
    }

    /// Copy up to `max` oldest records into `out` without removing them (LAKE's get).
    ///
    /// Records are appended to `out`; returns how many. Stops early at a
    /// position whose producer has not finished writing yet, so the copy is
    /// always an in-order prefix. Single consumer only.
    pub fn get(&self, max: usize, out: &mut Vec<TrainingRecord>) -> usize {
        let _guard = self.consumer();
        if self.slots.is_empty() {
            return 0;
        }
        let head = self.head.load(Ordering::Relaxed);
        let mut n = 0;
        while n < max {
            match self.read_slot(head + n as u64) {
                Some(rec) => out.push(rec),
                None => break,
            }
            n += 1;
        }
        n
    }

    /// Remove the `n` oldest records (after a get) (LAKE's truncate).
    ///
    /// Removes at most the records a `get` could currently return; freed
    /// slots are immediately reusable by producers. Single consumer only.
    pub fn truncate(&self, n: usize) {
        let _guard = self.consumer();
        let cap = self.slots.len() as u64;
        if cap == 0 {
            return;
        }
        let head = self.head.load(Ordering::Relaxed);
        let mut removed = 0u64;
        while removed < n as u64 {
            let pos = head + removed;
            let slot = &self.slots[(pos % cap) as usize];
            if slot.seq.load(Ordering::Acquire) != 2 * pos + 1 {
                break;
            }
            // Release: our reads of the slot happen before its reuse.
            slot.seq.store(2 * (pos + cap), Ordering::Release);
            removed += 1;
        }
        self.head.store(head + removed, Ordering::Relaxed);
    }

    /// Records rejected because the log was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records accepted since creation (consumed or not).
    pub fn pushed(&self) -> u64 {
        self.pushed.load(Ordering::Relaxed)
    }

    /// Records held now (including ones a producer is still writing).
    pub fn len(&self) -> usize {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        (tail.saturating_sub(head) as usize).min(self.slots.len())
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::record_for;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn fifo_get_truncate_and_full() {
        let log = TrainingLog::new(3);
        assert!(log.is_empty());
        for id in 0..3 {
            assert!(log.push(record_for(id)));
        }
        assert!(!log.push(record_for(99)));
        assert_eq!((log.len(), log.pushed(), log.dropped()), (3, 3, 1));
        let mut out = Vec::new();
        assert_eq!(log.get(2, &mut out), 2);
        assert_eq!(log.get(10, &mut out), 3); // get does not remove; appends
        assert_eq!(out[..2], out[2..4]);
        assert_eq!(out[2..], [record_for(0), record_for(1), record_for(2)]);
        log.truncate(2);
        assert_eq!(log.len(), 1);
        assert!(log.push(record_for(3)));
        assert!(log.push(record_for(4)));
        out.clear();
        log.truncate(0);
        assert_eq!(log.get(usize::MAX, &mut out), 3);
        assert_eq!(out, [record_for(2), record_for(3), record_for(4)]);
        log.truncate(100); // clamps
        assert!(log.is_empty());
        assert_eq!(log.get(5, &mut out), 0);
    }

    #[test]
    fn tiny_capacities() {
        let zero = TrainingLog::new(0);
        assert!(!zero.push(record_for(1)));
        assert_eq!((zero.dropped(), zero.len()), (1, 0));
        let mut out = Vec::new();
        assert_eq!(zero.get(1, &mut out), 0);
        zero.truncate(1);

        let one = TrainingLog::new(1);
        assert!(one.push(record_for(1)));
        assert!(!one.push(record_for(2)));
        assert_eq!(one.get(5, &mut out), 1);
        one.truncate(1);
        assert!(one.push(record_for(3)));
        out.clear();
        one.get(5, &mut out);
        assert_eq!(out, [record_for(3)]);
    }

    /// Producers race a get/truncate consumer on a small ring: nothing is
    /// lost or duplicated, every drop is counted, per-producer order holds.
    #[test]
    fn no_record_lost_or_duplicated_under_contention() {
        const PRODUCERS: u64 = 3;
        const PER_PRODUCER: u64 = 20_000;
        let log = Arc::new(TrainingLog::new(16));
        let done = Arc::new(AtomicUsize::new(0));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let (log, done) = (Arc::clone(&log), Arc::clone(&done));
                std::thread::spawn(move || {
                    let mut dropped = 0u64;
                    for i in 0..PER_PRODUCER {
                        if !log.push(record_for((p << 32) | i)) {
                            dropped += 1;
                        }
                        if i % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                    done.fetch_add(1, Ordering::Release);
                    dropped
                })
            })
            .collect();

        let mut last: Vec<Option<u64>> = vec![None; PRODUCERS as usize];
        let mut consumed = 0u64;
        let mut buf = Vec::new();
        let mut again = Vec::new();
        let mut round = 0u64;
        loop {
            let finished = done.load(Ordering::Acquire) == PRODUCERS as usize;
            buf.clear();
            let got = log.get(7, &mut buf);
            if got == 0 {
                if finished {
                    break;
                }
                std::thread::yield_now();
                continue;
            }
            round += 1;
            // get does not remove: a second get starts with the same records.
            again.clear();
            log.get(got, &mut again);
            assert_eq!(again[..], buf[..again.len().min(got)]);
            // Sometimes consume only part of what we got.
            let take = if round.is_multiple_of(3) {
                got.div_ceil(2)
            } else {
                got
            };
            for rec in &buf[..take] {
                let id = rec.offset;
                assert_eq!(*rec, record_for(id), "corrupted record {id:#x}");
                let (p, i) = ((id >> 32) as usize, id & 0xffff_ffff);
                assert!(p < PRODUCERS as usize && i < PER_PRODUCER);
                if let Some(prev) = last[p] {
                    assert!(i > prev, "producer {p}: {i} after {prev}");
                }
                last[p] = Some(i);
            }
            log.truncate(take);
            consumed += take as u64;
        }
        let dropped: u64 = producers
            .into_iter()
            .map(|t| t.join().expect("producer panicked"))
            .sum();
        assert_eq!(consumed + dropped, PRODUCERS * PER_PRODUCER);
        assert_eq!(log.dropped(), dropped);
        assert_eq!(log.pushed(), consumed);
        assert!(log.is_empty());
        assert!(consumed > 0);
    }

    #[test]
    #[should_panic(expected = "single consumer")]
    fn concurrent_consumers_are_detected() {
        let log = TrainingLog::new(2);
        let _held = log.consumer();
        log.truncate(1);
    }
}

//! Per-replica I/O history and the training log, updated and read without locks.
//!
//! Three pieces, none of which knows about I/O front-ends:
//!
//! * [`ReplicaHistory`]: one per replica. Pending-I/O counters (count and
//!   4 KiB pages) change on every submit/complete from any thread; the last
//!   [`HISTORY_LEN`] completed *reads* (latency and the pending state at
//!   their issue, LinnOS's inputs) are kept for the next prediction.
//! * [`TrainingLog`]: a bounded lock-free multi-producer / single-consumer
//!   queue of [`TrainingRecord`]s (features at issue + observed latency),
//!   drained LAKE-style with `get` (copy without removing) and `truncate`.
//! * The log file ([`LogWriter`], [`LogReader`], [`read_log`]) that stores
//!   those records for `augur train`.
//!
//! # Pending counters
//!
//! Pending pages and pending I/Os are packed into one `AtomicU64`
//! (`ios << 32 | pages`), so a submit or completion is one `fetch_add` /
//! `fetch_sub` and every reader sees a pair that belongs together. A read
//! of `n` bytes weighs `ceil(n / 4096)` pages (at least 1 for `n > 0`); a
//! flush counts as 1 I/O and 0 pages. Every op counts as pending; only
//! reads are pushed into the history. The [`Ticket`] returned by
//! [`ReplicaHistory::on_submit`] carries the pending values *before* the
//! I/O was counted (its "at issue" features).
//!
//! # Oldest pending age
//!
//! A timed submit ([`ReplicaHistory::on_submit_at`]) also counts the I/O in a
//! ring of [`AGE_BUCKETS`] counters, one per 2^[`AGE_BUCKET_SHIFT`] ns of
//! issue time; its completion un-counts it. The oldest non-empty bucket
//! gives [`ReplicaHistory::oldest_pending_us`]: how long the replica has sat
//! on its oldest request. LinnOS sees a stall only when a slow I/O
//! completes; an I/O stuck behind an erase is visible here while it waits.
//!
//! # Recent read maximum
//!
//! LinnOS remembers the last four completed reads, so four fast reads
//! erase the memory of a slow one. A timed read also folds its latency into
//! a ring of [`READ_MAX_SLOTS`] slots, one per group of [`READ_MAX_GROUP`]
//! consecutive completed reads (tagged with the group number, so a slot
//! from an older round is ignored): [`ReplicaHistory::read_max_us`] is the
//! worst of the last 57 to 64 reads. The ring counts reads, not time: while
//! a router sends a replica no reads (because it predicted it slow), the
//! replica's last known state stays, rather than fading as if it had
//! recovered. Each slot also keeps the clock of its newest read, and slots
//! older than about 268 ms are dropped, so an avoided replica is tried
//! again eventually.
//!
//! # The history seqlock
//!
//! The history is a small ring (newest index, length, `HISTORY_LEN` entries)
//! guarded by a sequence counter:
//!
//! * **Writers** (completions, possibly on several threads) serialise by
//!   CAS-ing the sequence from an even value `s` to `s + 1` (Acquire),
//!   spin-waiting with backoff while it is odd. A Release fence follows,
//!   then the ring is updated with Relaxed atomic stores, then the sequence
//!   is set to `s + 2` with a Release store.
//! * **Readers** ([`ReplicaHistory::snapshot`]) load the sequence (Acquire);
//!   if even, they copy the ring with Relaxed loads, issue an Acquire fence
//!   and reload the sequence. The copy is kept only if both loads saw the
//!   same even value; otherwise they retry. The writer's Release fence and
//!   the reader's Acquire fence guarantee that a reader which saw any store
//!   of an in-progress write also sees the changed sequence, so a snapshot
//!   is never torn.
//!
//! Every shared field is an atomic, so the racing reads a seqlock performs
//! are not data races (no UB, no `unsafe` in this crate). Readers never
//! block writers; nothing on submit, complete or snapshot allocates.
//!
//! # Training-log file format (version 4)
//!
//! All integers little-endian. A 16-byte header:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | magic `b"AUGURLOG"` |
//! | 8  | 4 | `u32` version = 4 |
//! | 12 | 4 | `u32` record size = [`RECORD_SIZE`] (128) |
//!
//! followed by zero or more fixed-size records, each:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | `time_ns: u64` (issue time, ns since array start) |
//! | 8  | 8 | `offset: u64` (bytes) |
//! | 16 | 2 | `replica: u16` |
//! | 18 | 1 | `op: u8` ([`Op`] discriminant: 0 read, 1 write, 2 flush, 3 discard, 4 write-zeroes) |
//! | 19 | 1 | `features.len: u8` (0..=`HISTORY_LEN`) |
//! | 20 | 4 | `size_bytes: u32` |
//! | 24 | 4 | `latency_us: u32` |
//! | 28 | 4 | `features.pending_pages: u32` (at issue) |
//! | 32 | 4 | `features.pending_ios: u32` (at issue) |
//! | 36 | 4 | `features.oldest_pending_us: u32` (at issue; 0 if untimed) |
//! | 40 | 4 | `features.read_max_us: u32` (at issue; 0 if untimed) |
//! | 44 | 4 × `WRITE_HISTORY_LEN` | `features.write_recent_us[i]: u32`, newest first (zero beyond `write_len`) |
//! | 60 | 1 | `features.write_len: u8` (0..=`WRITE_HISTORY_LEN`) |
//! | 61 | 3 | zero |
//! | 64 | 16 × `HISTORY_LEN` | `features.recent[i]`, newest first: `latency_us`, `pending_pages_at_issue`, `pending_ios_at_issue`, `size_bytes` (`u32` each; zero beyond `len`) |
//!
//! Versions 1 (no `oldest_pending_us`, 100-byte records), 2 (offset 40
//! held a time-windowed maximum over reads and writes) and 3 (no write
//! latencies, 108-byte records) are rejected by name: re-record such logs. Readers reject a wrong magic, version or record size, report a file that
//! ends inside a record as [`LogError::TruncatedRecord`] with that record's
//! 0-based index (the records before it are still available through
//! [`LogReader`]), and reject an unknown op byte or an oversized history
//! length. [`LogReader`] streams one record at a time, so multi-GB logs need
//! not be loaded whole.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod file;
mod history;
mod queue;
mod record;

pub use file::{
    HEADER_SIZE, LOG_MAGIC, LOG_VERSION, LogError, LogReader, LogWriter, read_log, read_log_from,
};
pub use history::{
    AGE_BUCKET_SHIFT, AGE_BUCKETS, Completed, HISTORY_LEN, HistorySnapshot, Op, PAGE_SIZE,
    READ_MAX_GROUP, READ_MAX_SLOTS, READ_MAX_STALE_UNITS, READ_MAX_TIME_SHIFT, ReplicaHistory,
    Ticket, WRITE_HISTORY_LEN, pages_for,
};
pub use queue::TrainingLog;
pub use record::{RECORD_SIZE, RecordError, TrainingRecord};

//! A queue's tables: one [`Slot`] per request, one [`Sub`] per replica I/O,
//! and the io_uring `user_data` encoding that names them.

use augur_feature_store::{HistorySnapshot, Op, Ticket};
use io_uring::types;

use super::AlignedBuf;

/// user_data layout: index in bits 0..32, kind in bits 32..40, generation above.
pub(super) const UD_IO: u64 = 1;
pub(super) const UD_DELAY: u64 = 2;
pub(super) const UD_HEDGE: u64 = 3;
/// The retry timer of writes deferred behind a region the sync worker holds.
pub(super) const UD_RETRY: u64 = 7;

pub(super) fn ud(kind: u64, idx: usize, generation: u32) -> u64 {
    (idx as u64) | (kind << 32) | ((generation as u64 & 0xFF_FFFF) << 40)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SubKind {
    /// A read's first copy, into the request's buffer.
    Main,
    /// A hedged read copy, into its own buffer.
    Hedge,
    /// One replica's share of a write, flush, discard or write-zeroes.
    Copy,
}

pub(super) struct Sub {
    pub(super) req: usize,
    pub(super) replica: u16,
    pub(super) kind: SubKind,
    pub(super) op: Op,
    pub(super) ticket: Option<Ticket>,
    pub(super) issue_ns: u64,
    pub(super) emu_done_ns: u64,
    pub(super) res: i32,
    /// The result that means success: the length for reads and writes, else 0.
    pub(super) expect: i32,
    pub(super) buf: Option<AlignedBuf>,
    pub(super) snap: Option<HistorySnapshot>,
    /// Its emulated delay is running (the I/O itself is done).
    pub(super) in_delay: bool,
    /// Kernel reads the timespec when the SQE is submitted; boxed so the
    /// address stays put while the sub table grows.
    pub(super) ts: Box<types::Timespec>,
}

pub(super) struct Slot {
    pub(super) active: bool,
    pub(super) generation: u32,
    pub(super) op: Op,
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) user: u64,
    pub(super) buf: Option<AlignedBuf>,
    pub(super) outstanding: u32,
    pub(super) ok: u32,
    pub(super) done: bool,
    pub(super) primary: u16,
    pub(super) tried: u16,
    pub(super) hedged: bool,
    pub(super) start_ns: u64,
    /// A read's prediction for the replica it went to: 0 none, 1 fast, 2 slow.
    pub(super) pred: u8,
    /// The slow threshold (µs) of the model that predicted it.
    pub(super) slow_us: u32,
    /// A write counted in the bitmap's in-flight regions (to be ended).
    pub(super) intent: bool,
    pub(super) ts: Box<types::Timespec>,
}

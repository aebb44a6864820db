//! [`TrainingRecord`] and its fixed-size little-endian encoding (shared by
//! the in-memory [`crate::TrainingLog`] ring and the log file).

use crate::history::{Completed, HISTORY_LEN, HistorySnapshot, Op, WRITE_HISTORY_LEN};

/// One training record: a completed I/O with the features seen at its issue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrainingRecord {
    /// Issue time, ns since the array started.
    pub time_ns: u64,
    /// Replica index the I/O went to.
    pub replica: u16,
    /// The op.
    pub op: Op,
    /// Size in bytes.
    pub size_bytes: u32,
    /// Byte offset on the device.
    pub offset: u64,
    /// Observed latency, microseconds (the training label's source).
    pub latency_us: u32,
    /// Snapshot taken at issue time (pending_* = at issue).
    pub features: HistorySnapshot,
}

/// Size in bytes of one encoded record (file and ring).
///
/// Layout (all little-endian): `time_ns u64 | offset u64 | replica u16 |
/// op u8 | features.len u8 | size_bytes u32 | latency_us u32 |
/// features.pending_pages u32 | features.pending_ios u32 |
/// features.oldest_pending_us u32 | features.read_max_us u32 |
/// features.write_recent_us 4 x u32 | features.write_len u8 | 3 zero bytes |`
/// then `HISTORY_LEN` times `latency_us u32 | pending_pages_at_issue u32 |
/// pending_ios_at_issue u32 | size_bytes u32` (newest first).
pub const RECORD_SIZE: usize = HISTORY_AT + 16 * HISTORY_LEN;

/// Offset of the write latencies in a record.
const WRITES_AT: usize = 44;
/// Offset of the write count.
const WRITE_LEN_AT: usize = WRITES_AT + 4 * WRITE_HISTORY_LEN;
/// Offset of the read history.
const HISTORY_AT: usize = WRITE_LEN_AT + 4;

/// Why a record's bytes could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The op byte is not a known [`Op`].
    #[error("invalid op byte {0}")]
    InvalidOp(u8),
    /// The history length exceeds [`HISTORY_LEN`].
    #[error("invalid history length {0} (max {HISTORY_LEN})")]
    InvalidHistoryLen(u8),
    /// The write-history length exceeds [`WRITE_HISTORY_LEN`].
    #[error("invalid write-history length {0} (max {WRITE_HISTORY_LEN})")]
    InvalidWriteLen(u8),
}

fn u32_at(b: &[u8; RECORD_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; RECORD_SIZE], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl TrainingRecord {
    /// Encode into the fixed [`RECORD_SIZE`]-byte little-endian layout.
    pub fn to_bytes(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[0..8].copy_from_slice(&self.time_ns.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..18].copy_from_slice(&self.replica.to_le_bytes());
        b[18] = self.op as u8;
        b[19] = self.features.len;
        b[20..24].copy_from_slice(&self.size_bytes.to_le_bytes());
        b[24..28].copy_from_slice(&self.latency_us.to_le_bytes());
        b[28..32].copy_from_slice(&self.features.pending_pages.to_le_bytes());
        b[32..36].copy_from_slice(&self.features.pending_ios.to_le_bytes());
        b[36..40].copy_from_slice(&self.features.oldest_pending_us.to_le_bytes());
        b[40..44].copy_from_slice(&self.features.read_max_us.to_le_bytes());
        for (i, w) in self.features.write_recent_us.iter().enumerate() {
            let at = WRITES_AT + 4 * i;
            b[at..at + 4].copy_from_slice(&w.to_le_bytes());
        }
        b[WRITE_LEN_AT] = self.features.write_len;
        for (i, c) in self.features.recent.iter().enumerate() {
            let at = HISTORY_AT + 16 * i;
            b[at..at + 4].copy_from_slice(&c.latency_us.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&c.pending_pages_at_issue.to_le_bytes());
            b[at + 8..at + 12].copy_from_slice(&c.pending_ios_at_issue.to_le_bytes());
            b[at + 12..at + 16].copy_from_slice(&c.size_bytes.to_le_bytes());
        }
        b
    }

    /// Decode the layout written by [`to_bytes`](Self::to_bytes), rejecting
    /// an unknown op or a history length above [`HISTORY_LEN`].
    pub fn from_bytes(b: &[u8; RECORD_SIZE]) -> Result<Self, RecordError> {
        let op = Op::from_u8(b[18]).ok_or(RecordError::InvalidOp(b[18]))?;
        let len = b[19];
        if usize::from(len) > HISTORY_LEN {
            return Err(RecordError::InvalidHistoryLen(len));
        }
        let write_len = b[WRITE_LEN_AT];
        if usize::from(write_len) > WRITE_HISTORY_LEN {
            return Err(RecordError::InvalidWriteLen(write_len));
        }
        let mut write_recent_us = [0u32; WRITE_HISTORY_LEN];
        for (i, w) in write_recent_us.iter_mut().enumerate() {
            *w = u32_at(b, WRITES_AT + 4 * i);
        }
        let mut recent = [Completed::default(); HISTORY_LEN];
        for (i, c) in recent.iter_mut().enumerate() {
            let at = HISTORY_AT + 16 * i;
            *c = Completed {
                latency_us: u32_at(b, at),
                pending_pages_at_issue: u32_at(b, at + 4),
                pending_ios_at_issue: u32_at(b, at + 8),
                size_bytes: u32_at(b, at + 12),
            };
        }
        Ok(TrainingRecord {
            time_ns: u64_at(b, 0),
            offset: u64_at(b, 8),
            replica: u16::from_le_bytes([b[16], b[17]]),
            op,
            size_bytes: u32_at(b, 20),
            latency_us: u32_at(b, 24),
            features: HistorySnapshot {
                pending_pages: u32_at(b, 28),
                pending_ios: u32_at(b, 32),
                oldest_pending_us: u32_at(b, 36),
                read_max_us: u32_at(b, 40),
                recent,
                len,
                write_recent_us,
                write_len,
            },
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record whose every field is derived from `id` (also its offset).
    pub(crate) fn record_for(id: u64) -> TrainingRecord {
        let k = id as u32 ^ (id >> 32) as u32;
        let len = (id % (HISTORY_LEN as u64 + 1)) as u8;
        let mut recent = [Completed::default(); HISTORY_LEN];
        for (i, c) in recent.iter_mut().enumerate().take(usize::from(len)) {
            let j = k.wrapping_add(i as u32);
            *c = Completed {
                latency_us: j.wrapping_mul(3),
                pending_pages_at_issue: j.wrapping_mul(5),
                pending_ios_at_issue: j.wrapping_mul(7),
                size_bytes: j.wrapping_mul(11),
            };
        }
        let write_len = (id % (WRITE_HISTORY_LEN as u64 + 1)) as u8;
        let mut write_recent_us = [0u32; WRITE_HISTORY_LEN];
        for (i, w) in write_recent_us
            .iter_mut()
            .enumerate()
            .take(usize::from(write_len))
        {
            *w = k.wrapping_mul(23).wrapping_add(i as u32);
        }
        TrainingRecord {
            time_ns: id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            replica: (id % 3) as u16,
            op: Op::ALL[(id % 5) as usize],
            size_bytes: k.rotate_left(7),
            offset: id,
            latency_us: k ^ 0xdead_beef,
            features: HistorySnapshot {
                pending_pages: k.wrapping_mul(13),
                pending_ios: !k,
                oldest_pending_us: k.wrapping_mul(17),
                read_max_us: k.wrapping_mul(19),
                recent,
                len,
                write_recent_us,
                write_len,
            },
        }
    }

    #[test]
    fn record_bytes_round_trip_and_reject_garbage() {
        for id in [0u64, 1, 7, u64::MAX, 0x1234_5678_9abc_def0] {
            let r = record_for(id);
            assert_eq!(TrainingRecord::from_bytes(&r.to_bytes()), Ok(r));
        }
        let mut b = record_for(3).to_bytes();
        b[18] = 9;
        assert_eq!(
            TrainingRecord::from_bytes(&b),
            Err(RecordError::InvalidOp(9))
        );
        let mut b = record_for(3).to_bytes();
        b[19] = 5;
        assert_eq!(
            TrainingRecord::from_bytes(&b),
            Err(RecordError::InvalidHistoryLen(5))
        );
        let mut b = record_for(3).to_bytes();
        b[WRITE_LEN_AT] = 5;
        assert_eq!(
            TrainingRecord::from_bytes(&b),
            Err(RecordError::InvalidWriteLen(5))
        );
    }
}

//! Traces as fio iologs (version 3): `augur trace to-fio`.
//!
//! The output is what fio's `read_iolog` replays:
//!
//! ```text
//! fio version 3 iolog
//! 1 /dev/ublkb0 add
//! 1 /dev/ublkb0 open
//! 1 /dev/ublkb0 read 1048576 4096
//! 251 /dev/ublkb0 write 8192 8192
//! 252 /dev/ublkb0 close
//! ```
//!
//! Timestamps are microseconds since the start of the trace, divided by the
//! replay speed, plus one: fio ignores the delay to the next I/O while the
//! last timestamp it saw is 0, so none is. They never decrease. Offsets are
//! wrapped into the target's size and aligned down to `align`, lengths
//! rounded up to it (at most 1 MiB, at most the target), so a trace from a
//! larger disk replays on a small one and direct I/O stays aligned. Only
//! reads and writes are written; flushes and discards are counted and left
//! out.

use std::io::Write;

use augur_feature_store::Op;
use augur_predictor::trace::TraceIo;
use serde::Serialize;

/// How to write an iolog.
#[derive(Clone, Debug)]
pub struct IologOptions {
    /// The file name on every line (fio's `replay_redirect` can point the
    /// replay elsewhere).
    pub file_name: String,
    /// The target's size in bytes: offsets are wrapped into it.
    pub target_size: u64,
    /// Replay speed: 2.0 replays twice as fast (timestamps halved).
    pub speed: f64,
    /// Offsets and lengths are multiples of this (bytes, a power of two).
    pub align: u64,
}

/// Why an iolog could not be written.
#[derive(Debug, thiserror::Error)]
pub enum IologError {
    /// The options cannot describe a replay.
    #[error("{0}")]
    BadOptions(String),
    /// Writing failed.
    #[error("writing the iolog: {0}")]
    Io(#[from] std::io::Error),
}

/// What was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IologStats {
    /// Reads written.
    pub reads: u64,
    /// Writes written.
    pub writes: u64,
    /// Bytes of the reads written.
    pub read_bytes: u64,
    /// Bytes of the writes written.
    pub write_bytes: u64,
    /// Flushes and discards left out.
    pub skipped_ops: u64,
    /// I/Os whose offset had to be wrapped into the target.
    pub wrapped: u64,
    /// The last timestamp (the `close` line), microseconds.
    pub last_us: u64,
}

/// The largest I/O written (bytes).
pub const MAX_IO: u64 = 1 << 20;

/// Writes `ios` (in issue order) to `w` as a fio version 3 iolog.
pub fn write_iolog<W: Write>(
    ios: &[TraceIo],
    opts: &IologOptions,
    w: &mut W,
) -> Result<IologStats, IologError> {
    if !(opts.speed.is_finite() && opts.speed > 0.0) {
        return Err(IologError::BadOptions(format!(
            "the replay speed must be above 0, not {}",
            opts.speed
        )));
    }
    if opts.align == 0 || !opts.align.is_power_of_two() {
        return Err(IologError::BadOptions(format!(
            "the alignment must be a power of two, not {}",
            opts.align
        )));
    }
    if opts.target_size < opts.align {
        return Err(IologError::BadOptions(format!(
            "the target ({} bytes) is smaller than one {}-byte block",
            opts.target_size, opts.align
        )));
    }
    if opts.file_name.is_empty() || opts.file_name.contains(char::is_whitespace) {
        return Err(IologError::BadOptions(format!(
            "an iolog file name must be non-empty and without spaces: '{}'",
            opts.file_name
        )));
    }
    let f = &opts.file_name;
    let align = opts.align;
    // The largest length that fits: a whole number of blocks, at most 1 MiB.
    let max_len = MAX_IO.min(opts.target_size / align * align);
    let mut st = IologStats::default();
    writeln!(w, "fio version 3 iolog")?;
    writeln!(w, "1 {f} add")?;
    writeln!(w, "1 {f} open")?;
    let mut last = 1u64;
    for io in ios {
        let (name, is_read) = match io.op {
            Op::Read => ("read", true),
            Op::Write => ("write", false),
            _ => {
                st.skipped_ops += 1;
                continue;
            }
        };
        let len = (u64::from(io.len).max(1).div_ceil(align) * align).min(max_len);
        let span = opts.target_size - len; // room for the start
        let mut off = io.offset;
        if off > span {
            off %= span + 1;
            st.wrapped += 1;
        }
        off -= off % align;
        let t = 1 + (io.t_ns as f64 / 1000.0 / opts.speed) as u64;
        last = last.max(t);
        writeln!(w, "{last} {f} {name} {off} {len}")?;
        if is_read {
            st.reads += 1;
            st.read_bytes += len;
        } else {
            st.writes += 1;
            st.write_bytes += len;
        }
    }
    last += 1;
    writeln!(w, "{last} {f} close")?;
    w.flush()?;
    st.last_us = last;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(t_ns: u64, op: Op, offset: u64, len: u32) -> TraceIo {
        TraceIo {
            t_ns,
            op,
            offset,
            len,
        }
    }

    fn opts(size: u64) -> IologOptions {
        IologOptions {
            file_name: "/dev/x".into(),
            target_size: size,
            speed: 1.0,
            align: 4096,
        }
    }

    #[test]
    fn writes_a_version_3_log_with_wrapped_aligned_offsets() {
        let ios = [
            io(0, Op::Read, 4096, 4096),
            io(250_000, Op::Write, (1 << 20) + 512, 1000),
            io(250_500, Op::Flush, 0, 0),
            io(900_000, Op::Read, 10 << 20, 8192),
        ];
        let mut out = Vec::new();
        let st = write_iolog(&ios, &opts(1 << 20), &mut out).expect("writes");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "fio version 3 iolog",
                "1 /dev/x add",
                "1 /dev/x open",
                "1 /dev/x read 4096 4096",
                // 1 MiB + 512 wrapped into [0, 1 MiB - 4 KiB]: 4607, aligned
                // down; the length rounded up to a block.
                "251 /dev/x write 4096 4096",
                // 10 MiB % (1 MiB - 8 KiB + 1) = 81910, aligned down.
                "901 /dev/x read 77824 8192",
                "902 /dev/x close",
            ]
        );
        assert_eq!(st.reads, 2);
        assert_eq!(st.writes, 1);
        assert_eq!(st.read_bytes, 4096 + 8192);
        assert_eq!(st.write_bytes, 4096);
        assert_eq!(st.skipped_ops, 1);
        assert_eq!(st.wrapped, 2);
        assert_eq!(st.last_us, 902);
    }

    #[test]
    fn speed_divides_time_and_timestamps_never_decrease() {
        let ios = [
            io(1_000_000, Op::Read, 0, 4096),
            io(3_000_000, Op::Read, 0, 4096),
        ];
        let mut o = opts(1 << 20);
        o.speed = 2.0;
        let mut out = Vec::new();
        write_iolog(&ios, &o, &mut out).expect("writes");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.contains("\n501 /dev/x read 0 4096\n1501 /dev/x read 0 4096\n1502 /dev/x close\n"),
            "{text}"
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let mut o = opts(1 << 20);
        o.speed = 0.0;
        assert!(write_iolog(&[], &o, &mut Vec::new()).is_err());
        let o = opts(100);
        assert!(write_iolog(&[], &o, &mut Vec::new()).is_err());
        let mut o = opts(1 << 20);
        o.file_name = "a b".into();
        assert!(write_iolog(&[], &o, &mut Vec::new()).is_err());
    }
}

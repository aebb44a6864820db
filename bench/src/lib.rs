//! Side-by-side measurements of Augur: the array against raw io_uring on one
//! file, the write-intent bitmap's cost (`augur-bitmap-cost`), and on a FUSE
//! device live model swaps, metrics, online adaptation and foreground I/O
//! during a rebuild (`augur-live`, `augur-adapt-live`, `augur-rebuild-impact`;
//! [`live`]). The fio job files in `bench/fio/` are run by `augur fio run`.
//!
//! [`raw_randread`] is the reference peer for the array-overhead measurement:
//! the same random-read load as `augur bench --workload randread`, issued with
//! plain io_uring straight at the file, with nothing of Augur in between.

pub mod live;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use augur::AlignedBuf;
use augur_rng::Rng;
use io_uring::{IoUring, opcode, types};

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Parses a byte count with an optional k/m/g suffix (powers of 1024).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let (n, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t.as_str(), 1),
    };
    Ok(n.parse::<u64>()
        .map_err(|e| anyhow::anyhow!("'{s}': {e}"))?
        * mul)
}

/// What one raw run measured.
#[derive(Clone, Debug)]
pub struct RawResult {
    /// Reads completed.
    pub reads: u64,
    /// Seconds measured.
    pub elapsed_s: f64,
    /// Read latency, microseconds (measured as `augur bench` measures it).
    pub read_us: hdrhistogram::Histogram<u64>,
}

impl RawResult {
    /// Reads per second.
    pub fn iops(&self) -> f64 {
        self.reads as f64 / self.elapsed_s.max(1e-9)
    }
}

/// Random `bs`-byte reads over the whole file at `depth`, O_DIRECT where the
/// file system allows it, with one io_uring, for `duration`.
pub fn raw_randread(
    path: &Path,
    depth: u32,
    bs: u32,
    duration: Duration,
    seed: u64,
) -> std::io::Result<RawResult> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .or_else(|_| OpenOptions::new().read(true).open(path))?;
    let blocks = file.metadata()?.len() / bs as u64;
    if blocks == 0 {
        return Err(std::io::Error::other("file smaller than one block"));
    }
    // The same ring setup as the array's queues, so the comparison isolates
    // what Augur adds per I/O.
    let mut ring = IoUring::builder()
        .setup_coop_taskrun()
        .build((depth * 2).max(8))
        .or_else(|_| IoUring::new((depth * 2).max(8)))?;
    let mut bufs: Vec<AlignedBuf> = (0..depth).map(|_| AlignedBuf::new(bs as usize)).collect();
    let mut rng = Rng::new(seed);
    let fd = types::Fd(file.as_raw_fd());
    let start = Instant::now();
    let end = start + duration;
    let mut inflight = 0u32;
    let mut free: Vec<usize> = (0..depth as usize).collect();
    let mut reads = 0u64;
    let mut started = vec![start; depth as usize];
    let mut read_us = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 100_000_000, 3)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut done: Vec<(u64, i32)> = Vec::with_capacity(depth as usize);
    loop {
        let now = Instant::now();
        let running = now < end;
        if running {
            while let Some(i) = free.pop() {
                let off = rng.below(blocks) * bs as u64;
                started[i] = now;
                let e = opcode::Read::new(fd, bufs[i].as_mut_ptr(), bs)
                    .offset(off)
                    .build()
                    .user_data(i as u64);
                // SAFETY: bufs[i] lives until the ring is drained below.
                unsafe { ring.submission().push(&e) }
                    .map_err(|_| std::io::Error::other("submission queue full"))?;
                inflight += 1;
            }
        } else if inflight == 0 {
            break;
        }
        ring.submit_and_wait(1)?;
        done.clear();
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        let now = Instant::now();
        for &(i, res) in &done {
            if res < 0 {
                return Err(std::io::Error::from_raw_os_error(-res));
            }
            inflight -= 1;
            if now <= end {
                reads += 1;
                let us = (now - started[i as usize]).as_micros().max(1) as u64;
                let _ = read_us.record(us.min(100_000_000));
            }
            free.push(i as usize);
        }
    }
    Ok(RawResult {
        reads,
        elapsed_s: duration.as_secs_f64(),
        read_us,
    })
}

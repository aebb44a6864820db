//! The in-process load generator behind `augur bench` and `augur record`:
//! seeded workloads driven straight into the array through one [`Queue`],
//! with no kernel front-end in the way.
//!
//! The request sequence depends only on the seed and the workload (never on
//! the policy), so every policy sees the identical stream of offsets and ops;
//! with an open-loop `rate`, the arrival times are identical too, and latency
//! counts from the scheduled arrival, so a stalled array cannot hide its queue
//! (no coordinated omission).

use augur_feature_store::Op;
use hdrhistogram::Histogram;

use super::workload::{Gen, LoadSpec, Workload};
use crate::array::AlignedBuf;
use crate::array::{Array, ArrayStats, Completion, Queue, Request};
use augur_rng::Rng;

/// What a load run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Requests completed.
    pub completed: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Open-loop arrivals that found `depth` requests in flight and had to
    /// wait for one to finish (their latency includes the wait).
    pub overruns: u64,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// Read latency, microseconds.
    pub read_us: Histogram<u64>,
    /// Write latency, microseconds.
    pub write_us: Histogram<u64>,
    /// The array's counters over the run.
    pub stats: ArrayStats,
    /// The run cut into [`LoadResult::interval_s`]-long pieces, in order
    /// (the last one may be shorter): what plots over time need.
    pub intervals: Vec<IntervalStats>,
    /// The length of each interval, seconds: a hundredth of the run, at
    /// least 10 ms.
    pub interval_s: f64,
    /// When the run started, ns on the array's clock (to place the
    /// emulators' GC windows on the run's time line).
    pub t0_ns: u64,
}

/// One interval of a load run: completions and read latency in it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IntervalStats {
    /// Start of the interval, seconds since the run began.
    pub t_s: f64,
    /// Its length, seconds.
    pub len_s: f64,
    /// Requests completed in it, per second.
    pub iops: f64,
    /// Reads completed in it.
    pub reads: u64,
    /// Read latency median in it, microseconds (0 without reads).
    pub read_p50_us: u64,
    /// Read p99, microseconds.
    pub read_p99_us: u64,
    /// Read p99.9, microseconds.
    pub read_p999_us: u64,
}

impl LoadResult {
    /// Requests per second.
    pub fn iops(&self) -> f64 {
        self.completed as f64 / self.elapsed_s.max(1e-9)
    }
}

/// A progress report, about twice a second.
#[derive(Clone, Copy, Debug)]
pub struct LoadProgress {
    /// Seconds run so far.
    pub elapsed_s: f64,
    /// Requests completed so far.
    pub completed: u64,
    /// Read p99 so far, microseconds.
    pub read_p99_us: u64,
}

/// Rounds seconds to whole microseconds (stable JSON on the simulated clock).
fn round_us(s: f64) -> f64 {
    (s * 1e6).round() / 1e6
}

fn new_hist() -> Histogram<u64> {
    // 1 us .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// The load generator's per-run state: the request stream, the tags in
/// flight and what has been measured.
struct Driver<'a> {
    spec: &'a LoadSpec,
    gen_: Gen,
    arrivals: Rng,
    /// Write payload: seeded bytes, the same for every policy.
    payload: AlignedBuf,
    pool: Vec<AlignedBuf>,
    /// False on the simulated clock: requests carry no data.
    with_data: bool,
    start_of: Vec<u64>,
    op_of: Vec<Op>,
    free_tags: Vec<usize>,
    t0: u64,
    res: LoadResult,
    /// The interval being measured: its start (ns), length, completions
    /// and read latency.
    iv_start: u64,
    iv_len: u64,
    iv_completed: u64,
    iv_read_us: Histogram<u64>,
}

impl Driver<'_> {
    /// Submits the next request of the stream as having arrived at `start`;
    /// false when every tag is in flight.
    fn submit(&mut self, q: &mut Queue, start: u64) -> bool {
        let Some(tag) = self.free_tags.pop() else {
            return false;
        };
        let (op, offset, len) = self.gen_.next(&self.spec.workload, start - self.t0);
        // A simulated array holds no data: its requests carry no buffer.
        let buf = self.with_data.then(|| {
            let mut buf = match self.pool.pop() {
                Some(b) if b.capacity() >= len as usize => b,
                _ => AlignedBuf::new(len as usize),
            };
            buf.set_len(len as usize);
            if op == Op::Write {
                for chunk in buf.chunks_mut(self.payload.len()) {
                    chunk.copy_from_slice(&self.payload[..chunk.len()]);
                }
            }
            buf
        });
        self.start_of[tag] = start;
        self.op_of[tag] = op;
        q.submit(Request {
            op,
            offset,
            len,
            buf,
            user: tag as u64,
        });
        true
    }

    /// The arrival after `prev` of an open-loop run: from the trace, or from
    /// a Poisson process at `rate`; `u64::MAX` once a trace is over.
    fn next_open(&mut self, prev: u64) -> u64 {
        match (&self.spec.workload, self.spec.rate) {
            (Workload::Replay(_), _) => self
                .gen_
                .replay_arrival(&self.spec.workload)
                .map_or(u64::MAX, |t| self.t0 + t),
            (_, Some(rate)) => {
                let gap = -(1.0f64 - self.arrivals.next_f64()).ln() / rate * 1e9;
                prev + gap.max(1.0) as u64
            }
            (_, None) => u64::MAX,
        }
    }

    /// Closes every interval that ended at or before `now`.
    fn roll_intervals(&mut self, now: u64) {
        while now >= self.iv_start + self.iv_len {
            self.close_interval(self.iv_start + self.iv_len);
        }
    }

    /// Closes the current interval at `end` and starts the next there.
    fn close_interval(&mut self, end: u64) {
        let len_s = end.saturating_sub(self.iv_start) as f64 / 1e9;
        let h = &self.iv_read_us;
        let q = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        self.res.intervals.push(IntervalStats {
            t_s: round_us(self.iv_start.saturating_sub(self.t0) as f64 / 1e9),
            len_s: round_us(len_s),
            iops: (self.iv_completed as f64 / len_s.max(1e-9)).round(),
            reads: h.len(),
            read_p50_us: q(0.50),
            read_p99_us: q(0.99),
            read_p999_us: q(0.999),
        });
        self.iv_start = end;
        self.iv_completed = 0;
        self.iv_read_us.reset();
    }

    /// Counts the completions in `out` (seen at `now`) and frees their tags.
    fn reap(&mut self, out: &mut Vec<Completion>, now: u64) {
        for c in out.drain(..) {
            let tag = c.user as usize;
            let lat_us = (now.saturating_sub(self.start_of[tag]) / 1000).max(1);
            let res = &mut self.res;
            res.completed += 1;
            self.iv_completed += 1;
            if c.result < 0 {
                res.errors += 1;
            } else if self.op_of[tag] == Op::Read {
                res.reads += 1;
                let _ = res.read_us.record(lat_us.min(100_000_000));
                let _ = self.iv_read_us.record(lat_us.min(100_000_000));
            } else {
                res.writes += 1;
                let _ = res.write_us.record(lat_us.min(100_000_000));
            }
            if let Some(b) = c.buf {
                self.pool.push(b);
            }
            self.free_tags.push(tag);
        }
    }
}

/// Drives `spec` into `array` from the calling thread and measures it.
pub fn run_load(
    array: &Array,
    spec: &LoadSpec,
    progress: &mut dyn FnMut(LoadProgress),
) -> std::io::Result<LoadResult> {
    let bs = spec.block_size;
    assert!(
        bs > 0 && bs.is_multiple_of(512),
        "block size must be a multiple of 512"
    );
    let blocks = array.size() / bs as u64;
    assert!(blocks > 0, "device smaller than one block");
    if let Workload::Replay(ios) = &spec.workload
        && ios.is_empty()
    {
        return Err(std::io::Error::other(
            "the trace to replay has no reads or writes",
        ));
    }
    let depth = spec.depth.max(1) as usize;
    let ring = (depth as u32 * array.replica_count() as u32 * 2).clamp(64, 4096);
    let mut q = array
        .queue(0, ring)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut payload = AlignedBuf::new(bs as usize);
    let mut fill = Rng::new(spec.seed ^ 0x5EED);
    for chunk in payload.chunks_mut(8) {
        let v = fill.next_u64().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let with_data = !array.clock().is_simulated();
    // Progress (and, in `record`, draining the training log) every 500 ms of
    // wall time; simulated time runs far faster, so every 20 ms of it.
    let progress_every: u64 = if with_data { 500_000_000 } else { 20_000_000 };
    let before = array.stats();
    let t0 = array.now_ns();
    let interval_ns = (spec.duration.as_nanos() as u64 / 100).max(10_000_000);
    let mut d = Driver {
        spec,
        gen_: Gen {
            rng: Rng::new(spec.seed),
            blocks,
            bs,
            size: array.size(),
            replay_pos: 0,
        },
        arrivals: Rng::new(spec.seed ^ 0xA5A5_5A5A_0F0F_F0F0),
        payload,
        pool: (0..if with_data { depth } else { 0 })
            .map(|_| AlignedBuf::new(bs as usize))
            .collect(),
        with_data,
        start_of: vec![0u64; depth],
        op_of: vec![Op::Read; depth],
        free_tags: (0..depth).rev().collect(),
        t0,
        res: LoadResult {
            completed: 0,
            reads: 0,
            writes: 0,
            errors: 0,
            overruns: 0,
            elapsed_s: 0.0,
            read_us: new_hist(),
            write_us: new_hist(),
            stats: ArrayStats::default(),
            intervals: Vec::new(),
            interval_s: interval_ns as f64 / 1e9,
            t0_ns: t0,
        },
        iv_start: t0,
        iv_len: interval_ns,
        iv_completed: 0,
        iv_read_us: new_hist(),
    };
    let end = t0 + spec.duration.as_nanos() as u64;
    let mut next_arrival = t0;
    let mut next_progress = t0 + progress_every;
    let mut out: Vec<Completion> = Vec::with_capacity(depth);
    let open_loop = matches!(spec.workload, Workload::Replay(_)) || spec.rate.is_some();
    if matches!(spec.workload, Workload::Replay(_)) {
        next_arrival = d.next_open(t0);
    }
    // The arrival last counted as an overrun.
    let mut waiting = u64::MAX;
    loop {
        let now = array.now_ns();
        if now >= end {
            break;
        }
        let mut timeout = Some(100_000_000u64.min(end - now));
        if open_loop {
            if next_arrival == u64::MAX && q.in_flight() == 0 {
                break; // the trace is over and everything has completed
            }
            let mut full = false;
            while next_arrival <= now {
                if !d.submit(&mut q, next_arrival) {
                    // Depth reached: the arrival waits for a free slot, its
                    // latency counting from when it arrived (counted once).
                    if waiting != next_arrival {
                        d.res.overruns += 1;
                        waiting = next_arrival;
                    }
                    full = true;
                    break;
                }
                next_arrival = d.next_open(next_arrival);
            }
            if !full {
                timeout = Some(next_arrival.saturating_sub(now).clamp(1_000, 100_000_000));
            }
        } else {
            while q.in_flight() < depth && d.submit(&mut q, now) {}
        }
        q.poll(&mut out, true, timeout)?;
        let now = array.now_ns();
        d.roll_intervals(now.min(end));
        d.reap(&mut out, now);
        if now >= next_progress {
            next_progress = now + progress_every;
            progress(LoadProgress {
                elapsed_s: (now - t0) as f64 / 1e9,
                completed: d.res.completed,
                read_p99_us: d.res.read_us.value_at_quantile(0.99),
            });
        }
    }
    // Let what is in flight finish (not counted: the measured window is over).
    let stop = array.now_ns();
    d.roll_intervals(stop.min(end));
    if stop.min(end) > d.iv_start {
        d.close_interval(stop.min(end));
    }
    while q.in_flight() > 0 {
        q.poll(&mut out, true, Some(100_000_000))?;
        out.clear();
    }
    drop(q);
    let mut res = d.res;
    res.elapsed_s = (stop - t0) as f64 / 1e9;
    res.stats = array.stats().since(&before);
    Ok(res)
}

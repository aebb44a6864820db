//! The request mixes the load generator draws from, and the seeded stream
//! that turns one into requests (the same for every policy).

use std::time::Duration;

use augur_feature_store::Op;
use augur_rng::Rng;

/// One request of a replayed trace: when (ns after the start), what, where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayIo {
    /// Arrival, ns after the run starts.
    pub t_ns: u64,
    /// Read or write (other ops are not replayed).
    pub op: Op,
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Which mix of requests to generate.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// Replays a trace open-loop at its own arrival times (offsets wrapped
    /// into the device and aligned to 4 KiB, lengths to 512 bytes, at most
    /// 1 MiB); `depth` bounds the requests in flight.
    Replay(std::sync::Arc<Vec<ReplayIo>>),
    /// Random reads only.
    RandRead,
    /// Random reads and writes, `read_pct` percent reads.
    Mixed {
        /// Percent of requests that are reads.
        read_pct: f64,
    },
    /// Reads all the time, with periodic bursts in which most requests are writes.
    WriteBurst {
        /// Length of one burst cycle.
        period: Duration,
        /// Fraction of each cycle that is a burst.
        burst_fraction: f64,
        /// Percent writes during a burst.
        burst_write_pct: f64,
        /// Percent writes between bursts.
        base_write_pct: f64,
    },
}

impl Workload {
    /// Names accepted by [`Workload::parse`].
    pub const NAMES: &'static [&'static str] = &["randread", "mixed", "write-burst"];

    /// Parses a workload name; `read_pct` applies to `mixed`.
    pub fn parse(name: &str, read_pct: f64) -> Result<Workload, String> {
        match name {
            "randread" => Ok(Workload::RandRead),
            "mixed" => Ok(Workload::Mixed { read_pct }),
            "write-burst" => Ok(Workload::WriteBurst {
                period: Duration::from_millis(1000),
                burst_fraction: 0.3,
                burst_write_pct: 80.0,
                base_write_pct: 5.0,
            }),
            other => Err(format!(
                "unknown workload '{other}' (known: {})",
                Workload::NAMES.join(", ")
            )),
        }
    }

    fn write_pct_at(&self, t_ns: u64) -> f64 {
        match self {
            Workload::RandRead | Workload::Replay(_) => 0.0,
            Workload::Mixed { read_pct } => 100.0 - read_pct,
            Workload::WriteBurst {
                period,
                burst_fraction,
                burst_write_pct,
                base_write_pct,
            } => {
                let p = period.as_nanos().max(1) as u64;
                if ((t_ns % p) as f64) < p as f64 * burst_fraction {
                    *burst_write_pct
                } else {
                    *base_write_pct
                }
            }
        }
    }
}

/// A load to drive into an array.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// The request mix.
    pub workload: Workload,
    /// Request size in bytes (a multiple of 512).
    pub block_size: u32,
    /// Closed loop: requests kept in flight. Open loop: the most in flight
    /// before arrivals are counted as overrun.
    pub depth: u32,
    /// Open-loop arrival rate (requests per second, Poisson); `None` = closed loop.
    pub rate: Option<f64>,
    /// How long to run.
    pub duration: Duration,
    /// Seeds offsets, ops and arrivals.
    pub seed: u64,
}

/// Generates the seeded request stream.
pub(super) struct Gen {
    pub(super) rng: Rng,
    pub(super) blocks: u64,
    pub(super) bs: u32,
    pub(super) size: u64,
    pub(super) replay_pos: usize,
}

impl Gen {
    /// The next request: op, offset, length.
    pub(super) fn next(&mut self, workload: &Workload, t_ns: u64) -> (Op, u64, u32) {
        if let Workload::Replay(ios) = workload {
            let io = ios[self.replay_pos % ios.len()];
            self.replay_pos += 1;
            let len = (io.len.clamp(512, 1 << 20).div_ceil(512) * 512) as u64;
            let len = len.min(self.size);
            let span = (self.size - len) / 4096 + 1;
            let offset = (io.offset / 4096 % span) * 4096;
            return (io.op, offset, len as u32);
        }
        let block = self.rng.below(self.blocks);
        let write = self.rng.next_f64() * 100.0 < workload.write_pct_at(t_ns);
        let op = if write { Op::Write } else { Op::Read };
        (op, block * self.bs as u64, self.bs)
    }

    /// Arrival of the next replayed request (ns after the start), if any.
    pub(super) fn replay_arrival(&self, workload: &Workload) -> Option<u64> {
        match workload {
            Workload::Replay(ios) => ios.get(self.replay_pos).map(|io| io.t_ns),
            _ => None,
        }
    }
}

//! Virtual-time workload simulation against emulated replicas, used to tune
//! and report profiles (and by the CLI to print them).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::Op;
use super::device::{FlashEmu, Outcome};
use super::profile::Profile;
use augur_rng::Rng;

/// How a simulated array picks the replica for a read (writes go to all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimPolicy {
    /// Uniformly random replica: what a predictor-less array gets.
    Baseline,
    /// The replica with the lowest [`FlashEmu::peek_read_latency`]: the best
    /// any predictor could do.
    Oracle,
}

/// Workload for [`simulate`].
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Number of replicas (each an independent [`FlashEmu`] with its own seed).
    pub replicas: usize,
    /// Maximum I/Os outstanding; in a closed loop, exactly this many.
    pub depth: usize,
    /// Open-loop Poisson arrival rate (I/Os per second, total); `None` =
    /// closed loop (a new I/O as soon as one completes).
    pub iops: Option<f64>,
    /// Total I/Os to issue.
    pub n_ios: u64,
    /// Fraction of I/Os that are reads (the rest are writes).
    pub read_fraction: f64,
    /// Block size, bytes (offsets are random multiples of it).
    pub bs: u32,
    /// Size of the region offsets are drawn from, bytes.
    pub span_bytes: u64,
    /// Replica choice for reads.
    pub policy: SimPolicy,
}

/// Result of a simulation (latencies in µs, from submit to completion).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimSummary {
    /// Reads completed successfully.
    pub reads: u64,
    /// Writes completed successfully (on every replica).
    pub writes: u64,
    /// I/Os that failed on some replica.
    pub failed: u64,
    /// Median read latency, µs.
    pub read_p50_us: f64,
    /// 99th percentile read latency, µs.
    pub read_p99_us: f64,
    /// 99.9th percentile read latency, µs.
    pub read_p999_us: f64,
    /// Worst read latency, µs.
    pub read_max_us: f64,
    /// Mean read latency, µs.
    pub read_mean_us: f64,
    /// 99.9th percentile write latency (slowest replica), µs.
    pub write_p999_us: f64,
    /// Virtual time the run took, seconds.
    pub duration_s: f64,
    /// Completed I/Os per virtual second.
    pub iops: f64,
    /// GC windows, summed over replicas.
    pub gc_windows: u64,
    /// Noisy-neighbour busy periods, summed over replicas.
    pub busy_periods: u64,
}

impl std::fmt::Display for SimSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "read p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us; \
             {:.0} IOPS; {} GC windows, {} busy periods, {} failed",
            self.read_p50_us,
            self.read_p99_us,
            self.read_p999_us,
            self.read_max_us,
            self.iops,
            self.gc_windows,
            self.busy_periods,
            self.failed
        )
    }
}

/// Value at quantile `q` of sorted `v` (nearest rank), in µs.
fn quantile_us(v: &[u64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx] as f64 / 1e3
}

/// Single replica, closed loop: keeps `depth` I/Os outstanding in virtual
/// time (each completion immediately issues the next I/O), `read_fraction`
/// random reads of `bs` bytes, the rest writes, over a 1 GiB region.
pub fn simulate_closed_loop(
    profile: &Profile,
    seed: u64,
    depth: usize,
    n_ios: u64,
    read_fraction: f64,
    bs: u32,
) -> SimSummary {
    simulate(
        profile,
        seed,
        &SimConfig {
            replicas: 1,
            depth,
            iops: None,
            n_ios,
            read_fraction,
            bs,
            span_bytes: 1 << 30,
            policy: SimPolicy::Baseline,
        },
    )
}

/// Runs a workload against `cfg.replicas` emulators (seeds derived from
/// `seed`) entirely in virtual time and summarises read latency.
pub fn simulate(profile: &Profile, seed: u64, cfg: &SimConfig) -> SimSummary {
    let replicas = cfg.replicas.max(1);
    let depth = cfg.depth.max(1);
    let bs = cfg.bs.max(1);
    let blocks = (cfg.span_bytes / bs as u64).max(1);
    let mut emus: Vec<FlashEmu> = (0..replicas as u64)
        .map(|i| {
            FlashEmu::new(
                profile.clone(),
                seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            )
        })
        .collect();
    let mut rng = Rng::new(seed ^ 0x5151_5151_5151_5151);
    let mut outstanding: BinaryHeap<Reverse<u64>> = BinaryHeap::with_capacity(depth + 1);
    let mut read_lat = Vec::with_capacity((cfg.n_ios as f64 * cfg.read_fraction) as usize + 1);
    let mut write_lat = Vec::new();
    let mut failed = 0;
    let mut now = 0u64;
    let mut arrival = 0f64;
    let mut last_completion = 0u64;

    for _ in 0..cfg.n_ios {
        match cfg.iops {
            Some(rate) if rate > 0.0 => {
                arrival += rng.exponential(1e9 / rate);
                now = now.max(arrival as u64);
                while outstanding.peek().is_some_and(|Reverse(t)| *t <= now) {
                    outstanding.pop();
                }
            }
            _ => {}
        }
        if outstanding.len() >= depth
            && let Some(Reverse(t)) = outstanding.pop()
        {
            now = now.max(t);
        }
        let offset = rng.below(blocks) * bs as u64;
        let is_read = rng.next_f64() < cfg.read_fraction;
        let done = if is_read {
            let r = match cfg.policy {
                SimPolicy::Baseline => rng.below(replicas as u64) as usize,
                SimPolicy::Oracle => (0..replicas)
                    .min_by_key(|&i| emus[i].peek_read_latency(now, offset, bs))
                    .unwrap_or(0),
            };
            match emus[r].submit(now, Op::Read, offset, bs) {
                Outcome::CompleteAt(t) => {
                    read_lat.push(t - now);
                    Some(t)
                }
                Outcome::Fail => None,
            }
        } else {
            let mut latest = Some(now);
            for e in &mut emus {
                latest = match (latest, e.submit(now, Op::Write, offset, bs)) {
                    (Some(a), Outcome::CompleteAt(t)) => Some(a.max(t)),
                    _ => None,
                };
            }
            if let Some(t) = latest {
                write_lat.push(t - now);
            }
            latest
        };
        match done {
            Some(t) => {
                outstanding.push(Reverse(t));
                last_completion = last_completion.max(t);
            }
            None => failed += 1,
        }
    }
    read_lat.sort_unstable();
    write_lat.sort_unstable();
    let duration_s = last_completion.max(now) as f64 / 1e9;
    let completed = (read_lat.len() + write_lat.len()) as f64;
    SimSummary {
        reads: read_lat.len() as u64,
        writes: write_lat.len() as u64,
        failed,
        read_p50_us: quantile_us(&read_lat, 0.50),
        read_p99_us: quantile_us(&read_lat, 0.99),
        read_p999_us: quantile_us(&read_lat, 0.999),
        read_max_us: read_lat.last().map_or(0.0, |&v| v as f64 / 1e3),
        read_mean_us: if read_lat.is_empty() {
            0.0
        } else {
            read_lat.iter().sum::<u64>() as f64 / read_lat.len() as f64 / 1e3
        },
        write_p999_us: quantile_us(&write_lat, 0.999),
        duration_s,
        iops: if duration_s > 0.0 {
            completed / duration_s
        } else {
            0.0
        },
        gc_windows: emus.iter().map(|e| e.stats().gc_windows).sum(),
        busy_periods: emus.iter().map(|e| e.stats().busy_periods).sum(),
    }
}

//! What prediction costs on the simulated clock.
//!
//! On the real clock a prediction costs what it costs. On the simulated one
//! each predictor call of a routing batch advances the clock of the
//! submitting queue by a [`PredictCost`], so simulated latencies include
//! inference. Batches offloaded to the simulated GPU are not charged here:
//! their reads wait for the curve's round trip instead (`array/parked.rs`).

use std::time::Instant;

use augur_feature_store::HistorySnapshot;
use augur_predictor::{PredictInput, ReadInfo, ScoredOn, SlowPredictor};

/// A linear cost model: a fixed cost per predictor call plus one per read
/// scored in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PredictCost {
    /// Nanoseconds per predictor call (one `score_batch`).
    pub per_batch_ns: u64,
    /// Nanoseconds per read scored.
    pub per_item_ns: u64,
}

impl PredictCost {
    /// Nanoseconds that `calls` predictor calls scoring `items` reads take.
    pub fn of(&self, calls: u32, items: u32) -> u64 {
        self.per_batch_ns * calls as u64 + self.per_item_ns * items as u64
    }

    /// Nanoseconds that the predictor calls `placed` (size, device) take:
    /// CPU calls at this linear cost, GPU calls at their round trip, calls
    /// that gave up on the GPU at their wait plus the CPU cost.
    pub fn of_placed(&self, placed: &[(u32, ScoredOn)]) -> u64 {
        placed
            .iter()
            .map(|&(n, on)| match on {
                ScoredOn::Cpu => self.of(1, n),
                ScoredOn::Gpu { round_trip_ns } => round_trip_ns,
                ScoredOn::GpuMissed { waited_ns } => waited_ns + self.of(1, n),
            })
            .sum()
    }

    /// Parses `N` (per call) or `N,PER_ITEM` (per call, per read), in ns.
    pub fn parse(s: &str) -> Result<PredictCost, String> {
        let bad = || format!("--predict-cost-ns '{s}': expected N or N,PER_ITEM in nanoseconds");
        let mut it = s.split(',').map(|x| x.trim().parse::<u64>());
        let per_batch_ns = it.next().and_then(|r| r.ok()).ok_or_else(bad)?;
        let per_item_ns = match it.next() {
            None => 0,
            Some(r) => r.map_err(|_| bad())?,
        };
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(PredictCost {
            per_batch_ns,
            per_item_ns,
        })
    }

    /// Measures `predictor` on this machine's wall clock: the median time of
    /// calls scoring 1 and 32 reads, fitted to a per-call and a per-read
    /// cost. Takes a few tens of milliseconds.
    pub fn measure(predictor: &dyn SlowPredictor) -> PredictCost {
        let inputs: Vec<PredictInput> = (0..32u32)
            .map(|i| PredictInput {
                replica: (i % 3) as u16,
                snapshot: HistorySnapshot {
                    pending_ios: 4 + i % 7,
                    pending_pages: 4 + i % 7,
                    oldest_pending_us: 100 + 13 * i,
                    read_max_us: 300 + 29 * i,
                    ..HistorySnapshot::default()
                },
                read: ReadInfo { size_bytes: 4096 },
            })
            .collect();
        let mut out = vec![0i64; inputs.len()];
        let mut time = |n: usize, reps: u32| -> u64 {
            let mut samples: Vec<u64> = (0..7)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..reps {
                        predictor.score_batch(&inputs[..n], &mut out[..n]);
                        std::hint::black_box(&out);
                    }
                    t.elapsed().as_nanos() as u64 / reps as u64
                })
                .collect();
            samples.sort_unstable();
            samples[samples.len() / 2]
        };
        time(32, 50); // warm up
        let one = time(1, 2000);
        let many = time(32, 200);
        let per_item_ns = many.saturating_sub(one) / 31;
        PredictCost {
            per_batch_ns: one.saturating_sub(per_item_ns),
            per_item_ns,
        }
    }
}

impl std::fmt::Display for PredictCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ns per call + {} ns per read",
            self.per_batch_ns, self.per_item_ns
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_apply() {
        let c = PredictCost::parse("2000,450").unwrap();
        assert_eq!(c.of(2, 10), 2 * 2000 + 10 * 450);
        let placed = [
            (10, ScoredOn::Cpu),
            (
                64,
                ScoredOn::Gpu {
                    round_trip_ns: 7000,
                },
            ),
            (2, ScoredOn::GpuMissed { waited_ns: 100 }),
        ];
        assert_eq!(
            c.of_placed(&placed),
            (2000 + 4500) + 7000 + (100 + 2000 + 900)
        );
        assert_eq!(PredictCost::parse(" 300 ").unwrap().per_item_ns, 0);
        for bad in ["", "x", "1,2,3", "1,-2", "-1"] {
            assert!(PredictCost::parse(bad).is_err(), "{bad}");
        }
    }

    struct Busy;
    impl SlowPredictor for Busy {
        fn name(&self) -> &str {
            "busy"
        }
        fn score_batch(&self, inputs: &[PredictInput], out: &mut [i64]) {
            for (i, o) in inputs.iter().zip(out) {
                *o =
                    std::hint::black_box((0..200u64).fold(i.snapshot.pending_ios as u64, |a, b| {
                        a.wrapping_mul(31).wrapping_add(b)
                    })) as i64;
            }
        }
    }

    #[test]
    fn measurement_sees_per_read_work() {
        let c = PredictCost::measure(&Busy);
        // A call of 32 reads does 32 times the work of one: whatever the
        // machine's speed, the per-read share is not zero.
        assert!(c.per_item_ns > 0, "{c}");
    }
}

//! The array's named counters, declared once.
//!
//! [`counter_table!`] turns one list of names into a plain snapshot struct
//! (serialisable, with [`ArrayStats::since`] for differences and
//! [`ArrayStats::fields`] for anything that walks them: the bench diff, the
//! stats line, later the control socket and metrics) and a table of atomics
//! the data path bumps. Each [`Queue`](super::Queue) owns one table it alone
//! writes (so a bump is a plain load and store, no locked instruction, no
//! shared cache line); the array keeps one more for events that are not a
//! queue's (a replica marked failed) and for the totals of closed queues.
//! [`Array::stats`](super::Array::stats) adds them up.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Declares a snapshot struct `$stats` and its live table `$live` from one
/// list of documented counter names.
macro_rules! counter_table {
    (
        $(#[$meta:meta])*
        pub struct $stats:ident / $live:ident {
            $( $(#[doc = $doc:literal])+ $name:ident, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct $stats {
            $( $(#[doc = $doc])+ pub $name: u64, )+
        }

        impl $stats {
            /// The counter names, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),+];

            /// Every counter with its name, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name)),+]
            }

            /// What each counter gained since `earlier`.
            pub fn since(&self, earlier: &Self) -> Self {
                $stats { $($name: self.$name.saturating_sub(earlier.$name)),+ }
            }

            /// Adds `other` into `self`, counter by counter.
            pub fn add(&mut self, other: &Self) {
                $(self.$name += other.$name;)+
            }
        }

        /// The live counters behind
        #[doc = concat!("[`", stringify!($stats), "`]")]
        /// : one atomic each.
        #[derive(Debug, Default)]
        pub(crate) struct $live {
            $( pub(crate) $name: AtomicU64, )+
        }

        impl $live {
            /// A copy of every counter.
            pub(crate) fn snapshot(&self) -> $stats {
                $stats { $($name: self.$name.load(Relaxed)),+ }
            }

            /// Adds a snapshot's counts (a closed queue's totals) in.
            #[allow(dead_code)]
            pub(crate) fn absorb(&self, s: &$stats) {
                $(self.$name.fetch_add(s.$name, Relaxed);)+
            }
        }
    };
}

counter_table! {
    /// A snapshot of the array's counters (all queues together).
    pub struct ArrayStats / Counters {
        /// Read requests completed.
        reads,
        /// Write requests completed.
        writes,
        /// Flush requests completed.
        flushes,
        /// Discard requests completed.
        discards,
        /// Write-zeroes requests completed.
        write_zeroes,
        /// Reads sent to a replica other than their primary.
        rerouted,
        /// Hedged second copies sent (extra replica reads).
        hedges,
        /// Hedged copies that answered first.
        hedge_wins,
        /// Predictor calls.
        predictions,
        /// Reads for which every replica was predicted slow.
        all_slow,
        /// Reads retried on another replica after an error.
        read_retries,
        /// Requests that failed (no replica could serve them).
        failed_requests,
        /// Replicas marked failed.
        replica_failures,
        /// Predictions that said slow.
        predicted_slow,
        /// Reads answered by a replica the predictor had scored (the reads
        /// its decisions can be judged on).
        judged_reads,
        /// Judged reads that took longer than the model's slow threshold.
        observed_slow,
        /// Judged reads predicted fast that were slow (LinnOS's false submits).
        false_submits,
        /// Judged reads whose prediction matched what was observed.
        correct_predictions,
        /// Predictor batches scored on the CPU (including GPU misses).
        cpu_batches,
        /// Reads scored in those.
        cpu_items,
        /// Predictor batches scored on the GPU.
        gpu_batches,
        /// Reads scored in those.
        gpu_items,
        /// Batches sent to the GPU that missed their deadline (or failed)
        /// and were scored on the CPU.
        gpu_missed_batches,
        /// Reads of a region some replica lacks (resync, rebuild), sent to
        /// a replica holding it whatever the policy chose.
        pinned_reads,
        /// Writes held back while the sync worker copied their region.
        deferred_writes,
        /// Times a queue found completions on its io_uring's overflow list
        /// (more finished at once than its completion queue holds) and
        /// entered the kernel to collect them.
        cq_overflows,
        /// Times a front-end's periodic tick found completions waiting that
        /// no wake-up had reported (never on a healthy run).
        missed_wakeups,
        /// Stall dumps: a queue's oldest request in flight grew older than
        /// the stall threshold (never on a healthy run).
        stalls,
    }
}

counter_table! {
    /// One replica's I/O counts.
    pub struct ReplicaCounts / ReplicaCounters {
        /// Replica reads issued.
        reads,
        /// Replica writes issued.
        writes,
        /// Replica flushes, discards and write-zeroes issued.
        other,
        /// Replica I/O errors seen.
        errors,
        /// Bytes read from the replica.
        read_bytes,
        /// Bytes written to the replica.
        written_bytes,
    }
}

/// Exact buckets below this many µs; above it, [`LAT_SUB`] per power of two.
const LAT_SUB: usize = 8;
/// Powers of two of µs covered above the exact ones (up to 2^30 µs, 18 min).
const LAT_OCTAVES: usize = 27;
/// Buckets of a [`LatencyHist`].
pub const LAT_BUCKETS: usize = LAT_SUB + LAT_SUB * LAT_OCTAVES;

/// The bucket of a latency in µs: exact below 8 µs, then 8 per power of two
/// (within 12.5%); the last bucket takes everything longer.
#[inline]
pub fn lat_bucket(us: u64) -> usize {
    if us < LAT_SUB as u64 {
        return us as usize;
    }
    let o = 63 - us.leading_zeros() as usize; // >= 3
    let sub = ((us >> (o - 3)) & 7) as usize;
    (LAT_SUB + (o - 3) * LAT_SUB + sub).min(LAT_BUCKETS - 1)
}

/// The largest latency (µs) bucket `i` holds.
pub fn lat_bucket_top(i: usize) -> u64 {
    if i < LAT_SUB {
        return i as u64;
    }
    let o = (i - LAT_SUB) / LAT_SUB + 3;
    let sub = ((i - LAT_SUB) % LAT_SUB) as u64;
    ((LAT_SUB as u64 + sub + 1) << (o - 3)) - 1
}

/// A read-latency histogram: counts per [`lat_bucket`] and the sum, in µs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LatencyHist {
    /// Reads per bucket.
    pub counts: Vec<u64>,
    /// Sum of the latencies, µs.
    pub sum_us: u64,
}

impl Default for LatencyHist {
    fn default() -> Self {
        LatencyHist {
            counts: vec![0; LAT_BUCKETS],
            sum_us: 0,
        }
    }
}

impl LatencyHist {
    /// Reads counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q`-quantile (0..=1) in µs, as the top of its bucket (so at most
    /// 12.5% above the true value); 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lat_bucket_top(i);
            }
        }
        lat_bucket_top(LAT_BUCKETS - 1)
    }

    /// What was added since `earlier`.
    pub fn since(&self, earlier: &LatencyHist) -> LatencyHist {
        LatencyHist {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }

    /// Adds `other` in.
    pub fn add(&mut self, other: &LatencyHist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }
}

/// Live read-latency histograms, one per replica, written by one queue.
#[derive(Debug)]
pub(crate) struct LatencyTable {
    counts: Box<[[AtomicU64; LAT_BUCKETS]]>,
    sums: Box<[AtomicU64]>,
}

impl LatencyTable {
    pub(crate) fn new(replicas: usize) -> Self {
        LatencyTable {
            counts: (0..replicas)
                .map(|_| [const { AtomicU64::new(0) }; LAT_BUCKETS])
                .collect(),
            sums: (0..replicas).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts one read answered by `replica` in `us` (owner thread only).
    #[inline]
    pub(crate) fn record(&self, replica: usize, us: u64) {
        if let (Some(c), Some(s)) = (self.counts.get(replica), self.sums.get(replica)) {
            bump(&c[lat_bucket(us)], 1);
            bump(s, us);
        }
    }

    /// A copy of replica `i`'s histogram.
    pub(crate) fn snapshot(&self, i: usize) -> LatencyHist {
        LatencyHist {
            counts: self.counts[i].iter().map(|c| c.load(Relaxed)).collect(),
            sum_us: self.sums[i].load(Relaxed),
        }
    }

    /// Adds a closed queue's histograms in (any thread).
    pub(crate) fn absorb(&self, other: &LatencyTable) {
        for (i, (c, s)) in self.counts.iter().zip(self.sums.iter()).enumerate() {
            let h = other.snapshot(i);
            for (a, b) in c.iter().zip(h.counts) {
                a.fetch_add(b, Relaxed);
            }
            s.fetch_add(h.sum_us, Relaxed);
        }
    }
}

/// Adds `n` to a counter that only one thread ever writes (a queue's own):
/// a plain load and store, so no locked instruction on the data path.
#[inline]
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// The state of one replica, for status displays.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicaStatus {
    /// The spec it was opened from.
    pub spec: String,
    /// False once marked failed.
    pub live: bool,
    /// True when opened with O_DIRECT.
    pub direct: bool,
    /// `in-sync`, `syncing` (regions still to resync or rebuild), `failed`
    /// or `removed`.
    pub state: &'static str,
    /// Regions it does not hold yet.
    pub pending_regions: u64,
    /// Its I/O counts.
    #[serde(flatten)]
    pub counts: ReplicaCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_ordered_and_within_an_eighth() {
        let mut last = 0;
        for us in 0..100_000u64 {
            let b = lat_bucket(us);
            assert!(b >= last, "bucket of {us} went down");
            last = b;
            let top = lat_bucket_top(b);
            assert!(
                top >= us && top as f64 <= us as f64 * 1.125 + 1.0,
                "{us} -> {top}"
            );
        }
        assert_eq!(lat_bucket(u64::MAX), LAT_BUCKETS - 1);
        let t = LatencyTable::new(2);
        for us in 1..=1000 {
            t.record(1, us);
        }
        t.record(7, 5); // no such replica: ignored
        let h = t.snapshot(1);
        assert_eq!((h.count(), h.sum_us), (1000, 500_500));
        let p50 = h.quantile_us(0.5);
        assert!((500..=563).contains(&p50), "{p50}");
        assert!(h.quantile_us(0.999) >= 999);
        assert_eq!(t.snapshot(0).quantile_us(0.5), 0);
        let both = LatencyTable::new(2);
        both.absorb(&t);
        both.absorb(&t);
        assert_eq!(both.snapshot(1).since(&h), h);
    }

    #[test]
    fn table_snapshots_diffs_and_names_agree() {
        let live = Counters::default();
        bump(&live.reads, 5);
        bump(&live.rerouted, 2);
        let a = live.snapshot();
        live.absorb(&a);
        let b = live.snapshot();
        assert_eq!((b.reads, b.rerouted, b.writes), (10, 4, 0));
        let d = b.since(&a);
        assert_eq!((d.reads, d.rerouted), (5, 2));
        let names: Vec<&str> = d.fields().iter().map(|f| f.0).collect();
        assert_eq!(names, ArrayStats::NAMES);
        assert_eq!(names.len(), 28);
        let mut sum = a.clone();
        sum.add(&d);
        assert_eq!(sum, b);
    }
}

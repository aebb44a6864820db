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
    /// Its I/O counts.
    #[serde(flatten)]
    pub counts: ReplicaCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(names.len(), 13);
        let mut sum = a.clone();
        sum.add(&d);
        assert_eq!(sum, b);
    }
}

//! Driving the array in-process: seeded workloads ([`Workload`], [`LoadSpec`]),
//! the load generator ([`run_load`]) and the side-by-side policy runs behind
//! `augur bench`, `augur record` and `augur demo` ([`run_bench`],
//! [`run_record`]), and `augur adapt`'s timeline of a device that changes
//! under a running model ([`run_adapt`]).

mod adapt;
mod bench;
mod run;
mod workload;

pub use adapt::{AdaptRun, AdaptRunOptions, RoundRecord, TimelineRow, render_adapt, run_adapt};
pub use bench::{
    BenchSetup, ClockChoice, GcWindow, LatencySummary, PolicyReport, ReplicaSource,
    default_replica_dir, render_table, run_bench, run_record,
};
pub use run::{IntervalStats, LoadProgress, LoadResult, run_load};
pub use workload::{LoadSpec, ReplayIo, Workload};

//! Driving the array in-process: seeded workloads ([`Workload`], [`LoadSpec`]),
//! the load generator ([`run_load`]) and the side-by-side policy runs behind
//! `augur bench`, `augur record` and `augur demo` ([`run_bench`],
//! [`run_record`]).

mod bench;
mod run;
mod workload;

pub use bench::{
    BenchSetup, ClockChoice, LatencySummary, PolicyReport, ReplicaSource, default_replica_dir,
    render_table, run_bench, run_record,
};
pub use run::{LoadProgress, LoadResult, run_load};
pub use workload::{LoadSpec, ReplayIo, Workload};

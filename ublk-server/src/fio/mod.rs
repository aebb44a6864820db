//! fio: traces as fio iologs, the `bench/fio/` job suite and its runner, and fio's json+ output.
//!
//! | file | what it holds |
//! |---|---|
//! | `iolog.rs` | [`write_iolog`]: a trace as a version 3 iolog (`augur trace to-fio`) |
//! | `suite.rs` | [`run_suite`]: the job files, once per policy, into a results directory with a [`Manifest`] (`augur fio run`) |
//! | `json.rs` | [`read_fio_json`]: fio's json+ output, with the full completion-latency histograms |

mod iolog;
mod json;
mod suite;

pub use iolog::{IologError, IologOptions, IologStats, MAX_IO, write_iolog};
pub use json::{FioDirection, FioJob, FioJsonError, FioOutput, parse_fio_json, read_fio_json};
pub use suite::{
    CounterDelta, JOBS, MANIFEST, Machine, Manifest, RunEntry, SuiteError, SuiteOptions,
    find_socket_for, git_commit, kernel_release, plat_idx_to_ns, read_hist_logs, read_iops_logs,
    read_manifest, run_suite, target_size,
};

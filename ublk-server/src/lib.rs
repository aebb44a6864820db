//! The augur daemon and CLI: replica array, routing policies, emulated flash,
//! ublk and FUSE front-ends, load generator and benchmarks.
//!
//! # The data path
//!
//! One read, from the kernel to a replica and back:
//!
//! 1. **Front-end** ([`frontend`]): a ublk queue thread or a FUSE worker
//!    receives a request and hands it to its own array [`Queue`] with
//!    [`Queue::submit`]. Every thread owns one queue; nothing is handed
//!    between threads.
//! 2. **Queue** ([`array`]): at the next [`Queue::poll`] the requests taken
//!    since the last one are dispatched together. Writes, flushes and
//!    discards fan out to every live replica; the reads of the batch go to
//!    the router as one batch.
//! 3. **Route** ([`route`]): [`Policy::route_batch`] picks a replica per
//!    read. The `linnos` policies read each candidate replica's history from
//!    the feature store and ask a [`SlowPredictor`] about all of the batch in
//!    one call; a read predicted slow moves to the next replica.
//! 4. **Replica ring** (`array/ring.rs`): each replica I/O becomes an SQE on
//!    the queue's io_uring (O_DIRECT where possible). An emulated replica
//!    ([`emu`]) also gets a ring timeout that holds the completion until the
//!    flash model says it is done.
//! 5. **Completion**: the queue records the latency in the replica's history
//!    (the next prediction's input) and, when recording, a training record;
//!    then the request's completion comes out of [`Queue::poll`] and the
//!    front-end answers the kernel.
//!
//! # Example
//!
//! An array of two plain files, driven the way the load generator drives it:
//!
//! ```no_run
//! use augur::{Array, ArrayConfig, AlignedBuf, Policy, ReplicaSpec, Request};
//! use augur_feature_store::Op;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let replicas = vec![ReplicaSpec::parse("/tmp/a.img")?, ReplicaSpec::parse("/tmp/b.img")?];
//! let mut cfg = ArrayConfig::new(replicas);
//! cfg.create_size = Some(64 << 20);
//! let array = Array::open(cfg, Policy::from_name("primary", None)?)?;
//! let mut queue = array.queue(0, 64)?;
//!
//! let mut data = AlignedBuf::new(4096);
//! data.fill(0xAB);
//! queue.submit(Request { op: Op::Write, offset: 0, len: 4096, buf: Some(data), user: 1 });
//! queue.submit(Request { op: Op::Read, offset: 0, len: 4096, buf: Some(AlignedBuf::new(4096)), user: 2 });
//!
//! let mut done = Vec::new();
//! while done.len() < 2 {
//!     queue.poll(&mut done, true, None)?;
//! }
//! assert!(done.iter().all(|c| c.result == 0));
//! # Ok(())
//! # }
//! ```
//!
//! (The two requests of one batch may run in either order; a caller that
//! needs the write first polls for it before submitting the read.
//! `examples/mirror.rs` does so.)
//!
//! # Rooms
//!
//! | module | what it holds |
//! |---|---|
//! | [`array`] | the array, its queues, replicas, counters |
//! | [`route`] | the read routing policies (`linnos` apart) |
//! | [`adapt`] | online adaptation: retrain on recent reads, install only through three gates |
//! | [`control`] | the control socket: status, stats, live model and policy swap, recording |
//! | [`metrics`] | Prometheus metrics, served at scrape time from the same counters |
//! | [`emu`] | the flash emulator and its profiles |
//! | [`frontend`] | ublk and FUSE |
//! | [`load`] | the in-process load generator, bench, record and demo runs |
//! | [`fio`] | fio: traces as iologs, the `bench/fio/` job suite and its runner, json+ output |
//! | [`report`] | `augur report`: Markdown summaries and latency plots (SVG, PNG) from bench and fio results |
//!
//! The command line itself (`src/cli/`) belongs to the `augur` binary.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod adapt;
pub mod array;
pub mod control;
pub mod emu;
pub mod fio;
pub mod frontend;
pub mod load;
pub mod metrics;
pub mod report;
pub mod route;

pub use array::{
    AlignedBuf, Array, ArrayConfig, ArrayError, ArrayStats, Completion, FaultPlan, Queue,
    ReplicaSpec, ReplicaStatus, Request,
};
pub use augur_predictor::{
    ModelPredictor, PendingScores, PredictInput, ScoredOn, SlowPredictor, Wake,
};
pub use route::{POLICY_NAMES, Policy};

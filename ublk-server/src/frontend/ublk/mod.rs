//! The ublk front-end: `augur serve` exposes the array as a real block
//! device, `/dev/ublkbN`, through the kernel's ublk driver (libublk);
//! `augur list` and `augur stop` find and stop such devices.
//!
//! # The device
//! One ublk queue per `--queues` (default 1), `--depth` tags each (default
//! 64), 512 KiB maximum request, logical block `--block-size` (4096 or 512),
//! a volatile write cache (so flushes arrive), and discard / write-zeroes
//! limits (one range per request, up to 1 GiB discarded and 16 MiB zeroed at a
//! time), so every operation the array knows reaches it:
//!
//! | ublk op | array operation | result to the kernel |
//! |---|---|---|
//! | READ | one read, routed by the policy | bytes read |
//! | WRITE | one write to every live replica | bytes written |
//! | FLUSH | flush of every replica | 0 |
//! | DISCARD | punch-hole on every replica | 0 |
//! | WRITE_ZEROES | zero-range on every replica | 0 |
//! | anything else | — | `-EOPNOTSUPP` |
//!
//! Devices are created with `UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE`:
//! when the daemon dies the kernel keeps the device and queues its I/O, and
//! `augur serve --recover --id N` attaches a new daemon; requests the dead
//! daemon had taken but not answered are issued again (every array operation
//! is idempotent), so nothing acknowledged is lost and nothing waiting fails.
//!
//! # The data path: one thread, two rings, no hand-off
//! Each queue has one thread (spawned by libublk) that owns the queue's
//! libublk io_uring *and* its own array [`Queue`] (with its own io_uring for
//! replica I/O, emulator delays and hedge timers). The array's ring cannot be
//! libublk's ring (the array owns its ring and its `user_data` space), so the
//! two are tied together with an eventfd: the eventfd is registered on the
//! array ring (`IORING_REGISTER_EVENTFD`, the kernel bumps it on every array
//! completion) and one `READ` of it is always pending in the libublk ring.
//! The thread sleeps in exactly one place, `io_uring_enter` on the libublk
//! ring, and wakes for a new ublk command or for array completions alike.
//! Per wake-up it:
//!
//! 1. takes every CQE of that wait: new ublk commands (one per tag) become
//!    array [`Request`]s, all handed to [`Queue::submit`] before anything is
//!    issued, so reads that arrived together are routed in one batch;
//! 2. calls [`Queue::poll`] without waiting, with the eventfd's notifications
//!    switched off meanwhile (its own submissions often complete at once and
//!    must not wake it again): the batch is routed and issued, finished
//!    replica I/O is reaped; with notifications back on, it reaps again if
//!    anything slipped in between;
//! 3. queues `COMMIT_AND_FETCH` for every finished request, re-arms the
//!    eventfd read if it completed, and goes back to sleep (the next
//!    `io_uring_enter` submits the commits).
//!
//! The eventfd read empties the counter as it completes and is re-armed
//! after the reap: a completion that lands later leaves the counter non-zero,
//! so the new read completes at once. No wake-up is lost. Completions beyond
//! the array ring's CQ (the kernel's overflow list) are collected by
//! [`Queue::poll`] itself, which enters the kernel for them.
//!
//! # Stalls
//! While array requests run, a timeout of a quarter of `--stall-after`
//! (at most 1 s) also sits in the libublk ring: the stall tick. It reaps
//! nothing by itself. It calls [`Queue::check_stall`], which logs one JSON
//! dump (every request in flight and where it is, the array ring's pending
//! entries, the eventfd's state, the policy, the last events) the first time
//! a request is older than the threshold, and it counts completions that
//! have waited a whole tick with no eventfd wake-up (`missed_wakeups`, then
//! reaped). Both counters are in the stats and the metrics; both stay 0 on a
//! healthy run, and the soak (`tests/soak/run`) fails on either. A queue
//! thread stuck where no tick reaches it (a system call that does not
//! return) is reported by the array's [`Watchdog`](crate::array::Watchdog)
//! instead, from its own thread, with where the kernel says the stuck
//! thread sleeps.
//!
//! # Buffers
//! ublk (without zero copy, which 6.12 lacks) copies data between the block
//! request and one user buffer per tag, whose address the daemon names with
//! each `FETCH`/`COMMIT_AND_FETCH`. Each tag owns one page-aligned 512 KiB
//! [`AlignedBuf`]; it travels inside the array request and comes back in the
//! completion, and the commit names it, so the kernel copies read data out of
//! (and the next write's data into) the very buffer the replicas used: no
//! copy in the daemon. Two exceptions: the first command of each tag arrives
//! in libublk's registration buffer (a write is copied over once), and when a
//! hedged read copy answers first its data come in a small buffer of their
//! own while the tag's buffer is still being read into by the slower copy:
//! the data are copied into a spare full-size buffer (recycled from those the
//! array releases) and the tag continues with that one.
//!
//! # Stopping
//! SIGINT/SIGTERM (caught by a thread of its own; every other thread blocks
//! them): the device is stopped, which drains it — requests in flight finish
//! and are answered, new ones fail — then the queue threads see their commands
//! aborted and exit, each array queue waits for its replica I/O, the device is
//! deleted and [`serve`] returns the counters. A second signal exits at once,
//! leaving the device for `--recover` or `augur stop`. So does a queue thread
//! that panics or whose ring fails: stopping the device would wait forever
//! for the requests that thread holds, so the process exits and the device
//! keeps its I/O waiting for a new daemon.
//!
//! # Listing and stopping devices
//! libublk keeps a JSON description of each device under `/run/ublksrvd`;
//! Augur's devices are those whose target type is `augur`, and Augur records
//! its replicas, policy, model, size and block size there (`target_data`).
//! [`list`] joins that with the driver's view (state, daemon pid). [`stop`]
//! sends SIGTERM to a live daemon and waits for the device to go, or deletes
//! a device whose daemon is gone.
//!
//! # Where ublk is missing
//! Without `/dev/ublk-control` every command fails with one line saying why
//! (kernel too old, module not loaded, driver not built) and suggesting
//! `augur fuse`. [`serve`] opens (and validates) the array first, so bad input
//! is reported as such on any machine, and replica files it created are
//! removed again whenever no device came up.

use libublk::UblkError;
use serde::{Deserialize, Serialize};

use crate::array::ArrayError;
use crate::array::ArrayStats;

mod probe;
mod queue;
mod registry;
mod serve;

pub use probe::unavailable_reason;
pub use registry::{DeviceStatus, StopOutcome, human_size, list, recorded, render_list, stop};
pub use serve::serve;

/// libublk target type of Augur's devices (how [`list`] recognises them).
pub const TARGET_NAME: &str = "augur";
/// Largest request the kernel sends, and the size of each tag's buffer.
pub const IO_BUF_BYTES: u32 = 512 << 10;
/// Most queues `--queues` accepts.
pub const MAX_QUEUES: u16 = 64;
/// Most tags per queue `--depth` accepts.
pub const MAX_DEPTH: u16 = 1024;
/// Largest discard the kernel is allowed to send in one request.
pub const MAX_DISCARD_BYTES: u32 = 1 << 30;
/// Largest write-zeroes the kernel is allowed to send in one request (the
/// array may zero by writing from a buffer of that size).
pub const MAX_WRITE_ZEROES_BYTES: u32 = 16 << 20;
/// The ublk control node.
pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// Entries of each array queue's ring per ublk tag (replica copies, delays).
pub(super) const RING_ENTRIES_PER_TAG: u32 = 4;

/// Why `serve`, `list` or `stop` failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// ublk cannot be used on this machine (the message says why, in one line).
    #[error("{0}")]
    Unavailable(String),
    /// The array could not be opened (a replica, sizes, a profile...).
    #[error(transparent)]
    Array(#[from] ArrayError),
    /// A bad argument, or a device that is not in a state for the request.
    #[error("{0}")]
    BadInput(String),
    /// A ublk control or queue operation failed.
    #[error("{what}: {cause}")]
    Ublk {
        /// What was being done.
        what: String,
        /// The driver's or libublk's answer.
        cause: String,
    },
    /// Setting up the daemon itself (threads, signals, io_uring) failed.
    #[error("{what}: {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ServeError {
    /// True for errors that are the user's to fix (bad input, no ublk here):
    /// the CLI exits with status 2 for those.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            ServeError::Unavailable(_) | ServeError::Array(_) | ServeError::BadInput(_)
        )
    }

    fn ublk(what: impl Into<String>, e: &UblkError) -> Self {
        ServeError::Ublk {
            what: what.into(),
            cause: ublk_cause(e),
        }
    }
}

/// A libublk error as text, with the errno spelled out.
pub(super) fn ublk_cause(e: &UblkError) -> String {
    match e {
        UblkError::OtherError(n) | UblkError::UringIOError(n) if *n < 0 => {
            std::io::Error::from_raw_os_error(-n).to_string()
        }
        UblkError::IOError(io) => io.to_string(),
        other => other.to_string(),
    }
}

pub(super) fn ublk_errno(e: &UblkError) -> Option<i32> {
    match e {
        UblkError::OtherError(n) | UblkError::UringIOError(n) if *n < 0 => Some(-n),
        UblkError::IOError(io) => io.raw_os_error(),
        _ => None,
    }
}

/// How [`serve`] should build (or recover) the device.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// ublk queues, each served by one thread (default 1; on recovery, the device's).
    pub queues: Option<u16>,
    /// Tags (requests in flight) per queue (default 64; on recovery, the device's).
    pub depth: Option<u16>,
    /// Logical block size, 512 or 4096 (default 4096; on recovery, the device's).
    pub block_size: Option<u32>,
    /// Device id: `None` lets the driver pick one; required to recover.
    pub id: Option<u32>,
    /// Attach to the existing device `id`, whose daemon died.
    pub recover: bool,
    /// The device's request timeout (`/sys/block/ublkbN/queue/io_timeout`),
    /// set once it is live; `None` keeps the kernel's 30 s. With every tag in
    /// flight, the driver sees a killed daemon only at a request's timeout.
    pub io_timeout: Option<std::time::Duration>,
    /// The model the policy uses (recorded for `augur list` and recovery).
    pub model: String,
    /// Listen on a control socket ([`crate::control`]), with this as the
    /// active model; `None`: no socket.
    pub control: Option<crate::control::ModelEntry>,
    /// Where prediction batches run (`--predict-on`): started once the
    /// device is up; every model the control socket installs goes through
    /// it too.
    pub predict: augur_gpu_batcher::OffloadOptions,
    /// Serve Prometheus metrics here (needs `control`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Run online adaptation (needs `control`).
    pub adapt: Option<crate::frontend::AdaptOptions>,
}

/// What Augur records about a device in libublk's JSON (`target_data.augur`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// The replica specs, in order.
    pub replicas: Vec<String>,
    /// The routing policy.
    pub policy: String,
    /// The model of the `linnos` policies (`default` or a file).
    pub model: String,
    /// Device size in bytes.
    pub size: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// The array's identity from its metadata (none with `--no-bitmap`):
    /// `--recover` accepts only replicas of this array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_id: Option<String>,
}

/// How a [`serve`] run ended.
#[derive(Clone, Debug)]
pub struct ServeSummary {
    /// The block device that was served, e.g. `/dev/ublkb0`.
    pub path: String,
    /// The array's counters at the end.
    pub stats: ArrayStats,
}

impl ServeSummary {
    /// The one-line summary printed when the daemon stops.
    pub fn line(&self) -> String {
        let s = &self.stats;
        format!(
            "augur serve: {} stopped: {} reads, {} writes, {} flushes, {} discards, {} write-zeroes, {} failed requests, {} failed replicas",
            self.path,
            s.reads,
            s.writes,
            s.flushes,
            s.discards,
            s.write_zeroes,
            s.failed_requests,
            s.replica_failures
        )
    }
}

#[cfg(test)]
mod tests {
    use super::probe::*;
    use super::registry::*;
    use super::serve::*;
    use super::*;
    use libublk::sys;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.12.117+deb12-amd64"), Some((6, 12)));
        assert_eq!(parse_kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_kernel_version("junk"), None);
    }

    #[test]
    fn recorded_specs_are_absolute() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r0");
        std::fs::write(&f, b"x").unwrap();
        let canon = f.canonicalize().unwrap().display().to_string();
        assert_eq!(absolute_spec(f.to_str().unwrap()), canon);
        assert_eq!(
            absolute_spec(&format!("emu:gc-heavy:{}", f.display())),
            format!("emu:gc-heavy:{canon}")
        );
        let rel = absolute_spec("emu:gc-heavy:some/rel.img");
        assert!(rel.starts_with("emu:gc-heavy:/") && rel.ends_with("some/rel.img"));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(256 << 20), "256 MiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(512), "512 B");
    }

    #[test]
    fn recorded_round_trips_through_the_json() {
        let rec = Recorded {
            replicas: vec!["emu:gc-heavy:/tmp/a".into(), "/tmp/b".into()],
            policy: "linnos".into(),
            model: "default".into(),
            size: 1 << 30,
            block_size: 4096,
            array_id: Some("0123456789abcdef0123456789abcdef".into()),
        };
        let v = serde_json::json!({
            "target": {"tgt_type": TARGET_NAME, "dev_size": 1u64 << 30},
            "target_data": {TARGET_NAME: rec},
        });
        assert!(is_augur_json(&v));
        assert_eq!(recorded_from_json(&v), Some(rec));
    }

    #[test]
    fn params_advertise_discard_and_write_zeroes() {
        let p = device_params(&Geometry {
            queues: 1,
            depth: 64,
            block_size: 4096,
            size: 1 << 30,
        });
        assert_eq!(p.basic.logical_bs_shift, 12);
        assert_eq!(p.basic.dev_sectors, (1 << 30) >> 9);
        assert_ne!(p.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        assert_eq!(p.discard.max_discard_segments, 1);
        assert!(p.discard.max_write_zeroes_sectors > 0);
        assert_ne!(p.basic.attrs & sys::UBLK_ATTR_VOLATILE_CACHE, 0);
    }

    #[test]
    fn list_renders_a_header_and_rows() {
        let d = DeviceStatus {
            id: 0,
            path: "/dev/ublkb0".into(),
            pid: 42,
            daemon_running: false,
            state: "QUIESCED".into(),
            queues: 1,
            depth: 64,
            size: 256 << 20,
            block_size: 4096,
            policy: "hedge".into(),
            model: "default".into(),
            replicas: vec!["/a".into(), "/b".into()],
            socket: Some("/run/augur/ublk0.sock".into()),
            model_id: Some("f8e73f51".into()),
        };
        let t = render_list(&[d]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID"));
        assert!(lines[1].contains("42 (gone)") && lines[1].contains("QUIESCED"));
        assert!(lines[1].contains("256 MiB") && lines[1].ends_with("/a,/b"));
        assert!(lines[0].contains("MODEL") && lines[1].contains(" f8e73f51 "));
    }
}

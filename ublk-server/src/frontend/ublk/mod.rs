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
//! so the new read completes at once. No wake-up is lost. As a safety net
//! (and a probe) a 100 ms timeout also sits in the libublk ring while array
//! requests run; a timer wake-up that finds finished requests the eventfd did
//! not report is counted and logged as a warning.
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

use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use augur_feature_store::Op;
use io_uring::{opcode, types};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::{UblkDev, UblkQueue};
use libublk::{BufDesc, BufDescList, UblkError, UblkFlags, UblkIORes, UblkUringData, sys};
use serde::{Deserialize, Serialize};

use crate::array::AlignedBuf;
use crate::array::ArrayError;
use crate::array::{Array, ArrayConfig, ArrayStats, Completion, Queue, Request};
use crate::route::Policy;

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

/// `user_data` of the eventfd read in the libublk ring: the target-I/O bit
/// (so libublk does not count it as a ublk command) and tag 0xffff.
const EVENTFD_USER_DATA: u64 = UblkUringData::Target as u64 | 0xffff;
/// `user_data` of the safety timer in the libublk ring (tag 0xfffe).
const TIMER_USER_DATA: u64 = UblkUringData::Target as u64 | 0xfffe;
/// While array requests run, the queue thread also wakes this often on its
/// own, so a completion whose eventfd wake-up went missing waits at most
/// this long (libublk's own idle timeout is 20 s). Such finds are counted.
const SAFETY_TIMER: Duration = Duration::from_millis(100);
/// Entries of each array queue's ring per ublk tag (replica copies, delays).
const RING_ENTRIES_PER_TAG: u32 = 4;
/// How long a queue waits at exit for array requests still running.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
fn ublk_cause(e: &UblkError) -> String {
    match e {
        UblkError::OtherError(n) | UblkError::UringIOError(n) if *n < 0 => {
            std::io::Error::from_raw_os_error(-n).to_string()
        }
        UblkError::IOError(io) => io.to_string(),
        other => other.to_string(),
    }
}

fn ublk_errno(e: &UblkError) -> Option<i32> {
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
    /// The model the policy uses (recorded for `augur list` and recovery).
    pub model: String,
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

// ---------------------------------------------------------------------------
// Is ublk here?

/// `None` when ublk can be used here; otherwise one line saying why not and
/// what to use instead.
pub fn unavailable_reason() -> Option<String> {
    const FALLBACK: &str = "use `augur fuse` instead";
    let release = kernel_release();
    if Path::new(CONTROL_PATH).exists() {
        return match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL_PATH)
        {
            Ok(_) => None,
            Err(e) if e.kind() == ErrorKind::PermissionDenied => Some(format!(
                "ublk is not usable: cannot open {CONTROL_PATH}: {e} (creating ublk devices needs root); {FALLBACK}"
            )),
            Err(e) => Some(format!(
                "ublk is not usable: cannot open {CONTROL_PATH}: {e}; {FALLBACK}"
            )),
        };
    }
    let version = parse_kernel_version(&release);
    let reason = if version.is_some_and(|v| v < (6, 0)) {
        format!("kernel {release} is too old for ublk (it needs Linux 6.0 or later)")
    } else if Path::new("/sys/module/ublk_drv").exists() {
        format!(
            "the ublk_drv module is loaded but {CONTROL_PATH} is missing (a container without the device node?)"
        )
    } else if module_available(&release) {
        format!("{CONTROL_PATH} is missing: the ublk_drv module is not loaded (modprobe ublk_drv)")
    } else {
        format!(
            "{CONTROL_PATH} is missing: kernel {release} has no ublk driver (CONFIG_BLK_DEV_UBLK) and no ublk_drv module"
        )
    };
    Some(format!("ublk is not available: {reason}; {FALLBACK}"))
}

fn check_available() -> Result<(), ServeError> {
    match unavailable_reason() {
        None => Ok(()),
        Some(msg) => Err(ServeError::Unavailable(msg)),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "(unknown)".into())
}

fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

fn module_available(release: &str) -> bool {
    let dir = Path::new("/lib/modules")
        .join(release)
        .join("kernel/drivers/block");
    [
        "ublk_drv.ko",
        "ublk_drv.ko.xz",
        "ublk_drv.ko.zst",
        "ublk_drv.ko.gz",
    ]
    .iter()
    .any(|f| dir.join(f).exists())
}

// ---------------------------------------------------------------------------
// Device JSON (libublk's export under /run/ublksrvd)

fn json_path(id: u32) -> PathBuf {
    PathBuf::from(format!("{}/{id:04}.json", UblkCtrl::run_dir()))
}

fn read_json(id: u32) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(json_path(id)).ok()?;
    serde_json::from_str(&text).ok()
}

fn is_augur_json(v: &serde_json::Value) -> bool {
    v["target"]["tgt_type"].as_str() == Some(TARGET_NAME)
}

fn recorded_from_json(v: &serde_json::Value) -> Option<Recorded> {
    serde_json::from_value(v["target_data"][TARGET_NAME].clone()).ok()
}

fn device_exists(id: u32) -> bool {
    Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists()
}

/// Ids of the ublk devices the kernel has (ascending).
fn device_ids() -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir("/sys/class/ublk-char")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("ublkc"))
                        .and_then(|n| n.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// The JSON of Augur device `id`, or a clear error if there is no such device
/// or it is not Augur's.
fn augur_json(id: u32) -> Result<serde_json::Value, ServeError> {
    if !device_exists(id) {
        return Err(ServeError::BadInput(format!(
            "there is no ublk device {id} (augur list shows Augur's devices)"
        )));
    }
    let v = read_json(id).ok_or_else(|| {
        ServeError::BadInput(format!(
            "ublk device {id} has no state in {} (not created by augur serve?)",
            UblkCtrl::run_dir()
        ))
    })?;
    if !is_augur_json(&v) {
        return Err(ServeError::BadInput(format!(
            "ublk device {id} is not an Augur device (target {})",
            v["target"]["tgt_type"]
        )));
    }
    Ok(v)
}

/// What Augur recorded about device `id` when it created it: the replicas,
/// policy and model that `serve --recover` reuses when not given again.
pub fn recorded(id: u32) -> Result<Recorded, ServeError> {
    check_available()?;
    let v = augur_json(id)?;
    recorded_from_json(&v).ok_or_else(|| {
        ServeError::BadInput(format!(
            "ublk device {id}: {} has no Augur target data",
            json_path(id).display()
        ))
    })
}

fn state_name(state: u16) -> String {
    match state as u32 {
        sys::UBLK_S_DEV_DEAD => "DEAD".into(),
        sys::UBLK_S_DEV_LIVE => "LIVE".into(),
        sys::UBLK_S_DEV_QUIESCED => "QUIESCED".into(),
        sys::UBLK_S_DEV_FAIL_IO => "FAIL_IO".into(),
        s => format!("STATE{s}"),
    }
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

// ---------------------------------------------------------------------------
// augur list

/// One of Augur's ublk devices, as [`list`] reports it.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceStatus {
    /// Device id (N of /dev/ublkbN).
    pub id: u32,
    /// The block device.
    pub path: String,
    /// Pid of the daemon serving (or last serving) it.
    pub pid: i32,
    /// Whether that process still exists.
    pub daemon_running: bool,
    /// Driver state: LIVE, QUIESCED (daemon gone, I/O waits), FAIL_IO, DEAD.
    pub state: String,
    /// Number of queues.
    pub queues: u16,
    /// Tags per queue.
    pub depth: u16,
    /// Size in bytes.
    pub size: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Routing policy.
    pub policy: String,
    /// Model of the linnos policies.
    pub model: String,
    /// Replica specs.
    pub replicas: Vec<String>,
}

/// Augur's ublk devices, by id.
pub fn list() -> Result<Vec<DeviceStatus>, ServeError> {
    check_available()?;
    let mut out = Vec::new();
    for id in device_ids() {
        let Some(v) = read_json(id) else { continue };
        if !is_augur_json(&v) {
            continue;
        }
        let Ok(ctrl) = UblkCtrl::new_simple(id as i32) else {
            continue; // deleted meanwhile
        };
        let info = ctrl.dev_info();
        let rec = recorded_from_json(&v);
        let size = v["target"]["dev_size"]
            .as_u64()
            .or(rec.as_ref().map(|r| r.size))
            .unwrap_or(0);
        out.push(DeviceStatus {
            id,
            path: ctrl.get_bdev_path(),
            pid: info.ublksrv_pid,
            daemon_running: pid_alive(info.ublksrv_pid),
            state: state_name(info.state),
            queues: info.nr_hw_queues,
            depth: info.queue_depth,
            size,
            block_size: rec.as_ref().map(|r| r.block_size).unwrap_or(0),
            policy: rec.as_ref().map(|r| r.policy.clone()).unwrap_or_default(),
            model: rec.as_ref().map(|r| r.model.clone()).unwrap_or_default(),
            replicas: rec.map(|r| r.replicas).unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Sizes like `256 MiB`, `1 GiB`, `1.5 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The table `augur list` prints: a header, then one line per device.
pub fn render_list(devs: &[DeviceStatus]) -> String {
    let mut s = format!(
        "{:<3} {:<13} {:<14} {:<9} {:>6} {:>5} {:>10} {:>5}  {:<13} REPLICAS\n",
        "ID", "DEVICE", "DAEMON", "STATE", "QUEUES", "DEPTH", "SIZE", "BS", "POLICY"
    );
    for d in devs {
        let daemon = if d.daemon_running {
            d.pid.to_string()
        } else {
            format!("{} (gone)", d.pid)
        };
        s.push_str(&format!(
            "{:<3} {:<13} {:<14} {:<9} {:>6} {:>5} {:>10} {:>5}  {:<13} {}\n",
            d.id,
            d.path,
            daemon,
            d.state,
            d.queues,
            d.depth,
            human_size(d.size),
            d.block_size,
            d.policy,
            d.replicas.join(",")
        ));
    }
    s
}

// ---------------------------------------------------------------------------
// augur stop

/// What [`stop`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// The daemon was asked to stop (SIGTERM) and removed the device.
    Stopped {
        /// The block device.
        path: String,
        /// The daemon's pid.
        pid: i32,
    },
    /// The daemon was gone; the device was deleted (I/O waiting on it failed).
    Deleted {
        /// The block device.
        path: String,
    },
}

/// Stops Augur device `id`: SIGTERM to its daemon, then waits up to
/// `timeout` for the device to go; a device whose daemon is gone is deleted.
pub fn stop(id: u32, timeout: Duration) -> Result<StopOutcome, ServeError> {
    check_available()?;
    augur_json(id)?;
    let ctrl = UblkCtrl::new_simple(id as i32)
        .map_err(|e| ServeError::ublk(format!("reading ublk device {id}"), &e))?;
    let info = ctrl.dev_info();
    let path = ctrl.get_bdev_path();
    let pid = info.ublksrv_pid;
    if info.state as u32 == sys::UBLK_S_DEV_LIVE && pid_alive(pid) {
        // SAFETY: sending a signal to a pid has no memory-safety preconditions.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(ServeError::Ublk {
                what: format!("signalling daemon {pid} of {path}"),
                cause: e.to_string(),
            });
        }
        let deadline = Instant::now() + timeout;
        while device_exists(id) {
            if Instant::now() >= deadline {
                return Err(ServeError::Ublk {
                    what: format!("stopping {path}"),
                    cause: format!(
                        "daemon {pid} did not remove it within {}s (kill -9 {pid}, then augur stop --id {id} again)",
                        timeout.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(StopOutcome::Stopped { path, pid });
    }
    ctrl.del_dev()
        .map_err(|e| ServeError::ublk(format!("deleting {path}"), &e))?;
    let _ = std::fs::remove_file(json_path(id));
    Ok(StopOutcome::Deleted { path })
}

// ---------------------------------------------------------------------------
// augur serve

/// Everything the signal thread, the main thread and the queue threads share.
struct Shared {
    /// A stop was requested (signal).
    stop: AtomicBool,
    /// Set once the device is live; guards the stop/live handshake.
    live: Mutex<bool>,
    /// The control handle once the device exists.
    ctrl: Mutex<Option<Arc<UblkCtrl>>>,
    /// Why a queue thread could not start.
    queue_error: Mutex<Option<String>>,
}

impl Shared {
    fn queue_failed(&self, dev: &UblkDev, msg: String) {
        tracing::error!("{msg}");
        let mut e = self.queue_error.lock().unwrap_or_else(|p| p.into_inner());
        e.get_or_insert(msg);
        drop(e);
        // Wakes start_dev, which then fails instead of waiting for this queue.
        dev.notify_buffer_registration_complete(true);
    }
}

/// One queue's array side, made before the device exists.
struct QueueSetup {
    array: Queue,
    efd: OwnedFd,
}

/// Serves the array as a ublk block device until SIGINT/SIGTERM (or until
/// the device is removed from outside), then deletes the device and returns
/// the counters.
///
/// Opens the array first (bad input comes back as [`ServeError::Array`] with
/// nothing created), then checks for ublk. Prints the device path as the
/// first line on stdout once the device is live. Replica files this call
/// created are removed again when the device never came up.
pub fn serve(
    cfg: ArrayConfig,
    policy: Policy,
    opts: &ServeOptions,
) -> Result<ServeSummary, ServeError> {
    check_options(opts)?;
    let created = cfg.files_to_create();
    let array = Array::open(cfg, policy)?;
    let result = serve_array(&array, opts);
    if matches!(result, Err((false, _))) {
        drop(array);
        for p in &created {
            let _ = std::fs::remove_file(p);
        }
    }
    result.map_err(|(_, e)| e)
}

fn check_options(opts: &ServeOptions) -> Result<(), ServeError> {
    if let Some(q) = opts.queues
        && !(1..=MAX_QUEUES).contains(&q)
    {
        return Err(ServeError::BadInput(format!(
            "--queues {q} must be between 1 and {MAX_QUEUES}"
        )));
    }
    if let Some(d) = opts.depth
        && !(1..=MAX_DEPTH).contains(&d)
    {
        return Err(ServeError::BadInput(format!(
            "--depth {d} must be between 1 and {MAX_DEPTH}"
        )));
    }
    if let Some(b) = opts.block_size
        && b != 512
        && b != 4096
    {
        return Err(ServeError::BadInput(format!(
            "--block-size {b} must be 512 or 4096"
        )));
    }
    if opts.recover && opts.id.is_none() {
        return Err(ServeError::BadInput("--recover needs --id N".into()));
    }
    if let Some(id) = opts.id
        && id > i32::MAX as u32
    {
        return Err(ServeError::BadInput(format!("--id {id} is too large")));
    }
    Ok(())
}

/// The device geometry to serve with.
struct Geometry {
    queues: u16,
    depth: u16,
    block_size: u32,
    size: u64,
}

/// Err((true, e)): the device came up (or was being recovered), so replica
/// files are in use; Err((false, e)): nothing was created.
fn serve_array(array: &Array, opts: &ServeOptions) -> Result<ServeSummary, (bool, ServeError)> {
    let fail = |e| (false, e);
    check_available().map_err(fail)?;
    if let (false, Some(id)) = (opts.recover, opts.id)
        && device_exists(id)
    {
        // Checked here because libublk deletes the device of a failed ADD
        // by id, which would be the other daemon's device.
        return Err(fail(ServeError::BadInput(format!(
            "ublk device {id} already exists (augur list; augur serve --recover --id {id} if its daemon died)"
        ))));
    }
    let size = array.size();
    let rec_now = Recorded {
        replicas: array
            .replica_status()
            .into_iter()
            .map(|r| absolute_spec(&r.spec))
            .collect(),
        policy: array.policy().name().to_string(),
        model: if opts.model == "default" {
            opts.model.clone()
        } else {
            absolute(&opts.model)
        },
        size,
        block_size: opts.block_size.unwrap_or(4096),
    };

    // Recovery: everything is checked before the driver is told anything.
    let probe = match (opts.recover, opts.id) {
        (true, Some(id)) => Some(check_recoverable(id, array, opts).map_err(fail)?),
        _ => None,
    };
    let geo = match &probe {
        Some(p) => Geometry {
            queues: p.info.nr_hw_queues,
            depth: p.info.queue_depth,
            block_size: p.block_size,
            size,
        },
        None => Geometry {
            queues: opts.queues.unwrap_or(1),
            depth: opts.depth.unwrap_or(64),
            block_size: opts.block_size.unwrap_or(4096),
            size,
        },
    };
    if geo.size % geo.block_size as u64 != 0 {
        return Err(fail(ServeError::BadInput(format!(
            "device size {size} is not a multiple of the block size {}",
            geo.block_size
        ))));
    }
    let rec_now = Recorded {
        block_size: geo.block_size,
        ..rec_now
    };

    // The array side of every queue, before any device exists.
    let ring_entries = (geo.depth as u32 * RING_ENTRIES_PER_TAG)
        .next_power_of_two()
        .clamp(64, 4096);
    let mut setups = Vec::with_capacity(geo.queues as usize);
    for qid in 0..geo.queues {
        let mut q = array
            .queue(qid as u32, ring_entries)
            .map_err(|e| fail(e.into()))?;
        q.keep_released(true);
        // Blocking on purpose: io_uring then waits for it to become readable
        // instead of failing the read with EAGAIN.
        // SAFETY: eventfd has no memory-safety preconditions; the returned fd
        // is checked and then owned by OwnedFd.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(fail(ServeError::Setup {
                what: "creating an eventfd",
                source: std::io::Error::last_os_error(),
            }));
        }
        // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        q.register_eventfd(efd.as_raw_fd()).map_err(|e| {
            fail(ServeError::Setup {
                what: "registering the eventfd on an array ring",
                source: e,
            })
        })?;
        setups.push(Some(QueueSetup { array: q, efd }));
    }

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        live: Mutex::new(false),
        ctrl: Mutex::new(None),
        queue_error: Mutex::new(None),
    });
    let old_mask = block_stop_signals().map_err(|e| {
        fail(ServeError::Setup {
            what: "blocking SIGINT/SIGTERM",
            source: e,
        })
    })?;
    let result = run_device(array, opts, &geo, rec_now, probe, setups, &shared);
    restore_signals(&old_mask);
    result
}

/// `path` made absolute (canonical when it exists), so a record stays valid
/// from any working directory.
fn absolute(path: &str) -> String {
    let p = Path::new(path);
    match p.canonicalize() {
        Ok(c) => c.display().to_string(),
        Err(_) if p.is_relative() => std::env::current_dir()
            .map(|d| d.join(p).display().to_string())
            .unwrap_or_else(|_| path.to_string()),
        Err(_) => path.to_string(),
    }
}

/// A replica spec with its paths (and a profile file's) made absolute.
fn absolute_spec(spec: &str) -> String {
    match spec.strip_prefix("emu:").and_then(|r| r.split_once(':')) {
        Some((profile, path)) => {
            let profile = if profile.ends_with(".toml") {
                absolute(profile)
            } else {
                profile.to_string()
            };
            format!("emu:{profile}:{}", absolute(path))
        }
        None => absolute(spec),
    }
}

/// What [`check_recoverable`] learned about the device.
struct RecoverProbe {
    info: sys::ublksrv_ctrl_dev_info,
    block_size: u32,
}

fn check_recoverable(
    id: u32,
    array: &Array,
    opts: &ServeOptions,
) -> Result<RecoverProbe, ServeError> {
    let v = augur_json(id)?;
    let ctrl = UblkCtrl::new_simple(id as i32)
        .map_err(|e| ServeError::ublk(format!("reading ublk device {id}"), &e))?;
    let mut info = ctrl.dev_info();
    if info.flags & sys::UBLK_F_USER_RECOVERY as u64 == 0 {
        return Err(ServeError::BadInput(format!(
            "ublk device {id} was created without user recovery; remove it with augur stop --id {id}"
        )));
    }
    // The driver notices a dead daemon shortly after it exits.
    let deadline = Instant::now() + Duration::from_secs(5);
    while info.state as u32 == sys::UBLK_S_DEV_LIVE
        && !pid_alive(info.ublksrv_pid)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        if ctrl.read_dev_info().is_ok() {
            info = ctrl.dev_info();
        }
    }
    if info.state as u32 != sys::UBLK_S_DEV_QUIESCED {
        let why = if info.state as u32 == sys::UBLK_S_DEV_LIVE {
            format!("its daemon (pid {}) is running", info.ublksrv_pid)
        } else {
            format!("it is {}", state_name(info.state))
        };
        return Err(ServeError::BadInput(format!(
            "ublk device {id} cannot be recovered: {why}"
        )));
    }
    let dev_size = v["target"]["dev_size"].as_u64().unwrap_or(0);
    if dev_size != array.size() {
        return Err(ServeError::BadInput(format!(
            "the replicas hold {} bytes but ublk device {id} has {dev_size}",
            array.size()
        )));
    }
    let shift = v["target"]["params"]["basic"]["logical_bs_shift"]
        .as_u64()
        .unwrap_or(12);
    let block_size = 1u32 << shift.min(12);
    for (flag, have, want) in [
        (
            "--queues",
            opts.queues.map(u32::from),
            info.nr_hw_queues as u32,
        ),
        (
            "--depth",
            opts.depth.map(u32::from),
            info.queue_depth as u32,
        ),
        ("--block-size", opts.block_size, block_size),
    ] {
        if let Some(h) = have
            && h != want
        {
            return Err(ServeError::BadInput(format!(
                "{flag} {h} does not match ublk device {id} ({want}); leave it out when recovering"
            )));
        }
    }
    Ok(RecoverProbe { info, block_size })
}

fn block_stop_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset/sigaddset;
    // pthread_sigmask only reads `set` and writes `old`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let mut old: libc::sigset_t = std::mem::zeroed();
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(old)
    }
}

fn restore_signals(old: &libc::sigset_t) {
    // SAFETY: `old` came from pthread_sigmask; a null `oldset` is allowed.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
    }
}

/// The signal thread: waits for SIGINT/SIGTERM (blocked in every other
/// thread), then stops the device once it is live; a second signal exits.
fn spawn_signal_thread(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("augur-signals".into())
        .spawn(move || {
            let mut first = true;
            loop {
                // SAFETY: as in block_stop_signals; sigwait writes `sig`.
                let sig = unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGINT);
                    libc::sigaddset(&mut set, libc::SIGTERM);
                    let mut sig: libc::c_int = 0;
                    if libc::sigwait(&set, &mut sig) != 0 {
                        continue;
                    }
                    sig
                };
                if !first {
                    let id = shared
                        .ctrl
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .map(|c| c.dev_info().dev_id);
                    match id {
                        Some(id) => eprintln!(
                            "augur serve: second signal {sig}: exiting now; the device stays (augur serve --recover --id {id}, or augur stop --id {id})"
                        ),
                        None => eprintln!("augur serve: second signal {sig}: exiting now"),
                    }
                    std::process::exit(1);
                }
                first = false;
                tracing::info!("signal {sig}: stopping the device");
                let live = {
                    let live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
                    shared.stop.store(true, Ordering::SeqCst);
                    *live
                };
                if live {
                    let ctrl = shared
                        .ctrl
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    if let Some(c) = ctrl {
                        kill_from_this_thread(&c);
                    }
                }
            }
        })
        .map(|_| ())
}

/// Stops the device from a thread that has no libublk control ring yet.
fn kill_from_this_thread(ctrl: &UblkCtrl) {
    let init = libublk::ublk_init_ctrl_task_ring(|ring| {
        if ring.is_none() {
            *ring = Some(
                io_uring::IoUring::<io_uring::squeue::Entry128>::builder()
                    .build(16)
                    .map_err(UblkError::IOError)?,
            );
        }
        Ok(())
    });
    if let Err(e) = init {
        tracing::error!("cannot stop the device: {}", ublk_cause(&e));
        return;
    }
    if let Err(e) = ctrl.kill_dev() {
        tracing::error!("stopping the device: {}", ublk_cause(&e));
    }
}

fn device_params(geo: &Geometry) -> sys::ublk_params {
    let bs_shift = geo.block_size.trailing_zeros() as u8;
    sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        basic: sys::ublk_param_basic {
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE,
            logical_bs_shift: bs_shift,
            physical_bs_shift: 12,
            io_opt_shift: 12,
            io_min_shift: bs_shift,
            max_sectors: IO_BUF_BYTES >> 9,
            dev_sectors: geo.size >> 9,
            ..Default::default()
        },
        discard: sys::ublk_param_discard {
            discard_alignment: 0,
            discard_granularity: geo.block_size,
            max_discard_sectors: MAX_DISCARD_BYTES >> 9,
            max_write_zeroes_sectors: MAX_WRITE_ZEROES_BYTES >> 9,
            max_discard_segments: 1,
            reserved0: 0,
        },
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn run_device(
    array: &Array,
    opts: &ServeOptions,
    geo: &Geometry,
    rec: Recorded,
    probe: Option<RecoverProbe>,
    setups: Vec<Option<QueueSetup>>,
    shared: &Arc<Shared>,
) -> Result<ServeSummary, (bool, ServeError)> {
    let recovering = probe.is_some();
    // Before the driver is touched, a failure leaves nothing behind.
    let fail = |e| (false, e);
    spawn_signal_thread(shared.clone()).map_err(|e| {
        fail(ServeError::Setup {
            what: "starting the signal thread",
            source: e,
        })
    })?;

    let ctrl = match (&probe, opts.id) {
        (Some(p), Some(id)) => {
            let old = UblkCtrl::new_simple(id as i32)
                .map_err(|e| fail(ServeError::ublk(format!("reading ublk device {id}"), &e)))?;
            old.start_user_recover().map_err(|e| {
                fail(ServeError::ublk(
                    format!("starting recovery of ublk device {id}"),
                    &e,
                ))
            })?;
            drop(old);
            UblkCtrlBuilder::default()
                .name(TARGET_NAME)
                .id(id as i32)
                .nr_queues(p.info.nr_hw_queues)
                .depth(p.info.queue_depth)
                .io_buf_bytes(p.info.max_io_buf_bytes)
                .ctrl_flags(p.info.flags & (sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE) as u64)
                .dev_flags(UblkFlags::UBLK_DEV_F_RECOVER_DEV)
                .build()
                .map_err(|e| {
                    // Recovery started: the device waits for another try.
                    (
                        true,
                        ServeError::ublk(format!("recovering ublk device {id}"), &e),
                    )
                })?
        }
        _ => UblkCtrlBuilder::default()
            .name(TARGET_NAME)
            .id(opts.id.map(|i| i as i32).unwrap_or(-1))
            .nr_queues(geo.queues)
            .depth(geo.depth)
            .io_buf_bytes(IO_BUF_BYTES)
            .ctrl_flags((sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE) as u64)
            .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
            .build()
            .map_err(|e| match (ublk_errno(&e), opts.id) {
                (Some(libc::EEXIST), Some(id)) => fail(ServeError::BadInput(format!(
                    "ublk device {id} already exists (augur list; augur serve --recover --id {id} if its daemon died)"
                ))),
                _ => fail(ServeError::ublk("creating the ublk device", &e)),
            })?,
    };
    let ctrl = Arc::new(ctrl);
    let id = ctrl.dev_info().dev_id;
    *shared.ctrl.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctrl.clone());
    // From here on a failure deletes a new device (UblkCtrl's drop) and
    // leaves a recovering one waiting for another try.
    let fail_dev = |e| (recovering, e);
    if shared.stop.load(Ordering::SeqCst) {
        drop_ctrl(shared, ctrl, recovering);
        return Err(fail_dev(ServeError::BadInput(
            "stopped by a signal before the device went live".into(),
        )));
    }

    let params = device_params(geo);
    let depth = geo.depth;
    let size = geo.size;
    let rec_json = serde_json::json!({ TARGET_NAME: rec.clone() });
    let tgt_init = move |dev: &mut UblkDev| -> Result<(), UblkError> {
        dev.tgt.dev_size = size;
        dev.tgt.params = params;
        // Room for every tag's command plus the eventfd poll.
        dev.tgt.sq_depth = depth.saturating_mul(2);
        dev.tgt.cq_depth = depth.saturating_mul(2);
        dev.set_target_json(rec_json);
        Ok(())
    };

    let setups = Arc::new(Mutex::new(setups));
    let q_shared = shared.clone();
    let q_fn = move |qid: u16, dev: &UblkDev| {
        let setup = setups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(qid as usize)
            .and_then(Option::take);
        let Some(setup) = setup else {
            q_shared.queue_failed(dev, format!("queue {qid}: no array queue"));
            return;
        };
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_queue(qid, dev, setup, &q_shared)
        }));
        if run.is_err() {
            // This queue's requests can no longer be answered, so stopping
            // the device would wait for them forever. Exit instead: the
            // device keeps its I/O waiting for `--recover`.
            eprintln!(
                "augur serve: queue {qid} panicked; exiting (the device stays: augur serve --recover --id {}, or augur stop --id {})",
                dev.dev_info.dev_id, dev.dev_info.dev_id
            );
            std::process::exit(1);
        }
    };

    let dev_shared = shared.clone();
    let rec_for_json = rec.clone();
    let path_slot = Arc::new(Mutex::new(String::new()));
    let path_out = path_slot.clone();
    let device_fn = move |c: &UblkCtrl| {
        let path = c.get_bdev_path();
        if recovering {
            update_recorded(c.dev_info().dev_id, &rec_for_json);
        }
        // devtmpfs makes the node right away; udev may take a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !Path::new(&path).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{path}");
            let _ = out.flush();
        }
        *path_out.lock().unwrap_or_else(|p| p.into_inner()) = path.clone();
        let stop_now = {
            let mut live = dev_shared.live.lock().unwrap_or_else(|p| p.into_inner());
            *live = true;
            dev_shared.stop.load(Ordering::SeqCst)
        };
        if stop_now && let Err(e) = c.kill_dev() {
            tracing::error!("stopping the device: {}", ublk_cause(&e));
        }
    };

    tracing::info!(
        "{} ublk device {id}: {} bytes, {} queue(s) x {} tags, block size {}, {} replicas, policy {}",
        if recovering { "recovering" } else { "created" },
        geo.size,
        geo.queues,
        geo.depth,
        geo.block_size,
        array.replica_count(),
        array.policy().name()
    );
    let run = ctrl.run_target(tgt_init, q_fn, device_fn);
    if let Err(e) = run {
        let why = shared
            .queue_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| ublk_cause(&e));
        let err = ServeError::Ublk {
            what: format!(
                "{} ublk device {id}",
                if recovering { "recovering" } else { "starting" }
            ),
            cause: why,
        };
        drop_ctrl(shared, ctrl, recovering);
        return Err(fail_dev(err));
    }
    // The queues are done: the device was stopped. Delete it.
    if let Err(e) = ctrl.del_dev()
        && ublk_errno(&e) != Some(libc::ENOENT)
    {
        tracing::warn!("deleting ublk device {id}: {}", ublk_cause(&e));
    }
    let _ = std::fs::remove_file(json_path(id));
    let path = path_slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
    *shared.ctrl.lock().unwrap_or_else(|p| p.into_inner()) = None;
    Ok(ServeSummary {
        path: if path.is_empty() {
            format!("/dev/ublkb{id}")
        } else {
            path
        },
        stats: array.stats(),
    })
}

/// Lets go of the control handle: a new device is deleted by its drop; a
/// device being recovered is left for another `--recover`.
fn drop_ctrl(shared: &Shared, ctrl: Arc<UblkCtrl>, keep: bool) {
    *shared.ctrl.lock().unwrap_or_else(|p| p.into_inner()) = None;
    if keep {
        ctrl.disown();
    }
    drop(ctrl);
}

/// Rewrites Augur's record in the device JSON (after a recovery, which
/// keeps the JSON of the first daemon).
fn update_recorded(id: u32, rec: &Recorded) {
    let Some(mut v) = read_json(id) else { return };
    v["target_data"] = serde_json::json!({ TARGET_NAME: rec });
    let path = json_path(id);
    if let Err(e) = std::fs::write(&path, v.to_string()) {
        tracing::warn!("updating {}: {e}", path.display());
    }
}

// ---------------------------------------------------------------------------
// The queue threads

/// One tag's state.
struct TagSlot {
    /// The tag's full-size buffer; `None` while it travels in an array request.
    buf: Option<AlignedBuf>,
    /// The buffer address the kernel holds for this tag: it copies the next
    /// write's data there.
    kernel_addr: *const u8,
    /// The operation in flight and its length.
    op: Op,
    len: u32,
}

/// A queue thread's state besides the libublk queue itself.
struct QueueLoop {
    qid: u16,
    array: Queue,
    efd: OwnedFd,
    /// Where the eventfd read lands: leaked, so it stays valid for as long
    /// as the kernel may write to it (until the ring is gone).
    efd_buf: *mut u64,
    tags: Vec<TagSlot>,
    /// Full-size buffers the array released, for hedged reads that won.
    spares: Vec<AlignedBuf>,
    done: Vec<Completion>,
    cqes: Vec<(u64, i32)>,
    max_io: usize,
    read_armed: bool,
    /// The safety timer: pending in the ring, and its timespec (read by the
    /// kernel when the timeout is submitted, boxed so it stays put).
    timer_armed: bool,
    timer_ts: Box<types::Timespec>,
    /// Wake-ups of the safety timer alone that found finished array requests.
    timer_finds: u64,
    wakeups: u64,
    batches: u64,
    biggest_batch: usize,
    /// Requests finished after the kernel took the queue's commands back
    /// (their answers cannot be delivered).
    unanswered: usize,
}

fn run_queue(qid: u16, dev: &UblkDev, setup: QueueSetup, shared: &Shared) {
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => q,
        Err(e) => {
            shared.queue_failed(dev, format!("ublk queue {qid}: {}", ublk_cause(&e)));
            return;
        }
    };
    // libublk's per-tag buffers: named by the first FETCH of each tag, then
    // replaced by the tag's own buffer at its first commit. They must outlive
    // the queue's commands, i.e. this function.
    let reg_bufs = dev.alloc_queue_io_bufs();
    let max_io = dev.dev_info.max_io_buf_bytes as usize;
    let depth = dev.dev_info.queue_depth as usize;
    let tags: Vec<TagSlot> = (0..depth)
        .map(|t| TagSlot {
            buf: Some(AlignedBuf::new(max_io)),
            kernel_addr: reg_bufs[t].as_ptr(),
            op: Op::Flush,
            len: 0,
        })
        .collect();
    let q = match q.submit_fetch_commands_unified(BufDescList::Slices(Some(&reg_bufs))) {
        Ok(q) => q,
        Err(e) => {
            shared.queue_failed(dev, format!("ublk queue {qid}: {}", ublk_cause(&e)));
            return;
        }
    };
    let mut lp = QueueLoop {
        qid,
        array: setup.array,
        efd: setup.efd,
        efd_buf: Box::into_raw(Box::new(0u64)),
        tags,
        spares: Vec::new(),
        done: Vec::new(),
        cqes: Vec::with_capacity(depth + 1),
        max_io,
        read_armed: false,
        timer_armed: false,
        timer_ts: Box::new(
            types::Timespec::new()
                .sec(SAFETY_TIMER.as_secs())
                .nsec(SAFETY_TIMER.subsec_nanos()),
        ),
        timer_finds: 0,
        wakeups: 0,
        batches: 0,
        biggest_batch: 0,
        unanswered: 0,
    };
    lp.arm_read(&q);
    lp.run(&q);
    lp.drain();
    tracing::info!(
        "queue {qid}: {} wake-ups, {} with new requests, up to {} requests routed in one batch",
        lp.wakeups,
        lp.batches,
        lp.biggest_batch
    );
    if lp.timer_finds > 0 {
        tracing::warn!(
            "queue {qid}: {} time(s) finished replica I/O was found by the {} ms safety timer, not by its eventfd wake-up",
            lp.timer_finds,
            SAFETY_TIMER.as_millis()
        );
    }
    if lp.unanswered > 0 {
        tracing::warn!(
            "queue {qid}: {} request(s) finished after the device had taken them back",
            lp.unanswered
        );
    }
    // Drop order: the array queue waits for its replica I/O, then the tag
    // buffers, the libublk queue and its registration buffers go.
    drop(lp);
    drop(q);
    drop(reg_bufs);
}

impl QueueLoop {
    /// Queues a read of the eventfd in the libublk ring: it completes (and
    /// empties the counter) once the array ring has posted a completion.
    fn arm_read(&mut self, q: &UblkQueue) {
        let sqe = opcode::Read::new(types::Fd(self.efd.as_raw_fd()), self.efd_buf.cast(), 8)
            .build()
            .user_data(EVENTFD_USER_DATA);
        match q.ublk_submit_sqe_sync(sqe) {
            Ok(()) => self.read_armed = true,
            Err(e) => tracing::error!(
                "queue {}: cannot arm the eventfd read: {}",
                self.qid,
                ublk_cause(&e)
            ),
        }
    }

    fn run(&mut self, q: &UblkQueue) {
        loop {
            self.cqes.clear();
            let cqes = &mut self.cqes;
            let r = q.flush_and_wake_io_tasks(
                |user_data, cqe, _last| cqes.push((user_data, cqe.result())),
                1,
            );
            match r {
                Ok(_) => {}
                Err(UblkError::QueueIsDown) => break,
                Err(UblkError::IOError(e))
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => {
                    // The kernel still holds this queue's buffers; freeing
                    // them would let it write into freed memory. Exit, and
                    // leave the device to `--recover`.
                    eprintln!(
                        "augur serve: queue {}: ublk ring failed: {}; exiting (the device stays for --recover)",
                        self.qid,
                        ublk_cause(&e)
                    );
                    std::process::exit(1);
                }
            }
            self.wakeups += 1;
            let mut new = 0;
            let (mut by_eventfd, mut by_timer) = (false, false);
            for i in 0..self.cqes.len() {
                let (user_data, res) = self.cqes[i];
                if user_data & UblkUringData::Target as u64 != 0 {
                    if user_data == EVENTFD_USER_DATA {
                        self.read_armed = false;
                        by_eventfd = true;
                    } else if user_data == TIMER_USER_DATA {
                        self.timer_armed = false;
                        by_timer = true;
                    }
                    continue;
                }
                // UBLK_IO_RES_ABORT: the queue is stopping (libublk tracks it).
                if res == sys::UBLK_IO_RES_OK as i32 {
                    self.start(q, (user_data & 0xffff) as u16);
                    new += 1;
                }
            }
            if new > 0 {
                self.batches += 1;
                self.biggest_batch = self.biggest_batch.max(new);
            }
            let finished = self.reap(q);
            if by_timer && !by_eventfd && new == 0 && finished > 0 {
                self.timer_finds += 1;
                if self.timer_finds == 1 {
                    tracing::warn!(
                        "queue {}: the safety timer found {finished} finished request(s) no eventfd wake-up reported",
                        self.qid
                    );
                }
            }
            if !q.is_stopping() {
                if !self.read_armed {
                    self.arm_read(q);
                }
                if !self.timer_armed && self.array.in_flight() > 0 {
                    self.arm_timer(q);
                }
            }
        }
    }

    /// Queues the safety timer (a plain timeout) in the libublk ring.
    fn arm_timer(&mut self, q: &UblkQueue) {
        let sqe = opcode::Timeout::new(&*self.timer_ts as *const types::Timespec)
            .build()
            .user_data(TIMER_USER_DATA);
        match q.ublk_submit_sqe_sync(sqe) {
            Ok(()) => self.timer_armed = true,
            Err(e) => tracing::error!(
                "queue {}: cannot arm the safety timer: {}",
                self.qid,
                ublk_cause(&e)
            ),
        }
    }

    /// Routes and issues what was submitted, reaps what finished and answers
    /// the kernel for every finished request. Returns how many finished.
    fn reap(&mut self, q: &UblkQueue) -> usize {
        loop {
            self.array.set_eventfd_enabled(false);
            let r = self.array.poll(&mut self.done, false, None);
            self.array.set_eventfd_enabled(true);
            if let Err(e) = r {
                tracing::error!("queue {}: array poll failed: {e}", self.qid);
                break;
            }
            // Posted after the last look, before notifications came back on.
            if !self.array.has_completions() {
                break;
            }
        }
        self.array.take_released(&mut self.spares);
        let mut done = std::mem::take(&mut self.done);
        let n = done.len();
        for c in done.drain(..) {
            self.finish(q, c);
        }
        self.done = done;
        n
    }

    /// A new ublk command for `tag`: hand it to the array (or answer it now).
    fn start(&mut self, q: &UblkQueue, tag: u16) {
        if tag as usize >= self.tags.len() {
            tracing::error!("queue {}: command for unknown tag {tag}", self.qid);
            return;
        }
        let iod = q.get_iod(tag);
        let ublk_op = iod.op_flags & 0xff;
        let offset = iod.start_sector << 9;
        let bytes = (iod.nr_sectors as u64) << 9;
        let (op, data) = match ublk_op {
            sys::UBLK_IO_OP_READ => (Op::Read, true),
            sys::UBLK_IO_OP_WRITE => (Op::Write, true),
            sys::UBLK_IO_OP_FLUSH => (Op::Flush, false),
            sys::UBLK_IO_OP_DISCARD => (Op::Discard, false),
            sys::UBLK_IO_OP_WRITE_ZEROES => (Op::WriteZeroes, false),
            other => {
                tracing::debug!("queue {}: unsupported ublk op {other}", self.qid);
                self.commit(q, tag, -libc::EOPNOTSUPP);
                return;
            }
        };
        let len = match u32::try_from(bytes) {
            Ok(l) if !data || (l as usize) <= self.max_io => l,
            _ => {
                self.commit(q, tag, -libc::EINVAL);
                return;
            }
        };
        let slot = &mut self.tags[tag as usize];
        let buf = if data {
            let mut b = match slot.buf.take() {
                Some(b) => b,
                None => AlignedBuf::new(self.max_io),
            };
            b.set_len(len as usize);
            if op == Op::Write && slot.kernel_addr != b.as_ptr() {
                // SAFETY: `kernel_addr` is the buffer the kernel named for
                // this tag (libublk's registration buffer, alive for the
                // whole queue, of max_io bytes >= len); it just copied this
                // write's data there and nobody writes it until we commit.
                // `b` is a different allocation of at least len bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(slot.kernel_addr, b.as_mut_ptr(), len as usize)
                };
            }
            Some(b)
        } else {
            None
        };
        slot.op = op;
        slot.len = len;
        self.array.submit(Request {
            op,
            offset,
            len: if op == Op::Flush { 0 } else { len },
            buf,
            user: tag as u64,
        });
    }

    /// An array request finished: put the tag's buffer back and commit.
    fn finish(&mut self, q: &UblkQueue, c: Completion) {
        let tag = c.user as u16;
        let Some(slot) = self.tags.get_mut(tag as usize) else {
            return;
        };
        let res = if c.result < 0 {
            c.result
        } else if matches!(slot.op, Op::Read | Op::Write) {
            slot.len as i32
        } else {
            0
        };
        match c.buf {
            Some(b) if b.capacity() >= self.max_io => slot.buf = Some(b),
            Some(small) => {
                // A hedged copy answered first, in a buffer of its own; the
                // tag's buffer is still being read into by the slower copy.
                let mut b = match self.spares.pop() {
                    Some(s) if s.capacity() >= self.max_io => s,
                    _ => AlignedBuf::new(self.max_io),
                };
                b.set_len(small.len());
                b.copy_from_slice(&small);
                slot.buf = Some(b);
            }
            None => {
                if slot.buf.is_none() {
                    slot.buf = Some(match self.spares.pop() {
                        Some(s) if s.capacity() >= self.max_io => s,
                        _ => AlignedBuf::new(self.max_io),
                    });
                }
            }
        }
        if self.spares.len() > 8 {
            self.spares.truncate(8);
        }
        self.commit(q, tag, res);
    }

    /// COMMIT_AND_FETCH for `tag` with `res`, naming the tag's buffer (from
    /// which the kernel copies read data, and into which it copies the next
    /// write's data).
    fn commit(&mut self, q: &UblkQueue, tag: u16, res: i32) {
        if q.is_stopping() {
            // libublk drops commits once the queue is stopping.
            self.unanswered += 1;
        }
        let slot = &mut self.tags[tag as usize];
        if slot.buf.is_none() {
            slot.buf = Some(AlignedBuf::new(self.max_io));
        }
        let addr = slot.buf.as_ref().map_or(std::ptr::null(), |b| b.as_ptr());
        slot.kernel_addr = addr;
        if let Err(e) =
            q.complete_io_cmd_unified(tag, BufDesc::RawAddress(addr), Ok(UblkIORes::Result(res)))
        {
            tracing::error!(
                "queue {}: committing tag {tag}: {}",
                self.qid,
                ublk_cause(&e)
            );
        }
    }

    /// After the queue is down: let the array finish what it still runs
    /// (nothing to answer: the kernel has taken the commands back).
    fn drain(&mut self) {
        self.unanswered += self.array.in_flight();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.array.in_flight() > 0 && Instant::now() < deadline {
            if self
                .array
                .poll(&mut self.done, true, Some(100_000_000))
                .is_err()
            {
                break;
            }
            self.done.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        let t = render_list(&[d]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID"));
        assert!(lines[1].contains("42 (gone)") && lines[1].contains("QUIESCED"));
        assert!(lines[1].contains("256 MiB") && lines[1].ends_with("/a,/b"));
    }
}

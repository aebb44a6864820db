//! Finding Augur's devices: the JSON libublk keeps under `/run/ublksrvd`,
//! `augur list` and `augur stop`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libublk::ctrl::UblkCtrl;
use libublk::sys;
use serde::Serialize;

use super::probe::check_available;
use super::{Recorded, ServeError, TARGET_NAME};

pub(super) fn json_path(id: u32) -> PathBuf {
    PathBuf::from(format!("{}/{id:04}.json", UblkCtrl::run_dir()))
}

pub(super) fn read_json(id: u32) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(json_path(id)).ok()?;
    serde_json::from_str(&text).ok()
}

pub(super) fn is_augur_json(v: &serde_json::Value) -> bool {
    v["target"]["tgt_type"].as_str() == Some(TARGET_NAME)
}

pub(super) fn recorded_from_json(v: &serde_json::Value) -> Option<Recorded> {
    serde_json::from_value(v["target_data"][TARGET_NAME].clone()).ok()
}

pub(super) fn device_exists(id: u32) -> bool {
    Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists()
}

/// Ids of the ublk devices the kernel has (ascending).
pub(super) fn device_ids() -> Vec<u32> {
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
pub(super) fn augur_json(id: u32) -> Result<serde_json::Value, ServeError> {
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

pub(super) fn state_name(state: u16) -> String {
    match state as u32 {
        sys::UBLK_S_DEV_DEAD => "DEAD".into(),
        sys::UBLK_S_DEV_LIVE => "LIVE".into(),
        sys::UBLK_S_DEV_QUIESCED => "QUIESCED".into(),
        sys::UBLK_S_DEV_FAIL_IO => "FAIL_IO".into(),
        s => format!("STATE{s}"),
    }
}

pub(super) fn pid_alive(pid: i32) -> bool {
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
    /// The daemon's control socket, when it answers on one.
    pub socket: Option<String>,
    /// The id of the model the daemon runs now (from its socket).
    pub model_id: Option<String>,
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
            socket: None,
            model_id: None,
        });
    }
    // What the daemons say now: the policy and model may have been swapped.
    for d in &mut out {
        let sock = crate::control::socket_for_ublk(d.id);
        let reply = crate::control::request(
            &sock,
            crate::control::Command::Status,
            Duration::from_secs(2),
        );
        if let Ok(r) = reply
            && r.ok
        {
            d.socket = Some(sock.display().to_string());
            d.model_id = r.result["model"].as_str().map(str::to_string);
            if let Some(p) = r.result["policy"].as_str() {
                d.policy = p.to_string();
            }
        }
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
        "{:<3} {:<13} {:<14} {:<9} {:>6} {:>5} {:>10} {:>5}  {:<13} {:<9} REPLICAS\n",
        "ID", "DEVICE", "DAEMON", "STATE", "QUEUES", "DEPTH", "SIZE", "BS", "POLICY", "MODEL"
    );
    for d in devs {
        let daemon = if d.daemon_running {
            d.pid.to_string()
        } else {
            format!("{} (gone)", d.pid)
        };
        s.push_str(&format!(
            "{:<3} {:<13} {:<14} {:<9} {:>6} {:>5} {:>10} {:>5}  {:<13} {:<9} {}\n",
            d.id,
            d.path,
            daemon,
            d.state,
            d.queues,
            d.depth,
            human_size(d.size),
            d.block_size,
            d.policy,
            d.model_id.as_deref().unwrap_or("-"),
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

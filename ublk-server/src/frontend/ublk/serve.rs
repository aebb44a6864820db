//! `augur serve`: create (or recover) the device, start one thread per
//! queue, and tear it all down on a signal or a failure.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{UblkError, UblkFlags, sys};

use crate::array::signals::{block_stop_signals, restore_signals};
use crate::array::{Array, ArrayConfig, Queue};
use crate::control::DaemonInfo;
use crate::route::Policy;

use super::probe::check_available;
use super::queue::run_queue;
use super::registry::{augur_json, device_exists, json_path, pid_alive, read_json, state_name};
use super::{
    IO_BUF_BYTES, MAX_DEPTH, MAX_DISCARD_BYTES, MAX_QUEUES, MAX_WRITE_ZEROES_BYTES,
    RING_ENTRIES_PER_TAG, Recorded, ServeError, ServeOptions, ServeSummary, TARGET_NAME,
    ublk_cause, ublk_errno,
};

/// Everything the signal thread, the main thread and the queue threads share.
pub(super) struct Shared {
    /// A stop was requested (signal).
    pub(super) stop: AtomicBool,
    /// Set once the device is live; guards the stop/live handshake.
    pub(super) live: Mutex<bool>,
    /// The control handle once the device exists.
    pub(super) ctrl: Mutex<Option<Arc<UblkCtrl>>>,
    /// Why a queue thread could not start.
    pub(super) queue_error: Mutex<Option<String>>,
}

impl Shared {
    pub(super) fn queue_failed(&self, dev: &UblkDev, msg: String) {
        tracing::error!("{msg}");
        let mut e = self.queue_error.lock().unwrap_or_else(|p| p.into_inner());
        e.get_or_insert(msg);
        drop(e);
        // Wakes start_dev, which then fails instead of waiting for this queue.
        dev.notify_buffer_registration_complete(true);
    }
}

/// One queue's array side, made before the device exists.
pub(super) struct QueueSetup {
    pub(super) array: Queue,
    pub(super) efd: OwnedFd,
}

/// Serves the array as a ublk block device until SIGINT/SIGTERM (or until
/// the device is removed from outside), then deletes the device and returns
/// the counters.
///
/// Opens the array first (bad input comes back as [`ServeError::Array`] with
/// nothing created), then checks for ublk; with `--recover`, the device and
/// its daemon's exit are checked before the array is opened. Prints the
/// device path as the first line on stdout once the device is live. Replica files this call
/// created are removed again when the device never came up.
pub fn serve(
    cfg: ArrayConfig,
    policy: Policy,
    opts: &ServeOptions,
) -> Result<ServeSummary, ServeError> {
    check_options(opts)?;
    // A device whose daemon still runs is refused before its replicas are
    // opened: opening them starts a resync, which must never race a live
    // daemon's writes.
    if let (true, Some(id)) = (opts.recover, opts.id) {
        check_available()?;
        augur_json(id)?;
        wait_quiesced(id)?;
    }
    let created = cfg.files_to_create();
    let array = Array::open(cfg, policy)?;
    let watchdog = array.watchdog();
    let result = serve_array(&array, opts);
    drop(watchdog);
    array.close();
    if matches!(result, Err((false, _))) {
        drop(array);
        for p in &created {
            let _ = std::fs::remove_file(p);
        }
    }
    result.map_err(|(_, e)| e)
}

pub(super) fn check_options(opts: &ServeOptions) -> Result<(), ServeError> {
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
pub(super) struct Geometry {
    pub(super) queues: u16,
    pub(super) depth: u16,
    pub(super) block_size: u32,
    pub(super) size: u64,
}

/// Err((true, e)): the device came up (or was being recovered), so replica
/// files are in use; Err((false, e)): nothing was created.
pub(super) fn serve_array(
    array: &Array,
    opts: &ServeOptions,
) -> Result<ServeSummary, (bool, ServeError)> {
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
        array_id: array.bitmap_status().map(|b| b.array_id),
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
pub(super) fn absolute(path: &str) -> String {
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
pub(super) fn absolute_spec(spec: &str) -> String {
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
pub(super) struct RecoverProbe {
    info: sys::ublksrv_ctrl_dev_info,
    block_size: u32,
}

pub(super) fn check_recoverable(
    id: u32,
    array: &Array,
    opts: &ServeOptions,
) -> Result<RecoverProbe, ServeError> {
    let v = augur_json(id)?;
    let info = wait_quiesced(id)?;
    check_identity(id, &v, array)?;
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

/// How long `--recover` waits for the ublk driver to quiesce a device whose
/// daemon died. Usually the driver sees the death when it cancels the dead
/// daemon's pending commands (at once); with every tag in flight there are
/// none, and it sees it only when a request times out ([`set_io_timeout`]:
/// 5 s by default, the kernel's 30 s on a device made without it), so the
/// wait must outlast the kernel's default.
const QUIESCE_WAIT: Duration = Duration::from_secs(60);

/// For `--recover`: device `id` was created with user recovery and its
/// daemon is gone. Waits up to [`QUIESCE_WAIT`] for the driver to move the
/// device from LIVE to QUIESCED once that daemon has exited; a device whose
/// daemon still runs is refused at once. Returns the device's info.
pub(super) fn wait_quiesced(id: u32) -> Result<sys::ublksrv_ctrl_dev_info, ServeError> {
    let ctrl = UblkCtrl::new_simple(id as i32)
        .map_err(|e| ServeError::ublk(format!("reading ublk device {id}"), &e))?;
    let mut info = ctrl.dev_info();
    if info.flags & sys::UBLK_F_USER_RECOVERY as u64 == 0 {
        return Err(ServeError::BadInput(format!(
            "ublk device {id} was created without user recovery; remove it with augur stop --id {id}"
        )));
    }
    let start = Instant::now();
    let mut told = false;
    while info.state as u32 == sys::UBLK_S_DEV_LIVE
        && !pid_alive(info.ublksrv_pid)
        && start.elapsed() < QUIESCE_WAIT
    {
        if !told && start.elapsed() >= Duration::from_secs(2) {
            tracing::info!(
                "waiting for the ublk driver to quiesce device {id} (its daemon, pid {}, has exited)",
                info.ublksrv_pid
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(100));
        if ctrl.read_dev_info().is_ok() {
            info = ctrl.dev_info();
        }
    }
    if told && info.state as u32 == sys::UBLK_S_DEV_QUIESCED {
        tracing::info!(
            "ublk device {id} quiesced after {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    if info.state as u32 != sys::UBLK_S_DEV_QUIESCED {
        let why = match info.state as u32 {
            sys::UBLK_S_DEV_LIVE if pid_alive(info.ublksrv_pid) => {
                format!("its daemon (pid {}) is running", info.ublksrv_pid)
            }
            sys::UBLK_S_DEV_LIVE => format!(
                "its daemon (pid {}) has exited, but the driver still shows the device live after {} s",
                info.ublksrv_pid,
                QUIESCE_WAIT.as_secs()
            ),
            _ => format!("it is {}", state_name(info.state)),
        };
        return Err(ServeError::BadInput(format!(
            "ublk device {id} cannot be recovered: {why}"
        )));
    }
    Ok(info)
}

/// The replica file of a spec (`emu:PROFILE:PATH` or `PATH`).
fn spec_path(spec: &str) -> &str {
    spec.strip_prefix("emu:")
        .and_then(|r| r.split_once(':'))
        .map_or(spec, |(_, p)| p)
}

/// `--recover` attaches the replicas given to a device whose queued I/O
/// came from another daemon: they must be that device's replicas. By the
/// array identity in their metadata when both sides have one, else by the
/// replica files (in order) and the size.
fn check_identity(id: u32, v: &serde_json::Value, array: &Array) -> Result<(), ServeError> {
    let Some(rec) = super::registry::recorded_from_json(v) else {
        return Err(ServeError::BadInput(format!(
            "ublk device {id} has no Augur record of its replicas; it cannot be recovered safely (augur stop --id {id})"
        )));
    };
    let have_id = array.bitmap_status().map(|b| b.array_id);
    if let (Some(want), Some(have)) = (&rec.array_id, &have_id) {
        if want != have {
            return Err(ServeError::BadInput(format!(
                "the replicas given belong to array {}, but ublk device {id} was created with array {}; give that array's replicas",
                &have[..have.len().min(8)],
                &want[..want.len().min(8)]
            )));
        }
        return Ok(());
    }
    let want: Vec<String> = rec
        .replicas
        .iter()
        .map(|s| spec_path(s).to_string())
        .collect();
    let have: Vec<String> = array
        .replica_status()
        .iter()
        .map(|r| spec_path(&absolute_spec(&r.spec)).to_string())
        .collect();
    if want != have {
        return Err(ServeError::BadInput(format!(
            "the replicas given ({}) are not the ones ublk device {id} was created with ({})",
            have.join(", "),
            want.join(", ")
        )));
    }
    if rec.size != array.size() {
        return Err(ServeError::BadInput(format!(
            "the replicas hold {} bytes but ublk device {id} was created with {}",
            array.size(),
            rec.size
        )));
    }
    Ok(())
}

/// Held while a device is added with a chosen `--id`: libublk deletes the
/// device of a failed ADD by its id, so checking that the id is free and
/// adding it must not interleave with another `augur serve` doing the same
/// (whose device that id would then be). An flock on a file in /run.
struct AddLock(#[allow(dead_code)] std::fs::File);

impl AddLock {
    const PATH: &'static str = "/run/augur-ublk-add.lock";

    fn take() -> Result<AddLock, ServeError> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Self::PATH)
            .map_err(|e| ServeError::Setup {
                what: "opening /run/augur-ublk-add.lock",
                source: e,
            })?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(ServeError::Setup {
                what: "locking /run/augur-ublk-add.lock",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(AddLock(f))
    }
}

/// The signal thread: waits for SIGINT/SIGTERM (blocked in every other
/// thread), then stops the device once it is live; a second signal exits.
pub(super) fn spawn_signal_thread(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("augur-signals".into())
        .spawn(move || {
            let mut first = true;
            loop {
                // SAFETY: as in array::signals::block_stop_signals; sigwait writes `sig`.
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
pub(super) fn kill_from_this_thread(ctrl: &UblkCtrl) {
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

pub(super) fn device_params(geo: &Geometry) -> sys::ublk_params {
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
pub(super) fn run_device(
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

    let ctrl = build_ctrl(probe.as_ref(), opts, geo)?;
    let ctrl = Arc::new(ctrl);
    let id = ctrl.dev_info().dev_id;
    array.set_device_path(std::path::Path::new(&format!("/dev/ublkb{id}")));
    *shared.ctrl.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctrl.clone());
    // From here on a failure deletes a new device (UblkCtrl's drop) and
    // leaves a recovering one waiting for another try.
    let fail_dev = |e| (recovering, e);
    let _services = match &opts.control {
        Some(model) => {
            let info = DaemonInfo {
                frontend: "ublk",
                name: format!("ublk{id}"),
                device: format!("/dev/ublkb{id}"),
            };
            match super::super::start_services(
                info,
                array,
                model,
                opts.predict,
                opts.metrics,
                opts.adapt.as_ref(),
            ) {
                Ok(c) => Some(c),
                Err(e) => {
                    drop_ctrl(shared, ctrl, recovering);
                    return Err(fail_dev(ServeError::BadInput(e)));
                }
            }
        }
        None => None,
    };
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
    let io_timeout = opts.io_timeout;
    let device_fn = move |c: &UblkCtrl| {
        if let Some(t) = io_timeout {
            set_io_timeout(c.dev_info().dev_id, t);
        }
        let path = announce_live(c, recovering.then_some(&rec_for_json), &dev_shared);
        *path_out.lock().unwrap_or_else(|p| p.into_inner()) = path;
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

/// The control handle of a new device, or of the device `--recover` takes
/// over (recovery started). The error's flag is true once recovery has
/// started: the device then waits for another try.
fn build_ctrl(
    probe: Option<&RecoverProbe>,
    opts: &ServeOptions,
    geo: &Geometry,
) -> Result<UblkCtrl, (bool, ServeError)> {
    let fail = |e| (false, e);
    let ctrl = match (probe, opts.id) {
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
                .ctrl_flags(
                    p.info.flags
                        & (sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE) as u64,
                )
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
        _ => {
            // Every add holds the lock (one without --id takes a free id,
            // which may be the one another daemon just checked); a chosen
            // id is checked free under it (the check in serve_array answers
            // early, this one holds). Released when this function returns.
            let _lock = AddLock::take().map_err(fail)?;
            if let Some(id) = opts.id
                && device_exists(id)
            {
                return Err(fail(ServeError::BadInput(format!(
                    "ublk device {id} already exists (augur list; augur serve --recover --id {id} if its daemon died)"
                ))));
            }
            UblkCtrlBuilder::default()
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
            })?
        }
    };
    Ok(ctrl)
}

/// Once the device is live: update a recovered device's record, wait for its
/// node, print its path (the first line on stdout), and stop it at once if a
/// signal came first. Returns the path.
fn announce_live(c: &UblkCtrl, recovered: Option<&Recorded>, shared: &Shared) -> String {
    let path = c.get_bdev_path();
    if let Some(rec) = recovered {
        update_recorded(c.dev_info().dev_id, rec);
    }
    // devtmpfs makes the node right away; udev may take a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !Path::new(&path).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    crate::frontend::process::warn_refused();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{path}");
        let _ = out.flush();
    }
    let stop_now = {
        let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        *live = true;
        shared.stop.load(Ordering::SeqCst)
    };
    if stop_now && let Err(e) = c.kill_dev() {
        tracing::error!("stopping the device: {}", ublk_cause(&e));
    }
    path
}

/// Sets device `id`'s block-layer request timeout. The 6.12 driver cancels
/// a dead daemon's pending commands at once, but when every tag was in flight
/// there are none, and only a request timing out makes it quiesce the device
/// (or reset the timer while the daemon lives); the kernel's default of 30 s
/// would hold `--recover` off that long. Kept across a recovery (same disk).
pub(super) fn set_io_timeout(id: u32, t: Duration) {
    let path = format!("/sys/block/ublkb{id}/queue/io_timeout");
    let ms = t.as_millis().max(1);
    match std::fs::write(&path, format!("{ms}\n")) {
        Ok(()) => tracing::debug!("{path}: {ms} ms"),
        Err(e) => tracing::warn!("setting the request timeout ({path}, {ms} ms): {e}"),
    }
}

/// Lets go of the control handle: a new device is deleted by its drop; a
/// device being recovered is left for another `--recover`.
pub(super) fn drop_ctrl(shared: &Shared, ctrl: Arc<UblkCtrl>, keep: bool) {
    *shared.ctrl.lock().unwrap_or_else(|p| p.into_inner()) = None;
    if keep {
        ctrl.disown();
    }
    drop(ctrl);
}

/// Rewrites Augur's record in the device JSON (after a recovery, which
/// keeps the JSON of the first daemon).
pub(super) fn update_recorded(id: u32, rec: &Recorded) {
    let Some(mut v) = read_json(id) else { return };
    v["target_data"] = serde_json::json!({ TARGET_NAME: rec });
    let path = json_path(id);
    if let Err(e) = std::fs::write(&path, v.to_string()) {
        tracing::warn!("updating {}: {e}", path.display());
    }
}

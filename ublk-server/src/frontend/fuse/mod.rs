//! The FUSE front-end: the array as one file, `disk.img`, in a FUSE mount.
//!
//! For kernels without ublk, `augur fuse` mounts a directory holding a single
//! regular file whose bytes are the array. fio can drive the file directly,
//! and `losetup --direct-io=on --sector-size 4096` turns it into a block device
//! for file systems (`--loop` does that and prints the device).
//!
//! # The data path
//! Every open is `FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES`: the kernel
//! keeps no page cache of the file, so every read and write reaches the array
//! and many may run at once. `FUSE_ASYNC_DIO` is requested at init, so a loop
//! device (or io_uring/aio with `O_DIRECT`) keeps many requests in flight.
//! Each FUSE worker thread (`--threads`, default 16, each with its own
//! `/dev/fuse` clone) owns an array [`Queue`] in a thread-local, created on its
//! first request: the thread that took the FUSE request submits the replica
//! I/O and waits for it on its own io_uring, with no hand-off.
//!
//! | FUSE request | array operation |
//! |---|---|
//! | read | one read, routed by the policy (widened to 4 KiB blocks) |
//! | write | one write to every replica; unaligned edges read-modify-write |
//! | fsync | flush (every replica) |
//! | fallocate punch-hole | discard; zero-range: write-zeroes (partial edge blocks are zeroed by read-modify-write) |
//!
//! # Unaligned requests and the block locks
//! The array works in whole blocks. A write that does not cover its first or
//! last 4 KiB block reads those blocks, merges the new bytes in and writes the
//! whole span back. To keep two such read-modify-writes (or one and a plain
//! write) from losing each other's bytes, writes take a lock per block from a
//! small striped table: exclusive on the blocks being read-modify-written,
//! shared on the blocks they overwrite whole. An aligned write thus only takes
//! an uncontended shared lock; reads take none.
//!
//! # Stopping, and cleaning up after a crash
//! SIGINT or SIGTERM: the loop device (if any) is detached, then the mount is
//! unmounted; worker threads finish the request in hand, their queues wait
//! for every replica I/O, and the process exits 0. A daemon that died
//! (`kill -9`) leaves a mount whose file answers `ENOTCONN` and maybe a loop
//! device on it: [`cleanup`] (`augur fuse --cleanup DIR`) detaches every loop
//! device backed by `DIR/disk.img` and lazily unmounts `DIR`.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use fuser::{Config, MountOption};

use augur_gpu_batcher::OffloadOptions;

use crate::array::ArrayError;
use crate::array::{Array, ArrayConfig};
use crate::control::{DaemonInfo, ModelEntry, fuse_name};
use crate::route::Policy;

mod fs;
mod mount;

use fs::AugurFs;
pub use mount::{CleanupReport, check_mount_dir, cleanup};
use mount::{attach_loop, detach_loop, unmount, which};

/// Name of the one file in the mount.
pub const DISK_NAME: &str = "disk.img";
/// Block size of the front-end: requests are widened to whole blocks, and
/// partial blocks of a write are read-modify-written.
pub const BLOCK: u64 = 4096;
/// Largest read or write the kernel is asked to send (`max_write`, readahead).
pub const MAX_IO: u32 = 1 << 20;
/// Most FUSE worker threads `--threads` accepts.
pub const MAX_THREADS: usize = 64;

/// Why `augur fuse` could not serve or clean up.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// The array could not be opened (bad replicas, sizes, specs).
    #[error(transparent)]
    Array(#[from] ArrayError),
    /// Bad input or a missing prerequisite, named (the user's to fix).
    #[error("{0}")]
    BadInput(String),
    /// The FUSE mount itself failed.
    #[error("mounting FUSE on {}: {source}", path.display())]
    Mount {
        /// The mount directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Unmounting a dead mount failed.
    #[error("unmounting {}: {source}", path.display())]
    Unmount {
        /// The mount directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Attaching the loop device failed.
    #[error("{0}")]
    Loop(String),
    /// A step of setting up or running the session failed.
    #[error("{what}: {source}")]
    Setup {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

impl FuseError {
    /// True when the cause is the user's to fix (exit status 2).
    pub fn is_user_error(&self) -> bool {
        matches!(self, FuseError::Array(_) | FuseError::BadInput(_))
    }
}

/// How `augur fuse` should serve the array.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// The (empty) directory to mount on.
    pub mount: PathBuf,
    /// FUSE worker threads, 1 to [`MAX_THREADS`].
    pub threads: usize,
    /// Attach a loop device to `disk.img` and print its path.
    pub attach_loop: bool,
    /// Listen on a control socket ([`crate::control`]), with this as the
    /// active model; `None`: no socket.
    pub control: Option<ModelEntry>,
    /// Where prediction batches run (`--predict-on`): started once the
    /// device is up; every model the control socket installs goes through
    /// it too.
    pub predict: OffloadOptions,
    /// Serve Prometheus metrics here (needs `control`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Run online adaptation (needs `control`).
    pub adapt: Option<crate::frontend::AdaptOptions>,
}

/// Serves the array through FUSE until SIGINT or SIGTERM (or an external
/// unmount), then detaches the loop device, unmounts and returns.
///
/// Checks the mount directory before opening the array; bad input comes back
/// as an [`ArrayError`] and leaves nothing mounted or created (replica files
/// this call created are removed again if a later step fails).
/// Prints `file PATH` (and with a loop device `loop DEVICE`) on stdout once
/// the mount is ready.
pub fn serve(cfg: ArrayConfig, policy: Policy, opts: &FuseOptions) -> Result<(), FuseError> {
    if opts.threads == 0 || opts.threads > MAX_THREADS {
        return Err(FuseError::BadInput(format!(
            "--threads {} must be between 1 and {MAX_THREADS}",
            opts.threads
        )));
    }
    let mount = check_mount_dir(&opts.mount)?;
    if !Path::new("/dev/fuse").exists() {
        return Err(FuseError::BadInput(
            "/dev/fuse is missing (load the fuse module, or give the container the device)".into(),
        ));
    }
    if opts.attach_loop && which("losetup").is_none() {
        return Err(FuseError::BadInput(
            "--loop needs losetup, which is not installed (Debian: apt-get install mount)".into(),
        ));
    }
    // Replica files this call creates are removed again if setup fails.
    let created = cfg.files_to_create();
    let array = Array::open(cfg, policy)?;
    let remove_created = || {
        for p in &created {
            let _ = std::fs::remove_file(p);
        }
    };
    let handle = array.clone();
    let watchdog = handle.watchdog();
    let served = serve_array(array, &mount, opts);
    drop(watchdog);
    handle.close();
    drop(handle);
    match served {
        Ok(Served::Stopped) => Ok(()),
        Ok(Served::SetupFailed(e)) => {
            remove_created();
            Err(e)
        }
        Err(e) => Err(e),
    }
}

enum Served {
    Stopped,
    SetupFailed(FuseError),
}

enum Event {
    Signal(i32),
    SessionEnded(std::io::Result<()>),
}

fn serve_array(array: Array, mount: &Path, opts: &FuseOptions) -> Result<Served, FuseError> {
    let size = array.size();
    array.set_device_path(&mount.join(DISK_NAME));
    let (tx, rx) = mpsc::channel::<Event>();
    // Signals are caught from before the mount on, so a SIGTERM during setup
    // still ends in a clean unmount.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| FuseError::Setup {
        what: "installing signal handlers",
        source: e,
    })?;
    let sig_tx = tx.clone();
    std::thread::Builder::new()
        .name("augur-signals".into())
        .spawn(move || {
            let mut first = true;
            for s in signals.forever() {
                if first {
                    first = false;
                    let _ = sig_tx.send(Event::Signal(s));
                } else {
                    tracing::error!("second signal {s}: exiting without cleanup");
                    std::process::exit(1);
                }
            }
        })
        .map_err(|e| FuseError::Setup {
            what: "starting the signal thread",
            source: e,
        })?;

    let fs = AugurFs::new(array.clone());
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("augur".into()),
        MountOption::Subtype("augur".into()),
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    config.n_threads = Some(opts.threads);
    config.clone_fd = true;
    let mut session = match fuser::Session::new(fs, mount, &config) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Served::SetupFailed(FuseError::Mount {
                path: mount.to_path_buf(),
                source: e,
            }));
        }
    };
    let mut unmounter = session.unmount_callable();
    let session_tx = tx.clone();
    let session_thread = std::thread::Builder::new()
        .name("augur-fuse".into())
        .spawn(move || {
            let r = session.run();
            let _ = session_tx.send(Event::SessionEnded(r));
        })
        .map_err(|e| FuseError::Setup {
            what: "starting the FUSE session",
            source: e,
        })?;
    let disk = mount.join(DISK_NAME);
    tracing::info!(
        "serving {} ({} bytes, {} replicas, policy {}, {} threads)",
        disk.display(),
        size,
        array.replica_count(),
        array.policy().name(),
        opts.threads
    );
    let _services = match &opts.control {
        Some(model) => {
            let info = DaemonInfo {
                frontend: "fuse",
                name: fuse_name(mount),
                device: disk.display().to_string(),
            };
            match super::start_services(
                info,
                &array,
                model,
                opts.predict,
                opts.metrics,
                opts.adapt.as_ref(),
            ) {
                Ok(c) => Some(c),
                Err(e) => {
                    unmount(mount, &mut unmounter);
                    let _ = session_thread.join();
                    return Ok(Served::SetupFailed(FuseError::BadInput(e)));
                }
            }
        }
        None => None,
    };
    let mut loop_dev = None;
    if opts.attach_loop {
        match attach_loop(&disk) {
            Ok(dev) => loop_dev = Some(dev),
            Err(e) => {
                unmount(mount, &mut unmounter);
                let _ = session_thread.join();
                return Ok(Served::SetupFailed(e));
            }
        }
    }
    super::process::warn_refused();
    println!("file {}", disk.display());
    if let Some(dev) = &loop_dev {
        println!("loop {dev}");
    }
    let ended = match rx.recv() {
        Ok(Event::Signal(s)) => {
            tracing::info!("signal {s}: stopping");
            None
        }
        Ok(Event::SessionEnded(r)) => Some(r),
        Err(_) => None,
    };
    if let Some(dev) = &loop_dev {
        detach_loop(dev);
    }
    let result = match ended {
        Some(r) => {
            tracing::warn!("{} was unmounted from outside", mount.display());
            r
        }
        None => {
            unmount(mount, &mut unmounter);
            // Workers finish the request in hand, then their queues wait for
            // every replica I/O (Queue's drop) before the session ends.
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Event::SessionEnded(r)) => r,
                Ok(Event::Signal(_)) | Err(_) => {
                    tracing::warn!("FUSE workers did not stop within 10 s; exiting anyway");
                    Ok(())
                }
            }
        }
    };
    drop(session_thread);
    let st = array.stats();
    tracing::info!(
        "stopped: {} reads, {} writes, {} flushes, {} discards, {} failed requests",
        st.reads,
        st.writes,
        st.flushes,
        st.discards,
        st.failed_requests
    );
    result.map_err(|e| FuseError::Setup {
        what: "FUSE session",
        source: e,
    })?;
    Ok(Served::Stopped)
}

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

use std::cell::RefCell;
use std::ffi::{CString, OsStr};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, mpsc};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};
use augur_feature_store::Op;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request as FuseRequest, WriteFlags,
};

use crate::array::AlignedBuf;
use crate::array::ArrayError;
use crate::array::{Array, ArrayConfig, Completion, Queue, Request};
use crate::route::Policy;

/// Name of the one file in the mount.
pub const DISK_NAME: &str = "disk.img";
/// Block size of the front-end: requests are widened to whole blocks, and
/// partial blocks of a write are read-modify-written.
pub const BLOCK: u64 = 4096;
/// Largest read or write the kernel is asked to send (`max_write`, readahead).
pub const MAX_IO: u32 = 1 << 20;
/// Most FUSE worker threads `--threads` accepts.
pub const MAX_THREADS: usize = 64;

const ROOT_INO: INodeNo = INodeNo::ROOT;
const DISK_INO: INodeNo = INodeNo(2);
/// Attributes never change behind the kernel's back (the size is fixed).
const TTL: Duration = Duration::from_secs(3600);
/// Number of stripes of the block lock table.
const LOCK_STRIPES: usize = 1024;
/// Discards and write-zeroes are split into requests of at most this size
/// (the array's lengths are 32-bit, and zeroing by writes allocates a buffer).
const ZERO_CHUNK: u64 = 16 << 20;
/// io_uring entries of each worker's queue (one FUSE request at a time).
const RING_ENTRIES: u32 = 128;
/// Spare buffers a worker keeps for reuse.
const SPARE_BUFS: usize = 4;

/// How `augur fuse` should serve the array.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// The (empty) directory to mount on.
    pub mount: PathBuf,
    /// FUSE worker threads, 1 to [`MAX_THREADS`].
    pub threads: usize,
    /// Attach a loop device to `disk.img` and print its path.
    pub attach_loop: bool,
}

/// Serves the array through FUSE until SIGINT or SIGTERM (or an external
/// unmount), then detaches the loop device, unmounts and returns.
///
/// Checks the mount directory before opening the array; bad input comes back
/// as an [`ArrayError`] and leaves nothing mounted or created (replica files
/// this call created are removed again if a later step fails).
/// Prints `file PATH` (and with a loop device `loop DEVICE`) on stdout once
/// the mount is ready.
pub fn serve(cfg: ArrayConfig, policy: Policy, opts: &FuseOptions) -> anyhow::Result<()> {
    if opts.threads == 0 || opts.threads > MAX_THREADS {
        return Err(ArrayError::BadSpec(format!(
            "--threads {} must be between 1 and {MAX_THREADS}",
            opts.threads
        ))
        .into());
    }
    let mount = check_mount_dir(&opts.mount)?;
    if !Path::new("/dev/fuse").exists() {
        return Err(ArrayError::BadSpec(
            "/dev/fuse is missing (load the fuse module, or give the container the device)".into(),
        )
        .into());
    }
    if opts.attach_loop && which("losetup").is_none() {
        return Err(ArrayError::BadSpec(
            "--loop needs losetup, which is not installed (Debian: apt-get install mount)".into(),
        )
        .into());
    }
    // Replica files this call creates are removed again if setup fails.
    let created = cfg.files_to_create();
    let array = Array::open(cfg, policy)?;
    let remove_created = || {
        for p in &created {
            let _ = std::fs::remove_file(p);
        }
    };
    match serve_array(array, &mount, opts) {
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
    SetupFailed(anyhow::Error),
}

enum Event {
    Signal(i32),
    SessionEnded(std::io::Result<()>),
}

fn serve_array(array: Array, mount: &Path, opts: &FuseOptions) -> anyhow::Result<Served> {
    let size = array.size();
    let (tx, rx) = mpsc::channel::<Event>();
    // Signals are caught from before the mount on, so a SIGTERM during setup
    // still ends in a clean unmount.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
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
        .context("starting the signal thread")?;

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
            return Ok(Served::SetupFailed(anyhow!(
                "mounting FUSE on {}: {e}",
                mount.display()
            )));
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
        .context("starting the FUSE session")?;
    let disk = mount.join(DISK_NAME);
    tracing::info!(
        "serving {} ({} bytes, {} replicas, policy {}, {} threads)",
        disk.display(),
        size,
        array.replica_count(),
        array.policy().name(),
        opts.threads
    );
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
    result.context("FUSE session")?;
    Ok(Served::Stopped)
}

/// Unmounts `mount`: retries while busy for up to 3 s, then detaches lazily.
fn unmount(mount: &Path, unmounter: &mut fuser::SessionUnmounter) {
    // First through fuser, which then forgets the mount (so it does not try
    // again when the session ends); if that fails, by hand.
    match unmounter.unmount() {
        Ok(()) => return,
        Err(e) => tracing::debug!("unmount {}: {e}; retrying", mount.display()),
    }
    let Ok(c) = CString::new(mount.as_os_str().as_bytes()) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
        if rc == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Some(libc::EBUSY) => {
                tracing::warn!(
                    "{} is still busy (open files, or a loop device in use); unmounting lazily",
                    mount.display()
                );
                // SAFETY: as above.
                let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                if rc != 0 {
                    tracing::error!(
                        "lazy unmount of {}: {}",
                        mount.display(),
                        std::io::Error::last_os_error()
                    );
                }
                break;
            }
            Some(libc::EINVAL) | Some(libc::ENOENT) => break, // not mounted any more
            _ => {
                tracing::error!("unmounting {}: {err}", mount.display());
                break;
            }
        }
    }
}

/// Checks that `dir` can be mounted on: an existing, empty directory that is
/// not a mount point. Returns its canonical path.
pub fn check_mount_dir(dir: &Path) -> Result<PathBuf, ArrayError> {
    let shown = dir.display();
    let canon = match dir.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(ArrayError::BadSpec(format!(
                "mount point {shown} does not exist"
            )));
        }
        Err(e) => return Err(mount_dir_error(dir, e)),
    };
    let meta = std::fs::metadata(&canon).map_err(|e| mount_dir_error(dir, e))?;
    if !meta.is_dir() {
        return Err(ArrayError::BadSpec(format!(
            "mount point {shown} is not a directory"
        )));
    }
    if is_mount_point(&canon) {
        return Err(ArrayError::BadSpec(format!(
            "{shown} is already a mount point (another augur fuse? `augur fuse --cleanup {shown}` clears a dead one)"
        )));
    }
    let mut entries = std::fs::read_dir(&canon).map_err(|e| mount_dir_error(dir, e))?;
    if entries.next().is_some() {
        return Err(ArrayError::BadSpec(format!(
            "mount point {shown} is not empty"
        )));
    }
    Ok(canon)
}

fn mount_dir_error(dir: &Path, e: std::io::Error) -> ArrayError {
    let shown = dir.display();
    if e.raw_os_error() == Some(libc::ENOTCONN) {
        ArrayError::BadSpec(format!(
            "{shown} is a dead FUSE mount (a crashed daemon?): run `augur fuse --cleanup {shown}`"
        ))
    } else {
        ArrayError::BadSpec(format!("mount point {shown}: {e}"))
    }
}

/// What [`cleanup`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Loop devices detached (or, when still in use, set to detach on last close).
    pub loops: Vec<String>,
    /// True when the mount was (lazily) unmounted.
    pub unmounted: bool,
}

/// Clears what a crashed `augur fuse` left at `dir`: detaches every loop
/// device backed by `dir/disk.img`, then lazily unmounts `dir`. Harmless
/// when there is nothing to clear.
pub fn cleanup(dir: &Path) -> anyhow::Result<CleanupReport> {
    // The mount's root may answer ENOTCONN, so resolve only the parent.
    let name = dir
        .file_name()
        .ok_or_else(|| ArrayError::BadSpec(format!("{}: not a directory name", dir.display())))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent
        .canonicalize()
        .map_err(|e| ArrayError::BadSpec(format!("{}: {e}", parent.display())))?;
    let mount = parent.join(name);
    let disk = mount.join(DISK_NAME);
    let mut report = CleanupReport::default();
    for dev in loops_backed_by(&disk) {
        detach_loop(&dev);
        report.loops.push(dev);
    }
    if is_mount_point(&mount) {
        let c = CString::new(mount.as_os_str().as_bytes())
            .map_err(|_| ArrayError::BadSpec(format!("{}: bad path", mount.display())))?;
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(anyhow!("unmounting {}: {e}", mount.display()));
        }
        report.unmounted = true;
    }
    Ok(report)
}

/// True when `path` (canonical) is listed as a mount point in this namespace.
fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape_mount(m) == want)
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
fn unescape_mount(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Loop devices whose backing file is `file` (read from sysfs, which still
/// names the file when its FUSE mount is dead).
fn loops_backed_by(file: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return found;
    };
    let want = file.as_os_str().as_bytes();
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.as_bytes().starts_with(b"loop") {
            continue;
        }
        let Ok(backing) = std::fs::read(e.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.strip_suffix(b"\n").unwrap_or(&backing);
        let backing = backing.strip_suffix(b" (deleted)").unwrap_or(backing);
        if backing == want {
            found.push(format!("/dev/{}", name.to_string_lossy()));
        }
    }
    found.sort();
    found
}

fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

fn losetup() -> Command {
    Command::new(which("losetup").unwrap_or_else(|| PathBuf::from("losetup")))
}

fn attach_loop(disk: &Path) -> anyhow::Result<String> {
    let out = losetup()
        .args(["--direct-io=on", "--sector-size", "4096", "-f", "--show"])
        .arg(disk)
        .output()
        .context("running losetup")?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() || !stdout.starts_with("/dev/") {
        return Err(anyhow!(
            "losetup on {} failed: {}",
            disk.display(),
            if stderr.is_empty() { &stdout } else { &stderr }
        ));
    }
    if !stderr.is_empty() {
        tracing::warn!("losetup: {stderr}");
    }
    tracing::info!("attached {stdout} to {}", disk.display());
    Ok(stdout)
}

fn detach_loop(dev: &str) {
    match losetup().arg("-d").arg(dev).output() {
        Ok(o) if o.status.success() => {
            let sys = format!(
                "/sys/block/{}/loop/backing_file",
                dev.trim_start_matches("/dev/")
            );
            if Path::new(&sys).exists() {
                tracing::warn!(
                    "{dev} is still in use (a file system mounted on it?); it detaches when closed"
                );
            } else {
                tracing::info!("detached {dev}");
            }
        }
        Ok(o) => tracing::error!(
            "losetup -d {dev}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => tracing::error!("losetup -d {dev}: {e}"),
    }
}

/// A lock per block, striped: writes hold their blocks' stripes while they
/// run (exclusive where they read-modify-write, shared elsewhere).
struct BlockLocks {
    stripes: Box<[RwLock<()>]>,
}

enum BlockGuard<'a> {
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

impl BlockLocks {
    fn new() -> Self {
        BlockLocks {
            stripes: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }

    /// Locks blocks `first..end` (block numbers), exclusively those in
    /// `exclusive`. Stripes are taken in ascending order, so writers never
    /// deadlock.
    fn lock(&self, first: u64, end: u64, exclusive: &[u64]) -> Vec<BlockGuard<'_>> {
        let n = LOCK_STRIPES as u64;
        let mut want: Vec<(usize, bool)> = if end - first >= n {
            (0..LOCK_STRIPES).map(|s| (s, false)).collect()
        } else {
            (first..end).map(|b| ((b % n) as usize, false)).collect()
        };
        want.extend(exclusive.iter().map(|b| ((b % n) as usize, true)));
        // Exclusive sorts after shared for the same stripe; keep the last.
        want.sort_unstable();
        let mut guards = Vec::with_capacity(want.len());
        for (i, &(s, excl)) in want.iter().enumerate() {
            if want.get(i + 1).is_some_and(|&(t, _)| t == s) {
                continue;
            }
            let l = &self.stripes[s];
            guards.push(if excl {
                BlockGuard::Exclusive(l.write().unwrap_or_else(|p| p.into_inner()))
            } else {
                BlockGuard::Shared(l.read().unwrap_or_else(|p| p.into_inner()))
            });
        }
        guards
    }
}

/// Distinguishes file systems, so a thread's queue belongs to one array.
static NEXT_FS_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_QUEUE_ID: AtomicU32 = AtomicU32::new(0);

/// One FUSE worker thread's state: its queue on the array and spare buffers.
struct Worker {
    fs_id: u64,
    queue: Queue,
    spare: Vec<AlignedBuf>,
    done: Vec<Completion>,
}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

impl Worker {
    /// A buffer of `len` bytes (contents unspecified), reusing a spare one.
    fn buf(&mut self, len: usize) -> AlignedBuf {
        match self.spare.iter().position(|b| b.capacity() >= len) {
            Some(i) => {
                let mut b = self.spare.swap_remove(i);
                b.set_len(len);
                b
            }
            None => AlignedBuf::new(len),
        }
    }

    fn give_back(&mut self, buf: Option<AlignedBuf>) {
        if let Some(b) = buf
            && self.spare.len() < SPARE_BUFS
            && b.capacity() <= MAX_IO as usize + 2 * BLOCK as usize
        {
            self.spare.push(b);
        }
    }

    /// Submits `reqs` (tagged 0..n) and waits until all have completed.
    /// Returns the completions in request order, or the first error.
    fn run(&mut self, reqs: Vec<Request>) -> Result<Vec<Completion>, Errno> {
        let n = reqs.len();
        for r in reqs {
            self.queue.submit(r);
        }
        self.done.clear();
        while self.done.len() < n {
            if let Err(e) = self.queue.poll(&mut self.done, true, None) {
                tracing::error!("array queue poll failed: {e}");
                return Err(Errno::EIO);
            }
        }
        let mut out: Vec<Completion> = self.done.drain(..).collect();
        out.sort_by_key(|c| c.user);
        if let Some(c) = out.iter().find(|c| c.result < 0) {
            let err = Errno::from_i32(-c.result);
            for c in out {
                self.give_back(c.buf);
            }
            return Err(err);
        }
        Ok(out)
    }

    /// Reads `len` bytes at the block-aligned `offset`.
    fn read_blocks(&mut self, offset: u64, len: u32) -> Result<AlignedBuf, Errno> {
        let buf = self.buf(len as usize);
        let mut c = self.run(vec![Request {
            op: Op::Read,
            offset,
            len,
            buf: Some(buf),
            user: 0,
        }])?;
        c.pop().and_then(|c| c.buf).ok_or(Errno::EIO)
    }
}

/// The file system: a root directory holding `disk.img`.
struct AugurFs {
    array: Array,
    id: u64,
    size: u64,
    locks: BlockLocks,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
}

impl AugurFs {
    fn new(array: Array) -> Self {
        // SAFETY: getuid/getgid cannot fail and have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        AugurFs {
            size: array.size(),
            array,
            id: NEXT_FS_ID.fetch_add(1, Relaxed),
            locks: BlockLocks::new(),
            uid,
            gid,
            mounted_at: SystemTime::now(),
        }
    }

    /// Runs `f` with this thread's worker, creating its queue on first use.
    fn with_worker<R>(&self, f: impl FnOnce(&mut Worker) -> Result<R, Errno>) -> Result<R, Errno> {
        WORKER.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|w| w.fs_id != self.id) {
                let qid = NEXT_QUEUE_ID.fetch_add(1, Relaxed);
                let queue = self.array.queue(qid, RING_ENTRIES).map_err(|e| {
                    tracing::error!("cannot open an array queue: {e}");
                    Errno::EIO
                })?;
                tracing::debug!("FUSE worker queue {qid} opened");
                *slot = Some(Worker {
                    fs_id: self.id,
                    queue,
                    spare: Vec::new(),
                    done: Vec::new(),
                });
            }
            match slot.as_mut() {
                Some(w) => f(w),
                None => Err(Errno::EIO),
            }
        })
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, nlink, size) = match ino {
            ROOT_INO => (FileType::Directory, 0o755, 2, 0),
            DISK_INO => (FileType::RegularFile, 0o644, 1, self.size),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size / 512,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK as u32,
            flags: 0,
        })
    }

    fn do_read(&self, offset: u64, size: u32) -> Result<(AlignedBuf, usize, usize), Errno> {
        let end = offset.saturating_add(size as u64).min(self.size);
        if offset >= end {
            return Ok((AlignedBuf::new(0), 0, 0));
        }
        let a0 = offset / BLOCK * BLOCK;
        let a1 = end.div_ceil(BLOCK) * BLOCK;
        let len = u32::try_from(a1 - a0).map_err(|_| Errno::EINVAL)?;
        let buf = self.with_worker(|w| w.read_blocks(a0, len))?;
        let start = (offset - a0) as usize;
        Ok((buf, start, start + (end - offset) as usize))
    }

    /// Writes `data` at `offset`; returns the bytes written (short at the
    /// end of the device).
    fn do_write(&self, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        if offset >= self.size {
            return Err(Errno::ENOSPC);
        }
        let len = (data.len() as u64).min(self.size - offset);
        if len == 0 {
            return Ok(0);
        }
        let data = &data[..len as usize];
        let end = offset + len;
        let a0 = offset / BLOCK * BLOCK;
        let a1 = end.div_ceil(BLOCK) * BLOCK;
        let span = u32::try_from(a1 - a0).map_err(|_| Errno::EINVAL)?;
        let (first, last) = (a0 / BLOCK, a1 / BLOCK - 1);
        let head_partial = offset != a0 || (first == last && end != a1);
        let tail_partial = end != a1 && last != first;
        let mut rmw = Vec::with_capacity(2);
        if head_partial {
            rmw.push(first);
        }
        if tail_partial {
            rmw.push(last);
        }
        let _guards = self.locks.lock(first, last + 1, &rmw);
        self.with_worker(|w| {
            let mut buf = w.buf(span as usize);
            if !rmw.is_empty() {
                let reads = rmw
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| {
                        let rb = w.buf(BLOCK as usize);
                        Request {
                            op: Op::Read,
                            offset: b * BLOCK,
                            len: BLOCK as u32,
                            buf: Some(rb),
                            user: i as u64,
                        }
                    })
                    .collect();
                let old = w.run(reads)?;
                for (c, &b) in old.into_iter().zip(&rmw) {
                    let Some(ob) = c.buf else {
                        return Err(Errno::EIO);
                    };
                    let at = ((b - first) * BLOCK) as usize;
                    buf[at..at + BLOCK as usize].copy_from_slice(&ob);
                    w.give_back(Some(ob));
                }
            }
            let at = (offset - a0) as usize;
            buf[at..at + data.len()].copy_from_slice(data);
            let mut c = w.run(vec![Request {
                op: Op::Write,
                offset: a0,
                len: span,
                buf: Some(buf),
                user: 0,
            }])?;
            w.give_back(c.pop().and_then(|c| c.buf));
            Ok(len as u32)
        })
    }

    /// Discards (punch-hole) or zeroes `offset..offset+len`: partial edge
    /// blocks are zeroed by read-modify-write, whole blocks go to the array
    /// as `op` (discard or write-zeroes) in chunks.
    fn do_zero(&self, op: Op, offset: u64, len: u64) -> Result<(), Errno> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(());
        }
        let a0 = offset / BLOCK * BLOCK;
        let a1 = end.div_ceil(BLOCK) * BLOCK;
        let (first, last) = (a0 / BLOCK, a1 / BLOCK - 1);
        // Whole blocks inside the range.
        let m0 = offset.div_ceil(BLOCK) * BLOCK;
        let m1 = end / BLOCK * BLOCK;
        let mut rmw = Vec::with_capacity(2);
        if offset != a0 || (first == last && end != a1) {
            rmw.push(first);
        }
        if end != a1 && last != first {
            rmw.push(last);
        }
        let _guards = self.locks.lock(first, last + 1, &rmw);
        self.with_worker(|w| {
            for &b in &rmw {
                let bstart = b * BLOCK;
                let mut blk = w.read_blocks(bstart, BLOCK as u32)?;
                let z0 = offset.max(bstart) - bstart;
                let z1 = end.min(bstart + BLOCK) - bstart;
                blk[z0 as usize..z1 as usize].fill(0);
                let mut c = w.run(vec![Request {
                    op: Op::Write,
                    offset: bstart,
                    len: BLOCK as u32,
                    buf: Some(blk),
                    user: 0,
                }])?;
                w.give_back(c.pop().and_then(|c| c.buf));
            }
            let mut at = m0;
            while at < m1 {
                let n = (m1 - at).min(ZERO_CHUNK);
                w.run(vec![Request {
                    op,
                    offset: at,
                    len: n as u32,
                    buf: None,
                    user: 0,
                }])?;
                at += n;
            }
            Ok(())
        })
    }

    fn do_flush(&self) -> Result<(), Errno> {
        self.with_worker(|w| {
            w.run(vec![Request {
                op: Op::Flush,
                offset: 0,
                len: 0,
                buf: None,
                user: 0,
            }])
            .map(|_| ())
        })
    }
}

impl Filesystem for AugurFs {
    fn init(&mut self, _req: &FuseRequest, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO) {
            tracing::warn!(
                "the kernel lacks {missing:?}: a loop device on the FUSE file will serialise"
            );
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        if let Err(max) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        // Async direct I/O is sent as background requests: let many run.
        let _ = config.set_max_background(256);
        let _ = config.set_congestion_threshold(192);
        Ok(())
    }

    fn lookup(&self, _req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attr(DISK_INO) {
            Some(a) if parent == ROOT_INO && name == DISK_NAME => {
                reply.entry(&TTL, &a, Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &FuseRequest, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(a) = self.attr(ino) else {
            return reply.error(Errno::ENOENT);
        };
        // The device has a fixed size; other attribute changes are accepted
        // and forgotten (there is nowhere to keep them).
        if size.is_some_and(|s| s != a.size) {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &a)
    }

    fn open(&self, _req: &FuseRequest, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino {
            DISK_INO => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
            ),
            ROOT_INO => reply.error(Errno::EISDIR),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        if ino != DISK_INO {
            return reply.error(Errno::EISDIR);
        }
        match self.do_read(offset, size) {
            Ok((buf, a, b)) => {
                reply.data(&buf[a..b]);
                let _ = self.with_worker(|w| {
                    w.give_back(Some(buf));
                    Ok(())
                });
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != DISK_INO {
            return reply.error(Errno::EISDIR);
        }
        match self.do_write(offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(): nothing is cached here, and durability is fsync's job.
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.do_flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT_INO, FileType::Directory, "."),
            (ROOT_INO, FileType::Directory, ".."),
            (DISK_INO, FileType::RegularFile, DISK_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&self, _req: &FuseRequest, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.size / BLOCK;
        reply.statfs(blocks, 0, 0, 1, 0, BLOCK as u32, 255, BLOCK as u32)
    }

    fn access(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _mask: fuser::AccessFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fallocate(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != DISK_INO {
            return reply.error(Errno::EISDIR);
        }
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let rest = mode & !libc::FALLOC_FL_KEEP_SIZE;
        let beyond = offset.saturating_add(length) > self.size;
        let result = if rest == 0 {
            // Preallocation: every byte of the device already exists.
            if beyond && !keep {
                Err(Errno::ENOSPC)
            } else {
                Ok(())
            }
        } else if rest == libc::FALLOC_FL_PUNCH_HOLE {
            self.do_zero(Op::Discard, offset, length)
        } else if rest == libc::FALLOC_FL_ZERO_RANGE {
            if beyond && !keep {
                Err(Errno::ENOSPC)
            } else {
                self.do_zero(Op::WriteZeroes, offset, length)
            }
        } else {
            Err(Errno::EOPNOTSUPP)
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mount("/tmp/a\\040b"), b"/tmp/a b");
        assert_eq!(unescape_mount("/x\\"), b"/x\\");
        assert_eq!(unescape_mount("/plain"), b"/plain");
    }

    #[test]
    fn lock_table_orders_and_merges() {
        let l = BlockLocks::new();
        // Same stripe twice (block 3 and 3 + LOCK_STRIPES): one guard, exclusive.
        let g = l.lock(3, 4, &[3, 3 + LOCK_STRIPES as u64]);
        assert_eq!(g.len(), 1);
        assert!(matches!(g[0], BlockGuard::Exclusive(_)));
        drop(g);
        let g = l.lock(0, 5000, &[0]);
        assert_eq!(g.len(), LOCK_STRIPES);
        drop(g);
        // Shared locks of different writers coexist.
        let a = l.lock(10, 12, &[]);
        let b = l.lock(11, 13, &[]);
        assert_eq!((a.len(), b.len()), (2, 2));
    }

    #[test]
    fn mount_dir_checks() {
        let d = tempfile::tempdir().unwrap();
        let e = check_mount_dir(&d.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let e = check_mount_dir(&d.path().join("f"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
        let e = check_mount_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        let sub = d.path().join("m");
        std::fs::create_dir(&sub).unwrap();
        assert!(check_mount_dir(&sub).is_ok());
        assert!(check_mount_dir(Path::new("/proc")).is_err());
    }
}

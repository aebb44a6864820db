//! End-to-end tests of `augur fuse`: the real binary on three emulated
//! gc-heavy replicas in /dev/shm, driven by fio, losetup, mkfs.ext4 and plain
//! file I/O.
//!
//! They need root, /dev/fuse, fio, losetup, mkfs.ext4, e2fsck, mount and
//! sha256sum. Not root: each test prints why and passes without running.
//! Root but a tool missing: the test fails naming what is missing
//! (`scripts/test-all` installs them).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::{Duration, Instant};

mod common;
use common::{must, run_timeout, wait_timeout, which};

const SIZE: u64 = 64 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_augur");

/// The tests share loop devices and two cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// True when the test should run; panics (the test fails) when root but a
/// prerequisite is missing.
fn ready() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: the FUSE tests need root (mount, losetup)");
        return false;
    }
    let mut missing = Vec::new();
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse (modprobe fuse, or give the container the device)".to_string());
    }
    for tool in [
        "fio",
        "losetup",
        "mkfs.ext4",
        "e2fsck",
        "mount",
        "umount",
        "sha256sum",
    ] {
        if which(tool).is_none() {
            missing.push(tool.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "FUSE tests cannot run, missing: {} (Debian: apt-get install fio e2fsprogs mount coreutils; scripts/test-all installs them)",
        missing.join(", ")
    );
    true
}

/// Three emulated replicas in /dev/shm and a mount directory under /tmp.
/// Dropping it stops any daemon, unmounts what the test mounted, detaches
/// loop devices and removes everything, in that order.
struct Fixture {
    daemon: Option<Daemon>,
    /// File systems mounted on the loop device (unmounted first on drop).
    fs_mounts: Vec<PathBuf>,
    mount: PathBuf,
    replicas: Vec<PathBuf>,
    _shm: tempfile::TempDir,
    tmp: tempfile::TempDir,
}

struct Daemon {
    child: Child,
    file: PathBuf,
    loop_dev: Option<String>,
    stderr: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let shm_base = if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        };
        let shm = tempfile::Builder::new()
            .prefix("augur-fuse-replicas-")
            .tempdir_in(shm_base)
            .unwrap();
        let tmp = tempfile::Builder::new()
            .prefix("augur-fuse-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let mount = tmp.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let replicas = (0..3).map(|i| shm.path().join(format!("r{i}"))).collect();
        Fixture {
            daemon: None,
            fs_mounts: Vec::new(),
            mount,
            replicas,
            _shm: shm,
            tmp,
        }
    }

    /// Starts `augur fuse` and waits until it prints its paths.
    fn start(&mut self, policy: &str, with_loop: bool) -> &Daemon {
        self.start_with(policy, with_loop, &[])
    }

    /// [`start`](Self::start) with more flags.
    fn start_with(&mut self, policy: &str, with_loop: bool, extra: &[&str]) -> &Daemon {
        assert!(self.daemon.is_none(), "a daemon is already running");
        let stderr = self.tmp.path().join("daemon.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("fuse");
        for r in &self.replicas {
            cmd.arg("--replica")
                .arg(format!("emu:gc-heavy:{}", r.display()));
        }
        cmd.args(["--size", "64M", "--policy", policy, "--mount"])
            .arg(&self.mount);
        if with_loop {
            cmd.arg("--loop");
        }
        cmd.args(extra);
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("starting augur fuse");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let want = if with_loop { 2 } else { 1 };
        let mut file = None;
        let mut loop_dev = None;
        let end = Instant::now() + Duration::from_secs(20);
        let mut lines = 0;
        while lines < want {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    lines += 1;
                    if let Some(p) = l.strip_prefix("file ") {
                        file = Some(PathBuf::from(p));
                    } else if let Some(d) = l.strip_prefix("loop ") {
                        loop_dev = Some(d.to_string());
                    } else {
                        panic!("unexpected output from augur fuse: {l}");
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "augur fuse did not get ready within 20 s: {}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    );
                }
            }
        }
        let file = file.expect("augur fuse printed no file line");
        assert_eq!(file, self.mount.canonicalize().unwrap().join("disk.img"));
        assert_eq!(std::fs::metadata(&file).unwrap().len(), SIZE);
        self.daemon = Some(Daemon {
            child,
            file,
            loop_dev,
            stderr,
        });
        self.daemon.as_ref().unwrap()
    }

    /// The running daemon's control socket.
    fn socket(&self) -> PathBuf {
        let name = augur::control::fuse_name(&self.mount.canonicalize().unwrap());
        augur::control::run_dir().join(format!("{name}.sock"))
    }

    /// SIGTERM; the daemon must exit 0 within 20 s, leaving no mount and no loop device.
    fn stop(&mut self) {
        let mut d = self.daemon.take().expect("no daemon running");
        // SAFETY: kill with a child's pid (still ours: not yet waited for).
        unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
        let status = wait_timeout(&mut d.child, Duration::from_secs(20));
        let log = std::fs::read_to_string(&d.stderr).unwrap_or_default();
        let Some(status) = status else {
            let _ = d.child.kill();
            let _ = d.child.wait();
            panic!("augur fuse did not stop within 20 s of SIGTERM:\n{log}");
        };
        assert!(status.success(), "augur fuse exited {status}:\n{log}");
        assert!(!is_mounted(&self.mount), "still mounted after stop:\n{log}");
        assert!(
            !self.socket().exists(),
            "control socket left after stop:\n{log}"
        );
        if let Some(dev) = &d.loop_dev {
            assert!(
                !loop_attached(dev),
                "{dev} still attached after stop:\n{log}"
            );
        }
    }

    /// kill -9, as a crash would.
    fn crash(&mut self) -> Daemon {
        let mut d = self.daemon.take().expect("no daemon running");
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        d
    }

    fn cleanup(&self) -> String {
        must(
            Command::new(BIN)
                .arg("fuse")
                .arg("--cleanup")
                .arg(&self.mount),
            30,
        )
    }

    /// Mounts the loop device's file system at a fresh directory.
    fn mount_fs(&mut self, dev: &str, opts: &str) -> PathBuf {
        let dir = self.tmp.path().join(format!("fs{}", self.fs_mounts.len()));
        std::fs::create_dir_all(&dir).unwrap();
        must(Command::new("mount").args(["-o", opts, dev]).arg(&dir), 60);
        self.fs_mounts.push(dir.clone());
        dir
    }

    fn umount_fs(&mut self, dir: &Path) {
        must(Command::new("umount").arg(dir), 60);
        self.fs_mounts.retain(|d| d != dir);
    }

    /// Asserts the three replica files are byte for byte identical.
    fn assert_replicas_identical(&self) {
        let first = std::fs::read(&self.replicas[0]).unwrap();
        assert_eq!(first.len() as u64, SIZE);
        for r in &self.replicas[1..] {
            let other = std::fs::read(r).unwrap();
            if let Some(i) = first.iter().zip(&other).position(|(a, b)| a != b) {
                panic!(
                    "replica {} differs from {} at byte {i}",
                    r.display(),
                    self.replicas[0].display()
                );
            }
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for d in self.fs_mounts.drain(..).rev() {
            let _ = Command::new("umount").arg("-l").arg(&d).status();
        }
        if let Some(mut d) = self.daemon.take() {
            if let Some(dev) = &d.loop_dev {
                let _ = Command::new("losetup").arg("-d").arg(dev).status();
            }
            // SAFETY: kill with our child's pid.
            unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
            if wait_timeout(&mut d.child, Duration::from_secs(10)).is_none() {
                let _ = d.child.kill();
                let _ = d.child.wait();
            }
        }
        // Whatever is left (a crashed daemon's mount or loop device).
        let _ = Command::new(BIN)
            .arg("fuse")
            .arg("--cleanup")
            .arg(&self.mount)
            .stdout(Stdio::null())
            .status();
    }
}

fn is_mounted(dir: &Path) -> bool {
    let parent = dir.parent().unwrap().canonicalize().unwrap();
    let want = parent.join(dir.file_name().unwrap());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.to_str().unwrap()))
}

fn loop_attached(dev: &str) -> bool {
    Path::new(&format!(
        "/sys/block/{}/loop/backing_file",
        dev.trim_start_matches("/dev/")
    ))
    .exists()
}

/// fio random read/write with crc32c verification; panics on any error.
fn fio_verify(target: &str, name: &str) {
    fio_verify_sized(target, name, "6M");
}

/// [`fio_verify`] moving `io_size` bytes.
fn fio_verify_sized(target: &str, name: &str, io_size: &str) {
    let out = must(
        Command::new("fio")
            .arg(format!("--name={name}"))
            .arg(format!("--filename={target}"))
            .args([
                "--ioengine=io_uring",
                "--direct=1",
                "--rw=randrw",
                "--rwmixread=50",
                "--bsrange=4k-64k",
                "--iodepth=16",
                "--size=64M",
                &format!("--io_size={io_size}"),
                "--verify=crc32c",
                "--verify_fatal=1",
                "--do_verify=1",
                "--verify_state_save=0",
                "--randrepeat=0",
                "--output-format=terse",
                "--terse-version=3",
            ]),
        120,
    );
    // Terse v3: field 5 is the error count.
    let err = out.split(';').nth(4).unwrap_or("?");
    assert_eq!(err, "0", "fio reported errors on {target}: {out}");
}

/// Deterministic pseudo-random bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn fio_verify_every_policy_on_file_and_loop() {
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::new();
    for &policy in augur::POLICY_NAMES {
        let d = fx.start(policy, true);
        let file = d.file.to_str().unwrap().to_string();
        let dev = d.loop_dev.clone().expect("no loop device printed");
        fio_verify(&file, &format!("file-{policy}"));
        fio_verify(&dev, &format!("loop-{policy}"));
        fx.stop();
        fx.assert_replicas_identical();
    }
}

#[test]
fn ext4_on_loop_survives_remount_and_restart() {
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::new();
    let dev = fx.start("hedge", true).loop_dev.clone().unwrap();
    // mkfs discards the whole device first: punch-hole through FUSE.
    must(Command::new("mkfs.ext4").args(["-q", "-F", &dev]), 120);
    let dir = fx.mount_fs(&dev, "rw");
    let mut n = 0;
    for d in 0..4 {
        let sub = dir.join(format!("dir{d}/nested"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..6 {
            let len = [0, 1, 511, 4096, 5000, 70_001][f] * (d + 1);
            std::fs::write(sub.join(format!("f{f}")), pattern(n, len)).unwrap();
            n += 1;
        }
    }
    std::fs::write(dir.join("big"), pattern(999, 3 << 20)).unwrap();
    let sums = must(
        Command::new("sh")
            .arg("-c")
            .arg("find . -type f | sort | xargs sha256sum")
            .current_dir(&dir),
        60,
    );
    assert_eq!(sums.lines().count(), 25, "{sums}");
    let sums_file = fx.tmp.path().join("sums");
    std::fs::write(&sums_file, &sums).unwrap();
    let verify = |dir: &Path| {
        must(
            Command::new("sha256sum")
                .arg("--quiet")
                .arg("-c")
                .arg(&sums_file)
                .current_dir(dir),
            60,
        );
    };
    fx.umount_fs(&dir);
    let dir = fx.mount_fs(&dev, "rw");
    verify(&dir);
    // Deleting files and fstrim send discards through the loop device.
    std::fs::remove_dir_all(dir.join("dir3")).unwrap();
    must(&mut Command::new("sync"), 60);
    if which("fstrim").is_some() {
        must(Command::new("fstrim").arg(&dir), 60);
    }
    fx.umount_fs(&dir);
    must(Command::new("e2fsck").args(["-f", "-n", &dev]), 60);
    fx.stop();
    fx.assert_replicas_identical();

    // A new daemon (another policy) on the same replicas sees the same file system.
    let dev = fx.start("random", true).loop_dev.clone().unwrap();
    let dir = fx.mount_fs(&dev, "ro");
    let remaining: String = sums
        .lines()
        .filter(|l| !l.contains("./dir3/"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&sums_file, remaining).unwrap();
    verify(&dir);
    fx.umount_fs(&dir);
    fx.stop();
    fx.assert_replicas_identical();
}

#[test]
fn killed_daemon_reports_errors_and_keeps_acknowledged_data() {
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::new();
    let d = fx.start("baseline", true);
    let file = d.file.clone();
    let dev = d.loop_dev.clone().unwrap();
    // Acknowledged data: written and fsynced before the crash.
    let acked = pattern(7, 8 << 20);
    {
        let f = OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&acked, 1 << 20).unwrap();
        f.sync_all().unwrap();
    }
    // A writer busy on another region while the daemon dies.
    let mut writer = Command::new("fio")
        .arg(format!("--filename={}", file.display()))
        .args([
            "--name=crash",
            "--ioengine=io_uring",
            "--direct=1",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--offset=32M",
            "--size=32M",
            "--time_based",
            "--runtime=60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        writer.try_wait().unwrap().is_none(),
        "fio stopped before the crash"
    );
    fx.crash();
    // The writer sees errors and stops; nothing hangs.
    let status = wait_timeout(&mut writer, Duration::from_secs(20));
    if status.is_none() {
        let _ = writer.kill();
        let _ = writer.wait();
        panic!("fio still running 20 s after the daemon died");
    }
    assert!(
        !status.unwrap().success(),
        "fio reported success though the daemon died"
    );
    let e = std::fs::read(&file).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    let o = run_timeout(
        Command::new("dd").args([
            &format!("if={dev}"),
            "of=/dev/null",
            "bs=4k",
            "count=1",
            "iflag=direct",
        ]),
        20,
    );
    assert!(!o.status.success(), "reading {dev} worked after the crash");
    // A new daemon refuses the dead mount and says how to clear it.
    let o = run_timeout(
        Command::new(BIN)
            .arg("fuse")
            .arg("--replica")
            .arg(&fx.replicas[0])
            .arg("--mount")
            .arg(&fx.mount),
        20,
    );
    assert_eq!(o.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(msg.contains("--cleanup"), "{msg}");
    let out = fx.cleanup();
    assert!(out.contains(&format!("detached {dev}")), "{out}");
    assert!(out.contains("unmounted"), "{out}");
    assert!(!loop_attached(&dev));
    assert!(!is_mounted(&fx.mount));
    assert!(fx.cleanup().contains("nothing to clean up"));
    // Restart on the same replicas: the acknowledged data is there.
    let file = fx.start("random", false).file.clone();
    let mut got = vec![0u8; acked.len()];
    File::open(&file)
        .unwrap()
        .read_exact_at(&mut got, 1 << 20)
        .unwrap();
    assert!(got == acked, "acknowledged data lost after the crash");
    fx.stop();
}

#[test]
fn unaligned_io_matches_a_reference_file() {
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::new();
    let file = fx.start("random", false).file.clone();
    let disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    let mut reference = vec![0u8; SIZE as usize];
    disk.read_exact_at(&mut reference, 0).unwrap();
    assert!(reference.iter().all(|&b| b == 0), "fresh replicas not zero");
    let mut x: u64 = 42;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for i in 0..1500 {
        let len = 1 + next(if i % 10 == 0 { 300_000 } else { 9000 }) as usize;
        let off = next(SIZE - len as u64);
        if next(3) > 0 {
            let data = pattern(i, len);
            disk.write_all_at(&data, off).unwrap();
            reference[off as usize..off as usize + len].copy_from_slice(&data);
        } else {
            let mut got = vec![0u8; len];
            disk.read_exact_at(&mut got, off).unwrap();
            assert!(
                got[..] == reference[off as usize..off as usize + len],
                "read {len} bytes at {off} differs from the reference"
            );
        }
    }
    // Writes across the end are short; reads there stop at the end.
    let tail = pattern(5, 100);
    assert_eq!(disk.write_at(&tail, SIZE - 30).unwrap(), 30);
    reference[SIZE as usize - 30..].copy_from_slice(&tail[..30]);
    let mut buf = [0u8; 100];
    assert_eq!(disk.read_at(&mut buf, SIZE - 10).unwrap(), 10);
    assert_eq!(disk.read_at(&mut buf, SIZE + 7).unwrap(), 0);
    // Punch-hole (discard) and zero-range at odd offsets.
    let fallocate = |mode: i32, off: u64, len: u64| {
        // SAFETY: a valid open fd; fallocate reads only its integer arguments.
        let rc = unsafe { libc::fallocate(disk.as_raw_fd(), mode, off as i64, len as i64) };
        assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    };
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    for (mode, off, len) in [
        (punch, 1000u64, 20_000u64),
        (libc::FALLOC_FL_ZERO_RANGE, 50_001, 9000),
        (punch, 3 << 20, 1 << 20),
        (libc::FALLOC_FL_ZERO_RANGE, (5 << 20) + 7, 100),
    ] {
        fallocate(mode, off, len);
        reference[off as usize..(off + len) as usize].fill(0);
    }
    // Unaligned writers on neighbouring bytes of the same blocks, at once
    // (in lock step): the read-modify-writes must not lose each other's bytes.
    let threads = 4u64;
    let blocks = 512u64;
    let base = 9u64 << 20;
    let piece = move |t: u64, b: u64| {
        (
            base + b * 4096 + t * 1024 + 3,
            pattern(t * 100_000 + b, 1000),
        )
    };
    let barrier = Arc::new(Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let disk = disk.try_clone().unwrap();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                for b in 0..blocks {
                    barrier.wait();
                    let (off, data) = piece(t, b);
                    disk.write_all_at(&data, off).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for b in 0..blocks {
        for t in 0..threads {
            let (off, data) = piece(t, b);
            reference[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
    }
    disk.sync_all().unwrap();
    let mut all = vec![0u8; SIZE as usize];
    disk.read_exact_at(&mut all, 0).unwrap();
    if let Some(i) = all.iter().zip(&reference).position(|(a, b)| a != b) {
        panic!("disk.img differs from the reference at byte {i}");
    }
    drop(disk);
    fx.stop();
    fx.assert_replicas_identical();
    assert!(std::fs::read(&fx.replicas[0]).unwrap() == reference);
}

#[test]
fn bad_mount_dirs_exit_2_and_leave_nothing() {
    // No root needed: the mount directory is checked before anything else.
    let tmp = tempfile::tempdir().unwrap();
    let replica = tmp.path().join("r0");
    let not_empty = tmp.path().join("full");
    std::fs::create_dir(&not_empty).unwrap();
    std::fs::write(not_empty.join("x"), b"x").unwrap();
    for (mount, what) in [
        (tmp.path().join("missing"), "does not exist"),
        (not_empty.clone(), "not empty"),
        (not_empty.join("x"), "not a directory"),
    ] {
        let o = run_timeout(
            Command::new(BIN)
                .arg("fuse")
                .arg("--replica")
                .arg(&replica)
                .args(["--size", "1M", "--mount"])
                .arg(&mount),
            20,
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(what), "{err}");
        assert!(!replica.exists(), "a replica file was left behind");
    }
}

/// One request over the socket, the reply as JSON.
fn ctl(sock: &Path, cmd: augur::control::Command) -> augur::control::Reply {
    augur::control::request(sock, cmd, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("control request failed: {e}"))
}

/// Sends raw bytes as one request and reads the framed reply.
fn raw_request(sock: &Path, bytes: &[u8]) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// A model file that differs from the shipped one (random weights).
fn other_model(dir: &Path, seed: u64) -> PathBuf {
    let m =
        augur_predictor::Model::random(augur_predictor::FeatureSet::LinnOsWrite, &[64], 2, seed)
            .unwrap();
    let p = dir.join(format!("other-{seed}.augm"));
    m.save(&p).unwrap();
    p
}

/// The control socket of a live FUSE daemon: its modes, every command
/// through `augur ctl`, malformed, unknown and oversized requests, a caller
/// that is not root (refused by the modes, then by the peer check once the
/// modes are loosened), a bad model file that leaves the active one; and the
/// data still reads back after all of it.
#[test]
fn control_socket_commands_bad_requests_and_non_root_callers() {
    use augur::control::Command as C;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::new();
    let file = fx.start("linnos", false).file.clone();
    let sock = fx.socket();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sock), 0o600);
    assert_eq!(mode(sock.parent().unwrap()), 0o700);
    let s = sock.to_str().unwrap();
    let ctl_cli = |args: &[&str]| {
        let mut a = vec!["ctl", "--socket", s];
        a.extend_from_slice(args);
        common::augur(&a)
    };
    // Some I/O, then every read command.
    let data = pattern(3, 1 << 20);
    OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .write_all_at(&data, 0)
        .unwrap();
    let o = ctl_cli(&["status"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        out.contains("policy linnos") && out.contains("live"),
        "{out}"
    );
    let o = ctl_cli(&["stats"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success() && out.contains("predictor (cpu)"),
        "{out}"
    );
    let st = ctl(&sock, C::Stats);
    assert!(
        st.result["counters"]["writes"].as_u64().unwrap() > 0,
        "{st:?}"
    );
    let shipped = ctl(&sock, C::ModelShow).result["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        shipped,
        augur_predictor::Model::default_model().unwrap().id()
    );
    // A bad model file: refused with its reason, the active one stays.
    let bad = fx.tmp.path().join("bad.augm");
    std::fs::write(&bad, b"not a model").unwrap();
    let o = ctl_cli(&["model", "load", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("not an Augur model file"),
        "{}",
        common::stderr(&o)
    );
    assert_eq!(ctl(&sock, C::ModelShow).result["id"], shipped.as_str());
    // A good one swaps in; the reply names both; rollback restores.
    let other = other_model(fx.tmp.path(), 5);
    let r = ctl(
        &sock,
        C::ModelLoad {
            file: other.display().to_string(),
        },
    );
    assert!(r.ok, "{r:?}");
    assert_eq!(r.result["old"], shipped.as_str());
    let new = r.result["new"].as_str().unwrap().to_string();
    assert_ne!(new, shipped);
    assert_eq!(ctl(&sock, C::ModelShow).result["id"], new.as_str());
    let o = ctl_cli(&["model", "rollback"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(ctl(&sock, C::ModelShow).result["id"], shipped.as_str());
    assert_eq!(ctl_cli(&["model", "rollback"]).status.code(), Some(2));
    let h = ctl(&sock, C::ModelHistory).result["events"].clone();
    let events: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["start", "rejected", "load", "rollback"], "{h}");
    // Policy.
    assert!(ctl_cli(&["policy", "set", "hedge"]).status.success());
    assert_eq!(ctl(&sock, C::Status).result["policy"], "hedge");
    assert_eq!(
        ctl_cli(&["policy", "set", "fastest"]).status.code(),
        Some(2)
    );
    assert!(ctl_cli(&["policy", "set", "linnos"]).status.success());
    // The emulated replicas change profile under the running device.
    let o = ctl_cli(&["emu", "set-profile", "fast-nvme"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("3 emulated replica(s) now run profile fast-nvme")
    );
    let o = ctl_cli(&["emu", "set-profile", "no-such-profile"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("no-such-profile"),
        "{}",
        common::stderr(&o)
    );
    // Recording the live device.
    let log = fx.tmp.path().join("live.log");
    assert!(
        ctl_cli(&["record", "start", log.to_str().unwrap()])
            .status
            .success()
    );
    assert_eq!(
        ctl_cli(&["record", "start", log.to_str().unwrap()])
            .status
            .code(),
        Some(2)
    );
    let mut back = vec![0u8; data.len()];
    File::open(&file)
        .unwrap()
        .read_exact_at(&mut back, 0)
        .unwrap();
    let r = ctl(&sock, C::RecordStop);
    let n = r.result["records"].as_u64().unwrap();
    assert!(n > 0, "{r:?}");
    let recs = augur_feature_store::read_log(&log).unwrap();
    assert_eq!(recs.len() as u64, n);
    // Raw protocol: every bad request gets an error reply naming the problem.
    for (bytes, says) in [
        (framed(b"{not json"), "malformed request"),
        (
            framed(br#"{"version":1,"command":"format"}"#),
            "unknown command 'format'",
        ),
        (framed(br#"{"version":9,"command":"status"}"#), "version 9"),
        (
            framed(&vec![b' '; 100_000]),
            "100000 bytes is over the 65536-byte limit",
        ),
        (
            (1u32 << 30).to_be_bytes().to_vec(),
            "over the 65536-byte limit",
        ),
    ] {
        let r = raw_request(&sock, &bytes);
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["error"].as_str().unwrap().contains(says), "{r}");
    }
    // Not root: the socket's modes refuse the connection...
    let nobody = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(["ctl", "--socket", s])
            .args(args)
            .uid(65534)
            .gid(65534);
        run_timeout(&mut c, 30)
    };
    let o = nobody(&["status"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("Permission denied"),
        "{}",
        common::stderr(&o)
    );
    // ...and with the modes loosened, the peer check does.
    let dir = sock.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = nobody(&["model", "load", "default"]);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("permission denied: uid 65534 is not root"),
        "{}",
        common::stderr(&o)
    );
    assert_eq!(ctl(&sock, C::ModelShow).result["id"], shipped.as_str());
    // I/O was never disturbed.
    assert_eq!(back, data);
    let st = ctl(&sock, C::Stats).result;
    assert_eq!(st["counters"]["failed_requests"], 0, "{st}");
    fx.stop();
}

/// Models swapped every 100 ms while fio writes and verifies (crc32c) on
/// the FUSE device: no verify error, no failed request.
#[test]
fn fio_verify_while_models_swap_every_100ms() {
    use augur::control::Command as C;
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::new();
    let file = fx.start("linnos", false).file.to_str().unwrap().to_string();
    let sock = fx.socket();
    let models = [
        "default".to_string(),
        other_model(fx.tmp.path(), 7).display().to_string(),
        other_model(fx.tmp.path(), 8).display().to_string(),
    ];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, sock) = (stop.clone(), sock.clone());
        std::thread::spawn(move || {
            let mut swaps = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let file = models[swaps % models.len()].clone();
                let r = ctl(&sock, C::ModelLoad { file });
                assert!(r.ok, "{r:?}");
                swaps += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            swaps
        })
    };
    // Passes of at most the file's size each: fio cannot verify blocks a
    // later pass of the same job overwrote with other block sizes.
    for pass in 0..4 {
        fio_verify_sized(&file, &format!("swap{pass}"), "64M");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps >= 5, "only {swaps} swaps during the fio run");
    let st = ctl(&sock, C::Stats).result;
    assert_eq!(st["counters"]["failed_requests"], 0, "{st}");
    assert!(st["counters"]["predictions"].as_u64().unwrap() > 0, "{st}");
    let h = ctl(&sock, C::ModelHistory).result["events"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(h, swaps + 1, "every swap is in the history");
    eprintln!("{swaps} model swaps during fio verify");
    fx.stop();
}

/// `--adapt` on a live FUSE device: rounds run in the background on the
/// device's reads and each one, installed or rejected, is in the model
/// history with what it measured; recording is refused meanwhile.
#[test]
fn adapt_runs_rounds_in_the_background_and_writes_them_down() {
    use augur::control::Command as C;
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::new();
    let file = fx
        .start_with(
            "linnos",
            false,
            &["--adapt", "--adapt-every", "1s", "--adapt-min-new", "5000"],
        )
        .file
        .to_str()
        .unwrap()
        .to_string();
    let sock = fx.socket();
    let log = fx.tmp.path().join("x.log");
    let r = ctl(&sock, C::RecordStart { file: log.clone() });
    assert!(!r.ok && r.error.unwrap().contains("--adapt"));
    assert!(!log.exists());
    let deadline = Instant::now() + Duration::from_secs(120);
    let round = loop {
        fio_verify_sized(&file, "adapt", "64M");
        let h = ctl(&sock, C::ModelHistory).result["events"].clone();
        let found = h
            .as_array()
            .unwrap()
            .iter()
            .find(|e| {
                e["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("adapt round"))
            })
            .cloned();
        if let Some(e) = found {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no adaptation round within 120 s: {h}"
        );
    };
    eprintln!("adaptation round: {round}");
    // Installed or rejected, it says what it measured.
    let detail = round["detail"].as_str().unwrap();
    assert!(
        detail.contains("accuracy")
            && detail.contains("false-submit")
            && detail.contains("val loss"),
        "{round}"
    );
    let st = ctl(&sock, C::Stats).result;
    assert_eq!(st["counters"]["failed_requests"], 0, "{st}");
    fx.stop();
}

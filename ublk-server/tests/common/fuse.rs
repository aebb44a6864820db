//! The FUSE test fixture shared by `tests/fuse.rs` (data),
//! `tests/live.rs` (control socket, swaps, adaptation) and `tests/crash.rs`
//! (kill -9 and restart): three emulated gc-heavy replicas in /dev/shm (by
//! default), the `augur fuse` daemon, fio.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use super::{must, wait_timeout, which};

pub const SIZE: u64 = 64 << 20;
pub const BIN: &str = env!("CARGO_BIN_EXE_augur");

/// The tests share loop devices and two cores: run them one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// True when the test should run; panics (the test fails) when root but a
/// prerequisite is missing.
pub fn ready() -> bool {
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
pub struct Fixture {
    pub daemon: Option<Daemon>,
    /// File systems mounted on the loop device (unmounted first on drop).
    pub fs_mounts: Vec<PathBuf>,
    pub mount: PathBuf,
    pub replicas: Vec<PathBuf>,
    /// What `start` puts before each replica path (`emu:gc-heavy:`; empty
    /// for plain files).
    pub spec_prefix: String,
    /// `start`'s `--size` (creates missing replicas); `None` leaves it out,
    /// so the daemon must reuse the replicas.
    pub size: Option<String>,
    pub _shm: tempfile::TempDir,
    pub tmp: tempfile::TempDir,
}

pub struct Daemon {
    pub child: Child,
    pub file: PathBuf,
    pub loop_dev: Option<String>,
    pub stderr: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
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
            spec_prefix: "emu:gc-heavy:".into(),
            size: Some("64M".into()),
            _shm: shm,
            tmp,
        }
    }

    /// Starts `augur fuse` and waits until it prints its paths.
    pub fn start(&mut self, policy: &str, with_loop: bool) -> &Daemon {
        self.start_with(policy, with_loop, &[])
    }

    /// [`start`](Self::start) with more flags.
    pub fn start_with(&mut self, policy: &str, with_loop: bool, extra: &[&str]) -> &Daemon {
        assert!(self.daemon.is_none(), "a daemon is already running");
        let stderr = self.tmp.path().join("daemon.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("fuse");
        for r in &self.replicas {
            cmd.arg("--replica")
                .arg(format!("{}{}", self.spec_prefix, r.display()));
        }
        if let Some(size) = &self.size {
            cmd.args(["--size", size]);
        }
        cmd.args(["--policy", policy, "--mount"]).arg(&self.mount);
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
    pub fn socket(&self) -> PathBuf {
        let name = augur::control::fuse_name(&self.mount.canonicalize().unwrap());
        augur::control::run_dir().join(format!("{name}.sock"))
    }

    /// SIGTERM; the daemon must exit 0 within 20 s, leaving no mount and no loop device.
    pub fn stop(&mut self) {
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
    pub fn crash(&mut self) -> Daemon {
        let mut d = self.daemon.take().expect("no daemon running");
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        d
    }

    pub fn cleanup(&self) -> String {
        must(
            Command::new(BIN)
                .arg("fuse")
                .arg("--cleanup")
                .arg(&self.mount),
            30,
        )
    }

    /// Mounts the loop device's file system at a fresh directory.
    pub fn mount_fs(&mut self, dev: &str, opts: &str) -> PathBuf {
        let dir = self.tmp.path().join(format!("fs{}", self.fs_mounts.len()));
        std::fs::create_dir_all(&dir).unwrap();
        must(Command::new("mount").args(["-o", opts, dev]).arg(&dir), 60);
        self.fs_mounts.push(dir.clone());
        dir
    }

    pub fn umount_fs(&mut self, dir: &Path) {
        must(Command::new("umount").arg(dir), 60);
        self.fs_mounts.retain(|d| d != dir);
    }

    /// Asserts the three replica files are byte for byte identical.
    pub fn assert_replicas_identical(&self) {
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

pub fn is_mounted(dir: &Path) -> bool {
    let parent = dir.parent().unwrap().canonicalize().unwrap();
    let want = parent.join(dir.file_name().unwrap());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.to_str().unwrap()))
}

pub fn loop_attached(dev: &str) -> bool {
    Path::new(&format!(
        "/sys/block/{}/loop/backing_file",
        dev.trim_start_matches("/dev/")
    ))
    .exists()
}

/// fio random read/write with crc32c verification; panics on any error.
pub fn fio_verify(target: &str, name: &str) {
    fio_verify_sized(target, name, "6M");
}

/// [`fio_verify`] moving `io_size` bytes.
pub fn fio_verify_sized(target: &str, name: &str, io_size: &str) {
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
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
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

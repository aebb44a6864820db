//! End-to-end tests of `augur fuse`: the real binary on three emulated
//! gc-heavy replicas in /dev/shm, driven by fio, losetup, mkfs.ext4 and plain
//! file I/O.
//!
//! They need root, /dev/fuse, fio, losetup, mkfs.ext4, e2fsck, mount and
//! sha256sum. Not root: each test prints why and passes without running.
//! Root but a tool missing: the test fails naming what is missing
//! (`scripts/test-all` installs them).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

mod common;
use common::fuse::*;
use common::{must, run_timeout, wait_timeout, which};

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

/// The daemon is in the I/O path of what it serves: the OOM killer must not
/// choose it (oom_score_adj -1000 by default, --oom-score-adj changes it),
/// and its allocations must not wait on writeback (PR_SET_IO_FLUSHER sets
/// PF_MEMALLOC_NOIO, 0x80000 in the task flags of /proc/PID/stat).
#[test]
fn the_daemon_protects_itself_from_the_oom_killer_and_reclaim() {
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Both need CAP_SYS_RESOURCE, which some containers withhold even from
    // root: there the daemon must say so and serve on (the qemu guest's
    // soak checks the settings themselves on `augur serve`).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let can = cap_eff & (1 << 24) != 0;
    let mut fx = Fixture::new();
    for (extra, want) in [(&[][..], "-1000"), (&["--oom-score-adj", "-17"][..], "-17")] {
        let d = fx.start_with("primary", false, extra);
        let pid = d.child.id();
        let file = d.file.to_str().unwrap().to_string();
        let log = std::fs::read_to_string(&d.stderr).unwrap();
        let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        if can {
            assert_eq!(adj.trim(), want, "oom_score_adj with {extra:?}:\n{log}");
        } else {
            assert!(
                log.contains(&format!("cannot set /proc/self/oom_score_adj to {want}"))
                    && log.contains("cannot mark the daemon an I/O flusher"),
                "without CAP_SYS_RESOURCE the daemon must warn:\n{log}"
            );
        }
        // Every thread carries PF_MEMALLOC_NOIO, each made after the daemon set it.
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap();
            // Fields after the parenthesised name: state is the 1st, flags the 7th.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let flags: u64 = rest.split(' ').nth(6).unwrap().parse().unwrap();
            assert_eq!(flags & 0x80000 != 0, can, "PF_MEMALLOC_NOIO: {stat}");
        }
        fio_verify(&file, "protected");
        fx.stop();
    }
    let o = Command::new(BIN)
        .args([
            "fuse",
            "--replica",
            "/nonexistent/r",
            "--mount",
            "/nonexistent",
        ])
        .args(["--oom-score-adj", "-1001"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a whole number from -1000 to 1000"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
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
    let d = fx.start("primary", true);
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

/// `--predict-on gpu` with no adapter (forced with `AUGUR_GPU=off`): one
/// line, exit 2, and the mount it had made is gone again.
#[test]
fn predict_on_gpu_without_an_adapter_exits_2_and_unmounts() {
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let fx = Fixture::new();
    let mut cmd = Command::new(BIN);
    cmd.arg("fuse");
    for r in &fx.replicas {
        cmd.arg("--replica").arg(r);
    }
    cmd.args(["--size", "16M", "--predict-on", "gpu", "--mount"])
        .arg(&fx.mount)
        .env("AUGUR_GPU", "off");
    let o = run_timeout(&mut cmd, 30);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--predict-on gpu: no GPU adapter"), "{err}");
    assert!(!is_mounted(&fx.mount), "left mounted");
}

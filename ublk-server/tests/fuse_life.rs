//! The array's life on a real `augur fuse` daemon, through `augur ctl`:
//! a replica replaced and rebuilt while fio verifies, bad replacements
//! refused in one line, a failed replica coming back from the bitmap, and
//! scrub finding and repairing a region changed behind the daemon's back.
//!
//! Needs root, /dev/fuse and fio (the gating of `tests/fuse.rs`).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::fuse::*;
use common::run_timeout;

fn ctl(fx: &Fixture, args: &[&str]) -> Output {
    let sock = fx.socket();
    let mut c = Command::new(BIN);
    c.arg("ctl").arg("--socket").arg(&sock).args(args);
    run_timeout(&mut c, 120)
}

fn status(fx: &Fixture) -> serde_json::Value {
    let o = ctl(fx, &["--json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["result"].clone()
}

fn wait_synced(fx: &Fixture) {
    let t = Instant::now();
    loop {
        let s = status(fx);
        let pending: u64 = s["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["pending_regions"].as_u64().unwrap_or(0))
            .sum();
        if s["sync"]["running"] == false && pending == 0 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "sync never finished: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn replace_during_fio_verify_then_scrub_finds_and_repairs_a_flipped_region() {
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::new();
    let file = fx
        .start_with(
            "linnos",
            false,
            &["--bitmap-region", "1m", "--sync-rate", "16m"],
        )
        .file
        .clone();
    let target = file.to_str().unwrap().to_string();
    fio_verify_sized(&target, "before", "16M");
    let shm = fx.replicas[0].parent().unwrap().to_path_buf();
    let new = shm.join("new");
    let small = shm.join("small");
    std::fs::write(&small, vec![0u8; 4096]).unwrap();
    // Bad replacements: one line each, exit 2, nothing changes.
    for (spec, want) in [
        (
            small.to_str().unwrap().to_string(),
            "smaller than the array",
        ),
        (
            fx.replicas[2].to_str().unwrap().to_string(),
            "already replica 2",
        ),
        (target.clone(), "the device this array serves"),
    ] {
        let o = ctl(&fx, &["replica", "replace", "1", &spec]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{spec}: {err}");
        assert!(
            err.contains(want) && err.trim().lines().count() == 1,
            "{spec}: {err}"
        );
    }
    assert!(
        status(&fx)["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "in-sync")
    );
    // Replace replica 1 while fio writes and verifies.
    let fio = {
        let target = target.clone();
        std::thread::spawn(move || fio_verify_sized(&target, "during", "48M"))
    };
    std::thread::sleep(Duration::from_millis(300));
    let o = ctl(&fx, &["replica", "replace", "1", new.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("rebuilding all 64 region(s)"));
    let s = status(&fx);
    assert_eq!(s["replicas"][1]["state"], "syncing", "{s}");
    fio.join().unwrap();
    wait_synced(&fx);
    // A drill: replica 2 fails, writes go on, it comes back from the bitmap.
    assert_eq!(
        ctl(&fx, &["replica", "fail", "2"]).status.code(),
        Some(1),
        "degraded"
    );
    fio_verify_sized(&target, "degraded", "4M");
    let o = ctl(&fx, &["replica", "add", fx.replicas[2].to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("is back") && !out.contains("all 64"), "{out}");
    wait_synced(&fx);
    // Scrub: clean.
    let o = ctl(&fx, &["scrub", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["regions"].as_u64(), r["mismatches"].as_u64()),
        (Some(64), Some(0)),
        "{r}"
    );
    // Flip one region of replica 0 behind the daemon's back (no bitmap mark).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fx.replicas[0])
        .unwrap()
        .write_all_at(&[0x5A; 4096], (37 << 20) + 8192)
        .unwrap();
    let o = ctl(&fx, &["scrub", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "mismatches found and not repaired"
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["mismatches"], 1, "{r}");
    assert_eq!(r["offsets"][0], 37u64 << 20, "{r}");
    let o = ctl(&fx, &["scrub", "--repair"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("1 repaired from the majority"),
        "{out}"
    );
    fio_verify_sized(&target, "after", "8M");
    fx.stop();
    assert!(
        same(&fx.replicas[0], &new) && same(&new, &fx.replicas[2]),
        "replicas differ after repair"
    );
}

/// The stall detector on a real daemon: replicas whose every read takes
/// 1.5 s, a threshold of 0.5 s. The one stalled read is dumped once (its
/// replica I/O in its emulated delay, the policy, the FUSE worker's state),
/// counted in `stalls`, and still answered with the right data; writes,
/// which finish fast, are never dumped.
#[test]
fn a_read_stalled_past_the_threshold_is_dumped_once_and_still_answered() {
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::new();
    let profile = fx.tmp.path().join("slow.toml");
    std::fs::write(
        &profile,
        "name = \"stall-test\"\nchannels = 4\nread_base_us = 1500000.0\nread_us_per_kib = 0.0\n\
         write_base_us = 20.0\nwrite_us_per_kib = 0.0\nflush_us = 10.0\ndiscard_us = 10.0\njitter = 0.0\n",
    )
    .unwrap();
    fx.spec_prefix = format!("emu:{}:", profile.display());
    let file = fx
        .start_with("primary", false, &["--stall-after", "0.5"])
        .file
        .clone();
    let data = pattern(7, 8192);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    f.write_all_at(&data, 1 << 20).unwrap();
    f.sync_all().unwrap();
    // Past the page cache: the read goes to a replica.
    let g = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&file)
            .unwrap()
    };
    let mut buf = augur::AlignedBuf::new(8192);
    g.read_exact_at(&mut buf, 1 << 20).unwrap();
    assert!(buf[..] == data[..], "the stalled read returned other data");
    let o = ctl(&fx, &["--json", "stats"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &v["result"]["counters"];
    let log = std::fs::read_to_string(&fx.daemon.as_ref().unwrap().stderr).unwrap();
    let dumps: Vec<&str> = log.lines().filter(|l| l.contains("stall:")).collect();
    assert_eq!(c["stalls"], 1, "{c}\n{log}");
    assert_eq!(c["missed_wakeups"], 0, "{c}");
    assert_eq!(dumps.len(), 1, "{log}");
    let json = &dumps[0][dumps[0].find('{').unwrap()..];
    let d: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(d["policy"], "primary", "{d}");
    assert_eq!(d["threshold_ms"], 500, "{d}");
    let r = &d["requests"][0];
    assert_eq!(
        (r["op"].as_str(), r["state"].as_str()),
        (Some("Read"), Some("replica_io")),
        "{d}"
    );
    assert_eq!(r["subs"][0]["state"], "delay", "{d}");
    assert!(r["age_us"].as_u64().unwrap() >= 500_000, "{d}");
    assert_eq!(
        d["frontend"][0],
        serde_json::json!(["frontend", "fuse"]),
        "{d}"
    );
    fx.stop();
}

//! Crash consistency of `augur fuse`: the daemon is killed with SIGKILL at 30
//! random moments under write load (fio on the first half of the FUSE file,
//! `augur stamp write` on the second), restarted on the same replica files
//! (no `--size`, so it must reuse them), and after its resync every
//! acknowledged stamp must be there and the replica files byte-identical.
//!
//! Needs root, /dev/fuse and fio, as `tests/fuse.rs` (not root: prints why
//! and passes without running; root but a tool missing: fails naming it).
//! The seed is printed; `AUGUR_CRASH_SEED=N` replays a run's kill times.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::fuse::*;
use common::wait_timeout;

const CYCLES: u32 = 30;
/// The FUSE file's halves: fio writes the first, `augur stamp` the second.
const HALF: u64 = SIZE / 2;
/// How long a restarted daemon may take to finish its resync.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

fn seed() -> u64 {
    match std::env::var("AUGUR_CRASH_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("AUGUR_CRASH_SEED={s}: not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000)
            .unwrap_or(1),
    }
}

/// What the daemon's status says about its resync (or rebuild, scrub).
#[derive(Debug, Default)]
struct Sync {
    kind: Option<String>,
    done: Option<u64>,
    total: Option<u64>,
}

/// Waits until `augur ctl status --json` says no sync is running: a reply
/// without a `sync` object counts as not running (daemons before the
/// write-intent bitmap). Returns the last `sync` seen, or an error.
fn wait_sync(socket: &Path) -> Result<Option<Sync>, String> {
    let end = Instant::now() + SYNC_TIMEOUT;
    let mut last = None;
    loop {
        let o = common::run_timeout(
            Command::new(BIN)
                .arg("ctl")
                .arg("--socket")
                .arg(socket)
                .args(["--json", "status"]),
            30,
        );
        // Exit 1 is "degraded": the reply is still there.
        let text = String::from_utf8_lossy(&o.stdout);
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "augur ctl status --json ({}): {e}: {text}{}",
                o.status,
                common::stderr(&o)
            )
        })?;
        if v["ok"] != serde_json::Value::Bool(true) {
            return Err(format!("augur ctl status: {v}"));
        }
        let s = if v["result"]["sync"].is_object() {
            &v["result"]["sync"]
        } else {
            &v["sync"]
        };
        if !s.is_object() {
            return Ok(last);
        }
        last = Some(Sync {
            kind: s["kind"].as_str().map(str::to_string),
            done: s["done_regions"].as_u64(),
            total: s["total_regions"].as_u64(),
        });
        if s["running"] != serde_json::Value::Bool(true) {
            return Ok(last);
        }
        if Instant::now() >= end {
            return Err(format!(
                "sync still running after {} s: {s}",
                SYNC_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Byte-compares the replica files: None when identical, else where and
/// how much they differ.
fn compare(replicas: &[PathBuf]) -> Option<String> {
    let first = std::fs::read(&replicas[0]).expect("read replica 0");
    for r in &replicas[1..] {
        let other = std::fs::read(r).expect("read replica");
        if other.len() != first.len() {
            return Some(format!(
                "{} is {} bytes, {} is {}",
                r.display(),
                other.len(),
                replicas[0].display(),
                first.len()
            ));
        }
        let differ: Vec<usize> = first
            .chunks(4096)
            .zip(other.chunks(4096))
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i)
            .collect();
        if let Some(&i) = differ.first() {
            let (fio, stamp) = differ
                .iter()
                .partition::<Vec<usize>, _>(|&&b| (b as u64 * 4096) < HALF);
            return Some(format!(
                "{} differs from {} in {} 4 KiB blocks ({} in fio's half, {} in stamp's), the first at byte {}",
                r.display(),
                replicas[0].display(),
                differ.len(),
                fio.len(),
                stamp.len(),
                i * 4096
            ));
        }
    }
    None
}

fn stamp(op: &str, file: &Path, log: &Path, extra: &[String]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["stamp", op, "--dev"])
        .arg(file)
        .arg("--log")
        .arg(log)
        .args(["--offset", &HALF.to_string(), "--len", &HALF.to_string()])
        .args(extra);
    c
}

/// Waits up to 30 s for a load generator to end after the kill.
fn reap(name: &str, mut child: Child) -> Output {
    if wait_timeout(&mut child, Duration::from_secs(30)).is_none() {
        let _ = child.kill();
        let o = child.wait_with_output().expect("wait");
        panic!(
            "{name} still running 30 s after the daemon was killed: {}",
            common::stderr(&o)
        );
    }
    child.wait_with_output().expect("wait")
}

/// A failed check: names the cycle and the seed that replays it.
fn fail(cycle: u32, seed: u64, what: String) -> ! {
    panic!("cycle {cycle} (seed {seed}, replay with AUGUR_CRASH_SEED={seed}): {what}")
}

#[test]
fn kill_9_at_30_points_then_resync_identical_and_nothing_lost() {
    if !ready() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let seed = seed();
    println!("crash test: seed {seed} (replay with AUGUR_CRASH_SEED={seed})");
    let mut rng = augur_rng::Rng::new(seed);
    let t0 = Instant::now();
    let mut fx = Fixture::new();
    // Two plain-file replicas in /dev/shm, 64 MiB (created by the first start).
    fx.replicas.truncate(2);
    fx.spec_prefix = String::new();
    let log = fx.tmp.path().join("stamp.log");
    for cycle in 1..=CYCLES {
        let file = fx.start_with("primary", false, &[]).file.clone();
        fx.size = None;
        let fio = Command::new("fio")
            .arg(format!("--filename={}", file.display()))
            .args([
                "--name=crash",
                "--ioengine=io_uring",
                "--direct=1",
                "--rw=randwrite",
                "--bsrange=4k-64k",
                "--iodepth=16",
                "--offset=0",
                &format!("--size={HALF}"),
                "--time_based",
                "--runtime=120",
                "--randrepeat=0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fio");
        let stamper = stamp(
            "write",
            &file,
            &log,
            &[
                "--duration".into(),
                "120s".into(),
                "--seed".into(),
                rng.next_u64().to_string(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start augur stamp write");
        let kill_after = Duration::from_millis(200 + rng.below(1300));
        std::thread::sleep(kill_after);
        fx.crash();
        let fio = reap("fio", fio);
        let st = reap("augur stamp write", stamper);
        let st_line = String::from_utf8_lossy(&st.stdout).trim().to_string();
        if !st.status.success() {
            fail(
                cycle,
                seed,
                format!(
                    "augur stamp write exited {}: {st_line} {}",
                    st.status,
                    common::stderr(&st)
                ),
            );
        }
        if fio.status.success() {
            fail(
                cycle,
                seed,
                "fio reported success though the daemon was killed".into(),
            );
        }
        let acked = st_line
            .strip_prefix("stamp write: ")
            .and_then(|l| l.split(' ').next())
            .unwrap_or("?")
            .to_string();
        fx.cleanup();
        // Restart on the same replicas; wait for the resync.
        let file = fx.start_with("primary", false, &[]).file.clone();
        let sync = match wait_sync(&fx.socket()) {
            Ok(s) => s,
            Err(e) => fail(cycle, seed, e),
        };
        let check = common::run_timeout(&mut stamp("check", &file, &log, &[]), 120);
        let check_out = String::from_utf8_lossy(&check.stdout).into_owned();
        if !check.status.success() {
            fail(
                cycle,
                seed,
                format!(
                    "augur stamp check failed ({}):\n{check_out}{}",
                    check.status,
                    common::stderr(&check)
                ),
            );
        }
        fx.stop();
        let synced = match sync {
            Some(Sync { kind, done, total }) => format!(
                "{} {}/{} regions",
                kind.as_deref().unwrap_or("none"),
                done.map_or("?".into(), |d| d.to_string()),
                total.map_or("?".into(), |t| t.to_string())
            ),
            None => "not reported".into(),
        };
        println!(
            "cycle {cycle:2}: killed after {:.2} s, stamp {acked} writes acked, sync {synced}, {}",
            kill_after.as_secs_f64(),
            check_out
                .lines()
                .last()
                .unwrap_or("no check output")
                .trim_start_matches("stamp check: ")
        );
        if let Some(d) = compare(&fx.replicas) {
            fail(
                cycle,
                seed,
                format!("replicas differ after the resync: {d}"),
            );
        }
    }
    println!(
        "crash test: {CYCLES} kill -9 cycles, nothing lost, replicas identical, {:.0} s (seed {seed})",
        t0.elapsed().as_secs_f64()
    );
}

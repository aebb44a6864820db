//! fio end to end: a trace converted by `augur trace to-fio` and replayed by
//! fio (`read_iolog`, `replay_redirect`) onto a temporary file, and `augur
//! fio run` on a plain file (no daemon: one run, the policy recorded as
//! given) followed by `augur report` on its results.
//!
//! They need root (as the other fio tests) and fio. Not root: each test
//! prints why and passes without running. Root but fio missing: the test
//! fails naming it (`scripts/test-all` installs it).

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{run_timeout, which};

const BIN: &str = env!("CARGO_BIN_EXE_augur");
const SIZE: u64 = 8 << 20;

fn ready() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: the fio tests need root");
        return false;
    }
    assert!(
        which("fio").is_some(),
        "fio tests cannot run, missing: fio (Debian: apt-get install fio; scripts/test-all installs it)"
    );
    true
}

fn augur(args: &[&str]) -> Output {
    run_timeout(Command::new(BIN).args(args), 120)
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn json(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let start = text.find('{').expect("JSON");
    serde_json::from_str(&text[start..]).expect("JSON")
}

#[test]
fn a_converted_trace_replays_through_fio_with_its_io_count_and_bytes() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    // An MSR trace on a 64 MiB disk: 300 I/Os 50 us apart, sizes not all
    // whole blocks, offsets beyond the 8 MiB target (wrapped).
    let mut trace = String::from("Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime\n");
    let (mut reads, mut writes, mut read_bytes, mut write_bytes) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..300u64 {
        let is_read = i % 3 != 0;
        let size = [4096u64, 8192, 1000, 65536, 131072][(i % 5) as usize];
        let offset = (i * 7_340_033) % (64 << 20);
        let t = 128_166_372_000_000_000u64 + i * 500; // 100 ns ticks: 50 us apart
        trace.push_str(&format!(
            "{t},hm,1,{},{offset},{size},100\n",
            if is_read { "Read" } else { "Write" }
        ));
        let len = size.div_ceil(4096) * 4096;
        if is_read {
            reads += 1;
            read_bytes += len;
        } else {
            writes += 1;
            write_bytes += len;
        }
    }
    let tr = tmp.path().join("trace.csv");
    std::fs::write(&tr, &trace).unwrap();
    let target = tmp.path().join("target.img");
    std::fs::File::create(&target)
        .and_then(|f| f.set_len(SIZE))
        .unwrap();
    let log = tmp.path().join("trace.iolog");
    let t = target.to_str().unwrap();
    let said = ok(&augur(&[
        "trace",
        "to-fio",
        tr.to_str().unwrap(),
        "--out",
        log.to_str().unwrap(),
        "--target",
        t,
        "--speed",
        "10",
    ]));
    assert!(
        said.contains(&format!("{reads} reads ({read_bytes} bytes)")),
        "{said}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "fio version 3 iolog");
    assert!(
        lines[1].ends_with(" add") && lines[2].ends_with(" open"),
        "{text}"
    );
    assert!(lines.last().unwrap().ends_with(" close"));
    let stamps: Vec<u64> = lines[1..]
        .iter()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        stamps[0] > 0 && stamps.windows(2).all(|w| w[0] <= w[1]),
        "{text}"
    );

    // Replay it onto another file through replay_redirect.
    let dest = tmp.path().join("replayed.img");
    std::fs::File::create(&dest)
        .and_then(|f| f.set_len(SIZE))
        .unwrap();
    let out = tmp.path().join("replay.json");
    let o = run_timeout(
        Command::new("fio")
            .arg("--name=replay")
            .arg(format!("--read_iolog={}", log.display()))
            .arg(format!("--replay_redirect={}", dest.display()))
            .args(["--ioengine=psync", "--output-format=json"])
            .arg(format!("--output={}", out.display())),
        120,
    );
    ok(&o);
    let j = &json(&out)["jobs"][0];
    assert_eq!(j["error"], 0, "{j}");
    assert_eq!(j["read"]["total_ios"].as_u64(), Some(reads));
    assert_eq!(j["write"]["total_ios"].as_u64(), Some(writes));
    assert_eq!(j["read"]["io_bytes"].as_u64(), Some(read_bytes));
    assert_eq!(j["write"]["io_bytes"].as_u64(), Some(write_bytes));
    // The writes landed on the redirected file, not the named one.
    let zero = |p: &Path| std::fs::read(p).unwrap().iter().all(|&b| b == 0);
    assert!(!zero(&dest), "fio wrote nothing to the redirected file");
    assert!(zero(&target), "fio wrote to the file named in the log");
}

#[test]
fn a_malformed_trace_line_is_reported_with_its_number() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let tr = tmp.path().join("bad.csv");
    std::fs::write(
        &tr,
        "128166372000000000,hm,1,Read,0,4096,100\n128166372000000500,hm,1,Read,x12,4096,100\n",
    )
    .unwrap();
    let log = tmp.path().join("bad.iolog");
    let args = [
        "trace",
        "to-fio",
        tr.to_str().unwrap(),
        "--out",
        log.to_str().unwrap(),
        "--size",
        "8M",
    ];
    let o = augur(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let mut skip = args.to_vec();
    skip.push("--skip-bad");
    let said = ok(&augur(&skip));
    assert!(
        said.contains("1 reads") && said.contains("1 malformed line(s) skipped"),
        "{said}"
    );
}

#[test]
fn fio_run_on_a_plain_file_records_one_run_and_reports_it() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let target = tmp.path().join("t.img");
    let res = tmp.path().join("results");
    let t = target.to_str().unwrap();
    let r = res.to_str().unwrap();
    let common = [
        "fio",
        "run",
        "--target",
        t,
        "--size",
        "8M",
        "--runtime",
        "1s",
        "--ioengine",
        "psync",
    ];
    // Two policies with no daemon to switch them: refused in one line.
    let mut two = common.to_vec();
    two.extend(["--policy", "primary,linnos", "--out", r]);
    let o = augur(&two);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("control socket") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(!res.exists(), "nothing is left behind");

    let mut one = common.to_vec();
    one.extend([
        "--policy",
        "linnos",
        "--jobs",
        "randread-qd16,verify",
        "--out",
        r,
    ]);
    ok(&augur(&one));
    let m = json(&res.join("manifest.json"));
    assert_eq!(m["kind"], "augur-fio-run");
    assert!(m["fio_version"].as_str().unwrap().starts_with("fio-"));
    assert!(!m["kernel"].as_str().unwrap().is_empty());
    let runs = m["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (run, job) in runs.iter().zip(["randread-qd16", "verify"]) {
        assert_eq!(run["policy"], "linnos");
        assert_eq!(run["policy_source"], "given");
        assert_eq!(run["job"], job);
        assert!(
            run["command"]
                .as_str()
                .unwrap()
                .contains("--output-format=json+")
        );
        let f = json(&res.join(run["result"].as_str().unwrap()));
        let j = &f["jobs"][0];
        assert_eq!(j["error"], 0, "{job}: {j}");
        assert!(
            j["read"]["total_ios"].as_u64().unwrap() > 0,
            "{job} read nothing"
        );
        assert!(
            j["read"]["clat_ns"]["bins"]
                .as_object()
                .is_some_and(|b| !b.is_empty()),
            "{job}: json+ has the histogram"
        );
    }
    assert!(
        !runs[0]["hist_logs"].as_array().unwrap().is_empty(),
        "latency histogram logs recorded"
    );
    // verify wrote the whole 8 MiB and read it all back, checked.
    let v = json(&res.join("linnos/verify.json"));
    assert_eq!(v["jobs"][0]["write"]["io_bytes"].as_u64(), Some(SIZE));
    assert_eq!(v["jobs"][0]["read"]["io_bytes"].as_u64(), Some(SIZE));

    // A second run into the same directory is refused.
    let o = augur(&one);
    assert_eq!(o.status.code(), Some(2));

    let rep = tmp.path().join("report");
    ok(&augur(&["report", r, "--out", rep.to_str().unwrap()]));
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(md.contains("| linnos | fio | randread-qd16 | 16 |"), "{md}");
    assert!(md.contains("none (no daemon)"), "{md}");
    // Read latency over time, from fio's histogram logs.
    let svg = std::fs::read_to_string(rep.join("latency-over-time.svg")).unwrap();
    assert!(svg.contains("randread-qd16"), "a panel for the fio run");
}

#[test]
fn fio_run_switches_policies_live_on_a_fuse_daemon() {
    if !ready() {
        return;
    }
    common::fuse::ready();
    let _serial = common::fuse::SERIAL
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut fx = common::fuse::Fixture::new();
    let file = fx.start("primary", false).file.clone();
    let res = fx.tmp.path().join("results");
    // No --socket: the run finds the daemon serving the target itself.
    ok(&augur(&[
        "fio",
        "run",
        "--target",
        file.to_str().unwrap(),
        "--policy",
        "primary,linnos",
        "--jobs",
        "randread-qd16",
        "--runtime",
        "2s",
        "--size",
        "32M",
        "--out",
        res.to_str().unwrap(),
    ]));
    let m = json(&res.join("manifest.json"));
    assert!(m["socket"].is_string(), "found the daemon's socket: {m}");
    assert_ne!(m["model"], "unknown", "the daemon's model is recorded");
    let runs = m["runs"].as_array().unwrap();
    let policies: Vec<&str> = runs.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(policies, ["primary", "linnos"]);
    // The switch happened in the daemon: baseline never reroutes, linnos
    // on gc-heavy replicas does; both jobs' reads were counted by it.
    let c = |i: usize, k: &str| runs[i]["counters"][k].as_u64().unwrap();
    assert!(c(0, "reads") > 0 && c(1, "reads") > 0, "{m}");
    assert_eq!(c(0, "rerouted"), 0, "baseline rerouted: {m}");
    assert!(c(1, "rerouted") > 0, "linnos never rerouted: {m}");
    assert!(c(1, "judged_reads") > 0, "{m}");
    let o = run_timeout(
        Command::new(BIN)
            .args(["ctl", "--json", "--socket"])
            .arg(fx.socket())
            .arg("status"),
        30,
    );
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        st["result"]["policy"], "linnos",
        "the daemon runs the last policy"
    );
    fx.stop();
    let rep = fx.tmp.path().join("report");
    ok(&augur(&[
        "report",
        res.to_str().unwrap(),
        "--out",
        rep.to_str().unwrap(),
    ]));
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(md.contains("| linnos | fio | randread-qd16 |"), "{md}");
}

//! The `augur` command line end to end: bench, record and bad input (one
//! clear line, exit status 2, nothing half-created left behind).

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{augur, stderr};

/// Exit 2 with exactly one line on stderr that contains `needle`.
fn assert_bad_input(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "want one line, got: {err}"
    );
    assert!(err.contains(needle), "'{needle}' not in: {err}");
}

/// A scratch dir where fresh replicas go by default (tmpfs when present).
fn shm_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(augur::load::default_replica_dir()).unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn missing_replica_is_named() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.img");
    let b = d.path().join("b.img");
    std::fs::write(&b, vec![0u8; 1 << 20]).unwrap();
    let o = augur(&[
        "bench",
        "--replica",
        a.to_str().unwrap(),
        "--replica",
        b.to_str().unwrap(),
        "--duration",
        "100ms",
    ]);
    assert_bad_input(&o, "a.img does not exist");
}

#[test]
fn mismatched_sizes_leave_nothing_created() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.img");
    let b = d.path().join("b.img");
    let c = d.path().join("c.img");
    std::fs::write(&a, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&b, vec![0u8; 2 << 20]).unwrap();
    let o = augur(&[
        "bench",
        "--replica",
        a.to_str().unwrap(),
        "--replica",
        b.to_str().unwrap(),
        "--replica",
        &format!("emu:gc-heavy:{}", c.display()),
        "--size",
        "1M",
        "--duration",
        "100ms",
    ]);
    assert_bad_input(&o, "sizes differ");
    // c.img was created for the run and must be gone again.
    assert_eq!(files_in(d.path()), vec!["a.img", "b.img"]);
}

#[test]
fn unknown_profile_policy_and_workload() {
    let o = augur(&["bench", "--profile", "nope", "--duration", "100ms"]);
    assert_bad_input(&o, "unknown profile 'nope'");
    let o = augur(&[
        "bench",
        "--policy",
        "primary,fastest",
        "--duration",
        "100ms",
    ]);
    assert_bad_input(&o, "unknown policy 'fastest'");
    let o = augur(&["bench", "--workload", "zipf", "--duration", "100ms"]);
    assert_bad_input(&o, "unknown workload 'zipf'");
    let o = augur(&["bench", "--replicas", "9", "--duration", "100ms"]);
    assert_bad_input(&o, "between 2 and 8");
}

#[test]
fn malformed_profile_names_the_line() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("mine.toml");
    std::fs::write(
        &p,
        "name = \"mine\"\nchannels = 4\nread_base_us = \"fast\"\n",
    )
    .unwrap();
    let o = augur(&[
        "bench",
        "--profile-file",
        p.to_str().unwrap(),
        "--duration",
        "100ms",
    ]);
    assert_bad_input(&o, "line 3");
    assert!(stderr(&o).contains("mine.toml"));
}

#[test]
fn bench_json_has_one_object_per_policy() {
    let d = shm_dir();
    let o = augur(&[
        "bench",
        "--policy",
        "primary,hedge,oracle",
        "--duration",
        "400ms",
        "--size",
        "64M",
        "--dir",
        d.path().to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    let arr = v.as_array().expect("a JSON array");
    assert_eq!(arr.len(), 3);
    // `oracle`, the old name, still selects greedy-oracle.
    for (obj, name) in arr.iter().zip(["primary", "hedge", "greedy-oracle"]) {
        assert_eq!(obj["policy"], name);
        assert!(obj["iops"].as_f64().unwrap() > 0.0);
        for k in ["avg", "p50", "p99", "p999", "p9999"] {
            assert!(obj["read_lat_us"][k].as_f64().unwrap() > 0.0, "{name} {k}");
        }
        assert!(obj["reroute_pct"].is_number() && obj["extra_io_pct"].is_number());
    }
    assert_eq!(arr[0]["reroute_pct"], 0.0);
    // Fresh replicas are removed after each run.
    assert!(files_in(d.path()).is_empty());
}

/// `augur record` for `duration` on fresh replicas in `dir`; the log's path.
fn record_log(dir: &Path, duration: &str) -> PathBuf {
    let log = dir.join("train.log");
    let o = augur(&[
        "record",
        "--duration",
        duration,
        "--size",
        "64M",
        "--dir",
        dir.to_str().unwrap(),
        "--out",
        log.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    log
}

#[test]
fn record_writes_a_readable_training_log() {
    let d = shm_dir();
    let out = record_log(d.path(), "300ms");
    let recs = augur_feature_store::read_log(&out).unwrap();
    assert!(recs.len() > 100, "only {} records", recs.len());
    assert!(recs.iter().all(|r| r.op == augur_feature_store::Op::Read));
    assert!(recs.iter().any(|r| r.features.len == 4));
    assert!(recs.iter().all(|r| (r.replica as usize) < 3));
}

#[test]
fn fault_injection_flag_fails_a_replica_and_bench_still_serves() {
    let d = shm_dir();
    let o = augur(&[
        "bench",
        "--policy",
        "primary",
        "--duration",
        "400ms",
        "--size",
        "64M",
        "--dir",
        d.path().to_str().unwrap(),
        "--fail-replica",
        "1",
        "--fail-after",
        "100",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("replica 1") && stderr(&o).contains("FAILED"));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["replica_failures"], 1);
    assert_eq!(v[0]["errors"], 0);
    assert_eq!(v[0]["replicas"][1]["live"], false);
}

#[test]
fn record_train_eval_show_and_linnos_bench() {
    let d = shm_dir();
    let log = record_log(d.path(), "400ms");
    let model = d.path().join("m.augm");
    let o = augur(&[
        "train",
        "--log",
        log.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--plain",
        "--epochs",
        "2",
        "--label",
        "p95",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = augur(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for path in ["f32", "int"] {
        for k in ["accuracy", "false_submit_rate", "false_revoke_rate", "auc"] {
            assert!(v[path][k].is_number(), "{path}.{k} missing: {v}");
        }
    }
    let o = augur(&["model", "show", model.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("31-256-2"));
    let o = augur(&[
        "bench",
        "--policy",
        "primary,linnos,linnos+hedge",
        "--model",
        model.to_str().unwrap(),
        "--duration",
        "300ms",
        "--size",
        "64M",
        "--dir",
        d.path().to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v[1]["predictions_per_read"].as_f64().unwrap() >= 1.0, "{v}");
}

#[test]
fn period_labels_train_and_eval() {
    let d = shm_dir();
    let log = record_log(d.path(), "400ms");
    let model = d.path().join("p.augm");
    let (l, m) = (log.to_str().unwrap(), model.to_str().unwrap());
    let o = augur(&[
        "train",
        "--log",
        l,
        "--out",
        m,
        "--extended",
        "--epochs",
        "2",
        "--label",
        "p95",
        "--label-period",
        "4ms",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["label_rule"]
            .as_str()
            .unwrap()
            .contains("period ±4000 µs"),
        "{v}"
    );
    assert!(v["validation_period"]["int"]["accuracy"].is_number(), "{v}");
    let o = augur(&["model", "show", m]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("period ±4000 µs >= 10% slow"));
    let o = augur(&[
        "eval",
        "--model",
        m,
        "--log",
        l,
        "--label-period",
        "4ms",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for path in ["f32", "int"] {
        assert!(v[path]["accuracy"].is_number(), "{v}");
        assert!(v["period"][path]["accuracy"].is_number(), "{v}");
    }
    // Period labels only add slow reads.
    let (period_slow, slow) = (
        v["period"]["slow_reads"]
            .as_u64()
            .expect("period.slow_reads"),
        v["slow_reads"].as_u64().expect("slow_reads"),
    );
    assert!(period_slow >= slow, "{v}");
    let o = augur(&[
        "train",
        "--log",
        l,
        "--out",
        m,
        "--label-period",
        "4ms",
        "--period-slow-fraction",
        "0",
    ]);
    assert_bad_input(&o, "slow fraction must lie in (0, 1]");
}

#[test]
fn corrupt_model_is_rejected_by_name() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.augm");
    std::fs::write(&bad, b"AUGURMDL but not really a model").unwrap();
    let o = augur(&["model", "show", bad.to_str().unwrap()]);
    assert_bad_input(&o, "bad.augm");
    let o = augur(&[
        "bench",
        "--policy",
        "linnos",
        "--model",
        bad.to_str().unwrap(),
        "--duration",
        "100ms",
    ]);
    assert_bad_input(&o, "bad.augm");
}

/// `augur train` with no flags but the log and the output is the recipe
/// behind the shipped model: linnos-write inputs, min(p98,4x-median)
/// labels, ±4 ms periods.
#[test]
fn train_defaults_are_the_shipped_recipe() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("sim.log");
    let model = d.path().join("m.augm");
    let o = augur(&[
        "record",
        "--clock",
        "sim",
        "--duration",
        "500ms",
        "--out",
        log.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = augur(&[
        "train",
        "--log",
        log.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown = |m: &str| {
        let o = augur(&["model", "show", m]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let ours = shown(model.to_str().unwrap());
    let shipped = shown("default");
    for needle in [
        "feature set linnos-write (47 inputs)",
        "labels: min(p98,4x-median), period ±4000 µs >= 10% slow",
    ] {
        assert!(ours.contains(needle), "{needle}: {ours}");
        assert!(shipped.contains(needle), "{needle}: {shipped}");
    }
    // `--plain` and `--label-period off` undo the two departures from LinnOS.
    let o = augur(&[
        "train",
        "--log",
        log.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--plain",
        "--label-period",
        "off",
        "--epochs",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plain = shown(model.to_str().unwrap());
    assert!(plain.contains("feature set linnos (31 inputs)"), "{plain}");
    assert!(!plain.contains("period"), "{plain}");
    // `--features` names any of them; a wrong name is refused by name.
    let train_with = |features: &str| {
        augur(&[
            "train",
            "--log",
            log.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
            "--features",
            features,
            "--epochs",
            "1",
        ])
    };
    let o = train_with("linnos-ext");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(shown(model.to_str().unwrap()).contains("feature set linnos-ext (39 inputs)"));
    let o = train_with("linnos-fast");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--features 'linnos-fast'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn default_model_ships_and_shows() {
    let o = augur(&["model", "show", "default"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("feature set linnos"));
}

#[test]
fn bench_replays_an_msr_trace_and_names_a_bad_line() {
    let d = shm_dir();
    let trace = d.path().join("t.csv");
    let mut csv = String::new();
    for i in 0..3000u64 {
        let ty = if i % 4 == 0 { "Write" } else { "Read" };
        let t = 128_166_372_000_000_000u64 + i * 1000; // 100 us apart
        csv.push_str(&format!(
            "{t},host,0,{ty},{},4096,500\n",
            (i * 7919 % 10_000) * 4096
        ));
        if i == 41 {
            csv.push_str("128166372000041500,host,0,Read,notanumber,4096,500\n");
        }
    }
    std::fs::write(&trace, csv).unwrap();
    let t = trace.to_str().unwrap();
    let dir = d.path().to_str().unwrap();
    let o = augur(&[
        "bench",
        "--trace",
        t,
        "--size",
        "64M",
        "--dir",
        dir,
        "--duration",
        "1s",
    ]);
    assert_bad_input(&o, "line 43");
    let o = augur(&[
        "bench",
        "--trace",
        t,
        "--skip-bad",
        "--policy",
        "primary,oracle",
        "--size",
        "64M",
        "--dir",
        dir,
        "--duration",
        "5s",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for p in v.as_array().unwrap() {
        // The whole trace (3000 I/Os over 0.3 s) is replayed, then the run ends.
        assert_eq!(
            p["reads"].as_u64().unwrap() + p["writes"].as_u64().unwrap(),
            3000,
            "{p}"
        );
        assert_eq!(p["writes"], 750);
        assert!(p["duration_s"].as_f64().unwrap() < 4.0);
    }
}

/// This machine has ublk (then the "ublk is missing" checks cannot run).
fn has_ublk() -> bool {
    Path::new("/dev/ublk-control").exists()
}

#[test]
fn serve_list_stop_without_ublk_say_so_in_one_line() {
    if has_ublk() {
        eprintln!("skipped: this machine has ublk (the VM tests cover serve)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.img");
    let b = d.path().join("b.img");
    let o = augur(&[
        "serve",
        "--replica",
        a.to_str().unwrap(),
        "--replica",
        &format!("emu:gc-heavy:{}", b.display()),
        "--size",
        "1M",
    ]);
    assert_bad_input(&o, "ublk is not available");
    assert!(stderr(&o).contains("augur fuse"), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "nothing on stdout without a device");
    // The replica files serve created for the run are gone again.
    assert!(files_in(d.path()).is_empty(), "{:?}", files_in(d.path()));
    // An empty control directory: FUSE daemons running on this machine
    // would be listed (and make `list` succeed).
    let run = tempfile::tempdir().unwrap();
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["stop", "--id", "0"],
        &["serve", "--recover", "--id", "0"],
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_augur"))
            .args(args)
            .env("AUGUR_RUN_DIR", run.path())
            .output()
            .unwrap();
        assert_bad_input(&o, "ublk is not available");
        assert!(
            stderr(&o).contains("augur fuse"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn serve_rejects_bad_input_before_any_device() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.img");
    let b = d.path().join("b.img");
    let c = d.path().join("c.img");
    std::fs::write(&b, vec![0u8; 1 << 20]).unwrap();
    let (a, b_s, c_s) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        c.to_str().unwrap(),
    );
    let o = augur(&["serve", "--replica", a, "--replica", b_s]);
    assert_bad_input(&o, "a.img does not exist");
    // c.img is created for the run (2 MiB), then b.img's size does not fit.
    let o = augur(&["serve", "--replica", b_s, "--replica", c_s, "--size", "2M"]);
    assert_bad_input(&o, "sizes differ");
    assert_eq!(files_in(d.path()), vec!["b.img"]);
    let o = augur(&[
        "serve",
        "--replica",
        b_s,
        "--replica",
        c_s,
        "--size",
        "1M",
        "--policy",
        "fastest",
    ]);
    assert_bad_input(&o, "unknown policy 'fastest'");
    let o = augur(&[
        "serve",
        "--replica",
        b_s,
        "--replica",
        c_s,
        "--size",
        "1M",
        "--block-size",
        "1024",
    ]);
    assert_bad_input(&o, "--block-size 1024 must be 512 or 4096");
    let o = augur(&[
        "serve",
        "--replica",
        b_s,
        "--replica",
        c_s,
        "--size",
        "1M",
        "--fail-replica",
        "1",
    ]);
    assert_bad_input(&o, "--fail-replica needs --fail-after N or --fail-at TIME");
    let o = augur(&[
        "serve",
        "--replica",
        b_s,
        "--replica",
        c_s,
        "--size",
        "1M",
        "--queues",
        "0",
    ]);
    assert_bad_input(&o, "--queues 0 must be between 1 and");
    // A flag clap checks: its own error, naming the value and the range.
    let o = augur(&["serve", "--replica", b_s, "--io-timeout", "1.5"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("'1.5' is not a whole number of seconds from 0 (the kernel's) to 3600"),
        "{}",
        stderr(&o)
    );
    assert_eq!(files_in(d.path()), vec!["b.img"]);
}

/// `augur adapt` on the simulated clock: the timeline shows the replicas
/// changing profile, a round runs and is reported with what it measured,
/// and the same flags give the same output (it is exact).
#[test]
fn adapt_timeline_switches_profile_and_reports_rounds() {
    let args = [
        "adapt",
        "--clock",
        "sim",
        "--predict-cost-ns",
        "5,150",
        "--profile",
        "fast-nvme",
        "--to",
        "gc-heavy",
        "--switch-at",
        "1s",
        "--duration",
        "2s",
        "--row",
        "500ms",
        "--adapt",
        "--every",
        "1s",
        "--min-new",
        "12000",
        "--window",
        "16000",
        "--reference",
        "300ms",
    ];
    let o = augur(&args);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert!(rows.len() >= 2, "{out}");
    assert!(rows[0].contains("fast-nvme"), "{out}");
    // Every row's model is judged on its profile's reference (a number, not "-").
    for r in &rows {
        let acc = r.split_whitespace().nth(7).unwrap();
        assert!(acc.parse::<f64>().is_ok(), "accuracy {acc:?} in {r}");
    }
    assert!(out.contains("reference recording"), "{out}");
    assert!(rows.last().unwrap().contains("gc-heavy"), "{out}");
    assert!(out.contains("round at "), "no round: {out}");
    assert!(
        out.contains("accuracy") && out.contains("val loss"),
        "{out}"
    );
    assert_eq!(augur(&args).stdout, o.stdout, "not the same output twice");
    // Bad flags: one line, exit 2.
    let o = augur(&["adapt", "--clock", "sim", "--policy", "primary"]);
    assert_bad_input(&o, "needs a policy that asks one");
    let o = augur(&["adapt", "--clock", "sim", "--min-differ", "2"]);
    assert_bad_input(&o, "--min-differ");
    let o = augur(&[
        "fuse",
        "--replica",
        "/nonexistent/r",
        "--mount",
        "/nonexistent/m",
        "--adapt",
        "--adapt-duty",
        "0",
    ]);
    assert_bad_input(&o, "--adapt-duty");
}

/// `augur gpu calibrate` prints both curves for every bucket measured and a
/// crossover line (on lavapipe in CI: needs a Vulkan driver, see
/// gpu-batcher/tests/lavapipe.rs); with no adapter it says so in one line
/// and exits 2.
#[test]
fn gpu_calibrate_prints_both_curves_or_says_there_is_no_gpu() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_augur"))
        .args(["gpu", "calibrate", "--arch", "base"])
        .env("AUGUR_GPU", "off")
        .output()
        .unwrap();
    assert_bad_input(&o, "no GPU adapter");
    let o = augur(&["gpu", "calibrate", "--arch", "deep9"]);
    assert_bad_input(&o, "--arch deep9");
    let args = [
        "gpu",
        "calibrate",
        "--arch",
        "deep1",
        "--reps",
        "3",
        "--idle-reps",
        "1",
        "--idle-gap",
        "1ms",
        "--max-batch",
        "8",
        "--json",
    ];
    let o = augur(&args);
    if !o.status.success() && std::env::var_os("AUGUR_REQUIRE_GPU").is_none() {
        eprintln!("skipped: {}", stderr(&o));
        return;
    }
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["shape"], "31-256-256-2");
    let b: Vec<u64> = v["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bucket"].as_u64().unwrap())
        .collect();
    assert_eq!(b, [1, 2, 4, 8]);
    for x in v["buckets"].as_array().unwrap() {
        for k in ["cpu", "gpu_hot", "gpu_after_idle"] {
            assert!(x[k]["p50_ns"].as_u64().unwrap() > 0, "{x}");
            assert!(x[k]["p99_ns"].as_u64() >= x[k]["p50_ns"].as_u64(), "{x}");
        }
    }
    let o = augur(&args[..args.len() - 1]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("crossover") && t.contains("cpu p50") && t.contains("gpu p50"),
        "{t}"
    );
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// `augur trace import` on a real FlashNet replay recording as published
/// (the first 2,000 lines of one, byte for byte): the format is detected
/// from the first line or named, the log it writes is one `augur eval`
/// reads, and a bad line is named with its number and field. With
/// `AUGUR_NVME_REPLAYS=DIR` (a directory of the full `*.trace` recordings)
/// each whole file is imported too.
#[test]
fn trace_import_reads_a_flashnet_replay_as_recorded() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("t.log");
    let out_s = out.to_str().unwrap();
    let trace = fixture("flashnet/tencent.most_rand_iops.537.head2000.trace");
    for format in [None, Some("flashnet"), Some("replay")] {
        let mut args = vec!["trace", "import", trace.as_str(), "--out", out_s];
        if let Some(f) = format {
            args.extend(["--format", f]);
        }
        let o = augur(&args);
        assert!(o.status.success(), "{format:?}: {}", stderr(&o));
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(
            said.contains("2000 I/Os on 1 disk(s), 2000 records (667 reads) written")
                && said.contains("0 malformed line(s) skipped"),
            "{said}"
        );
    }
    let o = augur(&["eval", "--model", "default", "--log", out_s, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = augur(&[
        "trace", "import", &trace, "--out", out_s, "--format", "nvme",
    ]);
    assert_bad_input(&o, "unknown trace format 'nvme' (msr, blkparse, flashnet)");

    // Line 43's offset spoiled: named, or skipped and counted.
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut f: Vec<&str> = lines[42].split(',').collect();
    f[4] = "x12";
    lines[42] = f.join(",");
    let bad = d.path().join("bad.trace");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let bad = bad.to_str().unwrap();
    let o = augur(&["trace", "import", bad, "--out", out_s]);
    assert_bad_input(&o, "line 43: field 5 (offset) is not a number: 'x12'");
    let o = augur(&["trace", "import", bad, "--out", out_s, "--skip-bad"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1999 I/Os on 1 disk(s)"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    let Some(dir) = std::env::var_os("AUGUR_NVME_REPLAYS") else {
        eprintln!("AUGUR_NVME_REPLAYS not set: the whole recordings are not imported");
        return;
    };
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "trace") {
            continue;
        }
        let o = augur(&["trace", "import", p.to_str().unwrap(), "--out", out_s]);
        assert!(o.status.success(), "{}: {}", p.display(), stderr(&o));
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(said.contains(" I/Os on 1 disk(s)"), "{said}");
        n += 1;
    }
    assert!(n > 0, "no *.trace in {}", Path::new(&dir).display());
}

/// `--predict-on` on the simulated clock with a GPU cost curve (an
/// illustrative one: a 50 us round trip at every batch size, LAKE's CUDA
/// floor; not a measurement): `auto` sends the batches past the crossover to
/// the GPU and the rest to the CPU, the same way on every run, and at a
/// per-read CPU cost like the +2 model's it beats `cpu`.
#[test]
fn predict_on_auto_on_the_simulated_clock_follows_the_gpu_curve() {
    let curve = fixture("gpu-curve-50us.json");
    let run = |mode: &str| {
        let o = augur(&[
            "bench",
            "--clock",
            "sim",
            "--predict-cost-ns",
            "200,3800",
            "--policy",
            "linnos",
            "--depth",
            "256",
            "--duration",
            "500ms",
            "--gpu-curve",
            &curve,
            "--predict-on",
            mode,
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (
            v[0].clone(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (auto, text) = run("auto");
    let p = &auto["placement"];
    let (gb, gr) = (
        p["gpu_batches"].as_u64().unwrap(),
        p["gpu_inputs"].as_u64().unwrap(),
    );
    let (cb, cr) = (
        p["cpu_batches"].as_u64().unwrap(),
        p["cpu_inputs"].as_u64().unwrap(),
    );
    assert!(gb > 0 && cb > 0, "{p}");
    // One GPU call (50 us) pays against a first CPU round of 14 reads or
    // more (200 + 3800 n ns): a GPU batch carries every candidate of those,
    // 3 x 14 inputs at least; a CPU round scores at most 13.
    assert!(gr >= 3 * 14 * gb && cr <= 13 * cb, "{p}");
    assert_eq!(p["gpu_missed_batches"], 0);
    assert_eq!(
        run("auto").1,
        text,
        "the simulated clock gives the same run twice"
    );
    let (cpu, _) = run("cpu");
    assert_eq!(cpu["placement"]["gpu_batches"], 0);
    let iops = |v: &serde_json::Value| v["iops"].as_f64().unwrap();
    assert!(
        iops(&auto) > iops(&cpu),
        "auto {} cpu {}",
        iops(&auto),
        iops(&cpu)
    );
}

#[test]
fn predict_on_flags_are_checked() {
    let curve = fixture("gpu-curve-50us.json");
    let o = augur(&["bench", "--policy", "linnos", "--predict-on", "fpga"]);
    assert_bad_input(&o, "--predict-on 'fpga'");
    let o = augur(&[
        "bench",
        "--clock",
        "sim",
        "--policy",
        "linnos",
        "--predict-on",
        "gpu",
    ]);
    assert_bad_input(&o, "needs --gpu-curve");
    let o = augur(&["bench", "--policy", "linnos", "--gpu-curve", &curve]);
    assert_bad_input(&o, "--gpu-curve applies to --clock sim only");
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("curve.json");
    std::fs::write(&bad, "{\"shape\": 3}").unwrap();
    let o = augur(&[
        "bench",
        "--clock",
        "sim",
        "--policy",
        "linnos",
        "--predict-cost-ns",
        "5,150",
        "--gpu-curve",
        bad.to_str().unwrap(),
    ]);
    assert_bad_input(&o, "not the JSON of augur gpu calibrate");
    let o = augur(&["record", "--out", "x.log", "--gpu-curve", &curve]);
    assert_bad_input(&o, "applies to augur bench");
}

/// No adapter (forced): `auto` runs on the CPU and says so in one line;
/// `gpu` fails in one line with exit 2.
#[test]
fn predict_on_without_an_adapter() {
    let dir = shm_dir();
    let run = |mode: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_augur"))
            .args([
                "bench",
                "--policy",
                "linnos",
                "--duration",
                "200ms",
                "--size",
                "8M",
            ])
            .args(["--predict-on", mode, "--json", "--dir"])
            .arg(dir.path())
            .env("AUGUR_GPU", "off")
            .output()
            .unwrap()
    };
    let o = run("gpu");
    assert_bad_input(&o, "no GPU adapter");
    let o = run("auto");
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("no GPU adapter") && err.contains("every batch runs on the CPU"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["placement"]["gpu_batches"], 0);
    assert!(v[0]["placement"]["cpu_batches"].as_u64().unwrap() > 0);
}

/// `--predict-on gpu` on the real clock with an adapter (lavapipe in CI):
/// the batches run on the GPU and the report counts them.
#[test]
fn predict_on_gpu_runs_batches_on_the_gpu() {
    let dir = shm_dir();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_augur"))
        .args([
            "bench",
            "--policy",
            "linnos",
            "--duration",
            "500ms",
            "--size",
            "8M",
        ])
        .args(["--predict-on", "gpu", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    if !o.status.success() && std::env::var_os("AUGUR_REQUIRE_GPU").is_none() {
        eprintln!("skipped: {}", stderr(&o));
        return;
    }
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = &v[0]["placement"];
    assert!(p["gpu_batches"].as_u64().unwrap() > 0, "{p}");
    assert!(v[0]["reads"].as_u64().unwrap() > 0);
}

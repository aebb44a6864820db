//! The simulated clock end to end, through the `augur` binary: byte-identical
//! output for the same flags (also with CPU hogs beside it), different output
//! for a different seed, no files touched, the demo's point made, and bad
//! clock flags refused in one line. Needs nothing but the binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

mod common;
use common::{augur, stderr};

const SIM_BENCH: &[&str] = &[
    "bench",
    "--clock",
    "sim",
    "--predict-cost-ns",
    "400,150",
    "--policy",
    "primary,least-pending,random,hedge,linnos,augur,greedy-oracle",
    "--duration",
    "1s",
    "--json",
];

/// Keeps every core busy until dropped.
struct Hogs {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hogs {
    fn start() -> Hogs {
        let stop = Arc::new(AtomicBool::new(false));
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..n)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = i as u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        Hogs { stop, threads }
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn same_flags_same_bytes_even_under_load() {
    let quiet = augur(SIM_BENCH);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    let loaded = {
        let _hogs = Hogs::start();
        augur(SIM_BENCH)
    };
    assert!(loaded.status.success(), "{}", stderr(&loaded));
    assert!(!quiet.stdout.is_empty());
    assert_eq!(
        quiet.stdout, loaded.stdout,
        "simulated-clock JSON differs between a quiet and a loaded run"
    );
    let v: serde_json::Value = serde_json::from_slice(&quiet.stdout).expect("JSON");
    let arr = v.as_array().expect("array");
    assert_eq!(arr.len(), 7);
    for obj in arr {
        assert_eq!(obj["clock"], "sim");
        assert_eq!(obj["predict_cost"]["per_batch_ns"], 400);
        assert_eq!(obj["predict_cost"]["per_item_ns"], 150);
        assert!(obj["reads"].as_u64().unwrap() > 10_000, "{obj}");
        assert_eq!(obj["duration_s"], 1.0);
    }

    // A different seed is a different run: the comparison above can fail.
    let mut other: Vec<&str> = SIM_BENCH.to_vec();
    other.extend(["--seed", "2"]);
    let o = augur(&other);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(o.stdout, quiet.stdout);
}

#[test]
fn simulated_record_writes_the_same_log_twice_and_no_replica_files() {
    let d = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let out = d.path().join(name);
        let o = augur(&[
            "record",
            "--clock",
            "sim",
            "--policy",
            "linnos",
            "--predict-cost-ns",
            "300,100",
            "--duration",
            "500ms",
            "--dir",
            d.path().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(text.contains("(0 dropped"), "{text}");
        std::fs::read(out).unwrap()
    };
    let a = run("a.log");
    let b = run("b.log");
    assert!(a.len() > 16 + 108 * 10_000, "log of {} bytes", a.len());
    assert_eq!(a, b, "two simulated recordings differ");
    // Only the two logs: the simulated replicas have no files.
    let mut names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.log", "b.log"]);
}

#[test]
fn demo_table_shows_augur_beating_mds_rule_and_hedge() {
    let o = augur(&[
        "demo",
        "--json",
        "--duration",
        "3s",
        "--real-duration",
        "200ms",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let lat = |name: &str, pct: &str| -> u64 {
        v["sim"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["policy"] == name)
            .unwrap_or_else(|| panic!("no {name} row"))["read_lat_us"][pct]
            .as_u64()
            .unwrap()
    };
    let (md, hedge, augur) = (
        lat("least-pending", "p999"),
        lat("hedge", "p999"),
        lat("augur", "p999"),
    );
    assert!(
        augur < md && augur < hedge,
        "augur p99.9 {augur} vs md's least-pending {md} / hedge {hedge}"
    );
    let real = v["real"].as_array().unwrap();
    assert!(!real.is_empty());
    for r in real {
        assert_eq!(r["clock"], "real");
        assert!(r["iops"].as_f64().unwrap() > 0.0 && r["errors"] == 0, "{r}");
    }
}

#[test]
fn bad_clock_flags_are_refused_in_one_line() {
    for (args, needle) in [
        (
            vec!["bench", "--clock", "lunar", "--duration", "10ms"],
            "unknown clock 'lunar'",
        ),
        (
            vec!["bench", "--predict-cost-ns", "5", "--duration", "10ms"],
            "--clock sim only",
        ),
        (
            vec![
                "bench",
                "--clock",
                "sim",
                "--predict-cost-ns",
                "x",
                "--duration",
                "10ms",
            ],
            "--predict-cost-ns 'x'",
        ),
        (
            vec![
                "bench",
                "--clock",
                "sim",
                "--replica",
                "/tmp/plain.img",
                "--size",
                "1M",
                "--duration",
                "10ms",
            ],
            "not emulated",
        ),
    ] {
        let o = augur(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(needle), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{args:?}: {e}");
    }
}

/// One policy row of a simulated `augur bench --json` run.
struct Row {
    iops: f64,
    mean: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    p9999: f64,
    extra_io_pct: f64,
}

/// `augur bench --clock sim --json` with the demo's fixed prediction cost
/// and `args`: the row of each policy.
fn sim_rows(args: &[&str]) -> std::collections::HashMap<String, Row> {
    let mut all = vec![
        "bench",
        "--clock",
        "sim",
        "--predict-cost-ns",
        "5,150",
        "--json",
    ];
    all.extend_from_slice(args);
    let o = augur(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    v.as_array()
        .expect("array")
        .iter()
        .map(|r| {
            let f = |x: &serde_json::Value| x.as_f64().expect("number");
            (
                r["policy"].as_str().expect("policy").to_string(),
                Row {
                    iops: f(&r["iops"]),
                    mean: f(&r["read_lat_us"]["avg"]),
                    p50: f(&r["read_lat_us"]["p50"]),
                    p99: f(&r["read_lat_us"]["p99"]),
                    p999: f(&r["read_lat_us"]["p999"]),
                    p9999: f(&r["read_lat_us"]["p9999"]),
                    extra_io_pct: f(&r["extra_io_pct"]),
                },
            )
        })
        .collect()
}

/// `augur bench --clock sim` on `profile` for `policies`, 30 s each, default
/// seed, the demo's fixed prediction cost.
fn sim_table(profile: &str, policies: &str) -> std::collections::HashMap<String, Row> {
    sim_rows(&[
        "--profile",
        profile,
        "--policy",
        policies,
        "--duration",
        "30s",
    ])
}

/// The best of the rules mirrors run today (`primary`, `round-robin`,
/// md's `least-pending`, dm-multipath's `service-time`, `hedge`), metric by
/// metric: the least latency and the most IOPS any of them reached.
fn best_heuristic(t: &std::collections::HashMap<String, Row>) -> Row {
    let rows: Vec<&Row> = HEURISTICS.split(',').map(|p| &t[p]).collect();
    let min = |f: fn(&Row) -> f64| rows.iter().map(|r| f(r)).fold(f64::MAX, f64::min);
    Row {
        iops: rows.iter().map(|r| r.iops).fold(0.0, f64::max),
        mean: min(|r| r.mean),
        p50: min(|r| r.p50),
        p99: min(|r| r.p99),
        p999: min(|r| r.p999),
        p9999: min(|r| r.p9999),
        extra_io_pct: 0.0,
    }
}

const HEURISTICS: &str = "primary,round-robin,least-pending,service-time,hedge";

/// The regression gate for every model and routing change, on the simulated
/// clock (deterministic, so this is no wall-clock assertion), with the
/// shipped model on the three shipped profiles (mixed 70/30, depth 32, 30 s,
/// the demo's prediction cost). Augur's default policy against md RAID1's
/// rule (`least-pending`): read mean, p99 and p99.9 no worse (2% slack),
/// p50 3% (gc-heavy: 131 against 128 us, the price of the penalty on a
/// replica predicted slow), IOPS no lower (2%), at most 6% extra replica
/// I/O. Where garbage collection stalls a replica (gc-heavy), read p99.9 at
/// least halfway from the best heuristic to greedy-oracle and p99 below the
/// best heuristic's; where there is nothing to avoid (fast-nvme), no extra
/// I/O and the best heuristic's IOPS (2%). What issue 30 asked beyond this
/// and is not met (the best heuristic's p50 everywhere, p99 halfway to the
/// oracle, noisy-neighbor's tail halfway to it) is in the README's policy
/// section.
#[test]
fn augur_beats_mds_rule_on_the_shipped_profiles() {
    for profile in ["gc-heavy", "noisy-neighbor", "fast-nvme"] {
        let t = sim_table(profile, &format!("{HEURISTICS},augur,greedy-oracle"));
        let (md, a, oracle) = (&t["least-pending"], &t["augur"], &t["greedy-oracle"]);
        for (what, ours, theirs, slack) in [
            ("mean", a.mean, md.mean, 1.02),
            ("p50", a.p50, md.p50, 1.03),
            ("p99", a.p99, md.p99, 1.02),
            ("p99.9", a.p999, md.p999, 1.02),
        ] {
            assert!(
                ours <= slack * theirs,
                "{profile}: augur read {what} {ours} > {slack} x least-pending {theirs}"
            );
        }
        assert!(
            a.iops >= 0.98 * md.iops,
            "{profile}: augur {} IOPS < 0.98 x least-pending {}",
            a.iops,
            md.iops
        );
        assert!(
            a.extra_io_pct <= 6.0,
            "{profile}: {}% extra I/O",
            a.extra_io_pct
        );
        let best = best_heuristic(&t);
        match profile {
            "gc-heavy" => {
                let (b, o) = (best.p999, oracle.p999);
                let half = b - (b - o) / 2.0;
                assert!(
                    a.p999 <= half,
                    "{profile}: augur read p99.9 {} > {half}, halfway from the best heuristic {b} to greedy-oracle {o}",
                    a.p999
                );
                assert!(
                    a.p99 <= best.p99,
                    "{profile}: augur read p99 {} > the best heuristic's {}",
                    a.p99,
                    best.p99
                );
            }
            "fast-nvme" => {
                assert_eq!(a.extra_io_pct, 0.0, "{profile}: augur hedged");
                assert!(
                    a.iops >= 0.98 * best.iops,
                    "{profile}: augur {} IOPS < 0.98 x the best heuristic's {}",
                    a.iops,
                    best.iops
                );
            }
            _ => {}
        }
    }
}

/// A replica that is slow all the time (a degraded drive, a remote leg:
/// here `fast-nvme` with its read base time raised to 1, 3 or 8 ms) beside
/// two healthy ones: with the shipped model, linnos and augur send its reads
/// to the others, on a read-only and on a mixed workload, so read p99 and
/// p99.9 fall to at most a fifth of primary's (md's least-pending rule alone
/// does not: at depth 4 the slow replica is often the emptiest). (Models trained with period labels
/// that mixed up replicas of different logs read such a replica as fast
/// whenever its write history was empty or unusual.)
#[test]
fn shipped_model_avoids_a_persistently_slow_replica() {
    let dir = tempfile::tempdir().unwrap();
    let fast = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/profiles/fast-nvme.toml"
    ))
    .unwrap();
    for read_us in [1000, 3000, 8000] {
        let toml: String = fast
            .lines()
            .map(|l| {
                if l.starts_with("read_base_us") {
                    format!("read_base_us = {read_us}.0")
                } else if l.starts_with("name") {
                    format!("name = \"slow-{read_us}us\"")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let slow = dir.path().join(format!("slow-{read_us}.toml"));
        std::fs::write(&slow, toml).unwrap();
        let spec = |name: &str, profile: &str| {
            format!("emu:{profile}:{}", dir.path().join(name).display())
        };
        let (r0, r1, r2) = (
            spec("r0", "fast-nvme"),
            spec("r1", &slow.display().to_string()),
            spec("r2", "fast-nvme"),
        );
        for workload in ["randread", "mixed"] {
            let t = sim_rows(&[
                "--replica",
                &r0,
                "--replica",
                &r1,
                "--replica",
                &r2,
                "--size",
                "64M",
                "--workload",
                workload,
                "--depth",
                "4",
                "--duration",
                "5s",
                "--policy",
                "primary,linnos,augur",
            ]);
            let base = &t["primary"];
            for policy in ["linnos", "augur"] {
                let r = &t[policy];
                assert!(
                    r.p99 <= 0.2 * base.p99 && r.p999 <= 0.2 * base.p999,
                    "{read_us} us replica, {workload}: {policy} p99/p99.9 {}/{} vs primary {}/{}",
                    r.p99,
                    r.p999,
                    base.p99,
                    base.p999
                );
            }
        }
    }
}

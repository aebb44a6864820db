//! Online adaptation on a mounted device, on the real clock: an `augur
//! fuse` daemon serves three emulated `fast-nvme` replicas with a model
//! trained only on `fast-nvme`; fio runs a 70/30 random 4 KiB load on it;
//! at `--switch-at` the replicas turn into `gc-heavy` (`augur ctl emu
//! set-profile`). Run once without `--adapt` and once with it, and print
//! read p50/p99/p99.9 per `--row` seconds side by side, when each model was
//! installed, and how the starting and the final model judge a `gc-heavy`
//! reference recording made on the same kind of device (a third daemon on
//! gc-heavy replicas, baseline routing, the same fio load, `augur ctl record`),
//! labelled by the training recipe.
//!
//! Needs root, /dev/fuse and fio.
//! `cargo run --release -p augur-bench --bin augur-adapt-live -- [--seconds 120]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use augur::control::{Command as C, request};
use augur_bench::live::{FuseDaemon, augur_binary, fio, quantile, replica_dir};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Seconds of load per side.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Second of the run at which the replicas become gc-heavy.
    #[arg(long, default_value_t = 30)]
    switch_at: u64,
    /// Seconds per timeline row (one fio run each).
    #[arg(long, default_value_t = 5)]
    row: u64,
    /// Device size (each emulated replica, in /dev/shm).
    #[arg(long, default_value = "512M")]
    size: String,
    /// `--adapt-every` of the adapting daemon.
    #[arg(long, default_value = "10s")]
    every: String,
    /// `--adapt-duty` of the adapting daemon.
    #[arg(long, default_value = "0.25")]
    duty: String,
    /// `--adapt-min-new` of the adapting daemon.
    #[arg(long, default_value_t = 50_000)]
    min_new: u64,
    /// The starting model (default: recorded and trained here on fast-nvme).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The augur binary (default: next to this one).
    #[arg(long)]
    augur: Option<PathBuf>,
}

/// One row: read latency of one fio run.
struct Row {
    t_end: f64,
    iops: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: u64,
}

/// One side's timeline and its model events (seconds into the run).
struct SideRun {
    rows: Vec<Row>,
    events: Vec<(f64, String)>,
    saved: Option<PathBuf>,
}

fn ok(r: augur::control::Reply) -> anyhow::Result<serde_json::Value> {
    if !r.ok {
        bail!("control request failed: {:?}", r.error);
    }
    Ok(r.result)
}

fn augur_cmd(augur: &Path, args: &[&str]) -> anyhow::Result<()> {
    let o = Command::new(augur)
        .args(args)
        .output()
        .with_context(|| format!("running augur {}", args.join(" ")))?;
    if !o.status.success() {
        bail!(
            "augur {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// fio's load for `secs` seconds on `file`.
fn load(a: &Args, file: &Path, secs: u64) -> anyhow::Result<augur_bench::live::FioRun> {
    let job = [
        "--name=adapt",
        "--ioengine=io_uring",
        "--direct=1",
        "--rw=randrw",
        "--rwmixread=70",
        "--bs=4k",
        "--iodepth=16",
        "--time_based=1",
        "--randrepeat=0",
    ];
    let mut v: Vec<String> = job.iter().map(|s| s.to_string()).collect();
    v.push(format!("--runtime={secs}s"));
    v.push(format!("--filename={}", file.display()));
    v.push(format!("--size={}", a.size));
    fio(&v)
}

/// A reference recording on gc-heavy replicas under baseline routing.
fn reference(a: &Args, augur: &Path, dir: &Path, out: &Path) -> anyhow::Result<()> {
    let d = FuseDaemon::start(augur, dir, "gc-heavy", &a.size, &["--policy", "primary"])?;
    load(a, &d.file, 5)?; // past the start
    ok(request(
        &d.socket,
        C::RecordStart {
            file: out.to_path_buf(),
        },
        Duration::from_secs(10),
    )?)?;
    load(a, &d.file, 10)?;
    ok(request(&d.socket, C::RecordStop, Duration::from_secs(10))?)?;
    Ok(())
}

fn run_side(
    a: &Args,
    augur: &Path,
    dir: &Path,
    model: &Path,
    adapt: bool,
) -> anyhow::Result<SideRun> {
    let min_new = a.min_new.to_string();
    let mut extra = vec![
        "--policy",
        "linnos",
        "--model",
        model.to_str().context("path")?,
    ];
    if adapt {
        extra.extend([
            "--adapt",
            "--adapt-every",
            &a.every,
            "--adapt-min-new",
            &min_new,
            "--adapt-duty",
            &a.duty,
        ]);
    }
    let d = FuseDaemon::start(augur, dir, "fast-nvme", &a.size, &extra)?;
    let t0 = Instant::now();
    let wall0 = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let mut rows = Vec::new();
    let mut switched = false;
    while t0.elapsed().as_secs_f64() < a.seconds as f64 {
        if !switched && t0.elapsed().as_secs_f64() >= a.switch_at as f64 {
            ok(request(
                &d.socket,
                C::EmuSetProfile {
                    profile: "gc-heavy".into(),
                },
                Duration::from_secs(10),
            )?)?;
            switched = true;
        }
        let r = load(a, &d.file, a.row)?;
        rows.push(Row {
            t_end: t0.elapsed().as_secs_f64(),
            iops: r.read_iops,
            p50: quantile(&r.read_bins, 0.5),
            p99: quantile(&r.read_bins, 0.99),
            p999: quantile(&r.read_bins, 0.999),
            errors: r.errors,
        });
    }
    let h = ok(request(
        &d.socket,
        C::ModelHistory,
        Duration::from_secs(10),
    )?)?;
    let mut events = Vec::new();
    for e in h["events"].as_array().into_iter().flatten() {
        let at = e["at"].as_f64().unwrap_or(0.0) - wall0;
        let what = format!(
            "{} {} ({}): {}",
            e["event"].as_str().unwrap_or("?"),
            e["id"].as_str().unwrap_or("-"),
            e["source"].as_str().unwrap_or(""),
            e["detail"].as_str().unwrap_or("")
        );
        events.push((at.max(0.0), what));
    }
    let saved = if adapt {
        let f = dir.join("final.augm");
        let _ = std::fs::remove_file(&f);
        ok(request(
            &d.socket,
            C::ModelSave { file: f.clone() },
            Duration::from_secs(10),
        )?)?;
        Some(f)
    } else {
        None
    };
    drop(d);
    Ok(SideRun {
        rows,
        events,
        saved,
    })
}

/// Accuracy, false-submit and false-revoke rate of `model` on `reads`,
/// labelled by the training recipe.
fn judge(model: &Path, reads: &[augur_feature_store::TrainingRecord]) -> anyhow::Result<String> {
    let m = augur_predictor::Model::load(model)?;
    let (truth, threshold) =
        augur::adapt::recipe_labels(reads).context("the reference has no reads")?;
    let r = augur_predictor::eval::evaluate_labelled(&m, reads, &truth, threshold).int;
    let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.3}"));
    Ok(format!(
        "model {}: accuracy {}, false-submit {}, false-revoke {} (threshold {threshold} us)",
        m.id(),
        f(r.accuracy),
        f(r.false_submit_rate),
        f(r.false_revoke_rate)
    ))
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let augur = augur_binary(a.augur.as_deref())?;
    let dir = replica_dir("augur-adapt-live-")?;
    let work = tempfile::tempdir()?;
    let model = match &a.model {
        Some(m) => m.clone(),
        None => {
            let log = work.path().join("fast.log");
            let m = work.path().join("fast.augm");
            let (log_s, m_s) = (log.display().to_string(), m.display().to_string());
            eprintln!("training a fast-nvme-only model ...");
            augur_cmd(
                &augur,
                &[
                    "record",
                    "--clock",
                    "sim",
                    "--predict-cost-ns",
                    "5,150",
                    "--profile",
                    "fast-nvme",
                    "--duration",
                    "10s",
                    "--seed",
                    "3",
                    "--out",
                    &log_s,
                ],
            )?;
            augur_cmd(&augur, &["train", "--log", &log_s, "--out", &m_s])?;
            m
        }
    };
    let reference_log = work.path().join("gc-ref.log");
    reference(&a, &augur, dir.path(), &reference_log)?;
    let without = run_side(&a, &augur, dir.path(), &model, false)?;
    let with = run_side(&a, &augur, dir.path(), &model, true)?;

    println!(
        "FUSE, 3 emulated replicas of {} in /dev/shm, fast-nvme until {} s then gc-heavy; fio randrw 70/30 4k depth 16, {} s per row; policy linnos",
        a.size, a.switch_at, a.row
    );
    println!(
        "{:>6} | {:>9} {:>7} {:>7} {:>8} | {:>9} {:>7} {:>7} {:>8} | with --adapt: models",
        "t s", "IOPS", "p50", "p99", "p99.9", "IOPS", "p50", "p99", "p99.9"
    );
    let mut errors = 0;
    let mut last = 0.0;
    for (i, w) in with.rows.iter().enumerate() {
        let o = without.rows.get(i);
        let ev: Vec<&str> = with
            .events
            .iter()
            .filter(|(t, e)| *t > last && *t <= w.t_end && !e.starts_with("start"))
            .map(|(_, e)| e.split(':').next().unwrap_or(""))
            .collect();
        last = w.t_end;
        errors += w.errors + o.map_or(0, |o| o.errors);
        println!(
            "{:>6.0} | {:>9} {:>7} {:>7} {:>8} | {:>9.0} {:>7.0} {:>7.0} {:>8.0} | {}",
            w.t_end,
            o.map_or("-".into(), |o| format!("{:.0}", o.iops)),
            o.map_or("-".into(), |o| format!("{:.0}", o.p50)),
            o.map_or("-".into(), |o| format!("{:.0}", o.p99)),
            o.map_or("-".into(), |o| format!("{:.0}", o.p999)),
            w.iops,
            w.p50,
            w.p99,
            w.p999,
            ev.join("; ")
        );
    }
    println!(
        "fio errors: {errors}; adapting daemon: --adapt-every {} --adapt-min-new {} --adapt-duty {}",
        a.every, a.min_new, a.duty
    );
    let summary = |rows: &[Row], from: f64, to: f64| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r.t_end > from && r.t_end <= to)
            .map(|r| r.p999)
            .collect();
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        (s.len(), s.get(s.len() / 2).copied().unwrap_or(0.0))
    };
    let install = with
        .events
        .iter()
        .find(|(t, e)| e.starts_with("adapt") && *t > a.switch_at as f64)
        .map(|(t, _)| *t);
    match install {
        Some(t) => {
            println!(
                "first model installed after the switch: {:.1} s after it (at {t:.1} s)",
                t - a.switch_at as f64
            );
            let (n1, m1) = summary(&without.rows, t, f64::MAX);
            let (n2, m2) = summary(&with.rows, t, f64::MAX);
            println!(
                "median row p99.9 after it: without --adapt {m1:.0} us ({n1} rows), with {m2:.0} us ({n2} rows)"
            );
        }
        None => println!("no model was installed after the switch"),
    }
    let (nb, mb) = summary(&with.rows, 0.0, a.switch_at as f64);
    println!("median row p99.9 before the switch (with --adapt side): {mb:.0} us ({nb} rows)");
    println!("model history of the adapting daemon (seconds into its run):");
    for (t, e) in &with.events {
        println!("  {t:>6.1} {e}");
    }
    let reads: Vec<_> = augur_feature_store::read_log(&reference_log)?
        .into_iter()
        .filter(|r| r.op == augur_feature_store::Op::Read)
        .collect();
    println!(
        "judged on a gc-heavy reference recording of this device ({} reads, 10 s, baseline routing), labels by the training recipe:",
        reads.len()
    );
    println!("  starting {}", judge(&model, &reads)?);
    if let Some(f) = &with.saved {
        println!("  final    {}", judge(f, &reads)?);
    }
    Ok(())
}

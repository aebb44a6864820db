//! `augur ctl`: ask a running daemon over its control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use augur::control::{Command, Reply, request, run_dir, socket_for_ublk};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::error::CliError;

#[derive(Args)]
pub(crate) struct CtlArgs {
    /// The ublk device id (N of /dev/ublkbN).
    #[arg(long, conflicts_with = "socket")]
    id: Option<u32>,
    /// A daemon's control socket (any daemon; see augur list). Without --id
    /// or --socket: the only socket in /run/augur.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Print the daemon's JSON reply instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// How long to wait for the reply.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Subcommand)]
enum CtlCmd {
    /// Device, replicas (IOPS, read p50/p99/p99.9 over the last second), policy, model, uptime.
    Status,
    /// Counters since start: per replica, reroutes, predictions and their accuracy.
    Stats,
    /// The active model, loading another, its history, rolling back.
    #[command(subcommand)]
    Model(ModelCtl),
    /// Switch the routing policy.
    #[command(subcommand)]
    Policy(PolicyCtl),
    /// Record the live device's training log.
    #[command(subcommand)]
    Record(RecordCtl),
    /// The emulated replicas (tests and demonstrations).
    #[command(subcommand)]
    Emu(EmuCtl),
    /// Change the array's members: fail (a drill), remove, add, replace a replica.
    #[command(subcommand)]
    Replica(ReplicaCtl),
    /// Compare every region of every live replica (in the background; this
    /// waits for the result). Exit 1 when mismatches were found and not repaired.
    Scrub {
        /// Rewrite differing regions from the majority (the first replica when there are two).
        #[arg(long)]
        repair: bool,
        /// Start it and return without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Set the resync/rebuild/scrub rate limit (bytes per second, k/m/g suffixes; 0: none).
    SyncRate {
        #[arg(value_parser = super::args::parse_size)]
        rate: u64,
    },
}

#[derive(Subcommand)]
enum ReplicaCtl {
    /// Mark replica N failed, as an I/O error would (a drill).
    Fail { n: usize },
    /// Take replica N out of the array.
    Remove { n: usize },
    /// Put SPEC (PATH or emu:PROFILE:PATH; created at the array's size if missing) into the first failed or removed slot, rebuilt in the background.
    Add { spec: String },
    /// Replace replica N with SPEC, rebuilt in the background while the device serves.
    Replace { n: usize, spec: String },
}

/// A replica spec with its path made absolute (the daemon has another working directory).
fn absolute_spec(spec: &str) -> String {
    match spec.strip_prefix("emu:").and_then(|r| r.split_once(':')) {
        Some((prof, path)) => format!("emu:{prof}:{}", absolute(Path::new(path)).display()),
        None => absolute(Path::new(spec)).display().to_string(),
    }
}

#[derive(Subcommand)]
enum EmuCtl {
    /// Switch every emulated replica to PROFILE (a shipped name or a TOML file) from now on.
    SetProfile { profile: String },
}

#[derive(Subcommand)]
enum ModelCtl {
    /// The active model: id (its checksum), source, features, threshold.
    Show,
    /// Validate FILE (or `default`) and swap it in; a bad file leaves the active model.
    Load { file: String },
    /// Every model installed, rolled back or rejected since start.
    History,
    /// Put back the model the active one replaced.
    Rollback,
    /// Write the active model to FILE (a new file on the daemon's machine),
    /// to keep a model adaptation trained.
    Save { file: PathBuf },
}

#[derive(Subcommand)]
enum PolicyCtl {
    /// Route reads by NAME from now on (augur, least-pending, primary, hedge, linnos, ...).
    Set { name: String },
}

#[derive(Subcommand)]
enum RecordCtl {
    /// Start writing the training log to FILE (a new file on the daemon's machine).
    Start { file: PathBuf },
    /// Stop, and say how many records were written.
    Stop,
}

/// An absolute path, so the daemon (another working directory) finds it.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The sockets in the run directory.
pub(crate) fn sockets() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn pick_socket(a: &CtlArgs) -> Result<PathBuf, CliError> {
    if let Some(s) = &a.socket {
        return Ok(s.clone());
    }
    if let Some(id) = a.id {
        return Ok(socket_for_ublk(id));
    }
    match sockets().as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(CliError::BadFlag(format!(
            "no daemon sockets in {} (is augur serve or augur fuse running?)",
            run_dir().display()
        ))),
        many => Err(CliError::BadFlag(format!(
            "several daemons; pick one with --id N or --socket PATH: {}",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Runs `augur ctl`: exit 0 ok, 1 ok but degraded, 2 error (as mdadm).
pub(crate) fn cmd_ctl(a: CtlArgs) -> ExitCode {
    let cmd = match &a.cmd {
        CtlCmd::Status => Command::Status,
        CtlCmd::Stats => Command::Stats,
        CtlCmd::Model(ModelCtl::Show) => Command::ModelShow,
        CtlCmd::Model(ModelCtl::Load { file }) => Command::ModelLoad {
            file: if file == "default" {
                file.clone()
            } else {
                absolute(Path::new(file)).display().to_string()
            },
        },
        CtlCmd::Model(ModelCtl::History) => Command::ModelHistory,
        CtlCmd::Model(ModelCtl::Rollback) => Command::ModelRollback,
        CtlCmd::Model(ModelCtl::Save { file }) => Command::ModelSave {
            file: absolute(file),
        },
        CtlCmd::Policy(PolicyCtl::Set { name }) => Command::PolicySet { name: name.clone() },
        CtlCmd::Record(RecordCtl::Start { file }) => Command::RecordStart {
            file: absolute(file),
        },
        CtlCmd::Record(RecordCtl::Stop) => Command::RecordStop,
        CtlCmd::Emu(EmuCtl::SetProfile { profile }) => Command::EmuSetProfile {
            profile: if profile.ends_with(".toml") || profile.contains('/') {
                absolute(Path::new(profile)).display().to_string()
            } else {
                profile.clone()
            },
        },
        CtlCmd::Replica(ReplicaCtl::Fail { n }) => Command::ReplicaFail { replica: *n },
        CtlCmd::Replica(ReplicaCtl::Remove { n }) => Command::ReplicaRemove { replica: *n },
        CtlCmd::Replica(ReplicaCtl::Add { spec }) => Command::ReplicaAdd {
            spec: absolute_spec(spec),
        },
        CtlCmd::Replica(ReplicaCtl::Replace { n, spec }) => Command::ReplicaReplace {
            replica: *n,
            spec: absolute_spec(spec),
        },
        CtlCmd::Scrub { repair, .. } => Command::Scrub { repair: *repair },
        CtlCmd::SyncRate { rate } => Command::SyncRate { bytes_per_s: *rate },
    };
    if let CtlCmd::Scrub { no_wait: false, .. } = &a.cmd {
        return scrub_and_wait(&a, cmd);
    }
    let reply = pick_socket(&a)
        .map_err(anyhow::Error::from)
        .and_then(|s| Ok(request(&s, cmd.clone(), a.timeout)?));
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            eprintln!("augur ctl: {e:#}");
            return ExitCode::from(2);
        }
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).unwrap_or_else(|e| e.to_string())
        );
    } else if reply.ok {
        print!("{}", render(&cmd, &reply.result));
    }
    if !reply.ok {
        if !a.json {
            eprintln!(
                "augur ctl: {}",
                reply
                    .error
                    .as_deref()
                    .unwrap_or("the daemon gave no reason")
            );
        }
        return ExitCode::from(2);
    }
    if reply.degraded {
        if !a.json {
            eprintln!("augur ctl: degraded: a replica has failed (augur ctl status)");
        }
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// `ctl scrub`: starts it, polls `status` until it is over, prints the result.
fn scrub_and_wait(a: &CtlArgs, cmd: Command) -> ExitCode {
    let run = || -> anyhow::Result<Reply> {
        let sock = pick_socket(a)?;
        let r = request(&sock, cmd.clone(), a.timeout)?;
        if !r.ok {
            return Ok(r);
        }
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let st = request(&sock, Command::Status, a.timeout)?;
            let sync = &st.result["sync"];
            if sync["running"] != Value::Bool(true) && sync["last_scrub"].is_object() {
                return Ok(Reply::ok(sync["last_scrub"].clone(), st.degraded));
            }
        }
    };
    let reply = match run() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("augur ctl: {e:#}");
            return ExitCode::from(2);
        }
    };
    if !reply.ok {
        eprintln!(
            "augur ctl: {}",
            reply
                .error
                .as_deref()
                .unwrap_or("the daemon gave no reason")
        );
        return ExitCode::from(2);
    }
    let r = &reply.result;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(r).unwrap_or_else(|e| e.to_string())
        );
    } else {
        print!("{}", render(&cmd, r));
    }
    let unrepaired = r["mismatches"].as_u64().unwrap_or(0) > 0 && r["repair"] != Value::Bool(true);
    if unrepaired {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// The human form of a reply.
pub(crate) fn render(cmd: &Command, r: &Value) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    match cmd {
        Command::Status => {
            let _ = writeln!(
                o,
                "{} {} ({}, pid {}), up {} s\npolicy {}, model {} ({}){}\nIOPS {} over the last {} s",
                s(&r["frontend"]),
                s(&r["device"]),
                s(&r["name"]),
                s(&r["pid"]),
                s(&r["uptime_s"]),
                s(&r["policy"]),
                s(&r["model"]),
                s(&r["model_source"]),
                match &r["recording"] {
                    Value::String(f) => format!(", recording to {f}"),
                    _ => String::new(),
                },
                s(&r["iops"]),
                s(&r["interval_s"]),
            );
            let p = &r["predict_on"];
            if p.is_object() {
                let _ = writeln!(
                    o,
                    "predict-on {} ({}): {} GPU calls ({} merged), {} skipped, {} kept on the CPU while the GPU was busy, {} back-offs, {} failures",
                    s(&p["mode"]),
                    s(&p["device"]),
                    s(&p["gpu_calls"]),
                    s(&p["merged_calls"]),
                    s(&p["skipped"]),
                    s(&p["kept_busy"]),
                    s(&p["backoffs"]),
                    s(&p["failures"]),
                );
            }
            let b = &r["bitmap"];
            if b.is_object() {
                let _ = writeln!(
                    o,
                    "array {} generation {}: bitmap {} of {} region(s) of {} KiB dirty",
                    s(&b["array_id"]).get(..8).unwrap_or("-"),
                    s(&b["generation"]),
                    s(&b["dirty"]),
                    s(&b["regions"]),
                    b["region_size"].as_u64().unwrap_or(0) >> 10,
                );
            }
            let y = &r["sync"];
            if y["running"] == Value::Bool(true) {
                let _ = writeln!(
                    o,
                    "{} running: {} of {} region(s) ({:.0}%), {} MiB, limit {} MiB/s",
                    s(&y["kind"]),
                    s(&y["done_regions"]),
                    s(&y["total_regions"]),
                    100.0 * y["done_regions"].as_f64().unwrap_or(0.0)
                        / y["total_regions"].as_f64().unwrap_or(1.0).max(1.0),
                    y["bytes"].as_u64().unwrap_or(0) >> 20,
                    y["rate_limit"].as_u64().unwrap_or(0) >> 20,
                );
            }
            let _ = writeln!(
                o,
                "{:<3} {:<8} {:>7} {:>9} {:>8} {:>8} {:>9}  spec",
                "#", "state", "pending", "IOPS", "p50 us", "p99 us", "p99.9 us"
            );
            for x in r["replicas"].as_array().into_iter().flatten() {
                let state = match x["state"].as_str() {
                    Some("in-sync") | None if x["live"] == Value::Bool(true) => "live".to_string(),
                    Some("syncing") => format!("sync:{}", s(&x["pending_regions"])),
                    Some(other) => other.to_uppercase(),
                    None => "FAILED".to_string(),
                };
                let _ = writeln!(
                    o,
                    "{:<3} {:<8} {:>7} {:>9} {:>8} {:>8} {:>9}  {}",
                    s(&x["replica"]),
                    state,
                    s(&x["pending"]),
                    s(&x["iops"]),
                    s(&x["read_p50_us"]),
                    s(&x["read_p99_us"]),
                    s(&x["read_p999_us"]),
                    s(&x["spec"]),
                );
            }
        }
        Command::Stats => {
            let _ = writeln!(o, "since start ({} s):", s(&r["uptime_s"]));
            for k in augur::ArrayStats::NAMES {
                let _ = writeln!(o, "  {k:<20} {}", s(&r["counters"][*k]));
            }
            let p = &r["predictor"];
            let _ = writeln!(
                o,
                "predictor ({}): {} predictions, {} said slow; judged {} reads, {} observed slow; accuracy {}, false-submit rate {}",
                s(&p["device"]),
                s(&p["predictions"]),
                s(&p["predicted_slow"]),
                s(&p["judged_reads"]),
                s(&p["observed_slow"]),
                s(&p["accuracy"]),
                s(&p["false_submit_rate"]),
            );
            let _ = writeln!(
                o,
                "{:<3} {:<6} {:>12} {:>12} {:>10} {:>14} {:>14} {:>7}  spec",
                "#", "state", "reads", "writes", "other", "read bytes", "written bytes", "errors"
            );
            for x in r["replicas"].as_array().into_iter().flatten() {
                let c = &x["counts"];
                let _ = writeln!(
                    o,
                    "{:<3} {:<6} {:>12} {:>12} {:>10} {:>14} {:>14} {:>7}  {}",
                    s(&x["replica"]),
                    if x["live"] == Value::Bool(true) {
                        "live"
                    } else {
                        "FAILED"
                    },
                    s(&c["reads"]),
                    s(&c["writes"]),
                    s(&c["other"]),
                    s(&c["read_bytes"]),
                    s(&c["written_bytes"]),
                    s(&c["errors"]),
                    s(&x["spec"]),
                );
            }
        }
        Command::ModelShow => {
            for k in [
                "id",
                "source",
                "features",
                "shape",
                "threshold_us",
                "label",
                "policy",
                "rollback_to",
            ] {
                let _ = writeln!(o, "{k:<13} {}", s(&r[k]));
            }
        }
        Command::ModelHistory => {
            let _ = writeln!(
                o,
                "{:<20} {:<9} {:<9} {:<40} detail",
                "at", "event", "id", "source"
            );
            for e in r["events"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    o,
                    "{:<20} {:<9} {:<9} {:<40} {}",
                    e["at"]
                        .as_u64()
                        .map(|t| humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + Duration::from_secs(t)
                        )
                        .to_string())
                        .unwrap_or_else(|| s(&e["at"])),
                    s(&e["event"]),
                    s(&e["id"]),
                    s(&e["source"]),
                    s(&e["detail"]),
                );
            }
        }
        Command::ModelLoad { .. } | Command::ModelRollback => {
            let _ = writeln!(
                o,
                "model {} -> {} ({})",
                s(&r["old"]),
                s(&r["new"]),
                s(&r["source"])
            );
        }
        Command::ModelSave { .. } => {
            let _ = writeln!(o, "model {} saved to {}", s(&r["id"]), s(&r["file"]));
        }
        Command::PolicySet { .. } => {
            let _ = writeln!(o, "policy {} -> {}", s(&r["old"]), s(&r["new"]));
        }
        Command::RecordStart { .. } => {
            let _ = writeln!(o, "recording to {}", s(&r["file"]));
        }
        Command::EmuSetProfile { .. } => {
            let _ = writeln!(
                o,
                "{} emulated replica(s) now run profile {}",
                s(&r["replicas"]),
                s(&r["profile"])
            );
        }
        Command::ReplicaFail { .. }
        | Command::ReplicaRemove { .. }
        | Command::ReplicaAdd { .. }
        | Command::ReplicaReplace { .. } => {
            let _ = writeln!(o, "{}", s(&r["what"]));
        }
        Command::Scrub { .. } if r["regions"].is_u64() => {
            let _ = writeln!(
                o,
                "scrub: {} region(s) of {} KiB compared in {} s: {} mismatch(es){}",
                s(&r["regions"]),
                r["region_size"].as_u64().unwrap_or(0) >> 10,
                s(&r["seconds"]),
                s(&r["mismatches"]),
                if r["repair"] == Value::Bool(true) {
                    format!(
                        ", {} repaired from the {}",
                        s(&r["repaired"]),
                        s(&r["repair_source"])
                    )
                } else {
                    String::new()
                }
            );
            for off in r["offsets"].as_array().into_iter().flatten() {
                let _ = writeln!(o, "  region at byte {}", s(off));
            }
        }
        Command::Scrub { .. } => {
            let _ = writeln!(o, "scrub started");
        }
        Command::SyncRate { .. } => {
            let _ = writeln!(o, "sync rate limit {} bytes/s", s(&r["bytes_per_s"]));
        }
        Command::RecordStop => {
            let _ = writeln!(
                o,
                "wrote {} records to {} ({} dropped because the writer fell behind)",
                s(&r["records"]),
                s(&r["file"]),
                s(&r["dropped"])
            );
        }
    }
    o
}

/// Asks the daemon at `path` for its status, briefly (for `augur list`).
pub(crate) fn quick_status(path: &Path) -> Option<Reply> {
    request(path, Command::Status, Duration::from_secs(2))
        .ok()
        .filter(|r| r.ok)
}

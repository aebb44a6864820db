//! The `augur` command line: argument types and one function per subcommand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use augur::array::{ArrayError, FaultPlan, ReplicaSpec};
use augur::emu::Profile;
use augur::load::{
    BenchSetup, LoadSpec, PolicyReport, Progress, ReplayIo, ReplicaSource, Workload, render_table,
    run_bench, run_record,
};
use augur::route::Policy;
use augur_predictor::ModelPredictor;
use clap::{Args, Parser, Subcommand};
use std::sync::Arc;

mod model;

/// Augur: a replicated flash block device that predicts, per read, whether a
/// replica is about to be slow and sends the read elsewhere.
#[derive(Parser)]
#[command(name = "augur", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Three emulated gc-heavy replicas, every policy side by side (no arguments, no root).
    Demo(DemoArgs),
    /// Drive the array in-process with a seeded workload and compare routing policies.
    Bench(BenchArgs),
    /// Run a workload with one policy and write every completed read's training record.
    Record(RecordArgs),
    /// Emulator profiles: list the shipped ones, or show one's parameters and latency.
    Profile(ProfileArgs),
    /// Serve the array as a ublk block device, /dev/ublkbN, in the foreground (Linux 6.0+ with ublk_drv).
    Serve(ServeArgs),
    /// List Augur's ublk devices: id, device, daemon, state, geometry, policy, replicas.
    List(ListArgs),
    /// Stop an Augur ublk device (SIGTERM to its daemon; a device whose daemon died is deleted).
    Stop(StopArgs),
    /// Serve the array as one file, disk.img, in a FUSE mount (a block device where ublk is missing).
    Fuse(FuseArgs),
    /// Train a model from training logs (burn, CPU).
    Train(model::TrainArgs),
    /// Accuracy, false-submit/revoke rates, ROC AUC of a model on logs, f32 and integer paths.
    Eval(model::EvalArgs),
    /// Inspect model files.
    #[command(subcommand)]
    Model(model::ModelCmd),
    /// Import I/O traces (MSR-Cambridge CSV, blkparse text).
    #[command(subcommand)]
    Trace(model::TraceCmd),
}

#[derive(Args)]
struct DemoArgs {
    /// How long each policy runs.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// Number of fresh emulated replicas (ignored with --replica).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Emulator profile of the fresh replicas.
    #[arg(long, default_value = "gc-heavy")]
    profile: String,
    /// A profile TOML file of one's own (overrides --profile).
    #[arg(long)]
    profile_file: Option<PathBuf>,
    /// Use these replicas instead of fresh ones: PATH or emu:PROFILE:PATH (repeat).
    #[arg(long = "replica")]
    replica: Vec<String>,
    /// Create missing --replica files with this size; size of fresh replicas.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Directory for fresh replicas (default /dev/shm, else the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Workload: randread, mixed, write-burst.
    #[arg(long, default_value = "mixed")]
    workload: String,
    /// Percent reads for the mixed workload.
    #[arg(long, default_value_t = 70.0)]
    read_pct: f64,
    /// Request size (e.g. 4k).
    #[arg(long = "bs", default_value = "4k", value_parser = parse_size)]
    block_size: u64,
    /// Closed loop: requests in flight. Open loop: most in flight.
    #[arg(long, default_value_t = 32)]
    depth: u32,
    /// Open-loop arrival rate in requests/s (Poisson); default is closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// How long each policy runs (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seed of the workload and the emulators.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Most I/Os in flight to one replica.
    #[arg(long, default_value_t = 64)]
    replica_depth: u32,
    /// Percentile of recent read latency after which `hedge` sends a second copy.
    #[arg(long, default_value_t = 95.0)]
    hedge_pct: f64,
    #[command(flatten)]
    fault: FaultArgs,
    /// Replay this trace (MSR-Cambridge CSV or blkparse text) instead of --workload.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Trace format: msr or blkparse (default: detect).
    #[arg(long, requires = "trace")]
    trace_format: Option<String>,
    /// Replay only this disk of the trace (index in order of appearance).
    #[arg(long, requires = "trace")]
    trace_disk: Option<u16>,
    /// Skip malformed trace lines (counted) instead of stopping at the first.
    #[arg(long, requires = "trace")]
    skip_bad: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Policies to compare, comma-separated.
    #[arg(long, default_value = "baseline,random,hedge,oracle")]
    policy: String,
    /// Print one JSON array (an object per policy) instead of the table.
    #[arg(long)]
    json: bool,
    /// Model for the linnos policies: a file, or `default` for the shipped one.
    #[arg(long, default_value = "default")]
    model: String,
}

#[derive(Args)]
struct RecordArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Policy to run.
    #[arg(long, default_value = "baseline")]
    policy: String,
    /// Training-log file to write.
    #[arg(long)]
    out: PathBuf,
    /// Model for the linnos policies: a file, or `default` for the shipped one.
    #[arg(long, default_value = "default")]
    model: String,
}

#[derive(Args)]
struct FuseArgs {
    /// Replicas: PATH or emu:PROFILE:PATH (repeat).
    #[arg(long = "replica", required_unless_present = "cleanup")]
    replica: Vec<String>,
    /// Empty directory to mount on; it will hold disk.img.
    #[arg(long, required_unless_present = "cleanup")]
    mount: Option<PathBuf>,
    /// Read routing policy.
    #[arg(long, default_value = "baseline")]
    policy: String,
    /// Model for the linnos policies: a file, or `default` for the shipped one.
    #[arg(long, default_value = "default")]
    model: String,
    /// FUSE worker threads, each with its own array queue. Each handles one
    /// request at a time, so this is the daemon's queue depth.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Attach a loop device (direct I/O, 4096-byte sectors) to disk.img and print it.
    #[arg(long = "loop")]
    attach_loop: bool,
    /// Create missing --replica files with this size.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Most I/Os in flight to one replica from one worker.
    #[arg(long, default_value_t = 64)]
    replica_depth: u32,
    /// Seed of the emulators and the random policy.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Percentile of recent read latency after which `hedge` sends a second copy.
    #[arg(long, default_value_t = 95.0)]
    hedge_pct: f64,
    /// Clear what a crashed daemon left at DIR (loop devices on DIR/disk.img, the mount) and exit.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["replica", "mount", "attach_loop"])]
    cleanup: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// Replicas: PATH or emu:PROFILE:PATH (repeat). With --recover: the recorded ones if left out.
    #[arg(long = "replica", required_unless_present = "recover")]
    replica: Vec<String>,
    /// Create missing --replica files with this size.
    #[arg(long, value_parser = parse_size, conflicts_with = "recover")]
    size: Option<u64>,
    /// Read routing policy [default: baseline; with --recover: the recorded one].
    #[arg(long)]
    policy: Option<String>,
    /// Model for the linnos policies: a file, or `default` for the shipped one
    /// [default: default; with --recover: the recorded one].
    #[arg(long)]
    model: Option<String>,
    /// ublk queues, each served by one thread with its own array queue [default: 1].
    #[arg(long)]
    queues: Option<u16>,
    /// Requests in flight per queue [default: 64].
    #[arg(long)]
    depth: Option<u16>,
    /// Logical block size of the device: 512 or 4096 [default: 4096].
    #[arg(long)]
    block_size: Option<u32>,
    /// Device id, the N of /dev/ublkbN [default: the driver picks one].
    #[arg(long)]
    id: Option<u32>,
    /// Attach to device --id N whose daemon died; the I/O waiting on it then completes.
    #[arg(long, requires = "id")]
    recover: bool,
    /// Most I/Os in flight to one replica from one queue.
    #[arg(long, default_value_t = 64)]
    replica_depth: u32,
    /// Seed of the emulators and the random policy.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Percentile of recent read latency after which `hedge` sends a second copy.
    #[arg(long, default_value_t = 95.0)]
    hedge_pct: f64,
    #[command(flatten)]
    fault: FaultArgs,
}

#[derive(Args)]
struct ListArgs {
    /// Print a JSON array (an object per device) instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StopArgs {
    /// The device id (N of /dev/ublkbN).
    #[arg(long)]
    id: u32,
    /// How long to wait for the daemon to remove the device.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct ProfileArgs {
    /// A shipped profile name or a TOML file; none lists the shipped ones.
    name: Option<String>,
}

/// Parses sizes like 4096, 4k, 64K, 256M, 1G, 2T.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_lowercase();
            let m = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1u64 << 40,
                _ => return Err(format!("unknown size unit in '{s}' (use k, M, G, T)")),
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4k, 256M, 1G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

fn load_profile(args: &LoadArgs) -> Result<Profile, ArrayError> {
    match &args.profile_file {
        Some(p) => Ok(Profile::from_file(p)?),
        None => Ok(Profile::builtin(&args.profile)?),
    }
}

/// Imports `--trace` as a replay workload.
fn trace_workload(args: &LoadArgs, path: &std::path::Path) -> anyhow::Result<Workload> {
    use augur_predictor::trace::{ImportOptions, TraceFormat, import_file};
    let fmt = match args.trace_format.as_deref() {
        None => None,
        Some(f) => Some(TraceFormat::parse(f).ok_or_else(|| {
            ArrayError::BadSpec(format!("unknown trace format '{f}' (msr, blkparse)"))
        })?),
    };
    let opts = ImportOptions {
        skip_bad: args.skip_bad,
    };
    let trace = import_file(path, fmt, opts)
        .map_err(|e| ArrayError::BadSpec(format!("{}: {e}", path.display())))?;
    if trace.skipped > 0 {
        tracing::warn!(
            "{}: skipped {} malformed line(s)",
            path.display(),
            trace.skipped
        );
    }
    let ios: Vec<ReplayIo> = trace
        .workload(args.trace_disk)
        .into_iter()
        .filter(|io| {
            matches!(
                io.op,
                augur_feature_store::Op::Read | augur_feature_store::Op::Write
            )
        })
        .map(|io| ReplayIo {
            t_ns: io.t_ns,
            op: io.op,
            offset: io.offset,
            len: io.len,
        })
        .collect();
    if ios.is_empty() {
        return Err(ArrayError::BadSpec(format!(
            "{}: no reads or writes to replay{}",
            path.display(),
            args.trace_disk
                .map(|d| format!(" on disk {d}"))
                .unwrap_or_default()
        ))
        .into());
    }
    Ok(Workload::Replay(Arc::new(ios)))
}

/// Fault injection flags, shared by `bench`/`record` and `serve`.
#[derive(Args, Clone, Default)]
struct FaultArgs {
    /// Inject a failure into this replica (index from 0).
    #[arg(long)]
    fail_replica: Option<usize>,
    /// ...after this many of its I/Os.
    #[arg(long, requires = "fail_replica")]
    fail_after: Option<u64>,
    /// ...or from this time on (e.g. 2s).
    #[arg(long, requires = "fail_replica", value_parser = humantime::parse_duration)]
    fail_at: Option<Duration>,
}

/// The fault injection of `--fail-replica N (--fail-after IOS | --fail-at TIME)`.
fn fault_plan(f: &FaultArgs) -> Result<Vec<(usize, FaultPlan)>, ArrayError> {
    let (after, at) = (f.fail_after, f.fail_at);
    let Some(r) = f.fail_replica else {
        return Ok(Vec::new());
    };
    if after.is_none() && at.is_none() {
        return Err(ArrayError::BadSpec(
            "--fail-replica needs --fail-after N or --fail-at TIME".into(),
        ));
    }
    Ok(vec![(
        r,
        FaultPlan {
            after_ios: after,
            at_ns: at.map(|d| d.as_nanos() as u64),
        },
    )])
}

fn bench_setup(args: &LoadArgs) -> anyhow::Result<BenchSetup> {
    let workload = match &args.trace {
        Some(path) => trace_workload(args, path)?,
        None => Workload::parse(&args.workload, args.read_pct).map_err(ArrayError::BadSpec)?,
    };
    if !(0.0..=100.0).contains(&args.read_pct) {
        return Err(
            ArrayError::BadSpec(format!("--read-pct {} is not in 0..100", args.read_pct)).into(),
        );
    }
    if args.block_size == 0 || !args.block_size.is_multiple_of(512) || args.block_size > 1 << 20 {
        return Err(ArrayError::BadSpec(format!(
            "--bs {} must be a multiple of 512 up to 1M",
            args.block_size
        ))
        .into());
    }
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(ArrayError::BadSpec("--rate must be positive".into()).into());
    }
    let replicas = if args.replica.is_empty() {
        if !(2..=8).contains(&args.replicas) {
            return Err(ArrayError::BadSpec(format!(
                "--replicas {} must be between 2 and 8",
                args.replicas
            ))
            .into());
        }
        ReplicaSource::Fresh {
            count: args.replicas,
            profile: Box::new(load_profile(args)?),
            dir: args.dir.clone(),
            size: args.size.unwrap_or(1 << 30),
        }
    } else {
        let specs = args
            .replica
            .iter()
            .map(|s| ReplicaSpec::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        ReplicaSource::Given(specs, args.size)
    };
    let faults = fault_plan(&args.fault)?;
    Ok(BenchSetup {
        replicas,
        load: LoadSpec {
            workload,
            block_size: args.block_size as u32,
            depth: args.depth,
            rate: args.rate,
            duration: args.duration,
            seed: args.seed,
        },
        replica_depth: args.replica_depth,
        hedge_percentile: args.hedge_pct,
        faults,
    })
}

/// A progress line on stderr (only when stderr is a terminal).
struct ProgressLine {
    bar: indicatif::ProgressBar,
    total_s: f64,
}

impl ProgressLine {
    fn new(total: Duration) -> Self {
        let bar = indicatif::ProgressBar::new(1000);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>13} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        ProgressLine {
            bar,
            total_s: total.as_secs_f64().max(1e-9),
        }
    }
    fn update(&self, policy: &str, p: Progress) {
        self.bar.set_prefix(policy.to_string());
        self.bar
            .set_position(((p.elapsed_s / self.total_s) * 1000.0).min(1000.0) as u64);
        self.bar.set_message(format!(
            "{:.1}s  {:.0} IOPS  read p99 {} us",
            p.elapsed_s,
            p.completed as f64 / p.elapsed_s.max(1e-9),
            p.read_p99_us
        ));
    }
}

fn print_reports(reports: &[PolicyReport], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(reports)?);
    } else {
        print!("{}", render_table(reports));
    }
    Ok(())
}

fn policies(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The model-backed predictor, loaded only when a policy needs one.
fn predictor_for(
    pols: &[String],
    model: &str,
) -> anyhow::Result<Option<Arc<dyn augur::SlowPredictor>>> {
    if !pols.iter().any(|p| p.starts_with("linnos")) {
        return Ok(None);
    }
    let m = model::load_model(model)?;
    Ok(Some(ModelPredictor::new(m, model).into_dyn()))
}

fn cmd_bench(args: BenchArgs) -> anyhow::Result<()> {
    let setup = bench_setup(&args.load)?;
    let pols = policies(&args.policy);
    if pols.is_empty() {
        return Err(ArrayError::BadSpec("--policy is empty".into()).into());
    }
    let predictor = predictor_for(&pols, &args.model)?;
    let line = ProgressLine::new(setup.load.duration);
    let reports = run_bench(&setup, &pols, predictor, &mut |p, pr| line.update(p, pr))?;
    line.bar.finish_and_clear();
    print_reports(&reports, args.json)
}

fn cmd_record(args: RecordArgs) -> anyhow::Result<()> {
    let setup = bench_setup(&args.load)?;
    let predictor = predictor_for(std::slice::from_ref(&args.policy), &args.model)?;
    let policy = Policy::from_name(&args.policy, predictor)?;
    let line = ProgressLine::new(setup.load.duration);
    let (report, written, dropped) =
        run_record(&setup, policy, &args.out, &mut |p, pr| line.update(p, pr))?;
    line.bar.finish_and_clear();
    print!("{}", render_table(std::slice::from_ref(&report)));
    println!(
        "wrote {written} training records to {} ({dropped} dropped because the writer fell behind)",
        args.out.display()
    );
    Ok(())
}

fn cmd_demo(args: DemoArgs) -> anyhow::Result<()> {
    let load = LoadArgs {
        replicas: 3,
        profile: "gc-heavy".into(),
        profile_file: None,
        replica: Vec::new(),
        size: Some(1 << 30),
        dir: None,
        workload: "mixed".into(),
        read_pct: 70.0,
        block_size: 4096,
        depth: 32,
        rate: None,
        duration: args.duration,
        seed: 1,
        replica_depth: 64,
        hedge_pct: 95.0,
        fault: FaultArgs::default(),
        trace: None,
        trace_format: None,
        trace_disk: None,
        skip_bad: false,
    };
    let setup = bench_setup(&load)?;
    // The learned policies join when this build ships a model.
    let model = augur_predictor::Model::default_model().ok();
    let pols = policies(if model.is_some() {
        "baseline,random,hedge,linnos,linnos+hedge,oracle"
    } else {
        "baseline,random,hedge,oracle"
    });
    let predictor = model.map(|m| ModelPredictor::new(m, "default").into_dyn());
    if !args.json {
        println!(
            "Augur demo: 3 emulated gc-heavy replicas (1 GiB each, tmpfs), 70/30 random 4 KiB read/write,\n\
             depth 32, {} per policy, seed 1. Read latency in microseconds.\n",
            humantime::format_duration(args.duration)
        );
    }
    let line = ProgressLine::new(setup.load.duration);
    let reports = run_bench(&setup, &pols, predictor, &mut |p, pr| line.update(p, pr))?;
    line.bar.finish_and_clear();
    print_reports(&reports, args.json)?;
    if !args.json {
        println!(
            "\nbaseline reads the primary replica even while it garbage-collects; hedge sends a\n\
             second copy after p95; linnos asks the shipped model whether the replica is about\n\
             to be slow and, if so, reads elsewhere; oracle knows the emulator's stalls (the\n\
             best any predictor can do). Tails move with CPU noise: compare rows of one run."
        );
    }
    Ok(())
}

fn cmd_fuse(args: FuseArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.cleanup {
        let r = augur::frontend::fuse::cleanup(dir)?;
        for dev in &r.loops {
            println!("detached {dev}");
        }
        if r.unmounted {
            println!("unmounted {}", dir.display());
        }
        if r.loops.is_empty() && !r.unmounted {
            println!("nothing to clean up at {}", dir.display());
        }
        return Ok(());
    }
    let Some(mount) = args.mount else {
        return Err(ArrayError::BadSpec("--mount DIR is required".into()).into());
    };
    let replicas = args
        .replica
        .iter()
        .map(|s| ReplicaSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = augur::ArrayConfig::new(replicas);
    cfg.create_size = args.size;
    cfg.replica_depth = args.replica_depth;
    cfg.seed = args.seed;
    cfg.hedge_percentile = args.hedge_pct;
    let predictor = predictor_for(std::slice::from_ref(&args.policy), &args.model)?;
    let policy = Policy::from_name(&args.policy, predictor)?;
    let opts = augur::frontend::fuse::FuseOptions {
        mount,
        threads: args.threads,
        attach_loop: args.attach_loop,
    };
    augur::frontend::fuse::serve(cfg, policy, &opts)
}

fn cmd_serve(a: ServeArgs) -> anyhow::Result<()> {
    // With --recover, what is left out comes from the device's record.
    let stored = match (a.recover, a.id) {
        (true, Some(id)) => Some(augur::frontend::ublk::recorded(id)?),
        _ => None,
    };
    let replica_texts = match (&stored, a.replica.is_empty()) {
        (Some(rec), true) => rec.replicas.clone(),
        _ => a.replica,
    };
    let policy_name = a
        .policy
        .or_else(|| stored.as_ref().map(|r| r.policy.clone()))
        .unwrap_or_else(|| "baseline".into());
    let model = a
        .model
        .or_else(|| stored.as_ref().map(|r| r.model.clone()))
        .unwrap_or_else(|| "default".into());
    let replicas = replica_texts
        .iter()
        .map(|s| ReplicaSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = augur::ArrayConfig::new(replicas);
    cfg.create_size = a.size;
    cfg.replica_depth = a.replica_depth;
    cfg.seed = a.seed;
    cfg.hedge_percentile = a.hedge_pct;
    cfg.faults = fault_plan(&a.fault)?;
    let predictor = predictor_for(std::slice::from_ref(&policy_name), &model)?;
    let policy = Policy::from_name(&policy_name, predictor)?;
    let opts = augur::frontend::ublk::ServeOptions {
        queues: a.queues,
        depth: a.depth,
        block_size: a.block_size,
        id: a.id,
        recover: a.recover,
        model,
    };
    let summary = augur::frontend::ublk::serve(cfg, policy, &opts)?;
    eprintln!("{}", summary.line());
    Ok(())
}

fn cmd_list(a: ListArgs) -> anyhow::Result<()> {
    let devs = augur::frontend::ublk::list()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&devs)?);
    } else if devs.is_empty() {
        println!("no Augur ublk devices");
    } else {
        print!("{}", augur::frontend::ublk::render_list(&devs));
    }
    Ok(())
}

fn cmd_stop(a: StopArgs) -> anyhow::Result<()> {
    match augur::frontend::ublk::stop(a.id, a.timeout)? {
        augur::frontend::ublk::StopOutcome::Stopped { path, pid } => {
            println!("stopped {path} (daemon {pid} removed it)")
        }
        augur::frontend::ublk::StopOutcome::Deleted { path } => {
            println!("deleted {path} (its daemon was gone)")
        }
    }
    Ok(())
}

fn cmd_profile(args: ProfileArgs) -> anyhow::Result<()> {
    match args.name {
        None => {
            for n in Profile::builtin_names() {
                println!("{n}");
            }
        }
        Some(n) => {
            let p = if n.ends_with(".toml") {
                Profile::from_file(std::path::Path::new(&n))?
            } else {
                Profile::builtin(&n)?
            };
            println!(
                "{}",
                toml::to_string_pretty(&p).context("rendering profile")?
            );
            let s = augur::emu::simulate_closed_loop(&p, 1, 16, 100_000, 0.7, 4096);
            println!("# simulated, one replica, depth 16, 70/30 random 4 KiB: {s:?}");
        }
    }
    Ok(())
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Demo(a) => cmd_demo(a),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::Record(a) => cmd_record(a),
        Cmd::Profile(a) => cmd_profile(a),
        Cmd::Serve(a) => cmd_serve(a),
        Cmd::List(a) => cmd_list(a),
        Cmd::Stop(a) => cmd_stop(a),
        Cmd::Fuse(a) => cmd_fuse(a),
        Cmd::Train(a) => model::cmd_train(a),
        Cmd::Eval(a) => model::cmd_eval(a),
        Cmd::Model(c) => model::cmd_model(c),
        Cmd::Trace(c) => model::cmd_trace(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("augur: {e:#}");
            // Bad input (the user's to fix) exits 2; anything else 1.
            let user_error = e.downcast_ref::<ArrayError>().is_some()
                || e.downcast_ref::<augur::frontend::ublk::ServeError>()
                    .is_some_and(|s| s.is_user_error());
            if user_error {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

//! `augur demo`, `bench`, `record` and `profile`: the in-process runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use augur::emu::Profile;
use augur::load::{
    BenchSetup, ClockChoice, LoadProgress, LoadSpec, PolicyReport, ReplicaSource, Workload,
    render_table, run_bench, run_record,
};
use augur::route::Policy;
use augur::route::PredictCost;
use augur_predictor::ModelPredictor;
use clap::Args;

use super::args::{FaultArgs, LoadArgs, PredictOnArgs, bench_setup, clock_choice};
use super::error::CliError;
use augur_gpu_batcher::{Offload, PredictOn};

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Simulated time each policy runs in the first table.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Wall time each policy runs on the real data path.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) real_duration: Duration,
    /// Print JSON ({"sim": [...], "real": [...]}) instead of the tables.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also write the run's report to DIR: demo.json, report.md and the plots (as augur report does).
    #[arg(long)]
    pub(crate) report: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) load: LoadArgs,
    /// Policies to compare, comma-separated.
    #[arg(
        long,
        default_value = "primary,round-robin,least-pending,service-time,hedge,augur,greedy-oracle"
    )]
    pub(crate) policy: String,
    /// Print one JSON array (an object per policy) instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Model for the learned policies (augur, linnos): a file, or `default` for the shipped one.
    #[arg(long, default_value = "default")]
    pub(crate) model: String,
    #[command(flatten)]
    pub(crate) predict: PredictOnArgs,
}

#[derive(Args)]
pub(crate) struct RecordArgs {
    #[command(flatten)]
    pub(crate) load: LoadArgs,
    /// Policy to run.
    #[arg(long, default_value = "primary")]
    pub(crate) policy: String,
    /// Training-log file to write.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Model for the learned policies (augur, linnos): a file, or `default` for the shipped one.
    #[arg(long, default_value = "default")]
    pub(crate) model: String,
}

#[derive(Args)]
pub(crate) struct ProfileArgs {
    /// A shipped profile name or a TOML file; none lists the shipped ones.
    pub(crate) name: Option<String>,
}

/// A progress line on stderr (only when stderr is a terminal).
pub(crate) struct ProgressLine {
    pub(crate) bar: indicatif::ProgressBar,
    pub(crate) total_s: f64,
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
    fn update(&self, policy: &str, p: LoadProgress) {
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

pub(crate) fn print_reports(reports: &[PolicyReport], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(reports)?);
    } else {
        print!("{}", render_table(reports));
    }
    Ok(())
}

pub(crate) fn policies(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The model-backed predictor, loaded only when a policy needs one.
pub(crate) fn predictor_for(
    pols: &[String],
    model: &str,
) -> anyhow::Result<Option<Arc<dyn augur::SlowPredictor>>> {
    Ok(model_for(pols, model)?.map(|p| p as Arc<dyn augur::SlowPredictor>))
}

/// The model, loaded only when a policy needs one.
fn model_for(pols: &[String], model: &str) -> anyhow::Result<Option<Arc<ModelPredictor>>> {
    if !pols.iter().any(|p| augur::route::needs_model(p)) {
        return Ok(None);
    }
    let m = super::model::load_model(model)?;
    Ok(Some(Arc::new(ModelPredictor::new(m, model))))
}

/// The placement of a bench's predictor batches: on the simulated clock
/// from `--gpu-curve` (none: every batch is a CPU batch), on the real clock
/// from the GPU calibrated now. `cmd_bench` has already refused the flag
/// combinations that make no sense (`gpu` on the simulated clock without a
/// curve, a curve on the real clock).
fn bench_offload(
    load: &LoadArgs,
    predict: &PredictOnArgs,
    clock: ClockChoice,
    model: &augur_predictor::Model,
) -> anyhow::Result<Arc<Offload>> {
    let opts = predict.options()?;
    match clock {
        ClockChoice::Sim(cost) => {
            let Some(file) = &load.gpu_curve else {
                return Ok(Offload::cpu());
            };
            let text = std::fs::read_to_string(file)
                .map_err(|e| CliError::BadFlag(format!("--gpu-curve {}: {e}", file.display())))?;
            let cal: augur_gpu_batcher::Calibration = serde_json::from_str(&text).map_err(|e| {
                CliError::BadFlag(format!(
                    "--gpu-curve {}: not the JSON of augur gpu calibrate --json: {e}",
                    file.display()
                ))
            })?;
            let curve = cal.curve();
            curve
                .validate()
                .map_err(|e| CliError::BadFlag(format!("--gpu-curve {}: {e}", file.display())))?;
            if curve.shape != model.shape_string() {
                eprintln!(
                    "warning: --gpu-curve {} was measured for a {} model; the model is {}",
                    file.display(),
                    curve.shape,
                    model.shape_string()
                );
            }
            let off = Offload::simulated(
                opts.mode,
                curve.with_linear_cpu(cost.per_batch_ns, cost.per_item_ns),
            );
            eprintln!("{}", off.note());
            Ok(off)
        }
        ClockChoice::Real => Ok(predict.start(model)?),
    }
}

pub(crate) fn cmd_bench(args: BenchArgs) -> anyhow::Result<()> {
    let mut setup = bench_setup(&args.load)?;
    let pols = policies(&args.policy);
    if pols.is_empty() {
        return Err(CliError::BadFlag("--policy is empty".into()).into());
    }
    // Flag mistakes first, before anything is measured.
    let mode = args.predict.options()?.mode;
    if args.load.clock == "sim" && mode == PredictOn::Gpu && args.load.gpu_curve.is_none() {
        return Err(CliError::BadFlag(
            "--predict-on gpu with --clock sim needs --gpu-curve FILE (the JSON of augur gpu calibrate --json)".into(),
        )
        .into());
    }
    if args.load.clock != "sim" && args.load.gpu_curve.is_some() {
        return Err(CliError::BadFlag("--gpu-curve applies to --clock sim only".into()).into());
    }
    // Bad replicas next, before a model is loaded and a GPU calibrated.
    if let augur::load::ReplicaSource::Given(specs, size) = &setup.replicas {
        let mut cfg = augur::ArrayConfig::new(specs.clone());
        cfg.create_size = *size;
        augur::array::check_replicas(&cfg, args.load.clock == "sim")?;
    }
    let cpu = model_for(&pols, &args.model)?;
    let cpu_dyn = cpu.clone().map(|p| p as Arc<dyn augur::SlowPredictor>);
    setup.clock = clock_choice(&args.load, cpu_dyn.as_ref())?;
    if cpu.is_none() && args.load.gpu_curve.is_some() {
        return Err(CliError::BadFlag(
            "--gpu-curve needs a policy that asks a model (augur, linnos)".into(),
        )
        .into());
    }
    let predictor = match cpu {
        Some(m) => {
            let off = bench_offload(&args.load, &args.predict, setup.clock, m.model())?;
            Some(off.predictor(m))
        }
        None => None,
    };
    let line = ProgressLine::new(setup.load.duration);
    let reports = run_bench(&setup, &pols, predictor, &mut |p, pr| line.update(p, pr))?;
    line.bar.finish_and_clear();
    print_reports(&reports, args.json)
}

/// `--gpu-curve` is `augur bench`'s; elsewhere it would be ignored.
fn refuse_gpu_curve(load: &LoadArgs, cmd: &str) -> Result<(), CliError> {
    match &load.gpu_curve {
        Some(_) => Err(CliError::BadFlag(format!(
            "--gpu-curve applies to augur bench, not augur {cmd}"
        ))),
        None => Ok(()),
    }
}

pub(crate) fn cmd_record(args: RecordArgs) -> anyhow::Result<()> {
    refuse_gpu_curve(&args.load, "record")?;
    let mut setup = bench_setup(&args.load)?;
    let predictor = predictor_for(std::slice::from_ref(&args.policy), &args.model)?;
    setup.clock = clock_choice(&args.load, predictor.as_ref())?;
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

/// The demo's prediction cost on the simulated clock, fixed so that its
/// table is the same on every machine: the shipped model's integer path
/// measured with `PredictCost::measure` on the project's 2-core machine
/// (`augur bench --clock sim` without `--predict-cost-ns` measures yours).
const DEMO_PREDICT_COST: PredictCost = PredictCost {
    per_batch_ns: DEMO_COST_PER_CALL_NS,
    per_item_ns: DEMO_COST_PER_READ_NS,
};
const DEMO_COST_PER_CALL_NS: u64 = 5;
const DEMO_COST_PER_READ_NS: u64 = 150;

/// The demo's setup: three emulated gc-heavy replicas, 70/30 random 4 KiB,
/// depth 32, seed 1.
fn demo_load(duration: Duration) -> LoadArgs {
    LoadArgs {
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
        duration,
        seed: 1,
        replica_depth: 64,
        hedge_pct: 95.0,
        fault: FaultArgs::default(),
        trace: None,
        trace_format: None,
        trace_disk: None,
        skip_bad: false,
        clock: "sim".into(),
        predict_cost_ns: None,
        gpu_curve: None,
    }
}

pub(crate) fn cmd_demo(args: DemoArgs) -> anyhow::Result<()> {
    let mut sim = bench_setup(&demo_load(args.duration))?;
    sim.clock = ClockChoice::Sim(DEMO_PREDICT_COST);
    let mut real = bench_setup(&demo_load(args.real_duration))?;
    real.clock = ClockChoice::Real;
    // The learned policies join when this build ships a model.
    let model = augur_predictor::Model::default_model().ok();
    let all = if model.is_some() {
        "primary,round-robin,least-pending,service-time,hedge,linnos,augur,greedy-oracle"
    } else {
        "primary,round-robin,least-pending,service-time,hedge,greedy-oracle"
    };
    let real_pols = policies(if model.is_some() {
        "least-pending,augur"
    } else {
        "least-pending"
    });
    let pols = policies(all);
    let predictor = model.map(|m| ModelPredictor::new(m, "default").into_dyn());
    if !args.json {
        println!(
            "Augur demo: Augur against what md RAID1 would do with the same three replicas\n\
             (3 emulated gc-heavy replicas, 70/30 random 4 KiB read/write, depth 32, seed 1).\n\
             Read latency in microseconds.\n\n\
             1. Routing quality, on the simulated clock: the product's own array, router, feature\n\
             store, model and emulator in simulated time, {} per policy. No host noise: the same\n\
             table on any machine.\n",
            humantime::format_duration(args.duration)
        );
    }
    let line = ProgressLine::new(sim.load.duration);
    let sim_reports = run_bench(&sim, &pols, predictor.clone(), &mut |p, pr| {
        line.update(p, pr)
    })?;
    line.bar.finish_and_clear();
    if !args.json {
        print!("{}", render_table(&sim_reports));
        println!(
            "\nleast-pending is md RAID1's read balancing on SSDs (the member with the fewest I/Os\n\
             in flight; DRBD and SPDK raid1 do the same); round-robin is Mayastor's and Longhorn's;\n\
             service-time is dm-multipath's historical-service-time; primary reads the stripe's\n\
             primary replica even while it garbage-collects; hedge sends a second copy after p95;\n\
             linnos asks the shipped model whether the replica is about to be slow and, if so,\n\
             reads elsewhere; augur, Augur's default, takes md's rule with a replica the model\n\
             calls about to be slow counted 3 I/Os busier, and hedges a read that still goes to one\n\
             early (at p90, to the least busy other replica, at most 3 copies per 100 reads);\n\
             greedy-oracle sends each read where the emulator forecasts it finishes first (a\n\
             reference no real system has).\n\n\
             2. The real data path: the same array on replica files in {} through io_uring,\n\
             {} per policy.\n",
            augur::load::default_replica_dir().display(),
            humantime::format_duration(args.real_duration)
        );
    }
    let line = ProgressLine::new(real.load.duration);
    let real_reports = run_bench(&real, &real_pols, predictor, &mut |p, pr| {
        line.update(p, pr)
    })?;
    line.bar.finish_and_clear();
    if let Some(dir) = &args.report {
        let out = serde_json::json!({ "sim": sim_reports, "real": real_reports });
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("demo.json");
        std::fs::write(&json, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("writing {}", json.display()))?;
        let input = augur::report::load_inputs(&[json])?;
        let w = augur::report::write_report(&input, dir)?;
        eprintln!(
            "augur demo: report in {} ({} and {} images)",
            dir.display(),
            w.markdown.display(),
            w.images.len()
        );
    }
    if args.json {
        let out = serde_json::json!({ "sim": sim_reports, "real": real_reports });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for r in &real_reports {
        println!(
            "{:<13} {:>9.0} IOPS  ({} reads, {} writes, {} errors)",
            r.policy, r.iops, r.reads, r.writes, r.errors
        );
    }
    println!(
        "\nReal-clock tails depend on this host (other processes preempt the one I/O thread); judge\n\
         policies on the simulated clock and overhead on the real one (augur bench --clock real)."
    );
    Ok(())
}

/// One replica of `profile` on the simulated clock: depth 16, 70/30 random
/// 4 KiB, 2 simulated seconds.
fn simulate_one(profile: &Profile) -> anyhow::Result<PolicyReport> {
    let setup = BenchSetup {
        replicas: ReplicaSource::Fresh {
            count: 1,
            profile: Box::new(profile.clone()),
            dir: None,
            size: 1 << 30,
        },
        load: LoadSpec {
            workload: Workload::Mixed { read_pct: 70.0 },
            block_size: 4096,
            depth: 16,
            rate: None,
            duration: Duration::from_secs(2),
            seed: 1,
        },
        replica_depth: 64,
        hedge_percentile: 95.0,
        faults: Vec::new(),
        clock: ClockChoice::Sim(PredictCost::default()),
    };
    let mut r = run_bench(&setup, &["primary".to_string()], None, &mut |_, _| {})?;
    r.pop()
        .ok_or_else(|| anyhow::anyhow!("the simulation produced no report"))
}

pub(crate) fn cmd_profile(args: ProfileArgs) -> anyhow::Result<()> {
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
            let r = simulate_one(&p)?;
            let l = &r.read_lat_us;
            println!(
                "# simulated clock, one replica, depth 16, 70/30 random 4 KiB, 2 s: read p50 {} us, p99 {} us, p99.9 {} us, max {} us; {:.0} IOPS",
                l.p50, l.p99, l.p999, l.max, r.iops
            );
        }
    }
    Ok(())
}

#[derive(Args)]
pub(crate) struct AdaptArgs {
    #[command(flatten)]
    pub(crate) load: LoadArgs,
    /// The profile the replicas become at --switch-at (a shipped name or a TOML file).
    #[arg(long, default_value = "gc-heavy")]
    pub(crate) to: String,
    /// When they change, in device time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) switch_at: std::time::Duration,
    /// Run online adaptation (without it: the model stays as it was).
    #[arg(long)]
    pub(crate) adapt: bool,
    /// Device time between two adaptation rounds.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) every: std::time::Duration,
    /// Device time per timeline row.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) row: std::time::Duration,
    /// Reads a round needs to have come in since the last one.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) min_new: usize,
    /// Device time of each profile's reference recording (on the run's
    /// clock), which the accuracy columns judge the active model on (0s: none).
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    pub(crate) reference: std::time::Duration,
    /// Newest reads a round trains and judges on.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) window: usize,
    /// Least share of recent reads on which a candidate must decide differently (LiteFlow's fidelity gate).
    #[arg(long, default_value_t = 0.02)]
    pub(crate) min_differ: f64,
    /// Policy to run (a linnos one: the model is what adapts).
    #[arg(long, default_value = "linnos")]
    pub(crate) policy: String,
    /// The model it starts with: a file, or `default` for the shipped one.
    #[arg(long, default_value = "default")]
    pub(crate) model: String,
    /// Print JSON instead of the tables.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn cmd_adapt(args: AdaptArgs) -> anyhow::Result<()> {
    refuse_gpu_curve(&args.load, "adapt")?;
    if !augur::route::needs_model(&args.policy) {
        return Err(CliError::BadFlag(format!(
            "--policy {}: adaptation changes the model, so it needs a policy that asks one (augur, linnos)",
            args.policy
        ))
        .into());
    }
    if !(0.0..=1.0).contains(&args.min_differ) {
        return Err(CliError::BadFlag("--min-differ is a share, 0 to 1".into()).into());
    }
    let mut setup = bench_setup(&args.load)?;
    let model = super::model::load_model(&args.model)?;
    let predictor = ModelPredictor::new(model.clone(), &args.model).into_dyn();
    setup.clock = clock_choice(&args.load, Some(&predictor))?;
    let to = if args.to.ends_with(".toml") || args.to.contains('/') {
        Profile::from_file(std::path::Path::new(&args.to))?
    } else {
        Profile::builtin(&args.to)?
    };
    let opts = augur::load::AdaptRunOptions {
        policy: args.policy.clone(),
        switch_at_s: args.switch_at.as_secs_f64(),
        to,
        adapt: args.adapt,
        config: augur::adapt::AdaptConfig {
            window: args.window,
            min_new: args.min_new,
            min_differ: args.min_differ,
            ..augur::adapt::AdaptConfig::default()
        },
        every_s: args.every.as_secs_f64(),
        row_s: args.row.as_secs_f64().max(0.02),
        reference_s: args.reference.as_secs_f64(),
    };
    let line = ProgressLine::new(setup.load.duration);
    let run = augur::load::run_adapt(&setup, model, &opts, &mut |p| line.update(&args.policy, p))?;
    line.bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        println!(
            "clock: {}; replicas switch to {} at {} s; adaptation {}",
            run.clock,
            opts.to.name,
            opts.switch_at_s,
            if opts.adapt { "on" } else { "off" }
        );
        print!("{}", augur::load::render_adapt(&run));
    }
    Ok(())
}

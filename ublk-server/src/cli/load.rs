//! `augur demo`, `bench`, `record` and `profile`: the in-process runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use augur::emu::Profile;
use augur::load::{PolicyReport, Progress, render_table, run_bench, run_record};
use augur::route::Policy;
use augur_predictor::ModelPredictor;
use clap::Args;

use super::args::{FaultArgs, LoadArgs, bench_setup};
use super::error::CliError;

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// How long each policy runs.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) load: LoadArgs,
    /// Policies to compare, comma-separated.
    #[arg(long, default_value = "baseline,random,hedge,oracle")]
    pub(crate) policy: String,
    /// Print one JSON array (an object per policy) instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Model for the linnos policies: a file, or `default` for the shipped one.
    #[arg(long, default_value = "default")]
    pub(crate) model: String,
}

#[derive(Args)]
pub(crate) struct RecordArgs {
    #[command(flatten)]
    pub(crate) load: LoadArgs,
    /// Policy to run.
    #[arg(long, default_value = "baseline")]
    pub(crate) policy: String,
    /// Training-log file to write.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Model for the linnos policies: a file, or `default` for the shipped one.
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
    if !pols.iter().any(|p| p.starts_with("linnos")) {
        return Ok(None);
    }
    let m = super::model::load_model(model)?;
    Ok(Some(ModelPredictor::new(m, model).into_dyn()))
}

pub(crate) fn cmd_bench(args: BenchArgs) -> anyhow::Result<()> {
    let setup = bench_setup(&args.load)?;
    let pols = policies(&args.policy);
    if pols.is_empty() {
        return Err(CliError::BadFlag("--policy is empty".into()).into());
    }
    let predictor = predictor_for(&pols, &args.model)?;
    let line = ProgressLine::new(setup.load.duration);
    let reports = run_bench(&setup, &pols, predictor, &mut |p, pr| line.update(p, pr))?;
    line.bar.finish_and_clear();
    print_reports(&reports, args.json)
}

pub(crate) fn cmd_record(args: RecordArgs) -> anyhow::Result<()> {
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

pub(crate) fn cmd_demo(args: DemoArgs) -> anyhow::Result<()> {
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
            let s = augur::emu::simulate_closed_loop(&p, 1, 16, 100_000, 0.7, 4096);
            println!("# simulated, one replica, depth 16, 70/30 random 4 KiB: {s:?}");
        }
    }
    Ok(())
}

//! The `augur` command line: one room per group of subcommands.
//!
//! | file | subcommands |
//! |---|---|
//! | `load.rs` | `demo`, `bench`, `record`, `adapt`, `profile` |
//! | `device.rs` | `serve`, `list`, `stop`, `fuse` |
//! | `ctl.rs` | `ctl`: a running daemon's control socket |
//! | `model.rs` | `train`, `eval`, `model`, `trace` |
//! | `gpu.rs` | `gpu calibrate`: the GPU path on this machine |
//! | `kmod.rs` | `kmod load`, `info`, `predict`: the kernel module |
//! | `stamp.rs` | `stamp write`, `check`: the crash-test tool |
//! | `fio.rs` | `fio run`: the fio job suite, once per policy |
//! | `report.rs` | `report`: Markdown and plots from bench and fio results |
//! | `args.rs` | the workload and fault flags they share |
//! | `error.rs` | [`CliError`]: a bad flag (exit status 2) |

use std::process::ExitCode;

use augur::array::ArrayError;
use clap::{Parser, Subcommand};

mod args;
mod ctl;
mod device;
mod error;
mod fio;
mod gpu;
mod kmod;
mod load;
mod model;
mod report;
mod stamp;

use error::CliError;

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
    Demo(load::DemoArgs),
    /// Drive the array in-process with a seeded workload and compare routing policies.
    Bench(load::BenchArgs),
    /// Run a workload with one policy and write every completed read's training record.
    Record(load::RecordArgs),
    /// One policy while the device changes under it (emulated replicas switch profile), with or without online adaptation: a timeline.
    Adapt(load::AdaptArgs),
    /// Emulator profiles: list the shipped ones, or show one's parameters and latency.
    Profile(load::ProfileArgs),
    /// Serve the array as a ublk block device, /dev/ublkbN, in the foreground (Linux 6.0+ with ublk_drv).
    Serve(device::ServeArgs),
    /// List Augur's ublk devices (id, device, daemon, state, geometry, policy, model, replicas) and FUSE daemons.
    List(device::ListArgs),
    /// Stop an Augur ublk device (SIGTERM to its daemon; a device whose daemon died is deleted).
    Stop(device::StopArgs),
    /// Serve the array as one file, disk.img, in a FUSE mount (a block device where ublk is missing).
    Fuse(device::FuseArgs),
    /// Ask a running daemon (serve or fuse) over its control socket: status, stats, live model and policy swap, recording.
    Ctl(ctl::CtlArgs),
    /// Train a model from training logs (burn, CPU).
    Train(model::TrainArgs),
    /// Accuracy, false-submit/revoke rates, ROC AUC of a model on logs, f32 and integer paths.
    Eval(model::EvalArgs),
    /// Inspect model files.
    #[command(subcommand)]
    Model(model::ModelCmd),
    /// I/O traces (MSR-Cambridge CSV, blkparse text, FlashNet replay output): import them as training logs, or convert them to fio iologs.
    #[command(subcommand)]
    Trace(model::TraceCmd),
    /// The GPU path (burn's wgpu backend): calibrate it against the CPU on this machine.
    #[command(subcommand)]
    Gpu(gpu::GpuCmd),
    /// The kernel module (kmod/): load a model into it, show it, self-test it.
    #[command(subcommand)]
    Kmod(kmod::KmodCmd),
    /// Crash tests: stamp random blocks and log what was acknowledged; check them after a restart.
    #[command(subcommand)]
    Stamp(stamp::StampCmd),
    /// fio: run the job suite of bench/fio/ against a device or file, once per policy.
    #[command(subcommand)]
    Fio(fio::FioCmd),
    /// A Markdown summary and plots (SVG, PNG) from augur bench --json files and augur fio run directories.
    Report(report::ReportArgs),
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
    if let Cmd::Ctl(a) = cli.cmd {
        return ctl::cmd_ctl(a);
    }
    let result = match cli.cmd {
        Cmd::Ctl(_) => unreachable!("answered above"),
        Cmd::Demo(a) => load::cmd_demo(a),
        Cmd::Bench(a) => load::cmd_bench(a),
        Cmd::Record(a) => load::cmd_record(a),
        Cmd::Adapt(a) => load::cmd_adapt(a),
        Cmd::Profile(a) => load::cmd_profile(a),
        Cmd::Serve(a) => device::cmd_serve(a),
        Cmd::List(a) => device::cmd_list(a),
        Cmd::Stop(a) => device::cmd_stop(a),
        Cmd::Fuse(a) => device::cmd_fuse(a),
        Cmd::Train(a) => model::cmd_train(a),
        Cmd::Eval(a) => model::cmd_eval(a),
        Cmd::Model(c) => model::cmd_model(c),
        Cmd::Trace(c) => model::cmd_trace(c),
        Cmd::Gpu(c) => gpu::cmd_gpu(c),
        Cmd::Kmod(c) => kmod::cmd_kmod(c),
        Cmd::Stamp(c) => stamp::cmd_stamp(c),
        Cmd::Fio(c) => fio::cmd_fio(c),
        Cmd::Report(a) => report::cmd_report(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("augur: {e:#}");
            // Bad input (the user's to fix) exits 2; anything else 1.
            let user_error = e.downcast_ref::<CliError>().is_some()
                || e.downcast_ref::<ArrayError>().is_some()
                || e.downcast_ref::<augur::frontend::fuse::FuseError>()
                    .is_some_and(|f| f.is_user_error())
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

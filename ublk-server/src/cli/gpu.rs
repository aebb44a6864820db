//! `augur gpu`: the GPU path (burn's wgpu backend) on this machine.

use std::time::Duration;

use augur_gpu_batcher::{CalibrateOptions, Gpu, GpuKernel, calibrate};
use augur_predictor::Model;
use augur_predictor::train::Arch;
use clap::{Args, Subcommand};

use super::error::CliError;

#[derive(Subcommand)]
pub(crate) enum GpuCmd {
    /// Per batch bucket, the CPU integer path's cost against the GPU round
    /// trip (hot and after an idle gap), and the crossover they give.
    Calibrate(CalibrateArgs),
}

#[derive(Args)]
pub(crate) struct CalibrateArgs {
    /// The model to measure: a file, or `default` for the shipped one.
    #[arg(long, default_value = "default", conflicts_with = "arch")]
    model: String,
    /// Measure a model of this shape instead (random weights: costs do not
    /// depend on them): base, deep1 (+1), deep2 (+2), heimdall.
    #[arg(long)]
    arch: Option<String>,
    /// Timed batches per bucket and device.
    #[arg(long, default_value_t = 200)]
    reps: usize,
    /// Timed batches per bucket after an idle gap.
    #[arg(long, default_value_t = 5)]
    idle_reps: usize,
    /// The idle gap before each of those.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    idle_gap: Duration,
    /// Largest bucket measured (a power of two up to 1024).
    #[arg(long, default_value_t = augur_gpu_batcher::MAX_BATCH)]
    max_batch: usize,
    /// The GPU kernel to time: fused (one cubecl kernel per batch) or ops
    /// (burn's matmul/add/ReLU chain); default: the one the daemon runs
    /// for each batch size.
    #[arg(long)]
    kernel: Option<String>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn cmd_gpu(c: GpuCmd) -> anyhow::Result<()> {
    match c {
        GpuCmd::Calibrate(a) => cmd_calibrate(a),
    }
}

fn cmd_calibrate(a: CalibrateArgs) -> anyhow::Result<()> {
    let model = match &a.arch {
        Some(name) => {
            let arch = Arch::parse(name).ok_or_else(|| {
                CliError::BadFlag(format!(
                    "--arch {name}: one of base, deep1 (+1), deep2 (+2), heimdall"
                ))
            })?;
            let w = arch.widths();
            Model::random(arch.feature_set(), &w[1..w.len() - 1], w[w.len() - 1], 1)?
        }
        None => super::model::load_model(&a.model)?,
    };
    if !(1..=augur_gpu_batcher::MAX_BATCH).contains(&a.max_batch) {
        return Err(CliError::BadFlag(format!(
            "--max-batch {}: 1 to {}",
            a.max_batch,
            augur_gpu_batcher::MAX_BATCH
        ))
        .into());
    }
    let kernel = match a.kernel.as_deref() {
        None => None,
        Some(k) => Some(
            GpuKernel::parse(k)
                .ok_or_else(|| CliError::BadFlag(format!("--kernel {k}: fused or ops")))?,
        ),
    };
    // No adapter is the user's machine, not a bug: one line, exit 2.
    let gpu = Gpu::open().map_err(|e| CliError::BadFlag(format!("{e}; nothing to calibrate")))?;
    let opts = CalibrateOptions {
        reps: a.reps.max(1),
        idle_reps: a.idle_reps.max(1),
        idle_gap: a.idle_gap,
        max_bucket: a.max_batch,
        kernel,
    };
    let c = calibrate(&gpu, &model, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", augur_gpu_batcher::calibrate::render(&c));
    }
    Ok(())
}

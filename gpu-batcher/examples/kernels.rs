//! The two GPU kernels side by side: per bucket, the round trip (upload,
//! dispatch, readback) of the fused cubecl kernel and of the chain of burn
//! ops, p50 and p99, for the base, +1 and +2 shapes.
//!
//! ```text
//! cargo run --release -p augur-gpu-batcher --example kernels [REPS] [MAX_MS_PER_CELL]
//! ```
//!
//! The two kernels alternate batch by batch, so that whatever else the
//! machine does lands on both. Each (bucket, kernel) cell takes `REPS`
//! batches (default 200), fewer where that would take over
//! `MAX_MS_PER_CELL` (default 3000; at least 20).

use std::time::{Duration, Instant};

use augur_gpu_batcher::{BUCKETS, Gpu, GpuKernel, GpuModel};
use augur_predictor::{FeatureSet, Model};

fn pct(ns: &mut [u64], q: f64) -> u64 {
    ns.sort_unstable();
    ns[((q * ns.len() as f64).ceil() as usize).clamp(1, ns.len()) - 1]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let reps: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let budget = Duration::from_millis(args.next().map(|a| a.parse()).transpose()?.unwrap_or(3000));
    let gpu = Gpu::open()?;
    let us = |ns: u64| format!("{:.1}", ns as f64 / 1000.0);
    for (name, hidden) in [
        ("base", &[256][..]),
        ("+1", &[256, 256][..]),
        ("+2", &[256, 256, 256][..]),
    ] {
        let m = Model::random(FeatureSet::LinnOs, hidden, 2, 1)?;
        let gm = GpuModel::upload(&gpu, &m);
        for k in GpuKernel::ALL {
            gm.warm_with(k)?;
        }
        println!(
            "{name} ({}): round trip per batch, microseconds (upload + dispatch + readback)",
            m.shape_string()
        );
        println!(
            "{:>6} {:>5} {:>10} {:>10} {:>10} {:>10} {:>8}",
            "batch", "reps", "fused p50", "fused p99", "ops p50", "ops p99", "faster"
        );
        for &b in &BUCKETS {
            let w = m.feature_set().n_inputs();
            let xs: Vec<f32> = (0..b * w).map(|k| (k * 7 % 10) as f32).collect();
            // One of each first, to size the cell.
            let t = Instant::now();
            for k in GpuKernel::ALL {
                gm.scores_with(k, &xs, b)?;
            }
            let pair = t.elapsed();
            let n = reps
                .min((budget.as_nanos() / pair.as_nanos().max(1)) as usize)
                .max(20);
            let mut fused = Vec::with_capacity(n);
            let mut ops = Vec::with_capacity(n);
            for i in 0..2 * n {
                // Alternate which goes first, too.
                let k = GpuKernel::ALL[i % 2];
                let t = Instant::now();
                std::hint::black_box(gm.scores_with(k, &xs, b)?);
                let ns = t.elapsed().as_nanos() as u64;
                match k {
                    GpuKernel::Fused => fused.push(ns),
                    GpuKernel::Ops => ops.push(ns),
                }
            }
            let (f50, f99) = (pct(&mut fused, 0.5), pct(&mut fused, 0.99));
            let (o50, o99) = (pct(&mut ops, 0.5), pct(&mut ops, 0.99));
            println!(
                "{:>6} {:>5} {:>10} {:>10} {:>10} {:>10} {:>8}",
                b,
                n,
                us(f50),
                us(f99),
                us(o50),
                us(o99),
                if f50 < o50 { "fused" } else { "ops" }
            );
        }
        println!();
    }
    Ok(())
}

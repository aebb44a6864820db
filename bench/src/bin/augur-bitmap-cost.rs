//! The write-intent bitmap's cost: random writes on plain-file replicas
//! through the array without metadata and with bitmaps of several region
//! sizes, in alternating rounds of one run; prints each run and the median
//! IOPS ratio of each region size against no bitmap.
//!
//! Each run starts from a clean bitmap (fresh sidecars), so the cost of
//! marking regions dirty as the load first reaches them is in it.
//! `cargo run --release -p augur-bench --bin augur-bitmap-cost -- --dir /var/tmp`

use std::path::PathBuf;
use std::time::Duration;

use augur::array::MetaOptions;
use augur::load::{LoadSpec, Workload, run_load};
use augur::{Array, ArrayConfig, Policy, ReplicaSpec};
use clap::Parser;

/// Random-write IOPS with and without the write-intent bitmap, side by side.
#[derive(Parser)]
struct Args {
    /// Directory for the replica files (default: the bench's replica directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Replicas.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Device size, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    depth: u32,
    /// Write size, bytes.
    #[arg(long, default_value_t = 4096)]
    bs: u32,
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rounds (each runs every configuration, in a rotated order).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Region sizes to compare against no bitmap (k/m suffixes).
    #[arg(long, value_delimiter = ',', default_value = "64k,1m,4m,64m")]
    regions: Vec<String>,
}

fn run(files: &[PathBuf], region: Option<u64>, load: &LoadSpec) -> anyhow::Result<(f64, u64, u64)> {
    let meta = region.map(|r| MetaOptions {
        region_size: r,
        ..MetaOptions::default()
    });
    for f in files {
        let _ = std::fs::remove_file(MetaOptions::default().sidecar(f));
    }
    let specs = files
        .iter()
        .map(|f| ReplicaSpec::parse(&f.display().to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = ArrayConfig::new(specs);
    cfg.replica_depth = load.depth;
    cfg.meta = meta;
    let array = Array::open(cfg, Policy::from_name("primary", None)?)?;
    let r = run_load(&array, load, &mut |_| {})?;
    let marked = array.bitmap_status().map_or(0, |b| b.marked_total);
    Ok((
        r.completed as f64 / r.elapsed_s,
        r.write_us.value_at_quantile(0.99),
        marked,
    ))
}

fn label(r: Option<u64>) -> String {
    match r {
        None => "none".into(),
        Some(r) if r >= 1 << 20 => format!("{} MiB", r >> 20),
        Some(r) => format!("{} KiB", r >> 10),
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let base = a
        .dir
        .clone()
        .unwrap_or_else(augur::load::default_replica_dir);
    let tmp = tempfile::Builder::new()
        .prefix("augur-bitmap-")
        .tempdir_in(&base)?;
    let files: Vec<PathBuf> = (0..a.replicas)
        .map(|i| tmp.path().join(format!("r{i}.img")))
        .collect();
    fill(&files, a.size_mib)?;
    let mut configs: Vec<Option<u64>> = vec![None];
    for r in &a.regions {
        configs.push(Some(augur_bench::parse_size(r)?));
    }
    let load = LoadSpec {
        workload: Workload::Mixed { read_pct: 0.0 },
        block_size: a.bs,
        depth: a.depth,
        rate: None,
        duration: Duration::from_secs_f64(a.seconds),
        seed: 11,
    };
    let mut iops: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    println!(
        "{} replicas of {} MiB in {}, random {} B writes at depth {}, {} s per run",
        a.replicas,
        a.size_mib,
        base.display(),
        a.bs,
        a.depth,
        a.seconds
    );
    println!("round  bitmap region  write IOPS  write p99 us  regions marked");
    for round in 0..a.rounds {
        for k in 0..configs.len() {
            let c = (k + round) % configs.len();
            let (x, p99, marked) = run(&files, configs[c], &load)?;
            println!(
                "{round:>5}  {:>13}  {x:>10.0}  {p99:>12}  {marked:>14}",
                label(configs[c])
            );
            iops[c].push(x);
        }
    }
    let off = augur_bench::median(iops[0].clone());
    println!("median write IOPS: no bitmap {off:.0}");
    for (c, v) in configs.iter().zip(&iops).skip(1) {
        let m = augur_bench::median(v.clone());
        println!(
            "  region {:>7}: {m:.0} IOPS, {:.3}x of no bitmap",
            label(*c),
            m / off
        );
    }
    Ok(())
}

/// Writes every replica whole, so writes land on allocated blocks.
fn fill(files: &[PathBuf], mib: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let chunk = vec![0x5Au8; 1 << 20];
    for f in files {
        let mut w = std::io::BufWriter::new(std::fs::File::create(f)?);
        for _ in 0..mib {
            w.write_all(&chunk)?;
        }
        w.flush()?;
        w.get_ref().sync_all()?;
    }
    Ok(())
}

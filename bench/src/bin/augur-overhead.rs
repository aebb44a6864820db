//! Array overhead: the same random-read load on one plain file, through
//! Augur's array (one replica, `baseline`) and through raw io_uring, in
//! alternating rounds of one run; prints each round and the median IOPS ratio.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use augur::load::{LoadSpec, Workload, run_load};
use augur::{Array, ArrayConfig, Policy, ReplicaSpec};
use clap::Parser;

/// Compare Augur's array with raw io_uring on one file, side by side.
#[derive(Parser)]
struct Args {
    /// The file to read (created with --size if missing).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Size of the file to create, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Queue depth of both.
    #[arg(long, default_value_t = 16)]
    depth: u32,
    /// Request size, bytes.
    #[arg(long, default_value_t = 4096)]
    bs: u32,
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rounds (each round runs both, alternating which goes first).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let tmp = tempfile::tempdir()?;
    let path = match a.file {
        Some(p) => p,
        None => {
            let p = tmp.path().join("overhead.img");
            // Fill with data so reads hit allocated blocks, not holes.
            let f = std::fs::File::create(&p)?;
            f.set_len(a.size_mib << 20)?;
            let chunk = vec![0xA5u8; 1 << 20];
            use std::io::Write;
            let mut w = std::io::BufWriter::new(f);
            for _ in 0..a.size_mib {
                w.write_all(&chunk)?;
            }
            w.flush()?;
            p
        }
    };
    let dur = Duration::from_secs_f64(a.seconds);
    let spec = ReplicaSpec::parse(path.to_str().context("path is not UTF-8")?)?;
    let mut cfg = ArrayConfig::new(vec![spec]);
    cfg.replica_depth = a.depth;
    let array = Array::open(cfg, Policy::from_name("primary", None)?)?;
    let load = LoadSpec {
        workload: Workload::RandRead,
        block_size: a.bs,
        depth: a.depth,
        rate: None,
        duration: dur,
        seed: 7,
    };
    let (mut raw, mut arr) = (Vec::new(), Vec::new());
    println!("round  raw io_uring IOPS  augur array IOPS  ratio  raw p99 us  array p99 us");
    for round in 0..a.rounds {
        let run_raw = || augur_bench::raw_randread(&path, a.depth, a.bs, dur, 7 + round as u64);
        let run_arr = || run_load(&array, &load, &mut |_| {});
        let (r, x) = if round % 2 == 0 {
            let r = run_raw()?;
            (r, run_arr()?)
        } else {
            let x = run_arr()?;
            (run_raw()?, x)
        };
        println!(
            "{round:>5}  {:>17.0}  {:>16.0}  {:.3}  {:>10}  {:>12}",
            r.iops(),
            x.iops(),
            x.iops() / r.iops(),
            r.read_us.value_at_quantile(0.99),
            x.read_us.value_at_quantile(0.99)
        );
        raw.push(r.iops());
        arr.push(x.iops());
    }
    let (mr, ma) = (augur_bench::median(raw), augur_bench::median(arr));
    println!(
        "median: raw {mr:.0} IOPS, array {ma:.0} IOPS, ratio {:.3} (depth {}, {} B, {})",
        ma / mr,
        a.depth,
        a.bs,
        path.display()
    );
    Ok(())
}

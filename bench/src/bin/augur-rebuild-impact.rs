//! Foreground I/O during a rebuild: fio (70/30 random 4 KiB, depth 16) on
//! an `augur fuse` device of three emulated `fast-nvme` replicas, without a
//! rebuild and with replica 2 replaced (`augur ctl replica replace`) half a
//! second into the run, at each rebuild rate limit; alternating rounds of
//! one run. Prints read IOPS, p99 and p99.9 side by side, and how long each
//! rebuild took.
//!
//! Needs root, /dev/fuse and fio.
//! `cargo run --release -p augur-bench --bin augur-rebuild-impact -- [--seconds 10]`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use augur::control::{Command as C, request};
use augur_bench::live::{FuseDaemon, augur_binary, fio, merge, quantile, replica_dir};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Seconds of fio per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Device size (each replica, in /dev/shm).
    #[arg(long, default_value = "512M")]
    size: String,
    /// Rebuild rate limits to measure (k/m/g suffixes; 0: none).
    #[arg(long, value_delimiter = ',', default_value = "64m,0")]
    rates: Vec<String>,
    /// Rounds.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The augur binary (default: next to this one).
    #[arg(long)]
    augur: Option<PathBuf>,
}

struct Side {
    label: String,
    read_iops: Vec<f64>,
    bins: BTreeMap<u64, u64>,
    rebuild_s: Vec<f64>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let augur = augur_binary(a.augur.as_deref())?;
    let dir = replica_dir("augur-rebuild-")?;
    let d = FuseDaemon::start(&augur, dir.path(), "fast-nvme", &a.size, &[])?;
    let file = d.file.display().to_string();
    let t = Duration::from_secs(10);
    let mut sides: Vec<(Option<u64>, Side)> = vec![(
        None,
        Side {
            label: "no rebuild".into(),
            read_iops: vec![],
            bins: BTreeMap::new(),
            rebuild_s: vec![],
        },
    )];
    for r in &a.rates {
        let rate = augur_bench::parse_size(r)?;
        sides.push((
            Some(rate),
            Side {
                label: if rate == 0 {
                    "rebuild, no limit".into()
                } else {
                    format!("rebuild at {} MiB/s", rate >> 20)
                },
                read_iops: vec![],
                bins: BTreeMap::new(),
                rebuild_s: vec![],
            },
        ));
    }
    let fio_args = vec![
        "--name=fg".to_string(),
        format!("--filename={file}"),
        "--ioengine=io_uring".into(),
        "--direct=1".into(),
        "--rw=randrw".into(),
        "--rwmixread=70".into(),
        "--bs=4k".into(),
        "--iodepth=16".into(),
        "--time_based".into(),
        format!("--runtime={}", a.seconds),
        "--randrepeat=0".into(),
    ];
    // Fill the device once, so the rebuild copies real data.
    let fill = fio(&[
        "--name=fill".to_string(),
        format!("--filename={file}"),
        "--ioengine=io_uring".into(),
        "--direct=1".into(),
        "--rw=write".into(),
        "--bs=1m".into(),
        "--iodepth=8".into(),
    ])?;
    if fill.errors > 0 {
        bail!("fio fill failed");
    }
    let mut k = 0;
    println!("round  side                     read IOPS  read p99 us  read p99.9 us  rebuild s");
    for round in 0..a.rounds {
        for j in 0..sides.len() {
            let c = (j + round) % sides.len();
            let rate = sides[c].0;
            let runner = {
                let args = fio_args.clone();
                std::thread::spawn(move || fio(&args))
            };
            let mut rebuilt = None;
            if let Some(rate) = rate {
                std::thread::sleep(Duration::from_millis(500));
                request(&d.socket, C::SyncRate { bytes_per_s: rate }, t)?;
                k += 1;
                let new = dir.path().join(format!("new{k}"));
                let r = request(
                    &d.socket,
                    C::ReplicaReplace {
                        replica: 2,
                        spec: new.display().to_string(),
                    },
                    t,
                )?;
                if !r.ok {
                    bail!("replace: {:?}", r.error);
                }
                let t0 = Instant::now();
                // Poll until the rebuild is over (or the run ends first).
                loop {
                    let s = request(&d.socket, C::Status, t)?;
                    if s.result["sync"]["running"] != true {
                        rebuilt = Some(t0.elapsed().as_secs_f64());
                        break;
                    }
                    if t0.elapsed() > Duration::from_secs(a.seconds * 20) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let run = runner
                .join()
                .map_err(|_| anyhow::anyhow!("fio thread panicked"))??;
            if run.errors > 0 {
                bail!("fio reported errors");
            }
            let side = &mut sides[c].1;
            let p99 = quantile(&run.read_bins, 0.99);
            let p999 = quantile(&run.read_bins, 0.999);
            println!(
                "{round:>5}  {:<22}  {:>10.0}  {p99:>11.0}  {p999:>13.0}  {}",
                side.label,
                run.read_iops,
                rebuilt.map_or("-".into(), |s| format!("{s:.1}"))
            );
            side.read_iops.push(run.read_iops);
            merge(&mut side.bins, &run.read_bins);
            if let Some(s) = rebuilt {
                side.rebuild_s.push(s);
            }
            for old in 1..k {
                let _ = std::fs::remove_file(dir.path().join(format!("new{old}")));
            }
        }
    }
    let base = sides[0].1.read_iops.iter().sum::<f64>() / a.rounds as f64;
    println!("over all rounds (histograms merged):");
    for (_, s) in &sides {
        let iops = s.read_iops.iter().sum::<f64>() / a.rounds as f64;
        println!(
            "  {:<22} read {iops:>8.0} IOPS ({:.3}x), p99 {:>6.0} us, p99.9 {:>6.0} us{}",
            s.label,
            iops / base,
            quantile(&s.bins, 0.99),
            quantile(&s.bins, 0.999),
            if s.rebuild_s.is_empty() {
                String::new()
            } else {
                format!(
                    ", rebuilds took {} s",
                    s.rebuild_s
                        .iter()
                        .map(|x| format!("{x:.1}"))
                        .collect::<Vec<_>>()
                        .join("/")
                )
            }
        );
    }
    drop(d);
    Ok(())
}

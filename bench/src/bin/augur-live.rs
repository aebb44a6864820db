//! Live operation measured side by side on a real FUSE device: fio
//! crc32c-verify passes with and without model swaps every 100 ms, and
//! with and without the metrics endpoint scraped every second.
//!
//! Needs root, /dev/fuse and fio. Phases alternate (off, on, off, on, ...)
//! so host drift hits both sides alike; read latencies of every pass are
//! merged from fio's full histograms (json+), so the p99.99 is over all
//! reads of a side, not an average of per-pass percentiles.
//!
//! `cargo run --release -p augur-bench --bin augur-live -- [--seconds 60]`

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use augur_bench::live::{FioRun, FuseDaemon, augur_binary, fio, merge, quantile, replica_dir};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Seconds of fio per side of each comparison (split into alternating phases).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Phases per side.
    #[arg(long, default_value_t = 4)]
    phases: u32,
    /// Device size (each of the three emulated replicas in /dev/shm).
    #[arg(long, default_value = "512M")]
    size: String,
    /// Emulator profile of the replicas.
    #[arg(long, default_value = "gc-heavy")]
    profile: String,
    /// The augur binary (default: next to this one).
    #[arg(long)]
    augur: Option<PathBuf>,
}

fn start(augur: &Path, dir: &Path, a: &Args, metrics: Option<&str>) -> anyhow::Result<FuseDaemon> {
    let mut extra = vec!["--policy", "linnos"];
    if let Some(m) = metrics {
        extra.extend(["--metrics", m]);
    }
    FuseDaemon::start(augur, dir, &a.profile, &a.size, &extra)
}

/// One fio verify pass.
fn fio_pass(file: &Path, size: &str) -> anyhow::Result<FioRun> {
    let args = [
        "--name=live",
        "--ioengine=io_uring",
        "--direct=1",
        "--rw=randrw",
        "--rwmixread=70",
        "--bs=4k",
        "--iodepth=16",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--verify_state_save=0",
        "--randrepeat=0",
    ];
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.push(format!("--filename={}", file.display()));
    v.push(format!("--size={size}"));
    fio(&v)
}

#[derive(Default)]
struct Side {
    bins: BTreeMap<u64, u64>,
    iops: Vec<f64>,
    errors: u64,
    passes: u32,
}

impl Side {
    fn add(&mut self, r: FioRun) {
        merge(&mut self.bins, &r.read_bins);
        self.iops.push(r.read_iops);
        self.errors += r.errors;
        self.passes += 1;
    }
    fn mean_iops(&self) -> f64 {
        self.iops.iter().sum::<f64>() / self.iops.len().max(1) as f64
    }
    fn line(&self, name: &str) -> String {
        format!(
            "{name:<22} {:>6} {:>10.0} {:>8.0} {:>8.0} {:>9.0} {:>10.0} {:>7}",
            self.passes,
            self.mean_iops(),
            quantile(&self.bins, 0.5),
            quantile(&self.bins, 0.99),
            quantile(&self.bins, 0.999),
            quantile(&self.bins, 0.9999),
            self.errors
        )
    }
}

/// Runs fio passes for `secs` and adds them to `side`.
fn passes_for(file: &Path, size: &str, secs: f64, side: &mut Side) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        side.add(fio_pass(file, size)?);
    }
    Ok(())
}

fn header() -> String {
    format!(
        "{:<22} {:>6} {:>10} {:>8} {:>8} {:>9} {:>10} {:>7}",
        "run", "passes", "read IOPS", "p50 us", "p99 us", "p99.9 us", "p99.99 us", "errors"
    )
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let augur = augur_binary(a.augur.as_deref())?;
    let dir = replica_dir("augur-live-")?;
    let models = tempfile::tempdir()?;
    let other = models.path().join("other.augm");
    // The shipped model again, from a file: every swap reads, validates and
    // installs a model, and the decisions stay those of the shipped one, so
    // what is measured is the swap itself, not a worse model's routing.
    augur_predictor::Model::default_model()?.save(&other)?;
    let per_phase = a.seconds as f64 / f64::from(a.phases);

    // 1. Model swaps every 100 ms.
    let d = start(&augur, dir.path(), &a, None)?;
    let (mut quiet, mut swapping) = (Side::default(), Side::default());
    let swaps = Arc::new(AtomicU64::new(0));
    for _ in 0..a.phases {
        passes_for(&d.file, &a.size, per_phase, &mut quiet)?;
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let (stop, swaps, sock) = (stop.clone(), swaps.clone(), d.socket.clone());
            let files = ["default".to_string(), other.display().to_string()];
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = augur::control::request(
                        &sock,
                        augur::control::Command::ModelLoad {
                            file: files[k % 2].clone(),
                        },
                        Duration::from_secs(10),
                    )?;
                    if !r.ok {
                        bail!("model load refused: {:?}", r.error);
                    }
                    k += 1;
                    swaps.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(())
            })
        };
        passes_for(&d.file, &a.size, per_phase, &mut swapping)?;
        stop.store(true, Ordering::Relaxed);
        t.join()
            .map_err(|_| anyhow::anyhow!("swapper panicked"))??;
    }
    drop(d);
    println!(
        "profile {}, device {}, fio randrw 70/30 4k depth 16 crc32c verify, policy linnos",
        a.profile, a.size
    );
    println!("{}", header());
    println!("{}", quiet.line("no swaps"));
    println!("{}", swapping.line("swap every 100 ms"));
    println!(
        "model swaps: {}; p99.99 with swaps / without: {:.3}",
        swaps.load(Ordering::Relaxed),
        quantile(&swapping.bins, 0.9999) / quantile(&quiet.bins, 0.9999)
    );

    // 2. Metrics: one daemon with --metrics, phases without and with a
    // scrape every second (the counters behind them are always kept).
    let (mut off, mut on) = (Side::default(), Side::default());
    let mut scrapes = 0u64;
    let d = start(&augur, dir.path(), &a, Some("127.0.0.1:0"))?;
    let addr = metrics_addr(&d)?;
    for _ in 0..a.phases {
        passes_for(&d.file, &a.size, per_phase, &mut off)?;
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let (stop, addr) = (stop.clone(), addr.clone());
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut s = std::net::TcpStream::connect(&addr)?;
                    write!(s, "GET /metrics HTTP/1.0\r\n\r\n")?;
                    let mut body = String::new();
                    s.read_to_string(&mut body)?;
                    if !body.contains("augur_requests_total") {
                        bail!("scrape without metrics: {body}");
                    }
                    n += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
                Ok(n)
            })
        };
        passes_for(&d.file, &a.size, per_phase, &mut on)?;
        stop.store(true, Ordering::Relaxed);
        scrapes += t
            .join()
            .map_err(|_| anyhow::anyhow!("scraper panicked"))??;
    }
    drop(d);
    println!("{}", header());
    println!("{}", off.line("not scraped"));
    println!("{}", on.line("scraped every 1 s"));
    println!(
        "scrapes: {scrapes}; read IOPS scraped / not: {:.3}",
        on.mean_iops() / off.mean_iops()
    );
    Ok(())
}

/// The port a daemon started with `--metrics 127.0.0.1:0` was given: its
/// own listening TCP socket, found through /proc.
fn metrics_addr(d: &FuseDaemon) -> anyhow::Result<String> {
    // The daemon's listening TCP sockets: /proc/PID/net/tcp lists all of the
    // namespace's, so match the inodes of the daemon's own fds.
    let pid = d.child.id();
    let mut inodes = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().to_string();
            if let Some(i) = t.strip_prefix("socket:[").and_then(|x| x.strip_suffix(']')) {
                inodes.push(i.to_string());
            }
        }
    }
    let tcp = std::fs::read_to_string("/proc/net/tcp")?;
    for l in tcp.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
            let port = u16::from_str_radix(f[1].rsplit(':').next().unwrap_or("0"), 16)?;
            return Ok(format!("127.0.0.1:{port}"));
        }
    }
    bail!("daemon {pid} listens on no TCP port")
}

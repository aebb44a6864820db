//! `augur bench`, `augur record` and `augur demo`: run the load generator
//! over fresh arrays, one policy after another, and report side by side, on
//! the real clock (the io_uring data path) or the simulated one (the same
//! code in a discrete-event loop: exact, and identical on any machine).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use augur_feature_store::{LogWriter, TrainingLog};
use serde::Serialize;

use super::run::{IntervalStats, LoadProgress, LoadResult, run_load};
use super::workload::LoadSpec;
use crate::array::ArrayError;
use crate::array::ReplicaSpec;
use crate::array::{Array, ArrayConfig, FaultPlan, ReplicaStatus, SimOptions};
use crate::emu::Profile;
use crate::route::{Policy, PredictCost, SlowPredictor};

/// Where the replicas of a bench run come from.
#[derive(Clone, Debug)]
pub enum ReplicaSource {
    /// Fresh emulated replica files, made anew for every policy and removed after.
    Fresh {
        /// How many.
        count: usize,
        /// Their emulator profile.
        profile: Box<Profile>,
        /// Directory for the files (None: /dev/shm when present, else the temp dir).
        dir: Option<PathBuf>,
        /// Size of each, bytes.
        size: u64,
    },
    /// The user's replicas, used as they are by every policy in turn;
    /// missing files are created with the size, when one is given.
    Given(Vec<ReplicaSpec>, Option<u64>),
}

/// Everything one bench run needs besides the policies.
#[derive(Clone, Debug)]
pub struct BenchSetup {
    /// The replicas.
    pub replicas: ReplicaSource,
    /// The load.
    pub load: LoadSpec,
    /// Per-replica queue depth.
    pub replica_depth: u32,
    /// Hedging percentile.
    pub hedge_percentile: f64,
    /// Fault injection.
    pub faults: Vec<(usize, FaultPlan)>,
    /// The clock the runs use.
    pub clock: ClockChoice,
}

/// Which clock a bench run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockChoice {
    /// The real data path: io_uring on replica files, wall-clock time.
    Real,
    /// Simulated time: no files, no io_uring; each predictor call costs this.
    Sim(PredictCost),
}

impl ClockChoice {
    /// `real` or `sim`.
    pub fn name(&self) -> &'static str {
        match self {
            ClockChoice::Real => "real",
            ClockChoice::Sim(_) => "sim",
        }
    }
}

/// Read latency summary in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    /// Mean.
    pub avg: f64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// 99.99th percentile.
    pub p9999: u64,
    /// Largest seen.
    pub max: u64,
}

/// One policy's row of the report (also its JSON object).
#[derive(Clone, Debug, Serialize)]
pub struct PolicyReport {
    /// Policy name.
    pub policy: String,
    /// The clock it ran on: `real` or `sim`.
    pub clock: &'static str,
    /// On the simulated clock, what each predictor call cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predict_cost: Option<PredictCost>,
    /// The load's depth (closed loop: requests kept in flight; open loop:
    /// the most in flight).
    pub depth: u32,
    /// Requests per second.
    pub iops: f64,
    /// Read latency.
    pub read_lat_us: LatencySummary,
    /// Write latency.
    pub write_lat_us: LatencySummary,
    /// Percent of reads served by a replica other than their primary.
    pub reroute_pct: f64,
    /// Extra replica reads (hedged copies) as a percent of reads.
    pub extra_io_pct: f64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Predictor calls per read.
    pub predictions_per_read: f64,
    /// Percent of reads every live replica was predicted slow for (sent to
    /// the lowest-scored one).
    pub all_slow_pct: f64,
    /// Replicas marked failed during the run.
    pub replica_failures: u64,
    /// Percent of judged reads (answered by a replica the predictor had
    /// scored) whose prediction matched the observed latency; absent when
    /// no read was judged (policies without a predictor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_accuracy_pct: Option<f64>,
    /// Where the predictor batches ran (`--predict-on`).
    pub placement: Placement,
    /// Seconds measured.
    pub duration_s: f64,
    /// Replica states at the end.
    pub replicas: Vec<ReplicaStatus>,
    /// The read latency distribution: `[upper, count]` pairs, microseconds,
    /// on log-spaced buckets (each bound 10% above the one before; empty
    /// buckets left out): what a latency CCDF is drawn from.
    pub read_hist_us: Vec<[u64; 2]>,
    /// The length of each of `intervals`, seconds.
    pub interval_s: f64,
    /// The run over time, interval by interval.
    pub intervals: Vec<IntervalStats>,
    /// GC windows of the emulated replicas that overlap the run, seconds
    /// since it began (clipped to it), in order of replica then start.
    pub gc_windows: Vec<GcWindow>,
}

/// One GC window of an emulated replica during a run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct GcWindow {
    /// The replica's index.
    pub replica: usize,
    /// Start, seconds since the run began.
    pub start_s: f64,
    /// End, seconds since the run began.
    pub end_s: f64,
}

/// `[upper, count]` pairs of `h` on buckets 10% apart, empty ones left out.
fn log_buckets(h: &hdrhistogram::Histogram<u64>) -> Vec<[u64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_log(1, 1.1)
        .filter(|v| v.count_since_last_iteration() > 0)
        .map(|v| [v.value_iterated_to(), v.count_since_last_iteration()])
        .collect()
}

/// The GC windows of `array` that overlap `r`'s measured window.
fn run_gc_windows(array: &Array, r: &LoadResult) -> Vec<GcWindow> {
    let t0 = r.t0_ns;
    let t1 = t0 + (r.elapsed_s * 1e9) as u64;
    let sec = |t: u64| ((t.clamp(t0, t1) - t0) as f64 / 1e3).round() / 1e6;
    let mut out = Vec::new();
    for (replica, windows) in array.gc_windows().into_iter().enumerate() {
        for (start, end) in windows {
            if end > t0 && start < t1 {
                out.push(GcWindow {
                    replica,
                    start_s: sec(start),
                    end_s: sec(end),
                });
            }
        }
    }
    out
}

fn summary(h: &hdrhistogram::Histogram<u64>) -> LatencySummary {
    LatencySummary {
        avg: (h.mean() * 10.0).round() / 10.0,
        p50: h.value_at_quantile(0.50),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        p9999: h.value_at_quantile(0.9999),
        max: h.max(),
    }
}

impl PolicyReport {
    fn new(setup: &BenchSetup, policy: &str, r: &LoadResult, array: &Array) -> Self {
        let clock = setup.clock;
        let replicas = array.replica_status();
        let reads = r.stats.reads.max(1) as f64;
        PolicyReport {
            policy: policy.to_string(),
            clock: clock.name(),
            predict_cost: match clock {
                ClockChoice::Sim(c) => Some(c),
                ClockChoice::Real => None,
            },
            depth: setup.load.depth,
            iops: r.iops().round(),
            read_lat_us: summary(&r.read_us),
            write_lat_us: summary(&r.write_us),
            reroute_pct: round2(r.stats.rerouted as f64 * 100.0 / reads),
            extra_io_pct: round2(r.stats.hedges as f64 * 100.0 / reads),
            reads: r.reads,
            writes: r.writes,
            errors: r.errors,
            predictions_per_read: round2(r.stats.predictions as f64 / reads),
            all_slow_pct: round2(r.stats.all_slow as f64 * 100.0 / reads),
            replica_failures: r.stats.replica_failures,
            prediction_accuracy_pct: (r.stats.judged_reads > 0).then(|| {
                round2(r.stats.correct_predictions as f64 * 100.0 / r.stats.judged_reads as f64)
            }),
            placement: Placement {
                cpu_batches: r.stats.cpu_batches,
                cpu_inputs: r.stats.cpu_items,
                gpu_batches: r.stats.gpu_batches,
                gpu_inputs: r.stats.gpu_items,
                gpu_missed_batches: r.stats.gpu_missed_batches,
            },
            duration_s: round2(r.elapsed_s),
            replicas,
            read_hist_us: log_buckets(&r.read_us),
            interval_s: r.interval_s,
            intervals: r.intervals.clone(),
            gc_windows: run_gc_windows(array, r),
        }
    }
}

/// Predictor batches (and the inputs in them) by the device that scored them.
/// An input is one (read, replica) pair: a CPU batch is one LinnOS round, a
/// GPU batch every candidate replica of every read of a routing batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Batches on the CPU (including GPU misses).
    pub cpu_batches: u64,
    /// (Read, replica) pairs scored in those.
    pub cpu_inputs: u64,
    /// Batches on the GPU.
    pub gpu_batches: u64,
    /// (Read, replica) pairs scored in those.
    pub gpu_inputs: u64,
    /// Batches that missed their GPU deadline and went to the CPU.
    pub gpu_missed_batches: u64,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The directory fresh replicas go in by default: tmpfs when there is one,
/// so the emulator, not the host's disk, shapes the latency.
pub fn default_replica_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Runs the load once per policy, each on a fresh array, and returns one
/// report per policy. `on_progress` gets (policy, progress).
pub fn run_bench(
    setup: &BenchSetup,
    policies: &[String],
    predictor: Option<Arc<dyn SlowPredictor>>,
    on_progress: &mut dyn FnMut(&str, LoadProgress),
) -> anyhow::Result<Vec<PolicyReport>> {
    // Validate every policy name before running anything.
    let built: Vec<Policy> = policies
        .iter()
        .map(|p| Policy::from_name(p, predictor.clone()))
        .collect::<Result<_, _>>()?;
    let mut reports = Vec::new();
    for policy in built {
        let name = policy.name().to_string();
        let (array, _dir) = open_array(setup, policy, None)?;
        let r = run_load(&array, &setup.load, &mut |p| on_progress(&name, p))?;
        reports.push(PolicyReport::new(setup, &name, &r, &array));
    }
    Ok(reports)
}

/// Runs the load once with one policy, writing every completed read's
/// training record to `out`. Returns the report and (records, dropped).
pub fn run_record(
    setup: &BenchSetup,
    policy: Policy,
    out: &Path,
    on_progress: &mut dyn FnMut(&str, LoadProgress),
) -> anyhow::Result<(PolicyReport, u64, u64)> {
    let file = std::fs::File::create(out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    let mut writer = LogWriter::new(std::io::BufWriter::new(file))?;
    let log = Arc::new(TrainingLog::new(1 << 16));
    let name = policy.name().to_string();
    let (array, _dir) = open_array(setup, policy, Some(log.clone()))?;
    let (r, written) = if array.clock().is_simulated() {
        // Simulated time runs far ahead of a writer thread: drain the log on
        // this thread, between polls, so no record is ever dropped.
        let mut written = 0u64;
        let mut failed: Option<augur_feature_store::LogError> = None;
        let mut drain = |writer: &mut LogWriter<_>, written: &mut u64| {
            let mut batch = Vec::with_capacity(4096);
            loop {
                batch.clear();
                let n = log.get(4096, &mut batch);
                if n == 0 {
                    break;
                }
                if let Err(e) = writer.write(&batch) {
                    failed.get_or_insert(e);
                }
                log.truncate(n);
                *written += n as u64;
            }
        };
        let r = run_load(&array, &setup.load, &mut |p| {
            on_progress(&name, p);
            drain(&mut writer, &mut written);
        });
        drain(&mut writer, &mut written);
        if let Some(e) = failed {
            return Err(anyhow::anyhow!("writing {}: {e}", out.display()));
        }
        writer.finish()?;
        (r?, written)
    } else {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drainer = {
            let log = log.clone();
            let stop = stop.clone();
            std::thread::spawn(move || -> anyhow::Result<(LogWriter<_>, u64)> {
                let mut batch = Vec::with_capacity(4096);
                let mut written = 0u64;
                loop {
                    let done = stop.load(std::sync::atomic::Ordering::Acquire);
                    batch.clear();
                    let n = log.get(4096, &mut batch);
                    if n > 0 {
                        writer.write(&batch)?;
                        log.truncate(n);
                        written += n as u64;
                        continue;
                    }
                    if done {
                        return Ok((writer, written));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let r = run_load(&array, &setup.load, &mut |p| on_progress(&name, p));
        stop.store(true, std::sync::atomic::Ordering::Release);
        let (writer, written) = drainer
            .join()
            .map_err(|_| anyhow::anyhow!("log writer thread panicked"))??;
        writer.finish()?;
        (r?, written)
    };
    Ok((
        PolicyReport::new(setup, &name, &r, &array),
        written,
        log.dropped(),
    ))
}

/// Opens the array for one run; fresh replicas live in the returned temp dir.
pub(super) fn open_array(
    setup: &BenchSetup,
    policy: Policy,
    log: Option<Arc<TrainingLog>>,
) -> anyhow::Result<(Array, Option<tempfile::TempDir>)> {
    let (specs, dir, create) = match &setup.replicas {
        ReplicaSource::Given(specs, size) => (specs.clone(), None, *size),
        // Simulated replicas hold no data: no files, so no directory.
        ReplicaSource::Fresh {
            count,
            profile,
            size,
            ..
        } if setup.clock != ClockChoice::Real => {
            let specs = (0..*count)
                .map(|i| {
                    ReplicaSpec::emulated((**profile).clone(), PathBuf::from(format!("sim{i}")))
                })
                .collect();
            (specs, None, Some(*size))
        }
        ReplicaSource::Fresh {
            count,
            profile,
            dir,
            size,
        } => {
            let base = dir.clone().unwrap_or_else(default_replica_dir);
            let tmp = tempfile::Builder::new()
                .prefix("augur-bench-")
                .tempdir_in(&base)
                .map_err(|e| ArrayError::io(&base, "create temp dir", e))?;
            let specs = (0..*count)
                .map(|i| {
                    ReplicaSpec::emulated(
                        (**profile).clone(),
                        tmp.path().join(format!("replica{i}.img")),
                    )
                })
                .collect();
            (specs, Some(tmp), Some(*size))
        }
    };
    let mut cfg = ArrayConfig::new(specs);
    cfg.create_size = create;
    cfg.replica_depth = setup.replica_depth;
    cfg.seed = setup.load.seed;
    cfg.hedge_percentile = setup.hedge_percentile;
    cfg.faults = setup.faults.clone();
    if let ClockChoice::Sim(predict_cost) = setup.clock {
        cfg.create_size = None;
        cfg.simulate = Some(SimOptions {
            size: create.unwrap_or(1 << 30),
            predict_cost,
        });
    }
    let array = match log {
        Some(log) => Array::open_with_log(cfg, policy, log)?,
        None => Array::open(cfg, policy)?,
    };
    Ok((array, dir))
}

/// Renders reports as the side-by-side table.
pub fn render_table(reports: &[PolicyReport]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    match reports.first().map(|r| (r.clock, r.predict_cost)) {
        Some(("sim", cost)) => {
            let _ = writeln!(
                s,
                "clock: simulated (deterministic: the same flags give this table on any machine){}",
                cost.filter(|c| *c != PredictCost::default())
                    .map(|c| format!("; prediction costs {c}"))
                    .unwrap_or_default()
            );
        }
        Some(_) => {
            let _ = writeln!(
                s,
                "clock: real (io_uring on replica files; tails include this host's scheduling noise)"
            );
        }
        None => {}
    }
    // The policy column fits the longest name (`stall-bound:250us`).
    let w = reports
        .iter()
        .map(|r| r.policy.len())
        .max()
        .unwrap_or(0)
        .max(13);
    let _ = writeln!(
        s,
        "{:<w$} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8}",
        "policy",
        "IOPS",
        "avg us",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "p99.99 us",
        "reroute%",
        "extra%"
    );
    for r in reports {
        let l = &r.read_lat_us;
        let _ = writeln!(
            s,
            "{:<w$} {:>9.0} {:>8.1} {:>8} {:>8} {:>9} {:>9} {:>9.2} {:>8.2}",
            r.policy, r.iops, l.avg, l.p50, l.p99, l.p999, l.p9999, r.reroute_pct, r.extra_io_pct
        );
    }
    let failures: Vec<String> = reports
        .iter()
        .filter(|r| r.replica_failures > 0 || r.errors > 0)
        .map(|r| {
            format!(
                "{}: {} replica(s) failed, {} request error(s)",
                r.policy, r.replica_failures, r.errors
            )
        })
        .collect();
    for f in failures {
        let _ = writeln!(s, "{f}");
    }
    for r in reports {
        let p = &r.placement;
        if p.gpu_batches + p.gpu_missed_batches > 0 {
            let _ = writeln!(
                s,
                "{}: predictions on the GPU {} batches ({} inputs, {:.1} per batch), on the CPU {} batches ({} inputs), {} GPU deadline misses",
                r.policy,
                p.gpu_batches,
                p.gpu_inputs,
                p.gpu_inputs as f64 / p.gpu_batches.max(1) as f64,
                p.cpu_batches,
                p.cpu_inputs,
                p.gpu_missed_batches
            );
        }
    }
    s
}

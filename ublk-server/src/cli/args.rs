//! The flags shared by several subcommands (the workload and fault-injection
//! flags of `bench`, `record` and `serve`) and turning them into a bench setup.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use augur::SlowPredictor;
use augur::array::{ArrayError, FaultPlan, ReplicaSpec};
use augur::emu::Profile;
use augur::load::{BenchSetup, ClockChoice, LoadSpec, ReplayIo, ReplicaSource, Workload};
use augur::route::PredictCost;
use clap::Args;

use super::error::CliError;

#[derive(Args, Clone)]
pub(crate) struct LoadArgs {
    /// Number of fresh emulated replicas (ignored with --replica).
    #[arg(long, default_value_t = 3)]
    pub(crate) replicas: usize,
    /// Emulator profile of the fresh replicas.
    #[arg(long, default_value = "gc-heavy")]
    pub(crate) profile: String,
    /// A profile TOML file of one's own (overrides --profile).
    #[arg(long)]
    pub(crate) profile_file: Option<PathBuf>,
    /// Use these replicas instead of fresh ones: PATH or emu:PROFILE:PATH (repeat).
    #[arg(long = "replica")]
    pub(crate) replica: Vec<String>,
    /// Create missing --replica files with this size; size of fresh replicas.
    #[arg(long, value_parser = parse_size)]
    pub(crate) size: Option<u64>,
    /// Directory for fresh replicas (default /dev/shm, else the temp dir).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Workload: randread, mixed, write-burst.
    #[arg(long, default_value = "mixed")]
    pub(crate) workload: String,
    /// Percent reads for the mixed workload.
    #[arg(long, default_value_t = 70.0)]
    pub(crate) read_pct: f64,
    /// Request size (e.g. 4k).
    #[arg(long = "bs", default_value = "4k", value_parser = parse_size)]
    pub(crate) block_size: u64,
    /// Closed loop: requests in flight. Open loop: most in flight.
    #[arg(long, default_value_t = 32)]
    pub(crate) depth: u32,
    /// Open-loop arrival rate in requests/s (Poisson); default is closed loop.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// How long each policy runs (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Seed of the workload and the emulators.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Most I/Os in flight to one replica.
    #[arg(long, default_value_t = 64)]
    pub(crate) replica_depth: u32,
    /// Percentile of recent read latency after which `hedge` sends a second copy.
    #[arg(long, default_value_t = 95.0)]
    pub(crate) hedge_pct: f64,
    #[command(flatten)]
    pub(crate) fault: FaultArgs,
    /// Replay this trace (MSR-Cambridge CSV, blkparse text or FlashNet replay output) instead of --workload.
    #[arg(long)]
    pub(crate) trace: Option<PathBuf>,
    /// Trace format: msr, blkparse or flashnet (default: detect).
    #[arg(long, requires = "trace")]
    pub(crate) trace_format: Option<String>,
    /// Replay only this disk of the trace (index in order of appearance).
    #[arg(long, requires = "trace")]
    pub(crate) trace_disk: Option<u16>,
    /// Skip malformed trace lines (counted) instead of stopping at the first.
    #[arg(long, requires = "trace")]
    pub(crate) skip_bad: bool,
    /// Clock: real (io_uring on replica files) or sim (simulated time: no
    /// I/O, exact, the same result on any machine).
    #[arg(long, default_value = "real")]
    pub(crate) clock: String,
    /// With --clock sim, what a predictor call costs: N ns per call, or
    /// N,PER_READ [default: measured on this machine at start].
    #[arg(long, value_name = "N[,PER_READ]")]
    pub(crate) predict_cost_ns: Option<String>,
    /// With --clock sim, the GPU's costs per batch size (the JSON of `augur
    /// gpu calibrate --json`, from this machine or another): `--predict-on`
    /// then places batches by it and charges GPU batches its round trip.
    #[arg(long, value_name = "FILE")]
    pub(crate) gpu_curve: Option<PathBuf>,
}

/// `--predict-on` and its settings (bench, serve and fuse).
#[derive(Args, Clone)]
pub(crate) struct PredictOnArgs {
    /// Where predictor batches run: cpu; gpu; auto (each batch on the device
    /// whose cost for its size, calibrated at start, is lower);
    /// auto+contention (auto, and back to the CPU while the GPU's round
    /// trips run well above calibration, probing again later).
    #[arg(
        long,
        default_value = "auto",
        value_name = "cpu|gpu|auto|auto+contention"
    )]
    pub(crate) predict_on: String,
    /// How long a batch waits for the GPU before the CPU scores it
    /// [default: twice the calibrated p99 of its size, at least 200us].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) gpu_deadline: Option<Duration>,
    /// Send each queue's batches to the GPU alone instead of gathering
    /// the batches that wait together into one device call.
    #[arg(long)]
    pub(crate) no_gpu_merge: bool,
}

impl PredictOnArgs {
    /// The mode and options the flags ask for.
    pub(crate) fn options(&self) -> Result<augur_gpu_batcher::OffloadOptions, CliError> {
        Ok(augur_gpu_batcher::OffloadOptions {
            mode: augur_gpu_batcher::PredictOn::parse(&self.predict_on)
                .map_err(CliError::BadFlag)?,
            deadline: self.gpu_deadline,
            merge: !self.no_gpu_merge,
            ..Default::default()
        })
    }

    /// Opens the GPU for `model` as asked (calibrating it at start) and
    /// says on stderr what the placement will do. `gpu` without an
    /// adapter is the user's to fix: one line, exit 2.
    pub(crate) fn start(
        &self,
        model: &augur_predictor::Model,
    ) -> Result<Arc<augur_gpu_batcher::Offload>, CliError> {
        let opts = self.options()?;
        let off = augur_gpu_batcher::Offload::start(opts, model)
            .map_err(|e| CliError::BadFlag(format!("--predict-on gpu: {e}")))?;
        if opts.mode != augur_gpu_batcher::PredictOn::Cpu {
            eprintln!("{}", off.note());
        }
        Ok(off)
    }
}

/// Parses sizes like 4096, 4k, 64K, 256M, 1G, 2T.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_lowercase();
            let m = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1u64 << 40,
                _ => return Err(format!("unknown size unit in '{s}' (use k, M, G, T)")),
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4k, 256M, 1G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

pub(crate) fn load_profile(args: &LoadArgs) -> Result<Profile, ArrayError> {
    match &args.profile_file {
        Some(p) => Ok(Profile::from_file(p)?),
        None => Ok(Profile::builtin(&args.profile)?),
    }
}

/// Imports `--trace` as a replay workload.
pub(crate) fn trace_workload(args: &LoadArgs, path: &std::path::Path) -> anyhow::Result<Workload> {
    use augur_predictor::trace::{ImportOptions, TraceFormat, import_file};
    let fmt = match args.trace_format.as_deref() {
        None => None,
        Some(f) => Some(TraceFormat::parse(f).ok_or_else(|| {
            CliError::BadFlag(format!(
                "unknown trace format '{f}' ({})",
                TraceFormat::KNOWN
            ))
        })?),
    };
    let opts = ImportOptions {
        skip_bad: args.skip_bad,
    };
    let trace = import_file(path, fmt, opts)
        .map_err(|e| CliError::BadFlag(format!("{}: {e}", path.display())))?;
    if trace.skipped > 0 {
        tracing::warn!(
            "{}: skipped {} malformed line(s)",
            path.display(),
            trace.skipped
        );
    }
    let ios: Vec<ReplayIo> = trace
        .workload(args.trace_disk)
        .into_iter()
        .filter(|io| {
            matches!(
                io.op,
                augur_feature_store::Op::Read | augur_feature_store::Op::Write
            )
        })
        .map(|io| ReplayIo {
            t_ns: io.t_ns,
            op: io.op,
            offset: io.offset,
            len: io.len,
        })
        .collect();
    if ios.is_empty() {
        return Err(CliError::BadFlag(format!(
            "{}: no reads or writes to replay{}",
            path.display(),
            args.trace_disk
                .map(|d| format!(" on disk {d}"))
                .unwrap_or_default()
        ))
        .into());
    }
    Ok(Workload::Replay(Arc::new(ios)))
}

/// Fault injection flags, shared by `bench`/`record` and `serve`.
#[derive(Args, Clone, Default)]
pub(crate) struct FaultArgs {
    /// Inject a failure into this replica (index from 0).
    #[arg(long)]
    pub(crate) fail_replica: Option<usize>,
    /// ...after this many of its I/Os.
    #[arg(long, requires = "fail_replica")]
    pub(crate) fail_after: Option<u64>,
    /// ...or from this time on (e.g. 2s).
    #[arg(long, requires = "fail_replica", value_parser = humantime::parse_duration)]
    pub(crate) fail_at: Option<Duration>,
}

/// The fault injection of `--fail-replica N (--fail-after IOS | --fail-at TIME)`.
pub(crate) fn fault_plan(f: &FaultArgs) -> Result<Vec<(usize, FaultPlan)>, CliError> {
    let (after, at) = (f.fail_after, f.fail_at);
    let Some(r) = f.fail_replica else {
        return Ok(Vec::new());
    };
    if after.is_none() && at.is_none() {
        return Err(CliError::BadFlag(
            "--fail-replica needs --fail-after N or --fail-at TIME".into(),
        ));
    }
    Ok(vec![(
        r,
        FaultPlan {
            after_ios: after,
            at_ns: at.map(|d| d.as_nanos() as u64),
        },
    )])
}

pub(crate) fn bench_setup(args: &LoadArgs) -> anyhow::Result<BenchSetup> {
    let workload = match &args.trace {
        Some(path) => trace_workload(args, path)?,
        None => Workload::parse(&args.workload, args.read_pct).map_err(CliError::BadFlag)?,
    };
    if !(0.0..=100.0).contains(&args.read_pct) {
        return Err(
            CliError::BadFlag(format!("--read-pct {} is not in 0..100", args.read_pct)).into(),
        );
    }
    if args.block_size == 0 || !args.block_size.is_multiple_of(512) || args.block_size > 1 << 20 {
        return Err(CliError::BadFlag(format!(
            "--bs {} must be a multiple of 512 up to 1M",
            args.block_size
        ))
        .into());
    }
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(CliError::BadFlag("--rate must be positive".into()).into());
    }
    let replicas = if args.replica.is_empty() {
        if !(2..=8).contains(&args.replicas) {
            return Err(CliError::BadFlag(format!(
                "--replicas {} must be between 2 and 8",
                args.replicas
            ))
            .into());
        }
        ReplicaSource::Fresh {
            count: args.replicas,
            profile: Box::new(load_profile(args)?),
            dir: args.dir.clone(),
            size: args.size.unwrap_or(1 << 30),
        }
    } else {
        let specs = args
            .replica
            .iter()
            .map(|s| ReplicaSpec::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        ReplicaSource::Given(specs, args.size)
    };
    let faults = fault_plan(&args.fault)?;
    Ok(BenchSetup {
        replicas,
        load: LoadSpec {
            workload,
            block_size: args.block_size as u32,
            depth: args.depth,
            rate: args.rate,
            duration: args.duration,
            seed: args.seed,
        },
        replica_depth: args.replica_depth,
        hedge_percentile: args.hedge_pct,
        faults,
        clock: ClockChoice::Real,
    })
}

/// The clock of `--clock` and `--predict-cost-ns`. On the simulated clock
/// with a predictor and no cost given, the cost is measured here and now
/// (and said on stderr, since it makes the run machine-dependent).
pub(crate) fn clock_choice(
    args: &LoadArgs,
    predictor: Option<&Arc<dyn SlowPredictor>>,
) -> Result<ClockChoice, CliError> {
    match args.clock.as_str() {
        "real" => {
            if args.predict_cost_ns.is_some() {
                return Err(CliError::BadFlag(
                    "--predict-cost-ns applies to --clock sim only".into(),
                ));
            }
            Ok(ClockChoice::Real)
        }
        "sim" => {
            let cost = match (&args.predict_cost_ns, predictor) {
                (Some(s), _) => PredictCost::parse(s).map_err(CliError::BadFlag)?,
                (None, Some(p)) => {
                    let c = PredictCost::measure(p.as_ref());
                    eprintln!(
                        "prediction cost measured on this machine: {c} (give --predict-cost-ns {},{} for a run that is the same everywhere)",
                        c.per_batch_ns, c.per_item_ns
                    );
                    c
                }
                (None, None) => PredictCost::default(),
            };
            Ok(ClockChoice::Sim(cost))
        }
        other => Err(CliError::BadFlag(format!(
            "unknown clock '{other}' (real, sim)"
        ))),
    }
}

/// The array's metadata and write-intent bitmap, shared by serve and fuse.
#[derive(clap::Args)]
pub(crate) struct MetaFlags {
    /// Keep no metadata: no identity checks, no write-intent bitmap, no
    /// resync after a crash, no rebuild or scrub (as before metadata existed).
    #[arg(long)]
    pub(crate) no_bitmap: bool,
    /// Bytes per write-intent bitmap region for a new array (a power of two, >= 64k).
    #[arg(long, value_parser = parse_size, default_value = "4m", value_name = "SIZE")]
    pub(crate) bitmap_region: u64,
    /// Keep the sidecar metadata files in DIR instead of beside each replica (PATH.augur-meta).
    #[arg(long, value_name = "DIR")]
    pub(crate) meta_dir: Option<std::path::PathBuf>,
    /// Ignore the metadata found (corrupt, missing on some replicas, stale), write it anew and resync every region from the first replica.
    #[arg(long)]
    pub(crate) force_resync: bool,
    /// Start with a stale replica (one that missed writes) and bring it up to date in the background.
    #[arg(long)]
    pub(crate) resync_stale: bool,
    /// Rate limit of resync, rebuild and scrub, bytes per second (0: none).
    #[arg(long, value_parser = parse_size, default_value = "64m", value_name = "BYTES")]
    pub(crate) sync_rate: u64,
    /// A request in flight this many seconds is a stall: its queue logs one
    /// dump of its state and counts it in `stalls` (0: never).
    #[arg(long, value_parser = parse_stall_after, default_value = "5", value_name = "SECS")]
    pub(crate) stall_after: std::time::Duration,
}

/// `--stall-after`: seconds, fractions allowed, 0 for off.
fn parse_stall_after(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => {
            Ok(std::time::Duration::from_secs_f64(v))
        }
        _ => Err(format!(
            "'{s}' is not a number of seconds from 0 (off) to 86400"
        )),
    }
}

impl MetaFlags {
    /// Applies the flags to an array configuration.
    pub(crate) fn apply(&self, cfg: &mut augur::ArrayConfig) {
        cfg.sync_rate = self.sync_rate;
        cfg.stall_after = self.stall_after;
        cfg.meta = (!self.no_bitmap).then(|| augur::array::MetaOptions {
            dir: self.meta_dir.clone(),
            region_size: self.bitmap_region,
            force_resync: self.force_resync,
            resync_stale: self.resync_stale,
        });
    }
}

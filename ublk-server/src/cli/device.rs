//! `augur fuse`, `serve`, `list` and `stop`: the block-device front-ends.

use std::path::PathBuf;
use std::time::Duration;

use augur::array::ReplicaSpec;
use augur::route::Policy;
use clap::Args;

use super::args::{FaultArgs, MetaFlags, PredictOnArgs, fault_plan, parse_size};
use super::error::CliError;
use augur::ModelPredictor;
use augur::control::ModelEntry;

#[derive(Args)]
pub(crate) struct FuseArgs {
    /// Replicas: PATH or emu:PROFILE:PATH (repeat).
    #[arg(long = "replica", required_unless_present = "cleanup")]
    pub(crate) replica: Vec<String>,
    /// Empty directory to mount on; it will hold disk.img.
    #[arg(long, required_unless_present = "cleanup")]
    pub(crate) mount: Option<PathBuf>,
    /// Read routing policy (`augur`: md's least-pending rule priced by the
    /// model; `least-pending` is md RAID1's own).
    #[arg(long, default_value = "augur")]
    pub(crate) policy: String,
    /// Model for the learned policies (augur, linnos): a file, or `default` for the shipped one.
    #[arg(long, default_value = "default")]
    pub(crate) model: String,
    /// FUSE worker threads, each with its own array queue. Each handles one
    /// request at a time, so this is the daemon's queue depth.
    #[arg(long, default_value_t = 16)]
    pub(crate) threads: usize,
    /// Attach a loop device (direct I/O, 4096-byte sectors) to disk.img and print it.
    #[arg(long = "loop")]
    pub(crate) attach_loop: bool,
    /// Create missing --replica files with this size.
    #[arg(long, value_parser = parse_size)]
    pub(crate) size: Option<u64>,
    /// Most I/Os in flight to one replica from one worker.
    #[arg(long, default_value_t = 64)]
    pub(crate) replica_depth: u32,
    /// Seed of the emulators and the random policy.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Percentile of recent read latency after which `hedge` sends a second copy.
    #[arg(long, default_value_t = 95.0)]
    pub(crate) hedge_pct: f64,
    /// Clear what a crashed daemon left at DIR (loop devices on DIR/disk.img, the mount) and exit.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["replica", "mount", "attach_loop"])]
    pub(crate) cleanup: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (a bare port: on loopback).
    #[arg(long, value_name = "ADDR", value_parser = augur::metrics::parse_addr)]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub(crate) process: ProcessFlags,
    #[command(flatten)]
    pub(crate) adapt: AdaptFlags,
    #[command(flatten)]
    pub(crate) predict: PredictOnArgs,
    #[command(flatten)]
    pub(crate) meta: MetaFlags,
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Replicas: PATH or emu:PROFILE:PATH (repeat). With --recover: the recorded ones if left out.
    #[arg(long = "replica", required_unless_present = "recover")]
    pub(crate) replica: Vec<String>,
    /// Create missing --replica files with this size.
    #[arg(long, value_parser = parse_size, conflicts_with = "recover")]
    pub(crate) size: Option<u64>,
    /// Read routing policy [default: augur; with --recover: the recorded one].
    #[arg(long)]
    pub(crate) policy: Option<String>,
    /// Model for the learned policies (augur, linnos): a file, or `default` for the shipped one
    /// [default: default; with --recover: the recorded one].
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// ublk queues, each served by one thread with its own array queue [default: 1].
    #[arg(long)]
    pub(crate) queues: Option<u16>,
    /// Requests in flight per queue [default: 64].
    #[arg(long)]
    pub(crate) depth: Option<u16>,
    /// Logical block size of the device: 512 or 4096 [default: 4096].
    #[arg(long)]
    pub(crate) block_size: Option<u32>,
    /// Device id, the N of /dev/ublkbN [default: the driver picks one].
    #[arg(long)]
    pub(crate) id: Option<u32>,
    /// Attach to device --id N whose daemon died; the I/O waiting on it then completes.
    #[arg(long, requires = "id")]
    pub(crate) recover: bool,
    /// The block layer's request timeout on the device, seconds (0: the
    /// kernel's, 30). The driver notices a killed daemon whose tags were all
    /// in flight only when a request times out, so this bounds how soon
    /// `--recover` can take over; a live daemon's slow requests just wait on.
    #[arg(long, value_parser = parse_io_timeout, default_value = "5", value_name = "SECS")]
    pub(crate) io_timeout: Duration,
    /// Most I/Os in flight to one replica from one queue.
    #[arg(long, default_value_t = 64)]
    pub(crate) replica_depth: u32,
    /// Seed of the emulators and the random policy.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Percentile of recent read latency after which `hedge` sends a second copy.
    #[arg(long, default_value_t = 95.0)]
    pub(crate) hedge_pct: f64,
    #[command(flatten)]
    pub(crate) fault: FaultArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (a bare port: on loopback).
    #[arg(long, value_name = "ADDR", value_parser = augur::metrics::parse_addr)]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub(crate) process: ProcessFlags,
    #[command(flatten)]
    pub(crate) adapt: AdaptFlags,
    #[command(flatten)]
    pub(crate) predict: PredictOnArgs,
    #[command(flatten)]
    pub(crate) meta: MetaFlags,
}

/// What the daemon asks of the kernel for its own process, shared by serve and fuse.
#[derive(Args)]
pub(crate) struct ProcessFlags {
    /// The daemon's OOM score adjustment, -1000 (never chosen by the OOM
    /// killer, as other block I/O daemons are set) to 1000; the daemon also
    /// marks itself an I/O flusher (PR_SET_IO_FLUSHER).
    #[arg(long, default_value_t = augur::frontend::process::DEFAULT_OOM_SCORE_ADJ, value_parser = augur::frontend::process::parse_oom_score_adj, allow_hyphen_values = true, value_name = "N")]
    pub(crate) oom_score_adj: i32,
}

impl ProcessFlags {
    /// Before any thread starts; what the kernel refuses is said once the
    /// device is up (see [`augur::frontend::process`]).
    fn protect(&self) {
        augur::frontend::process::protect_daemon(self.oom_score_adj);
    }
}

/// `--adapt` and its settings, shared by serve and fuse.
#[derive(Args)]
pub(crate) struct AdaptFlags {
    /// Online adaptation: retrain on the device's recent reads in the
    /// background and install a model only when it converged, decides
    /// differently and is no worse (see augur ctl model history).
    #[arg(long)]
    pub(crate) adapt: bool,
    /// Time between two adaptation rounds.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, requires = "adapt")]
    pub(crate) adapt_every: Duration,
    /// Reads a round needs to have come in since the last one.
    #[arg(long, default_value_t = 50_000, requires = "adapt")]
    pub(crate) adapt_min_new: usize,
    /// Least share of recent reads on which a candidate must decide differently.
    #[arg(long, default_value_t = 0.02, requires = "adapt")]
    pub(crate) adapt_min_differ: f64,
    /// Largest share of one core's time a round may train for (it sleeps
    /// between batches for the rest), to bound what training takes from I/O.
    #[arg(long, default_value_t = 0.25, requires = "adapt")]
    pub(crate) adapt_duty: f64,
}

impl AdaptFlags {
    fn options(&self) -> Result<Option<augur::frontend::AdaptOptions>, CliError> {
        if !self.adapt {
            return Ok(None);
        }
        if !(0.0..=1.0).contains(&self.adapt_min_differ) {
            return Err(CliError::BadFlag(
                "--adapt-min-differ is a share, 0 to 1".into(),
            ));
        }
        if !(self.adapt_duty > 0.0 && self.adapt_duty <= 1.0) {
            return Err(CliError::BadFlag(
                "--adapt-duty is a share of a core, above 0 and at most 1".into(),
            ));
        }
        Ok(Some(augur::frontend::AdaptOptions {
            config: augur::adapt::AdaptConfig {
                min_new: self.adapt_min_new.max(1),
                min_differ: self.adapt_min_differ,
                duty: self.adapt_duty,
                ..augur::adapt::AdaptConfig::default()
            },
            every: self.adapt_every,
        }))
    }
}

#[derive(Args)]
pub(crate) struct ListArgs {
    /// Print a JSON array (an object per device) instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct StopArgs {
    /// The device id (N of /dev/ublkbN).
    #[arg(long)]
    pub(crate) id: u32,
    /// How long to wait for the daemon to remove the device.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
}

pub(crate) fn cmd_fuse(args: FuseArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.cleanup {
        let r = augur::frontend::fuse::cleanup(dir)?;
        for dev in &r.loops {
            println!("detached {dev}");
        }
        if r.unmounted {
            println!("unmounted {}", dir.display());
        }
        if r.loops.is_empty() && !r.unmounted {
            println!("nothing to clean up at {}", dir.display());
        }
        return Ok(());
    }
    let Some(mount) = args.mount else {
        return Err(CliError::BadFlag("--mount DIR is required".into()).into());
    };
    args.process.protect();
    let replicas = args
        .replica
        .iter()
        .map(|s| ReplicaSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = augur::ArrayConfig::new(replicas);
    cfg.create_size = args.size;
    cfg.replica_depth = args.replica_depth;
    cfg.seed = args.seed;
    cfg.hedge_percentile = args.hedge_pct;
    args.meta.apply(&mut cfg);
    let model = model_entry(&args.model)?;
    let policy = Policy::from_name(&args.policy, Some(model.predictor.clone()))?;
    let opts = augur::frontend::fuse::FuseOptions {
        predict: args.predict.options()?,
        mount,
        threads: args.threads,
        attach_loop: args.attach_loop,
        control: Some(model),
        metrics: args.metrics,
        adapt: args.adapt.options()?,
    };
    Ok(augur::frontend::fuse::serve(cfg, policy, &opts)?)
}

pub(crate) fn cmd_serve(a: ServeArgs) -> anyhow::Result<()> {
    a.process.protect();
    // With --recover, what is left out comes from the device's record.
    let stored = match (a.recover, a.id) {
        (true, Some(id)) => Some(augur::frontend::ublk::recorded(id)?),
        _ => None,
    };
    let replica_texts = match (&stored, a.replica.is_empty()) {
        (Some(rec), true) => rec.replicas.clone(),
        _ => a.replica,
    };
    let policy_name = a
        .policy
        .or_else(|| stored.as_ref().map(|r| r.policy.clone()))
        .unwrap_or_else(|| "augur".into());
    let model = a
        .model
        .or_else(|| stored.as_ref().map(|r| r.model.clone()))
        .unwrap_or_else(|| "default".into());
    let replicas = replica_texts
        .iter()
        .map(|s| ReplicaSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = augur::ArrayConfig::new(replicas);
    cfg.create_size = a.size;
    cfg.replica_depth = a.replica_depth;
    cfg.seed = a.seed;
    cfg.hedge_percentile = a.hedge_pct;
    cfg.faults = fault_plan(&a.fault)?;
    a.meta.apply(&mut cfg);
    let entry = model_entry(&model)?;
    let policy = Policy::from_name(&policy_name, Some(entry.predictor.clone()))?;
    let opts = augur::frontend::ublk::ServeOptions {
        predict: a.predict.options()?,
        queues: a.queues,
        depth: a.depth,
        block_size: a.block_size,
        id: a.id,
        recover: a.recover,
        io_timeout: (!a.io_timeout.is_zero()).then_some(a.io_timeout),
        model,
        control: Some(entry),
        metrics: a.metrics,
        adapt: a.adapt.options()?,
    };
    let summary = augur::frontend::ublk::serve(cfg, policy, &opts)?;
    eprintln!("{}", summary.line());
    Ok(())
}

/// `--io-timeout`: whole seconds from 0 (the kernel's) to 3600.
fn parse_io_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(v) if v <= 3600 => Ok(Duration::from_secs(v)),
        _ => Err(format!(
            "'{s}' is not a whole number of seconds from 0 (the kernel's) to 3600"
        )),
    }
}

/// The model a daemon starts with (loaded for every policy, so that `augur
/// ctl policy set linnos` needs no file).
fn model_entry(spec: &str) -> anyhow::Result<ModelEntry> {
    let m = super::model::load_model(spec)?;
    Ok(ModelEntry::new(ModelPredictor::new(m, spec), spec))
}

/// The FUSE daemons answering on sockets in the run directory: (socket, status).
fn fuse_daemons() -> Vec<(String, serde_json::Value)> {
    super::ctl::sockets()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("fuse-"))
        })
        .filter_map(|p| super::ctl::quick_status(&p).map(|r| (p.display().to_string(), r.result)))
        .collect()
}

pub(crate) fn cmd_list(a: ListArgs) -> anyhow::Result<()> {
    let fuse = fuse_daemons();
    let devs = match augur::frontend::ublk::list() {
        Ok(d) => d,
        // Without ublk, FUSE daemons are still worth listing.
        Err(e) if !fuse.is_empty() => {
            eprintln!("augur list: no ublk devices: {e}");
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    if a.json {
        let mut all: Vec<serde_json::Value> = devs
            .iter()
            .map(|d| {
                let mut v = serde_json::to_value(d).unwrap_or_default();
                v["frontend"] = "ublk".into();
                v
            })
            .collect();
        for (sock, st) in &fuse {
            let mut v = st.clone();
            v["socket"] = sock.as_str().into();
            all.push(v);
        }
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if devs.is_empty() && fuse.is_empty() {
        println!("no Augur ublk devices");
    } else if !devs.is_empty() {
        print!("{}", augur::frontend::ublk::render_list(&devs));
    }
    if !fuse.is_empty() {
        println!(
            "{:<8} {:<40} {:<13} {:<9} SOCKET",
            "PID", "FUSE FILE", "POLICY", "MODEL"
        );
        for (sock, st) in &fuse {
            let f = |k: &str| {
                st[k]
                    .as_str()
                    .map_or_else(|| st[k].to_string(), str::to_string)
            };
            println!(
                "{:<8} {:<40} {:<13} {:<9} {sock}",
                f("pid"),
                f("device"),
                f("policy"),
                f("model")
            );
        }
    }
    Ok(())
}

pub(crate) fn cmd_stop(a: StopArgs) -> anyhow::Result<()> {
    match augur::frontend::ublk::stop(a.id, a.timeout)? {
        augur::frontend::ublk::StopOutcome::Stopped { path, pid } => {
            println!("stopped {path} (daemon {pid} removed it)")
        }
        augur::frontend::ublk::StopOutcome::Deleted { path } => {
            println!("deleted {path} (its daemon was gone)")
        }
    }
    Ok(())
}

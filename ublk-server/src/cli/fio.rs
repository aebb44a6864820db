//! `augur fio run`: the `bench/fio/` job suite against a device or file,
//! once per policy, into one results directory.

use std::path::PathBuf;

use augur::control::socket_for_ublk;
use augur::fio::{JOBS, SuiteOptions, find_socket_for, run_suite, target_size};
use clap::{Args, Subcommand};

use super::error::CliError;

/// `augur fio ...`.
#[derive(Subcommand)]
pub enum FioCmd {
    /// Run the fio job suite (bench/fio/) once per policy, switching policies live through the daemon's control socket; writes fio's json+ output and a manifest.
    Run(FioRunArgs),
}

/// `augur fio run`.
#[derive(Args)]
pub struct FioRunArgs {
    /// The device or file: a ublk device, the FUSE mount's disk.img or loop device, or a plain file.
    #[arg(long)]
    target: PathBuf,
    /// Policies, comma-separated, switched live through the daemon serving the target (without a daemon: at most one, recorded as given).
    #[arg(long)]
    policy: Option<String>,
    /// Jobs, comma-separated (default: all): randread-qd1, randread-qd16, randread-qd64, mixed-70-30, seqread-128k, seqwrite-128k, burst-write-randread, verify.
    #[arg(long)]
    jobs: Option<String>,
    /// The results directory (new, or empty). Default: fio-results-<unix time>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The daemon's control socket (default: the daemon whose device is the target, if one answers).
    #[arg(long, conflicts_with = "id")]
    socket: Option<PathBuf>,
    /// The ublk device id of the daemon (its socket in the run directory).
    #[arg(long)]
    id: Option<u32>,
    /// Run time of each time-based job.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    runtime: std::time::Duration,
    /// Bytes of the target the jobs use (default: the whole target; 256M for a new file).
    #[arg(long, value_parser = super::args::parse_size)]
    size: Option<u64>,
    /// fio's ioengine.
    #[arg(long, default_value = "io_uring")]
    ioengine: String,
    /// fio's direct (O_DIRECT): 1 or 0 (default: 1 on a block device, 0 on a file).
    #[arg(long)]
    direct: Option<u8>,
    /// The emulator profile to record in the manifest.
    #[arg(long)]
    profile: Option<String>,
    /// The model to record in the manifest (default: the daemon's model id).
    #[arg(long)]
    model: Option<String>,
    /// The fio binary.
    #[arg(long, default_value = "fio")]
    fio: PathBuf,
}

fn list(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `augur fio ...`.
pub fn cmd_fio(c: FioCmd) -> anyhow::Result<()> {
    let FioCmd::Run(a) = c;
    let is_blk = std::fs::metadata(&a.target).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_block_device()
    });
    let size = a
        .size
        .or_else(|| target_size(&a.target).filter(|&s| s > 0))
        .unwrap_or(256 << 20);
    let direct = match a.direct {
        None => is_blk,
        Some(0) => false,
        Some(1) => true,
        Some(d) => return Err(CliError::BadFlag(format!("--direct is 0 or 1, not {d}")).into()),
    };
    let socket = a
        .socket
        .clone()
        .or(a.id.map(socket_for_ublk))
        .or_else(|| find_socket_for(&a.target));
    let jobs = match list(&a.jobs) {
        j if j.is_empty() => JOBS.iter().map(|j| j.0.to_string()).collect(),
        j => j,
    };
    let out = a.out.clone().unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("fio-results-{t}"))
    });
    let opts = SuiteOptions {
        target: a.target.clone(),
        policies: list(&a.policy),
        jobs,
        out: out.clone(),
        socket,
        runtime_s: a.runtime.as_secs().max(1),
        size,
        direct,
        ioengine: a.ioengine.clone(),
        fio: a.fio.clone(),
        profile: a.profile.clone(),
        model: a.model.clone(),
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let m = run_suite(&opts, &mut |line| eprintln!("augur fio: {line}")).map_err(|e| {
        if e.is_user_error() {
            anyhow::Error::new(CliError::BadFlag(e.to_string()))
        } else {
            anyhow::Error::new(e)
        }
    })?;
    println!(
        "{}: {} fio run(s) ({} job(s) x {} policy run(s)); augur report {} --out DIR draws them",
        out.display(),
        m.runs.len(),
        opts.jobs.len(),
        m.runs.len() / opts.jobs.len().max(1),
        out.display()
    );
    Ok(())
}

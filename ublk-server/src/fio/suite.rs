//! `augur fio run`: the job suite of `bench/fio/` against one target, once
//! per routing policy, into one results directory with a manifest.
//!
//! The layout of a results directory:
//!
//! ```text
//! DIR/manifest.json           machine, kernel, commit, profile, model, fio version, command lines, runs
//! DIR/jobs/JOB.fio            the job files used
//! DIR/POLICY/JOB.json         fio's json+ output (full clat histograms)
//! DIR/POLICY/JOB_iops.N.log   fio's IOPS log, 100 ms averages (N: the job's index in the file)
//! DIR/POLICY/JOB_clat_hist.N.log  fio's completion-latency histogram per 100 ms (read p50/p99/p99.9 over time)
//! ```

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control::{Command, request};

/// The job files of `bench/fio/`, built into the binary: `(name, text)`.
pub const JOBS: &[(&str, &str)] = &[
    (
        "randread-qd1",
        include_str!("../../../bench/fio/randread-qd1.fio"),
    ),
    (
        "randread-qd16",
        include_str!("../../../bench/fio/randread-qd16.fio"),
    ),
    (
        "randread-qd64",
        include_str!("../../../bench/fio/randread-qd64.fio"),
    ),
    (
        "mixed-70-30",
        include_str!("../../../bench/fio/mixed-70-30.fio"),
    ),
    (
        "seqread-128k",
        include_str!("../../../bench/fio/seqread-128k.fio"),
    ),
    (
        "seqwrite-128k",
        include_str!("../../../bench/fio/seqwrite-128k.fio"),
    ),
    (
        "burst-write-randread",
        include_str!("../../../bench/fio/burst-write-randread.fio"),
    ),
    ("verify", include_str!("../../../bench/fio/verify.fio")),
];

/// The name of the manifest in a results directory.
pub const MANIFEST: &str = "manifest.json";

/// What `augur fio run` does.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// The device or file fio runs on.
    pub target: PathBuf,
    /// Policies to run, in order (empty: the daemon's current one, once).
    pub policies: Vec<String>,
    /// Job names (from [`JOBS`]) in order.
    pub jobs: Vec<String>,
    /// The results directory (created; must not exist or be empty).
    pub out: PathBuf,
    /// The daemon's control socket, when policies are switched live.
    pub socket: Option<PathBuf>,
    /// Seconds per time-based job.
    pub runtime_s: u64,
    /// Bytes of the target the jobs use.
    pub size: u64,
    /// fio's `direct`.
    pub direct: bool,
    /// fio's `ioengine`.
    pub ioengine: String,
    /// The fio binary.
    pub fio: PathBuf,
    /// The emulator profile to record in the manifest (the daemon does not say).
    pub profile: Option<String>,
    /// The model to record (default: the daemon's model id, when it answers).
    pub model: Option<String>,
    /// The command line that asked for this run.
    pub command_line: String,
}

/// Why the suite did not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// Bad options (the user's to fix).
    #[error("{0}")]
    Bad(String),
    /// fio could not be started, or failed.
    #[error("{0}")]
    Fio(String),
    /// The daemon refused or did not answer.
    #[error("{0}")]
    Control(String),
    /// Writing the results failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl SuiteError {
    /// True for errors in the user's input (exit status 2).
    pub fn is_user_error(&self) -> bool {
        matches!(self, SuiteError::Bad(_))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SuiteError + '_ {
    move |source| SuiteError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The machine a run was made on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Host name.
    pub hostname: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal of /proc/meminfo, KiB.
    pub mem_kib: u64,
}

impl Machine {
    /// This machine.
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            hostname: read_trim("/proc/sys/kernel/hostname"),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_else(|| "unknown".into()),
            mem_kib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0),
        }
    }
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    read_trim("/proc/sys/kernel/osrelease")
}

/// The git commit of the working directory (`git rev-parse --short HEAD`,
/// with `-dirty` when there are uncommitted changes), or `unknown`.
pub fn git_commit() -> String {
    let out = |args: &[&str]| {
        Process::new("git")
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match out(&["rev-parse", "--short", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            let dirty = out(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}-dirty") } else { c }
        }
        _ => "unknown".into(),
    }
}

/// One fio run of the suite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunEntry {
    /// The policy it ran under (`unknown` when none was given and no daemon said).
    pub policy: String,
    /// How the policy was set: `live` (through the control socket),
    /// `given` (named by the user, not checked: no daemon), `daemon` (the
    /// daemon's own, as it reported it) or `unknown`.
    pub policy_source: String,
    /// The job's name.
    pub job: String,
    /// fio's json+ output, relative to the results directory.
    pub result: String,
    /// The IOPS logs, relative to the results directory.
    pub iops_logs: Vec<String>,
    /// The completion-latency histogram logs (100 ms), relative to the
    /// results directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hist_logs: Vec<String>,
    /// The fio command line, with the environment it set.
    pub command: String,
    /// fio's exit status.
    pub exit_status: i32,
    /// The daemon's counters over the job (with a control socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<CounterDelta>,
}

/// What the daemon counted while one job ran (from `augur ctl stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterDelta {
    /// Read requests completed.
    pub reads: u64,
    /// Reads served by a replica other than their primary.
    pub rerouted: u64,
    /// Hedged second copies (extra replica reads).
    pub hedges: u64,
    /// Reads the predictor's decisions can be judged on.
    pub judged_reads: u64,
    /// Judged reads predicted right.
    pub correct_predictions: u64,
}

impl CounterDelta {
    fn read(socket: &Path) -> Option<Self> {
        let r = request(socket, Command::Stats, Duration::from_secs(10)).ok()?;
        let c = r.result.get("counters")?;
        let g = |k: &str| c.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Some(CounterDelta {
            reads: g("reads"),
            rerouted: g("rerouted"),
            hedges: g("hedges"),
            judged_reads: g("judged_reads"),
            correct_predictions: g("correct_predictions"),
        })
    }

    fn since(self, before: Self) -> Self {
        CounterDelta {
            reads: self.reads.saturating_sub(before.reads),
            rerouted: self.rerouted.saturating_sub(before.rerouted),
            hedges: self.hedges.saturating_sub(before.hedges),
            judged_reads: self.judged_reads.saturating_sub(before.judged_reads),
            correct_predictions: self
                .correct_predictions
                .saturating_sub(before.correct_predictions),
        }
    }
}

/// The manifest of a results directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `augur-fio-run`.
    pub kind: String,
    /// Seconds since the epoch when the run began.
    pub started_unix_s: u64,
    /// The machine.
    pub machine: Machine,
    /// The kernel release.
    pub kernel: String,
    /// The commit of the working directory it ran in.
    pub commit: String,
    /// The emulator profile, as given (or `unknown`).
    pub profile: String,
    /// The model (the daemon's model id, or as given, or `unknown`).
    pub model: String,
    /// `fio --version`.
    pub fio_version: String,
    /// The target.
    pub target: String,
    /// Bytes of it the jobs used.
    pub size: u64,
    /// Seconds per time-based job.
    pub runtime_s: u64,
    /// The control socket policies were switched through, if any.
    pub socket: Option<String>,
    /// The augur command line.
    pub command: String,
    /// Every fio run, in order.
    pub runs: Vec<RunEntry>,
}

/// The size of a file or block device (seeking to its end), if it exists.
pub fn target_size(p: &Path) -> Option<u64> {
    use std::io::Seek;
    let mut f = std::fs::File::open(p).ok()?;
    f.seek(std::io::SeekFrom::End(0)).ok()
}

/// The control socket of the daemon serving `target`, if one answers: the
/// socket whose daemon's status names the target as its device.
pub fn find_socket_for(target: &Path) -> Option<PathBuf> {
    let want = std::fs::canonicalize(target).ok()?;
    let dir = crate::control::run_dir();
    let mut socks: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    socks.sort();
    socks.into_iter().find(|s| {
        request(s, Command::Status, Duration::from_secs(2))
            .ok()
            .filter(|r| r.ok)
            .and_then(|r| {
                let dev = r.result.get("device")?.as_str()?.to_string();
                std::fs::canonicalize(dev).ok()
            })
            .is_some_and(|d| d == want)
    })
}

fn fio_version(fio: &Path) -> Result<String, SuiteError> {
    let o = Process::new(fio)
        .arg("--version")
        .output()
        .map_err(|e| SuiteError::Bad(format!("cannot run {}: {e} (install fio)", fio.display())))?;
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// A policy name safe as a directory name (`linnos+hedge` stays,
/// `stall-bound:200us` becomes `stall-bound_200us`).
fn dir_name(policy: &str) -> String {
    policy
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Runs the suite; `progress` gets one line per step.
pub fn run_suite(o: &SuiteOptions, progress: &mut dyn FnMut(&str)) -> Result<Manifest, SuiteError> {
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut jobs = Vec::new();
    for j in &o.jobs {
        let text = JOBS
            .iter()
            .find(|(n, _)| n == j)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                SuiteError::Bad(format!(
                    "unknown fio job '{j}' (known: {})",
                    JOBS.iter().map(|j| j.0).collect::<Vec<_>>().join(", ")
                ))
            })?;
        jobs.push((j.clone(), text));
    }
    if jobs.is_empty() {
        return Err(SuiteError::Bad("no fio jobs to run".into()));
    }
    if o.size < 1 << 20 {
        return Err(SuiteError::Bad(format!(
            "--size must be at least 1 MiB, not {} bytes",
            o.size
        )));
    }
    if o.runtime_s == 0 {
        return Err(SuiteError::Bad("--runtime must be at least 1s".into()));
    }
    if o.socket.is_none() && o.policies.len() > 1 {
        return Err(SuiteError::Bad(format!(
            "switching between {} policies needs the daemon's control socket (--socket PATH or --id N); none serves {}",
            o.policies.len(),
            o.target.display()
        )));
    }
    if o.out.exists()
        && std::fs::read_dir(&o.out)
            .map_err(io_err(&o.out))?
            .next()
            .is_some()
    {
        return Err(SuiteError::Bad(format!(
            "{} exists and is not empty: give a new results directory",
            o.out.display()
        )));
    }
    let fio_version = fio_version(&o.fio)?;
    let jobs_dir = o.out.join("jobs");
    std::fs::create_dir_all(&jobs_dir).map_err(io_err(&jobs_dir))?;
    for (name, text) in &jobs {
        let p = jobs_dir.join(format!("{name}.fio"));
        std::fs::write(&p, text).map_err(io_err(&p))?;
    }
    let timeout = Duration::from_secs(10);
    let status = o
        .socket
        .as_ref()
        .map(|s| {
            request(s, Command::Status, timeout)
                .map_err(|e| SuiteError::Control(e.to_string()))
                .and_then(|r| {
                    if r.ok {
                        Ok(r.result)
                    } else {
                        Err(SuiteError::Control(format!(
                            "{}: {}",
                            s.display(),
                            r.error.unwrap_or_default()
                        )))
                    }
                })
        })
        .transpose()?;
    let model = o.model.clone().unwrap_or_else(|| {
        status
            .as_ref()
            .and_then(|s| s.get("model"))
            .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
            .unwrap_or_else(|| "unknown".into())
    });
    // (policy name, how it is known, switch through the socket?)
    let plan: Vec<(String, &str, bool)> = match (&o.socket, o.policies.as_slice()) {
        (Some(_), []) => vec![(
            status
                .as_ref()
                .and_then(|s| s.get("policy"))
                .and_then(|p| p.as_str())
                .unwrap_or("unknown")
                .to_string(),
            "daemon",
            false,
        )],
        (Some(_), ps) => ps.iter().map(|p| (p.clone(), "live", true)).collect(),
        (None, []) => vec![("unknown".into(), "unknown", false)],
        (None, ps) => ps.iter().map(|p| (p.clone(), "given", false)).collect(),
    };
    let mut manifest = Manifest {
        kind: "augur-fio-run".into(),
        started_unix_s,
        machine: Machine::this(),
        kernel: kernel_release(),
        commit: git_commit(),
        profile: o.profile.clone().unwrap_or_else(|| "unknown".into()),
        model,
        fio_version,
        target: o.target.display().to_string(),
        size: o.size,
        runtime_s: o.runtime_s,
        socket: o.socket.as_ref().map(|s| s.display().to_string()),
        command: o.command_line.clone(),
        runs: Vec::new(),
    };
    let write_manifest = |m: &Manifest| -> Result<(), SuiteError> {
        let p = o.out.join(MANIFEST);
        let text = serde_json::to_string_pretty(m)
            .map_err(|e| SuiteError::Bad(format!("manifest: {e}")))?;
        std::fs::write(&p, text + "\n").map_err(io_err(&p))
    };
    for (policy, source, switch) in &plan {
        if *switch && let Some(sock) = &o.socket {
            progress(&format!(
                "policy {policy}: switching through {}",
                sock.display()
            ));
            let r = request(
                sock,
                Command::PolicySet {
                    name: policy.clone(),
                },
                timeout,
            )
            .map_err(|e| SuiteError::Control(e.to_string()))?;
            if !r.ok {
                return Err(SuiteError::Bad(format!(
                    "the daemon refused policy '{policy}': {}",
                    r.error.unwrap_or_default()
                )));
            }
        }
        let pdir_name = dir_name(policy);
        let pdir = o.out.join(&pdir_name);
        std::fs::create_dir_all(&pdir).map_err(io_err(&pdir))?;
        for (job, _) in &jobs {
            let result = pdir.join(format!("{job}.json"));
            let job_file = jobs_dir.join(format!("{job}.fio"));
            let env = [
                ("AUGUR_TARGET", o.target.display().to_string()),
                ("AUGUR_SIZE", o.size.to_string()),
                ("AUGUR_RUNTIME", o.runtime_s.to_string()),
                ("AUGUR_IOENGINE", o.ioengine.clone()),
                ("AUGUR_DIRECT", u8::from(o.direct).to_string()),
            ];
            let iops_prefix = pdir.join(job);
            let args = [
                "--output-format=json+".to_string(),
                format!("--output={}", result.display()),
                format!("--write_iops_log={}", iops_prefix.display()),
                "--log_avg_msec=100".to_string(),
                format!("--write_hist_log={}", iops_prefix.display()),
                "--log_hist_msec=100".to_string(),
                job_file.display().to_string(),
            ];
            let command = format!(
                "{} {} {}",
                env.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                o.fio.display(),
                args.join(" ")
            );
            progress(&format!("policy {policy}: {job}"));
            let before = o.socket.as_deref().and_then(CounterDelta::read);
            let out = Process::new(&o.fio)
                .args(&args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| SuiteError::Fio(format!("cannot run {}: {e}", o.fio.display())))?;
            let code = out.status.code().unwrap_or(-1);
            let counters = match (before, o.socket.as_deref().and_then(CounterDelta::read)) {
                (Some(b), Some(a)) => Some(a.since(b)),
                _ => None,
            };
            let mut iops_logs: Vec<String> = std::fs::read_dir(&pdir)
                .map_err(io_err(&pdir))?
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("{job}_iops.")) && n.ends_with(".log"))
                .map(|n| format!("{pdir_name}/{n}"))
                .collect();
            iops_logs.sort();
            let mut hist_logs: Vec<String> = std::fs::read_dir(&pdir)
                .map_err(io_err(&pdir))?
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("{job}_clat_hist.")) && n.ends_with(".log"))
                .map(|n| format!("{pdir_name}/{n}"))
                .collect();
            hist_logs.sort();
            manifest.runs.push(RunEntry {
                hist_logs,
                policy: policy.clone(),
                policy_source: source.to_string(),
                job: job.clone(),
                result: format!("{pdir_name}/{job}.json"),
                iops_logs,
                command,
                exit_status: code,
                counters,
            });
            write_manifest(&manifest)?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                return Err(SuiteError::Fio(format!(
                    "fio failed on job {job} (policy {policy}, exit status {code}): {}",
                    err.lines()
                        .rfind(|l| !l.trim().is_empty())
                        .unwrap_or("no message")
                )));
            }
        }
    }
    write_manifest(&manifest)?;
    Ok(manifest)
}

/// Reads a results directory's manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest, SuiteError> {
    let p = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
    serde_json::from_str(&text).map_err(|e| {
        SuiteError::Bad(format!(
            "{}: not an augur fio run manifest: {e}",
            p.display()
        ))
    })
}

/// Reads fio IOPS logs (`time ms, value, direction, ...` lines) into IOPS
/// per 100 ms interval, all directions and logs added: `(start s, IOPS)`.
pub fn read_iops_logs(paths: &[PathBuf]) -> Result<Vec<(f64, f64)>, SuiteError> {
    let mut buckets: std::collections::BTreeMap<u64, f64> = Default::default();
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(io_err(p))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mut f = line.split(',').map(str::trim);
            let (Some(t), Some(v)) = (f.next(), f.next()) else {
                return Err(SuiteError::Bad(format!(
                    "{} line {}: not a fio log line: '{line}'",
                    p.display(),
                    n + 1
                )));
            };
            let (Ok(t), Ok(v)) = (t.parse::<u64>(), v.parse::<f64>()) else {
                return Err(SuiteError::Bad(format!(
                    "{} line {}: not a fio log line: '{line}'",
                    p.display(),
                    n + 1
                )));
            };
            // Entries are stamped at the end of their 100 ms window
            // (101, 201, ... 503 ms): the window that ends nearest.
            *buckets.entry(window_of(t)).or_default() += v;
        }
    }
    Ok(buckets
        .into_iter()
        .map(|(b, v)| (b as f64 / 10.0, v))
        .collect())
}

/// The 100 ms window a fio log entry stamped at `t_ms` (its window's end) covers.
fn window_of(t_ms: u64) -> u64 {
    ((t_ms + 50) / 100).saturating_sub(1)
}

/// fio's histogram bins: 2^6 per group (`FIO_IO_U_PLAT_BITS`).
const PLAT_BITS: u32 = 6;
const PLAT_VAL: u64 = 1 << PLAT_BITS;

/// The latency (ns) fio's histogram bin `idx` stands for: the middle of
/// its range (fio's `plat_idx_to_val`).
pub fn plat_idx_to_ns(idx: usize) -> f64 {
    let idx = idx as u64;
    if idx < PLAT_VAL << 1 {
        return idx as f64;
    }
    let error_bits = (idx >> PLAT_BITS) - 1;
    let base = 1u64 << (error_bits + u64::from(PLAT_BITS));
    let k = idx % PLAT_VAL;
    base as f64 + (k as f64 + 0.5) * (1u64 << error_bits) as f64
}

/// One 100 ms window of a fio run: its start (s) and read p50/p99/p99.9 (µs).
pub type WindowLatency = (f64, (f64, f64, f64));

/// Reads fio completion-latency histogram logs (`time ms, direction, bs,
/// bin0, bin1, ...`, one line per 100 ms window and direction) into read
/// p50/p99/p99.9 (µs) per window, all logs added: `(start s, (p50, p99, p99.9))`.
pub fn read_hist_logs(paths: &[PathBuf]) -> Result<Vec<WindowLatency>, SuiteError> {
    let mut windows: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(io_err(p))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = || {
                SuiteError::Bad(format!(
                    "{} line {}: not a fio histogram log line",
                    p.display(),
                    n + 1
                ))
            };
            let f: Vec<u64> = line
                .split(',')
                .map(|x| x.trim().parse::<u64>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?;
            if f.len() < 4 {
                return Err(bad());
            }
            if f[1] != 0 {
                continue; // writes and trims
            }
            let bins = windows.entry(window_of(f[0])).or_default();
            if bins.len() < f.len() - 3 {
                bins.resize(f.len() - 3, 0);
            }
            for (b, c) in bins.iter_mut().zip(&f[3..]) {
                *b += c;
            }
        }
    }
    let q = |bins: &[u64], total: u64, q: f64| -> f64 {
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in bins.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return (plat_idx_to_ns(i) / 100.0).round() / 10.0;
            }
        }
        0.0
    };
    Ok(windows
        .into_iter()
        .filter_map(|(w, bins)| {
            let total: u64 = bins.iter().sum();
            (total > 0).then(|| {
                (
                    w as f64 / 10.0,
                    (
                        q(&bins, total, 0.5),
                        q(&bins, total, 0.99),
                        q(&bins, total, 0.999),
                    ),
                )
            })
        })
        .collect())
}

#[cfg(test)]
mod hist_tests {
    use super::*;

    #[test]
    fn bins_map_to_fio_values_and_windows_to_percentiles() {
        // fio: indexes below 128 are the value itself; then groups of 64
        // bins, each twice as wide as the last.
        assert_eq!(plat_idx_to_ns(5), 5.0);
        assert_eq!(plat_idx_to_ns(127), 127.0);
        assert_eq!(plat_idx_to_ns(128), 128.0 + 0.5 * 2.0);
        assert_eq!(plat_idx_to_ns(192), 256.0 + 0.5 * 4.0);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j_clat_hist.1.log");
        let mut bins = vec![0u64; 1856];
        bins[100] = 980; // 100 ns
        bins[1000] = 20; // far out: 2 %
        let line = |t: u64, dir: u64| {
            format!(
                "{t}, {dir}, 4096, {}\n",
                bins.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        std::fs::write(&p, line(101, 0) + &line(101, 1) + &line(201, 0)).unwrap();
        let w = read_hist_logs(std::slice::from_ref(&p)).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].0, 0.0, "stamped at 101 ms: the first window");
        assert_eq!(w[1].0, 0.1);
        let far = (plat_idx_to_ns(1000) / 100.0).round() / 10.0;
        assert_eq!(
            w[0].1,
            (0.1, far, far),
            "p50 100 ns, p99 and p99.9 the far bin"
        );
        std::fs::write(&p, "101, 0, x\n").unwrap();
        let e = read_hist_logs(&[p]).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}

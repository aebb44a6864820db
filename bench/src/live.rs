//! What the live-device benchmarks share: an `augur fuse` daemon on three
//! emulated replicas, fio runs read back from their `json+` output, and
//! percentiles over merged fio histograms.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// A running `augur fuse` daemon; dropping it stops it (SIGTERM) and
/// removes the mount point.
pub struct FuseDaemon {
    /// The daemon.
    pub child: Child,
    /// The mount point.
    pub mount: PathBuf,
    /// The device file in it.
    pub file: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
}

impl Drop for FuseDaemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, not yet waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

impl FuseDaemon {
    /// Starts `augur fuse` on three emulated `profile` replicas of `size`
    /// in `dir` (made anew), with `extra` flags, and waits until it serves.
    pub fn start(
        augur: &Path,
        dir: &Path,
        profile: &str,
        size: &str,
        extra: &[&str],
    ) -> anyhow::Result<FuseDaemon> {
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount)?;
        for r in ["a", "b", "c"] {
            let _ = std::fs::remove_file(dir.join(r));
        }
        let mut cmd = Command::new(augur);
        cmd.arg("fuse");
        for r in ["a", "b", "c"] {
            cmd.arg("--replica")
                .arg(format!("emu:{profile}:{}", dir.join(r).display()));
        }
        cmd.args(["--size", size, "--mount"])
            .arg(&mount)
            .args(extra);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting augur fuse")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let Some(file) = line.trim().strip_prefix("file ") else {
            bail!("augur fuse said {line:?}");
        };
        let name = augur::control::fuse_name(&mount.canonicalize()?);
        Ok(FuseDaemon {
            child,
            file: PathBuf::from(file),
            socket: augur::control::run_dir().join(format!("{name}.sock")),
            mount,
        })
    }
}

/// The augur binary: `given`, or the one next to the running executable.
pub fn augur_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => Ok(p.to_path_buf()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("no exe dir")?
            .join("augur")),
    }
}

/// A directory for replica files: in /dev/shm where there is one (memory,
/// so the emulator's latencies are the only ones), else the temp dir.
pub fn replica_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let base = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    Ok(tempfile::Builder::new().prefix(prefix).tempdir_in(base)?)
}

/// What one fio run measured.
#[derive(Clone, Debug, Default)]
pub struct FioRun {
    /// Read completion latency: fio's histogram bins (ns) and their counts.
    pub read_bins: BTreeMap<u64, u64>,
    /// Read IOPS.
    pub read_iops: f64,
    /// Errors fio reported (and 1 if it failed).
    pub errors: u64,
}

/// Runs fio with `args` (a job on the command line) and reads its `json+`
/// output back.
pub fn fio(args: &[String]) -> anyhow::Result<FioRun> {
    let out = Command::new("fio")
        .args(args)
        .arg("--output-format=json+")
        .output()
        .context("running fio (apt-get install fio)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('{').context("fio printed no JSON")?;
    let v: serde_json::Value = serde_json::from_str(&text[start..])
        .with_context(|| format!("fio JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
    let job = &v["jobs"][0];
    let mut read_bins = BTreeMap::new();
    if let Some(b) = job["read"]["clat_ns"]["bins"].as_object() {
        for (k, c) in b {
            *read_bins.entry(k.parse()?).or_insert(0) += c.as_u64().unwrap_or(0);
        }
    }
    Ok(FioRun {
        read_bins,
        read_iops: job["read"]["iops"].as_f64().unwrap_or(0.0),
        errors: job["error"].as_u64().unwrap_or(1) + u64::from(!out.status.success()),
    })
}

/// Adds `from`'s bins into `into`.
pub fn merge(into: &mut BTreeMap<u64, u64>, from: &BTreeMap<u64, u64>) {
    for (k, c) in from {
        *into.entry(*k).or_insert(0) += c;
    }
}

/// The `q` quantile of fio histogram bins, microseconds (0 when empty).
pub fn quantile(bins: &BTreeMap<u64, u64>, q: f64) -> f64 {
    let n: u64 = bins.values().sum();
    let rank = (q * n as f64).ceil() as u64;
    let mut seen = 0;
    for (ns, c) in bins {
        seen += c;
        if seen >= rank {
            return *ns as f64 / 1000.0;
        }
    }
    0.0
}

//! Reading report inputs: `augur bench --json` (and `augur demo --json`)
//! files, `augur fio run` directories, single fio json+ files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::ReportError;
use crate::fio::{
    FioDirection, FioOutput, Manifest, parse_fio_json, read_hist_logs, read_iops_logs,
    read_manifest,
};
use crate::load::{GcWindow, IntervalStats};

/// Where a [`Series`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceKind {
    /// `augur bench --json` (or `augur demo --json`).
    Bench,
    /// fio (an `augur fio run` directory or a json+ file).
    Fio,
}

impl SourceKind {
    /// `bench` or `fio`.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Bench => "bench",
            SourceKind::Fio => "fio",
        }
    }
}

/// Read latency summary, microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lat {
    /// Mean.
    pub avg: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// 99.99th.
    pub p9999: f64,
}

/// One interval of a run over time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Point {
    /// Start, seconds since the run began.
    pub t_s: f64,
    /// Requests per second.
    pub iops: f64,
    /// Read p50/p99/p99.9, microseconds, where known (and reads completed).
    pub lat: Option<(f64, f64, f64)>,
}

/// One run of one policy: a row of the table and a line of the plots.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// The routing policy.
    pub policy: String,
    /// Where it came from.
    pub kind: Option<SourceKind>,
    /// The input path (and, for fio, the job).
    pub source: String,
    /// The fio job, for fio runs.
    pub job: Option<String>,
    /// The clock (`sim`, `real`), for bench runs.
    pub clock: Option<String>,
    /// The queue depth, where known.
    pub depth: Option<u32>,
    /// Requests per second.
    pub iops: f64,
    /// Reads completed.
    pub reads: u64,
    /// Read latency, when there were reads.
    pub read: Option<Lat>,
    /// Percent of reads rerouted, where known.
    pub reroute_pct: Option<f64>,
    /// Extra replica reads (hedges) as a percent of reads, where known.
    pub extra_io_pct: Option<f64>,
    /// Prediction accuracy, percent of judged reads, where known.
    pub accuracy_pct: Option<f64>,
    /// The read latency histogram: `(upper bound us, count)`, ascending.
    pub read_hist_us: Vec<(f64, u64)>,
    /// The run over time.
    pub timeline: Vec<Point>,
    /// GC windows of emulated replicas: `(replica, start s, end s)`.
    pub gc_windows: Vec<(usize, f64, f64)>,
    /// Model swaps, seconds since the run began.
    pub model_swaps_s: Vec<f64>,
}

impl Series {
    /// The name of its line in the plots: the policy, with the job for fio
    /// runs and the clock for bench runs.
    pub fn label(&self) -> String {
        match (&self.job, &self.clock) {
            (Some(j), _) => format!("{} ({j})", self.policy),
            (None, Some(c)) => format!("{} ({c})", self.policy),
            _ => self.policy.clone(),
        }
    }
}

/// Everything a report is made from.
#[derive(Clone, Debug, Default)]
pub struct ReportInput {
    /// The paths given, in order.
    pub paths: Vec<PathBuf>,
    /// Every run, in input order.
    pub series: Vec<Series>,
    /// The manifests of fio run directories, with their directory.
    pub manifests: Vec<(PathBuf, Manifest)>,
}

#[derive(Deserialize)]
struct BenchLat {
    avg: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    p9999: f64,
}

#[derive(Deserialize)]
struct BenchRow {
    policy: String,
    clock: Option<String>,
    depth: Option<u32>,
    iops: f64,
    read_lat_us: BenchLat,
    reads: Option<u64>,
    reroute_pct: Option<f64>,
    extra_io_pct: Option<f64>,
    prediction_accuracy_pct: Option<f64>,
    #[serde(default)]
    read_hist_us: Vec<[u64; 2]>,
    #[serde(default)]
    intervals: Vec<IntervalStats>,
    #[serde(default)]
    gc_windows: Vec<GcWindow>,
    #[serde(default)]
    model_swaps_s: Vec<f64>,
}

fn bad(path: &Path, msg: impl Into<String>) -> ReportError {
    ReportError::Input {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

fn bench_series(path: &Path, rows: &[Value], out: &mut Vec<Series>) -> Result<(), ReportError> {
    if rows.is_empty() {
        return Err(bad(path, "no policy rows (an empty bench result)"));
    }
    for (i, v) in rows.iter().enumerate() {
        let r: BenchRow = serde_json::from_value(v.clone()).map_err(|e| {
            bad(
                path,
                format!("row {i} is not an augur bench --json policy object: {e}"),
            )
        })?;
        let reads = r.reads.unwrap_or(0);
        out.push(Series {
            policy: r.policy,
            kind: Some(SourceKind::Bench),
            source: path.display().to_string(),
            job: None,
            clock: r.clock,
            depth: r.depth,
            iops: r.iops,
            reads,
            read: Some(Lat {
                avg: r.read_lat_us.avg,
                p50: r.read_lat_us.p50,
                p99: r.read_lat_us.p99,
                p999: r.read_lat_us.p999,
                p9999: r.read_lat_us.p9999,
            }),
            reroute_pct: r.reroute_pct,
            extra_io_pct: r.extra_io_pct,
            accuracy_pct: r.prediction_accuracy_pct,
            read_hist_us: r.read_hist_us.iter().map(|b| (b[0] as f64, b[1])).collect(),
            timeline: r
                .intervals
                .iter()
                .map(|iv| Point {
                    t_s: iv.t_s,
                    iops: iv.iops,
                    lat: (iv.reads > 0).then_some((
                        iv.read_p50_us as f64,
                        iv.read_p99_us as f64,
                        iv.read_p999_us as f64,
                    )),
                })
                .collect(),
            gc_windows: r
                .gc_windows
                .iter()
                .map(|g| (g.replica, g.start_s, g.end_s))
                .collect(),
            model_swaps_s: r.model_swaps_s,
        });
    }
    Ok(())
}

/// The reads of every job of one fio output, added together.
fn merged_reads(o: &FioOutput) -> FioDirection {
    let mut bins: BTreeMap<u64, u64> = BTreeMap::new();
    let mut d = FioDirection::default();
    let mut weighted = 0.0;
    for j in &o.jobs {
        d.total_ios += j.read.total_ios;
        d.io_bytes += j.read.io_bytes;
        d.iops += j.read.iops;
        weighted += j.read.clat_mean_ns * j.read.total_ios as f64;
        for &(v, c) in &j.read.clat_bins {
            *bins.entry(v).or_default() += c;
        }
    }
    d.clat_mean_ns = weighted / d.total_ios.max(1) as f64;
    d.clat_bins = bins.into_iter().collect();
    d
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

/// A fio output as one series (`policy` as given).
fn fio_series(
    o: &FioOutput,
    source: String,
    policy: String,
    job: String,
    iops_logs: &[PathBuf],
    hist_logs: &[PathBuf],
) -> Result<Series, ReportError> {
    let reads = merged_reads(o);
    let runtime_s = o.jobs.iter().map(|j| j.runtime_ms).max().unwrap_or(0) as f64 / 1e3;
    let ios: u64 = o
        .jobs
        .iter()
        .map(|j| j.read.total_ios + j.write.total_ios)
        .sum();
    let iops = if runtime_s > 0.0 {
        (ios as f64 / runtime_s).round()
    } else {
        o.jobs
            .iter()
            .map(|j| j.read.iops + j.write.iops)
            .sum::<f64>()
            .round()
    };
    let read = (reads.total_ios > 0 && !reads.clat_bins.is_empty()).then(|| Lat {
        avg: (reads.clat_mean_ns / 100.0).round() / 10.0,
        p50: us(reads.quantile_ns(0.50)),
        p99: us(reads.quantile_ns(0.99)),
        p999: us(reads.quantile_ns(0.999)),
        p9999: us(reads.quantile_ns(0.9999)),
    });
    let err = |e: crate::fio::SuiteError| ReportError::Input {
        path: source.clone(),
        msg: e.to_string(),
    };
    let lat: std::collections::BTreeMap<u64, (f64, f64, f64)> = read_hist_logs(hist_logs)
        .map_err(err)?
        .into_iter()
        .map(|(t, l)| ((t * 10.0).round() as u64, l))
        .collect();
    let timeline = read_iops_logs(iops_logs)
        .map_err(err)?
        .into_iter()
        .map(|(t_s, iops)| Point {
            t_s,
            iops,
            lat: lat.get(&((t_s * 10.0).round() as u64)).copied(),
        })
        .collect();
    Ok(Series {
        policy,
        kind: Some(SourceKind::Fio),
        source,
        job: Some(job),
        clock: None,
        // The depth of the job that reads (the others only write).
        depth: o
            .jobs
            .iter()
            .find(|j| j.read.total_ios > 0)
            .or(o.jobs.first())
            .and_then(|j| j.iodepth),
        iops,
        reads: reads.total_ios,
        read,
        reroute_pct: None,
        extra_io_pct: None,
        accuracy_pct: None,
        read_hist_us: reads
            .clat_bins
            .iter()
            .map(|&(v, c)| (v as f64 / 1e3, c))
            .collect(),
        timeline,
        gc_windows: Vec::new(),
        model_swaps_s: Vec::new(),
    })
}

fn fio_err(e: crate::fio::FioJsonError) -> ReportError {
    match e {
        crate::fio::FioJsonError::Format { path, msg } => ReportError::Input { path, msg },
        crate::fio::FioJsonError::Read { path, source } => ReportError::Input {
            path,
            msg: source.to_string(),
        },
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn load_fio_dir(dir: &Path, input: &mut ReportInput) -> Result<(), ReportError> {
    let m = read_manifest(dir).map_err(|e| bad(dir, e.to_string()))?;
    if m.runs.is_empty() {
        return Err(bad(dir, "the manifest lists no fio runs"));
    }
    for run in &m.runs {
        let p = dir.join(&run.result);
        let text = std::fs::read_to_string(&p).map_err(|e| bad(&p, e.to_string()))?;
        let o = parse_fio_json(&text, &p.display().to_string()).map_err(fio_err)?;
        let logs: Vec<PathBuf> = run.iops_logs.iter().map(|l| dir.join(l)).collect();
        let hists: Vec<PathBuf> = run.hist_logs.iter().map(|l| dir.join(l)).collect();
        let mut s = fio_series(
            &o,
            p.display().to_string(),
            run.policy.clone(),
            run.job.clone(),
            &logs,
            &hists,
        )?;
        if let Some(c) = run.counters {
            let reads = c.reads.max(1) as f64;
            s.reroute_pct = Some(round2(c.rerouted as f64 * 100.0 / reads));
            s.extra_io_pct = Some(round2(c.hedges as f64 * 100.0 / reads));
            s.accuracy_pct = (c.judged_reads > 0)
                .then(|| round2(c.correct_predictions as f64 * 100.0 / c.judged_reads as f64));
        }
        input.series.push(s);
    }
    input.manifests.push((dir.to_path_buf(), m));
    Ok(())
}

/// Reads every input: a directory is an `augur fio run` results directory;
/// a file is `augur bench --json` output (an array of policy objects),
/// `augur demo --json` output (`sim` and `real` arrays) or one fio json+
/// output (policy `unknown`). A bad or empty input is an error naming it.
pub fn load_inputs(paths: &[PathBuf]) -> Result<ReportInput, ReportError> {
    if paths.is_empty() {
        return Err(ReportError::NoInput);
    }
    let mut input = ReportInput {
        paths: paths.to_vec(),
        ..Default::default()
    };
    for p in paths {
        if p.is_dir() {
            load_fio_dir(p, &mut input)?;
            continue;
        }
        let text = std::fs::read_to_string(p).map_err(|e| bad(p, e.to_string()))?;
        if text.trim().is_empty() {
            return Err(bad(p, "empty file"));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(p, format!("not JSON: {e}")))?;
        match &v {
            Value::Array(rows) => bench_series(p, rows, &mut input.series)?,
            Value::Object(o) if o.contains_key("jobs") => {
                let out = parse_fio_json(&text, &p.display().to_string()).map_err(fio_err)?;
                let job = out.jobs.first().map(|j| j.name.clone()).unwrap_or_default();
                let s = fio_series(
                    &out,
                    p.display().to_string(),
                    "unknown".into(),
                    job,
                    &[],
                    &[],
                )?;
                input.series.push(s);
            }
            Value::Object(o) if o.contains_key("sim") || o.contains_key("real") => {
                for k in ["sim", "real"] {
                    if let Some(Value::Array(rows)) = o.get(k) {
                        bench_series(p, rows, &mut input.series)?;
                    }
                }
            }
            _ => {
                return Err(bad(
                    p,
                    "neither augur bench --json output (an array of policies), augur demo --json, nor fio's JSON",
                ));
            }
        }
    }
    Ok(input)
}

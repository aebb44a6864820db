//! Reading fio's `--output-format=json+` output: per job and direction, the
//! totals and the full completion-latency histogram (`clat_ns.bins`).

use std::path::Path;

use serde_json::Value;

/// Why a fio result could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FioJsonError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not fio's JSON output, or missing what a report needs.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
    },
}

/// One direction (read or write) of one fio job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FioDirection {
    /// I/Os completed.
    pub total_ios: u64,
    /// Bytes moved.
    pub io_bytes: u64,
    /// I/Os per second, as fio computed it.
    pub iops: f64,
    /// Mean completion latency, ns.
    pub clat_mean_ns: f64,
    /// The completion-latency histogram: `(latency ns, count)`, ascending
    /// (fio's bins; empty without json+).
    pub clat_bins: Vec<(u64, u64)>,
}

impl FioDirection {
    /// The `q` quantile (0..1) of the histogram, ns; 0 when it is empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        let total: u64 = self.clat_bins.iter().map(|b| b.1).sum();
        if total == 0 {
            return 0;
        }
        // The smallest bin at which at least q of the I/Os are counted.
        let want = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for &(v, c) in &self.clat_bins {
            seen += c;
            if seen >= want {
                return v;
            }
        }
        self.clat_bins.last().map_or(0, |b| b.0)
    }
}

/// One fio job's results.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FioJob {
    /// The job's name.
    pub name: String,
    /// Its `rw` option, where given.
    pub rw: Option<String>,
    /// Its `iodepth`, where given (job or global options).
    pub iodepth: Option<u32>,
    /// Its runtime, ms.
    pub runtime_ms: u64,
    /// Reads.
    pub read: FioDirection,
    /// Writes.
    pub write: FioDirection,
    /// fio's error code for the job (0: none).
    pub error: i64,
}

/// A whole fio JSON output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FioOutput {
    /// `fio version`, e.g. `fio-3.33`.
    pub version: String,
    /// The jobs, in order.
    pub jobs: Vec<FioJob>,
}

fn direction(v: &Value) -> FioDirection {
    let u = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let clat = v.get("clat_ns");
    let mut bins: Vec<(u64, u64)> = clat
        .and_then(|c| c.get("bins"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, c)| Some((k.parse::<u64>().ok()?, c.as_u64()?)))
                .filter(|b| b.1 > 0)
                .collect()
        })
        .unwrap_or_default();
    bins.sort_unstable();
    FioDirection {
        total_ios: u("total_ios"),
        io_bytes: u("io_bytes"),
        iops: v.get("iops").and_then(Value::as_f64).unwrap_or(0.0),
        clat_mean_ns: clat
            .and_then(|c| c.get("mean"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        clat_bins: bins,
    }
}

/// Parses fio's JSON (or json+) output. fio may print warnings before the
/// JSON: text before the first `{` is skipped.
pub fn parse_fio_json(text: &str, path: &str) -> Result<FioOutput, FioJsonError> {
    let fail = |msg: String| FioJsonError::Format {
        path: path.to_string(),
        msg,
    };
    let start = text
        .find('{')
        .ok_or_else(|| fail("empty, or not fio's JSON output (no '{')".into()))?;
    let v: Value = serde_json::from_str(&text[start..])
        .map_err(|e| fail(format!("not fio's JSON output: {e}")))?;
    let jobs = v
        .get("jobs")
        .and_then(Value::as_array)
        .ok_or_else(|| fail("no \"jobs\" array: not fio's JSON output".into()))?;
    if jobs.is_empty() {
        return Err(fail("fio's output has no jobs".into()));
    }
    let global_depth = v
        .get("global options")
        .and_then(|g| g.get("iodepth"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok());
    let mut out = FioOutput {
        version: v
            .get("fio version")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string(),
        jobs: Vec::new(),
    };
    for (i, j) in jobs.iter().enumerate() {
        let opts = j.get("job options");
        let opt = |k: &str| opts.and_then(|o| o.get(k)).and_then(Value::as_str);
        let read = j
            .get("read")
            .ok_or_else(|| fail(format!("job {i} has no \"read\" object")))?;
        out.jobs.push(FioJob {
            name: j
                .get("jobname")
                .and_then(Value::as_str)
                .unwrap_or("job")
                .to_string(),
            rw: opt("rw").map(str::to_string),
            iodepth: opt("iodepth").and_then(|s| s.parse().ok()).or(global_depth),
            runtime_ms: read.get("runtime").and_then(Value::as_u64).unwrap_or(0),
            read: direction(read),
            write: j.get("write").map(direction).unwrap_or_default(),
            error: j.get("error").and_then(Value::as_i64).unwrap_or(0),
        });
    }
    Ok(out)
}

/// Reads and parses a fio JSON file.
pub fn read_fio_json(path: &Path) -> Result<FioOutput, FioJsonError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FioJsonError::Read {
        path: p.clone(),
        source,
    })?;
    parse_fio_json(&text, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"note: a warning first
{
  "fio version" : "fio-3.33",
  "global options" : { "iodepth" : "16" },
  "jobs" : [
    {
      "jobname" : "randread",
      "error" : 0,
      "job options" : { "rw" : "randread" },
      "read" : {
        "io_bytes" : 40960, "total_ios" : 10, "iops" : 1000.5, "runtime" : 10,
        "clat_ns" : { "mean" : 2500.0, "bins" : { "3000" : 1, "1000" : 8, "2000" : 1, "9" : 0 } }
      },
      "write" : { "io_bytes" : 0, "total_ios" : 0, "iops" : 0.0, "clat_ns" : { "mean" : 0.0 } }
    }
  ]
}"#;

    #[test]
    fn parses_jobs_bins_and_quantiles() {
        let o = parse_fio_json(SAMPLE, "x").expect("parses");
        assert_eq!(o.version, "fio-3.33");
        let j = &o.jobs[0];
        assert_eq!(j.name, "randread");
        assert_eq!(j.iodepth, Some(16));
        assert_eq!(j.read.total_ios, 10);
        assert_eq!(j.read.clat_bins, vec![(1000, 8), (2000, 1), (3000, 1)]);
        assert_eq!(j.read.quantile_ns(0.5), 1000);
        assert_eq!(j.read.quantile_ns(0.9), 2000);
        assert_eq!(j.read.quantile_ns(0.99), 3000);
        assert_eq!(j.write.quantile_ns(0.5), 0);
    }

    #[test]
    fn rejects_what_is_not_fio_output() {
        for bad in [
            "",
            "hello",
            "{}",
            "{\"jobs\": []}",
            "{\"jobs\": [{}]}",
            "{ truncated",
        ] {
            assert!(parse_fio_json(bad, "f").is_err(), "{bad}");
        }
    }
}

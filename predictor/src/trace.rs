//! Importing block I/O traces: MSR-Cambridge CSV, `blkparse` text and
//! FlashNet replay output.
//!
//! A parsed trace ([`ImportedTrace`]) is a list of completed I/Os per disk,
//! each with its issue time and latency. From it come
//!
//! * training records ([`ImportedTrace::training_records`]): for every I/O,
//!   the disk's state at issue time — pending I/O (count and 4 KiB pages of
//!   everything issued earlier and not yet completed) and the last
//!   [`HISTORY_LEN`](augur_feature_store::HISTORY_LEN) completed reads —
//!   reconstructed by replaying issues and completions in time order through
//!   the feature store's own [`ReplicaHistory`] (`on_submit_with_snapshot` /
//!   `on_complete`, as the array calls them), so the features are exactly
//!   those the live array would have recorded;
//! * a replayable workload ([`ImportedTrace::workload`]) of [`TraceIo`]s.
//!
//! # Formats
//!
//! **MSR-Cambridge CSV**: `Timestamp,Hostname,DiskNumber,Type,Offset,Size,
//! ResponseTime`, one I/O per line, timestamps in Windows filetime (100 ns
//! ticks), `Type` `Read` or `Write`, offset and size in bytes, response time
//! in 100 ns ticks. A header line starting with `Timestamp` is allowed.
//! Each `Hostname`/`DiskNumber` pair is one disk.
//!
//! **blkparse text** (default output format): `maj,min cpu seq secs.nsecs pid
//! action rwbs sector + nblocks [process]`. A `D` (dispatch to the device)
//! event is paired with the next `C` (complete) event for the same device and
//! sector; where a request has no `D`, its `Q` (queue) event is used instead.
//! Other actions (`G`, `I`, `M`, `P`, `U`, messages...) are ignored, as are
//! events without a sector range (e.g. a pure flush) and the summary blkparse
//! prints at the end (from the first line starting with `CPU` or `Total`).
//! The `rwbs` field maps to an op: `D` discard, `W` write, `R` read, `F`
//! flush. Each `maj,min` is one disk.
//!
//! **FlashNet replay** (the per-I/O output of the FlashNet/Heimdall
//! replayer, e.g. `tencent.*.trace` recordings of a real NVMe SSD): seven
//! comma-separated numbers `arrival_ms,latency_us,op,size,offset,submit_ms,
//! returned` — the I/O's arrival time in the original trace (ms), its
//! observed latency (µs), `1` read or `0` write, size and offset in bytes,
//! the time the replayer actually submitted it (ms) and the bytes the system
//! call returned. Lines are in completion order; the submit time (column 6,
//! up to 6 decimals) is the issue time and column 2 the latency. Columns 1
//! and 7 are checked to be numbers and otherwise unused (the arrival time
//! of the source trace has 1 s resolution). The whole file is one disk,
//! named `replay`.
//!
//! Malformed lines are errors naming the line and the field
//! (`line 17: field 5 (Offset) is not a number: 'x12'`), or, with
//! [`ImportOptions::skip_bad`], skipped and counted.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use augur_feature_store::{Op, ReplicaHistory, Ticket, TrainingRecord};
use thiserror::Error;

/// One I/O of a replayable workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceIo {
    /// Issue time in ns since the first I/O of the trace.
    pub t_ns: u64,
    /// The operation.
    pub op: Op,
    /// Byte offset on the device.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

/// One completed I/O of an imported trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// Index into [`ImportedTrace::disks`].
    pub disk: u16,
    /// Issue time in ns since the first I/O of the trace.
    pub t_ns: u64,
    /// Observed latency (issue to completion) in ns.
    pub latency_ns: u64,
    /// The operation.
    pub op: Op,
    /// Byte offset on the device.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Input trace formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceFormat {
    /// MSR-Cambridge CSV.
    MsrCsv,
    /// `blkparse` default text output.
    Blkparse,
    /// FlashNet replayer output (7 numeric columns, one disk).
    Flashnet,
}

impl TraceFormat {
    /// The names [`TraceFormat::parse`] knows, one per format, for help and
    /// error text.
    pub const KNOWN: &'static str = "msr, blkparse, flashnet";

    /// Parses `msr`/`msr-csv`/`csv`, `blkparse`/`blktrace` or
    /// `flashnet`/`flashnet-replay`/`replay`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "msr" | "msr-csv" | "csv" => Some(TraceFormat::MsrCsv),
            "blkparse" | "blktrace" => Some(TraceFormat::Blkparse),
            "flashnet" | "flashnet-replay" | "replay" => Some(TraceFormat::Flashnet),
            _ => None,
        }
    }

    /// Guesses the format from the first non-empty line: FlashNet replay
    /// lines are seven comma-separated numbers; MSR lines also have seven
    /// fields, but the second is a host name and the fourth `Read`/`Write`;
    /// blkparse lines start with `maj,min` followed by whitespace.
    pub fn detect(first_line: &str) -> Option<Self> {
        let l = first_line.trim();
        let fields: Vec<&str> = l.split(',').map(str::trim).collect();
        if fields.len() == 7 && fields.iter().all(|f| is_decimal(f)) {
            Some(TraceFormat::Flashnet)
        } else if l.starts_with("Timestamp,") || fields.len() == 7 {
            Some(TraceFormat::MsrCsv)
        } else if l
            .split_whitespace()
            .next()
            .and_then(|d| d.split_once(','))
            .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok())
        {
            Some(TraceFormat::Blkparse)
        } else {
            None
        }
    }
}

/// Import options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Skip malformed lines (counting them) instead of failing on the first.
    pub skip_bad: bool,
}

/// How many skipped-line messages an [`ImportedTrace`] keeps.
pub const MAX_KEPT_ERRORS: usize = 10;

/// A parsed trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportedTrace {
    /// Disk names in order of first appearance (`host/disk` for MSR,
    /// `maj,min` for blkparse, `replay` for FlashNet); an event's `disk`
    /// indexes this.
    pub disks: Vec<String>,
    /// Completed I/Os sorted by issue time (ties keep input order).
    pub events: Vec<TraceEvent>,
    /// Lines read, including skipped and ignored ones.
    pub lines: u64,
    /// Malformed lines skipped (only with `skip_bad`).
    pub skipped: u64,
    /// The first [`MAX_KEPT_ERRORS`] skipped lines' messages.
    pub skipped_examples: Vec<String>,
    /// blkparse: issues never completed, or completions never issued.
    pub unmatched: u64,
}

/// Errors from trace import.
#[derive(Debug, Error)]
pub enum TraceError {
    /// A malformed line (1-based line number).
    #[error("line {line}: {what}")]
    Malformed {
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        what: String,
    },
    /// Reading the input failed.
    #[error("reading trace: {0}")]
    Io(#[from] std::io::Error),
    /// A file could not be opened or read; wraps the underlying error.
    #[error("{}: {source}", path.display())]
    File {
        /// The trace file.
        path: PathBuf,
        /// What went wrong in it.
        source: Box<TraceError>,
    },
    /// The format could not be recognised from the first line.
    #[error("cannot tell the trace format from its first line: '{0}'")]
    UnknownFormat(String),
    /// More distinct disks than a replica index can hold.
    #[error("too many disks in the trace (more than 65536)")]
    TooManyDisks,
}

/// Reads and parses a trace file; `format: None` detects it from the first
/// non-empty line. Errors name the file.
pub fn import_file(
    path: &Path,
    format: Option<TraceFormat>,
    opts: ImportOptions,
) -> Result<ImportedTrace, TraceError> {
    let wrap = |e: TraceError| TraceError::File {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    let format = match format {
        Some(f) => f,
        None => {
            let mut r = BufReader::new(File::open(path).map_err(|e| wrap(e.into()))?);
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).map_err(|e| wrap(e.into()))? == 0 {
                    break;
                }
                if !line.trim().is_empty() {
                    break;
                }
            }
            TraceFormat::detect(&line)
                .ok_or_else(|| wrap(TraceError::UnknownFormat(line.trim().to_string())))?
        }
    };
    let r = BufReader::new(File::open(path).map_err(|e| wrap(e.into()))?);
    match format {
        TraceFormat::MsrCsv => parse_msr(r, opts),
        TraceFormat::Blkparse => parse_blkparse(r, opts),
        TraceFormat::Flashnet => parse_flashnet(r, opts),
    }
    .map_err(wrap)
}

/// Assigns dense disk indices by name.
#[derive(Default)]
struct Disks {
    names: Vec<String>,
    index: HashMap<String, u16>,
}

impl Disks {
    fn get(&mut self, name: &str) -> Result<u16, TraceError> {
        if let Some(&i) = self.index.get(name) {
            return Ok(i);
        }
        let i = u16::try_from(self.names.len()).map_err(|_| TraceError::TooManyDisks)?;
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), i);
        Ok(i)
    }
}

/// Line-level bookkeeping shared by the parsers: error-or-skip.
struct LineSink {
    opts: ImportOptions,
    skipped: u64,
    examples: Vec<String>,
}

impl LineSink {
    fn bad(&mut self, line: u64, what: String) -> Result<(), TraceError> {
        if self.opts.skip_bad {
            self.skipped += 1;
            if self.examples.len() < MAX_KEPT_ERRORS {
                self.examples.push(format!("line {line}: {what}"));
            }
            Ok(())
        } else {
            Err(TraceError::Malformed { line, what })
        }
    }
}

fn num<T: std::str::FromStr>(tok: &str, idx: usize, name: &str) -> Result<T, String> {
    tok.parse::<T>().map_err(|_| {
        if !tok.is_empty() && tok.bytes().all(|b| b.is_ascii_digit()) {
            format!("field {idx} ({name}) is out of range: '{tok}'")
        } else {
            format!("field {idx} ({name}) is not a number: '{tok}'")
        }
    })
}

/// A raw I/O before sorting and rebasing: absolute issue time in ns.
struct RawIo {
    disk: u16,
    t_ns: u64,
    latency_ns: u64,
    op: Op,
    offset: u64,
    len: u32,
}

fn finish(
    disks: Disks,
    mut raw: Vec<RawIo>,
    lines: u64,
    sink: LineSink,
    unmatched: u64,
) -> ImportedTrace {
    raw.sort_by_key(|r| r.t_ns); // stable: ties keep input order
    let t0 = raw.first().map_or(0, |r| r.t_ns);
    let events = raw
        .into_iter()
        .map(|r| TraceEvent {
            disk: r.disk,
            t_ns: r.t_ns - t0,
            latency_ns: r.latency_ns,
            op: r.op,
            offset: r.offset,
            len: r.len,
        })
        .collect();
    ImportedTrace {
        disks: disks.names,
        events,
        lines,
        skipped: sink.skipped,
        skipped_examples: sink.examples,
        unmatched,
    }
}

const MSR_FIELDS: [&str; 7] = [
    "Timestamp",
    "Hostname",
    "DiskNumber",
    "Type",
    "Offset",
    "Size",
    "ResponseTime",
];

/// Parses one MSR line into (disk name, io) — errors are messages.
fn msr_line(l: &str) -> Result<(String, u64, Op, u64, u32, u64), String> {
    let f: Vec<&str> = l.split(',').map(str::trim).collect();
    if f.len() != 7 {
        return Err(format!(
            "expected 7 comma-separated fields ({}), found {}",
            MSR_FIELDS.join(","),
            f.len()
        ));
    }
    let ts: u64 = num(f[0], 1, MSR_FIELDS[0])?;
    if f[1].is_empty() {
        return Err("field 2 (Hostname) is empty".to_string());
    }
    let disk: u32 = num(f[2], 3, MSR_FIELDS[2])?;
    let op = if f[3].eq_ignore_ascii_case("read") {
        Op::Read
    } else if f[3].eq_ignore_ascii_case("write") {
        Op::Write
    } else {
        return Err(format!("field 4 (Type) must be Read or Write: '{}'", f[3]));
    };
    let offset: u64 = num(f[4], 5, MSR_FIELDS[4])?;
    let size: u32 = num(f[5], 6, MSR_FIELDS[5])?;
    let rt: u64 = num(f[6], 7, MSR_FIELDS[6])?;
    let ts_ns = ts
        .checked_mul(100)
        .ok_or_else(|| format!("field 1 (Timestamp) is out of range: '{}'", f[0]))?;
    let rt_ns = rt
        .checked_mul(100)
        .ok_or_else(|| format!("field 7 (ResponseTime) is out of range: '{}'", f[6]))?;
    Ok((format!("{}/{disk}", f[1]), ts_ns, op, offset, size, rt_ns))
}

/// Parses MSR-Cambridge CSV from `r`.
pub fn parse_msr<R: BufRead>(r: R, opts: ImportOptions) -> Result<ImportedTrace, TraceError> {
    parse_lines(
        r,
        opts,
        |lineno, l| lineno == 1 && l.starts_with("Timestamp,"),
        |l| {
            msr_line(l).map(|(name, t_ns, op, offset, len, latency_ns)| {
                (name, t_ns, latency_ns, op, offset, len)
            })
        },
    )
}

/// The loop every one-I/O-per-line format shares: blank lines and those
/// `skip` names are passed over, each other line becomes one I/O of the disk
/// `line` names (`(disk, issue ns, latency ns, op, offset, length)`) or an
/// error named by its line number (skipped and counted with `skip_bad`).
fn parse_lines<R: BufRead>(
    r: R,
    opts: ImportOptions,
    skip: impl Fn(u64, &str) -> bool,
    line: impl Fn(&str) -> Result<(String, u64, u64, Op, u64, u32), String>,
) -> Result<ImportedTrace, TraceError> {
    let mut disks = Disks::default();
    let mut sink = LineSink {
        opts,
        skipped: 0,
        examples: Vec::new(),
    };
    let mut raw = Vec::new();
    let mut lineno = 0u64;
    for text in r.lines() {
        lineno += 1;
        let text = text?;
        let l = text.trim();
        if l.is_empty() || skip(lineno, l) {
            continue;
        }
        match line(l) {
            Ok((name, t_ns, latency_ns, op, offset, len)) => {
                let disk = disks.get(&name)?;
                raw.push(RawIo {
                    disk,
                    t_ns,
                    latency_ns,
                    op,
                    offset,
                    len,
                });
            }
            Err(what) => sink.bad(lineno, what)?,
        }
    }
    Ok(finish(disks, raw, lineno, sink, 0))
}

/// `digits[.digits]`: a non-negative decimal number.
fn is_decimal(tok: &str) -> bool {
    let (i, frac) = tok.split_once('.').unwrap_or((tok, ""));
    !i.is_empty()
        && i.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// Parses `whole.fraction` (up to `digits` fraction digits) exactly into
/// units of 10^-`digits` of the whole: `parse_fixed("1.5", 3) == 1500`.
fn parse_fixed(tok: &str, digits: usize) -> Option<u64> {
    let (s, frac) = tok.split_once('.').unwrap_or((tok, ""));
    if s.is_empty()
        || !s.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > digits
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: u64 = s.parse().ok()?;
    let mut part: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..digits {
        part *= 10;
    }
    whole
        .checked_mul(10u64.checked_pow(u32::try_from(digits).ok()?)?)?
        .checked_add(part)
}

/// Parses `secs.fraction` (up to 9 fraction digits) into ns exactly.
fn parse_secs(tok: &str) -> Option<u64> {
    parse_fixed(tok, 9)
}

fn rwbs_op(rwbs: &str) -> Option<Op> {
    if rwbs.contains('D') {
        Some(Op::Discard)
    } else if rwbs.contains('W') {
        Some(Op::Write)
    } else if rwbs.contains('R') {
        Some(Op::Read)
    } else if rwbs.contains('F') {
        Some(Op::Flush)
    } else {
        None
    }
}

/// What a blkparse line means to the pairing logic.
enum BlkLine<'a> {
    /// Ignored (other action, no sector range, ...).
    Ignore,
    /// Summary section starts.
    Summary,
    /// An issue (`Q` or `D`) or completion (`C`) with a sector range.
    Io {
        dev: &'a str,
        action: char,
        t_ns: u64,
        op: Op,
        sector: u64,
        blocks: u32,
    },
}

fn blk_line(l: &str) -> Result<BlkLine<'_>, String> {
    let t: Vec<&str> = l.split_whitespace().collect();
    if t[0].starts_with("CPU") || t[0] == "Total" {
        return Ok(BlkLine::Summary);
    }
    if t.len() < 6 {
        return Err(format!(
            "expected at least 6 fields (maj,min cpu seq time pid action), found {}",
            t.len()
        ));
    }
    let dev = t[0];
    match dev.split_once(',') {
        Some((a, b)) if a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok() => {}
        _ => return Err(format!("field 1 (device) is not 'major,minor': '{dev}'")),
    }
    num::<u32>(t[1], 2, "cpu")?;
    num::<u64>(t[2], 3, "sequence")?;
    let t_ns = parse_secs(t[3])
        .ok_or_else(|| format!("field 4 (time) is not seconds.nanoseconds: '{}'", t[3]))?;
    num::<u32>(t[4], 5, "pid")?;
    let action = t[5];
    let a = match action {
        "Q" | "D" | "C" => action.chars().next().unwrap_or('?'),
        _ => return Ok(BlkLine::Ignore),
    };
    let rwbs = t
        .get(6)
        .ok_or_else(|| format!("field 7 (rwbs) is missing after action {action}"))?;
    if !rwbs.bytes().all(|b| b"RWDFNSMAE".contains(&b)) {
        return Err(format!("field 7 (rwbs) is not an RWBS string: '{rwbs}'"));
    }
    // "sector + nblocks" — absent for e.g. a pure flush ("... FWS [proc]").
    if t.get(8) != Some(&"+") {
        return Ok(BlkLine::Ignore);
    }
    let sector: u64 = num(t[7], 8, "sector")?;
    let blocks: u32 = num(
        t.get(9)
            .ok_or_else(|| "field 10 (blocks) is missing after '+'".to_string())?,
        10,
        "blocks",
    )?;
    let Some(op) = rwbs_op(rwbs) else {
        return Ok(BlkLine::Ignore);
    };
    Ok(BlkLine::Io {
        dev,
        action: a,
        t_ns,
        op,
        sector,
        blocks,
    })
}

/// An issued request waiting for its completion.
struct Issued {
    t_ns: u64,
    op: Op,
    blocks: u32,
}

/// Parses blkparse default text output from `r`.
pub fn parse_blkparse<R: BufRead>(r: R, opts: ImportOptions) -> Result<ImportedTrace, TraceError> {
    let mut disks = Disks::default();
    let mut sink = LineSink {
        opts,
        skipped: 0,
        examples: Vec::new(),
    };
    let mut raw = Vec::new();
    // (disk, sector) -> FIFO of issues; D and Q kept apart, D preferred.
    let mut dispatched: HashMap<(u16, u64), VecDeque<Issued>> = HashMap::new();
    let mut queued: HashMap<(u16, u64), VecDeque<Issued>> = HashMap::new();
    let mut unmatched = 0u64;
    let mut lineno = 0u64;
    let mut in_summary = false;
    for line in r.lines() {
        lineno += 1;
        let line = line?;
        let l = line.trim();
        if l.is_empty() || in_summary {
            continue;
        }
        let parsed = match blk_line(l) {
            Ok(p) => p,
            Err(what) => {
                sink.bad(lineno, what)?;
                continue;
            }
        };
        let (dev, action, t_ns, op, sector, blocks) = match parsed {
            BlkLine::Ignore => continue,
            BlkLine::Summary => {
                in_summary = true;
                continue;
            }
            BlkLine::Io {
                dev,
                action,
                t_ns,
                op,
                sector,
                blocks,
            } => (dev, action, t_ns, op, sector, blocks),
        };
        let disk = disks.get(dev)?;
        let key = (disk, sector);
        let issued = Issued { t_ns, op, blocks };
        match action {
            'Q' => queued.entry(key).or_default().push_back(issued),
            'D' => {
                // This request's Q (if any) is superseded by its D.
                if let Some(q) = queued.get_mut(&key) {
                    q.pop_front();
                }
                dispatched.entry(key).or_default().push_back(issued)
            }
            _ => {
                let from_d = dispatched.get_mut(&key).and_then(VecDeque::pop_front);
                let issue = match from_d {
                    Some(i) => Some(i),
                    None => queued.get_mut(&key).and_then(VecDeque::pop_front),
                };
                let Some(issue) = issue else {
                    unmatched += 1;
                    continue;
                };
                let len_bytes = u64::from(issue.blocks) * 512;
                let Ok(len) = u32::try_from(len_bytes) else {
                    sink.bad(lineno, format!("request of {len_bytes} bytes is too large"))?;
                    continue;
                };
                let Some(offset) = sector.checked_mul(512) else {
                    sink.bad(
                        lineno,
                        format!("field 8 (sector) is out of range: {sector}"),
                    )?;
                    continue;
                };
                raw.push(RawIo {
                    disk,
                    t_ns: issue.t_ns,
                    latency_ns: t_ns.saturating_sub(issue.t_ns),
                    op: issue.op,
                    offset,
                    len,
                });
            }
        }
    }
    unmatched += dispatched.values().map(|q| q.len() as u64).sum::<u64>();
    Ok(finish(disks, raw, lineno, sink, unmatched))
}

const FLASHNET_FIELDS: [&str; 7] = [
    "arrival_ms",
    "latency_us",
    "op",
    "size",
    "offset",
    "submit_ms",
    "returned",
];

/// Parses a FlashNet millisecond field (up to 6 decimals) into ns.
fn flashnet_ms(f: &[&str], idx: usize) -> Result<u64, String> {
    let tok = f[idx];
    let name = FLASHNET_FIELDS[idx];
    if !is_decimal(tok) {
        return Err(format!(
            "field {} ({name}) is not a number: '{tok}'",
            idx + 1
        ));
    }
    parse_fixed(tok, 6).ok_or_else(|| {
        format!(
            "field {} ({name}) is out of range or has more than 6 decimals: '{tok}'",
            idx + 1
        )
    })
}

/// Parses one FlashNet replay line into (issue ns, latency ns, op, offset,
/// size) — errors are messages.
fn flashnet_line(l: &str) -> Result<(u64, u64, Op, u64, u32), String> {
    let f: Vec<&str> = l.split(',').map(str::trim).collect();
    if f.len() != 7 {
        return Err(format!(
            "expected 7 comma-separated fields ({}), found {}",
            FLASHNET_FIELDS.join(","),
            f.len()
        ));
    }
    flashnet_ms(&f, 0)?;
    let lat_us: u64 = num(f[1], 2, FLASHNET_FIELDS[1])?;
    let op = match f[2] {
        "1" => Op::Read,
        "0" => Op::Write,
        o => return Err(format!("field 3 (op) must be 1 (read) or 0 (write): '{o}'")),
    };
    let size: u32 = num(f[3], 4, FLASHNET_FIELDS[3])?;
    let offset: u64 = num(f[4], 5, FLASHNET_FIELDS[4])?;
    let t_ns = flashnet_ms(&f, 5)?;
    num::<i64>(f[6], 7, FLASHNET_FIELDS[6])?;
    let lat_ns = lat_us
        .checked_mul(1000)
        .ok_or_else(|| format!("field 2 (latency_us) is out of range: '{}'", f[1]))?;
    Ok((t_ns, lat_ns, op, offset, size))
}

/// Parses FlashNet replayer output from `r` (one disk, `replay`).
pub fn parse_flashnet<R: BufRead>(r: R, opts: ImportOptions) -> Result<ImportedTrace, TraceError> {
    parse_lines(
        r,
        opts,
        |_, _| false,
        |l| {
            flashnet_line(l).map(|(t_ns, latency_ns, op, offset, len)| {
                ("replay".to_string(), t_ns, latency_ns, op, offset, len)
            })
        },
    )
}

impl ImportedTrace {
    /// Reconstructs training records for every I/O (all ops, sorted by issue
    /// time; `replica` = disk index): the feature snapshot each disk's
    /// [`ReplicaHistory`] would have shown at issue time. Completions at the
    /// same instant as an issue are applied first (a completed I/O is no
    /// longer pending). Latencies are truncated to whole µs.
    pub fn training_records(&self) -> Vec<TrainingRecord> {
        // Sized from the events themselves, so a hand-built trace with
        // indices beyond `disks` cannot index out of bounds.
        let n_disks = self
            .events
            .iter()
            .map(|e| usize::from(e.disk) + 1)
            .max()
            .unwrap_or(0)
            .max(self.disks.len());
        let histories: Vec<ReplicaHistory> = (0..n_disks).map(|_| ReplicaHistory::new()).collect();
        // Pending completions: min-heap on (completion time, sequence).
        let mut pending: std::collections::BinaryHeap<std::cmp::Reverse<(u64, u64)>> =
            std::collections::BinaryHeap::new();
        let mut tickets: HashMap<u64, (u16, Ticket, u32)> = HashMap::new();
        let mut out = Vec::with_capacity(self.events.len());
        for (seq, e) in self.events.iter().enumerate() {
            let seq = seq as u64;
            while let Some(&std::cmp::Reverse((t_done, s))) = pending.peek() {
                if t_done > e.t_ns {
                    break;
                }
                pending.pop();
                if let Some((disk, ticket, lat)) = tickets.remove(&s) {
                    histories[usize::from(disk)].on_complete(ticket, lat);
                }
            }
            let h = &histories[usize::from(e.disk)];
            let (ticket, features) = h.on_submit_with_snapshot_at(e.op, e.len, e.t_ns);
            let latency_us = u32::try_from(e.latency_ns / 1000).unwrap_or(u32::MAX);
            tickets.insert(seq, (e.disk, ticket, latency_us));
            pending.push(std::cmp::Reverse((
                e.t_ns.saturating_add(e.latency_ns),
                seq,
            )));
            out.push(TrainingRecord {
                time_ns: e.t_ns,
                replica: e.disk,
                op: e.op,
                size_bytes: e.len,
                offset: e.offset,
                latency_us,
                features,
            });
        }
        out
    }

    /// The replayable workload: every I/O of `disk` (or of all disks when
    /// `None`), in issue order.
    pub fn workload(&self, disk: Option<u16>) -> Vec<TraceIo> {
        self.events
            .iter()
            .filter(|e| disk.is_none_or(|d| d == e.disk))
            .map(|e| TraceIo {
                t_ns: e.t_ns,
                op: e.op,
                offset: e.offset,
                len: e.len,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msr(s: &str, skip_bad: bool) -> Result<ImportedTrace, TraceError> {
        parse_msr(s.as_bytes(), ImportOptions { skip_bad })
    }

    const MSR: &str = "\
128166372000000000,hm,1,Read,4096,4096,1000
128166372000001000,hm,1,Write,8192,8192,50000
128166372000002000,hm,1,Read,0,16384,2000
128166372000200000,hm,1,Read,12288,4096,300
128166372000000500,prxy,0,Read,512,512,10
";

    #[test]
    fn msr_parses_and_rebases_time() {
        let t = msr(MSR, false).expect("parses");
        assert_eq!(t.disks, vec!["hm/1".to_string(), "prxy/0".to_string()]);
        assert_eq!(t.lines, 5);
        let ev = &t.events;
        assert_eq!(ev.len(), 5);
        // Sorted by issue time, relative to the first I/O, ticks -> ns.
        assert_eq!(ev[0].t_ns, 0);
        assert_eq!(ev[1].t_ns, 50_000);
        assert_eq!(ev[1].disk, 1);
        assert_eq!(ev[2].t_ns, 100_000);
        assert_eq!(ev[2].op, Op::Write);
        assert_eq!(ev[2].latency_ns, 5_000_000);
        assert_eq!(ev[0].latency_ns, 100_000);
        let w = t.workload(Some(0));
        assert_eq!(w.len(), 4);
        assert_eq!(
            w[1],
            TraceIo {
                t_ns: 100_000,
                op: Op::Write,
                offset: 8192,
                len: 8192
            }
        );
        assert_eq!(t.workload(None).len(), 5);
    }

    #[test]
    fn msr_features_reconstruct_pending_and_history() {
        let t = msr(MSR, false).expect("parses");
        let recs = t.training_records();
        assert_eq!(recs.len(), 5);
        let hm: Vec<&TrainingRecord> = recs.iter().filter(|r| r.replica == 0).collect();
        // 1st read: nothing pending, no history.
        assert_eq!(hm[0].features.pending_ios, 0);
        assert_eq!(hm[0].features.len, 0);
        assert_eq!(hm[0].latency_us, 100);
        // Write at 100 µs: the first read (done at 100 µs) has completed.
        assert_eq!(hm[1].features.pending_ios, 0);
        assert_eq!(hm[1].features.len, 1);
        assert_eq!(hm[1].features.recent[0].latency_us, 100);
        // Read at 200 µs: the write (until 5.1 ms) is pending: 1 I/O, 2 pages.
        let f = hm[2].features;
        assert_eq!((f.pending_ios, f.pending_pages), (1, 2));
        assert_eq!(f.len, 1);
        // Read at 20 ms: everything done; history newest first; the 16 KiB
        // read was issued with the write pending.
        let f = hm[3].features;
        assert_eq!((f.pending_ios, f.pending_pages), (0, 0));
        assert_eq!(f.len, 2);
        assert_eq!(f.recent[0].latency_us, 200);
        assert_eq!(f.recent[0].pending_ios_at_issue, 1);
        assert_eq!(f.recent[0].pending_pages_at_issue, 2);
        assert_eq!(f.recent[0].size_bytes, 16384);
        assert_eq!(f.recent[1].latency_us, 100);
        // The other disk has its own state.
        let px = recs.iter().find(|r| r.replica == 1).expect("prxy record");
        assert_eq!(px.features.pending_ios, 0);
        assert_eq!(px.latency_us, 1);
    }

    #[test]
    fn msr_malformed_lines_name_line_and_field() {
        let bad = "128166372000000000,hm,1,Read,4096,4096,1000\n\n\
                   128166372000000001,hm,1,Read,x12,4096,1000\n";
        let e = msr(bad, false).expect_err("malformed");
        assert_eq!(
            e.to_string(),
            "line 3: field 5 (Offset) is not a number: 'x12'"
        );
        let e = msr("1,h,1,Trim,0,1,1\n", false).expect_err("bad type");
        assert_eq!(
            e.to_string(),
            "line 1: field 4 (Type) must be Read or Write: 'Trim'"
        );
        let e = msr("1,h,1,Read,0,1\n", false).expect_err("short");
        assert!(e.to_string().starts_with("line 1: expected 7"), "{e}");
        let e = msr("1,h,1,Read,0,99999999999,1\n", false).expect_err("big");
        assert_eq!(
            e.to_string(),
            "line 1: field 6 (Size) is out of range: '99999999999'"
        );
    }

    #[test]
    fn msr_skip_bad_counts() {
        let s = "Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime\n\
                 10,h,0,Read,0,4096,10\n\
                 garbage\n\
                 20,h,0,Read,x,4096,10\n\
                 30,h,0,Write,0,4096,10\n";
        let t = msr(s, true).expect("skips");
        assert_eq!(t.events.len(), 2);
        assert_eq!(t.skipped, 2);
        assert_eq!(t.skipped_examples.len(), 2);
        assert!(t.skipped_examples[1].starts_with("line 4: field 5 (Offset)"));
    }

    const BLK: &str = "\
  8,0    1        1     0.000000000  1234  Q   R 1000 + 8 [fio]
  8,0    1        2     0.000001000  1234  G   R 1000 + 8 [fio]
  8,0    1        3     0.000002000  1234  D   R 1000 + 8 [fio]
  8,0    1        4     0.000003000  1234  Q  WS 2000 + 16 [fio]
  8,0    1        5     0.000004000  1234  D  WS 2000 + 16 [fio]
  8,0    1        6     0.000005000  1234  P   N [fio]
  8,0    0        7     0.000102000     0  C   R 1000 + 8 [0]
  8,0    1        8     0.000200000  1234  Q   R 3000 + 8 [fio]
  8,0    0        9     0.000500000     0  C  WS 2000 + 16 [0]
  8,0    0       10     0.000600000     0  C   R 3000 + 8 [0]
  8,0    1       11     0.000700000  1234  Q FWS [fio]
  8,0    0       12     0.000800000     0  C   R 9999 + 8 [0]
CPU0 (8,0):
 Reads Queued:           2,        8KiB\t Writes Queued:           1,        8KiB
Total (8,0):
";

    #[test]
    fn blkparse_pairs_dispatch_and_queue_with_complete() {
        let t = parse_blkparse(BLK.as_bytes(), ImportOptions::default()).expect("parses");
        assert_eq!(t.disks, vec!["8,0".to_string()]);
        assert_eq!(t.events.len(), 3);
        let e = &t.events;
        // D at 2 µs -> C at 102 µs.
        assert_eq!(
            (e[0].t_ns, e[0].latency_ns, e[0].op),
            (0, 100_000, Op::Read)
        );
        assert_eq!((e[0].offset, e[0].len), (512_000, 4096));
        // Write D at 4 µs -> C at 500 µs (rebased to the first issue at 2 µs).
        assert_eq!(
            (e[1].t_ns, e[1].latency_ns, e[1].op),
            (2_000, 496_000, Op::Write)
        );
        assert_eq!(e[1].len, 8192);
        // No D for sector 3000: paired from its Q at 200 µs.
        assert_eq!((e[2].t_ns, e[2].latency_ns), (198_000, 400_000));
        // One C without an issue.
        assert_eq!(t.unmatched, 1);
        let recs = t.training_records();
        // The Q-paired read was issued with the write pending (16 sectors = 2 pages).
        assert_eq!(recs[2].features.pending_ios, 1);
        assert_eq!(recs[2].features.pending_pages, 2);
        assert_eq!(recs[2].features.recent[0].latency_us, 100);
    }

    #[test]
    fn blkparse_malformed_and_skip() {
        let bad = "  8,0 1 1 0.000000000 1234 D R 1000 + 8 [fio]\n\
                   8,0 1 x 0.1 1234 D R 1 + 8 [fio]\n";
        let e = parse_blkparse(bad.as_bytes(), ImportOptions::default()).expect_err("bad");
        assert_eq!(
            e.to_string(),
            "line 2: field 3 (sequence) is not a number: 'x'"
        );
        let bad2 = "8,0 1 1 0.5 1 D R abc + 8 [fio]\n";
        let e = parse_blkparse(bad2.as_bytes(), ImportOptions::default()).expect_err("bad");
        assert_eq!(
            e.to_string(),
            "line 1: field 8 (sector) is not a number: 'abc'"
        );
        let bad3 = "8,0 1 1 0.5s 1 D R 1 + 8 [fio]\nhello world\n";
        let e = parse_blkparse(bad3.as_bytes(), ImportOptions::default()).expect_err("bad");
        assert_eq!(
            e.to_string(),
            "line 1: field 4 (time) is not seconds.nanoseconds: '0.5s'"
        );
        let t = parse_blkparse(
            format!("{bad}{bad3}").as_bytes(),
            ImportOptions { skip_bad: true },
        )
        .expect("skips");
        assert_eq!(t.skipped, 3);
        assert_eq!(t.unmatched, 1);
    }

    fn flashnet(s: &str, skip_bad: bool) -> Result<ImportedTrace, TraceError> {
        parse_flashnet(s.as_bytes(), ImportOptions { skip_bad })
    }

    // Completion order, as the replayer writes it: the 4th line was
    // submitted before the 3rd (and the 2nd) but completed after them.
    const FLASHNET: &str = "\
0.000,134,1,4096,42242048,0.100,4096
0.000,106,1,4096,4841472,0.152,4096
0.000,124,0,8192,4841472,0.349,8192
0.000,2235,1,65536,4837376,0.149,65536
1000.000,178,1,4096,4841472,1000.2075,4096
";

    #[test]
    fn flashnet_parses_sorts_by_submit_time() {
        let t = flashnet(FLASHNET, false).expect("parses");
        assert_eq!(t.disks, vec!["replay".to_string()]);
        assert_eq!((t.lines, t.skipped, t.unmatched), (5, 0, 0));
        let e = &t.events;
        assert_eq!(e.len(), 5);
        // Sorted by column 6, rebased to the first submit (0.100 ms).
        let got: Vec<(u64, u64, Op, u64, u32)> = e
            .iter()
            .map(|e| (e.t_ns, e.latency_ns, e.op, e.offset, e.len))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 134_000, Op::Read, 42_242_048, 4096),
                (49_000, 2_235_000, Op::Read, 4_837_376, 65536),
                (52_000, 106_000, Op::Read, 4_841_472, 4096),
                (249_000, 124_000, Op::Write, 4_841_472, 8192),
                (1_000_107_500, 178_000, Op::Read, 4_841_472, 4096),
            ]
        );
        assert!(e.iter().all(|e| e.disk == 0));
        // Features are reconstructed in submit order: the first read
        // (0 .. 134 us) is pending when the 64 KiB read is issued at 49 us;
        // both are when the 4 KiB read is at 52 us; only the 64 KiB one
        // (until 2.284 ms) is when the write is at 249 us.
        let recs = t.training_records();
        assert_eq!(recs.len(), 5);
        assert_eq!(recs[1].features.pending_ios, 1);
        assert_eq!(recs[1].features.len, 0);
        let f = recs[2].features;
        assert_eq!((f.pending_ios, f.pending_pages), (2, 17));
        let f = recs[3].features;
        assert_eq!((f.pending_ios, f.pending_pages), (1, 16));
        assert_eq!(f.len, 2);
        assert_eq!(f.recent[0].latency_us, 106);
        assert_eq!(f.recent[1].latency_us, 134);
        assert_eq!(recs[4].features.pending_ios, 0);
        assert_eq!(recs[4].latency_us, 178);
    }

    #[test]
    fn flashnet_malformed_lines_name_line_and_field() {
        let good = "0.000,134,1,4096,42242048,0.100,4096\n";
        let cases = [
            (
                "0.000,134,1,4096,x12,0.100,4096",
                "field 5 (offset) is not a number: 'x12'",
            ),
            (
                "1s,134,1,4096,0,0.100,4096",
                "field 1 (arrival_ms) is not a number: '1s'",
            ),
            (
                "0.000,1.5,1,4096,0,0.100,4096",
                "field 2 (latency_us) is not a number: '1.5'",
            ),
            (
                "0.000,134,2,4096,0,0.100,4096",
                "field 3 (op) must be 1 (read) or 0 (write): '2'",
            ),
            (
                "0.000,134,1,99999999999,0,0.100,4096",
                "field 4 (size) is out of range: '99999999999'",
            ),
            (
                "0.000,134,1,4096,-8,0.100,4096",
                "field 5 (offset) is not a number: '-8'",
            ),
            (
                "0.000,134,1,4096,0,,4096",
                "field 6 (submit_ms) is not a number: ''",
            ),
            (
                "0.000,134,1,4096,0,0.1234567,4096",
                "field 6 (submit_ms) is out of range or has more than 6 decimals: '0.1234567'",
            ),
            (
                "0.000,134,1,4096,0,0.100,4k",
                "field 7 (returned) is not a number: '4k'",
            ),
            (
                "0.000,134,1,4096,0,0.100",
                "expected 7 comma-separated fields \
                 (arrival_ms,latency_us,op,size,offset,submit_ms,returned), found 6",
            ),
        ];
        for (line, want) in cases {
            let e = flashnet(&format!("{good}\n{line}\n"), false).expect_err(line);
            assert_eq!(e.to_string(), format!("line 3: {want}"), "{line}");
        }
        // A failed system call's -1 is still a number.
        let t = flashnet("0.000,134,1,4096,0,0.100,-1\n", false).expect("parses");
        assert_eq!(t.events.len(), 1);
    }

    #[test]
    fn flashnet_skip_bad_counts() {
        let s = format!("{FLASHNET}garbage\n0.000,1,1,4096,x,0.5,4096\n");
        let t = flashnet(&s, true).expect("skips");
        assert_eq!(t.events.len(), 5);
        assert_eq!((t.lines, t.skipped), (7, 2));
        assert!(t.skipped_examples[0].starts_with("line 6: expected 7"));
        assert_eq!(
            t.skipped_examples[1],
            "line 7: field 5 (offset) is not a number: 'x'"
        );
    }

    #[test]
    fn detects_formats() {
        assert_eq!(
            TraceFormat::detect("0.000,134,1,4096,42242048,0.100,4096"),
            Some(TraceFormat::Flashnet)
        );
        assert_eq!(
            TraceFormat::detect("128166372000000000,1,1,1,4096,4096,1000"),
            Some(TraceFormat::Flashnet)
        );
        assert_eq!(
            TraceFormat::detect("Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime"),
            Some(TraceFormat::MsrCsv)
        );
        // Six numbers: neither (an MSR line with a bad field still counts
        // as MSR, so its error names the field).
        assert_eq!(TraceFormat::detect("0.000,134,1,4096,42242048,0.100"), None);
        assert_eq!(
            TraceFormat::detect("1,h,1,Read,x,1,1"),
            Some(TraceFormat::MsrCsv)
        );
        for name in ["flashnet", "FlashNet", "replay", "flashnet-replay"] {
            assert_eq!(TraceFormat::parse(name), Some(TraceFormat::Flashnet));
        }
        for name in TraceFormat::KNOWN.split(", ") {
            assert!(TraceFormat::parse(name).is_some(), "{name}");
        }
        assert_eq!(parse_fixed("0.100", 6), Some(100_000));
        assert_eq!(parse_fixed("1000.2075", 6), Some(1_000_207_500));
        assert_eq!(parse_fixed("-1", 6), None);
        assert_eq!(parse_fixed("+1", 6), None);
        assert_eq!(
            TraceFormat::detect("128166372000000000,hm,1,Read,4096,4096,1000"),
            Some(TraceFormat::MsrCsv)
        );
        assert_eq!(
            TraceFormat::detect("  8,0    1        1     0.000000000  1234  Q   R 1000 + 8 [fio]"),
            Some(TraceFormat::Blkparse)
        );
        assert_eq!(TraceFormat::detect("hello"), None);
        assert_eq!(parse_secs("1.5"), Some(1_500_000_000));
        assert_eq!(parse_secs("0.000000001"), Some(1));
        assert_eq!(parse_secs("2"), Some(2_000_000_000));
        assert_eq!(parse_secs("1.0000000001"), None);
    }
}

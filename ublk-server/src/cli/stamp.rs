//! `augur stamp`: a crash-test tool for a block device (or file).
//!
//! `write` stamps random blocks of a region, each with a self-describing
//! header (magic, block number, a sequence number, a crc32), from several
//! threads that own disjoint blocks (block `b` belongs to thread
//! `b % threads`, so a block has at most one write in flight). It logs, per
//! block, the last acknowledged write and the one in flight when it stopped.
//! `check` reads the blocks back after a crash and a restart and reports
//! every acknowledged write that is not there.
//!
//! Block layout, little-endian: magic `AUGSTAMP` (8 bytes), block number
//! (8), sequence number (8), crc32 (4) of every other byte of the block,
//! 4 zero bytes, then a payload that is a function of (block, sequence).
//!
//! The log is text, one line per block ever written:
//! `block acked_seq inflight_seq` (0 for none; lines starting with `#` are
//! comments). `write` loads it first when it exists, so state and sequence
//! numbers carry over crash cycles, and writes it back (a temporary file,
//! renamed) when it stops.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write as _};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use augur_rng::{Rng, splitmix64};
use clap::{Args, Subcommand};

use super::args::parse_size;
use super::error::CliError;

/// The first 8 bytes of every stamped block.
const MAGIC: [u8; 8] = *b"AUGSTAMP";
/// Header bytes before the payload.
const HEADER: usize = 32;
/// Buffer alignment for O_DIRECT.
const ALIGN: usize = 4096;
/// The most blocks one region may have (two u64 of state each).
const MAX_BLOCKS: u64 = 1 << 24;
/// How long `write` waits for its threads after it decided to stop.
const GRACE: Duration = Duration::from_secs(20);

/// `augur stamp ...`.
#[derive(Subcommand)]
pub(crate) enum StampCmd {
    /// Stamp random blocks from several threads until --duration, a signal or
    /// the first I/O error, then write the log (acked and in-flight sequence
    /// numbers per block).
    Write(WriteArgs),
    /// Read back every block in the log; report each acknowledged write that
    /// was lost (exit 1 when there is one).
    Check(CheckArgs),
}

/// The region and log flags both subcommands take.
#[derive(Args)]
pub(crate) struct RegionArgs {
    /// The block device or file to stamp (O_DIRECT; O_DSYNC where O_DIRECT is refused).
    #[arg(long)]
    dev: PathBuf,
    /// The stamp log (`block acked_seq inflight_seq` per line).
    #[arg(long)]
    log: PathBuf,
    /// Start of the region, in bytes (a multiple of 512).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    offset: u64,
    /// Length of the region in bytes [default: to the end of --dev].
    #[arg(long, value_parser = parse_size)]
    len: Option<u64>,
    /// Block size in bytes (a multiple of 512).
    #[arg(long, default_value = "4096", value_parser = parse_size)]
    block: u64,
}

/// `augur stamp write`.
#[derive(Args)]
pub(crate) struct WriteArgs {
    #[command(flatten)]
    region: RegionArgs,
    /// Writer threads; block b belongs to thread b % threads.
    #[arg(long, default_value_t = 4)]
    threads: u64,
    /// Seed of the block choice (mixed with the run's first sequence number,
    /// so runs that continue a log choose differently).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

/// `augur stamp check`.
#[derive(Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    region: RegionArgs,
}

/// Runs `augur stamp`.
pub(crate) fn cmd_stamp(c: StampCmd) -> anyhow::Result<()> {
    match c {
        StampCmd::Write(a) => {
            let signal = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, Arc::clone(&signal))
                    .context("installing the SIGTERM/SIGINT handler")?;
            }
            let r = run_write(&a, &signal)?;
            println!("{}", r.line());
            Ok(())
        }
        StampCmd::Check(a) => {
            let r = run_check(&a.region)?;
            for l in &r.lost {
                println!("{l}");
            }
            println!("{}", r.summary());
            if r.lost.is_empty() {
                Ok(())
            } else {
                anyhow::bail!(
                    "stamp check: {} acknowledged write(s) lost on {}",
                    r.lost.len(),
                    a.region.dev.display()
                )
            }
        }
    }
}

// --- blocks -------------------------------------------------------------------

/// The crc of a stamped block: every byte but the crc field's own.
fn block_crc(buf: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[..24]);
    h.update(&buf[28..]);
    h.finalize()
}

/// Fills `buf` (a whole block, a multiple of 8 bytes, at least
/// [`HEADER`]) with the stamp of `block` at sequence number `seq`.
fn encode(buf: &mut [u8], block: u64, seq: u64) {
    buf[..8].copy_from_slice(&MAGIC);
    buf[8..16].copy_from_slice(&block.to_le_bytes());
    buf[16..24].copy_from_slice(&seq.to_le_bytes());
    buf[24..32].fill(0);
    let mut state = block.rotate_left(32) ^ seq;
    for w in buf[HEADER..].chunks_exact_mut(8) {
        w.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    let crc = block_crc(buf);
    buf[24..28].copy_from_slice(&crc.to_le_bytes());
}

/// What a block read back holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// A whole stamp of the expected block.
    Stamp(u64),
    /// Zeros (never written, or discarded).
    Zeros,
    /// Not a stamp.
    NoStamp,
    /// A stamp header whose crc does not match: torn or corrupted.
    BadCrc(u64),
    /// A whole stamp, but of another block: a misdirected write.
    OtherBlock { block: u64, seq: u64 },
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::Stamp(s) => write!(f, "seq {s}"),
            Found::Zeros => write!(f, "zeros"),
            Found::NoStamp => write!(f, "no stamp (garbage)"),
            Found::BadCrc(s) => write!(f, "a torn or corrupted stamp (header seq {s}, bad crc)"),
            Found::OtherBlock { block, seq } => write!(f, "the stamp of block {block} (seq {seq})"),
        }
    }
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Reads the stamp of `block` out of `buf`.
fn decode(buf: &[u8], block: u64) -> Found {
    if buf[..8] != MAGIC {
        return if buf.iter().all(|&b| b == 0) {
            Found::Zeros
        } else {
            Found::NoStamp
        };
    }
    let seq = le64(&buf[16..24]);
    let crc = u32::from_le_bytes([buf[24], buf[25], buf[26], buf[27]]);
    if crc != block_crc(buf) {
        return Found::BadCrc(seq);
    }
    let b = le64(&buf[8..16]);
    if b != block {
        return Found::OtherBlock { block: b, seq };
    }
    Found::Stamp(seq)
}

/// One block's log entry: the last acknowledged write and the one in
/// flight when the writer stopped (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Entry {
    acked: u64,
    inflight: u64,
}

impl Entry {
    /// Whether a block holding `found` kept every acknowledged write: it
    /// holds the acked write, or the in-flight one when that is newer (it
    /// may or may not have landed). With nothing acknowledged, anything is
    /// fine.
    fn holds(&self, found: Found) -> bool {
        if self.acked == 0 {
            return true;
        }
        match found {
            Found::Stamp(s) => {
                s == self.acked || (self.inflight > self.acked && s == self.inflight)
            }
            _ => false,
        }
    }

    /// What the block should hold, in words.
    fn expected(&self) -> String {
        if self.inflight > self.acked {
            format!("seq {} (or {}, in flight)", self.acked, self.inflight)
        } else {
            format!("seq {}", self.acked)
        }
    }
}

// --- the log ------------------------------------------------------------------

/// Parses a log of a region of `nblocks` blocks. Bad lines (all of them,
/// with their line numbers) make the error.
fn parse_log(text: &str, nblocks: u64) -> Result<BTreeMap<u64, Entry>, String> {
    let mut map = BTreeMap::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = t.split_whitespace().collect();
        let nums: Option<Vec<u64>> = fields.iter().map(|f| f.parse().ok()).collect();
        match nums.as_deref() {
            Some(&[block, acked, inflight]) => {
                if block >= nblocks {
                    bad.push(format!(
                        "line {n}: block {block} is outside the region ({nblocks} blocks)"
                    ));
                } else if map.insert(block, Entry { acked, inflight }).is_some() {
                    bad.push(format!("line {n}: block {block} appears twice"));
                }
            }
            _ => bad.push(format!(
                "line {n}: expected `block acked_seq inflight_seq`, got `{t}`"
            )),
        }
    }
    if bad.is_empty() {
        Ok(map)
    } else {
        Err(bad.join("; "))
    }
}

/// The log's text for `entries` (blocks with nothing to say are left out).
fn format_log(g: &Geometry, entries: impl Iterator<Item = (u64, Entry)>) -> String {
    use std::fmt::Write;
    let mut o = format!(
        "# augur stamp log: block acked_seq inflight_seq (blocks of {} bytes from byte {})\n",
        g.block, g.offset
    );
    for (b, e) in entries {
        if e.acked != 0 || e.inflight != 0 {
            let _ = writeln!(o, "{b} {} {}", e.acked, e.inflight);
        }
    }
    o
}

/// Loads the log at `path`; a missing file is an empty log when `may_be_missing`.
fn load_log(
    path: &Path,
    nblocks: u64,
    may_be_missing: bool,
) -> anyhow::Result<BTreeMap<u64, Entry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if may_be_missing && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(BTreeMap::new());
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading the stamp log {}", path.display()));
        }
    };
    parse_log(&text, nblocks)
        .map_err(|e| CliError::BadFlag(format!("stamp log {}: {e}", path.display())).into())
}

/// Writes `text` to `path` through a temporary file beside it, renamed over it.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

// --- the device ---------------------------------------------------------------

/// The stamped region: `nblocks` blocks of `block` bytes from byte `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    offset: u64,
    block: u64,
    nblocks: u64,
}

impl Geometry {
    fn new(dev_size: u64, offset: u64, len: Option<u64>, block: u64) -> Result<Geometry, CliError> {
        let bad = |m: String| Err(CliError::BadFlag(m));
        if block < 512 || !block.is_multiple_of(512) || block > 16 << 20 {
            return bad(format!(
                "--block {block}: a multiple of 512 bytes, at most 16 MiB"
            ));
        }
        if !offset.is_multiple_of(512) {
            return bad(format!("--offset {offset}: a multiple of 512 bytes"));
        }
        if offset >= dev_size {
            return bad(format!(
                "--offset {offset} is past the end of the device ({dev_size} bytes)"
            ));
        }
        let len = len.unwrap_or(dev_size - offset);
        if offset.checked_add(len).is_none_or(|end| end > dev_size) {
            return bad(format!(
                "--offset {offset} --len {len} ends past the end of the device ({dev_size} bytes)"
            ));
        }
        let nblocks = len / block;
        if nblocks == 0 {
            return bad(format!("--len {len} holds no block of {block} bytes"));
        }
        if nblocks > MAX_BLOCKS {
            return bad(format!(
                "{nblocks} blocks is more than {MAX_BLOCKS}: give a smaller --len or a larger --block"
            ));
        }
        Ok(Geometry {
            offset,
            block,
            nblocks,
        })
    }

    fn byte(&self, b: u64) -> u64 {
        self.offset + b * self.block
    }
}

/// A block-sized buffer aligned for O_DIRECT.
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        // align_offset may decline (usize::MAX); then the buffer is
        // unaligned and O_DIRECT refuses it, which open_dev falls back on.
        let start = match raw.as_ptr().align_offset(ALIGN) {
            s if s < ALIGN => s,
            _ => 0,
        };
        AlignedBuf { raw, start, len }
    }
    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// Opens the region's device with O_DIRECT, or, where O_DIRECT gives
/// EINVAL (at open or on a first read of the region), buffered with O_DSYNC
/// for writing. Returns the file, the region and the mode's name.
fn open_dev(r: &RegionArgs, write: bool) -> anyhow::Result<(File, Geometry, &'static str)> {
    let path = &r.dev;
    let open = |flags: i32| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(flags)
            .open(path)
    };
    let mut f = match open(libc::O_DIRECT) {
        Ok(f) => Some(f),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let probe_file = f.as_ref().map_or_else(|| open(0), |f| f.try_clone());
    let mut probe_file = probe_file.with_context(|| format!("opening {}", path.display()))?;
    let size = probe_file
        .seek(SeekFrom::End(0))
        .with_context(|| format!("finding the size of {}", path.display()))?;
    let g = Geometry::new(size, r.offset, r.len, r.block)?;
    if let Some(df) = &f {
        let mut buf = AlignedBuf::new(g.block as usize);
        match df.read_exact_at(buf.bytes_mut(), g.offset) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => f = None,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading {} at byte {}", path.display(), g.offset));
            }
        }
    }
    match f {
        Some(f) => Ok((f, g, "O_DIRECT")),
        None => {
            let flags = if write { libc::O_DSYNC } else { 0 };
            let f = open(flags).with_context(|| format!("opening {}", path.display()))?;
            Ok((
                f,
                g,
                if write {
                    "O_DSYNC (O_DIRECT refused)"
                } else {
                    "buffered (O_DIRECT refused)"
                },
            ))
        }
    }
}

// --- write --------------------------------------------------------------------

/// State the writer threads and the main thread share.
struct Shared {
    /// Per block, the last acknowledged sequence number.
    acked: Vec<AtomicU64>,
    /// Per block, the last sequence number submitted (kept after its ack:
    /// in flight only while it is newer than `acked`).
    submitted: Vec<AtomicU64>,
    next_seq: AtomicU64,
    stop: AtomicBool,
    writes: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// Why `write` stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopReason {
    Duration,
    Signal,
    IoError(String),
}

/// What `write` did.
struct WriteReport {
    writes: u64,
    errors: u64,
    reason: StopReason,
    mode: &'static str,
    /// Writes in flight at the previous stop: how many, and how many had landed.
    resolved: (u64, u64),
    /// Threads still inside a write when the log was written.
    stuck: usize,
    first_seq: u64,
    last_seq: u64,
}

impl WriteReport {
    /// The line `augur stamp write` prints.
    fn line(&self) -> String {
        let why = match &self.reason {
            StopReason::Duration => "stopped at --duration".to_string(),
            StopReason::Signal => "stopped by a signal".to_string(),
            StopReason::IoError(e) => format!(
                "stopped at the first I/O error ({e}; the expected end when the daemon under test was killed)"
            ),
        };
        let mut s = format!(
            "stamp write: {} writes acked, {} errors, seqs {}..{}, {}, {why}",
            self.writes, self.errors, self.first_seq, self.last_seq, self.mode
        );
        if self.resolved.0 > 0 {
            s += &format!(
                "; {} writes in flight at the last stop, {} of them landed",
                self.resolved.0, self.resolved.1
            );
        }
        if self.stuck > 0 {
            s += &format!(
                "; {} threads still blocked in a write after {} s (logged as in flight)",
                self.stuck,
                GRACE.as_secs()
            );
        }
        s
    }
}

/// One writer thread: stamps random blocks of its own until told to stop or
/// a write fails.
fn writer(t: u64, threads: u64, seed: u64, file: &File, g: Geometry, sh: &Shared) {
    if t >= g.nblocks {
        return;
    }
    let mine = (g.nblocks - t).div_ceil(threads);
    let mut rng = Rng::new(seed ^ t.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut buf = AlignedBuf::new(g.block as usize);
    while !sh.stop.load(Ordering::SeqCst) {
        let b = t + rng.below(mine) * threads;
        let seq = sh.next_seq.fetch_add(1, Ordering::SeqCst);
        encode(buf.bytes_mut(), b, seq);
        sh.submitted[b as usize].store(seq, Ordering::SeqCst);
        match file.write_all_at(buf.bytes(), g.byte(b)) {
            Ok(()) => {
                sh.acked[b as usize].store(seq, Ordering::SeqCst);
                sh.writes.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                sh.errors.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut first) = sh.first_error.lock() {
                    first.get_or_insert_with(|| format!("block {b} at byte {}: {e}", g.byte(b)));
                }
                sh.stop.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Runs `augur stamp write` until its duration, `signal` or an I/O error.
fn run_write(a: &WriteArgs, signal: &AtomicBool) -> anyhow::Result<WriteReport> {
    if a.threads == 0 || a.threads > 1024 {
        return Err(CliError::BadFlag(format!("--threads {}: 1 to 1024", a.threads)).into());
    }
    let (file, g, mode) = open_dev(&a.region, true)?;
    let mut log = load_log(&a.region.log, g.nblocks, true)?;
    // Above every sequence number seen, landed or not.
    let first_seq = log
        .values()
        .map(|e| e.acked.max(e.inflight))
        .max()
        .unwrap_or(0)
        + 1;
    // Settle the writes that were in flight at the last stop: whichever
    // the device holds now is what it acknowledged, as far as later
    // checks are concerned.
    let mut resolved = (0, 0);
    let mut buf = AlignedBuf::new(g.block as usize);
    for (&b, e) in log.iter_mut() {
        if e.inflight > e.acked {
            file.read_exact_at(buf.bytes_mut(), g.byte(b))
                .with_context(|| format!("reading block {b} of {}", a.region.dev.display()))?;
            resolved.0 += 1;
            if decode(buf.bytes(), b) == Found::Stamp(e.inflight) {
                e.acked = e.inflight;
                resolved.1 += 1;
            }
        }
        e.inflight = 0;
    }
    let n = g.nblocks as usize;
    let sh = Arc::new(Shared {
        acked: (0..n).map(|_| AtomicU64::new(0)).collect(),
        submitted: (0..n).map(|_| AtomicU64::new(0)).collect(),
        next_seq: AtomicU64::new(first_seq),
        stop: AtomicBool::new(false),
        writes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    for (&b, e) in &log {
        sh.acked[b as usize].store(e.acked, Ordering::SeqCst);
        sh.submitted[b as usize].store(e.acked, Ordering::SeqCst);
    }
    let file = Arc::new(file);
    let mut seed_state = a.seed ^ first_seq.rotate_left(17);
    let run_seed = splitmix64(&mut seed_state);
    let handles = (0..a.threads)
        .map(|t| {
            let (sh, file) = (Arc::clone(&sh), Arc::clone(&file));
            let threads = a.threads;
            std::thread::Builder::new()
                .name(format!("stamp-{t}"))
                .spawn(move || writer(t, threads, run_seed, &file, g, &sh))
                .context("starting a writer thread")
        })
        .collect::<anyhow::Result<Vec<_>>>();
    let handles = match handles {
        Ok(h) => h,
        Err(e) => {
            sh.stop.store(true, Ordering::SeqCst);
            return Err(e);
        }
    };
    let start = Instant::now();
    let reason = loop {
        if signal.load(Ordering::SeqCst) {
            break StopReason::Signal;
        }
        if sh.stop.load(Ordering::SeqCst) || handles.iter().all(|h| h.is_finished()) {
            let e = sh.first_error.lock().ok().and_then(|f| f.clone());
            break StopReason::IoError(e.unwrap_or_else(|| "a writer thread ended".into()));
        }
        if start.elapsed() >= a.duration {
            break StopReason::Duration;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    sh.stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stuck = handles.iter().filter(|h| !h.is_finished()).count();
    let panicked = handles
        .into_iter()
        .filter(|h| h.is_finished())
        .map(|h| h.join())
        .filter(Result::is_err)
        .count();
    // Submitted before acked: a write acked after the first load is
    // then logged as in flight, which the check accepts either way.
    let entries = (0..g.nblocks).map(|b| {
        let submitted = sh.submitted[b as usize].load(Ordering::SeqCst);
        let acked = sh.acked[b as usize].load(Ordering::SeqCst);
        let inflight = if submitted > acked { submitted } else { 0 };
        (b, Entry { acked, inflight })
    });
    write_atomic(&a.region.log, &format_log(&g, entries))?;
    if panicked > 0 {
        anyhow::bail!("{panicked} writer thread(s) panicked (the log was written)");
    }
    Ok(WriteReport {
        writes: sh.writes.load(Ordering::SeqCst),
        errors: sh.errors.load(Ordering::SeqCst),
        reason,
        mode,
        resolved,
        stuck,
        first_seq,
        last_seq: sh.next_seq.load(Ordering::SeqCst).saturating_sub(1),
    })
}

// --- check --------------------------------------------------------------------

/// What `check` found.
struct CheckReport {
    blocks: u64,
    /// One line per lost write.
    lost: Vec<String>,
    /// Blocks with a write in flight at the stop, and how many of those landed.
    inflight: (u64, u64),
}

impl CheckReport {
    /// The summary line `augur stamp check` prints last.
    fn summary(&self) -> String {
        format!(
            "stamp check: {} blocks, {} ok, {} lost ({} writes were in flight at the stop, {} of them landed)",
            self.blocks,
            self.blocks - self.lost.len() as u64,
            self.lost.len(),
            self.inflight.0,
            self.inflight.1
        )
    }
}

/// Runs `augur stamp check`: reads every block of the log.
fn run_check(r: &RegionArgs) -> anyhow::Result<CheckReport> {
    let (file, g, _mode) = open_dev(r, false)?;
    let log = load_log(&r.log, g.nblocks, false)?;
    let mut buf = AlignedBuf::new(g.block as usize);
    let mut rep = CheckReport {
        blocks: log.len() as u64,
        lost: Vec::new(),
        inflight: (0, 0),
    };
    for (&b, e) in &log {
        file.read_exact_at(buf.bytes_mut(), g.byte(b))
            .with_context(|| {
                format!(
                    "reading block {b} of {} at byte {}",
                    r.dev.display(),
                    g.byte(b)
                )
            })?;
        let found = decode(buf.bytes(), b);
        if e.inflight > e.acked {
            rep.inflight.0 += 1;
            if found == Found::Stamp(e.inflight) {
                rep.inflight.1 += 1;
            }
        }
        if !e.holds(found) {
            rep.lost.push(format!(
                "lost: block {b} at byte {}: expected {}, found {found}",
                g.byte(b),
                e.expected()
            ));
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(block: u64, seq: u64) -> Vec<u8> {
        let mut v = vec![0u8; 4096];
        encode(&mut v, block, seq);
        v
    }

    #[test]
    fn encode_then_decode() {
        let v = stamped(7, 123);
        assert_eq!(&v[..8], b"AUGSTAMP");
        assert_eq!(decode(&v, 7), Found::Stamp(123));
        assert_eq!(decode(&v, 8), Found::OtherBlock { block: 7, seq: 123 });
        // The payload is a function of (block, seq).
        assert_eq!(stamped(7, 123), v);
        assert_ne!(stamped(7, 124)[HEADER..], v[HEADER..]);
        assert_ne!(stamped(8, 123)[HEADER..], v[HEADER..]);
    }

    #[test]
    fn decode_finds_garbage() {
        assert_eq!(decode(&[0u8; 4096], 0), Found::Zeros);
        assert_eq!(decode(&[0xAAu8; 4096], 0), Found::NoStamp);
        let mut v = stamped(3, 9);
        v[4000] ^= 1;
        assert_eq!(decode(&v, 3), Found::BadCrc(9));
        // Half old, half new: a torn write.
        let mut torn = stamped(3, 9);
        torn[2048..].copy_from_slice(&stamped(3, 10)[2048..]);
        assert_eq!(decode(&torn, 3), Found::BadCrc(9));
        let mut v = stamped(3, 9);
        v[25] ^= 0x10;
        assert_eq!(decode(&v, 3), Found::BadCrc(9));
    }

    #[test]
    fn check_rule() {
        let e = |acked, inflight| Entry { acked, inflight };
        // Acked only.
        assert!(e(5, 0).holds(Found::Stamp(5)));
        assert!(!e(5, 0).holds(Found::Stamp(4)));
        assert!(!e(5, 0).holds(Found::Stamp(6)));
        assert!(!e(5, 0).holds(Found::Zeros));
        assert!(!e(5, 0).holds(Found::BadCrc(5)));
        // A newer write in flight may or may not have landed; nothing else.
        assert!(e(5, 9).holds(Found::Stamp(5)));
        assert!(e(5, 9).holds(Found::Stamp(9)));
        assert!(!e(5, 9).holds(Found::Stamp(7)));
        assert!(!e(5, 9).holds(Found::NoStamp));
        // An "in flight" older than the acked one is not an alternative.
        assert!(!e(9, 5).holds(Found::Stamp(5)));
        // Never acknowledged: garbage is fine.
        assert!(e(0, 9).holds(Found::Zeros));
        assert!(e(0, 9).holds(Found::BadCrc(9)));
        assert!(e(0, 9).holds(Found::Stamp(9)));
        assert!(e(0, 0).holds(Found::NoStamp));
        assert!(!e(5, 0).holds(Found::OtherBlock { block: 1, seq: 5 }));
    }

    #[test]
    fn log_round_trip_and_comments() {
        let g = Geometry {
            offset: 0,
            block: 4096,
            nblocks: 10,
        };
        let entries = [
            (
                1,
                Entry {
                    acked: 4,
                    inflight: 0,
                },
            ),
            (
                2,
                Entry {
                    acked: 0,
                    inflight: 0,
                },
            ),
            (
                9,
                Entry {
                    acked: 3,
                    inflight: 8,
                },
            ),
        ];
        let text = format_log(&g, entries.into_iter());
        assert!(text.starts_with('#'));
        let m = parse_log(&text, 10).expect("parses");
        assert_eq!(m.len(), 2, "blocks with nothing are left out: {text}");
        assert_eq!(
            m[&1],
            Entry {
                acked: 4,
                inflight: 0
            }
        );
        assert_eq!(
            m[&9],
            Entry {
                acked: 3,
                inflight: 8
            }
        );
        assert_eq!(parse_log("\n  # c\n0 1 0\n", 1).expect("parses").len(), 1);
    }

    #[test]
    fn bad_log_lines_are_named_by_number() {
        let e = parse_log("0 1 0\n1 x 0\n2 3\n# fine\n7 1 0\n0 2 0\n", 5).unwrap_err();
        assert!(e.contains("line 2: expected"), "{e}");
        assert!(e.contains("got `2 3`"), "{e}");
        assert!(e.contains("line 3:"), "{e}");
        assert!(e.contains("line 5: block 7 is outside"), "{e}");
        assert!(e.contains("line 6: block 0 appears twice"), "{e}");
        assert!(!e.contains("line 1:") && !e.contains("line 4:"), "{e}");
        assert!(parse_log("1 2 3 4\n", 5).unwrap_err().contains("line 1:"));
        assert!(parse_log("-1 2 3\n", 5).unwrap_err().contains("line 1:"));
    }

    #[test]
    fn geometry_checks_its_flags() {
        let g = Geometry::new(64 << 20, 32 << 20, None, 4096).expect("fits");
        assert_eq!(g.nblocks, 8192);
        assert_eq!(g.byte(1), (32 << 20) + 4096);
        assert_eq!(
            Geometry::new(1 << 20, 0, Some(10_000), 4096)
                .expect("fits")
                .nblocks,
            2
        );
        assert!(Geometry::new(1 << 20, 0, None, 1000).is_err());
        assert!(Geometry::new(1 << 20, 100, None, 4096).is_err());
        assert!(Geometry::new(1 << 20, 1 << 20, None, 4096).is_err());
        assert!(Geometry::new(1 << 20, 4096, Some(1 << 20), 4096).is_err());
        assert!(Geometry::new(1 << 20, 0, Some(u64::MAX), 4096).is_err());
        assert!(Geometry::new(1 << 20, 0, Some(2048), 4096).is_err());
    }

    fn region(dev: &Path, log: &Path) -> RegionArgs {
        RegionArgs {
            dev: dev.to_path_buf(),
            log: log.to_path_buf(),
            offset: 1 << 20,
            len: Some(1 << 20),
            block: 4096,
        }
    }

    #[test]
    fn write_then_check_a_file_and_find_a_lost_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path().join("dev.img");
        let log = dir.path().join("stamp.log");
        std::fs::write(&dev, vec![0u8; 3 << 20]).expect("dev file");
        let never = AtomicBool::new(false);
        let mut a = WriteArgs {
            region: region(&dev, &log),
            threads: 3,
            seed: 5,
            duration: Duration::from_millis(150),
        };
        let r = run_write(&a, &never).expect("write");
        assert_eq!(r.reason, StopReason::Duration);
        assert!(r.writes > 0 && r.errors == 0, "{}", r.line());
        let c = run_check(&a.region).expect("check");
        assert!(c.lost.is_empty(), "{:?}", c.lost);
        assert!(c.blocks > 0);
        // A second run continues the sequence numbers.
        a.duration = Duration::from_millis(50);
        let r2 = run_write(&a, &never).expect("write again");
        assert!(r2.first_seq > r.last_seq, "{} then {}", r.line(), r2.line());
        assert!(run_check(&a.region).expect("check").lost.is_empty());
        // A signal stops it at once.
        a.duration = Duration::from_secs(60);
        let r3 = run_write(&a, &AtomicBool::new(true)).expect("signalled");
        assert_eq!(r3.reason, StopReason::Signal);
        // Roll one acknowledged block back to zeros: reported lost, with its offset.
        let m = load_log(&log, 256, false).expect("log");
        let (&b, _) = m.iter().find(|(_, e)| e.acked > 0).expect("an acked block");
        let f = OpenOptions::new().write(true).open(&dev).expect("open");
        f.write_all_at(&[0u8; 4096], (1 << 20) + b * 4096)
            .expect("zero it");
        let c = run_check(&a.region).expect("check");
        assert_eq!(c.lost.len(), 1, "{:?}", c.lost);
        assert!(
            c.lost[0].starts_with(&format!(
                "lost: block {b} at byte {}: expected seq",
                (1 << 20) + b * 4096
            )),
            "{}",
            c.lost[0]
        );
        assert!(c.lost[0].ends_with("found zeros"), "{}", c.lost[0]);
        assert!(
            c.summary()
                .contains(&format!("{} ok, 1 lost", c.blocks - 1)),
            "{}",
            c.summary()
        );
    }

    #[test]
    fn in_flight_writes_resolve_on_the_next_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path().join("dev.img");
        let log = dir.path().join("stamp.log");
        std::fs::write(&dev, vec![0u8; 2 << 20]).expect("dev file");
        let f = OpenOptions::new().write(true).open(&dev).expect("open");
        // Block 0: the in-flight write (seq 9) landed; block 1: it did not (holds 4).
        f.write_all_at(&stamped(0, 9), 1 << 20).expect("block 0");
        f.write_all_at(&stamped(1, 4), (1 << 20) + 4096)
            .expect("block 1");
        std::fs::write(&log, "0 5 9\n1 4 10\n").expect("log");
        let a = WriteArgs {
            region: region(&dev, &log),
            threads: 1,
            seed: 1,
            duration: Duration::ZERO,
        };
        assert!(run_check(&a.region).expect("check").lost.is_empty());
        let r = run_write(&a, &AtomicBool::new(true)).expect("write");
        assert_eq!(r.resolved, (2, 1), "{}", r.line());
        assert!(r.first_seq == 11);
        let m = load_log(&log, 256, false).expect("log");
        assert!(m[&0].acked.max(m[&0].inflight) >= 9, "{m:?}");
        // Nothing may be lost either way.
        assert!(run_check(&a.region).expect("check").lost.is_empty());
    }
}

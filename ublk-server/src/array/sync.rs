//! The array's background thread: the bitmap's lazy clearing every tick,
//! and the copies that bring replicas into agreement: resync (dirty
//! regions after a crash), rebuild (a new or returning replica), and scrub
//! (compare every region, repair on request).
//!
//! Copies run region by region, each region locked against writes for the
//! time of its copy (`bitmap.rs`), at a limited rate so foreground I/O keeps
//! most of its throughput: the worker sleeps between regions, never while
//! holding one.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::bitmap::Member;
use super::{AlignedBuf, Inner};

/// How often the bitmap's idle regions are considered for clearing.
pub const TICK: Duration = Duration::from_millis(500);
/// The default rebuild/resync/scrub rate limit, bytes per second.
pub const DEFAULT_SYNC_RATE: u64 = 64 << 20;
/// Bytes per replica read or write of a copy.
const CHUNK: usize = 1 << 20;
/// How many mismatching region offsets a scrub report lists.
const MAX_LISTED: usize = 64;

/// What the background copy is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncKind {
    /// Dirty regions after an unclean stop, from one chosen replica.
    Resync,
    /// A new, replaced or returning replica, from the live ones.
    Rebuild,
    /// Comparing every region of every live replica.
    Scrub,
}

/// The result of the last scrub.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ScrubReport {
    /// Regions compared.
    pub regions: u64,
    /// Regions whose replicas differ.
    pub mismatches: u64,
    /// Byte offsets of the first mismatching regions.
    pub offsets: Vec<u64>,
    /// Regions rewritten (with `--repair`).
    pub repaired: u64,
    /// Whether it repaired.
    pub repair: bool,
    /// Where repairs came from: `majority`, or `primary` with two replicas.
    pub repair_source: String,
    /// Region size in bytes.
    pub region_size: u64,
    /// Seconds it took.
    pub seconds: f64,
}

/// Progress of the background copy, for `ctl status` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SyncStatus {
    /// True while a resync, rebuild or scrub runs.
    pub running: bool,
    /// Which one (the last one when none runs).
    pub kind: Option<SyncKind>,
    /// Regions done of this run.
    pub done_regions: u64,
    /// Regions this run covers.
    pub total_regions: u64,
    /// Bytes copied or compared in this run.
    pub bytes: u64,
    /// The rate limit, bytes per second (0: none).
    pub rate_limit: u64,
    /// Regions resynced or rebuilt since start, all runs.
    pub synced_regions_total: u64,
    /// The last scrub's result.
    pub last_scrub: Option<ScrubReport>,
}

#[derive(Default)]
struct State {
    wake: bool,
    stop: bool,
    scrub: Option<bool>,
    status: SyncStatus,
}

/// Shared between the array and its background thread.
#[derive(Default)]
pub(crate) struct SyncShared {
    state: Mutex<State>,
    cv: Condvar,
    /// Bytes per second for copies (0: unlimited).
    pub(crate) rate: std::sync::atomic::AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SyncShared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status now.
    pub(crate) fn status(&self) -> SyncStatus {
        let mut s = self.lock().status.clone();
        s.rate_limit = self.rate.load(Relaxed);
        s
    }

    /// Asks the thread to look for pending regions now.
    pub(crate) fn kick(&self) {
        self.lock().wake = true;
        self.cv.notify_all();
    }

    /// Queues a scrub; refused while another copy runs or is due.
    pub(crate) fn request_scrub(&self, repair: bool) -> Result<(), String> {
        let mut s = self.lock();
        if s.status.running || s.scrub.is_some() {
            return Err(format!(
                "a {} is already running ({} of {} regions); try again when it is done",
                s.status.kind.map_or("scrub", |k| match k {
                    SyncKind::Resync => "resync",
                    SyncKind::Rebuild => "rebuild",
                    SyncKind::Scrub => "scrub",
                }),
                s.status.done_regions,
                s.status.total_regions
            ));
        }
        s.scrub = Some(repair);
        // Running from now on, so a caller polling for the result never
        // takes the previous scrub's for this one's.
        s.status.running = true;
        s.status.kind = Some(SyncKind::Scrub);
        s.status.done_regions = 0;
        self.cv.notify_all();
        Ok(())
    }

    /// Stops the thread and waits for it (at the array's end).
    pub(crate) fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }

    fn stopping(&self) -> bool {
        self.lock().stop
    }

    fn set(&self, f: impl FnOnce(&mut SyncStatus)) {
        f(&mut self.lock().status);
    }
}

/// Starts the background thread of an array with metadata.
pub(crate) fn start(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let shared = inner.sync.clone();
    let t = std::thread::Builder::new()
        .name("augur-sync".into())
        .spawn(move || run(weak, shared));
    match t {
        Ok(t) => *inner.sync.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(t),
        Err(e) => tracing::error!("cannot start the array's sync thread: {e}"),
    }
}

fn run(weak: Weak<Inner>, shared: Arc<SyncShared>) {
    if let Err(e) = super::signals::block_stop_signals() {
        tracing::error!("sync thread: cannot block SIGINT/SIGTERM: {e}");
    }
    loop {
        let scrub = {
            let mut s = shared.lock();
            if !s.wake && !s.stop && s.scrub.is_none() {
                s = shared
                    .cv
                    .wait_timeout(s, TICK)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if s.stop {
                return;
            }
            s.wake = false;
            s.scrub.take()
        };
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let Some(intent) = inner.intent.as_ref() else {
            return;
        };
        if !intent.any_pending().is_empty() {
            copy_pending(&inner, &shared);
        }
        if let Some(repair) = scrub {
            scrub_all(&inner, &shared, repair);
        }
        intent.tick(|| inner.flush_live());
    }
}

/// Sleeps as long as the rate limit asks after `bytes` since `t0` (the
/// limit is read again every slice, so a change applies at once).
fn pace(shared: &SyncShared, t0: Instant, bytes: u64) {
    while !shared.stopping() {
        let rate = shared.rate.load(Relaxed);
        if rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let spent = t0.elapsed();
        if due <= spent {
            return;
        }
        std::thread::sleep((due - spent).min(Duration::from_millis(20)));
    }
}

/// Copies every pending region from a replica holding it to those lacking it.
fn copy_pending(inner: &Inner, shared: &SyncShared) {
    let Some(intent) = inner.intent.as_ref() else {
        return;
    };
    let n = inner.replicas.len();
    let rebuilding = {
        let b = intent.lock_book();
        b.members.contains(&Member::Rebuilding)
    };
    let kind = if rebuilding {
        SyncKind::Rebuild
    } else {
        SyncKind::Resync
    };
    let first = intent.any_pending();
    let total = first.len() as u64;
    let t0 = Instant::now();
    shared.set(|s| {
        s.running = true;
        s.kind = Some(kind);
        s.done_regions = 0;
        s.total_regions = total;
        s.bytes = 0;
    });
    let label = match kind {
        SyncKind::Resync => "resync",
        _ => "rebuild",
    };
    tracing::warn!(
        "{label}: {total} region(s) of {} MiB to copy, at most {} MiB/s",
        intent.region_size >> 20,
        shared.rate.load(Relaxed) >> 20
    );
    let mut bytes = 0u64;
    let mut done = 0u64;
    let mut next_log = Instant::now() + Duration::from_secs(5);
    let mut buf = AlignedBuf::new(CHUNK);
    loop {
        let regions = intent.any_pending();
        if regions.is_empty() || shared.stopping() {
            break;
        }
        for r in regions {
            if shared.stopping() {
                break;
            }
            let targets: Vec<usize> = (0..n)
                .filter(|&i| inner.is_live(i) && intent.is_pending(i, r))
                .collect();
            if targets.is_empty() {
                continue;
            }
            let Some(source) = (0..n).find(|&i| inner.is_live(i) && !intent.is_pending(i, r))
            else {
                tracing::error!(
                    "{label}: no live replica holds region {r}: its data is lost; the replicas lacking it keep what they have"
                );
                for &t in &targets {
                    intent.done_pending(t, r);
                }
                continue;
            };
            if !intent.lock_region(r, Duration::from_secs(30)) {
                tracing::warn!("{label}: region {r} stayed busy for 30 s; coming back to it");
                continue;
            }
            let (start, end) = intent.region_range(r, inner.size);
            let mut off = start;
            let mut ok = true;
            while off < end {
                let len = ((end - off) as usize).min(CHUNK);
                let chunk = &mut buf[..len];
                if let Err(e) = inner.read_replica(source, off, chunk) {
                    inner.mark_failed(source, &format!("{label} read at {off} failed: {e}"));
                    ok = false;
                    break;
                }
                for &t in &targets {
                    if inner.is_live(t)
                        && let Err(e) = inner.write_replica(t, off, chunk)
                    {
                        inner.mark_failed(t, &format!("{label} write at {off} failed: {e}"));
                    }
                }
                off += len as u64;
                bytes += len as u64;
            }
            intent.unlock_region(r);
            if !ok {
                continue; // another source next round
            }
            for &t in &targets {
                intent.done_pending(t, r);
            }
            done += 1;
            shared.set(|s| {
                s.done_regions = done;
                s.bytes = bytes;
                s.synced_regions_total += 1;
            });
            if Instant::now() >= next_log {
                tracing::warn!(
                    "{label}: {done} of {total} region(s) ({:.0}%)",
                    100.0 * done as f64 / total.max(1) as f64
                );
                next_log = Instant::now() + Duration::from_secs(5);
            }
            pace(shared, t0, bytes);
        }
    }
    if shared.stopping() {
        shared.set(|s| s.running = false);
        tracing::warn!(
            "{label} stopped with the array after {done} region(s); it resumes at the next start"
        );
        return;
    }
    let _ = inner.flush_live();
    {
        let mut book = intent.lock_book();
        let mut joined = false;
        for i in 0..n {
            if book.members[i] == Member::Rebuilding
                && inner.is_live(i)
                && intent.pending_count(i) == 0
            {
                book.members[i] = Member::InSync;
                joined = true;
                tracing::warn!("replica {i} is in sync: reads may go to it again");
            }
        }
        // A replica joining is a change of membership; a resync is not.
        if joined {
            intent.change(&mut book);
        } else {
            intent.store(&mut book);
        }
    }
    shared.set(|s| s.running = false);
    tracing::warn!(
        "{label} done: {done} region(s), {} MiB in {:.1} s",
        bytes >> 20,
        t0.elapsed().as_secs_f64()
    );
}

/// Compares every region across the live replicas; with `repair`, rewrites
/// the differing ones from the majority (the lowest-numbered replica with two).
fn scrub_all(inner: &Inner, shared: &SyncShared, repair: bool) {
    let Some(intent) = inner.intent.as_ref() else {
        return;
    };
    let n = inner.replicas.len();
    let total = intent.regions as u64;
    let t0 = Instant::now();
    shared.set(|s| {
        s.running = true;
        s.kind = Some(SyncKind::Scrub);
        s.done_regions = 0;
        s.total_regions = total;
        s.bytes = 0;
    });
    let mut report = ScrubReport {
        repair,
        region_size: intent.region_size,
        ..ScrubReport::default()
    };
    let mut bytes = 0u64;
    let mut bufs: Vec<AlignedBuf> = (0..n).map(|_| AlignedBuf::new(CHUNK)).collect();
    let mut fix = AlignedBuf::new(CHUNK);
    let mut live_at_end = 0;
    for r in 0..intent.regions {
        if shared.stopping() {
            break;
        }
        let who: Vec<usize> = (0..n)
            .filter(|&i| inner.is_live(i) && !intent.is_pending(i, r))
            .collect();
        live_at_end = who.len();
        if who.len() < 2 {
            report.regions += 1;
            continue;
        }
        if !intent.lock_region(r, Duration::from_secs(30)) {
            tracing::warn!("scrub: region {r} stayed busy for 30 s; skipped");
            continue;
        }
        let (start, end) = intent.region_range(r, inner.size);
        let mut off = start;
        let mut differs = false;
        let mut repaired = false;
        while off < end {
            let len = ((end - off) as usize).min(CHUNK);
            let mut readable = Vec::with_capacity(who.len());
            for &i in &who {
                match inner.read_replica(i, off, &mut bufs[i][..len]) {
                    Ok(()) => readable.push(i),
                    Err(e) => inner.mark_failed(i, &format!("scrub read at {off} failed: {e}")),
                }
            }
            bytes += (len * readable.len()) as u64;
            let same = |a: usize, b: usize| bufs[a][..len] == bufs[b][..len];
            if readable.windows(2).any(|w| !same(w[0], w[1])) {
                differs = true;
                if repair {
                    // The copy most replicas agree on; ties to the lowest index.
                    let good = readable
                        .iter()
                        .copied()
                        .max_by_key(|&a| {
                            let votes = readable.iter().filter(|&&b| same(a, b)).count();
                            (votes, std::cmp::Reverse(a))
                        })
                        .unwrap_or(readable[0]);
                    fix[..len].copy_from_slice(&bufs[good][..len]);
                    for &i in &readable {
                        if !same(i, good)
                            && let Err(e) = inner.write_replica(i, off, &fix[..len])
                        {
                            inner.mark_failed(
                                i,
                                &format!("scrub repair write at {off} failed: {e}"),
                            );
                        }
                    }
                    repaired = true;
                }
            }
            off += len as u64;
        }
        intent.unlock_region(r);
        report.regions += 1;
        if differs {
            report.mismatches += 1;
            if report.offsets.len() < MAX_LISTED {
                report.offsets.push(start);
            }
            tracing::warn!(
                "scrub: region {r} (bytes {start}..{end}) differs between replicas{}",
                if repaired { "; repaired" } else { "" }
            );
        }
        if repaired {
            report.repaired += 1;
        }
        shared.set(|s| {
            s.done_regions = r as u64 + 1;
            s.bytes = bytes;
        });
        pace(shared, t0, bytes);
    }
    if repair && report.repaired > 0 {
        let _ = inner.flush_live();
    }
    report.repair_source = if live_at_end == 2 {
        "primary"
    } else {
        "majority"
    }
    .into();
    report.seconds = (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    tracing::warn!(
        "scrub done: {} region(s), {} mismatch(es){} in {:.1} s",
        report.regions,
        report.mismatches,
        if repair {
            format!(", {} repaired", report.repaired)
        } else {
            String::new()
        },
        report.seconds
    );
    shared.set(|s| {
        s.running = false;
        s.done_regions = report.regions;
        s.last_scrub = Some(report);
    });
}

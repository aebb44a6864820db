//! The one reader of a daemon's live training log. Every batch goes to each
//! consumer that is on, a recording file and online adaptation, so the two
//! run together on one log (the log has a single consumer by design).
//!
//! The array writes into the log only while the tap runs: it starts with
//! the first consumer and stops with the last, so a daemon that neither
//! records nor adapts pays nothing per I/O for it.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use augur_feature_store::{LogWriter, TrainingLog, TrainingRecord};

use crate::adapt::Adapter;
use crate::array::Array;

/// Records the log holds between two passes of the tap (a pass every
/// [`PASS`]; this is about 3 M records per second before any drop).
const RING: usize = 1 << 16;
/// How long the tap sleeps when it finds the log empty.
const PASS: Duration = Duration::from_millis(20);
/// Reads kept for an adapter that is busy (taking a round) when a batch
/// comes; beyond it the oldest are dropped, as the adapter's window would.
const ADAPTER_BACKLOG: usize = 1 << 18;

/// A recording in progress.
struct Recording {
    file: PathBuf,
    writer: LogWriter<BufWriter<File>>,
    /// The log's drop count when it began.
    dropped_at_start: u64,
}

/// What each batch goes to.
#[derive(Default)]
struct Sinks {
    recording: Option<Recording>,
    /// A write to the recording failed: why, and the file (it stopped there).
    failed: Option<(PathBuf, String)>,
    adapter: Option<Arc<Mutex<Adapter>>>,
    /// Reads the adapter was too busy to take.
    backlog: Vec<TrainingRecord>,
}

impl Sinks {
    fn is_empty(&self) -> bool {
        self.recording.is_none() && self.adapter.is_none()
    }

    fn take(&mut self, batch: &[TrainingRecord]) {
        if let Some(r) = self.recording.as_mut()
            && let Err(e) = r.writer.write(batch)
        {
            let r = self.recording.take().map(|r| r.file).unwrap_or_default();
            tracing::warn!("recording to {} stopped: {e}", r.display());
            self.failed = Some((r, e.to_string()));
        }
        if let Some(a) = &self.adapter {
            // Never wait for the adapter thread (idle priority, it may sit
            // preempted while it holds its lock): keep the batch for later.
            match a.try_lock() {
                Ok(mut a) => {
                    a.offer(&self.backlog);
                    a.offer(batch);
                    self.backlog.clear();
                }
                Err(_) => {
                    self.backlog.extend_from_slice(batch);
                    if self.backlog.len() > ADAPTER_BACKLOG {
                        let extra = self.backlog.len() - ADAPTER_BACKLOG;
                        self.backlog.drain(..extra);
                    }
                }
            }
        }
    }
}

/// The tap's thread and what it shares with it.
struct Running {
    log: Arc<TrainingLog>,
    stop: Arc<AtomicBool>,
    /// Passes that found the log empty, so a caller can wait for one that
    /// began after it (everything pushed before has then been handed on).
    passes: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

/// What a finished recording wrote.
#[derive(Debug)]
pub struct Recorded {
    /// Its file.
    pub file: PathBuf,
    /// Records written.
    pub records: u64,
    /// Records the log dropped meanwhile (full ring).
    pub dropped: u64,
}

/// The live training log's only consumer, fanning it out (see the module).
pub struct LogTap {
    array: Array,
    sinks: Arc<Mutex<Sinks>>,
    running: Mutex<Option<Running>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogTap {
    /// A tap for `array`'s log, with nothing on yet.
    pub fn new(array: Array) -> Self {
        LogTap {
            array,
            sinks: Arc::new(Mutex::new(Sinks::default())),
            running: Mutex::new(None),
        }
    }

    /// The file being recorded to, if any.
    pub fn recording(&self) -> Option<PathBuf> {
        lock(&self.sinks).recording.as_ref().map(|r| r.file.clone())
    }

    /// Whether an adapter takes the log's reads.
    pub fn adapting(&self) -> bool {
        lock(&self.sinks).adapter.is_some()
    }

    /// Starts recording every record into `file`, which must not exist yet
    /// (a log someone still needs is never overwritten).
    pub fn start_recording(&self, file: &Path) -> Result<(), String> {
        let mut running = lock(&self.running);
        if let Some(r) = &lock(&self.sinks).recording {
            return Err(format!("already recording to {}", r.file.display()));
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(file)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let writer =
            LogWriter::new(BufWriter::new(f)).map_err(|e| format!("{}: {e}", file.display()))?;
        let was_running = running.is_some();
        let run = self.ensure_running(&mut running)?;
        if was_running {
            // What was logged before this call is not the recording's.
            wait_for_pass(&run.passes);
        }
        let dropped_at_start = run.log.dropped();
        let mut sinks = lock(&self.sinks);
        sinks.failed = None;
        sinks.recording = Some(Recording {
            file: file.to_path_buf(),
            writer,
            dropped_at_start,
        });
        Ok(())
    }

    /// Stops the recording, once every record logged before this call is in
    /// its file, and says what it wrote.
    pub fn stop_recording(&self) -> Result<Recorded, String> {
        let mut running = lock(&self.running);
        let (on, only) = {
            let s = lock(&self.sinks);
            (
                s.recording.is_some() || s.failed.is_some(),
                s.adapter.is_none(),
            )
        };
        if !on {
            return Err("not recording".into());
        }
        let dropped_now = if only {
            // The last consumer: stop the tap, which drains the log first.
            self.stop_running(&mut running)
        } else {
            running.as_ref().map(|r| {
                wait_for_pass(&r.passes);
                r.log.dropped()
            })
        }
        .unwrap_or(0);
        let mut sinks = lock(&self.sinks);
        if let Some((f, e)) = sinks.failed.take() {
            return Err(format!("writing {}: {e}", f.display()));
        }
        let r = sinks.recording.take().ok_or("not recording")?;
        let records = r.writer.records_written();
        r.writer
            .finish()
            .map_err(|e| format!("writing {}: {e}", r.file.display()))?;
        Ok(Recorded {
            file: r.file,
            records,
            dropped: dropped_now.saturating_sub(r.dropped_at_start),
        })
    }

    /// Hands every read from now on to `adapter` as well.
    pub fn attach_adapter(&self, adapter: Arc<Mutex<Adapter>>) -> Result<(), String> {
        let mut running = lock(&self.running);
        self.ensure_running(&mut running)?;
        lock(&self.sinks).adapter = Some(adapter);
        Ok(())
    }

    /// Stops handing reads to the adapter.
    pub fn detach_adapter(&self) {
        let mut running = lock(&self.running);
        let mut sinks = lock(&self.sinks);
        sinks.adapter = None;
        sinks.backlog = Vec::new();
        let empty = sinks.is_empty();
        drop(sinks);
        if empty {
            self.stop_running(&mut running);
        }
    }

    /// Stops a recording still running (daemon exit), keeping what it wrote.
    pub fn finish(&self) {
        if self.recording().is_some()
            && let Err(e) = self.stop_recording()
        {
            tracing::warn!("stopping the recording: {e}");
        }
    }

    fn ensure_running<'a>(
        &self,
        running: &'a mut Option<Running>,
    ) -> Result<&'a mut Running, String> {
        if running.is_none() {
            let log = Arc::new(TrainingLog::new(RING));
            let stop = Arc::new(AtomicBool::new(false));
            let passes = Arc::new(AtomicU64::new(0));
            let thread = {
                let (log, stop, passes, sinks) = (
                    log.clone(),
                    stop.clone(),
                    passes.clone(),
                    self.sinks.clone(),
                );
                std::thread::Builder::new()
                    .name("augur-log".into())
                    .spawn(move || pump(&log, &stop, &passes, &sinks))
                    .map_err(|e| format!("starting the training-log thread: {e}"))?
            };
            self.array.set_log(Some(log.clone()));
            *running = Some(Running {
                log,
                stop,
                passes,
                thread,
            });
        }
        running.as_mut().ok_or_else(|| "no log".to_string())
    }

    /// Stops the array logging and the thread (after it drained the log);
    /// returns the log's drop count.
    fn stop_running(&self, running: &mut Option<Running>) -> Option<u64> {
        let r = running.take()?;
        self.array.set_log(None);
        r.stop.store(true, Ordering::Release);
        if r.thread.join().is_err() {
            tracing::warn!("the training-log thread panicked");
        }
        Some(r.log.dropped())
    }
}

/// Waits (at most a second) until the tap has made a whole pass that began
/// after this call.
fn wait_for_pass(passes: &AtomicU64) {
    let start = passes.load(Ordering::Acquire);
    let deadline = Instant::now() + Duration::from_secs(1);
    while passes.load(Ordering::Acquire) < start + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The tap's loop: hand each batch on, sleep when the log is empty, and
/// once stopped drain what is left.
fn pump(log: &TrainingLog, stop: &AtomicBool, passes: &AtomicU64, sinks: &Mutex<Sinks>) {
    let mut batch = Vec::with_capacity(4096);
    loop {
        let done = stop.load(Ordering::Acquire);
        batch.clear();
        let n = log.get(4096, &mut batch);
        if n > 0 {
            lock(sinks).take(&batch);
            log.truncate(n);
            continue;
        }
        passes.fetch_add(1, Ordering::AcqRel);
        if done {
            return;
        }
        std::thread::sleep(PASS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapt::AdaptConfig;
    use crate::array::{AlignedBuf, ArrayConfig, ReplicaSpec, Request};
    use crate::route::Policy;
    use augur_feature_store::{Op, read_log};

    fn array(dir: &Path) -> Array {
        let specs = ["a", "b"]
            .iter()
            .map(|f| ReplicaSpec::parse(dir.join(f).to_str().unwrap()).unwrap())
            .collect();
        let mut cfg = ArrayConfig::new(specs);
        cfg.create_size = Some(1 << 20);
        Array::open(cfg, Policy::from_name("primary", None).unwrap()).unwrap()
    }

    /// `n` reads and `n` writes, one at a time (the log holds the reads).
    fn io(a: &Array, n: u64) {
        let mut q = a.queue(0, 64).unwrap();
        let mut done = Vec::new();
        for i in 0..2 * n {
            let mut buf = AlignedBuf::new(4096);
            buf.fill(i as u8);
            q.submit(Request {
                op: if i % 2 == 0 { Op::Read } else { Op::Write },
                offset: (i % 256) * 4096,
                len: 4096,
                buf: Some(buf),
                user: i,
            });
            while q.in_flight() > 0 {
                q.poll(&mut done, true, None).unwrap();
            }
        }
    }

    #[test]
    fn recording_and_adaptation_share_the_log() {
        let d = tempfile::tempdir().unwrap();
        let a = array(d.path());
        let tap = LogTap::new(a.clone());
        io(&a, 10); // nobody listens: nothing is logged
        let adapter = Arc::new(Mutex::new(Adapter::new(AdaptConfig::default())));
        tap.attach_adapter(adapter.clone()).unwrap();
        assert!(tap.adapting());
        io(&a, 100);
        let f1 = d.path().join("one.log");
        tap.start_recording(&f1).unwrap();
        assert_eq!(tap.recording().as_deref(), Some(f1.as_path()));
        let again = tap.start_recording(&d.path().join("two.log")).unwrap_err();
        assert!(again.contains("already recording"), "{again}");
        io(&a, 50);
        // Stopping waits for everything logged so far, though the tap runs on.
        let r = tap.stop_recording().unwrap();
        assert_eq!((r.records, r.dropped), (50, 0));
        let recs = read_log(&f1).unwrap();
        assert!(recs.len() == 50 && recs.iter().all(|r| r.op == Op::Read));
        assert_eq!(tap.stop_recording().unwrap_err(), "not recording");
        // An existing file is never overwritten.
        let e = tap.start_recording(&f1).unwrap_err();
        assert!(e.contains("one.log"), "{e}");
        tap.detach_adapter();
        assert!(!tap.adapting());
        // Adaptation saw every read made while it was attached.
        assert_eq!(lock(&adapter).held(), 150);
        // With nobody left, the array logs nothing more.
        io(&a, 10);
        assert_eq!(lock(&adapter).held(), 150);
        // A recording alone is complete when it stops (the tap drains first).
        let f2 = d.path().join("three.log");
        tap.start_recording(&f2).unwrap();
        io(&a, 20);
        assert_eq!(tap.stop_recording().unwrap().records, 20);
        assert_eq!(read_log(&f2).unwrap().len(), 20);
    }
}

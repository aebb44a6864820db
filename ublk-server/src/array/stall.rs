//! Stall detection: a queue whose oldest request in flight is older than
//! the array's stall threshold logs one structured dump of its state (the
//! requests in flight and where each one is, the ring's pending entries, the
//! front-end's own wake-up state, the policy, the last events) and counts it
//! in [`ArrayStats::stalls`](super::ArrayStats). Front-ends call
//! [`Queue::check_stall`] from a periodic tick of their own, so a queue
//! whose wake-ups went missing is seen even while nothing else wakes it.
//!
//! A queue whose thread is stuck (in a system call that does not return,
//! on a lock) runs no tick, so it cannot report itself: the [`Watchdog`],
//! a thread of its own, watches every queue's [`Heartbeat`] and reports a
//! queue with requests in flight whose thread has shown no sign of life
//! for the threshold, with where the kernel says that thread sleeps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::queue::Io;
use super::slots::SubKind;
use super::stats::bump;
use super::{Array, Inner, Queue};

/// The default stall threshold: far beyond any healthy request, even on a
/// loaded host under an emulated GC pause.
pub const DEFAULT_STALL_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Events a queue remembers for its stall dump.
const EVENTS: usize = 32;

/// What happened, in a queue's recent-event log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum EventKind {
    #[default]
    None,
    /// A request taken (`id`: its tag).
    Submit,
    /// A ring completion (`id`: its user_data, `res`: its result).
    Cqe,
    /// A request answered (`id`: its tag, `res`: its result).
    Done,
    /// The overflow list was collected.
    Overflow,
}

/// One remembered event: which poll it happened in, what, and on what.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(super) struct Event {
    poll: u64,
    kind: EventKind,
    id: u64,
    res: i32,
}

/// The last [`EVENTS`] events of a queue, overwritten in a circle.
pub(super) struct EventLog {
    events: [Event; EVENTS],
    next: usize,
    /// Polls so far (the clock of the log: one load and store per poll).
    pub(super) polls: u64,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            events: [Event::default(); EVENTS],
            next: 0,
            polls: 0,
        }
    }
}

impl EventLog {
    #[inline]
    pub(super) fn push(&mut self, kind: EventKind, id: u64, res: i32) {
        self.events[self.next] = Event {
            poll: self.polls,
            kind,
            id,
            res,
        };
        self.next = (self.next + 1) % EVENTS;
    }

    /// Oldest first, without the unused entries.
    fn ordered(&self) -> Vec<Event> {
        (0..EVENTS)
            .map(|k| self.events[(self.next + k) % EVENTS])
            .filter(|e| e.kind != EventKind::None)
            .collect()
    }
}

/// One replica I/O of a stalled request.
#[derive(Debug, Serialize)]
pub struct StallSub {
    /// The replica it went to.
    pub replica: u16,
    /// `main`, `hedge` or `copy`.
    pub kind: &'static str,
    /// `io` (in the kernel), `delay` (its emulated delay running) or
    /// `waiting` (behind the replica's depth limit).
    pub state: &'static str,
    /// Since it was issued, µs.
    pub age_us: u64,
}

/// One request in flight, in a stall dump.
#[derive(Debug, Serialize)]
pub struct StallRequest {
    /// The front-end's tag for it.
    pub tag: u64,
    /// `Read`, `Write`, `Flush`, ...
    pub op: String,
    /// Its byte range.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u32,
    /// The replica a read was routed to first.
    pub replica: u16,
    /// `queued` (not yet routed), `deferred` (behind a region the sync
    /// worker holds), `parked` (waiting for a prediction), `replica_io`,
    /// `answered` (completion not yet polled) or `lost` (none of these).
    pub state: &'static str,
    /// Since it was taken, µs.
    pub age_us: u64,
    /// A hedged copy was sent.
    pub hedged: bool,
    /// Its replica I/Os still running.
    pub subs: Vec<StallSub>,
}

/// A queue's state when one of its requests stalled.
#[derive(Debug, Serialize)]
pub struct StallDump {
    /// The queue's number.
    pub queue: u32,
    /// The routing policy in force.
    pub policy: String,
    /// The stall threshold.
    pub threshold_ms: u64,
    /// The oldest request's age.
    pub oldest_age_ms: u64,
    /// Requests taken and not yet polled back.
    pub in_flight: usize,
    /// Every request in flight, oldest first.
    pub requests: Vec<StallRequest>,
    /// Submissions written to the ring but not yet handed to the kernel.
    pub sq_pending: usize,
    /// Completions in the ring not yet reaped.
    pub cq_ready: usize,
    /// The kernel holds completions on its overflow list.
    pub cq_overflow: bool,
    /// The registered eventfd is notified of completions (front-ends turn
    /// it off only around their own reaping).
    pub eventfd_enabled: bool,
    /// Replica I/Os running.
    pub subs_busy: usize,
    /// Polls so far.
    pub polls: u64,
    /// What the front-end adds: its own wake-up state.
    pub frontend: Vec<(String, String)>,
    /// The last events, oldest first.
    events: Vec<Event>,
}

/// A quarter of the stall threshold, between 10 ms and 1 s.
fn tick_of(stall_after_ns: u64) -> Duration {
    Duration::from_nanos((stall_after_ns / 4).clamp(10_000_000, 1_000_000_000))
}

impl Queue {
    /// How often a front-end should call [`Queue::check_stall`]: a quarter
    /// of the threshold, between 10 ms and 1 s (`None`: detection is off).
    pub fn stall_tick(&self) -> Option<Duration> {
        let t = self.inner.stall_after_ns;
        (t > 0).then(|| tick_of(t))
    }

    /// Counts completions a front-end's tick found waiting in the ring that
    /// no wake-up had reported (a lost eventfd notification), and logs the
    /// first of them.
    pub fn note_missed_wakeup(&mut self, found: usize) {
        bump(&self.counters.missed_wakeups, 1);
        if self
            .counters
            .missed_wakeups
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
        {
            tracing::warn!(
                "queue {}: {found} completion(s) waited in the ring with no wake-up reported",
                self.id
            );
        }
    }

    /// The age (ns) of this queue's oldest request not yet answered, if any.
    pub fn oldest_in_flight_ns(&self) -> Option<u64> {
        if self.active == 0 {
            return None;
        }
        let now = self.inner.now_ns();
        self.slots
            .iter()
            .filter(|s| s.active && !s.done)
            .map(|s| now.saturating_sub(s.start_ns))
            .max()
    }

    /// Checks for a stall: when the oldest request in flight is older than
    /// the array's threshold and was not reported yet, builds the dump
    /// (with `frontend`'s own state), logs it as one JSON line at ERROR,
    /// counts it and returns it. Cheap when nothing is stalled (one pass
    /// over the slots); meant for a tick of a second or so.
    pub fn check_stall(&mut self, frontend: &[(&str, String)]) -> Option<StallDump> {
        self.beat.beat(self.active);
        let threshold = self.inner.stall_after_ns;
        if threshold == 0 || self.active == 0 {
            return None;
        }
        let now = self.inner.now_ns();
        let (idx, start) = self
            .slots
            .iter()
            .enumerate()
            // Answered requests whose slower hedged copy still runs are
            // nobody's wait: only unanswered ones can stall.
            .filter(|(_, s)| s.active && !s.done)
            .map(|(i, s)| (i, s.start_ns))
            .min_by_key(|&(_, t)| t)?;
        let age = now.saturating_sub(start);
        if age < threshold {
            return None;
        }
        let key = (idx, self.slots[idx].generation);
        if self.stall_seen == Some(key) {
            return None;
        }
        self.stall_seen = Some(key);
        bump(&self.counters.stalls, 1);
        let dump = self.stall_dump(now, age, frontend);
        match serde_json::to_string(&dump) {
            Ok(json) => tracing::error!(
                "queue {}: stall: a request has been in flight for {} ms (threshold {} ms): {json}",
                self.id,
                age / 1_000_000,
                threshold / 1_000_000
            ),
            Err(e) => tracing::error!("queue {}: stall (dump failed: {e})", self.id),
        }
        Some(dump)
    }

    fn stall_dump(&mut self, now: u64, oldest: u64, frontend: &[(&str, String)]) -> StallDump {
        let busy_subs: Vec<usize> = {
            let mut free = vec![false; self.subs.len()];
            for &f in &self.free_subs {
                free[f] = true;
            }
            (0..self.subs.len()).filter(|&i| !free[i]).collect()
        };
        let waiting: Vec<usize> = self.waiting.iter().flatten().copied().collect();
        let mut requests = Vec::new();
        for (i, s) in self.slots.iter().enumerate().filter(|(_, s)| s.active) {
            let subs: Vec<StallSub> = busy_subs
                .iter()
                .filter(|&&b| self.subs[b].req == i)
                .map(|&b| {
                    let sub = &self.subs[b];
                    StallSub {
                        replica: sub.replica,
                        kind: match sub.kind {
                            SubKind::Main => "main",
                            SubKind::Hedge => "hedge",
                            SubKind::Copy => "copy",
                        },
                        state: if waiting.contains(&b) {
                            "waiting"
                        } else if sub.in_delay {
                            "delay"
                        } else {
                            "io"
                        },
                        age_us: now.saturating_sub(sub.issue_ns) / 1000,
                    }
                })
                .collect();
            let state = if s.done {
                "answered"
            } else if self.incoming.contains(&i) {
                "queued"
            } else if self.deferred.contains(&i) {
                "deferred"
            } else if !subs.is_empty() {
                "replica_io"
            } else if self.parked_live > 0 {
                "parked"
            } else {
                "lost"
            };
            requests.push(StallRequest {
                tag: s.user,
                op: format!("{:?}", s.op),
                offset: s.offset,
                len: s.len,
                replica: s.primary,
                state,
                age_us: now.saturating_sub(s.start_ns) / 1000,
                hedged: s.hedged,
                subs,
            });
        }
        requests.sort_by_key(|r| std::cmp::Reverse(r.age_us));
        let (sq_pending, cq_ready, cq_overflow, eventfd_enabled) = match &mut self.io {
            Io::Ring(ring) => {
                let overflow = ring.submission().cq_overflow();
                let sq = ring.submission().len();
                let cq = ring.completion();
                (sq, cq.len(), overflow, !cq.eventfd_disabled())
            }
            Io::Sim(_) => (0, 0, false, false),
        };
        StallDump {
            queue: self.id,
            policy: self.inner.policy.load().name().to_string(),
            threshold_ms: self.inner.stall_after_ns / 1_000_000,
            oldest_age_ms: oldest / 1_000_000,
            in_flight: self.active,
            requests,
            sq_pending,
            cq_ready,
            cq_overflow,
            eventfd_enabled,
            subs_busy: self.subs_busy,
            polls: self.events.polls,
            frontend: frontend
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            events: self.events.ordered(),
        }
    }
}

/// A queue's signs of life, for the [`Watchdog`]: written by the queue's
/// own thread (a load and a store each, no locked instruction), read by
/// the watchdog.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    /// The queue's number.
    queue: u32,
    /// Polls and stall checks so far: it moves while the thread runs.
    beats: AtomicU64,
    /// Requests taken and not yet handed back.
    in_flight: AtomicU64,
    /// The thread's id (`gettid`) from its first beat; 0 before.
    tid: AtomicI32,
}

impl Heartbeat {
    pub(crate) fn new(queue: u32) -> Self {
        Heartbeat {
            queue,
            beats: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            tid: AtomicI32::new(0),
        }
    }

    /// The queue's thread is running (a poll or a stall check).
    #[inline]
    pub(crate) fn beat(&self, in_flight: usize) {
        bump(&self.beats, 1);
        self.in_flight.store(in_flight as u64, Relaxed);
        if self.tid.load(Relaxed) == 0 {
            // SAFETY: gettid has no arguments and cannot fail.
            self.tid.store(unsafe { libc::gettid() }, Relaxed);
        }
    }

    /// The queue took or handed back requests.
    #[inline]
    pub(crate) fn in_flight(&self, n: usize) {
        self.in_flight.store(n as u64, Relaxed);
    }
}

/// What the watchdog says of a queue whose thread stopped beating.
#[derive(Debug, Serialize)]
pub struct StuckQueue {
    /// The queue's number.
    pub queue: u32,
    /// The stall threshold.
    pub threshold_ms: u64,
    /// How long its thread has shown no sign of life with requests in flight.
    pub silent_ms: u64,
    /// Requests in flight.
    pub in_flight: u64,
    /// The thread's id (0: it never polled).
    pub tid: i32,
    /// Its scheduler state (`R` running, `S` sleeping, `D` in
    /// uninterruptible I/O wait, ...), from `/proc`.
    pub state: String,
    /// The kernel function it sleeps in (`/proc/.../wchan`).
    pub wchan: String,
    /// The system call it is in, with its arguments (`/proc/.../syscall`).
    pub syscall: String,
    /// Its kernel stack, where the kernel shows it (root).
    pub stack: Vec<String>,
}

impl StuckQueue {
    fn of(beat: &Heartbeat, threshold_ns: u64, silent: Duration) -> Self {
        let tid = beat.tid.load(Relaxed);
        let read = |what: &str| -> String {
            if tid == 0 {
                return String::new();
            }
            std::fs::read_to_string(format!("/proc/self/task/{tid}/{what}"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|e| format!("({e})"))
        };
        // stat: "tid (comm) S ...": the state follows the last ')'.
        let stat = read("stat");
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("")
            .to_string();
        StuckQueue {
            queue: beat.queue,
            threshold_ms: threshold_ns / 1_000_000,
            silent_ms: silent.as_millis() as u64,
            in_flight: beat.in_flight.load(Relaxed),
            tid,
            state,
            wchan: read("wchan"),
            syscall: read("syscall"),
            stack: read("stack").lines().map(str::to_string).collect(),
        }
    }
}

/// Watches every queue's [`Heartbeat`] from a thread of its own: a queue
/// with requests in flight whose thread has not polled or checked for a
/// stall for the array's stall threshold (its tick is a quarter of that)
/// is stuck where it cannot report itself. The watchdog logs one ERROR line
/// for it, `queue N: stall: its thread has shown no sign of life ...
/// {json}` ([`StuckQueue`]), counts it in `stalls`, and reports that queue
/// again only after its thread has beaten once more. Stops when dropped.
pub struct Watchdog {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Array {
    /// Starts the [`Watchdog`] of a real-clock array with stall detection
    /// on (`None` otherwise: simulated time has no threads to watch).
    pub fn watchdog(&self) -> Option<Watchdog> {
        let threshold = self.inner.stall_after_ns;
        if threshold == 0 || !matches!(self.inner.clock, crate::emu::Clock::Real(_)) {
            return None;
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let weak = Arc::downgrade(&self.inner);
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("augur-watchdog".into())
            .spawn(move || watch(weak, threshold, &flag))
            .map_err(|e| tracing::error!("cannot start the stall watchdog: {e}"))
            .ok()?;
        Some(Watchdog {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the watchdog remembers of one queue (holding its heartbeat, so
/// that the address it is keyed by stays its own).
struct Seen {
    _beat: Arc<Heartbeat>,
    beats: u64,
    busy: bool,
    since: Instant,
    reported: bool,
}

fn watch(inner: Weak<Inner>, threshold_ns: u64, stop: &(Mutex<bool>, Condvar)) {
    if let Err(e) = super::signals::block_stop_signals() {
        tracing::error!("stall watchdog: cannot block SIGINT/SIGTERM: {e}");
    }
    let threshold = Duration::from_nanos(threshold_ns);
    let tick = tick_of(threshold_ns);
    let mut seen: HashMap<*const Heartbeat, Seen> = HashMap::new();
    loop {
        {
            let guard = stop.0.lock().unwrap_or_else(|p| p.into_inner());
            let (guard, _) = stop
                .1
                .wait_timeout_while(guard, tick, |stopped| !*stopped)
                .unwrap_or_else(|p| p.into_inner());
            if *guard {
                return;
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let beats: Vec<Arc<Heartbeat>> = inner
            .queue_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|q| q.beat.clone())
            .collect();
        let now = Instant::now();
        seen.retain(|k, _| beats.iter().any(|b| Arc::as_ptr(b) == *k));
        for b in &beats {
            let n = b.beats.load(Relaxed);
            let busy = b.in_flight.load(Relaxed) > 0;
            let e = seen.entry(Arc::as_ptr(b)).or_insert_with(|| Seen {
                _beat: b.clone(),
                beats: n,
                busy,
                since: now,
                reported: false,
            });
            // Silence counts from the last beat, or from when requests
            // arrived at a queue that was idle (an idle thread may sleep).
            if e.beats != n || (busy && !e.busy) {
                e.since = now;
                e.reported = false;
            }
            e.beats = n;
            e.busy = busy;
            let silent = now.duration_since(e.since);
            if busy && !e.reported && silent >= threshold {
                e.reported = true;
                bump(&inner.counters.stalls, 1);
                let stuck = StuckQueue::of(b, threshold_ns, silent);
                match serde_json::to_string(&stuck) {
                    Ok(json) => tracing::error!(
                        "queue {}: stall: its thread has shown no sign of life for {} ms with {} request(s) in flight (threshold {} ms): {json}",
                        stuck.queue,
                        stuck.silent_ms,
                        stuck.in_flight,
                        stuck.threshold_ms
                    ),
                    Err(e) => tracing::error!("queue {}: stall (dump failed: {e})", b.queue),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use augur_feature_store::Op;

    use crate::array::{AlignedBuf, Array, ArrayConfig, Completion, ReplicaSpec, Request};
    use crate::emu::Profile;
    use crate::route::Policy;

    fn open(dir: &std::path::Path, stall_after: Duration) -> Array {
        let specs = (0..2)
            .map(|i| {
                ReplicaSpec::emulated(
                    Profile::builtin("fast-nvme").unwrap(),
                    dir.join(format!("r{i}")),
                )
            })
            .collect();
        let mut cfg = ArrayConfig::new(specs);
        cfg.create_size = Some(1 << 20);
        cfg.stall_after = stall_after;
        Array::open(cfg, Policy::from_name("hedge", None).unwrap()).unwrap()
    }

    fn read(user: u64) -> Request {
        Request {
            op: Op::Read,
            offset: (user % 256) * 4096,
            len: 4096,
            buf: Some(AlignedBuf::new(4096)),
            user,
        }
    }

    #[test]
    fn a_healthy_run_never_stalls() {
        let dir = tempfile::tempdir_in(crate::load::default_replica_dir()).unwrap();
        let array = open(dir.path(), super::DEFAULT_STALL_AFTER);
        let mut q = array.queue(0, 64).unwrap();
        let mut out: Vec<Completion> = Vec::new();
        for round in 0..50u64 {
            for i in 0..16 {
                q.submit(read(round * 16 + i));
            }
            while q.in_flight() > 0 {
                q.poll(&mut out, true, Some(1_000_000)).unwrap();
                assert!(q.check_stall(&[]).is_none());
            }
        }
        assert_eq!(out.len(), 800);
        assert_eq!(array.stats().stalls, 0);
        assert_eq!(array.stats().missed_wakeups, 0);
    }

    #[test]
    fn a_stalled_request_is_dumped_once_with_where_it_is() {
        let dir = tempfile::tempdir_in(crate::load::default_replica_dir()).unwrap();
        let array = open(dir.path(), Duration::from_millis(20));
        let mut q = array.queue(3, 64).unwrap();
        assert_eq!(q.stall_tick(), Some(Duration::from_millis(10)));
        // Taken but never polled: it never leaves the queue.
        q.submit(read(7));
        assert!(q.check_stall(&[]).is_none(), "too young to be a stall");
        std::thread::sleep(Duration::from_millis(40));
        let dump = q
            .check_stall(&[("frontend", "test".into())])
            .expect("a 40 ms old request with a 20 ms threshold");
        assert_eq!(dump.queue, 3);
        assert_eq!(dump.policy, "hedge");
        assert_eq!(dump.in_flight, 1);
        assert_eq!(dump.requests.len(), 1);
        let r = &dump.requests[0];
        assert_eq!((r.tag, r.op.as_str(), r.state), (7, "Read", "queued"));
        assert!(r.age_us >= 40_000, "{}", r.age_us);
        assert!(dump.oldest_age_ms >= 40);
        assert_eq!(dump.frontend, vec![("frontend".into(), "test".into())]);
        let json = serde_json::to_value(&dump).unwrap();
        assert_eq!(json["events"][0]["kind"], "submit");
        assert_eq!(json["events"][0]["id"], 7);
        // One dump per stalled request, however often it is checked.
        assert!(q.check_stall(&[]).is_none());
        assert_eq!(array.stats().stalls, 1);
        // It completes once polled; nothing is left to report.
        let mut out = Vec::new();
        while q.in_flight() > 0 {
            q.poll(&mut out, true, Some(1_000_000)).unwrap();
        }
        assert_eq!(out[0].result, 0);
        assert!(q.check_stall(&[]).is_none());
        assert_eq!(array.stats().stalls, 1);
    }

    #[test]
    fn a_queue_whose_thread_stops_is_reported_by_the_watchdog() {
        // The report shows in the test's output (`--nocapture`).
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let dir = tempfile::tempdir_in(crate::load::default_replica_dir()).unwrap();
        let array = open(dir.path(), Duration::from_millis(40));
        let wd = array
            .watchdog()
            .expect("a real-clock array with a threshold");
        let mut q = array.queue(5, 64).unwrap();
        let mut out = Vec::new();
        // Idle: nothing in flight, however long nobody polls.
        q.poll(&mut out, false, None).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(array.stats().stalls, 0);
        // A request taken, one poll, then the thread does nothing (as one
        // stuck in a system call would): its own stall check never runs,
        // the watchdog reports it, once.
        q.submit(read(9));
        q.poll(&mut out, false, None).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            array.stats().stalls,
            1,
            "the watchdog reports a silent queue once"
        );
        // Its thread runs again: the request completes, nothing more is said.
        while q.in_flight() > 0 {
            q.poll(&mut out, true, Some(1_000_000)).unwrap();
        }
        assert_eq!(out.len(), 1);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(array.stats().stalls, 1);
        drop(wd);
    }

    #[test]
    fn a_queue_that_keeps_checking_is_not_stuck() {
        let dir = tempfile::tempdir_in(crate::load::default_replica_dir()).unwrap();
        let array = open(dir.path(), Duration::from_millis(40));
        let _wd = array.watchdog().unwrap();
        let mut q = array.queue(0, 64).unwrap();
        // A request that never leaves the queue (never polled), on a
        // thread that keeps ticking: the queue's own check reports the
        // stall once; the watchdog sees a live thread and says nothing.
        q.submit(read(4));
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_millis(300) {
            q.check_stall(&[]);
            std::thread::sleep(q.stall_tick().unwrap());
        }
        assert_eq!(array.stats().stalls, 1);
    }

    #[test]
    fn the_watchdog_leaves_the_stop_signals_to_the_daemon() {
        // ublk's daemon takes SIGTERM with sigwait; a thread that does not
        // block it would die of it instead (seen once in a soak: exit 143).
        let dir = tempfile::tempdir_in(crate::load::default_replica_dir()).unwrap();
        let array = open(dir.path(), Duration::from_millis(40));
        let _wd = array.watchdog().unwrap();
        let mut found = None;
        for _ in 0..100 {
            found = crate::array::signals::thread_blocks_stop_signals("augur-watchdog");
            if found.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            found,
            Some(true),
            "the watchdog thread must block SIGINT and SIGTERM"
        );
    }

    #[test]
    fn no_watchdog_without_a_threshold() {
        let dir = tempfile::tempdir_in(crate::load::default_replica_dir()).unwrap();
        assert!(open(dir.path(), Duration::ZERO).watchdog().is_none());
    }

    #[test]
    fn zero_turns_detection_off() {
        let dir = tempfile::tempdir_in(crate::load::default_replica_dir()).unwrap();
        let array = open(dir.path(), Duration::ZERO);
        let mut q = array.queue(0, 64).unwrap();
        assert_eq!(q.stall_tick(), None);
        q.submit(read(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(q.check_stall(&[]).is_none());
    }
}

//! Reads whose predictions run on another thread (the GPU thread's place;
//! a test thread here, so no GPU is needed): the queue parks them and keeps
//! serving, routes them when the answer wakes it, scores them on the CPU at
//! their deadline, and loses no data either way. Needs io_uring and a
//! writable temp dir.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use augur::{
    AlignedBuf, Array, ArrayConfig, Completion, PendingScores, Policy, PredictInput, ReplicaSpec,
    Request, ScoredOn, SlowPredictor, Wake,
};
use augur_feature_store::Op;

const SIZE: u64 = 4 << 20;

/// Reads pending or a slow last read make a replica slow (as in
/// `array_integrity.rs`), so some reads are rerouted.
fn score(i: &PredictInput) -> i64 {
    i.snapshot.recent[0].latency_us as i64 - 1000 + i.snapshot.pending_ios as i64
}

/// The answer to one offloaded batch, filled in by the "device" thread.
type Slot = Arc<Mutex<Option<Vec<i64>>>>;

/// One batch for the "device" thread: its inputs, where the answer goes,
/// whom to wake.
type Job = (Vec<PredictInput>, Slot, Arc<dyn Wake>);

/// A predictor that hands every batch to a thread. With `gate`, that thread
/// answers a batch only when the test sends it a token; without, at once.
struct Remote {
    jobs: Mutex<Sender<Job>>,
    deadline: Duration,
}

impl Remote {
    fn start(gated: Option<Receiver<()>>, deadline: Duration) -> Arc<Remote> {
        let (tx, rx) = channel::<Job>();
        std::thread::spawn(move || {
            for (inputs, slot, wake) in rx {
                if let Some(g) = &gated
                    && g.recv().is_err()
                {
                    continue; // never answered
                }
                *slot.lock().unwrap() = Some(inputs.iter().map(score).collect());
                wake.wake();
            }
        });
        Arc::new(Remote {
            jobs: Mutex::new(tx),
            deadline,
        })
    }
}

struct Pending {
    slot: Slot,
    deadline: Duration,
}

impl PendingScores for Pending {
    fn try_take(&mut self, _: &[PredictInput], out: &mut [i64]) -> Option<ScoredOn> {
        let s = self.slot.lock().unwrap().take()?;
        out.copy_from_slice(&s);
        Some(ScoredOn::Gpu { round_trip_ns: 1 })
    }
    fn deadline_ns(&self) -> u64 {
        self.deadline.as_nanos() as u64
    }
    fn give_up(&mut self, inputs: &[PredictInput], out: &mut [i64]) -> ScoredOn {
        for (i, o) in inputs.iter().zip(out) {
            *o = score(i);
        }
        ScoredOn::GpuMissed { waited_ns: 0 }
    }
}

impl SlowPredictor for Remote {
    fn name(&self) -> &str {
        "remote"
    }
    fn score_batch(&self, inputs: &[PredictInput], out: &mut [i64]) {
        for (i, o) in inputs.iter().zip(out) {
            *o = score(i);
        }
    }
    fn offload_pays(&self, _: u64, _: usize, _: usize) -> bool {
        true
    }
    fn submit_batch(
        &self,
        _: u64,
        inputs: &[PredictInput],
        wake: &Arc<dyn Wake>,
    ) -> Option<Box<dyn PendingScores>> {
        let slot: Slot = Arc::default();
        self.jobs
            .lock()
            .unwrap()
            .send((inputs.to_vec(), slot.clone(), wake.clone()))
            .ok()?;
        Some(Box::new(Pending {
            slot,
            deadline: self.deadline,
        }))
    }
}

fn open(dir: &std::path::Path, p: Arc<Remote>, policy: &str) -> Array {
    let specs = (0..3)
        .map(|i| {
            let profile = augur::emu::Profile::builtin("gc-heavy").unwrap();
            ReplicaSpec::emulated(profile, dir.join(format!("r{i}")))
        })
        .collect();
    let mut cfg = ArrayConfig::new(specs);
    cfg.create_size = Some(SIZE);
    let p: Arc<dyn SlowPredictor> = p;
    Array::open(cfg, Policy::from_name(policy, Some(p)).unwrap()).unwrap()
}

fn req(op: Op, offset: u64, fill: u8, user: u64) -> Request {
    let mut b = AlignedBuf::new(4096);
    b.fill(fill);
    Request {
        op,
        offset,
        len: 4096,
        buf: Some(b),
        user,
    }
}

/// Polls until request `user` has completed (at most `tries` waits of
/// 100 ms), collecting every completion on the way.
fn until_done(q: &mut augur::Queue, done: &mut Vec<Completion>, user: u64, tries: usize) -> bool {
    for _ in 0..tries {
        if done.iter().any(|c| c.user == user) {
            return true;
        }
        q.poll(done, true, Some(100_000_000)).unwrap();
    }
    done.iter().any(|c| c.user == user)
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(augur::load::default_replica_dir()).unwrap()
}

#[test]
fn a_read_waiting_for_its_prediction_does_not_hold_up_the_queue() {
    let dir = tmp();
    let (gate, gated) = channel();
    let array = open(
        dir.path(),
        Remote::start(Some(gated), Duration::from_secs(600)),
        "linnos",
    );
    let mut q = array.queue(0, 64).unwrap();
    let mut done = Vec::new();
    q.submit(req(Op::Write, 8192, 0xAB, 1));
    assert!(until_done(&mut q, &mut done, 1, 50));
    // The read is parked while its batch is "on the GPU"; a write taken
    // after it is issued and completes meanwhile.
    q.submit(req(Op::Read, 8192, 0, 2));
    q.poll(&mut done, false, None).unwrap();
    q.submit(req(Op::Write, 65536, 0xCD, 3));
    assert!(until_done(&mut q, &mut done, 3, 50), "the write waited");
    assert!(!done.iter().any(|c| c.user == 2), "read routed unanswered");
    assert_eq!(array.stats().gpu_batches, 0);
    // The answer wakes the queue (its eventfd read), which routes the read.
    gate.send(()).unwrap();
    assert!(
        until_done(&mut q, &mut done, 2, 100),
        "the answer never woke it"
    );
    let c = done.iter().find(|c| c.user == 2).unwrap();
    assert_eq!(c.result, 0);
    assert!(c.buf.as_ref().unwrap().iter().all(|&b| b == 0xAB));
    drop(q);
    let s = array.stats();
    assert_eq!((s.gpu_batches, s.gpu_items), (1, 3), "{s:?}");
    assert_eq!(s.gpu_missed_batches, 0);
}

#[test]
fn an_unanswered_batch_is_scored_on_the_cpu_at_its_deadline() {
    let dir = tmp();
    let (_gate, gated) = channel();
    let array = open(
        dir.path(),
        Remote::start(Some(gated), Duration::from_millis(20)),
        "linnos+hedge",
    );
    let mut q = array.queue(0, 64).unwrap();
    let mut done = Vec::new();
    q.submit(req(Op::Write, 0, 0x5A, 1));
    assert!(until_done(&mut q, &mut done, 1, 50));
    q.submit(req(Op::Read, 0, 0, 2));
    assert!(
        until_done(&mut q, &mut done, 2, 100),
        "the deadline never fired"
    );
    let c = done.iter().find(|c| c.user == 2).unwrap();
    assert_eq!(c.result, 0);
    assert!(c.buf.as_ref().unwrap().iter().all(|&b| b == 0x5A));
    drop(q);
    let s = array.stats();
    assert_eq!((s.gpu_missed_batches, s.cpu_batches), (1, 1), "{s:?}");
    assert_eq!(s.gpu_batches, 0);
}

#[test]
fn a_queue_closed_with_reads_parked_routes_them_and_frees_everything() {
    let dir = tmp();
    let (_gate, gated) = channel();
    let array = open(
        dir.path(),
        Remote::start(Some(gated), Duration::from_secs(600)),
        "linnos",
    );
    let mut q = array.queue(0, 64).unwrap();
    let mut done = Vec::new();
    for k in 0..8 {
        q.submit(req(Op::Read, k * 4096, 0, k));
    }
    q.poll(&mut done, false, None).unwrap();
    assert!(done.is_empty());
    drop(q); // must not hang on the eventfd read or the parked batch
    let s = array.stats();
    assert_eq!(s.reads, 8, "{s:?}");
    assert_eq!(s.gpu_missed_batches, 1);
}

/// Random reads and writes at depth 16, every batch offloaded and answered
/// at once by the other thread: every read returns what was written last.
#[test]
fn offloaded_routing_reads_back_what_was_written() {
    let dir = tmp();
    let array = open(
        dir.path(),
        Remote::start(None, Duration::from_secs(600)),
        "linnos+hedge",
    );
    let mut q = array.queue(0, 64).unwrap();
    let blocks = SIZE / 4096;
    let mut shadow = vec![0u8; blocks as usize];
    let mut busy = vec![false; blocks as usize];
    let mut in_flight: Vec<Option<(Op, u64, u8)>> = vec![None; 16];
    let mut rng = augur_rng::Rng::new(5);
    let mut done = Vec::new();
    let (mut issued, mut checked) = (0, 0);
    while issued < 3000 || q.in_flight() > 0 {
        while issued < 3000 && q.in_flight() < 16 {
            let b = rng.below(blocks);
            let Some(tag) = in_flight.iter().position(|x| x.is_none()) else {
                break;
            };
            if busy[b as usize] {
                continue;
            }
            busy[b as usize] = true;
            let (op, fill) = if rng.below(2) == 0 {
                (Op::Read, 0)
            } else {
                (Op::Write, 1 + rng.below(255) as u8)
            };
            in_flight[tag] = Some((op, b, fill));
            q.submit(req(op, b * 4096, fill, tag as u64));
            issued += 1;
        }
        q.poll(&mut done, true, Some(100_000_000)).unwrap();
        for c in done.drain(..) {
            let (op, b, fill) = in_flight[c.user as usize].take().unwrap();
            busy[b as usize] = false;
            assert_eq!(c.result, 0, "{op:?} of block {b}");
            if op == Op::Write {
                shadow[b as usize] = fill;
            } else {
                let want = shadow[b as usize];
                assert!(
                    c.buf.unwrap().iter().all(|&x| x == want),
                    "block {b} read back wrong"
                );
                checked += 1;
            }
        }
    }
    drop(q);
    let s = array.stats();
    assert!(checked > 1000, "{checked}");
    assert!(s.gpu_batches > 0 && s.cpu_batches == 0, "{s:?}");
    assert!(s.predictions >= s.reads, "{s:?}");
}

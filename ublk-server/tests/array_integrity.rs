//! Data integrity of the replica array: random writes, reads, flushes,
//! discards and write-zeroes against a shadow copy, across every policy, with
//! emulated delays, and with replicas failing mid-run. Needs only io_uring
//! and a writable temp dir.

use std::collections::HashSet;
use std::sync::Arc;

use augur::emu::Profile;
use augur::{
    AlignedBuf, Array, ArrayConfig, Completion, FaultPlan, POLICY_NAMES, Policy, PredictInput,
    ReplicaSpec, Request, SlowPredictor,
};
use augur_feature_store::Op;
use augur_rng::Rng;

const SIZE: u64 = 8 << 20;
const BS: u64 = 4096;

/// gc-heavy, with GC every ~1 MiB written so short tests see stalls.
fn test_profile() -> Profile {
    let mut p = Profile::builtin("gc-heavy").unwrap();
    if let Some(gc) = p.gc.as_mut() {
        gc.trigger_mib = 1.0;
        gc.duration_ms = 3.0;
    }
    p
}

/// A predictor that calls a read slow when the replica has reads pending or
/// its last read was slower than 1 ms; exercises every linnos branch.
struct Heuristic;
impl SlowPredictor for Heuristic {
    fn name(&self) -> &str {
        "heuristic"
    }
    fn score_batch(&self, inputs: &[PredictInput], out: &mut [i64]) {
        for (i, o) in inputs.iter().zip(out) {
            let last = i.snapshot.recent[0].latency_us as i64;
            *o = last - 1000 + i.snapshot.pending_ios as i64;
        }
    }
}

fn scratch_dir() -> tempfile::TempDir {
    let base = augur::load::default_replica_dir();
    tempfile::tempdir_in(base).unwrap()
}

fn open(dir: &std::path::Path, policy: &str, faults: Vec<(usize, FaultPlan)>) -> Array {
    let specs = (0..3)
        .map(|i| ReplicaSpec::emulated(test_profile(), dir.join(format!("r{i}"))))
        .collect();
    let mut cfg = ArrayConfig::new(specs);
    cfg.create_size = Some(SIZE);
    cfg.replica_depth = 8;
    cfg.faults = faults;
    let predictor: Arc<dyn SlowPredictor> = Arc::new(Heuristic);
    Array::open(cfg, Policy::from_name(policy, Some(predictor)).unwrap()).unwrap()
}

/// A request in flight: op, offset, length, the data a write carries.
type InFlight = (Op, u64, u32, Vec<u8>);

struct Outcome {
    failed_requests: u64,
    reads_checked: u64,
}

/// Runs `n` random requests at depth 16 and checks every read against the
/// shadow copy; requests never overlap a block already in flight, so the
/// expected content is always defined.
fn drive(array: &Array, seed: u64, n: usize, expect_all_ok: bool) -> (Vec<u8>, Outcome) {
    let mut shadow = vec![0u8; SIZE as usize];
    let mut q = array.queue(0, 256).unwrap();
    let mut rng = Rng::new(seed);
    let blocks = SIZE / BS;
    let mut busy: HashSet<u64> = HashSet::new();
    let mut pending: Vec<Option<InFlight>> = (0..16).map(|_| None).collect();
    let mut out: Vec<Completion> = Vec::new();
    let mut issued = 0;
    let mut outcome = Outcome {
        failed_requests: 0,
        reads_checked: 0,
    };
    while issued < n || q.in_flight() > 0 {
        while issued < n && q.in_flight() < 16 {
            let nblk = 1 + rng.below(4);
            let first = rng.below(blocks - nblk);
            if (first..first + nblk).any(|b| busy.contains(&b)) {
                continue;
            }
            let Some(tag) = pending.iter().position(|p| p.is_none()) else {
                break;
            };
            let len = (nblk * BS) as u32;
            let off = first * BS;
            let dice = rng.below(100);
            let op = match dice {
                0..=44 => Op::Read,
                45..=84 => Op::Write,
                85..=89 => Op::Flush,
                90..=94 => Op::Discard,
                _ => Op::WriteZeroes,
            };
            let mut data = Vec::new();
            let buf = match op {
                Op::Read => Some(AlignedBuf::new(len as usize)),
                Op::Write => {
                    let mut b = AlignedBuf::new(len as usize);
                    for x in b.iter_mut() {
                        *x = rng.next_u64() as u8;
                    }
                    data = b.to_vec();
                    Some(b)
                }
                _ => None,
            };
            if op != Op::Flush {
                busy.extend(first..first + nblk);
            }
            pending[tag] = Some((op, off, len, data));
            q.submit(Request {
                op,
                offset: off,
                len: if op == Op::Flush { 0 } else { len },
                buf,
                user: tag as u64,
            });
            issued += 1;
        }
        q.poll(&mut out, true, Some(50_000_000)).unwrap();
        for c in out.drain(..) {
            let (op, off, len, data) = pending[c.user as usize].take().unwrap();
            if op != Op::Flush {
                for b in off / BS..(off + len as u64) / BS {
                    busy.remove(&b);
                }
            }
            if c.result != 0 {
                assert!(!expect_all_ok, "{op:?} at {off}+{len} failed: {}", c.result);
                outcome.failed_requests += 1;
                continue;
            }
            let range = off as usize..(off + len as u64) as usize;
            match op {
                Op::Read => {
                    let got = c.buf.expect("read returns its buffer");
                    assert_eq!(got.len(), len as usize);
                    assert!(
                        got[..] == shadow[range],
                        "read at {off}+{len} from replica {:?} differs from what was written",
                        c.replica
                    );
                    outcome.reads_checked += 1;
                }
                Op::Write => shadow[range].copy_from_slice(&data),
                Op::Discard | Op::WriteZeroes => shadow[range].fill(0),
                Op::Flush => {}
            }
        }
    }
    // A final flush: then every live replica's file must equal the shadow.
    q.submit(Request {
        op: Op::Flush,
        offset: 0,
        len: 0,
        buf: None,
        user: 0,
    });
    while q.in_flight() > 0 {
        q.poll(&mut out, true, None).unwrap();
    }
    if expect_all_ok {
        assert!(out.iter().all(|c| c.result == 0), "final flush failed");
    }
    (shadow, outcome)
}

fn check_replicas(array: &Array, dir: &std::path::Path, shadow: &[u8]) {
    for (i, st) in array.replica_status().iter().enumerate() {
        if !st.live {
            continue;
        }
        let data = std::fs::read(dir.join(format!("r{i}"))).unwrap();
        assert!(
            data == shadow,
            "replica {i} differs from the shadow copy after flush"
        );
    }
}

#[test]
fn every_policy_reads_back_what_was_written() {
    for (k, policy) in POLICY_NAMES.iter().enumerate() {
        let dir = scratch_dir();
        let array = open(dir.path(), policy, Vec::new());
        let (shadow, o) = drive(&array, 100 + k as u64, 3000, true);
        assert!(
            o.reads_checked > 1000,
            "{policy}: only {} reads",
            o.reads_checked
        );
        check_replicas(&array, dir.path(), &shadow);
        let st = array.stats();
        assert_eq!(st.failed_requests, 0, "{policy}");
        match *policy {
            "primary" => assert_eq!(st.rerouted + st.hedges, 0),
            "random" | "greedy-oracle" => {
                assert!(st.rerouted > 0, "{policy} never left the primary")
            }
            "linnos" => assert!(st.predictions > 0 && st.rerouted > 0, "{st:?}"),
            _ => {}
        }
    }
}

#[test]
fn replica_failing_mid_run_loses_nothing() {
    for policy in ["primary", "hedge", "linnos"] {
        let dir = scratch_dir();
        let fault = FaultPlan {
            after_ios: Some(700),
            at_ns: None,
        };
        let array = open(dir.path(), policy, vec![(1, fault)]);
        let (shadow, o) = drive(&array, 7, 3000, true);
        assert_eq!(o.failed_requests, 0);
        let st = array.stats();
        assert_eq!(st.replica_failures, 1, "{policy}: {st:?}");
        assert_eq!(array.live_count(), 2);
        assert!(!array.replica_status()[1].live);
        check_replicas(&array, dir.path(), &shadow);
    }
}

#[test]
fn no_replica_left_means_eio_not_wrong_data() {
    let dir = scratch_dir();
    let f = |n| FaultPlan {
        after_ios: Some(n),
        at_ns: None,
    };
    let array = open(
        dir.path(),
        "primary",
        vec![(0, f(200)), (1, f(300)), (2, f(400))],
    );
    let (_, o) = drive(&array, 9, 2000, false);
    assert!(o.failed_requests > 0);
    assert_eq!(array.live_count(), 0);
    assert_eq!(array.stats().replica_failures, 3);
}

#[test]
fn bad_requests_are_rejected_with_einval() {
    let dir = scratch_dir();
    let array = open(dir.path(), "primary", Vec::new());
    let mut q = array.queue(0, 32).unwrap();
    let bad = [
        (SIZE, 4096u32), // beyond the end
        (100, 4096),     // unaligned offset
        (0, 100),        // unaligned length
    ];
    for (i, (off, len)) in bad.iter().enumerate() {
        q.submit(Request {
            op: Op::Read,
            offset: *off,
            len: *len,
            buf: Some(AlignedBuf::new(*len as usize)),
            user: i as u64,
        });
    }
    let mut out = Vec::new();
    while q.in_flight() > 0 {
        q.poll(&mut out, true, None).unwrap();
    }
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|c| c.result == -libc::EINVAL));
}

thread_local! {
    /// The ids of the models this thread's predictor calls used since the
    /// last check.
    static SEEN: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A model that names itself in every call it serves and calls half the
/// replicas slow (by id), so a batch often takes several rounds of calls.
struct Tagged(u64);
impl SlowPredictor for Tagged {
    fn name(&self) -> &str {
        "tagged"
    }
    fn score_batch(&self, inputs: &[PredictInput], out: &mut [i64]) {
        SEEN.with(|s| s.borrow_mut().push(self.0));
        for (i, o) in inputs.iter().zip(out) {
            *o = if (i.replica as u64 + self.0).is_multiple_of(2) {
                1
            } else {
                -1
            };
        }
    }
}

/// Models swapped as fast as a thread can while four threads read: every
/// routed batch sees exactly one model from its first predictor call to
/// its last, no read fails, and the data read is the data written.
#[test]
fn model_swaps_under_concurrent_reads_give_each_batch_one_model() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 400;
    let dir = scratch_dir();
    let array = open(dir.path(), "linnos", Vec::new());
    // Known contents: block b holds the byte b % 251.
    {
        let mut q = array.queue(0, 64).unwrap();
        let mut done = Vec::new();
        for b in 0..SIZE / BS {
            let mut buf = AlignedBuf::new(BS as usize);
            buf.fill((b % 251) as u8);
            q.submit(Request {
                op: Op::Write,
                offset: b * BS,
                len: BS as u32,
                buf: Some(buf),
                user: b,
            });
            while q.in_flight() > 8 {
                q.poll(&mut done, true, None).unwrap();
            }
        }
        while q.in_flight() > 0 {
            q.poll(&mut done, true, None).unwrap();
        }
        assert!(done.iter().all(|c| c.result == 0));
    }
    let first: Arc<dyn SlowPredictor> = Arc::new(Tagged(0));
    array.set_policy(Policy::from_name("linnos", Some(first)).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (array, stop) = (array.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k += 1;
                let m: Arc<dyn SlowPredictor> = Arc::new(Tagged(k));
                array.set_policy(Policy::from_name("linnos", Some(m)).unwrap());
                std::thread::yield_now();
            }
            k
        })
    };
    let readers: Vec<_> = (0..THREADS)
        .map(|t| {
            let array = array.clone();
            std::thread::spawn(move || {
                let mut q = array.queue(1 + t as u32, 64).unwrap();
                let mut rng = Rng::new(7 + t as u64);
                let mut done = Vec::new();
                let (mut ids, mut multi_call_batches) = (HashSet::new(), 0);
                for round in 0..ROUNDS {
                    for j in 0..8 {
                        let b = rng.below(SIZE / BS);
                        q.submit(Request {
                            op: Op::Read,
                            offset: b * BS,
                            len: BS as u32,
                            buf: Some(AlignedBuf::new(BS as usize)),
                            user: (b << 8) | j,
                        });
                    }
                    // This poll routes the 8 reads as one batch.
                    q.poll(&mut done, false, None).unwrap();
                    let seen = SEEN.with(|s| std::mem::take(&mut *s.borrow_mut()));
                    assert!(!seen.is_empty(), "round {round}: no predictor call");
                    assert!(
                        seen.iter().all(|&id| id == seen[0]),
                        "round {round}: one batch used models {seen:?}"
                    );
                    multi_call_batches += usize::from(seen.len() > 1);
                    ids.insert(seen[0]);
                    while q.in_flight() > 0 {
                        q.poll(&mut done, true, None).unwrap();
                    }
                    // Completing reads routes nothing.
                    assert!(SEEN.with(|s| s.borrow().is_empty()));
                }
                for c in &done {
                    assert_eq!(c.result, 0, "read {} failed", c.user >> 8);
                    let want = ((c.user >> 8) % 251) as u8;
                    let buf = c.buf.as_ref().expect("a read's buffer comes back");
                    assert!(
                        buf.iter().all(|&x| x == want),
                        "block {} read wrong data",
                        c.user >> 8
                    );
                }
                assert_eq!(done.len(), ROUNDS * 8);
                (ids.len(), multi_call_batches)
            })
        })
        .collect();
    let per_thread: Vec<(usize, usize)> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    // The swaps really landed while batches ran, and batches really made
    // several calls (else one model per batch would hold trivially).
    let distinct: usize = per_thread.iter().map(|p| p.0).sum();
    let multi: usize = per_thread.iter().map(|p| p.1).sum();
    assert!(swaps > 10, "only {swaps} swaps");
    assert!(
        distinct > THREADS * 2,
        "batches saw only {distinct} models: {per_thread:?}"
    );
    assert!(
        multi > ROUNDS,
        "only {multi} batches made more than one call"
    );
    assert_eq!(array.stats().failed_requests, 0);
}

//! LinnOS reroute-on-slow: ask the predictor about each read's primary;
//! predicted slow, try the next live replica; slow everywhere, the least bad.
//!
//! Two ways to run it, with the same decisions. On this thread, in rounds
//! ([`Policy::route_batch`]): each round scores every undecided read's
//! current candidate, so the CPU scores little more than one input per
//! read. Offloaded ([`Policy::start_offloaded`]): every candidate of every
//! read is scored in one call on another thread (the GPU), which answers
//! later, and [`OffloadPlan::finish`] then picks as the rounds would have.
//! They agree because a replica's snapshot is taken once per batch, so a
//! read's score on a replica does not depend on the round it is asked in.

use std::sync::Arc;

use augur_feature_store::HistorySnapshot;
use augur_predictor::{PendingScores, ReadInfo, Wake};

use super::augur::AugurBatch;
use super::{
    MAX_REPLICAS, PendingRead, Policy, PolicyKind, PredictInput, ReplicaView, Route, RouteScratch,
    ScoredOn, SlowPredictor, next_after, primary_for,
};

/// A routing batch whose predictions run on another thread: each read's
/// candidates in the order LinnOS tries them, their inputs, and (once
/// answered) their scores. Reused from batch to batch.
#[derive(Default)]
pub struct OffloadPlan {
    /// Candidates per read (the live replicas when the batch started).
    per_read: usize,
    /// Read `k`'s candidates are `cands[k * per_read..][..per_read]`.
    cands: Vec<u16>,
    /// The primary of each read.
    primaries: Vec<u16>,
    hedge: bool,
    /// Set when the batch is `augur`'s, routed by `batch` instead.
    augur: bool,
    batch: AugurBatch,
    inputs: Vec<PredictInput>,
    scores: Vec<i64>,
}

impl OffloadPlan {
    /// Reads in the batch.
    pub fn reads(&self) -> usize {
        if self.augur {
            self.batch.reads()
        } else {
            self.primaries.len()
        }
    }

    /// The inputs sent, and room for their scores: what
    /// [`PendingScores::try_take`] and [`PendingScores::give_up`] take.
    pub fn io(&mut self) -> (&[PredictInput], &mut [i64]) {
        (&self.inputs, &mut self.scores)
    }

    /// Routes the batch from its scores into `out`, one [`Route`] per read,
    /// exactly as the rounds of [`Policy::route_batch`] would: the first
    /// candidate predicted fast, else the lowest-scored one; a read counts
    /// one prediction per round it would have taken part in.
    pub fn finish(&self, out: &mut Vec<Route>) {
        if self.augur {
            return self.batch.finish(&self.scores, out);
        }
        out.clear();
        let m = self.per_read;
        for (k, &p) in self.primaries.iter().enumerate() {
            let cands = &self.cands[k * m..(k + 1) * m];
            let scores = &self.scores[k * m..(k + 1) * m];
            let mut r = Route {
                replica: p,
                hedge: self.hedge,
                ..Route::default()
            };
            match scores.iter().position(|&s| s <= 0) {
                Some(j) => {
                    r.replica = cands[j];
                    r.predictions = j as u16 + 1;
                    r.slow_verdicts = j as u16;
                    r.verdict = Some(false);
                }
                None => {
                    let mut best = (i64::MAX, p);
                    for (&c, &s) in cands.iter().zip(scores) {
                        if s < best.0 {
                            best = (s, c);
                        }
                    }
                    r.replica = best.1;
                    r.predictions = m as u16;
                    r.slow_verdicts = m as u16;
                    r.verdict = Some(true);
                    r.all_slow = true;
                }
            }
            r.rerouted = r.replica != p;
            out.push(r);
        }
    }
}

impl Policy {
    /// Starts routing `reads` with their predictions on another thread, when
    /// this is a LinnOS policy whose predictor says that pays
    /// ([`SlowPredictor::offload_pays`]): fills `plan` with every candidate
    /// of every read and hands their inputs over; `wake` is called once the
    /// answer is there. `None`: route them with [`Policy::route_batch`].
    pub fn start_offloaded(
        &self,
        view: &dyn ReplicaView,
        now_ns: u64,
        reads: &[PendingRead],
        wake: &Arc<dyn Wake>,
        plan: &mut OffloadPlan,
    ) -> Option<Box<dyn PendingScores>> {
        let n = view.replica_count();
        let live = (0..n).filter(|&i| view.is_live(i)).count();
        if live == 0 || reads.is_empty() {
            return None;
        }
        let (predictor, hedge) = match &self.kind {
            PolicyKind::Linnos { predictor, hedge } => (predictor, hedge),
            PolicyKind::Augur { predictor, rule } => {
                plan.augur = true;
                plan.batch
                    .start(view, now_ns, reads, *rule, &mut plan.inputs);
                // One call scores the whole batch here too: offload only
                // where the device pays for that many.
                let n = plan.inputs.len();
                if !predictor.offload_pays(now_ns, n, n) {
                    return None;
                }
                plan.scores.clear();
                plan.scores.resize(n, 0);
                return predictor.submit_batch(now_ns, &plan.inputs, wake);
            }
            _ => return None,
        };
        if !predictor.offload_pays(now_ns, reads.len(), reads.len() * live) {
            return None;
        }
        plan.augur = false;
        let mut snaps: [Option<HistorySnapshot>; MAX_REPLICAS] = [None; MAX_REPLICAS];
        plan.per_read = live;
        plan.hedge = *hedge;
        plan.cands.clear();
        plan.primaries.clear();
        plan.inputs.clear();
        for r in reads {
            let p = primary_for(view, r.offset).unwrap_or(0);
            plan.primaries.push(p);
            let mut c = p;
            for _ in 0..live {
                plan.cands.push(c);
                let snap =
                    *snaps[c as usize].get_or_insert_with(|| view.snapshot(c as usize, now_ns));
                plan.inputs.push(PredictInput {
                    replica: c,
                    snapshot: snap,
                    read: ReadInfo { size_bytes: r.len },
                });
                c = next_after(view, c).unwrap_or(c);
            }
        }
        plan.scores.clear();
        plan.scores.resize(plan.inputs.len(), 0);
        predictor.submit_batch(now_ns, &plan.inputs, wake)
    }
}

impl Policy {
    /// LinnOS reroute-on-slow, in rounds: every undecided read's current
    /// candidate is scored in one batch; fast ones are decided, slow ones move
    /// to their next live replica, for at most as many rounds as there are
    /// live replicas; reads slow everywhere go to their lowest-scored replica.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn route_linnos(
        &self,
        view: &dyn ReplicaView,
        now_ns: u64,
        reads: &[PendingRead],
        predictor: &dyn SlowPredictor,
        hedge: bool,
        s: &mut RouteScratch,
        out: &mut Vec<Route>,
    ) {
        let n = view.replica_count();
        let live = (0..n).filter(|&i| view.is_live(i)).count();
        let mut snaps: [Option<HistorySnapshot>; MAX_REPLICAS] = [None; MAX_REPLICAS];
        s.cand.clear();
        s.best.clear();
        s.which.clear();
        for (k, r) in reads.iter().enumerate() {
            let p = primary_for(view, r.offset).unwrap_or(0);
            out.push(Route {
                replica: p,
                hedge,
                ..Route::default()
            });
            s.cand.push(p);
            s.best.push((i64::MAX, p));
            s.which.push(k);
        }
        for _round in 0..live {
            if s.which.is_empty() {
                break;
            }
            s.inputs.clear();
            for &k in &s.which {
                let c = s.cand[k] as usize;
                let snap = *snaps[c].get_or_insert_with(|| view.snapshot(c, now_ns));
                s.inputs.push(PredictInput {
                    replica: c as u16,
                    snapshot: snap,
                    read: ReadInfo {
                        size_bytes: reads[k].len,
                    },
                });
            }
            s.scores.clear();
            s.scores.resize(s.inputs.len(), 0);
            predictor.score_batch(&s.inputs, &mut s.scores);
            s.placed.push((s.inputs.len() as u32, ScoredOn::Cpu));
            let mut still = 0;
            for j in 0..s.which.len() {
                let k = s.which[j];
                let c = s.cand[k];
                let score = s.scores[j];
                out[k].predictions += 1;
                if score <= 0 {
                    // out[k].replica still holds the primary here.
                    out[k].rerouted = c != out[k].replica;
                    out[k].replica = c;
                    out[k].verdict = Some(false);
                    continue;
                }
                out[k].slow_verdicts += 1;
                if score < s.best[k].0 {
                    s.best[k] = (score, c);
                }
                match next_after(view, c) {
                    Some(nx) => {
                        s.cand[k] = nx;
                        s.which[still] = k;
                        still += 1;
                    }
                    None => {
                        s.which[still] = k;
                        still += 1;
                    }
                }
            }
            s.which.truncate(still);
        }
        for &k in &s.which {
            let b = s.best[k].1;
            out[k].all_slow = true;
            out[k].verdict = Some(true);
            out[k].rerouted = out[k].replica != b;
            out[k].replica = b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use augur_rng::Rng;

    /// Replicas with some failed, each with its own history.
    struct View {
        live: Vec<bool>,
    }
    impl ReplicaView for View {
        fn replica_count(&self) -> usize {
            self.live.len()
        }
        fn is_live(&self, i: usize) -> bool {
            self.live[i]
        }
        fn snapshot(&self, i: usize, now_ns: u64) -> HistorySnapshot {
            HistorySnapshot {
                pending_ios: (i as u32 * 7 + now_ns as u32) % 13,
                ..HistorySnapshot::default()
            }
        }
        fn forecast_read_ns(&self, _: usize, _: u64, _: u64, _: u32) -> Option<u64> {
            None
        }
    }

    /// Scores from a hash of (replica state, read size), about half slow;
    /// offloads every batch and answers at once.
    struct Hashed {
        salt: u64,
    }
    impl Hashed {
        fn score(&self, i: &PredictInput) -> i64 {
            let h = (u64::from(i.snapshot.pending_ios) << 32 | u64::from(i.read.size_bytes))
                .wrapping_add(self.salt)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (h >> 40) as i64 - (1 << 23)
        }
    }
    struct Ready(Vec<i64>);
    impl PendingScores for Ready {
        fn try_take(&mut self, _: &[PredictInput], out: &mut [i64]) -> Option<ScoredOn> {
            out.copy_from_slice(&self.0);
            Some(ScoredOn::Gpu { round_trip_ns: 1 })
        }
        fn deadline_ns(&self) -> u64 {
            u64::MAX
        }
        fn give_up(&mut self, _: &[PredictInput], out: &mut [i64]) -> ScoredOn {
            out.copy_from_slice(&self.0);
            ScoredOn::GpuMissed { waited_ns: 0 }
        }
    }
    impl SlowPredictor for Hashed {
        fn name(&self) -> &str {
            "hashed"
        }
        fn score_batch(&self, inputs: &[PredictInput], out: &mut [i64]) {
            for (i, o) in inputs.iter().zip(out) {
                *o = self.score(i);
            }
        }
        fn offload_pays(&self, _: u64, _: usize, _: usize) -> bool {
            true
        }
        fn submit_batch(
            &self,
            _: u64,
            inputs: &[PredictInput],
            _: &Arc<dyn Wake>,
        ) -> Option<Box<dyn PendingScores>> {
            Some(Box::new(Ready(
                inputs.iter().map(|i| self.score(i)).collect(),
            )))
        }
    }

    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self) {}
    }

    #[test]
    fn offloaded_routing_decides_as_the_rounds_do() {
        let mut rng = Rng::new(7);
        let wake: Arc<dyn Wake> = Arc::new(NoWake);
        let mut plan = OffloadPlan::default();
        let (mut rounds, mut offloaded) = (Vec::new(), Vec::new());
        let mut all_slow = 0;
        for case in 0..300u64 {
            let n = 1 + rng.below(5) as usize;
            let mut live: Vec<bool> = (0..n).map(|_| rng.below(4) != 0).collect();
            live[rng.below(n as u64) as usize] = true;
            let view = View { live };
            let p = Policy::from_name(
                ["linnos", "linnos+hedge", "augur", "augur:3:90"][case as usize % 4],
                Some(Arc::new(Hashed { salt: case })),
            )
            .unwrap();
            let reads: Vec<PendingRead> = (0..1 + rng.below(40))
                .map(|_| PendingRead {
                    offset: rng.below(1 << 30) & !4095,
                    len: 4096 << rng.below(3),
                })
                .collect();
            let now = rng.below(1000);
            let mut scratch = RouteScratch::default();
            assert!(p.route_batch(
                &view,
                now,
                &reads,
                &mut rng.clone(),
                &mut scratch,
                &mut rounds
            ));
            let mut pending = p
                .start_offloaded(&view, now, &reads, &wake, &mut plan)
                .expect("offloaded");
            let (inputs, scores) = plan.io();
            assert!(pending.try_take(inputs, scores).is_some());
            plan.finish(&mut offloaded);
            if p.name().starts_with("augur") {
                // Scored lazily here, every candidate there: the same
                // routes, counted differently.
                for r in rounds.iter_mut().chain(offloaded.iter_mut()) {
                    (r.predictions, r.slow_verdicts) = (0, 0);
                }
            }
            assert_eq!(rounds, offloaded, "case {case}: {:?}", view.live);
            all_slow += rounds.iter().filter(|r| r.all_slow).count();
        }
        assert!(all_slow > 0, "the cases never reach the all-slow fallback");
    }

    #[test]
    fn a_policy_without_a_predictor_never_offloads() {
        let view = View {
            live: vec![true; 3],
        };
        let wake: Arc<dyn Wake> = Arc::new(NoWake);
        let reads = [PendingRead {
            offset: 0,
            len: 4096,
        }];
        for name in ["primary", "least-pending", "hedge", "random"] {
            let p = Policy::from_name(name, None).unwrap();
            let started = p.start_offloaded(&view, 0, &reads, &wake, &mut OffloadPlan::default());
            assert!(started.is_none(), "{name}");
        }
    }
}

//! LinnOS reroute-on-slow: ask the predictor about each read's primary;
//! predicted slow, try the next live replica; slow everywhere, the least bad.

use augur_feature_store::HistorySnapshot;
use augur_predictor::ReadInfo;

use super::{
    MAX_REPLICAS, PendingRead, Policy, PredictInput, ReplicaView, Route, RouteScratch,
    SlowPredictor, next_after, primary_for,
};

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
            let on = predictor.score_batch_placed(&s.inputs, &mut s.scores);
            s.placed.push((s.inputs.len() as u32, on));
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
                    continue;
                }
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
            out[k].rerouted = out[k].replica != b;
            out[k].replica = b;
        }
    }
}

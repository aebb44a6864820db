//! The read-balancing rules that mirrors in production run today, none of
//! which predicts or hedges: the references Augur's own policy must beat.
//!
//! | policy          | stands for |
//! |-----------------|------------|
//! | `primary`       | no balancing: the stripe's primary replica (what a naive mirror does) |
//! | `round-robin`   | Mayastor's nexus and Longhorn: each read to the next live replica in turn |
//! | `least-pending` | md RAID1 on SSDs (`read_balance`: the member with the fewest I/Os in flight), DRBD's `least-pending`, SPDK raid1 (fewest outstanding reads) |
//! | `service-time`  | dm-multipath's `historical-service-time`: a moving service-time estimate weighed by the I/Os in flight |
//!
//! Reads routed together see each other: a read given to a replica earlier
//! in the same batch counts as in flight there, as it would be by the time
//! the kernel sees the next one.

use super::{MAX_REPLICAS, PendingRead, ReplicaView, Route, primary_for};

/// The live replicas in the order ties are broken: the primary first, then
/// the ones after it (wrapping). Returns how many were written to `out`.
pub(super) fn tie_order(
    view: &dyn ReplicaView,
    primary: u16,
    out: &mut [u16; MAX_REPLICAS],
) -> usize {
    let n = view.replica_count().min(MAX_REPLICAS);
    let mut k = 0;
    for j in 0..n {
        let i = (primary as usize + j) % n;
        if view.is_live(i) {
            out[k] = i as u16;
            k += 1;
        }
    }
    k
}

/// `round-robin`: read `k` of the queue's stream goes to live replica
/// `k mod live` (lowest index first) (`turn` is the queue's own counter, so queues need no
/// shared state).
pub(super) fn round_robin(
    view: &dyn ReplicaView,
    reads: &[PendingRead],
    turn: &mut u64,
    out: &mut Vec<Route>,
) {
    let mut live = [0u16; MAX_REPLICAS];
    let l = tie_order(view, 0, &mut live);
    for r in reads {
        let p = primary_for(view, r.offset).unwrap_or(0);
        let pick = if l == 0 {
            p
        } else {
            live[(*turn % l as u64) as usize]
        };
        *turn = turn.wrapping_add(1);
        out.push(Route {
            replica: pick,
            rerouted: pick != p,
            ..Route::default()
        });
    }
}

/// `least-pending` (md RAID1 on SSDs, DRBD, SPDK raid1): the live replica
/// with the fewest I/Os in flight, counting reads given out earlier in this
/// batch; ties go to the primary, then to the replicas after it.
pub(super) fn least_pending(view: &dyn ReplicaView, reads: &[PendingRead], out: &mut Vec<Route>) {
    let n = view.replica_count().min(MAX_REPLICAS);
    let mut q = [0u64; MAX_REPLICAS];
    for (i, q) in q.iter_mut().enumerate().take(n) {
        *q = u64::from(view.pending_ios(i));
    }
    least_by(view, reads, q, |q, _| q, out);
}

/// Each read to the live replica with the least `cost(in flight, replica)`,
/// a read given out counting as in flight for the reads after it; ties go
/// to the primary, then to the replicas after it.
fn least_by(
    view: &dyn ReplicaView,
    reads: &[PendingRead],
    mut q: [u64; MAX_REPLICAS],
    cost: impl Fn(u64, usize) -> u64,
    out: &mut Vec<Route>,
) {
    let mut order = [0u16; MAX_REPLICAS];
    for r in reads {
        let p = primary_for(view, r.offset).unwrap_or(0);
        let live = tie_order(view, p, &mut order);
        let pick = order[..live]
            .iter()
            .copied()
            .min_by_key(|&i| cost(q[i as usize], i as usize))
            .unwrap_or(p);
        q[pick as usize] += 1;
        out.push(Route {
            replica: pick,
            rerouted: pick != p,
            ..Route::default()
        });
    }
}

/// `service-time` (dm-multipath's `historical-service-time`): the live
/// replica with the least `(in flight + 1) x mean latency of its last
/// completed reads`; a replica that has completed no read yet is taken to
/// take as long as the fastest one that has. Reads given out earlier in
/// the batch count as in flight; ties go as for `least-pending`.
pub(super) fn service_time(
    view: &dyn ReplicaView,
    now_ns: u64,
    reads: &[PendingRead],
    out: &mut Vec<Route>,
) {
    let n = view.replica_count().min(MAX_REPLICAS);
    let mut q = [0u64; MAX_REPLICAS];
    let mut mean_us = [0u64; MAX_REPLICAS];
    for i in 0..n {
        if !view.is_live(i) {
            continue;
        }
        let s = view.snapshot(i, now_ns);
        q[i] = u64::from(s.pending_ios);
        let done = s.completed();
        if !done.is_empty() {
            let sum: u64 = done.iter().map(|c| u64::from(c.latency_us)).sum();
            mean_us[i] = (sum / done.len() as u64).max(1);
        }
    }
    let known = (0..n).filter(|&i| mean_us[i] > 0).map(|i| mean_us[i]).min();
    for m in mean_us.iter_mut().take(n) {
        if *m == 0 {
            *m = known.unwrap_or(1);
        }
    }
    least_by(view, reads, q, |q, i| (q + 1) * mean_us[i], out);
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{Policy, RouteScratch, STRIPE_BYTES};
    use super::*;
    use augur_feature_store::{Completed, HistorySnapshot};
    use augur_rng::Rng;

    /// Replicas with given liveness, I/Os in flight and last read latency.
    pub(crate) struct Queues {
        pub(crate) live: Vec<bool>,
        pub(crate) pending: Vec<u32>,
        pub(crate) lat_us: Vec<u32>,
    }
    impl ReplicaView for Queues {
        fn replica_count(&self) -> usize {
            self.live.len()
        }
        fn is_live(&self, i: usize) -> bool {
            self.live[i]
        }
        fn snapshot(&self, i: usize, _: u64) -> HistorySnapshot {
            let mut s = HistorySnapshot {
                pending_ios: self.pending[i],
                ..HistorySnapshot::default()
            };
            if self.lat_us[i] > 0 {
                s.recent[0] = Completed {
                    latency_us: self.lat_us[i],
                    ..Completed::default()
                };
                s.len = 1;
            }
            s
        }
        fn forecast_read_ns(&self, _: usize, _: u64, _: u64, _: u32) -> Option<u64> {
            None
        }
    }

    pub(crate) fn picks(p: &Policy, v: &dyn ReplicaView, offsets: &[u64]) -> Vec<u16> {
        let reads: Vec<PendingRead> = offsets
            .iter()
            .map(|&offset| PendingRead { offset, len: 4096 })
            .collect();
        let mut out = Vec::new();
        let mut scratch = RouteScratch::default();
        assert!(p.route_batch(v, 0, &reads, &mut Rng::new(1), &mut scratch, &mut out));
        out.iter().map(|r| r.replica).collect()
    }

    #[test]
    fn least_pending_takes_the_emptiest_and_counts_its_own_batch() {
        let p = Policy::from_name("least-pending", None).unwrap();
        let v = Queues {
            live: vec![true; 3],
            pending: vec![5, 2, 3],
            lat_us: vec![0; 3],
        };
        // Replica 1 (2 in flight, then 3); 1 and 2 tie at 3 and 1 comes
        // first after the primary; then 2; then 1 and 2 tie again at 4.
        assert_eq!(picks(&p, &v, &[0, 0, 0, 0, 0]), [1, 1, 2, 1, 2]);
        // Ties go to the primary: stripe 2's primary is replica 2.
        let v = Queues {
            live: vec![true; 3],
            pending: vec![4, 4, 4],
            lat_us: vec![0; 3],
        };
        assert_eq!(picks(&p, &v, &[2 * STRIPE_BYTES]), [2]);
        // A failed replica is never chosen, however idle.
        let v = Queues {
            live: vec![true, false, true],
            pending: vec![4, 0, 9],
            lat_us: vec![0; 3],
        };
        assert_eq!(picks(&p, &v, &[0, 0]), [0, 0]);
    }

    #[test]
    fn round_robin_takes_the_live_replicas_in_turn() {
        let p = Policy::from_name("round-robin", None).unwrap();
        let v = Queues {
            live: vec![true, false, true],
            pending: vec![0; 3],
            lat_us: vec![0; 3],
        };
        assert_eq!(picks(&p, &v, &[0; 6]), [0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn service_time_weighs_the_queue_by_recent_latency() {
        let p = Policy::from_name("service-time", None).unwrap();
        // Replica 0: 3 in flight at 100 us = 400; replica 1: 1 at 500 = 1000;
        // replica 2 has no history, so it is taken to be as fast as the
        // fastest known (100 us): 5 in flight = 600.
        let v = Queues {
            live: vec![true; 3],
            pending: vec![3, 1, 5],
            lat_us: vec![100, 500, 0],
        };
        // 400, then 500 (0 has 4 in flight), then 2 at 600 ties 0 at 600:
        // the primary (0) first.
        assert_eq!(picks(&p, &v, &[0, 0, 0]), [0, 0, 0]);
        assert_eq!(picks(&p, &v, &[0; 4])[3], 2);
    }

    #[test]
    fn baseline_is_an_alias_of_primary() {
        let p = Policy::from_name("baseline", None).unwrap();
        assert_eq!(p.name(), "primary");
        let v = Queues {
            live: vec![true; 3],
            pending: vec![9, 0, 0],
            lat_us: vec![0; 3],
        };
        assert_eq!(picks(&p, &v, &[0]), [0]);
    }
}

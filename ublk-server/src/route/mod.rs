//! Read routing policies: which replica serves a read.
//!
//! Every policy sits behind [`Policy::route_batch`]: the reads that arrive
//! together are routed together, so a predictor can score them in one batch
//! call. Writes never pass through here; they go to every live replica.
//!
//! | policy         | what it does |
//! |----------------|--------------|
//! | `augur` (`default`) | Augur's own: md's least-pending rule with the predictor's verdict as a price of `P` I/Os in flight, and a read that still goes to a replica predicted slow hedged early (`augur:P:H`, default `3:90`); see `augur.rs` |
//! | `primary` (`baseline`) | the primary replica for the offset (128 KiB stripes, round-robin), no prediction |
//! | `round-robin`  | each read to the next live replica in turn (Mayastor, Longhorn) |
//! | `least-pending` | the live replica with the fewest I/Os in flight (md RAID1 on SSDs, DRBD, SPDK raid1) |
//! | `service-time` | the least `(in flight + 1) x` mean recent read latency (dm-multipath `historical-service-time`) |
//! | `random`       | a uniformly random live replica |
//! | `hedge`        | the primary; a second copy to the next replica if the first has not completed by a percentile (default p95) of recent read latency; first completion wins |
//! | `linnos`       | ask the predictor about the primary; predicted slow, try the next live replica, up to N-1 times; all slow, the one with the lowest score |
//! | `linnos+hedge` | `linnos`, then hedged like `hedge` |
//! | `greedy-oracle` | the emulator's own forecast picks, per read, the replica that would answer first (benchmarks on emulated replicas only; greedy, so a strong reference rather than a proven optimum: it ignores the queueing its choice causes) |
//! | `stall-bound:D` | a perfect stall detector that reacts `D` late (e.g. `stall-bound:200us`): the emulator says which replicas are inside a GC window or noisy-neighbour period that began at least `D` ago, and reads avoid those (benchmarks on emulated replicas only). It measures how fast a detector must be to reach a tail target |

use std::sync::Arc;

use augur_feature_store::HistorySnapshot;
pub use augur_predictor::{PendingScores, PredictInput, ScoredOn, SlowPredictor, Wake};
use augur_rng::Rng;

use crate::array::ArrayError;

mod augur;
mod cost;
mod linnos;
mod rules;

pub use augur::AugurRule;
pub use cost::PredictCost;
pub use linnos::OffloadPlan;

/// Most replicas an array may have.
pub const MAX_REPLICAS: usize = 8;
/// Bytes of device address space given to one replica in turn as primary.
pub const STRIPE_BYTES: u64 = 128 * 1024;
/// Names accepted by [`Policy::from_name`].
pub const POLICY_NAMES: &[&str] = &[
    "augur",
    "primary",
    "round-robin",
    "least-pending",
    "service-time",
    "random",
    "hedge",
    "linnos",
    "linnos+hedge",
    "greedy-oracle",
    "stall-bound",
];

/// Whether the policy named `name` asks a model (`augur`, its alias
/// `default`, and the `linnos` policies), so a model must be loaded for it.
pub fn needs_model(name: &str) -> bool {
    let base = name.split(':').next().unwrap_or(name);
    matches!(base, "augur" | "default") || base.starts_with("linnos")
}

/// What the router may ask of the array about its replicas.
pub trait ReplicaView {
    /// Number of replicas, live or not.
    fn replica_count(&self) -> usize;
    /// True while the replica serves I/O.
    fn is_live(&self, i: usize) -> bool;
    /// A consistent copy of the replica's history at `now_ns` (array clock).
    fn snapshot(&self, i: usize, now_ns: u64) -> HistorySnapshot;
    /// I/Os (any op) in flight on the replica now: what `least-pending`
    /// reads, without the cost of a whole snapshot.
    fn pending_ios(&self, i: usize) -> u32 {
        self.snapshot(i, 0).pending_ios
    }
    /// The emulator's forecast of a read's latency (ns), `None` if not emulated.
    fn forecast_read_ns(&self, i: usize, now_ns: u64, offset: u64, len: u32) -> Option<u64>;
    /// How long the emulator's current stall (GC window or noisy-neighbour
    /// period) has lasted at `now_ns`; `None` outside one or if not emulated.
    fn stall_age_ns(&self, i: usize, now_ns: u64) -> Option<u64> {
        let _ = (i, now_ns);
        None
    }
}

/// A read waiting to be routed: where it reads and how much.
#[derive(Clone, Copy, Debug)]
pub struct PendingRead {
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Where one read goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// Replica that serves the read.
    pub replica: u16,
    /// True when that is not the primary for the offset.
    pub rerouted: bool,
    /// True when a hedged second copy may be sent.
    pub hedge: bool,
    /// Predictor calls made for this read.
    pub predictions: u16,
    /// True when every candidate was predicted slow.
    pub all_slow: bool,
    /// How many of this read's predictions said slow.
    pub slow_verdicts: u16,
    /// What the predictor said of the replica the read went to: `None`
    /// when it was not asked, else `Some(slow)`, judged against the
    /// latency the replica then gives.
    pub verdict: Option<bool>,
}

/// Which routing rule a [`Policy`] applies.
#[derive(Clone)]
pub enum PolicyKind {
    /// Primary by offset.
    Primary,
    /// Each read to the next live replica in turn.
    RoundRobin,
    /// The live replica with the fewest I/Os in flight (md RAID1).
    LeastPending,
    /// The least `(in flight + 1) x` mean recent read latency (dm-multipath).
    ServiceTime,
    /// Augur's own: least `in flight + penalty x [predicted slow]`, a read
    /// sent to a replica predicted slow hedged early.
    Augur {
        /// The model.
        predictor: Arc<dyn SlowPredictor>,
        /// Its penalty and hedge percentile.
        rule: AugurRule,
    },
    /// Random live replica.
    Random,
    /// Primary, hedged after a latency percentile.
    Hedge,
    /// Predictor-driven reroute-on-slow, optionally hedged too.
    Linnos {
        /// The model.
        predictor: Arc<dyn SlowPredictor>,
        /// Also hedge.
        hedge: bool,
    },
    /// Per read, the replica whose emulator forecasts the earliest
    /// completion (`greedy-oracle`). Greedy: each read takes the best
    /// replica for itself, ignoring the queueing that choice causes later
    /// reads, so it is a strong reference, not a proven optimum.
    Oracle,
    /// The primary unless the emulator says it has been stalled for at
    /// least `delay_ns`, then the next live replica that has not
    /// (`stall-bound:D`): what a perfect detector reacting `D` late gives.
    StallBound {
        /// The detector's reaction time.
        delay_ns: u64,
    },
}

/// A routing policy selected by name.
#[derive(Clone)]
pub struct Policy {
    kind: PolicyKind,
    name: String,
}

/// Reusable buffers for [`Policy::route_batch`], so routing allocates nothing
/// once warmed up.
#[derive(Default)]
pub struct RouteScratch {
    /// Each predictor call's size and where it ran.
    placed: Vec<(u32, ScoredOn)>,
    inputs: Vec<PredictInput>,
    which: Vec<usize>,
    scores: Vec<i64>,
    best: Vec<(i64, u16)>,
    cand: Vec<u16>,
    /// `round-robin`'s turn (per queue).
    turn: u64,
    augur: augur::AugurBatch,
}

impl RouteScratch {
    /// Each predictor call of the last [`Policy::route_batch`]: its size and
    /// the device that scored it (the per-device counters and the simulated
    /// clock's charge, a [`PredictCost`], come from here).
    pub fn placed(&self) -> &[(u32, ScoredOn)] {
        &self.placed
    }
}

/// The primary replica for an offset: stripes of [`STRIPE_BYTES`] go to the
/// replicas in turn, skipping failed ones. `None` when no replica is live.
pub fn primary_for(view: &dyn ReplicaView, offset: u64) -> Option<u16> {
    let n = view.replica_count();
    let first = ((offset / STRIPE_BYTES) % n as u64) as usize;
    next_live(view, first, 0)
}

/// `augur`'s knobs: `P` (penalty, I/Os) or `P:H` (and hedge percentile,
/// 0 for none).
fn parse_augur(knobs: &str) -> Result<AugurRule, ArrayError> {
    let bad = || {
        ArrayError::BadSpec(format!(
            "augur: '{knobs}' is not PENALTY or PENALTY:HEDGE_PCT (I/Os in flight and a percentile, like augur:0:90)"
        ))
    };
    let (p, h) = match knobs.split_once(':') {
        Some((p, h)) => (p, Some(h)),
        None => (knobs, None),
    };
    let penalty = p.parse().map_err(|_| bad())?;
    let hedge_pct = match h {
        Some(h) => h.parse::<f64>().map_err(|_| bad())?,
        None => AugurRule::default().hedge_pct,
    };
    if !(0.0..100.0).contains(&hedge_pct) {
        return Err(bad());
    }
    Ok(AugurRule { penalty, hedge_pct })
}

/// The detector delay of `stall-bound:D` (`D` as `200us`, `1ms`, ...).
fn parse_delay(d: &str) -> Result<u64, ArrayError> {
    humantime::parse_duration(d)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .ok_or_else(|| {
            ArrayError::BadSpec(format!(
                "stall-bound: '{d}' is not a delay (write it like 200us or 1ms)"
            ))
        })
}

/// The first live replica at or after `from + skip` (wrapping), skipping
/// `skip` positions first.
fn next_live(view: &dyn ReplicaView, from: usize, skip: usize) -> Option<u16> {
    let n = view.replica_count();
    (skip..skip + n)
        .map(|k| (from + k) % n)
        .find(|&i| view.is_live(i))
        .map(|i| i as u16)
}

/// The next live replica after `r`, or `None` if `r` is the only live one.
pub fn next_after(view: &dyn ReplicaView, r: u16) -> Option<u16> {
    next_live(view, r as usize, 1).filter(|&x| x != r)
}

impl Policy {
    /// Builds a policy by name. `linnos` and `linnos+hedge` need a predictor.
    pub fn from_name(
        name: &str,
        predictor: Option<Arc<dyn SlowPredictor>>,
    ) -> Result<Policy, ArrayError> {
        let model = |name: &str| {
            predictor
                .clone()
                .ok_or_else(|| ArrayError::BadSpec(format!("policy '{name}' needs a model")))
        };
        let kind = match name {
            // `baseline` was its name before it was called what it is.
            "primary" | "baseline" => PolicyKind::Primary,
            "round-robin" => PolicyKind::RoundRobin,
            "least-pending" => PolicyKind::LeastPending,
            "service-time" => PolicyKind::ServiceTime,
            "augur" | "default" => PolicyKind::Augur {
                predictor: model(name)?,
                rule: AugurRule::default(),
            },
            "random" => PolicyKind::Random,
            "hedge" => PolicyKind::Hedge,
            // `oracle` was its name before it was called what it is.
            "greedy-oracle" | "oracle" => PolicyKind::Oracle,
            "linnos" | "linnos+hedge" => PolicyKind::Linnos {
                predictor: model(name)?,
                hedge: name == "linnos+hedge",
            },
            other => match other.split_once(':') {
                Some(("augur", knobs)) => PolicyKind::Augur {
                    predictor: model("augur")?,
                    rule: parse_augur(knobs)?,
                },
                Some(("stall-bound", d)) => PolicyKind::StallBound {
                    delay_ns: parse_delay(d)?,
                },
                None if other == "stall-bound" => PolicyKind::StallBound { delay_ns: 0 },
                _ => return Err(ArrayError::UnknownPolicy(other.to_string())),
            },
        };
        let name = match kind {
            PolicyKind::Primary => "primary".to_string(),
            PolicyKind::Augur { rule, .. } if rule == AugurRule::default() => "augur".to_string(),
            PolicyKind::Augur { rule, .. } => format!("augur:{}:{}", rule.penalty, rule.hedge_pct),
            PolicyKind::Oracle => "greedy-oracle".to_string(),
            PolicyKind::StallBound { delay_ns } => format!(
                "stall-bound:{}",
                humantime::format_duration(std::time::Duration::from_nanos(delay_ns))
            ),
            _ => name.to_string(),
        };
        Ok(Policy { kind, name })
    }

    /// The name it was selected by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rule it applies.
    pub fn kind(&self) -> &PolicyKind {
        &self.kind
    }

    /// The percentile of recent read latency after which this policy's
    /// hedged reads send their copy, where the policy sets its own
    /// (`augur`); `None`: the array's `--hedge-pct`.
    pub fn hedge_percentile(&self) -> Option<f64> {
        match &self.kind {
            PolicyKind::Augur { rule, .. } if rule.hedge_pct > 0.0 => Some(rule.hedge_pct),
            _ => None,
        }
    }

    /// Hedged copies this policy may send per 100 reads (`augur`: its
    /// budget), `None` for no limit.
    pub fn hedge_budget_pct(&self) -> Option<u32> {
        match &self.kind {
            PolicyKind::Augur { .. } => Some(augur::HEDGE_BUDGET_PCT),
            _ => None,
        }
    }

    /// Whether this policy's hedged copy goes to the live replica with the
    /// fewest I/Os in flight not yet tried (`augur`), rather than to the
    /// next one after the primary.
    pub fn hedges_to_least_pending(&self) -> bool {
        matches!(self.kind, PolicyKind::Augur { .. })
    }

    /// The predictor's slow threshold (µs), for judging its decisions.
    pub fn slow_threshold_us(&self) -> Option<u32> {
        match &self.kind {
            PolicyKind::Linnos { predictor, .. } | PolicyKind::Augur { predictor, .. } => {
                predictor.slow_threshold_us()
            }
            _ => None,
        }
    }

    /// The predictor, for the policies that ask one (`augur`, `linnos`).
    pub fn predictor(&self) -> Option<&Arc<dyn SlowPredictor>> {
        match &self.kind {
            PolicyKind::Linnos { predictor, .. } | PolicyKind::Augur { predictor, .. } => {
                Some(predictor)
            }
            _ => None,
        }
    }

    /// Routes `reads` (arrived together) into `out`, one [`Route`] each.
    /// Returns `false` when no replica is live.
    pub fn route_batch(
        &self,
        view: &dyn ReplicaView,
        now_ns: u64,
        reads: &[PendingRead],
        rng: &mut Rng,
        scratch: &mut RouteScratch,
        out: &mut Vec<Route>,
    ) -> bool {
        out.clear();
        scratch.placed.clear();
        let n = view.replica_count();
        if (0..n).all(|i| !view.is_live(i)) {
            return false;
        }
        match &self.kind {
            PolicyKind::RoundRobin => rules::round_robin(view, reads, &mut scratch.turn, out),
            PolicyKind::LeastPending => rules::least_pending(view, reads, out),
            PolicyKind::ServiceTime => rules::service_time(view, now_ns, reads, out),
            PolicyKind::Augur { predictor, rule } => scratch.augur.route_here(
                view,
                now_ns,
                reads,
                *rule,
                predictor.as_ref(),
                &mut scratch.placed,
                out,
            ),
            PolicyKind::Primary | PolicyKind::Hedge => {
                let hedge = matches!(self.kind, PolicyKind::Hedge);
                for r in reads {
                    let p = primary_for(view, r.offset).unwrap_or(0);
                    out.push(Route {
                        replica: p,
                        hedge,
                        ..Route::default()
                    });
                }
            }
            PolicyKind::Random => {
                for r in reads {
                    let p = primary_for(view, r.offset).unwrap_or(0);
                    let start = rng.below(n as u64) as usize;
                    let pick = next_live(view, start, 0).unwrap_or(p);
                    out.push(Route {
                        replica: pick,
                        rerouted: pick != p,
                        ..Route::default()
                    });
                }
            }
            PolicyKind::Oracle => {
                for r in reads {
                    let p = primary_for(view, r.offset).unwrap_or(0);
                    let mut best = (
                        view.forecast_read_ns(p as usize, now_ns, r.offset, r.len),
                        p,
                    );
                    for i in 0..n {
                        if !view.is_live(i) || i == p as usize {
                            continue;
                        }
                        let f = view.forecast_read_ns(i, now_ns, r.offset, r.len);
                        if let (Some(fi), Some(fb)) = (f, best.0)
                            && fi < fb
                        {
                            best = (f, i as u16);
                        }
                    }
                    out.push(Route {
                        replica: best.1,
                        rerouted: best.1 != p,
                        ..Route::default()
                    });
                }
            }
            PolicyKind::StallBound { delay_ns } => {
                let stalled = |i: usize| {
                    view.stall_age_ns(i, now_ns)
                        .is_some_and(|age| age >= *delay_ns)
                };
                for r in reads {
                    let p = primary_for(view, r.offset).unwrap_or(0);
                    let pick = (0..n)
                        .map(|k| (p as usize + k) % n)
                        .find(|&i| view.is_live(i) && !stalled(i))
                        .map_or(p, |i| i as u16);
                    out.push(Route {
                        replica: pick,
                        rerouted: pick != p,
                        ..Route::default()
                    });
                }
            }
            PolicyKind::Linnos { predictor, hedge } => {
                self.route_linnos(
                    view,
                    now_ns,
                    reads,
                    predictor.as_ref(),
                    *hedge,
                    scratch,
                    out,
                );
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct View {
        live: Vec<bool>,
        forecast: Vec<u64>,
    }
    impl ReplicaView for View {
        fn replica_count(&self) -> usize {
            self.live.len()
        }
        fn is_live(&self, i: usize) -> bool {
            self.live[i]
        }
        fn snapshot(&self, i: usize, _now_ns: u64) -> HistorySnapshot {
            HistorySnapshot {
                pending_ios: i as u32,
                ..HistorySnapshot::default()
            }
        }
        fn forecast_read_ns(&self, i: usize, _: u64, _: u64, _: u32) -> Option<u64> {
            Some(self.forecast[i])
        }
    }

    /// Predicts slow for the replicas in `slow`, with score = 10 + replica.
    struct Fixed {
        slow: Vec<u16>,
    }
    impl SlowPredictor for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn score_batch(&self, inputs: &[PredictInput], out: &mut [i64]) {
            for (i, o) in inputs.iter().zip(out) {
                assert_eq!(i.snapshot.pending_ios, i.replica as u32);
                *o = if self.slow.contains(&i.replica) {
                    10 + i.replica as i64
                } else {
                    -1
                };
            }
        }
    }

    fn route(p: &Policy, v: &dyn ReplicaView, offsets: &[u64]) -> Vec<Route> {
        let reads: Vec<PendingRead> = offsets
            .iter()
            .map(|&offset| PendingRead { offset, len: 4096 })
            .collect();
        let mut out = Vec::new();
        assert!(p.route_batch(
            v,
            0,
            &reads,
            &mut Rng::new(1),
            &mut RouteScratch::default(),
            &mut out
        ));
        out
    }

    #[test]
    fn baseline_stripes_and_skips_failed() {
        let mut v = View {
            live: vec![true; 3],
            forecast: vec![0; 3],
        };
        let p = Policy::from_name("baseline", None).unwrap();
        assert_eq!(p.name(), "primary");
        let r = route(
            &p,
            &v,
            &[0, STRIPE_BYTES, 2 * STRIPE_BYTES, 3 * STRIPE_BYTES],
        );
        let reps: Vec<u16> = r.iter().map(|r| r.replica).collect();
        assert_eq!(reps, vec![0, 1, 2, 0]);
        v.live[1] = false;
        let r = route(&p, &v, &[STRIPE_BYTES]);
        assert_eq!(r[0].replica, 2);
    }

    #[test]
    fn linnos_reroutes_and_falls_back_to_least_bad() {
        let v = View {
            live: vec![true; 3],
            forecast: vec![0; 3],
        };
        let pred = Arc::new(Fixed { slow: vec![0] });
        let p = Policy::from_name("linnos", Some(pred)).unwrap();
        let r = route(&p, &v, &[0, STRIPE_BYTES]);
        assert_eq!(
            (r[0].replica, r[0].rerouted, r[0].predictions),
            (1, true, 2)
        );
        assert_eq!(
            (r[1].replica, r[1].rerouted, r[1].predictions),
            (1, false, 1)
        );

        let pred = Arc::new(Fixed {
            slow: vec![0, 1, 2],
        });
        let p = Policy::from_name("linnos", Some(pred)).unwrap();
        let r = route(&p, &v, &[STRIPE_BYTES]);
        // all slow: lowest score is replica 0 (score 10)
        assert_eq!(r[0].replica, 0);
        assert!(r[0].all_slow && r[0].rerouted);
        assert_eq!(r[0].predictions, 3);
    }

    #[test]
    fn oracle_picks_fastest_live() {
        let mut v = View {
            live: vec![true; 3],
            forecast: vec![900, 500, 100],
        };
        let p = Policy::from_name("oracle", None).unwrap();
        assert_eq!(route(&p, &v, &[0])[0].replica, 2);
        v.live[2] = false;
        assert_eq!(route(&p, &v, &[0])[0].replica, 1);
    }

    /// Live replicas with the given stall ages (ns), for `stall-bound`.
    struct Stalls(Vec<Option<u64>>);
    impl ReplicaView for Stalls {
        fn replica_count(&self) -> usize {
            self.0.len()
        }
        fn is_live(&self, _: usize) -> bool {
            true
        }
        fn snapshot(&self, _: usize, _: u64) -> HistorySnapshot {
            HistorySnapshot::default()
        }
        fn forecast_read_ns(&self, _: usize, _: u64, _: u64, _: u32) -> Option<u64> {
            None
        }
        fn stall_age_ns(&self, i: usize, _: u64) -> Option<u64> {
            self.0[i]
        }
    }

    #[test]
    fn stall_bound_avoids_replicas_stalled_longer_than_its_delay() {
        let p = Policy::from_name("stall-bound:200us", None).unwrap();
        assert_eq!(p.name(), "stall-bound:200us");
        // Offset 0: primary 0. Stalled 150 us: not yet seen, stays.
        let v = Stalls(vec![Some(150_000), None, None]);
        assert_eq!(route(&p, &v, &[0])[0], Route::default());
        // Stalled 200 us: avoided, to the next replica not stalled.
        let v = Stalls(vec![Some(200_000), Some(900_000), None]);
        let r = route(&p, &v, &[0])[0];
        assert!(r.rerouted && r.replica == 2, "{r:?}");
        // All stalled: the primary.
        let v = Stalls(vec![Some(1_000_000); 3]);
        assert_eq!(route(&p, &v, &[0])[0].replica, 0);
        // No delay given: zero.
        let p = Policy::from_name("stall-bound", None).unwrap();
        assert_eq!(p.name(), "stall-bound:0s");
        let e = Policy::from_name("stall-bound:soon", None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("'soon' is not a delay"), "{e}");
    }

    #[test]
    fn unknown_and_missing_model() {
        let e = Policy::from_name("fastest", None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("fastest") && e.contains("least-pending"), "{e}");
        assert!(Policy::from_name("linnos", None).is_err());
    }
}

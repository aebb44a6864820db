//! `augur adapt`: one policy while the device changes under it, with or
//! without online adaptation, as a timeline.
//!
//! At `switch_at` every emulated replica becomes `to` (a fast device turning
//! into one that collects garbage, say); with adaptation on, an
//! [`Adapter`] round runs every `every` of device time once enough reads
//! came in, and a candidate that passes its gates replaces the model. On
//! the simulated clock a round runs between two steps of simulated time
//! (the device waits for it), so the run is exact and repeatable; on the
//! real clock it runs on a background thread while I/O goes on, and is
//! installed when it is done.

use std::sync::Arc;
use std::sync::mpsc;

use augur_feature_store::{TrainingLog, TrainingRecord};
use augur_predictor::eval::evaluate_labelled;
use augur_predictor::{Model, ModelPredictor, SlowPredictor};
use serde::Serialize;

use super::bench::{BenchSetup, open_array};
use super::run::{LoadProgress, run_load};
use crate::adapt::{AdaptConfig, Adapter, Round, RoundMetrics, Verdict, recipe_labels};
use crate::array::{Array, ArrayStats, LatencyHist};
use crate::emu::Profile;
use crate::route::Policy;

/// What to change and what to do about it.
#[derive(Clone, Debug)]
pub struct AdaptRunOptions {
    /// The policy (a `linnos` one, to have a model to adapt).
    pub policy: String,
    /// When the replicas change profile, seconds of device time.
    pub switch_at_s: f64,
    /// The profile they become.
    pub to: Profile,
    /// Run the slow path.
    pub adapt: bool,
    /// Its configuration.
    pub config: AdaptConfig,
    /// Seconds of device time between two rounds.
    pub every_s: f64,
    /// Seconds of device time per timeline row.
    pub row_s: f64,
    /// Seconds of simulated time of each reference recording (0: none).
    pub reference_s: f64,
}

/// One row of the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineRow {
    /// End of the row's interval, seconds of device time.
    pub t_s: f64,
    /// The replicas' profile during it (at its end).
    pub profile: String,
    /// The model in use at its end.
    pub model: String,
    /// Reads completed.
    pub reads: u64,
    /// Read latency percentiles of its reads (replica time), µs.
    pub p50_us: u64,
    /// 99th.
    pub p99_us: u64,
    /// 99.9th.
    pub p999_us: u64,
    /// The active model's accuracy on a reference recording of the
    /// replicas' current profile ([`Reference`]): reads under baseline
    /// routing, so that what the router avoided does not flatter it,
    /// labelled by the training recipe's rule over them, the same for
    /// every model. `None` when the replicas are not emulated.
    pub accuracy: Option<f64>,
    /// Of those reads labelled slow, the share the model predicted fast.
    pub false_submit_rate: Option<f64>,
    /// Of those labelled fast, the share it predicted slow.
    pub false_revoke_rate: Option<f64>,
    /// The live per-read judgement (`augur ctl stats`): accuracy against
    /// each model's own threshold, on the replica a read was sent to.
    pub live_accuracy: Option<f64>,
    /// Its false-submit rate.
    pub live_false_submit_rate: Option<f64>,
    /// Reads sent away from their primary, percent.
    pub reroute_pct: f64,
}

/// One adaptation round.
#[derive(Clone, Debug, Serialize)]
pub struct RoundRecord {
    /// When it started, seconds of device time.
    pub started_s: f64,
    /// When its result was applied.
    pub done_s: f64,
    /// `installed` or `rejected`.
    pub outcome: &'static str,
    /// The new model's id, when installed.
    pub model: Option<String>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// What it measured.
    pub metrics: RoundMetrics,
}

/// The run: the timeline and the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct AdaptRun {
    /// `sim` or `real`.
    pub clock: &'static str,
    /// A row per interval.
    pub rows: Vec<TimelineRow>,
    /// The reference recordings the rows' accuracy is judged on.
    pub references: Vec<ReferenceInfo>,
    /// Every round.
    pub rounds: Vec<RoundRecord>,
}

/// Reads of one profile for judging models on: emulated replicas of that
/// profile under baseline routing (nothing avoided), on the run's clock
/// (no prediction cost on the simulated one), a seed of their own,
/// labelled once by [`recipe_labels`].
pub struct Reference {
    profile: String,
    reads: Vec<TrainingRecord>,
    truth: Vec<bool>,
    info: ReferenceInfo,
    /// The last model judged on it and the result.
    judged: Option<(String, Judged)>,
}

/// What a reference recording is, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct ReferenceInfo {
    /// Its profile.
    pub profile: String,
    /// Reads in it.
    pub reads: usize,
    /// Device seconds recorded.
    pub seconds: f64,
    /// Its seed.
    pub seed: u64,
    /// The recipe's threshold over its reads, µs.
    pub threshold_us: u32,
    /// Share of its reads labelled slow.
    pub slow_share: f64,
}

#[derive(Clone, Copy)]
struct Judged {
    accuracy: Option<f64>,
    false_submit: Option<f64>,
    false_revoke: Option<f64>,
}

impl Reference {
    /// Records `profile` as `setup` would run it, for `seconds` of device
    /// time with seed `seed`; `None` for replicas that are not emulated.
    pub fn record(
        setup: &BenchSetup,
        profile: &Profile,
        seconds: f64,
        seed: u64,
    ) -> anyhow::Result<Option<Self>> {
        let mut setup = setup.clone();
        match &mut setup.replicas {
            super::ReplicaSource::Fresh { profile: p, .. } => **p = profile.clone(),
            super::ReplicaSource::Given(..) => return Ok(None),
        }
        // The run's own clock: latencies on the real one include the host's
        // share, so a simulated reference would label on another scale.
        if let super::ClockChoice::Sim(_) = setup.clock {
            setup.clock = super::ClockChoice::Sim(crate::route::PredictCost {
                per_batch_ns: 0,
                per_item_ns: 0,
            });
        }
        setup.load.seed = seed;
        setup.load.duration = std::time::Duration::from_secs_f64(seconds);
        setup.faults.clear();
        // Drained at each progress report (every 500 ms on the real clock).
        let log = Arc::new(TrainingLog::new(1 << 18));
        let (array, _dir) = open_array(
            &setup,
            Policy::from_name("primary", None)?,
            Some(log.clone()),
        )?;
        let mut reads = Vec::new();
        let drain = |reads: &mut Vec<TrainingRecord>| loop {
            let n = log.get(4096, reads);
            if n == 0 {
                break;
            }
            log.truncate(n);
        };
        run_load(&array, &setup.load, &mut |_| drain(&mut reads))?;
        drain(&mut reads);
        reads.retain(|r| r.op == augur_feature_store::Op::Read);
        let (truth, threshold_us) = recipe_labels(&reads)
            .ok_or_else(|| anyhow::anyhow!("the {} reference recorded no reads", profile.name))?;
        let slow_share = truth.iter().filter(|&&t| t).count() as f64 / truth.len().max(1) as f64;
        Ok(Some(Reference {
            profile: profile.name.clone(),
            info: ReferenceInfo {
                profile: profile.name.clone(),
                reads: reads.len(),
                seconds,
                seed,
                threshold_us,
                slow_share,
            },
            reads,
            truth,
            judged: None,
        }))
    }

    /// `model` judged on it (integer path), remembered per model.
    fn judge(&mut self, model: &Model) -> Judged {
        let id = model.id();
        if let Some((m, j)) = &self.judged
            && *m == id
        {
            return *j;
        }
        let r = evaluate_labelled(model, &self.reads, &self.truth, self.info.threshold_us).int;
        let j = Judged {
            accuracy: r.accuracy,
            false_submit: r.false_submit_rate,
            false_revoke: r.false_revoke_rate,
        };
        self.judged = Some((id, j));
        j
    }
}

struct Mark {
    stats: ArrayStats,
    lat: LatencyHist,
}

fn mark(a: &Array) -> Mark {
    let mut lat = LatencyHist::default();
    for h in a.read_latency() {
        lat.add(&h);
    }
    Mark {
        stats: a.stats(),
        lat,
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Runs `opts.policy` with `model` on the setup's replicas, switching their
/// profile at `switch_at_s`, adapting if asked.
pub fn run_adapt(
    setup: &BenchSetup,
    model: Model,
    opts: &AdaptRunOptions,
    on_progress: &mut dyn FnMut(LoadProgress),
) -> anyhow::Result<AdaptRun> {
    let sim = setup.clock != super::ClockChoice::Real;
    let log = Arc::new(TrainingLog::new(1 << 18));
    let with = |m: Model| -> anyhow::Result<Policy> {
        let id = m.id();
        let p: Arc<dyn SlowPredictor> = Arc::new(ModelPredictor::new(m, id));
        Ok(Policy::from_name(&opts.policy, Some(p))?)
    };
    let mut active = model;
    // Reference recordings of both profiles, seeds of their own.
    let mut refs: Vec<Reference> = Vec::new();
    if let super::ReplicaSource::Fresh { profile: p, .. } = &setup.replicas
        && opts.reference_s > 0.0
    {
        let (secs, seed) = (opts.reference_s, setup.load.seed.wrapping_add(1_000_003));
        refs.extend(Reference::record(setup, p, secs, seed)?);
        if opts.to.name != p.name {
            refs.extend(Reference::record(setup, &opts.to, secs, seed + 1)?);
        }
    }
    let (array, _dir) = open_array(setup, with(active.clone())?, Some(log.clone()))?;
    let mut adapter = Adapter::new(opts.config.clone());
    let t0 = array.now_ns();
    let at = |now: u64| (now - t0) as f64 / 1e9;
    let mut switched = false;
    let mut next_row = opts.row_s;
    let mut next_round = opts.every_s;
    let mut last = mark(&array);
    let mut rows = Vec::new();
    let mut rounds = Vec::new();
    let mut profile = String::new();
    if let super::ReplicaSource::Fresh { profile: p, .. } = &setup.replicas {
        profile = p.name.clone();
    }
    // On the real clock: the round running on a thread, and when it began.
    let mut pending: Option<(f64, mpsc::Receiver<Verdict>)> = None;
    let mut failure: Option<anyhow::Error> = None;
    let apply = |v: Verdict,
                 started_s: f64,
                 done_s: f64,
                 active: &mut Model,
                 rounds: &mut Vec<RoundRecord>|
     -> anyhow::Result<()> {
        match v {
            Verdict::Install(m, metrics) => {
                array.set_policy(with((*m).clone())?);
                tracing::info!("adapt: installed {} ({})", m.id(), metrics.summary());
                rounds.push(RoundRecord {
                    started_s,
                    done_s,
                    outcome: "installed",
                    model: Some(m.id()),
                    reason: None,
                    metrics,
                });
                *active = *m;
            }
            Verdict::Reject(why, metrics) => {
                tracing::info!("adapt: rejected: {why} ({})", metrics.summary());
                rounds.push(RoundRecord {
                    started_s,
                    done_s,
                    outcome: "rejected",
                    model: None,
                    reason: Some(why),
                    metrics,
                });
            }
        }
        Ok(())
    };
    let r = run_load(&array, &setup.load, &mut |p| {
        on_progress(p);
        if failure.is_some() {
            return;
        }
        let now = array.now_ns();
        let t = at(now);
        adapter.drain(&log);
        // The row of the interval that ends now, before anything changes.
        if t >= next_row {
            next_row += opts.row_s;
            let now_mark = mark(&array);
            let d = now_mark.stats.since(&last.stats);
            let lat = now_mark.lat.since(&last.lat);
            let j = refs
                .iter_mut()
                .find(|r| r.profile == profile)
                .map(|r| r.judge(&active));
            rows.push(TimelineRow {
                t_s: (t * 1000.0).round() / 1000.0,
                profile: profile.clone(),
                model: active.id(),
                reads: d.reads,
                p50_us: lat.quantile_us(0.5),
                p99_us: lat.quantile_us(0.99),
                p999_us: lat.quantile_us(0.999),
                accuracy: j.and_then(|j| j.accuracy),
                false_submit_rate: j.and_then(|j| j.false_submit),
                false_revoke_rate: j.and_then(|j| j.false_revoke),
                live_accuracy: ratio(d.correct_predictions, d.judged_reads),
                live_false_submit_rate: ratio(d.false_submits, d.observed_slow),
                reroute_pct: ratio(d.rerouted * 100, d.reads).unwrap_or(0.0),
            });
            last = now_mark;
        }
        if !switched && t >= opts.switch_at_s {
            switched = true;
            if let Err(e) = array.set_emu_profile(&opts.to) {
                failure = Some(e.into());
                return;
            }
            profile = opts.to.name.clone();
        }
        if let Some((started, rx)) = &pending
            && let Ok(v) = rx.try_recv()
        {
            let started = *started;
            pending = None;
            if let Err(e) = apply(v, started, t, &mut active, &mut rounds) {
                failure = Some(e);
            }
        }
        if opts.adapt && t >= next_round && pending.is_none() && adapter.ready() {
            next_round = t + opts.every_s;
            let round: Round = adapter.take_round();
            if sim {
                // The device waits: simulated time does not move meanwhile.
                let v = round.run(&active);
                if let Err(e) = apply(v, t, t, &mut active, &mut rounds) {
                    failure = Some(e);
                }
            } else {
                let (tx, rx) = mpsc::channel();
                let model = active.clone();
                std::thread::spawn(move || {
                    crate::adapt::idle_priority();
                    let _ = tx.send(round.run(&model));
                });
                pending = Some((t, rx));
            }
        }
    });
    r?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(AdaptRun {
        clock: setup.clock.name(),
        rows,
        references: refs.into_iter().map(|r| r.info).collect(),
        rounds,
    })
}

/// The timeline and rounds as tables.
pub fn render_adapt(run: &AdaptRun) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>7} {:<12} {:<9} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "t s",
        "profile",
        "model",
        "reads",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "accuracy",
        "f-submit",
        "f-revoke",
        "live acc",
        "live f-s",
        "reroute%"
    );
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    for r in &run.rows {
        let _ = writeln!(
            s,
            "{:>7.1} {:<12} {:<9} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.2}",
            r.t_s,
            r.profile,
            r.model,
            r.reads,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            f(r.accuracy),
            f(r.false_submit_rate),
            f(r.false_revoke_rate),
            f(r.live_accuracy),
            f(r.live_false_submit_rate),
            r.reroute_pct
        );
    }
    for r in &run.references {
        let _ = writeln!(
            s,
            "accuracy, f-submit, f-revoke on {}: the model on a reference recording ({} reads, {} s, seed {}, baseline routing), labelled by the training recipe (threshold {} us, {:.1}% slow)",
            r.profile,
            r.reads,
            r.seconds,
            r.seed,
            r.threshold_us,
            r.slow_share * 100.0
        );
    }
    let _ = writeln!(
        s,
        "live acc, live f-s: each read judged as it completes, against the model's own threshold"
    );
    if run.rounds.is_empty() {
        let _ = writeln!(s, "no adaptation rounds");
    }
    for r in &run.rounds {
        let _ = writeln!(
            s,
            "round at {:.1} s (applied {:.1} s): {} {}: {}",
            r.started_s,
            r.done_s,
            r.outcome,
            r.model.as_deref().or(r.reason.as_deref()).unwrap_or(""),
            r.metrics.summary()
        );
        if run.clock == "real" {
            let _ = writeln!(s, "    trained in {:.1} s", r.metrics.train_seconds);
        }
    }
    s
}

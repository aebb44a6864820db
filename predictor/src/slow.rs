//! The seam between routing and prediction: [`SlowPredictor`] scores a batch
//! of (replica history, read) pairs; [`ModelPredictor`] does it with a model
//! file's integer fast path.
//!
//! The trait lives here, below the daemon, so that every back-end (this CPU
//! path, the GPU batcher) implements the same interface the routing policies
//! call.

use std::path::Path;
use std::sync::Arc;

use augur_feature_store::HistorySnapshot;

use crate::features::ReadInfo;
use crate::infer::ScoreInput;
use crate::model::{Model, ModelError};

/// One input for a slow-I/O predictor: a replica's state and the read.
#[derive(Clone, Copy, Debug)]
pub struct PredictInput {
    /// Replica the read would go to.
    pub replica: u16,
    /// That replica's history at routing time.
    pub snapshot: HistorySnapshot,
    /// The read.
    pub read: ReadInfo,
}

impl ScoreInput for PredictInput {
    fn snapshot(&self) -> &HistorySnapshot {
        &self.snapshot
    }
    fn read(&self) -> ReadInfo {
        self.read
    }
}

/// Where a batch of predictions was computed, for the per-device counters
/// and for the simulated clock, which charges a GPU batch its round trip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScoredOn {
    /// On the CPU (the integer path).
    #[default]
    Cpu,
    /// On the GPU; the round trip it took (real clock) or is modelled to
    /// take (simulated clock), in ns.
    Gpu {
        /// Upload, dispatch and readback, ns.
        round_trip_ns: u64,
    },
    /// Sent to the GPU, which did not answer within its deadline (or
    /// failed): scored on the CPU after waiting `waited_ns`.
    GpuMissed {
        /// How long the batch waited for the GPU before giving up, ns.
        waited_ns: u64,
    },
}

/// Anything that can say, for a batch of (replica state, read) pairs, how
/// likely each read is to be slow. Scores above zero mean "slow".
pub trait SlowPredictor: Send + Sync {
    /// Short name for reports.
    fn name(&self) -> &str;
    /// Scores each input into `out` (same length); > 0 predicts slow.
    fn score_batch(&self, inputs: &[PredictInput], out: &mut [i64]);
    /// Whether a batch of `n_all` inputs (every candidate of every read at
    /// once) handed to another thread at `now_ns` pays against scoring
    /// `n_first` of them here (the first round). A predictor that can
    /// offload (the GPU batcher) says so; the rest never do. `now_ns` is
    /// the caller's clock (the array's), on which a simulated GPU keeps its
    /// queue; tools pass 0.
    fn offload_pays(&self, now_ns: u64, n_first: usize, n_all: usize) -> bool {
        let _ = (now_ns, n_first, n_all);
        false
    }
    /// Hands `inputs` to another thread (the GPU) at `now_ns` and returns
    /// at once; its answer is collected from the [`PendingScores`], and
    /// `wake` is called when it is there. `None`: score them here with
    /// [`score_batch`](Self::score_batch).
    fn submit_batch(
        &self,
        now_ns: u64,
        inputs: &[PredictInput],
        wake: &Arc<dyn Wake>,
    ) -> Option<Box<dyn PendingScores>> {
        let _ = (now_ns, inputs, wake);
        None
    }
    /// The latency (µs) at and above which a read counts as slow for this
    /// predictor (a model's label threshold), to judge its decisions
    /// against what the device then did; `None` if it has none.
    fn slow_threshold_us(&self) -> Option<u32> {
        None
    }
}

/// Tells an I/O thread that a batch it handed off has its answer. Called
/// from the thread that answered, so it must not block.
pub trait Wake: Send + Sync {
    /// The answer is there (or the batch failed): look at it soon.
    fn wake(&self);
}

/// A batch handed to another thread by [`SlowPredictor::submit_batch`]. The
/// caller keeps the inputs, so a batch the other side cannot answer in time
/// is scored on the CPU, with the same integer path as ever.
pub trait PendingScores: Send {
    /// Without waiting: the scores in `out` and where they came from once
    /// answered; `None` while not. A failed device call is answered here
    /// on the CPU (from `inputs`) as [`ScoredOn::GpuMissed`].
    fn try_take(&mut self, inputs: &[PredictInput], out: &mut [i64]) -> Option<ScoredOn>;
    /// How long after submission the caller should give up waiting, ns.
    fn deadline_ns(&self) -> u64;
    /// On the simulated clock, the round trip the batch is modelled to take
    /// (ns): the caller collects it that much later in simulated time.
    /// `None` on the real clock, where the [`Wake`] says when.
    fn modelled_ns(&self) -> Option<u64> {
        None
    }
    /// Gives up on the other side (its answer is no longer wanted) and
    /// scores `inputs` here into `out`: [`ScoredOn::GpuMissed`].
    fn give_up(&mut self, inputs: &[PredictInput], out: &mut [i64]) -> ScoredOn;
}

/// Scores `inputs` with `p`, offloading them when `p` says it pays, and
/// waits here for the answer (at most until the batch's deadline). For tools
/// and tests: the I/O path never waits so, it parks the batch instead.
pub fn score_waiting(p: &dyn SlowPredictor, inputs: &[PredictInput], out: &mut [i64]) -> ScoredOn {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(&self) {
            self.0.unpark();
        }
    }
    let n = inputs.len();
    let wake: Arc<dyn Wake> = Arc::new(Unpark(std::thread::current()));
    let pending = p
        .offload_pays(0, n, n)
        .then(|| p.submit_batch(0, inputs, &wake))
        .flatten();
    let Some(mut pending) = pending else {
        p.score_batch(inputs, out);
        return ScoredOn::Cpu;
    };
    let start = std::time::Instant::now();
    let deadline = std::time::Duration::from_nanos(pending.deadline_ns());
    loop {
        if let Some(on) = pending.try_take(inputs, out) {
            return on;
        }
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            return pending.give_up(inputs, out);
        }
        std::thread::park_timeout(left);
    }
}

/// A loaded, validated model used through its integer fast path (the same
/// arithmetic as the generated C and the kernel module).
pub struct ModelPredictor {
    model: Model,
    name: String,
}

impl ModelPredictor {
    /// Wraps a model under a display name.
    pub fn new(model: Model, name: impl Into<String>) -> Self {
        ModelPredictor {
            model,
            name: name.into(),
        }
    }

    /// Loads `default` (the shipped model) or a model file.
    pub fn load(spec: &str) -> Result<Self, ModelError> {
        let model = if spec == "default" {
            Model::default_model()?
        } else {
            Model::load(Path::new(spec))?
        };
        Ok(Self::new(model, spec))
    }

    /// The model's id: the CRC-32 its file carries, as 8 hex digits (the
    /// same bytes give the same id wherever the file was copied).
    pub fn id(&self) -> String {
        self.model.id()
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// As the trait object the policies take.
    pub fn into_dyn(self) -> Arc<dyn SlowPredictor> {
        Arc::new(self)
    }
}

impl SlowPredictor for ModelPredictor {
    fn name(&self) -> &str {
        &self.name
    }

    fn score_batch(&self, inputs: &[PredictInput], out: &mut [i64]) {
        match inputs {
            [one] => out[0] = self.model.score_int(&one.snapshot, one.read),
            _ => self.model.score_int_batch(inputs, out),
        }
    }

    fn slow_threshold_us(&self) -> Option<u32> {
        Some(self.model.meta().threshold_us).filter(|&t| t > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureSet;

    #[test]
    fn batch_and_single_scores_agree() {
        let m = Model::random(FeatureSet::LinnOsExt, &[16], 2, 5).unwrap();
        let p = ModelPredictor::new(m, "random");
        let inputs: Vec<PredictInput> = (0..70u32)
            .map(|i| PredictInput {
                replica: (i % 3) as u16,
                snapshot: HistorySnapshot {
                    pending_ios: i,
                    pending_pages: 2 * i,
                    ..HistorySnapshot::default()
                },
                read: ReadInfo {
                    size_bytes: 4096 * (1 + i % 4),
                },
            })
            .collect();
        let mut batch = vec![0i64; inputs.len()];
        p.score_batch(&inputs, &mut batch);
        for (i, b) in inputs.iter().zip(&batch) {
            let mut one = [0i64];
            p.score_batch(std::slice::from_ref(i), &mut one);
            assert_eq!(one[0], *b);
        }
        assert_eq!(p.name(), "random");
    }
}

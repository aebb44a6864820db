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
    /// [`score_batch`](Self::score_batch), saying where the batch ran (a
    /// predictor that can offload batches to a GPU overrides this).
    fn score_batch_placed(&self, inputs: &[PredictInput], out: &mut [i64]) -> ScoredOn {
        self.score_batch(inputs, out);
        ScoredOn::Cpu
    }
    /// The latency (µs) at and above which a read counts as slow for this
    /// predictor (a model's label threshold), to judge its decisions
    /// against what the device then did; `None` if it has none.
    fn slow_threshold_us(&self) -> Option<u32> {
        None
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

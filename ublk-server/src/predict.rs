//! The predictor behind the `linnos` policies: a model file's integer path
//! scoring (replica history, read) pairs.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use augur_feature_store::HistorySnapshot;
use augur_predictor::{Model, ModelError, ReadInfo};

use crate::policy::{PredictInput, SlowPredictor};

/// A loaded, validated model used through its integer fast path (the same
/// arithmetic as the generated C and the kernel module).
pub struct ModelPredictor {
    model: Model,
    name: String,
}

thread_local! {
    static BATCH: RefCell<Vec<(HistorySnapshot, ReadInfo)>> = const { RefCell::new(Vec::new()) };
}

impl ModelPredictor {
    /// Wraps a model.
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
        if inputs.len() == 1 {
            let i = &inputs[0];
            out[0] = self.model.score_int(
                &i.snapshot,
                ReadInfo {
                    size_bytes: i.size_bytes,
                },
            );
            return;
        }
        BATCH.with(|b| {
            let mut b = b.borrow_mut();
            b.clear();
            b.extend(inputs.iter().map(|i| {
                (
                    i.snapshot,
                    ReadInfo {
                        size_bytes: i.size_bytes,
                    },
                )
            }));
            self.model.score_int_batch(&b, out);
        });
    }
}

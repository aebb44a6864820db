//! The daemon's models: the active one, those it replaced (for rollback),
//! and the history of every install, rollback and rejection.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use augur_predictor::ModelPredictor;
use serde::Serialize;

/// How many replaced models are kept for `model rollback`.
pub const ROLLBACK_DEPTH: usize = 8;
/// How many history events are kept (the oldest go first).
pub const HISTORY_LEN: usize = 256;

/// A model the daemon has loaded.
#[derive(Clone)]
pub struct ModelEntry {
    /// Its id ([`ModelPredictor::id`]).
    pub id: String,
    /// Where it came from: a file path or `default`.
    pub source: String,
    /// The model.
    pub predictor: Arc<ModelPredictor>,
}

impl std::fmt::Debug for ModelEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelEntry")
            .field("id", &self.id)
            .field("source", &self.source)
            .finish()
    }
}

impl ModelEntry {
    /// Wraps a loaded model.
    pub fn new(predictor: ModelPredictor, source: impl Into<String>) -> Self {
        ModelEntry {
            id: predictor.id(),
            source: source.into(),
            predictor: Arc::new(predictor),
        }
    }

    /// What `model show` prints of it.
    pub fn describe(&self) -> serde_json::Value {
        let m = self.predictor.model();
        serde_json::json!({
            "id": self.id,
            "source": self.source,
            "features": m.feature_set().name(),
            "shape": m.shape_string(),
            "threshold_us": m.meta().threshold_us,
            "label": m.meta().label_rule,
        })
    }
}

/// One line of `model history`.
#[derive(Clone, Debug, Serialize)]
pub struct ModelEvent {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// `start`, `load`, `adapt`, `rollback` or `rejected`.
    pub event: &'static str,
    /// The model's id (none when a file could not be read at all).
    pub id: Option<String>,
    /// Where it came from.
    pub source: String,
    /// Why it was rejected, or what it replaced.
    pub detail: String,
}

/// The active model, the ones it replaced, and the history.
pub struct ModelBook {
    active: ModelEntry,
    replaced: Vec<ModelEntry>,
    history: Vec<ModelEvent>,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ModelBook {
    /// A book whose first model is `active`.
    pub fn new(active: ModelEntry) -> Self {
        let mut b = ModelBook {
            history: Vec::new(),
            replaced: Vec::new(),
            active,
        };
        let (id, source) = (b.active.id.clone(), b.active.source.clone());
        b.note("start", Some(id), source, String::new());
        b
    }

    /// The active model.
    pub fn active(&self) -> &ModelEntry {
        &self.active
    }

    /// Every event, oldest first.
    pub fn history(&self) -> &[ModelEvent] {
        &self.history
    }

    fn note(&mut self, event: &'static str, id: Option<String>, source: String, detail: String) {
        if self.history.len() == HISTORY_LEN {
            self.history.remove(0);
        }
        self.history.push(ModelEvent {
            at: now_s(),
            event,
            id,
            source,
            detail,
        });
    }

    /// Makes `m` active (the caller has swapped it into the array); returns
    /// the one it replaced.
    pub fn install(&mut self, m: ModelEntry, event: &'static str) -> ModelEntry {
        self.install_noting(m, event, "")
    }

    /// [`install`](Self::install), with `note` (what a round measured) in
    /// the history line.
    pub fn install_noting(&mut self, m: ModelEntry, event: &'static str, note: &str) -> ModelEntry {
        let old = std::mem::replace(&mut self.active, m);
        let detail = if note.is_empty() {
            format!("replaced {}", old.id)
        } else {
            format!("replaced {}: {note}", old.id)
        };
        let (id, source) = (self.active.id.clone(), self.active.source.clone());
        self.note(event, Some(id), source, detail);
        if self.replaced.len() == ROLLBACK_DEPTH {
            self.replaced.remove(0);
        }
        self.replaced.push(old.clone());
        old
    }

    /// The model a rollback would restore.
    pub fn previous(&self) -> Option<&ModelEntry> {
        self.replaced.last()
    }

    /// Makes the previous model active again; returns (replaced, restored).
    pub fn rollback(&mut self) -> Option<(ModelEntry, ModelEntry)> {
        let prev = self.replaced.pop()?;
        let old = std::mem::replace(&mut self.active, prev.clone());
        let detail = format!("replaced {}", old.id);
        self.note(
            "rollback",
            Some(prev.id.clone()),
            prev.source.clone(),
            detail,
        );
        Some((old, prev))
    }

    /// Records a candidate that was refused and why.
    pub fn reject(&mut self, id: Option<String>, source: String, why: String) {
        self.note("rejected", id, source, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use augur_predictor::{FeatureSet, Model};

    fn entry(seed: u64) -> ModelEntry {
        let m = Model::random(FeatureSet::LinnOs, &[8], 2, seed).unwrap();
        ModelEntry::new(ModelPredictor::new(m, "t"), format!("m{seed}"))
    }

    #[test]
    fn install_rollback_and_history() {
        let (a, b, c) = (entry(1), entry(2), entry(3));
        let mut book = ModelBook::new(a.clone());
        assert!(book.previous().is_none() && book.rollback().is_none());
        assert_eq!(book.install(b.clone(), "load").id, a.id);
        assert_eq!(book.install(c.clone(), "load").id, b.id);
        let (old, back) = book.rollback().unwrap();
        assert_eq!((old.id, back.id.clone()), (c.id.clone(), b.id.clone()));
        assert_eq!(book.active().id, b.id);
        book.rollback().unwrap();
        assert_eq!(book.active().id, a.id);
        assert!(book.rollback().is_none());
        book.reject(None, "bad.augm".into(), "checksum mismatch".into());
        let ev: Vec<&str> = book.history().iter().map(|e| e.event).collect();
        assert_eq!(
            ev,
            ["start", "load", "load", "rollback", "rollback", "rejected"]
        );
        for _ in 0..20 {
            book.install(entry(4), "load");
        }
        assert_eq!(book.replaced.len(), ROLLBACK_DEPTH);
    }
}

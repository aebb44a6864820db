//! The operator's changes to the array's membership while it serves:
//! fail a replica (a drill), remove it, add one into a failed or empty
//! slot, replace one. A new replica takes writes at once and reads only
//! for the regions the rebuild has copied to it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering::SeqCst;

use super::bitmap::Member;
use super::meta::Record;
use super::{Array, Backend, FaultPlan, ReplicaSpec, open_backing};
use crate::emu::FlashEmu;

/// What a membership change did, for the reply and the log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemberChange {
    /// The slot changed.
    pub replica: usize,
    /// What happened, in words.
    pub what: String,
    /// Regions the new replica must receive before it serves reads.
    pub regions_to_copy: u64,
}

impl Array {
    fn live_others(&self, n: usize) -> usize {
        (0..self.replica_count())
            .filter(|&i| i != n && self.inner.is_live(i))
            .count()
    }

    fn check_slot(&self, n: usize) -> Result<(), String> {
        let count = self.replica_count();
        if n >= count {
            return Err(format!(
                "no replica {n}: the array has replicas 0 to {}",
                count - 1
            ));
        }
        Ok(())
    }

    /// Marks replica `n` failed, as an I/O error would (a drill). Refused
    /// for the last live replica.
    pub fn fail_replica(&self, n: usize) -> Result<MemberChange, String> {
        self.check_slot(n)?;
        if !self.inner.is_live(n) {
            return Err(format!("replica {n} has already failed"));
        }
        if self.live_others(n) == 0 {
            return Err(format!(
                "replica {n} is the last live replica: failing it would fail every request"
            ));
        }
        self.inner.mark_failed(n, "failed by the operator");
        Ok(MemberChange {
            replica: n,
            what: format!("replica {n} failed (drill)"),
            regions_to_copy: 0,
        })
    }

    /// Takes replica `n` out of the array: it is failed and its backing is
    /// closed when the array closes. Refused for the last live replica.
    pub fn remove_replica(&self, n: usize) -> Result<MemberChange, String> {
        self.check_slot(n)?;
        let r = &self.inner.replicas[n];
        if r.removed.load(SeqCst) {
            return Err(format!("replica {n} is already removed"));
        }
        if self.inner.is_live(n) && self.live_others(n) == 0 {
            return Err(format!(
                "replica {n} is the last live replica: removing it would fail every request"
            ));
        }
        self.inner.mark_failed(n, "removed by the operator");
        r.removed.store(true, SeqCst);
        let old = r.backend.swap(Arc::new(Backend {
            path: Default::default(),
            text: "(removed)".into(),
            file: None,
            direct: false,
            emu: None,
            fault: FaultPlan::default(),
        }));
        self.retire(old);
        Ok(MemberChange {
            replica: n,
            what: format!("replica {n} removed"),
            regions_to_copy: 0,
        })
    }

    /// Puts a new replica into the first failed or removed slot (growing a
    /// degraded array back), rebuilt in the background.
    pub fn add_replica(&self, spec: &str) -> Result<MemberChange, String> {
        let n = (0..self.replica_count())
            .find(|&i| !self.inner.is_live(i))
            .ok_or_else(|| {
                format!(
                    "every one of the {} replica slots is live: there is no slot to add into (replace one instead)",
                    self.replica_count()
                )
            })?;
        self.install(n, spec)
    }

    /// Replaces replica `n` (live or not) with a new one, rebuilt in the
    /// background from the others.
    pub fn replace_replica(&self, n: usize, spec: &str) -> Result<MemberChange, String> {
        self.check_slot(n)?;
        if self.inner.is_live(n) && self.live_others(n) == 0 {
            return Err(format!(
                "replica {n} is the only live replica: there is nothing to rebuild a new one from"
            ));
        }
        self.install(n, spec)
    }

    fn retire(&self, old: Arc<Backend>) {
        self.inner
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(old);
    }

    /// Checks a new replica's spec against the array: big enough, not the
    /// device itself, not already a member.
    fn check_new(&self, spec: &ReplicaSpec, n: usize, device: Option<&Path>) -> Result<(), String> {
        let same_file = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => {
                (x.dev() == y.dev() && x.ino() == y.ino())
                    || (x.rdev() != 0 && x.rdev() == y.rdev())
            }
            _ => false,
        };
        if let Some(dev) = device
            && same_file(&spec.path, dev)
        {
            return Err(format!(
                "{} is the device this array serves: it cannot be its own replica",
                spec.path.display()
            ));
        }
        for i in 0..self.replica_count() {
            let b = self.inner.replicas[i].backend.load();
            if b.file.is_some()
                && (i != n || self.inner.is_live(i))
                && same_file(&spec.path, &b.path)
            {
                return Err(format!(
                    "{} is already replica {i} of this array",
                    spec.path.display()
                ));
            }
        }
        Ok(())
    }

    fn install(&self, n: usize, text: &str) -> Result<MemberChange, String> {
        let inner = &self.inner;
        let Some(intent) = inner.intent.as_ref() else {
            return Err("this array keeps no metadata (started with --no-bitmap): it cannot rebuild a replica".into());
        };
        let Some(meta) = inner.meta.as_ref() else {
            return Err("this array keeps no metadata".into());
        };
        let spec = ReplicaSpec::parse(text).map_err(|e| e.to_string())?;
        let device = self.device_path();
        self.check_new(&spec, n, device.as_deref())?;
        // The one replica that failed coming back: its sidecar says so.
        let old_path = inner.replicas[n].backend.load().path.clone();
        let returning = old_path == spec.path && !inner.is_live(n);
        let car = meta.sidecar(&spec.path);
        let comeback = if returning {
            Record::load(&car).ok().flatten()
        } else {
            None
        };
        let b = open_backing(&spec.path, Some(inner.size)).map_err(|e| e.to_string())?;
        if b.size < inner.size {
            if b.created {
                let _ = std::fs::remove_file(&spec.path);
            }
            return Err(format!(
                "{} is {} bytes, smaller than the array ({} bytes)",
                spec.path.display(),
                b.size,
                inner.size
            ));
        }
        let sidecar = super::meta::Sidecar::open(&car).map_err(|e| e.to_string())?;
        let mut book = intent.lock_book();
        let from_bitmap = comeback.as_ref().is_some_and(|r| {
            r.array_id == book.array_id
                && r.index as usize == n
                && r.state == super::meta::SlotState::InSync
                && book.degraded_since != 0
                && r.generation + 1 >= book.degraded_since
        });
        // A live replica being replaced leaves first.
        if inner.is_live(n) {
            drop(book);
            inner.mark_failed(n, "replaced by the operator");
            book = intent.lock_book();
        }
        let seed = inner.seed.wrapping_add(n as u64) ^ inner.now_ns().rotate_left(23);
        let new = Arc::new(Backend {
            path: spec.path.clone(),
            text: spec.text.clone(),
            file: Some(b.file),
            direct: b.direct,
            emu: spec
                .profile
                .clone()
                .map(|p| Mutex::new(FlashEmu::new(p, seed))),
            fault: FaultPlan::default(),
        });
        let regions: Vec<usize> = if from_bitmap {
            intent.dirty.ones()
        } else {
            (0..intent.regions).collect()
        };
        let count = regions.len() as u64;
        // Pending first, then the backing, then live: a read never reaches
        // it before its pending set is in place, a write always does after.
        intent.add_pending(n, regions);
        book.members[n] = Member::Rebuilding;
        book.sidecars[n] = Some(sidecar);
        let old = inner.replicas[n].backend.swap(new);
        inner.replicas[n].removed.store(false, SeqCst);
        inner.replicas[n].failed.store(false, SeqCst);
        intent.change(&mut book);
        drop(book);
        self.retire(old);
        inner.sync.kick();
        let what = if from_bitmap {
            format!(
                "replica {n} ({}) is back: resyncing the {count} region(s) written while it was away",
                spec.path.display()
            )
        } else {
            format!(
                "replica {n} is now {}: rebuilding all {count} region(s) from the live replicas",
                spec.path.display()
            )
        };
        tracing::warn!("{what}");
        Ok(MemberChange {
            replica: n,
            what,
            regions_to_copy: count,
        })
    }

    /// Sets the path of the device this array is served as (refused as a replica).
    pub fn set_device_path(&self, path: &Path) {
        *self.inner.device.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.to_path_buf());
    }

    fn device_path(&self) -> Option<std::path::PathBuf> {
        self.inner
            .device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

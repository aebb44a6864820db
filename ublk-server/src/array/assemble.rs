//! Assembling an array from its replicas' metadata at open: check that the
//! replicas are this array's, in this order, current; initialise metadata
//! on a first start; decide what must be resynchronised.

use std::path::PathBuf;

use super::bitmap::{Book, Intent, Member};
use super::meta::{MetaOptions, Record, Sidecar, id_text, new_array_id};
use super::{ArrayError, SyncKind};

/// What open found, for the log and the sync worker.
pub(crate) struct Assembly {
    pub(crate) intent: Intent,
    /// The resync or rebuild to run at once, if any.
    pub(crate) start: Option<SyncKind>,
}

fn meta_err(msg: String) -> ArrayError {
    ArrayError::Metadata(msg)
}

/// Reads every replica's sidecar and builds the array's write-intent state.
/// `paths` are the replicas in the order given, `size` the array's size.
pub(crate) fn assemble(
    opts: &MetaOptions,
    paths: &[PathBuf],
    size: u64,
) -> Result<Assembly, ArrayError> {
    opts.validate().map_err(ArrayError::BadSpec)?;
    let n = paths.len();
    let cars: Vec<PathBuf> = paths.iter().map(|p| opts.sidecar(p)).collect();
    let mut found: Vec<Option<Record>> = Vec::with_capacity(n);
    let mut corrupt = Vec::new();
    for (i, c) in cars.iter().enumerate() {
        match Record::load(c) {
            Ok(r) => found.push(r),
            Err(e) => {
                corrupt.push(format!("replica {i}: {e}"));
                found.push(None);
            }
        }
    }
    let open_all = || -> Result<Vec<Option<Sidecar>>, ArrayError> {
        cars.iter()
            .map(|c| {
                Sidecar::open(c)
                    .map(Some)
                    .map_err(|e| meta_err(e.to_string()))
            })
            .collect()
    };
    let fresh_book = |id: u128, sidecars| Book {
        array_id: id,
        size,
        generation: 1,
        degraded_since: 0,
        seq: 0,
        members: vec![Member::InSync; n],
        sidecars,
    };

    if opts.force_resync {
        let id = found
            .iter()
            .flatten()
            .next()
            .map_or_else(new_array_id, |r| r.array_id);
        let region = found
            .iter()
            .flatten()
            .next()
            .map_or(opts.region_size, |r| r.region_size);
        let intent = Intent::new(region, fresh_book(id, open_all()?));
        for r in 0..intent.regions {
            intent.dirty.set(r);
        }
        for i in 1..n {
            intent.add_pending(i, 0..intent.regions);
        }
        let mut book = intent.lock_book();
        intent.store(&mut book);
        drop(book);
        tracing::warn!(
            "array {}: --force-resync: metadata rewritten; every region is resynced from replica 0 ({})",
            &id_text(id)[..8],
            paths[0].display()
        );
        return Ok(Assembly {
            intent,
            start: (n > 1).then_some(SyncKind::Resync),
        });
    }
    if !corrupt.is_empty() {
        return Err(meta_err(format!(
            "{}; refusing to start rather than guess which data is good (--force-resync rewrites the metadata and copies every region from replica 0)",
            corrupt.join("; ")
        )));
    }
    if found.iter().all(Option::is_none) {
        let id = new_array_id();
        let intent = Intent::new(opts.region_size, fresh_book(id, open_all()?));
        let mut book = intent.lock_book();
        intent.store(&mut book);
        drop(book);
        tracing::info!(
            "array {}: no metadata on its {n} replica(s) yet: initialised ({} MiB regions, sidecars {})",
            &id_text(id)[..8],
            opts.region_size >> 20,
            cars[0].display()
        );
        return Ok(Assembly {
            intent,
            start: None,
        });
    }
    // The reference: the first replica with metadata.
    let Some(first) = found.iter().flatten().next().cloned() else {
        unreachable!("some replica has metadata");
    };
    let id = first.array_id;
    for (i, r) in found.iter().enumerate() {
        let Some(r) = r else {
            return Err(meta_err(format!(
                "replica {i} ({}) carries no Augur metadata, but the others belong to array {}: it is not a member (start without it and `augur ctl replica add` it, or --force-resync to copy replica 0 onto every other)",
                paths[i].display(),
                &id_text(id)[..8]
            )));
        };
        if r.array_id != id {
            return Err(meta_err(format!(
                "replica {i} ({}) belongs to array {}, not to array {} of the others: refusing to mix arrays",
                paths[i].display(),
                &id_text(r.array_id)[..8],
                &id_text(id)[..8]
            )));
        }
        if r.count as usize != n {
            return Err(meta_err(format!(
                "array {} has {} replicas, {n} given",
                &id_text(id)[..8],
                r.count
            )));
        }
        if r.index as usize != i {
            let order: Vec<String> = {
                let mut v: Vec<(u16, &PathBuf)> = found
                    .iter()
                    .zip(paths)
                    .filter_map(|(r, p)| r.as_ref().map(|r| (r.index, p)))
                    .collect();
                v.sort_by_key(|x| x.0);
                v.into_iter()
                    .map(|(_, p)| p.display().to_string())
                    .collect()
            };
            return Err(meta_err(format!(
                "replica given as {i} ({}) is replica {} of array {}: the order is swapped (give them as {})",
                paths[i].display(),
                r.index,
                &id_text(id)[..8],
                order.join(", ")
            )));
        }
        if r.size != size {
            return Err(meta_err(format!(
                "replica {i} ({}) makes the array {size} bytes, but array {} was created with {} bytes",
                paths[i].display(),
                &id_text(id)[..8],
                r.size
            )));
        }
        if r.region_size != first.region_size {
            return Err(meta_err(format!(
                "replica {i} ({}) has {} byte regions, replica 0 {}: corrupt metadata (--force-resync)",
                paths[i].display(),
                r.region_size,
                first.region_size
            )));
        }
    }
    let recs: Vec<Record> = found.into_iter().flatten().collect();
    let top = recs.iter().map(|r| r.generation).max().unwrap_or(1);
    let newest = recs
        .iter()
        .filter(|r| r.generation == top)
        .max_by_key(|r| r.seq)
        .cloned()
        .unwrap_or_else(|| first.clone());
    // Behind the newest record: stale, unless only by one change that was
    // no departure (the newest record is not degraded), which is a crash
    // between the sidecar writes of one change.
    let stale: Vec<usize> = (0..n)
        .filter(|&i| {
            let g = recs[i].generation;
            g < top && !(g + 1 == top && newest.degraded_since == 0)
        })
        .collect();
    if !stale.is_empty() && !opts.resync_stale {
        let list: Vec<String> = stale
            .iter()
            .map(|&i| {
                format!(
                    "replica {i} ({}) is at generation {}",
                    paths[i].display(),
                    recs[i].generation
                )
            })
            .collect();
        return Err(meta_err(format!(
            "{}, the array at {top}: it failed or was left out and missed writes; refusing to serve its data (--resync-stale brings it up to date in the background)",
            list.join("; ")
        )));
    }
    let mut members = vec![Member::InSync; n];
    for &i in &stale {
        members[i] = Member::Rebuilding;
    }
    for (i, r) in recs.iter().enumerate() {
        if r.state == super::meta::SlotState::Rebuilding {
            members[i] = Member::Rebuilding;
        }
    }
    let Some(source) = (0..n).find(|&i| members[i] == Member::InSync) else {
        return Err(meta_err(format!(
            "array {}: no replica holds the data (every one is stale or mid-rebuild); --force-resync takes replica 0's as the array's",
            &id_text(id)[..8]
        )));
    };
    let intent = Intent::new(
        first.region_size,
        Book {
            array_id: id,
            size,
            generation: top,
            degraded_since: newest.degraded_since,
            seq: recs.iter().map(|r| r.seq).max().unwrap_or(0),
            members: members.clone(),
            sidecars: open_all()?,
        },
    );
    // Dirty anywhere current: the union (a crash may have torn a store
    // between two sidecars).
    for (i, r) in recs.iter().enumerate() {
        if members[i] == Member::InSync {
            intent.dirty.or_words(&r.bitmap);
        }
    }
    let dirty = intent.dirty.ones();
    let mut start = None;
    for i in 0..n {
        if i == source {
            continue;
        }
        if members[i] == Member::InSync {
            intent.add_pending(i, dirty.iter().copied());
            continue;
        }
        // Stale or mid-rebuild: from the bitmap if it covers its absence.
        let r = &recs[i];
        let covered = r.state == super::meta::SlotState::InSync
            && newest.degraded_since != 0
            && r.generation + 1 >= newest.degraded_since;
        if covered {
            intent.add_pending(i, dirty.iter().copied());
            tracing::warn!(
                "replica {i} ({}) is stale (generation {} < {top}): resyncing the {} region(s) the bitmap says it missed",
                paths[i].display(),
                r.generation,
                dirty.len()
            );
        } else {
            intent.add_pending(i, 0..intent.regions);
            tracing::warn!(
                "replica {i} ({}) {}: rebuilding it whole",
                paths[i].display(),
                if r.state == super::meta::SlotState::Rebuilding {
                    "was being rebuilt when the array stopped".to_string()
                } else {
                    format!(
                        "is stale (generation {} < {top}) beyond what the bitmap covers",
                        r.generation
                    )
                }
            );
        }
        start = Some(SyncKind::Rebuild);
    }
    if !dirty.is_empty() && n > 1 {
        tracing::warn!(
            "array {}: not stopped cleanly: {} dirty region(s); until each is resynced its reads go to replica {source} ({}) only",
            &id_text(id)[..8],
            dirty.len(),
            paths[source].display()
        );
        start = start.or(Some(SyncKind::Resync));
    }
    {
        let mut book = intent.lock_book();
        intent.store(&mut book);
    }
    Ok(Assembly { intent, start })
}

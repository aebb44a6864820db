//! The array's life with metadata: the write-intent bitmap and resync after
//! an unclean stop, identity checks at open, replace and rebuild while
//! writes run, scrub finding and repairing a region changed behind the
//! array's back, and the bad input each refuses. In-process on real files
//! (io_uring and a writable temp dir); the kill -9 tests of the real
//! daemons are `tests/crash.rs` (FUSE) and guest scenario 11 (ublk).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use augur::array::MetaOptions;
use augur::{AlignedBuf, Array, ArrayConfig, Completion, Policy, ReplicaSpec, Request};
use augur_feature_store::Op;
use augur_rng::Rng;

const SIZE: u64 = 16 << 20;
const REGION: u64 = 1 << 20;

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(augur::load::default_replica_dir()).unwrap()
}

fn paths(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n).map(|i| dir.join(format!("r{i}"))).collect()
}

fn config(paths: &[PathBuf], meta: MetaOptions) -> ArrayConfig {
    let specs = paths
        .iter()
        .map(|p| ReplicaSpec::parse(p.to_str().unwrap()).unwrap())
        .collect();
    let mut cfg = ArrayConfig::new(specs);
    cfg.create_size = Some(SIZE);
    cfg.meta = Some(meta);
    cfg.sync_rate = 0;
    cfg
}

fn meta() -> MetaOptions {
    MetaOptions {
        region_size: REGION,
        ..MetaOptions::default()
    }
}

fn open(paths: &[PathBuf]) -> Result<Array, augur::ArrayError> {
    open_with(paths, meta())
}

fn open_with(paths: &[PathBuf], m: MetaOptions) -> Result<Array, augur::ArrayError> {
    Array::open(config(paths, m), Policy::from_name("random", None).unwrap())
}

/// Runs one request to completion on a fresh queue.
fn io(a: &Array, op: Op, offset: u64, data: Option<Vec<u8>>, len: u32) -> Completion {
    io_on(&mut a.queue(0, 64).unwrap(), op, offset, data, len)
}

/// Runs one request to completion on `q`.
fn io_on(q: &mut augur::Queue, op: Op, offset: u64, data: Option<Vec<u8>>, len: u32) -> Completion {
    let buf = match (&op, data) {
        (Op::Write, Some(d)) => {
            let mut b = AlignedBuf::new(d.len());
            b.copy_from_slice(&d);
            Some(b)
        }
        (Op::Read, _) => Some(AlignedBuf::new(len as usize)),
        _ => None,
    };
    q.submit(Request {
        op,
        offset,
        len,
        buf,
        user: 1,
    });
    let mut out = Vec::new();
    while out.is_empty() {
        q.poll(&mut out, true, Some(100_000_000)).unwrap();
    }
    out.pop().unwrap()
}

/// Reads `offset` `n` times on one queue; how many each replica served.
fn reads_served(a: &Array, offset: u64, n: usize) -> [u32; 3] {
    let mut q = a.queue(0, 64).unwrap();
    let mut served = [0u32; 3];
    let mut out = Vec::new();
    for k in 0..n {
        q.submit(Request {
            op: Op::Read,
            offset,
            len: 4096,
            buf: Some(AlignedBuf::new(4096)),
            user: k as u64,
        });
        out.clear();
        while out.is_empty() {
            q.poll(&mut out, true, Some(100_000_000)).unwrap();
        }
        assert_eq!(out[0].result, 0);
        served[out[0].replica.unwrap() as usize] += 1;
    }
    served
}

fn write(a: &Array, offset: u64, data: &[u8]) {
    let c = io(a, Op::Write, offset, Some(data.to_vec()), data.len() as u32);
    assert_eq!(c.result, 0, "write at {offset}");
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| r.next_u64() as u8).collect()
}

fn wait_sync(a: &Array) {
    let t = Instant::now();
    while a.sync_status().running || a.replica_status().iter().any(|r| r.pending_regions > 0) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "sync did not finish: {:?}",
            a.sync_status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn same_files(ps: &[PathBuf]) -> bool {
    let first = std::fs::read(&ps[0]).unwrap();
    ps[1..].iter().all(|p| std::fs::read(p).unwrap() == first)
}

fn sidecar(p: &Path) -> PathBuf {
    meta().sidecar(p)
}

fn dirty_on_disk(p: &Path) -> u32 {
    augur::array::meta::Record::load(&sidecar(p))
        .unwrap()
        .unwrap()
        .bitmap
        .iter()
        .map(|w| w.count_ones())
        .sum()
}

#[test]
fn bitmap_is_durable_before_the_write_and_clean_after_a_clean_stop() {
    let d = scratch();
    let ps = paths(d.path(), 2);
    let a = open(&ps).unwrap();
    assert_eq!(dirty_on_disk(&ps[0]), 0);
    write(&a, 3 * REGION - 4096, &pattern(1, 8192)); // regions 2 and 3
    // Durable on both sidecars as soon as the write is acknowledged.
    assert_eq!(dirty_on_disk(&ps[0]), 2);
    assert_eq!(dirty_on_disk(&ps[1]), 2);
    let b = a.bitmap_status().unwrap();
    assert_eq!((b.dirty, b.regions, b.marked_total), (2, 16, 2));
    drop(a);
    assert_eq!(dirty_on_disk(&ps[0]), 0, "a clean stop clears the bitmap");
    assert_eq!(dirty_on_disk(&ps[1]), 0);
}

#[test]
fn idle_regions_are_cleared_lazily_while_running() {
    let d = scratch();
    let ps = paths(d.path(), 2);
    let a = open(&ps).unwrap();
    write(&a, 0, &pattern(2, 4096));
    assert_eq!(a.bitmap_status().unwrap().dirty, 1);
    let t = Instant::now();
    while a.bitmap_status().unwrap().dirty > 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "never cleared");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(dirty_on_disk(&ps[1]), 0);
}

#[test]
fn unclean_stop_resyncs_dirty_regions_from_one_replica_and_pins_their_reads() {
    let d = scratch();
    let ps = paths(d.path(), 3);
    let a = open(&ps).unwrap();
    for r in [1u64, 5, 9] {
        write(&a, r * REGION + 8192, &pattern(r, 16384));
    }
    // An unclean stop: the array vanishes without its clean close.
    std::mem::forget(a);
    // What a crash mid-write can leave: the replicas differ in a dirty region.
    let torn = pattern(99, 4096);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ps[2])
        .unwrap()
        .write_all_at(&torn, 5 * REGION + 8192)
        .unwrap();
    assert!(!same_files(&ps));
    // Reopen with a slow resync, so its pinning of reads can be watched.
    let mut cfg = config(&ps, meta());
    cfg.sync_rate = 64 << 10; // one 1 MiB region per 16 s
    let a = Array::open(cfg, Policy::from_name("random", None).unwrap()).unwrap();
    let t = Instant::now();
    while a.sync_status().done_regions == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{:?}",
            a.sync_status()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = a.sync_status();
    assert!(st.running && st.total_regions == 3, "{st:?}");
    // Region 9 is not resynced yet: every read of it goes to replica 0,
    // whatever the random policy would pick; other regions spread.
    let served = reads_served(&a, 9 * REGION + 8192, 60);
    assert_eq!(
        served,
        [60, 0, 0],
        "reads of a dirty region go to replica 0 only"
    );
    let spread = reads_served(&a, 12 * REGION, 60);
    assert!(
        spread.iter().all(|&n| n > 0),
        "clean regions keep their routing: {spread:?}"
    );
    assert!(a.stats().pinned_reads >= 60);
    a.set_sync_rate(0);
    wait_sync(&a);
    assert_eq!(a.sync_status().synced_regions_total, 3);
    drop(a);
    assert!(same_files(&ps), "replicas identical after the resync");
    let back = std::fs::read(&ps[2]).unwrap();
    let off = (5 * REGION + 8192) as usize;
    assert_eq!(
        &back[off..off + 16384],
        &pattern(5, 16384)[..],
        "replica 0's data won"
    );
}

#[test]
fn writes_during_a_resync_are_never_lost() {
    let d = scratch();
    let ps = paths(d.path(), 2);
    let a = open(&ps).unwrap();
    for r in 0..16 {
        write(&a, r * REGION, &pattern(r, 4096));
    }
    std::mem::forget(a);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ps[1])
        .unwrap()
        .write_all_at(&vec![0xEE; REGION as usize], 0)
        .unwrap();
    let mut cfg = config(&ps, meta());
    cfg.sync_rate = 8 << 20;
    let a = Array::open(cfg, Policy::from_name("random", None).unwrap()).unwrap();
    // Random writes across every region while the resync copies them.
    let mut rng = Rng::new(5);
    let mut shadow = std::fs::read(&ps[0]).unwrap();
    let mut n = 0;
    while a.sync_status().running || n < 200 {
        let off = rng.below(SIZE / 4096) * 4096;
        let data = pattern(1000 + n, 4096);
        write(&a, off, &data);
        shadow[off as usize..off as usize + 4096].copy_from_slice(&data);
        n += 1;
        assert!(n < 100_000, "resync never ended");
    }
    wait_sync(&a);
    drop(a);
    assert!(same_files(&ps));
    assert!(std::fs::read(&ps[1]).unwrap() == shadow, "a write was lost");
}

#[test]
fn open_refuses_swapped_foreign_stale_and_corrupt_replicas() {
    let d = scratch();
    let ps = paths(d.path(), 2);
    drop(open(&ps).unwrap());
    // Swapped order.
    let e = open(&[ps[1].clone(), ps[0].clone()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("order is swapped"), "{e}");
    // A replica of another array.
    let other = paths(&d.path().join("o"), 2);
    std::fs::create_dir(d.path().join("o")).unwrap();
    drop(open(&other).unwrap());
    let e = open(&[ps[0].clone(), other[1].clone()])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("belongs to array") && e.contains("refusing to mix"),
        "{e}"
    );
    // A replica with no metadata beside members.
    let bare = d.path().join("bare");
    std::fs::write(&bare, vec![0u8; SIZE as usize]).unwrap();
    let e = open(&[ps[0].clone(), bare.clone()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("carries no Augur metadata"), "{e}");
    // Stale: replica 1 fails, the array goes on; next start refuses it.
    let a = open(&ps).unwrap();
    a.fail_replica(1).unwrap();
    write(&a, 0, &pattern(7, 4096));
    drop(a);
    let e = open(&ps).err().unwrap().to_string();
    assert!(
        e.contains("replica 1") && e.contains("generation") && e.contains("--resync-stale"),
        "{e}"
    );
    // ... unless asked to bring it back: from the bitmap (one region).
    let a = open_with(
        &ps,
        MetaOptions {
            resync_stale: true,
            ..meta()
        },
    )
    .unwrap();
    wait_sync(&a);
    assert_eq!(
        a.sync_status().synced_regions_total,
        1,
        "the bitmap covered its absence"
    );
    drop(a);
    assert!(same_files(&ps));
    drop(open(&ps).unwrap());
    // Corrupt: both copies of a sidecar damaged.
    let car = sidecar(&ps[1]);
    let mut bytes = std::fs::read(&car).unwrap();
    for b in bytes.iter_mut().skip(20) {
        *b ^= 0x5A;
    }
    std::fs::write(&car, &bytes).unwrap();
    let e = open(&ps).err().unwrap().to_string();
    assert!(e.contains("corrupt") && e.contains("--force-resync"), "{e}");
    // --force-resync rewrites it and copies replica 0 everywhere.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ps[1])
        .unwrap()
        .write_all_at(&[1, 2, 3, 4], 4096)
        .unwrap();
    let a = open_with(
        &ps,
        MetaOptions {
            force_resync: true,
            ..meta()
        },
    )
    .unwrap();
    wait_sync(&a);
    drop(a);
    assert!(same_files(&ps));
    drop(open(&ps).unwrap());
}

#[test]
fn replace_rebuilds_online_while_writes_run_and_bad_replacements_change_nothing() {
    let d = scratch();
    let ps = paths(d.path(), 2);
    let a = open(&ps).unwrap();
    let mut shadow = vec![0u8; SIZE as usize];
    // Every byte written, so a read from a region not rebuilt yet (zeroes) shows.
    for r in 0..16u64 {
        let data = pattern(r, REGION as usize);
        write(&a, r * REGION, &data);
        shadow[(r * REGION) as usize..((r + 1) * REGION) as usize].copy_from_slice(&data);
    }
    let small = d.path().join("small");
    std::fs::write(&small, vec![0u8; 4096]).unwrap();
    let dev = d.path().join("served-as");
    std::fs::write(&dev, b"x").unwrap();
    a.set_device_path(&dev);
    for (spec, want) in [
        (small.to_str().unwrap(), "smaller than the array"),
        (ps[0].to_str().unwrap(), "already replica 0"),
        (dev.to_str().unwrap(), "the device this array serves"),
    ] {
        let e = a.replace_replica(1, spec).unwrap_err();
        assert!(e.contains(want), "{spec}: {e}");
        assert_eq!(a.live_count(), 2, "nothing changed");
    }
    let e = a
        .add_replica(d.path().join("n").to_str().unwrap())
        .unwrap_err();
    assert!(e.contains("no slot"), "{e}");
    assert!(a.fail_replica(5).unwrap_err().contains("no replica 5"));
    // Replace replica 1 with a new file, slowly, writing all along.
    a.set_sync_rate(4 << 20);
    let new = d.path().join("new");
    let c = a.replace_replica(1, new.to_str().unwrap()).unwrap();
    assert_eq!(c.regions_to_copy, 16);
    let mut rng = Rng::new(11);
    let mut k = 0u64;
    let mut rq = a.queue(1, 64).unwrap();
    let mut by = std::collections::HashMap::new();
    while a.sync_status().running || k < 100 {
        let off = rng.below(SIZE / 4096) * 4096;
        let data = pattern(5000 + k, 4096);
        write(&a, off, &data);
        shadow[off as usize..off as usize + 4096].copy_from_slice(&data);
        // Reads anywhere (on one queue, so the random policy spreads them),
        // while regions of the new replica are missing: never answered
        // from a region it does not hold yet.
        let roff = rng.below(SIZE / 4096) * 4096;
        let c = io_on(&mut rq, Op::Read, roff, None, 4096);
        *by.entry(c.replica).or_insert(0) += 1;
        assert_eq!(c.result, 0);
        assert!(
            c.buf.as_deref() == Some(&shadow[roff as usize..roff as usize + 4096]),
            "read at {roff} from replica {:?} returned stale data",
            c.replica
        );
        k += 1;
        assert!(k < 200_000, "rebuild never ended");
    }
    wait_sync(&a);
    drop(rq);
    assert!(
        by.len() == 2,
        "reads went to both replicas during the rebuild: {by:?}"
    );
    assert_eq!(a.replica_status()[1].state, "in-sync");
    // The last live replica cannot be failed or removed.
    a.fail_replica(0).unwrap();
    assert!(a.fail_replica(1).unwrap_err().contains("last live replica"));
    assert!(
        a.remove_replica(1)
            .unwrap_err()
            .contains("last live replica")
    );
    // The failed one comes back through add, from the bitmap.
    let back = a.add_replica(ps[0].to_str().unwrap()).unwrap();
    assert!(back.what.contains("is back"), "{}", back.what);
    wait_sync(&a);
    drop(a);
    assert_eq!(
        std::fs::read(&new).unwrap(),
        shadow,
        "the rebuilt replica holds every write"
    );
    assert_eq!(std::fs::read(&ps[0]).unwrap(), shadow);
    // The new member is the array's now: it opens with it.
    drop(open(&[ps[0].clone(), new.clone()]).unwrap());
    assert!(
        open(&ps).is_err(),
        "the replaced file is no member any more"
    );
}

#[test]
fn scrub_finds_a_region_changed_behind_the_arrays_back_and_repairs_it() {
    let d = scratch();
    let ps = paths(d.path(), 3);
    let a = open(&ps).unwrap();
    for r in 0..16u64 {
        write(&a, r * REGION, &pattern(r, 8192));
    }
    a.scrub(false).unwrap();
    wait_sync(&a);
    let rep = a.sync_status().last_scrub.unwrap();
    assert_eq!((rep.regions, rep.mismatches), (16, 0));
    // Flip one region's content on one replica without the array knowing.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ps[1])
        .unwrap()
        .write_all_at(&[0xA5; 512], 7 * REGION + 100 * 512)
        .unwrap();
    a.scrub(false).unwrap();
    assert!(a.scrub(false).unwrap_err().contains("already running"));
    wait_sync(&a);
    let rep = a.sync_status().last_scrub.unwrap();
    assert_eq!(rep.mismatches, 1, "{rep:?}");
    assert_eq!(rep.offsets, vec![7 * REGION]);
    assert_eq!(rep.repaired, 0);
    assert!(!same_files(&ps));
    a.scrub(true).unwrap();
    wait_sync(&a);
    let rep = a.sync_status().last_scrub.unwrap();
    assert_eq!((rep.mismatches, rep.repaired), (1, 1));
    assert_eq!(rep.repair_source, "majority");
    drop(a);
    assert!(same_files(&ps), "repaired from the two that agreed");
    let back = std::fs::read(&ps[1]).unwrap();
    assert_eq!(
        back[(7 * REGION) as usize..(7 * REGION) as usize + 8192],
        pattern(7, 8192)[..]
    );
}

#[test]
fn a_rebuild_cut_short_by_a_stop_starts_again_at_the_next_open() {
    let d = scratch();
    let ps = paths(d.path(), 2);
    let a = open(&ps).unwrap();
    for r in 0..16u64 {
        write(&a, r * REGION, &pattern(r, REGION as usize));
    }
    a.set_sync_rate(256 << 10); // four seconds a region
    a.replace_replica(1, ps[1].with_extension("new").to_str().unwrap())
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    a.close();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "close waited for the rebuild"
    );
    drop(a);
    let members = [ps[0].clone(), ps[1].with_extension("new")];
    let a = open(&members).unwrap();
    let st = a.replica_status();
    assert_eq!(
        (st[1].state, st[1].pending_regions),
        ("syncing", 16),
        "rebuilt whole again"
    );
    wait_sync(&a);
    drop(a);
    assert!(same_files(&members));
}

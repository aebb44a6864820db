//! A two-replica array over plain files: write a few blocks, read them back
//! through the router, and show that both replicas hold the data.
//!
//! `cargo run -p augur --example mirror [DIR]` (default: a temporary dir).

use augur::{AlignedBuf, Array, ArrayConfig, Completion, Policy, Queue, ReplicaSpec, Request};
use augur_feature_store::Op;

/// Submits one request and waits for its completion.
fn run(q: &mut Queue, req: Request) -> std::io::Result<Completion> {
    let user = req.user;
    q.submit(req);
    let mut out = Vec::new();
    loop {
        q.poll(&mut out, true, None)?;
        if let Some(i) = out.iter().position(|c| c.user == user) {
            return Ok(out.swap_remove(i));
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let paths = [dir.join("a.img"), dir.join("b.img")];
    let specs = paths
        .iter()
        .map(|p| ReplicaSpec::parse(&p.display().to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = ArrayConfig::new(specs);
    cfg.create_size = Some(16 << 20);
    let array = Array::open(cfg, Policy::from_name("primary", None)?)?;
    let mut q = array.queue(0, 64)?;

    // Eight 4 KiB blocks, each filled with its own byte, one per 128 KiB stripe
    // so the reads alternate between the replicas.
    for k in 0..8u64 {
        let mut data = AlignedBuf::new(4096);
        data.fill(k as u8 + 1);
        let c = run(
            &mut q,
            Request {
                op: Op::Write,
                offset: k * 128 * 1024,
                len: 4096,
                buf: Some(data),
                user: k,
            },
        )?;
        assert_eq!(c.result, 0, "write {k} failed");
    }
    run(
        &mut q,
        Request {
            op: Op::Flush,
            offset: 0,
            len: 0,
            buf: None,
            user: 100,
        },
    )?;
    for k in 0..8u64 {
        let c = run(
            &mut q,
            Request {
                op: Op::Read,
                offset: k * 128 * 1024,
                len: 4096,
                buf: Some(AlignedBuf::new(4096)),
                user: 200 + k,
            },
        )?;
        let buf = c.buf.ok_or("read returned no buffer")?;
        assert_eq!(c.result, 0, "read {k} failed");
        assert!(
            buf.iter().all(|&b| b == k as u8 + 1),
            "read {k}: wrong data"
        );
        println!("block {k}: served by replica {}", c.replica.unwrap_or(0));
    }
    drop(q);
    for p in &paths {
        let bytes = std::fs::read(p)?;
        let ok = (0..8usize).all(|k| bytes[k * 128 * 1024] == k as u8 + 1);
        println!(
            "{}: {}",
            p.display(),
            if ok {
                "holds every block"
            } else {
                "MISSING DATA"
            }
        );
        assert!(ok);
    }
    let s = array.stats();
    println!(
        "{} writes, {} reads, {} flushes",
        s.writes, s.reads, s.flushes
    );
    Ok(())
}

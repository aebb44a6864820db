//! Inference benchmarks: the integer fast path against the plain scalar
//! reference, single predictions and batches, for the LinnOS base model
//! (31-256-2), the deeper variants (+1, +2 hidden layers of 256) and the
//! shipped linnos-ext shape (39-256-2).
//!
//! `cargo bench -p augur-predictor --bench inference -- --warm-up-time 1 --measurement-time 3`
//!
//! With `AUGUR_BENCH_CLOCK=thread-cpu` the times are the benchmark thread's
//! own CPU time (`CLOCK_THREAD_CPUTIME_ID`) instead of wall time:
//! on a shared, overcommitted machine this leaves out the time the thread
//! spent descheduled (cache interference from neighbours stays in).

use std::hint::black_box;

use augur_feature_store::{Completed, HISTORY_LEN, HistorySnapshot};
use augur_predictor::infer::reference;
use augur_predictor::{FeatureSet, Kernel, Model, ReadInfo, Scratch};
use augur_rng::Rng;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput};

/// Thread CPU time in ns (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Criterion measurement: CPU time of the benchmark thread.
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, as for wall time.
        WallTime.formatter()
    }
}

/// Plausible replica histories: moderate queue depths, latencies from fast
/// flash reads to GC stalls.
fn inputs(n: usize, seed: u64) -> Vec<(HistorySnapshot, ReadInfo)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let mut s = HistorySnapshot {
                pending_pages: rng.below(300) as u32,
                pending_ios: rng.below(64) as u32,
                len: HISTORY_LEN as u8,
                oldest_pending_us: rng.below(2_000) as u32,
                read_max_us: 100 + rng.below(4_000) as u32,
                ..Default::default()
            };
            for c in s.recent.iter_mut() {
                let spread = if rng.below(10) == 0 { 20_000 } else { 500 };
                *c = Completed {
                    latency_us: 50 + rng.below(spread) as u32,
                    pending_pages_at_issue: rng.below(300) as u32,
                    pending_ios_at_issue: rng.below(64) as u32,
                    size_bytes: 4096 << rng.below(5),
                };
            }
            (s, ReadInfo { size_bytes: 4096 })
        })
        .collect()
}

fn encoded(m: &Model, ins: &[(HistorySnapshot, ReadInfo)]) -> Vec<i32> {
    let n = m.feature_set().n_inputs();
    let mut xs = Vec::with_capacity(ins.len() * n);
    for (h, r) in ins {
        let mut x = [0i32; augur_predictor::features::MAX_INPUTS];
        m.encode_int(h, *r, &mut x);
        xs.extend_from_slice(&x[..n]);
    }
    xs
}

fn bench<M: Measurement>(c: &mut Criterion<M>) {
    let ins = inputs(1024, 1);
    let variants = [
        ("base", FeatureSet::LinnOs, vec![256]),
        ("+1", FeatureSet::LinnOs, vec![256, 256]),
        ("+2", FeatureSet::LinnOs, vec![256, 256, 256]),
        // The shipped model's shape: LinnOS plus the two extended inputs.
        ("ext", FeatureSet::LinnOsExt, vec![256]),
    ];
    for (name, fs, hidden) in variants {
        let m = Model::random(fs, &hidden, 2, 7).expect("random model");
        let xs = encoded(&m, &ins);
        let n = m.feature_set().n_inputs();
        eprintln!(
            "model {name} {} kernel {}",
            m.shape_string(),
            m.int_kernel_name()
        );

        let mut g = c.benchmark_group(format!("single/{name}"));
        g.throughput(Throughput::Elements(1));
        let mut i = 0usize;
        g.bench_function("int", |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                let (h, r) = &ins[i];
                black_box(m.score_int(black_box(h), *r))
            })
        });
        let mut s = Scratch::for_model(&m);
        g.bench_function("int_portable_encoded", |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(m.score_int_encoded(
                    black_box(&xs[i * n..(i + 1) * n]),
                    &mut s,
                    Kernel::Portable,
                ))
            })
        });
        g.bench_function("f32", |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                let (h, r) = &ins[i];
                black_box(m.score_f32(black_box(h), *r))
            })
        });
        g.bench_function("reference", |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(reference::score_int(&m, black_box(&xs[i * n..(i + 1) * n])))
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("batch/{name}"));
        let mut out = vec![0i64; 1024];
        for bs in [64usize, 1024] {
            g.throughput(Throughput::Elements(bs as u64));
            g.bench_with_input(BenchmarkId::new("int", bs), &bs, |b, &bs| {
                b.iter(|| {
                    m.score_int_batch(black_box(&ins[..bs]), &mut out[..bs]);
                    black_box(out[0])
                })
            });
            g.bench_with_input(BenchmarkId::new("int_encoded", bs), &bs, |b, &bs| {
                b.iter(|| {
                    m.score_int_batch_encoded(
                        black_box(&xs[..bs * n]),
                        &mut out[..bs],
                        &mut s,
                        Kernel::Auto,
                    );
                    black_box(out[0])
                })
            });
            if bs == 64 {
                g.bench_with_input(BenchmarkId::new("reference", bs), &bs, |b, &bs| {
                    b.iter(|| {
                        for (x, o) in xs[..bs * n].chunks_exact(n).zip(out.iter_mut()) {
                            *o = reference::score_int(&m, black_box(x));
                        }
                        black_box(out[0])
                    })
                });
            }
        }
        g.finish();
    }
}

fn main() {
    let cpu =
        thread_cpu_ns() > 0 && std::env::var("AUGUR_BENCH_CLOCK").as_deref() == Ok("thread-cpu");
    if cpu {
        eprintln!("clock: thread CPU time");
        let mut c = Criterion::default()
            .with_measurement(ThreadCpu)
            .configure_from_args();
        bench(&mut c);
        c.final_summary();
    } else {
        eprintln!("clock: wall time");
        let mut c = Criterion::default().configure_from_args();
        bench(&mut c);
        c.final_summary();
    }
}

//! `--predict-on` on a real wgpu adapter (lavapipe in CI): batches placed on
//! the GPU thread, the deadline fallback, a model swap reaching the GPU,
//! batches gathered into one device call, and the contention back-off.
//! Needs a Vulkan driver: with `AUGUR_REQUIRE_GPU=1` (as `scripts/test-all`
//! sets it) a missing adapter fails; without it each test is skipped with
//! one line.
#![cfg(feature = "wgpu")]

use std::sync::Arc;
use std::time::Duration;

use augur_feature_store::HistorySnapshot;
use augur_gpu_batcher::placement::CurvePoint;
use augur_gpu_batcher::{
    BUCKETS, CostCurve, DECISION_MARGIN, Gpu, Offload, OffloadOptions, PredictOn,
};
use augur_predictor::{
    FeatureSet, Model, ModelPredictor, PredictInput, ReadInfo, ScoredOn, SlowPredictor,
    score_waiting,
};

fn have_gpu() -> bool {
    match Gpu::open() {
        Ok(_) => true,
        Err(e) if std::env::var_os("AUGUR_REQUIRE_GPU").is_none() => {
            eprintln!("skipped: {e} (install mesa-vulkan-drivers libvulkan1)");
            false
        }
        Err(e) => panic!("AUGUR_REQUIRE_GPU is set and there is no wgpu adapter: {e}"),
    }
}

fn inputs(n: usize, seed: u32) -> Vec<PredictInput> {
    (0..n as u32)
        .map(|i| {
            let k = i.wrapping_mul(2_654_435_761).wrapping_add(seed);
            PredictInput {
                replica: (i % 3) as u16,
                snapshot: HistorySnapshot {
                    pending_ios: k % 60,
                    pending_pages: k % 250,
                    oldest_pending_us: k % 3000,
                    read_max_us: 50 + k % 9000,
                    ..HistorySnapshot::default()
                },
                read: ReadInfo { size_bytes: 4096 },
            }
        })
        .collect()
}

fn opts(mode: PredictOn) -> OffloadOptions {
    OffloadOptions {
        mode,
        deadline: Some(Duration::from_secs(30)),
        ..OffloadOptions::default()
    }
}

/// Scores `ins` up to `tries` times, `pause` apart, until a batch runs on
/// the GPU; false if none did.
fn until_on_gpu(
    p: &dyn SlowPredictor,
    ins: &[PredictInput],
    out: &mut [i64],
    tries: usize,
    pause: Duration,
) -> bool {
    for _ in 0..tries {
        if matches!(score_waiting(p, ins, out), ScoredOn::Gpu { .. }) {
            return true;
        }
        std::thread::sleep(pause);
    }
    false
}

/// GPU decisions agree with the model's f32 path outside the margin.
fn check_decisions(m: &Model, ins: &[PredictInput], got: &[i64]) {
    for (i, &g) in ins.iter().zip(got) {
        let f = m.score_f32(&i.snapshot, i.read);
        if f.abs() >= DECISION_MARGIN {
            assert_eq!(g > 0, f > 0.0, "GPU score {g} against f32 {f}");
        }
    }
}

#[test]
fn gpu_mode_scores_on_the_gpu_and_a_swapped_model_reaches_it() {
    if !have_gpu() {
        return;
    }
    let a = Model::random(FeatureSet::LinnOs, &[256], 2, 11).unwrap();
    let off = Offload::start(opts(PredictOn::Gpu), &a).unwrap();
    assert!(
        off.note().contains("every batch on the GPU"),
        "{}",
        off.note()
    );
    let pa = off.predictor(Arc::new(ModelPredictor::new(a.clone(), "a")));
    for &n in &[1, 3, 64, 300] {
        let ins = inputs(n, n as u32);
        let mut out = vec![0i64; n];
        let on = score_waiting(pa.as_ref(), &ins, &mut out);
        assert!(matches!(on, ScoredOn::Gpu { .. }), "batch of {n}: {on:?}");
        check_decisions(&a, &ins, &out);
    }
    // A swap to another shape: its batches run on the CPU until it is up,
    // then on the GPU, with its own weights.
    let b = Model::random(FeatureSet::LinnOs, &[256, 256], 2, 12).unwrap();
    let pb = off.predictor(Arc::new(ModelPredictor::new(b.clone(), "b")));
    let ins = inputs(32, 5);
    let mut out = vec![0i64; 32];
    let on_gpu = until_on_gpu(pb.as_ref(), &ins, &mut out, 600, Duration::from_millis(50));
    assert!(
        on_gpu,
        "the swapped model never reached the GPU: {:?}",
        off.status()
    );
    check_decisions(&b, &ins, &out);
    let s = off.status();
    assert!(
        s.crossovers.iter().any(|(sh, _)| sh == "31-256-256-2"),
        "{s:?}"
    );
    assert_eq!(s.failures, 0, "{s:?}");
}

#[test]
fn a_gpu_past_its_deadline_leaves_the_batch_to_the_cpu() {
    if !have_gpu() {
        return;
    }
    let m = Model::random(FeatureSet::LinnOs, &[256], 2, 21).unwrap();
    let off = Offload::start(
        OffloadOptions {
            mode: PredictOn::Gpu,
            // Far above a round trip even of a debug build on lavapipe.
            deadline: Some(Duration::from_millis(300)),
            ..OffloadOptions::default()
        },
        &m,
    )
    .unwrap();
    let cpu = Arc::new(ModelPredictor::new(m, "m"));
    let p = off.predictor(cpu.clone());
    off.set_extra_delay(Duration::from_millis(1500));
    let ins = inputs(16, 1);
    let mut got = vec![0i64; 16];
    let mut exact = vec![0i64; 16];
    let on = score_waiting(p.as_ref(), &ins, &mut got);
    assert!(matches!(on, ScoredOn::GpuMissed { .. }), "{on:?}");
    cpu.score_batch(&ins, &mut exact);
    assert_eq!(
        got, exact,
        "after a missed deadline the CPU integer path decides"
    );
    // Quick again: back on the GPU (the late answer above was dropped).
    off.set_extra_delay(Duration::ZERO);
    std::thread::sleep(Duration::from_millis(2000));
    let back = until_on_gpu(p.as_ref(), &ins, &mut got, 50, Duration::ZERO);
    assert!(back, "{:?}", off.status());
}

#[test]
fn batches_waiting_together_share_one_device_call() {
    if !have_gpu() {
        return;
    }
    let m = Model::random(FeatureSet::LinnOs, &[256], 2, 31).unwrap();
    let off = Offload::start(opts(PredictOn::Gpu), &m).unwrap();
    let p = off.predictor(Arc::new(ModelPredictor::new(m.clone(), "m")));
    // Each device call takes 20 ms longer: while one runs, the other
    // threads' batches queue up behind it and go together.
    off.set_extra_delay(Duration::from_millis(20));
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let p = p.clone();
            let m = m.clone();
            std::thread::spawn(move || {
                for k in 0..5 {
                    let ins = inputs(8, 100 * t + k);
                    let mut out = vec![0i64; 8];
                    let on = score_waiting(p.as_ref(), &ins, &mut out);
                    assert!(matches!(on, ScoredOn::Gpu { .. }), "{on:?}");
                    check_decisions(&m, &ins, &out);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = off.status();
    assert_eq!(s.gpu_jobs, 20, "{s:?}");
    assert!(s.merged_calls >= 1 && s.gpu_calls < 20, "{s:?}");
}

#[test]
fn auto_with_contention_backs_off_from_a_slow_gpu_and_comes_back() {
    if !have_gpu() {
        return;
    }
    let m = Model::random(FeatureSet::LinnOs, &[256], 2, 41).unwrap();
    let mut o = opts(PredictOn::AutoContention);
    o.contention.probe_after_ns = 200_000_000;
    let off = Offload::start(o, &m).unwrap();
    // Pretend the GPU pays from batch 1 with a 50 ms p99 (lavapipe does
    // not pay anywhere, so the real curve would keep every batch on the
    // CPU): round trips well above that are contention.
    off.set_curve(CostCurve {
        shape: m.shape_string(),
        points: BUCKETS
            .iter()
            .map(|&b| CurvePoint {
                bucket: b,
                cpu_ns: u64::MAX / 4,
                gpu_ns: 1,
                gpu_p99_ns: 50_000_000,
            })
            .collect(),
    });
    let p = off.predictor(Arc::new(ModelPredictor::new(m, "m")));
    let ins = inputs(4, 9);
    let mut out = vec![0i64; 4];
    assert!(matches!(
        score_waiting(p.as_ref(), &ins, &mut out),
        ScoredOn::Gpu { .. }
    ));
    // Another tenant: every round trip 300 ms, six times the baseline.
    off.set_extra_delay(Duration::from_millis(300));
    let mut cpu_after = 0;
    for _ in 0..8 {
        if score_waiting(p.as_ref(), &ins, &mut out) == ScoredOn::Cpu {
            cpu_after += 1;
        }
    }
    assert!(off.status().backoffs >= 1, "{:?}", off.status());
    assert!(
        cpu_after >= 1,
        "backed off but batches still went to the GPU"
    );
    // The tenant leaves; after the back-off a probe finds the GPU quick.
    off.set_extra_delay(Duration::ZERO);
    std::thread::sleep(Duration::from_millis(400));
    let gpu_again = until_on_gpu(p.as_ref(), &ins, &mut out, 20, Duration::from_millis(50));
    assert!(gpu_again, "{:?}", off.status());
}

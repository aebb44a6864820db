//! The wgpu path against the CPU f32 path, on whatever adapter there is
//! (lavapipe in CI: `mesa-vulkan-drivers`, which `scripts/test-all`
//! installs). Needs a Vulkan driver: with `AUGUR_REQUIRE_GPU=1` (as
//! `scripts/test-all` sets it) a missing adapter fails the tests; without
//! it they are skipped with one line each.
#![cfg(feature = "wgpu")]

use augur_gpu_batcher::{BUCKETS, Gpu, GpuError, GpuKernel, GpuModel, agreement, bucket_for};
use augur_predictor::{FeatureSet, Model};

fn gpu() -> Option<Gpu> {
    match Gpu::open() {
        Ok(g) => Some(g),
        Err(e) if std::env::var_os("AUGUR_REQUIRE_GPU").is_none() => {
            eprintln!("skipped: {e} (install mesa-vulkan-drivers libvulkan1)");
            None
        }
        Err(e) => panic!("AUGUR_REQUIRE_GPU is set and there is no wgpu adapter: {e}"),
    }
}

/// Every architecture the predictor ships: (name, feature set, hidden, outputs).
const SHAPES: [(&str, FeatureSet, &[usize], usize); 6] = [
    ("base", FeatureSet::LinnOs, &[256], 2),
    ("+1", FeatureSet::LinnOs, &[256, 256], 2),
    ("+2", FeatureSet::LinnOs, &[256, 256, 256], 2),
    ("linnos-ext", FeatureSet::LinnOsExt, &[256], 2),
    ("linnos-write", FeatureSet::LinnOsWrite, &[256], 2),
    ("heimdall", FeatureSet::Heimdall, &[128, 16], 1),
];

/// `n` encoded inputs as the encoders write them: decimal digits 0-9 for
/// the LinnOS sets, MinMax-scaled values in [0, 1] for Heimdall; the first
/// read all zeros and the second all maxima.
fn inputs(fs: FeatureSet, n: usize, seed: u64) -> Vec<f32> {
    let w = fs.n_inputs();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let max = if fs == FeatureSet::Heimdall { 1.0 } else { 9.0 };
    (0..n * w)
        .map(|k| match k / w {
            0 => 0.0,
            1 => max,
            _ => {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                if fs == FeatureSet::Heimdall {
                    (s >> 40) as f32 / (1u64 << 24) as f32
                } else {
                    (s % 10) as f32
                }
            }
        })
        .collect()
}

#[test]
fn every_shape_and_bucket_decides_as_the_cpu_f32_path_on_both_kernels() {
    let Some(g) = gpu() else { return };
    for (i, (name, fs, hidden, outputs)) in SHAPES.iter().enumerate() {
        let m = Model::random(*fs, hidden, *outputs, 40 + i as u64).unwrap();
        let gm = GpuModel::upload(&g, &m);
        for kernel in GpuKernel::ALL {
            gm.warm_with(kernel).unwrap();
            let mut total = augur_gpu_batcher::Agreement::default();
            for &n in BUCKETS.iter().chain(&[3, 100, 1000]) {
                let xs = inputs(*fs, n, n as u64);
                let scores = gm.scores_with(kernel, &xs, n).unwrap();
                assert_eq!(scores.len(), n);
                let a = agreement(&m, &xs, &scores);
                assert!(
                    a.within_margin(),
                    "{name} {kernel} n={n} (bucket {:?}): {a:?}",
                    bucket_for(n)
                );
                total.reads += a.reads;
                total.disagreements += a.disagreements;
                total.worst_margin = total.worst_margin.max(a.worst_margin);
                total.max_score_diff = total.max_score_diff.max(a.max_score_diff);
            }
            eprintln!("{name} {kernel}: {total:?}");
            // The scores themselves are close, not only their signs.
            assert!(total.max_score_diff < 1e-3, "{name} {kernel}: {total:?}");
        }
    }
}

#[test]
fn the_default_path_is_the_documented_one() {
    let Some(g) = gpu() else { return };
    let m = Model::random(FeatureSet::LinnOs, &[256], 2, 5).unwrap();
    let gm = GpuModel::upload(&g, &m);
    let forced = GpuKernel::from_env();
    for &b in &BUCKETS {
        let k = gm.kernel_for(b);
        assert_eq!(k, forced.unwrap_or(GpuKernel::default_for(b)), "bucket {b}");
        let xs = inputs(FeatureSet::LinnOs, b, 3);
        let via_default = gm.scores(&xs, b).unwrap();
        assert_eq!(
            via_default,
            gm.scores_with(k, &xs, b).unwrap(),
            "bucket {b}"
        );
    }
}

/// A read scores the same alone, at any position of any bucket, and next
/// to any padding: the fused kernel puts several reads in one cube (the
/// lanes of a vector), so a slip in that layout would show here.
#[test]
fn a_read_scores_the_same_wherever_it_sits_in_a_batch() {
    let Some(g) = gpu() else { return };
    for (i, (name, fs, hidden, outputs)) in SHAPES.iter().enumerate() {
        let m = Model::random(*fs, hidden, *outputs, 70 + i as u64).unwrap();
        let gm = GpuModel::upload(&g, &m);
        let w = fs.n_inputs();
        let n = 37; // bucket 64: 27 padding reads
        let xs = inputs(*fs, n, 11);
        for kernel in GpuKernel::ALL {
            let batch = gm.scores_with(kernel, &xs, n).unwrap();
            for (r, &s) in batch.iter().enumerate() {
                let alone = gm.scores_with(kernel, &xs[r * w..(r + 1) * w], 1).unwrap()[0];
                assert!(
                    (alone - s).abs() < 1e-5,
                    "{name} {kernel}: read {r} scores {s} in the batch, {alone} alone"
                );
            }
            // The same read at every position of a full bucket of copies.
            for &b in &[2usize, 4, 8, 1024] {
                let r = 1 + b % 7 % n; // not always the same read
                let copies: Vec<f32> = (0..b)
                    .flat_map(|_| xs[r * w..(r + 1) * w].iter().copied())
                    .collect();
                let s = gm.scores_with(kernel, &copies, b).unwrap();
                assert!(
                    s.iter().all(|&v| (v - batch[r]).abs() < 1e-5),
                    "{name} {kernel} bucket {b}: {:?} vs {}",
                    &s[..s.len().min(8)],
                    batch[r]
                );
            }
        }
    }
}

/// The two kernels give the same scores (not only the same decisions) on
/// all-zero and all-max inputs and on random ones, at every bucket.
#[test]
fn the_kernels_agree_with_each_other() {
    let Some(g) = gpu() else { return };
    for (i, (name, fs, hidden, outputs)) in SHAPES.iter().enumerate() {
        let m = Model::random(*fs, hidden, *outputs, 90 + i as u64).unwrap();
        let gm = GpuModel::upload(&g, &m);
        for &n in BUCKETS.iter().chain(&[5, 513]) {
            let xs = inputs(*fs, n, 7 * n as u64);
            let f = gm.scores_with(GpuKernel::Fused, &xs, n).unwrap();
            let o = gm.scores_with(GpuKernel::Ops, &xs, n).unwrap();
            let worst = f
                .iter()
                .zip(&o)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-3,
                "{name} n={n}: fused and ops differ by {worst}"
            );
            // Reads 0 and 1 are all zeros and all maxima: the CPU f32 path
            // scores them too.
            for (r, x) in xs.chunks_exact(fs.n_inputs()).take(2).enumerate() {
                let c = m.score_f32_encoded(x);
                assert!(
                    (f[r] - c).abs() < 1e-3,
                    "{name} n={n} read {r}: {} vs {c}",
                    f[r]
                );
            }
        }
    }
}

#[test]
fn a_swapped_model_answers_with_its_own_weights() {
    let Some(g) = gpu() else { return };
    let a = Model::random(FeatureSet::LinnOs, &[256], 2, 1).unwrap();
    let b = Model::random(FeatureSet::LinnOs, &[256], 2, 2).unwrap();
    let xs = inputs(FeatureSet::LinnOs, 64, 9);
    let on_a = GpuModel::upload(&g, &a);
    let sa = on_a.scores(&xs, 64).unwrap();
    // The swap: the new model's weights go up; the old copy is dropped.
    drop(on_a);
    let on_b = GpuModel::upload(&g, &b);
    assert_eq!(on_b.id(), b.id());
    let sb = on_b.scores(&xs, 64).unwrap();
    assert!(agreement(&b, &xs, &sb).within_margin());
    assert_ne!(sa, sb, "the second model's scores are its own");
}

#[test]
fn bad_batches_are_refused_with_their_reason() {
    let Some(g) = gpu() else { return };
    let m = Model::random(FeatureSet::Heimdall, &[128, 16], 1, 3).unwrap();
    let gm = GpuModel::upload(&g, &m);
    assert!(matches!(
        gm.scores(&[0.0; 5], 1),
        Err(GpuError::Shape {
            got: 5,
            n: 1,
            width: 12
        })
    ));
    let big = vec![0.0; 12 * 1025];
    let e = gm.scores(&big, 1025).unwrap_err();
    assert!(e.to_string().contains("1025"), "{e}");
    assert!(gm.scores(&[], 0).unwrap().is_empty());
}

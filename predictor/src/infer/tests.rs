use super::kernels::prep16;
use super::*;
use crate::model::{Layer, TrainingMeta, W_QMAX};
use augur_feature_store::{Completed, HISTORY_LEN, WRITE_HISTORY_LEN};
use augur_rng::Rng;

fn random_snapshot(rng: &mut Rng) -> HistorySnapshot {
    // Mix of small and huge values so caps and zero digits both occur.
    let v = |rng: &mut Rng| -> u32 {
        match rng.below(4) {
            0 => 0,
            1 => rng.below(100) as u32,
            2 => rng.below(20_000) as u32,
            _ => rng.next_u64() as u32,
        }
    };
    let mut s = HistorySnapshot {
        pending_pages: v(rng),
        pending_ios: v(rng),
        len: rng.below(HISTORY_LEN as u64 + 1) as u8,
        oldest_pending_us: v(rng),
        read_max_us: v(rng),
        write_len: rng.below(WRITE_HISTORY_LEN as u64 + 1) as u8,
        ..Default::default()
    };
    for j in 0..s.write_len as usize {
        s.write_recent_us[j] = v(rng);
    }
    for j in 0..s.len as usize {
        s.recent[j] = Completed {
            latency_us: v(rng),
            pending_pages_at_issue: v(rng),
            pending_ios_at_issue: v(rng),
            size_bytes: v(rng),
        };
    }
    s
}

fn models() -> Vec<Model> {
    let l = FeatureSet::LinnOs;
    vec![
        Model::random(l, &[256], 2, 1).unwrap(),
        Model::random(l, &[256, 256], 2, 2).unwrap(),
        Model::random(l, &[256, 256, 256], 2, 3).unwrap(),
        Model::random(l, &[37, 5], 2, 4).unwrap(),
        Model::random(l, &[], 2, 5).unwrap(),
        Model::random(l, &[64], 1, 6).unwrap(),
        Model::random(FeatureSet::LinnOsExt, &[256], 2, 9).unwrap(),
        Model::random(FeatureSet::LinnOsExt, &[256, 256], 2, 10).unwrap(),
        Model::random(FeatureSet::LinnOsWrite, &[256], 2, 11).unwrap(),
        Model::random(FeatureSet::LinnOsWrite, &[256, 256, 256], 2, 12).unwrap(),
        Model::random(FeatureSet::Heimdall, &[128, 16], 1, 7).unwrap(),
        Model::random(FeatureSet::Heimdall, &[128, 16], 2, 8).unwrap(),
    ]
}

fn check_all_paths(m: &Model, x: &[i32], s: &mut Scratch) -> i64 {
    let want = reference::score_int(m, x);
    assert_eq!(m.score_int_encoded(x, s, Kernel::Auto), want, "auto kernel");
    assert_eq!(
        m.score_int_encoded(x, s, Kernel::Portable),
        want,
        "portable kernel"
    );
    assert_eq!(m.score_int_encoded(x, s, Kernel::Avx2), want, "avx2 kernel");
    want
}

#[test]
fn int_matches_reference_on_random_inputs() {
    let mut rng = Rng::new(42);
    for m in models() {
        let mut s = Scratch::for_model(&m);
        let n = m.feature_set().n_inputs();
        let hi = m.feature_set().max_int_input() as u64;
        for _ in 0..150 {
            let x: Vec<i32> = (0..n).map(|_| rng.below(hi + 1) as i32).collect();
            check_all_paths(&m, &x, &mut s);
        }
        for _ in 0..150 {
            let snap = random_snapshot(&mut rng);
            let r = ReadInfo {
                size_bytes: rng.next_u64() as u32,
            };
            let mut x = [0i32; MAX_INPUTS];
            let n = m.encode_int(&snap, r, &mut x);
            let want = check_all_paths(&m, &x[..n], &mut s);
            assert_eq!(m.score_int(&snap, r), want);
        }
    }
}

#[test]
fn int_matches_reference_on_edge_inputs() {
    for m in models() {
        let mut s = Scratch::for_model(&m);
        let n = m.feature_set().n_inputs();
        let hi = m.feature_set().max_int_input();
        for x in [vec![0; n], vec![hi; n], vec![1; n]] {
            check_all_paths(&m, &x, &mut s);
        }
        let caps = HistorySnapshot {
            pending_pages: u32::MAX,
            pending_ios: u32::MAX,
            recent: [Completed {
                latency_us: u32::MAX,
                pending_pages_at_issue: u32::MAX,
                pending_ios_at_issue: u32::MAX,
                size_bytes: u32::MAX,
            }; HISTORY_LEN],
            len: HISTORY_LEN as u8,
            oldest_pending_us: u32::MAX,
            read_max_us: u32::MAX,
            write_recent_us: [u32::MAX; WRITE_HISTORY_LEN],
            write_len: WRITE_HISTORY_LEN as u8,
        };
        for snap in [caps, HistorySnapshot::default()] {
            let r = ReadInfo {
                size_bytes: u32::MAX,
            };
            let mut x = [0i32; MAX_INPUTS];
            let n = m.encode_int(&snap, r, &mut x);
            assert_eq!(m.score_int(&snap, r), reference::score_int(&m, &x[..n]));
        }
    }
}

/// Weights at the quantization bound and maximal inputs: exercises the
/// overflow bounds (debug builds check every addition) and the clamp.
#[test]
fn extreme_weights_do_not_overflow() {
    for (fs, hidden) in [
        (FeatureSet::LinnOs, vec![1024, 1024, 1024]),
        (FeatureSet::LinnOs, vec![256]),
        (FeatureSet::Heimdall, vec![1024, 1024]),
    ] {
        // 32767 / 2^14: quantizes to exactly +-32767.
        const W: f32 = 32767.0 / 16384.0;
        for sign in [1.0f32, -1.0] {
            let mut layers = Vec::new();
            let mut prev = fs.n_inputs();
            let widths: Vec<usize> = hidden.iter().copied().chain([2]).collect();
            for (k, &m) in widths.iter().enumerate() {
                let last = k + 1 == widths.len();
                layers.push(Layer {
                    inputs: prev,
                    outputs: m,
                    // Positive weights make activations grow as fast as possible.
                    weights: (0..prev * m)
                        .map(|i| {
                            if last && i < prev {
                                -sign * W
                            } else {
                                sign * W
                            }
                        })
                        .collect(),
                    bias: vec![sign; m],
                    activation: if last {
                        Activation::None
                    } else {
                        Activation::Relu
                    },
                });
                prev = m;
            }
            let scaler = (fs == FeatureSet::Heimdall).then(|| crate::MinMax {
                min: vec![0.0; fs.n_inputs()],
                max: vec![1.0; fs.n_inputs()],
            });
            let m = Model::from_layers(fs, layers, scaler, TrainingMeta::default()).unwrap();
            assert!(
                m.quantized_layers()
                    .iter()
                    .all(|q| q.weights.iter().all(|&w| (w as i32).abs() == W_QMAX))
            );
            let mut s = Scratch::for_model(&m);
            let n = fs.n_inputs();
            let hi = fs.max_int_input();
            let score = check_all_paths(&m, &vec![hi; n], &mut s);
            check_all_paths(&m, &vec![0; n], &mut s);
            if sign > 0.0 {
                assert!(score > 0);
            }
        }
    }
}

#[test]
fn batch_equals_single() {
    let mut rng = Rng::new(7);
    for m in models() {
        let inputs: Vec<(HistorySnapshot, ReadInfo)> = (0..200)
            .map(|_| {
                (
                    random_snapshot(&mut rng),
                    ReadInfo {
                        size_bytes: rng.below(1 << 20) as u32,
                    },
                )
            })
            .collect();
        let mut out = vec![0i64; inputs.len()];
        m.score_int_batch(&inputs, &mut out);
        for ((h, r), &o) in inputs.iter().zip(&out) {
            assert_eq!(m.score_int(h, *r), o);
        }
        let n = m.feature_set().n_inputs();
        let mut xs = Vec::new();
        for (h, r) in &inputs {
            let mut x = [0i32; MAX_INPUTS];
            m.encode_int(h, *r, &mut x);
            xs.extend_from_slice(&x[..n]);
        }
        let mut s = Scratch::default();
        for k in [Kernel::Auto, Kernel::Avx2, Kernel::Portable] {
            let mut out2 = vec![0i64; inputs.len()];
            m.score_int_batch_encoded(&xs, &mut out2, &mut s, k);
            assert_eq!(out, out2);
        }
    }
}

#[test]
fn f32_path_matches_f64_reference() {
    let mut rng = Rng::new(9);
    for m in models() {
        for _ in 0..100 {
            let snap = random_snapshot(&mut rng);
            let r = ReadInfo { size_bytes: 4096 };
            let mut x = [0f32; MAX_INPUTS];
            let n = m.encode_f32(&snap, r, &mut x);
            let want = reference::score_f64(&m, &x[..n]);
            let got = m.score_f32(&snap, r) as f64;
            assert!(
                (got - want).abs() <= 1e-3 * (1.0 + want.abs()),
                "{got} vs {want}"
            );
        }
    }
}

/// A random history, encoded for the f32 and the integer path.
fn random_encoded(m: &Model, rng: &mut Rng) -> ([f32; MAX_INPUTS], [i32; MAX_INPUTS], usize) {
    let snap = random_snapshot(rng);
    let r = ReadInfo { size_bytes: 4096 };
    let mut xf = [0f32; MAX_INPUTS];
    let k = m.encode_f32(&snap, r, &mut xf);
    let mut xi = [0i32; MAX_INPUTS];
    m.encode_int(&snap, r, &mut xi);
    (xf, xi, k)
}

/// Fraction of inputs on which the integer and f32 decisions differ.
fn disagreement(m: &Model, rng: &mut Rng, n: usize, int_score: impl Fn(&[i32]) -> i64) -> f64 {
    let mut bad = 0;
    for _ in 0..n {
        let (xf, xi, k) = random_encoded(m, rng);
        let f = reference::score_f64(m, &xf[..k]) > 0.0;
        if f != is_slow(int_score(&xi[..k])) {
            bad += 1;
        }
    }
    bad as f64 / n as f64
}

#[test]
fn f32_and_int_agree_on_decisions() {
    let mut rng = Rng::new(11);
    for m in models() {
        let d = disagreement(&m, &mut rng, 1000, |x| reference::score_int(&m, x));
        assert!(
            d < 0.01,
            "{}: {:.4} of decisions differ",
            m.shape_string(),
            d
        );
    }
}

/// The LinnOS x1000 scheme for a 2-layer model: W and b1 x1000, b2 x10^6.
fn linnos_x1000(m: &Model, x: &[i32]) -> i64 {
    let [l1, l2] = m.layers() else { unreachable!() };
    let q = |v: f32, s: f64| (v as f64 * s).round() as i64;
    let h: Vec<i64> = (0..l1.outputs)
        .map(|o| {
            let acc: i64 = q(l1.bias[o], 1e3)
                + (0..l1.inputs)
                    .map(|i| q(l1.weights[o * l1.inputs + i], 1e3) * x[i] as i64)
                    .sum::<i64>();
            acc.max(0)
        })
        .collect();
    let out: Vec<i64> = (0..l2.outputs)
        .map(|o| {
            q(l2.bias[o], 1e6)
                + (0..l2.inputs)
                    .map(|i| q(l2.weights[o * l2.inputs + i], 1e3) * h[i])
                    .sum::<i64>()
        })
        .collect();
    out[1] - out[0]
}

/// Mean |integer score / its scale - exact score| over random inputs.
fn mean_abs_error(
    m: &Model,
    rng: &mut Rng,
    n: usize,
    scale: f64,
    int_score: impl Fn(&[i32]) -> i64,
) -> f64 {
    let mut err = 0.0;
    for _ in 0..n {
        let (xf, xi, k) = random_encoded(m, rng);
        err += (int_score(&xi[..k]) as f64 / scale - reference::score_f64(m, &xf[..k])).abs();
    }
    err / n as f64
}

#[test]
fn per_layer_scaling_beats_linnos_x1000() {
    let (mut ours, mut theirs) = (0.0, 0.0);
    let (mut ours_e, mut theirs_e) = (0.0, 0.0);
    for seed in 0..4 {
        let m = Model::random(FeatureSet::LinnOs, &[256], 2, 100 + seed).unwrap();
        let mut rng = Rng::new(seed);
        ours += disagreement(&m, &mut rng, 2000, |x| reference::score_int(&m, x));
        let mut rng = Rng::new(seed);
        theirs += disagreement(&m, &mut rng, 2000, |x| linnos_x1000(&m, x));
        let scale = (m.quantized_layers()[1].out_exp() as f64).exp2();
        let mut rng = Rng::new(seed);
        ours_e += mean_abs_error(&m, &mut rng, 300, scale, |x| reference::score_int(&m, x));
        let mut rng = Rng::new(seed);
        theirs_e += mean_abs_error(&m, &mut rng, 300, 1e6, |x| linnos_x1000(&m, x));
    }
    eprintln!(
        "vs f32, 4 random 31-256-2 models: decisions differing: per-layer 2^e {ours:.5}, LinnOS x1000 {theirs:.5}; \
         mean |score error|: per-layer {ours_e:.3e}, LinnOS {theirs_e:.3e}"
    );
    assert!(ours <= theirs);
    assert!(ours_e < theirs_e / 4.0);
}

/// Mean |score error| against the exact (f64) model on random deeper
/// models, per shape: the price of the integer path's rounding.
#[test]
fn deep_models_score_error_vs_f64() {
    for hidden in [vec![256], vec![256, 256], vec![256, 256, 256]] {
        let (mut err, mut dis) = (0.0, 0.0);
        for seed in 0..4 {
            let m = Model::random(FeatureSet::LinnOs, &hidden, 2, 200 + seed).unwrap();
            let scale = (m.quantized_layers().last().unwrap().out_exp() as f64).exp2();
            let mut rng = Rng::new(seed);
            err += mean_abs_error(&m, &mut rng, 500, scale, |x| reference::score_int(&m, x));
            let mut rng = Rng::new(seed);
            dis += disagreement(&m, &mut rng, 2000, |x| reference::score_int(&m, x));
        }
        eprintln!(
            "31-{}-2 (4 random models): mean |score error| vs f64 {:.3e}, decisions differing {:.5}",
            hidden
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join("-"),
            err / 4.0,
            dis / 4.0
        );
    }
}

/// Step 2b on hand-picked inputs: s = 0 keeps `x`, rounding ties go up,
/// the top value clamps to 65535, and all-zero pairs are left out.
#[test]
fn step_2b_rescaling_edges() {
    let run = |x: &[i32]| {
        let np = x.len().div_ceil(2);
        let (mut pairs, mut nz) = (vec![0u32; np], vec![0u16; np]);
        let (s, k) = prep16(x, &mut pairs, &mut nz);
        let u: Vec<u32> = pairs
            .iter()
            .flat_map(|&v| [v & 0xFFFF, v >> 16])
            .take(x.len())
            .collect();
        (s, u, nz[..k].to_vec())
    };
    assert_eq!(run(&[0, 0, 0]), (0, vec![0, 0, 0], vec![]));
    assert_eq!(
        run(&[65535, 1, 0, 0, 7]),
        (0, vec![65535, 1, 0, 0, 7], vec![0, 2])
    );
    // bitlen(65536) = 17: s = 1; 3 / 2 = 1.5 rounds up to 2.
    assert_eq!(run(&[65536, 3]), (1, vec![32768, 2], vec![0]));
    // The clamp: s = 15, (2^31 - 1 + 2^14) >> 15 = 65536 -> 65535; ties
    // 0.5 -> 1 and 1.5 -> 2; just under a half -> 0.
    let t = 1 << 14;
    assert_eq!(
        run(&[i32::MAX, t, t - 1, 3 * t, 0, 0]),
        (15, vec![65535, 1, 0, 2, 0, 0], vec![0, 1])
    );
}

/// Hidden layers at the activation clamp (2^31 - 1) feeding a later
/// hidden layer (step 2b with s = 15 and u clamped to 65535), weights
/// at +-32767, several blocks of 128 pairs: every kernel equals the
/// reference, and debug builds check every addition.
#[test]
fn deep_layers_at_the_clamp() {
    const W: f32 = 32767.0 / 16384.0;
    for sign3 in [1.0f32, -1.0] {
        let widths = [64usize, 1024, 300, 2];
        let mut layers = Vec::new();
        let mut prev = FeatureSet::LinnOs.n_inputs();
        for (k, &m) in widths.iter().enumerate() {
            let last = k + 1 == widths.len();
            let w = if k == 2 { sign3 * W } else { W };
            layers.push(Layer {
                inputs: prev,
                outputs: m,
                weights: (0..prev * m)
                    .map(|i| {
                        if (last && i < prev) || (k == 2 && i % 3 == 0) {
                            -w
                        } else {
                            w
                        }
                    })
                    .collect(),
                bias: vec![1.0; m],
                activation: if last {
                    Activation::None
                } else {
                    Activation::Relu
                },
            });
            prev = m;
        }
        let m =
            Model::from_layers(FeatureSet::LinnOs, layers, None, TrainingMeta::default()).unwrap();
        // On all-9 inputs layer 2 reaches the clamp (so layer 3 runs
        // step 2b with s = 15 and u = 65535).
        let q = m.quantized_layers();
        let x1 = q[0].bias[0] + 9 * 31 * W_QMAX as i64;
        let acc2 = q[1].bias[0] + 64 * W_QMAX as i64 * (x1 >> q[0].out_shift);
        assert!(acc2 >> q[1].out_shift > ACT_MAX);
        let mut s = Scratch::for_model(&m);
        let n = m.feature_set().n_inputs();
        for x in [
            vec![9; n],
            vec![0; n],
            (0..n as i32).map(|i| i % 10).collect(),
        ] {
            check_all_paths(&m, &x, &mut s);
        }
    }
}

/// An all-zero model scores exactly 0 on every kernel: a tie, so fast.
#[test]
fn zero_model_ties_to_fast() {
    let m = Model::random(FeatureSet::LinnOs, &[256, 256, 256], 2, 1).unwrap();
    let layers: Vec<Layer> = m
        .layers()
        .iter()
        .map(|l| Layer {
            weights: vec![0.0; l.weights.len()],
            bias: vec![0.0; l.bias.len()],
            ..l.clone()
        })
        .collect();
    let z = Model::from_layers(FeatureSet::LinnOs, layers, None, TrainingMeta::default()).unwrap();
    let mut s = Scratch::for_model(&z);
    let x = vec![9; z.feature_set().n_inputs()];
    assert_eq!(check_all_paths(&z, &x, &mut s), 0);
    assert!(!is_slow(z.score_int_encoded(&x, &mut s, Kernel::Auto)));
}

#[test]
fn tie_is_fast() {
    assert!(!is_slow(0));
    assert!(is_slow(1));
    assert!(!is_slow(-1));
}

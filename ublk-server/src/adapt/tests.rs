use augur_feature_store::HistorySnapshot;
use augur_predictor::FeatureSet;
use augur_rng::Rng;

use super::*;

/// Reads on a device where a read is slow exactly when more than 20 I/Os
/// were pending at its issue (something every LinnOS encoding sees).
fn queue_bound_reads(n: usize, seed: u64) -> Vec<TrainingRecord> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let pending = rng.below(40) as u32;
            TrainingRecord {
                time_ns: i as u64 * 10_000,
                replica: (i % 3) as u16,
                op: Op::Read,
                size_bytes: 4096,
                offset: rng.below(1 << 20) * 4096,
                latency_us: if pending > 20 {
                    900
                } else {
                    100 + rng.below(30) as u32
                },
                features: HistorySnapshot {
                    pending_ios: pending,
                    pending_pages: pending,
                    ..HistorySnapshot::default()
                },
            }
        })
        .collect()
}

fn cfg() -> AdaptConfig {
    AdaptConfig {
        window: 12_000,
        min_new: 8_000,
        // The synthetic device is separable: the loss creeps towards zero.
        converge_abs: 0.02,
        train: TrainConfig {
            // Per-read labels: the synthetic device has no slow periods.
            period: None,
            ..AdaptConfig::default().train
        },
        ..AdaptConfig::default()
    }
}

fn epochs(losses: &[f64]) -> Vec<EpochStats> {
    losses
        .iter()
        .enumerate()
        .map(|(i, &l)| EpochStats {
            epoch: i + 1,
            train_loss: l,
            val_loss: l,
            val_accuracy: 0.0,
            val_false_submit_rate: 0.0,
            val_false_revoke_rate: 0.0,
            improved: false,
            elapsed_s: 0.0,
        })
        .collect()
}

#[test]
fn convergence_is_measured_not_assumed() {
    // The best loss stopped improving (a noisy last epoch does not matter).
    let flat = epochs(&[0.9, 0.5, 0.31, 0.30, 0.305, 0.33]);
    assert!(converged(&flat, 3, 0.05, 0.0));
    let falling = epochs(&[0.9, 0.5, 0.31, 0.2, 0.15]);
    assert!(!converged(&falling, 3, 0.05, 0.01), "still falling");
    let near_zero = epochs(&[0.05, 0.019, 0.016, 0.013]);
    assert!(
        converged(&near_zero, 2, 0.05, 0.01),
        "near zero, barely moving"
    );
    assert!(
        !converged(&epochs(&[0.3, 0.3, 0.3]), 3, 0.05, 0.01),
        "too few epochs"
    );
    assert!(!converged(&epochs(&[f64::NAN; 5]), 3, 0.05, 0.01));
}

#[test]
fn installs_a_better_model_refuses_a_worse_one_and_one_that_changes_nothing() {
    let reads = queue_bound_reads(12_000, 1);
    // An active model that knows nothing of this device.
    let clueless = Model::random(FeatureSet::LinnOsWrite, &[256], 2, 3).unwrap();
    let mut ad = Adapter::new(cfg());
    ad.offer(&reads[..4_000]);
    assert!(!ad.ready(), "too few reads for a round");
    ad.offer(&reads[4_000..]);
    assert!(ad.ready());
    let good = match ad.round(&clueless) {
        Verdict::Install(m, metrics) => {
            assert!(metrics.converged, "{}", metrics.summary());
            assert!(
                metrics.candidate_accuracy > 0.95
                    && metrics.candidate_accuracy > metrics.active_accuracy,
                "{}",
                metrics.summary()
            );
            *m
        }
        Verdict::Reject(why, m) => panic!("a better model was refused: {why}: {}", m.summary()),
    };
    assert!(!ad.ready(), "a round uses up the new reads");
    // The same device again, with the good model active: whatever the new
    // candidate is, it is no improvement, and is not installed.
    ad.offer(&queue_bound_reads(8_000, 2));
    if let Verdict::Install(_, m) = ad.round(&good) {
        panic!(
            "installed a model no better than the active one: {}",
            m.summary()
        );
    }
    // A candidate that decides as the active one does: refused by gate 2
    // even though it is as good.
    let held = queue_bound_reads(3_000, 4);
    let mut m = RoundMetrics::default();
    let truth = labels(&held, 500, None);
    let e = judge(&good, &good.clone(), &held, &truth, 500, &cfg(), &mut m).unwrap_err();
    assert!(e.contains("differ on only 0.00%"), "{e}");
    // A worse candidate against the good model: refused for accuracy.
    let mut m = RoundMetrics::default();
    let e = judge(&good, &clueless, &held, &truth, 500, &cfg(), &mut m).unwrap_err();
    assert!(
        e.contains("less accurate") || e.contains("more false submits"),
        "{e}"
    );
    assert!(
        m.differ >= 0.02 && m.candidate_accuracy < m.active_accuracy,
        "{}",
        m.summary()
    );
}

//! Training on a small, linearly separable synthetic set (a read is slow iff
//! the replica's recent reads were slow) must reach near-perfect validation
//! accuracy, and quantization must cost at most half an accuracy point.
//! Kept small enough to finish within about a minute in a debug build.

use augur_feature_store::{Completed, HISTORY_LEN, HistorySnapshot, Op, TrainingRecord};
use augur_predictor::eval::evaluate;
use augur_predictor::label::LabelRule;
use augur_predictor::train::{Arch, Progress, TrainConfig, train};

use augur_rng::Rng;

/// ~8% slow reads (3-6 ms) whose last four reads took 1.5-4 ms; fast reads
/// (60-300 µs) follow fast history. Queue depths are noise.
fn dataset(n: usize, seed: u64) -> Vec<TrainingRecord> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let slow = rng.next_f64() < 0.08;
            let mut recent = [Completed::default(); HISTORY_LEN];
            for c in &mut recent {
                let lat = if slow {
                    1500.0 + rng.next_f64() * 2500.0
                } else {
                    60.0 + rng.next_f64() * 240.0
                };
                *c = Completed {
                    latency_us: lat as u32,
                    pending_pages_at_issue: (rng.next_f64() * 64.0) as u32,
                    pending_ios_at_issue: (rng.next_f64() * 16.0) as u32,
                    size_bytes: 4096,
                };
            }
            let latency_us = if slow {
                3000.0 + rng.next_f64() * 3000.0
            } else {
                60.0 + rng.next_f64() * 240.0
            } as u32;
            TrainingRecord {
                time_ns: i as u64 * 10_000,
                replica: 0,
                op: Op::Read,
                size_bytes: 4096,
                offset: (i as u64 % 1024) * 4096,
                latency_us,
                features: HistorySnapshot {
                    pending_pages: (rng.next_f64() * 64.0) as u32,
                    pending_ios: (rng.next_f64() * 16.0) as u32,
                    recent,
                    len: HISTORY_LEN as u8,
                    ..HistorySnapshot::default()
                },
            }
        })
        .collect()
}

#[test]
fn separable_set_trains_to_near_perfect_accuracy() {
    let records = dataset(3000, 2024);
    let cfg = TrainConfig {
        arch: Arch::Base,
        label: LabelRule::Inflection,
        max_epochs: 15,
        patience: 4,
        batch_size: 64,
        learning_rate: 2e-3,
        seed: 11,
        date: Some("2026-01-01".to_string()),
        data_description: "synthetic separable".to_string(),
        ..TrainConfig::default()
    };
    let mut epochs = Vec::new();
    let (model, report) = train(&records, &cfg, &mut |p| {
        if let Progress::Epoch(s) = p {
            epochs.push(s);
        }
    })
    .expect("training succeeds");

    // The inflection threshold separates the two latency modes (fast reads
    // take at most 299 µs, slow ones at least 3000 µs).
    assert!(
        (299..3000).contains(&report.label.threshold_us),
        "threshold {}",
        report.label.threshold_us
    );
    let v = &report.validation;
    let f32_acc = v.float.accuracy.expect("validation reads");
    let int_acc = v.int.accuracy.expect("validation reads");
    assert!(
        f32_acc >= 0.99,
        "f32 validation accuracy {f32_acc}\n{}",
        report.render_text()
    );
    assert!(
        (f32_acc - int_acc).abs() * 100.0 <= 0.5,
        "quantization cost {} points\n{}",
        (f32_acc - int_acc) * 100.0,
        report.render_text()
    );
    assert!(v.float.auc.expect("both classes") > 0.99);
    assert!(v.float.false_submit_rate.expect("slow reads") <= 0.05);
    assert_eq!(epochs.len(), report.epochs_run);
    assert!(!epochs.is_empty());

    // The model generalises to fresh data from the same distribution.
    let fresh = dataset(1000, 77);
    let e = evaluate(&model, &fresh, report.label.threshold_us);
    assert!(
        e.float.accuracy.expect("reads") >= 0.99,
        "{}",
        e.render_text()
    );
    assert!(
        e.int.accuracy.expect("reads") >= 0.985,
        "{}",
        e.render_text()
    );
}

//! What a trained model records about itself: metadata, metrics, the label
//! rule's text, and the check that the model matches the trained network.

use super::*;

/// Shortens `s` to at most `max` bytes on a character boundary, ending in
/// `...` when cut.
pub(super) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max.saturating_sub(3);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str("...");
}

/// Today's date (UTC) as `yyyy-mm-dd`, from the system clock.
pub fn utc_date_today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_date(secs)
}

/// The UTC calendar date of a Unix time, as `yyyy-mm-dd`.
pub fn utc_date(unix_secs: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = (unix_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The metrics a trained model's metadata records.
pub(super) fn metrics_of(
    validation: &EvalReport,
    validation_period: Option<&EvalReport>,
    labelled_slow_fraction: f64,
    val_reads: usize,
    train_reads: usize,
    slow_fraction: f64,
    best_epoch: usize,
) -> Vec<(String, f64)> {
    let mut metrics: Vec<(String, f64)> = Vec::new();
    for (path, m) in [("f32", &validation.float), ("int", &validation.int)] {
        let mut put = |name: &str, v: Option<f64>| {
            if let Some(v) = v {
                metrics.push((format!("val_{name}_{path}"), v));
            }
        };
        put("accuracy", m.accuracy);
        put("false_submit_rate", m.false_submit_rate);
        put("false_revoke_rate", m.false_revoke_rate);
        put("auc", m.auc);
    }
    if let Some(v) = validation_period {
        for (path, m) in [("f32", &v.float), ("int", &v.int)] {
            if let Some(a) = m.accuracy {
                metrics.push((format!("val_period_accuracy_{path}"), a));
            }
            if let Some(a) = m.false_submit_rate {
                metrics.push((format!("val_period_false_submit_rate_{path}"), a));
            }
        }
        metrics.push(("period_slow_fraction".to_string(), labelled_slow_fraction));
    }
    metrics.push(("val_reads".to_string(), val_reads as f64));
    metrics.push(("train_reads".to_string(), train_reads as f64));
    metrics.push(("slow_fraction".to_string(), slow_fraction));
    metrics.push(("best_epoch".to_string(), best_epoch as f64));
    metrics
}

/// The model's own f32 path must agree with the network we trained.
pub(super) fn check_consistent(
    model: &Model,
    layers: &[Layer],
    val_records: &[TrainingRecord],
    val_x: &[f32],
    d_in: usize,
) -> Result<(), TrainError> {
    for (k, r) in val_records.iter().take(64).enumerate() {
        let net_score = score_layers(layers, &val_x[k * d_in..(k + 1) * d_in]);
        let model_score = model.score_f32(
            &r.features,
            ReadInfo {
                size_bytes: r.size_bytes,
            },
        );
        let tol = 1e-3 * (1.0 + net_score.abs());
        if (net_score - model_score).abs() > tol || !model_score.is_finite() {
            return Err(TrainError::Inconsistent {
                index: k,
                model: model_score,
                network: net_score,
            });
        }
    }
    Ok(())
}

/// The model's metadata (metrics are filled in once evaluated).
pub(super) fn training_meta(
    cfg: &TrainConfig,
    label_rule: &str,
    threshold: &Threshold,
    summary: String,
) -> TrainingMeta {
    TrainingMeta {
        data: {
            let mut data = if cfg.data_description.is_empty() {
                summary
            } else {
                format!("{}; {summary}", cfg.data_description)
            };
            truncate_utf8(&mut data, MAX_STR);
            data
        },
        date: cfg.date.clone().unwrap_or_else(utc_date_today),
        seed: cfg.seed,
        arch: match cfg.feature_set() {
            FeatureSet::LinnOsExt => format!("{}+ext", cfg.arch.name()),
            FeatureSet::LinnOsWrite => format!("{}+write", cfg.arch.name()),
            FeatureSet::LinnOs | FeatureSet::Heimdall => cfg.arch.name().to_string(),
        },
        label_rule: label_rule.to_string(),
        threshold_us: threshold.threshold_us,
        metrics: Vec::new(),
    }
}

/// How the labels were made, for the report and the model's metadata.
pub(super) fn label_rule_text(
    cfg: &TrainConfig,
    threshold: &Threshold,
    period_dropped: Option<f64>,
) -> String {
    let rule = if threshold.fallback {
        format!("{} (no knee: p97 fallback)", cfg.label)
    } else {
        cfg.label.to_string()
    };
    match (cfg.period, period_dropped) {
        (Some(p), Some(share)) => format!(
            "{rule} (per read: {p} would mark {:.0}% of reads slow)",
            share * 100.0
        ),
        (Some(p), None) => format!("{rule}, {p}"),
        (None, _) => rule,
    }
}

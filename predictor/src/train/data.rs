//! The samples: which reads train, their labels (per read, then period
//! labels), the stratified split and the f32 input rows.

use super::*;

/// Encodes one read's features (unscaled for Heimdall).
pub(super) fn encode(fs: FeatureSet, r: &TrainingRecord, out: &mut Vec<f32>) {
    match fs {
        FeatureSet::LinnOs => {
            let mut f = [0.0f32; LINNOS_INPUTS];
            encode_linnos(&r.features, &mut f);
            out.extend_from_slice(&f);
        }
        FeatureSet::LinnOsExt => {
            let mut f = [0.0f32; LINNOS_EXT_INPUTS];
            encode_linnos_ext(&r.features, &mut f);
            out.extend_from_slice(&f);
        }
        FeatureSet::LinnOsWrite => {
            let mut f = [0.0f32; LINNOS_WRITE_INPUTS];
            encode_linnos_write(&r.features, &mut f);
            out.extend_from_slice(&f);
        }
        FeatureSet::Heimdall => {
            let mut f = [0.0f32; HEIMDALL_INPUTS];
            heimdall_raw(
                &r.features,
                ReadInfo {
                    size_bytes: r.size_bytes,
                },
                &mut f,
            );
            out.extend_from_slice(&f);
        }
    }
}

/// The reads of a training run, labelled, with a stratified, seeded split.
pub(super) struct Split<'a> {
    pub(super) reads: Vec<&'a TrainingRecord>,
    pub(super) labels: Vec<bool>,
    pub(super) threshold: Threshold,
    pub(super) labelled_slow_fraction: f64,
    /// Set when period labels would have marked more than
    /// [`MAX_PERIOD_SLOW_SHARE`] of the reads slow (that share): the
    /// per-read labels were kept instead.
    pub(super) period_dropped: Option<f64>,
    pub(super) train_idx: Vec<usize>,
    pub(super) val_idx: Vec<usize>,
}

/// Most of the reads period labels may mark slow before training keeps the
/// per-read labels instead (see [`TrainReport::period_labels_dropped`]).
pub const MAX_PERIOD_SLOW_SHARE: f64 = 0.5;

/// Selects the reads `cfg` trains on, labels them (threshold, then period
/// labels) and splits them into training and validation sets per class.
pub(super) fn labelled_split<'a>(
    records: &'a [TrainingRecord],
    cfg: &TrainConfig,
) -> Result<Split<'a>, TrainError> {
    // ---- data: reads of the selected replicas, labelled ----
    let reads: Vec<&TrainingRecord> = records
        .iter()
        .filter(|r| r.op == Op::Read && cfg.replicas.matches(r.replica))
        .collect();
    if reads.is_empty() {
        return Err(TrainError::NoReads {
            selection: cfg.replicas.describe(),
            records: records.len(),
        });
    }
    let latencies: Vec<u32> = reads.iter().map(|r| r.latency_us).collect();
    let threshold = compute_threshold(&latencies, cfg.label)?;
    let mut labels: Vec<bool> = latencies
        .iter()
        .map(|&l| is_slow(l, threshold.threshold_us))
        .collect();
    let mut period_dropped = None;
    if let Some(p) = cfg.period {
        let keyed: Vec<(u16, u64, bool)> = reads
            .iter()
            .zip(&labels)
            .map(|(r, &y)| (r.replica, r.time_ns, y))
            .collect();
        let periodic = p.apply(&keyed);
        let share = periodic.iter().filter(|&&y| y).count() as f64 / periodic.len() as f64;
        // A device that is in a slow period most of the time has no fast
        // periods to send reads to: period labels would teach "always slow".
        // Keep the per-read labels then, and say so.
        if share > MAX_PERIOD_SLOW_SHARE {
            period_dropped = Some(share);
        } else {
            labels = periodic;
        }
    }
    let labelled_slow_fraction = labels.iter().filter(|&&y| y).count() as f64 / labels.len() as f64;
    let mut slow_idx: Vec<usize> = (0..reads.len()).filter(|&i| labels[i]).collect();
    let mut fast_idx: Vec<usize> = (0..reads.len()).filter(|&i| !labels[i]).collect();
    if slow_idx.len() < 2 || fast_idx.len() < 2 {
        return Err(TrainError::TooFewOfAClass {
            slow: slow_idx.len(),
            fast: fast_idx.len(),
            threshold_us: threshold.threshold_us,
            rule: cfg.label.to_string(),
        });
    }

    // ---- stratified, seeded split ----
    let mut split_rng = stream_rng(cfg.seed, 1);
    split_rng.shuffle(&mut slow_idx);
    split_rng.shuffle(&mut fast_idx);
    let n_val = |n: usize| -> usize {
        ((n as f64 * cfg.validation_fraction).round() as usize).clamp(1, n - 1)
    };
    let (vs, vf) = (n_val(slow_idx.len()), n_val(fast_idx.len()));
    let mut val_idx: Vec<usize> = slow_idx[..vs]
        .iter()
        .chain(&fast_idx[..vf])
        .copied()
        .collect();
    val_idx.sort_unstable();
    let mut train_idx: Vec<usize> = slow_idx[vs..]
        .iter()
        .chain(&fast_idx[vf..])
        .copied()
        .collect();
    train_idx.sort_unstable();

    Ok(Split {
        reads,
        labels,
        threshold,
        labelled_slow_fraction,
        period_dropped,
        train_idx,
        val_idx,
    })
}

/// The f32 input rows of `reads` (`d_in` values each), MinMax-scaled for
/// Heimdall with a scaler fitted on the training rows only.
pub(super) fn features(
    fs: FeatureSet,
    reads: &[&TrainingRecord],
    train_idx: &[usize],
    d_in: usize,
) -> (Vec<f32>, Option<MinMax>) {
    let mut feats: Vec<f32> = Vec::with_capacity(reads.len() * d_in);
    for r in reads {
        encode(fs, r, &mut feats);
    }
    let scaler = if fs == FeatureSet::Heimdall {
        // Fit on the training split only; the model applies the same scaler.
        let s = MinMax::fit(
            d_in,
            train_idx.iter().map(|&i| &feats[i * d_in..(i + 1) * d_in]),
        );
        for row in feats.chunks_exact_mut(d_in) {
            s.apply(row);
        }
        Some(s)
    } else {
        None
    };
    (feats, scaler)
}

//! The network and its fitting: layers, the weighted loss, epochs of
//! shuffled batches, validation and early stopping.

use super::*;

/// The trained network: linear layers with ReLU between them.
#[derive(Module, Debug)]
pub(super) struct Net {
    layers: Vec<Linear>,
}

impl Net {
    fn init(widths: &[usize], rng: &mut Rng, device: &Device) -> Self {
        let layers = widths
            .windows(2)
            .map(|w| {
                let (d_in, d_out) = (w[0], w[1]);
                let k = 1.0 / (d_in as f64).sqrt();
                let mut uni = |n: usize| -> Vec<f32> {
                    (0..n)
                        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * k) as f32)
                        .collect()
                };
                // burn stores weights as [d_input, d_output].
                let weight = uni(d_in * d_out);
                let bias = uni(d_out);
                Linear {
                    weight: Param::from_tensor(Tensor::from_data(
                        TensorData::new(weight, [d_in, d_out]),
                        device,
                    )),
                    bias: Some(Param::from_tensor(Tensor::from_data(
                        TensorData::new(bias, [d_out]),
                        device,
                    ))),
                }
            })
            .collect();
        Net { layers }
    }

    fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }

    /// The weights as model layers (row-major `[outputs][inputs]`).
    fn to_layers(&self) -> Result<Vec<Layer>, TrainError> {
        let last = self.layers.len().saturating_sub(1);
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let w = l.weight.val();
                let [d_in, d_out] = w.dims();
                let w: Vec<f32> = w
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| TrainError::Backend(format!("{e:?}")))?;
                let bias: Vec<f32> = match &l.bias {
                    Some(b) => b
                        .val()
                        .into_data()
                        .try_to_vec::<f32>()
                        .map_err(|e| TrainError::Backend(format!("{e:?}")))?,
                    None => vec![0.0; d_out],
                };
                let mut weights = vec![0.0f32; d_in * d_out];
                for r in 0..d_in {
                    for c in 0..d_out {
                        weights[c * d_in + r] = w[r * d_out + c];
                    }
                }
                Ok(Layer {
                    inputs: d_in,
                    outputs: d_out,
                    weights,
                    bias,
                    activation: if i < last {
                        Activation::Relu
                    } else {
                        Activation::None
                    },
                })
            })
            .collect()
    }
}

/// Plain f32 forward pass over model layers; returns the "slow" score
/// (`out[1] - out[0]` for two outputs, `out[0]` for one).
pub(super) fn score_layers(layers: &[Layer], input: &[f32]) -> f32 {
    let mut x = input.to_vec();
    for l in layers {
        let mut y = l.bias.clone();
        for (o, yo) in y.iter_mut().enumerate() {
            let row = &l.weights[o * l.inputs..(o + 1) * l.inputs];
            *yo += row.iter().zip(&x).map(|(w, v)| w * v).sum::<f32>();
            if l.activation == Activation::Relu {
                *yo = yo.max(0.0);
            }
        }
        x = y;
    }
    match x.as_slice() {
        [a, b] => b - a,
        [a] => *a,
        _ => 0.0,
    }
}

/// Weighted loss and confusion counts of raw network outputs.
pub(super) struct ValStats {
    loss: f64,
    accuracy: f64,
    false_submit_rate: f64,
    false_revoke_rate: f64,
}

pub(super) fn val_stats(outputs: &[f32], n_out: usize, labels: &[bool], w_slow: f64) -> ValStats {
    let (mut loss, mut wsum) = (0.0f64, 0.0f64);
    let (mut tp, mut fn_, mut fp, mut tn) = (0u64, 0u64, 0u64, 0u64);
    for (o, &y) in outputs.chunks_exact(n_out).zip(labels) {
        let w = if y { w_slow } else { 1.0 };
        let (score, l) = if n_out == 2 {
            let (a, b) = (f64::from(o[0]), f64::from(o[1]));
            let m = a.max(b);
            let lse = m + ((a - m).exp() + (b - m).exp()).ln();
            (b - a, lse - if y { b } else { a })
        } else {
            let z = f64::from(o[0]);
            let sp = z.max(0.0) + (-z.abs()).exp().ln_1p();
            (z, sp - if y { z } else { 0.0 })
        };
        loss += w * l;
        wsum += w;
        match (y, score > 0.0) {
            (true, true) => tp += 1,
            (true, false) => fn_ += 1,
            (false, true) => fp += 1,
            (false, false) => tn += 1,
        }
    }
    let r = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    ValStats {
        loss: if wsum > 0.0 { loss / wsum } else { 0.0 },
        accuracy: r(tp + tn, tp + tn + fp + fn_),
        false_submit_rate: r(fn_, tp + fn_),
        false_revoke_rate: r(fp, fp + tn),
    }
}

/// The weighted loss of one batch: cross-entropy over two outputs, or binary
/// cross-entropy with logits over one. `tb` holds, per sample, the weighted
/// one-hot target (two outputs) or (weight, weight * label) (one output).
#[allow(clippy::too_many_arguments)]
pub(super) fn batch_loss(
    net: &Net,
    xb: &[f32],
    tb: &[f32],
    n: usize,
    d_in: usize,
    n_out: usize,
    wsum: f64,
    device: &Device,
) -> Tensor<1> {
    let x = Tensor::<2>::from_data(TensorData::new(xb.to_vec(), [n, d_in]), device);
    let out = net.forward(x);
    let t = Tensor::<2>::from_data(TensorData::new(tb.to_vec(), [n, 2]), device);
    if n_out == 2 {
        (log_softmax(out, 1) * t).sum().neg().div_scalar(wsum)
    } else {
        // Weighted binary cross-entropy with logits:
        // w * (softplus(z) - y z), softplus(z) = max(z,0) + ln(1 + e^-|z|).
        let w = t.clone().slice([0..n, 0..1]);
        let wy = t.slice([0..n, 1..2]);
        let sp = out.clone().clamp_min(0.0) + out.clone().abs().neg().exp().log1p();
        (sp * w - out * wy).sum().div_scalar(wsum)
    }
}

/// The trained network's outputs on the validation rows (no autodiff).
pub(super) fn validation_outputs(
    net: &Net,
    val_x: &[f32],
    d_in: usize,
    n_out: usize,
    plain: &Device,
) -> Result<Vec<f32>, TrainError> {
    let vnet = net.valid();
    let mut outputs = Vec::with_capacity(val_x.len() / d_in.max(1) * n_out);
    for chunk in val_x.chunks(4096 * d_in) {
        let n = chunk.len() / d_in;
        let x = Tensor::<2>::from_data(TensorData::new(chunk.to_vec(), [n, d_in]), plain);
        let o = vnet
            .forward(x)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Backend(format!("{e:?}")))?;
        outputs.extend_from_slice(&o);
    }
    Ok(outputs)
}

/// Fills one batch's inputs `xb` and targets `tb` (see [`batch_loss`]) for
/// the rows in `chunk`; returns the batch's total sample weight.
#[allow(clippy::too_many_arguments)]
pub(super) fn fill_batch(
    chunk: &[usize],
    feats: &[f32],
    labels: &[bool],
    d_in: usize,
    n_out: usize,
    w_slow: f64,
    xb: &mut Vec<f32>,
    tb: &mut Vec<f32>,
) -> f64 {
    let mut wsum = 0.0f64;
    for &i in chunk {
        xb.extend_from_slice(&feats[i * d_in..(i + 1) * d_in]);
        let y = labels[i];
        let w = if y { w_slow } else { 1.0 };
        wsum += w;
        if n_out == 2 {
            // Weighted one-hot target for the cross-entropy.
            let (f, s) = if y { (0.0, w) } else { (w, 0.0) };
            tb.push(f as f32);
            tb.push(s as f32);
        } else {
            tb.push(w as f32); // weight
            tb.push(if y { w as f32 } else { 0.0 }); // weight * label
        }
    }
    wsum
}

/// The rows one training epoch draws its batches from.
pub(super) struct Batches<'a> {
    pub(super) feats: &'a [f32],
    pub(super) labels: &'a [bool],
    pub(super) d_in: usize,
    pub(super) n_out: usize,
    pub(super) w_slow: f64,
    pub(super) batch_size: usize,
    pub(super) batches: usize,
}

/// One pass over the training rows in `order`, a gradient step per batch.
/// Returns the network after the pass, the weighted loss sum and its weight.
#[allow(clippy::too_many_arguments)]
pub(super) fn train_epoch(
    mut net: Net,
    optim: &mut ModuleOptimizer,
    order: &[usize],
    d: &Batches<'_>,
    epoch: usize,
    lr: f64,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Net, f64, f64), TrainError> {
    let (mut epoch_loss, mut epoch_w) = (0.0f64, 0.0f64);
    let mut xb: Vec<f32> = Vec::with_capacity(d.batch_size * d.d_in);
    let mut tb: Vec<f32> = Vec::with_capacity(d.batch_size * 2);
    for (b, chunk) in order.chunks(d.batch_size).enumerate() {
        let n = chunk.len();
        xb.clear();
        tb.clear();
        let wsum = fill_batch(
            chunk, d.feats, d.labels, d.d_in, d.n_out, d.w_slow, &mut xb, &mut tb,
        );
        let loss = batch_loss(&net, &xb, &tb, n, d.d_in, d.n_out, wsum, device);
        let loss_value = f64::from(loss.clone().into_scalar::<f32>());
        if !loss_value.is_finite() {
            return Err(TrainError::Diverged {
                epoch,
                loss: loss_value,
            });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(lr, net, grads);
        epoch_loss += loss_value * wsum;
        epoch_w += wsum;
        progress(Progress::Batch {
            epoch,
            batch: b + 1,
            batches: d.batches,
            loss: loss_value,
        });
    }
    Ok((net, epoch_loss, epoch_w))
}

/// What [`fit`] leaves: the best epoch's layers and the epochs' record.
pub(super) struct Fitted {
    pub(super) layers: Vec<Layer>,
    pub(super) best_epoch: usize,
    pub(super) history: Vec<EpochStats>,
    pub(super) stopped_early: bool,
}

/// Trains the network: seeded initialisation, then epochs of shuffled
/// batches, each followed by validation; keeps the best epoch's weights and
/// stops once `cfg.patience` epochs have not improved on it.
#[allow(clippy::too_many_arguments)]
pub(super) fn fit(
    cfg: &TrainConfig,
    widths: &[usize],
    data: &Batches<'_>,
    train_idx: &[usize],
    val_x: &[f32],
    val_y: &[bool],
    started: Instant,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, TrainError> {
    // ---- network and optimiser ----
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    // Nothing below draws from burn's RNG; seed it anyway so that any future
    // use stays reproducible.
    device.seed(cfg.seed);
    let mut init_rng = stream_rng(cfg.seed, 2);
    let mut net = Net::init(widths, &mut init_rng, &device);
    let mut optim = AdamConfig::new().init();

    let mut shuffle_rng = stream_rng(cfg.seed, 3);
    let mut order = train_idx.to_vec();
    let mut history = Vec::new();
    let mut best: Option<(f64, usize, Vec<Layer>)> = None;
    let mut since_best = 0usize;
    let mut stopped_early = false;

    for epoch in 1..=cfg.max_epochs {
        shuffle_rng.shuffle(&mut order);
        let (next, epoch_loss, epoch_w) = train_epoch(
            net,
            &mut optim,
            &order,
            data,
            epoch,
            cfg.learning_rate,
            &device,
            progress,
        )?;
        net = next;
        let outputs = validation_outputs(&net, val_x, data.d_in, data.n_out, &plain)?;
        let vs = val_stats(&outputs, data.n_out, val_y, data.w_slow);
        if !vs.loss.is_finite() {
            return Err(TrainError::Diverged {
                epoch,
                loss: vs.loss,
            });
        }
        let improved = best
            .as_ref()
            .is_none_or(|(b, _, _)| vs.loss < b - cfg.min_delta);
        if improved {
            best = Some((vs.loss, epoch, net.to_layers()?));
            since_best = 0;
        } else {
            since_best += 1;
        }
        let stats = EpochStats {
            epoch,
            train_loss: if epoch_w > 0.0 {
                epoch_loss / epoch_w
            } else {
                0.0
            },
            val_loss: vs.loss,
            val_accuracy: vs.accuracy,
            val_false_submit_rate: vs.false_submit_rate,
            val_false_revoke_rate: vs.false_revoke_rate,
            improved,
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        history.push(stats);
        progress(Progress::Epoch(stats));
        if since_best >= cfg.patience.max(1) && epoch < cfg.max_epochs {
            stopped_early = true;
            let best_epoch = best.as_ref().map_or(epoch, |b| b.1);
            progress(Progress::EarlyStopped { epoch, best_epoch });
            break;
        }
    }

    let (_, best_epoch, layers) = match best {
        Some(b) => b,
        None => (f64::NAN, 0, net.to_layers()?),
    };
    Ok(Fitted {
        layers,
        best_epoch,
        history,
        stopped_early,
    })
}

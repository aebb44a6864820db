//! The fused forward pass: the whole network in one cubecl kernel (WGSL on
//! wgpu), one dispatch per batch.
//!
//! One cube (workgroup) scores `rows` vectors of `lanes` reads (4 x 4 = 16
//! reads by default; fewer in small buckets): every value is a
//! `Vector<f32, lanes>`, so a weight loaded once serves `rows * lanes`
//! reads. Unit `u` of a hidden layer computes the neurons `u + t * units`
//! (`t < tile`, 8 by default, so 32 units cover a 256-wide layer) for every
//! row: the dot product of the previous layer (in shared memory) with each
//! neuron's weight column (weights are stored `[inputs][outputs]`, the
//! outputs padded with zero columns to `units * tile`, so neighbouring units
//! load neighbouring words and no neuron needs a bounds test), plus the
//! bias, in registers; `sync_cube()` once every unit has read the layer's
//! inputs; ReLU into the same shared buffer; `sync_cube()`; next layer. The
//! output layer is folded on the host into one score vector (`w[1] - w[0]`
//! and `b[1] - b[0]` for two outputs, `w[0]` and `b[0]` for one), so the
//! head is a single dot product per read: `parts` units each sum a strided
//! share of it into shared memory, `sync_cube()`, and unit `r` adds row
//! `r`'s shares and the bias and writes its scores. No subgroup (plane)
//! operations: lavapipe runs it, and so does any WebGPU device.
//!
//! All weights of a model live in one flat device buffer uploaded once;
//! where each layer starts is a comptime [`Plan`], so the layer loop, the
//! offsets and the widths are constants of the compiled kernel (one
//! pipeline per model and (lanes, rows) pair: at most 5 per model).

use augur_predictor::Model;
use cubecl::client::Client;
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::GpuError;

/// Units per cube at most (WebGPU's default `maxComputeInvocationsPerWorkgroup`).
const MAX_UNITS: usize = 256;

/// Units that share the head's dot product before the row's sum.
const HEAD_PARTS: usize = 32;

/// Reads per vector at most (a `vec4<f32>` per value).
pub(crate) const MAX_LANES: usize = 4;

/// One hidden layer: where its weights (`[inputs][outputs]`, the outputs
/// padded with zero columns to the plan's `units * tile`) and biases start
/// in the flat buffer.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct Dense {
    inputs: usize,
    w: usize,
    b: usize,
}

/// The kernel's comptime shape: every width and offset of one model, and
/// how a cube spreads its work.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Inputs per read.
    inputs: usize,
    /// Values per row of the shared buffer: the widest layer input, or
    /// `units * tile` where that is wider.
    width: usize,
    /// Units per cube.
    units: usize,
    /// Neurons per unit and hidden layer (`o = unit + t * units`).
    tile: usize,
    /// Vectors of reads per cube (each `lanes` reads).
    rows: usize,
    /// Units sharing the head.
    parts: usize,
    /// The hidden layers, in order.
    hidden: Vec<Dense>,
    /// The head: its inputs, where its score weights and score bias are.
    head_inputs: usize,
    head_w: usize,
    head_b: usize,
}

/// The forward pass of `rows * N` reads per cube: `x` is `[group][input]`,
/// a group being `N` consecutive reads side by side in a vector and cube
/// `c` scoring groups `c * rows ..`; `out` one score vector per group; `w`
/// the flat weights `plan` describes.
#[cube(launch_unchecked)]
fn forward<N: Size>(
    x: &[Vector<f32, N>],
    w: &[f32],
    out: &mut [Vector<f32, N>],
    #[comptime] plan: Plan,
) {
    let width = comptime!(plan.width);
    let units = comptime!(plan.units);
    let tile = comptime!(plan.tile);
    let rows = comptime!(plan.rows);
    let parts = comptime!(plan.parts);
    let n_in = comptime!(plan.inputs);
    let stride = comptime!(plan.units * plan.tile);
    // [row][value], then the head's shares [row][part].
    let mut buf = Shared::<[Vector<f32, N>]>::new_slice(comptime!(
        plan.rows * plan.width + plan.rows * plan.parts
    ));
    let unit = UNIT_POS as usize;
    let group = CUBE_POS * rows;

    #[unroll]
    for r in 0..rows {
        let mut i = unit;
        while i < n_in {
            buf[r * width + i] = x[(group + r) * n_in + i];
            i += units;
        }
    }
    sync_cube();

    #[unroll]
    for l in 0..comptime!(plan.hidden.len()) {
        let layer = comptime!(plan.hidden[l].clone());
        let k = comptime!(layer.inputs);
        let w_at = comptime!(layer.w);
        let b_at = comptime!(layer.b);
        let mut acc = Array::<Vector<f32, N>>::new(comptime!(plan.rows * plan.tile));
        #[unroll]
        for t in 0..tile {
            let bias = Vector::<f32, N>::new(w[b_at + unit + t * units]);
            #[unroll]
            for r in 0..rows {
                acc[r * tile + t] = bias;
            }
        }
        let mut xv = Array::<Vector<f32, N>>::new(comptime!(plan.rows));
        for j in 0..k {
            #[unroll]
            for r in 0..rows {
                xv[r] = buf[r * width + j];
            }
            #[unroll]
            for t in 0..tile {
                let wv = Vector::<f32, N>::new(w[w_at + j * stride + unit + t * units]);
                #[unroll]
                for r in 0..rows {
                    acc[r * tile + t] += xv[r] * wv;
                }
            }
        }
        // Every unit has read the layer's inputs before any overwrites them.
        sync_cube();
        #[unroll]
        for t in 0..tile {
            #[unroll]
            for r in 0..rows {
                buf[r * width + unit + t * units] =
                    max(acc[r * tile + t], Vector::<f32, N>::new(0.0));
            }
        }
        sync_cube();
    }

    let red = comptime!(plan.rows * plan.width);
    let k = comptime!(plan.head_inputs);
    let w_at = comptime!(plan.head_w);
    let b_at = comptime!(plan.head_b);
    if unit < parts {
        #[unroll]
        for r in 0..rows {
            let mut acc = Vector::<f32, N>::new(0.0);
            let mut j = unit;
            while j < k {
                acc += buf[r * width + j] * Vector::<f32, N>::new(w[w_at + j]);
                j += parts;
            }
            buf[red + r * parts + unit] = acc;
        }
    }
    sync_cube();
    if unit < rows {
        let mut s = Vector::<f32, N>::new(w[b_at]);
        for p in 0..parts {
            s += buf[red + unit * parts + p];
        }
        out[group + unit] = s;
    }
}

/// A model's weights in one device buffer, and the plan of its kernel.
pub(crate) struct Fused {
    client: Client,
    weights: Handle,
    weights_len: usize,
    /// The plan, `rows` left at 1 (each bucket sets its own).
    plan: Plan,
    /// Shared memory the device gives a cube, bytes.
    max_shared: usize,
    /// Vectors of reads per cube at most.
    max_rows: usize,
}

/// An experiment knob from the environment: `name` if it holds a number
/// in `range`, else `default`.
fn env_setting(name: &str, range: std::ops::RangeInclusive<usize>, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| range.contains(v))
        .unwrap_or(default)
}

/// Neurons per unit and layer (`AUGUR_FUSED_TILE`, for experiments;
/// default 8, the fastest of 1, 2, 4, 8, 16 on lavapipe).
fn tile_setting() -> usize {
    env_setting("AUGUR_FUSED_TILE", 1..=16, 8)
}

/// Vectors of reads per cube at most (`AUGUR_FUSED_ROWS`, for
/// experiments; default 4, of 1, 2, 4, 8 on lavapipe: 8 was no faster).
fn rows_setting() -> usize {
    env_setting("AUGUR_FUSED_ROWS", 1..=8, 4)
}

impl Fused {
    /// Lays `model` out for the kernel and uploads it through `client`.
    pub(crate) fn upload(client: &Client, model: &Model) -> Fused {
        let layers = model.layers();
        let (head, hidden) = layers
            .split_last()
            .expect("a model has at least one layer (Model checks it)");
        let props = &client.properties().hardware;
        let max_units = (props.max_units_per_cube as usize).clamp(1, MAX_UNITS);
        let k = head.inputs;
        let parts = HEAD_PARTS.min(k).min(max_units);
        let widest = hidden.iter().map(|l| l.outputs).max().unwrap_or(1);
        let tile = tile_setting().max(widest.div_ceil(max_units)).min(widest);
        let max_rows = rows_setting();
        let units = widest.div_ceil(tile).max(parts).max(max_rows);
        let stride = units * tile;

        let mut flat: Vec<f32> = Vec::new();
        let mut dense = Vec::with_capacity(hidden.len());
        for l in hidden {
            let w = flat.len();
            flat.resize(w + l.inputs * stride, 0.0);
            for o in 0..l.outputs {
                for i in 0..l.inputs {
                    flat[w + i * stride + o] = l.weights[o * l.inputs + i];
                }
            }
            let b = flat.len();
            flat.extend_from_slice(&l.bias);
            flat.resize(b + stride, 0.0);
            dense.push(Dense {
                inputs: l.inputs,
                w,
                b,
            });
        }
        // The head folded into the score: out[1] - out[0], or out[0].
        let head_w = flat.len();
        if head.outputs == 2 {
            flat.extend((0..k).map(|i| head.weights[k + i] - head.weights[i]));
            flat.push(head.bias[1] - head.bias[0]);
        } else {
            flat.extend_from_slice(&head.weights[..k]);
            flat.push(head.bias[0]);
        }
        let head_b = flat.len() - 1;

        let inputs = model.feature_set().n_inputs();
        let mut width = layers.iter().map(|l| l.inputs).max().unwrap_or(inputs);
        if !hidden.is_empty() {
            width = width.max(stride);
        }
        let plan = Plan {
            inputs,
            width,
            units,
            tile,
            rows: 1,
            parts,
            hidden: dense,
            head_inputs: k,
            head_w,
            head_b,
        };
        let weights = client.create_from_slice(f32::as_bytes(&flat));
        Fused {
            client: client.clone(),
            weights,
            weights_len: flat.len(),
            plan,
            max_shared: props.max_shared_memory_size,
            max_rows,
        }
    }

    /// (reads per vector, vectors per cube) for a batch padded to `bucket`
    /// (a power of two): as many as the bucket and the device's shared
    /// memory allow, up to [`MAX_LANES`] and the rows setting.
    pub(crate) fn layout(&self, bucket: usize) -> (usize, usize) {
        let mut lanes = bucket.min(MAX_LANES);
        let mut rows = (bucket / lanes).min(self.max_rows);
        let words = self.plan.width + self.plan.parts;
        while rows * lanes * words * size_of::<f32>() > self.max_shared {
            if rows > 1 {
                rows /= 2;
            } else if lanes > 1 {
                lanes /= 2;
            } else {
                break;
            }
        }
        (lanes, rows)
    }

    /// Scores of the first `n` of `bucket` reads whose inputs are `padded`
    /// (`bucket * inputs` values; the padding reads are zeros).
    pub(crate) fn scores(
        &self,
        padded: &[f32],
        n: usize,
        bucket: usize,
    ) -> Result<Vec<f32>, GpuError> {
        let (lanes, rows) = self.layout(bucket);
        let inputs = self.plan.inputs;
        debug_assert_eq!(padded.len(), bucket * inputs);
        debug_assert_eq!(bucket % (lanes * rows), 0);
        let groups = bucket / lanes;
        let cubes = groups / rows;
        // [group][input][lane]: the reads of a group side by side.
        let interleaved;
        let x: &[f32] = if lanes == 1 {
            padded
        } else {
            let mut v = vec![0f32; padded.len()];
            for (g, block) in padded.chunks_exact(lanes * inputs).enumerate() {
                let dst = &mut v[g * lanes * inputs..(g + 1) * lanes * inputs];
                for (r, read) in block.chunks_exact(inputs).enumerate() {
                    for (i, &val) in read.iter().enumerate() {
                        dst[i * lanes + r] = val;
                    }
                }
            }
            interleaved = v;
            &interleaved
        };
        let mut plan = self.plan.clone();
        plan.rows = rows;
        let client = &self.client;
        let xh = client.create_from_slice(f32::as_bytes(x));
        let oh = client.empty(bucket * size_of::<f32>());
        // SAFETY: the kernel indexes `x` below `groups * plan.inputs`
        // vectors (`group + r < cubes * rows = groups`, `i < plan.inputs`),
        // `w` below `weights_len` (every offset and width comes from the
        // plan that laid the buffer out: `unit + t * units < stride`, the
        // padded row length), `out` below `groups`, and its shared buffer
        // below `rows * (width + parts)` (the size it declares; `unit <
        // units <= width`, `unit < parts` for the shares, `rows <= units`);
        // the buffers hold exactly that many vectors of `lanes` floats
        // (the weights: scalars). Every loop is bounded by a constant.
        unsafe {
            forward::launch_unchecked(
                client,
                CubeCount::Static(cubes as u32, 1, 1),
                CubeDim::new_1d(plan.units as u32),
                lanes,
                BufferArg::from_raw_parts(xh, groups * inputs),
                BufferArg::from_raw_parts(self.weights.clone(), self.weights_len),
                BufferArg::from_raw_parts(oh.clone(), groups),
                plan,
            );
        }
        let bytes = client
            .read_one(oh)
            .map_err(|e| GpuError::Device(format!("{e:?}")))?;
        let out = f32::from_bytes(&bytes);
        if out.len() < n {
            return Err(GpuError::Device(format!(
                "the fused kernel returned {} scores for {n} reads",
                out.len()
            )));
        }
        Ok(out[..n].to_vec())
    }
}

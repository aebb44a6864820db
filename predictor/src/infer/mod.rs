//! Inference: the f32 reference path and the integer fast path.
//!
//! # Quantization scheme: per-layer power-of-two scales
//!
//! LinnOS scales every weight and the first bias by 1000 and the output bias
//! by 10^6: a weight below 0.0005 rounds to 0, and a layer whose weights are
//! all below 0.05 keeps about 6 bits. Augur instead gives each layer `k` its
//! own power-of-two weight scale `2^e_k`, the largest for which every
//! quantized weight fits in 16 bits (|Wq| <= 32767), so every layer keeps 15
//! bits of resolution relative to its largest weight, and rescales hidden
//! activations with a rounding right shift (cheap and exact in C and in the
//! kernel). On random 31-256-2 models (test
//! `per_layer_scaling_beats_linnos_x1000`) its mean score error against the
//! exact f32 model is about 100x smaller than the LinnOS x1000 scheme's
//! (3.6e-4 vs 4.1e-2), and it changed no decision out of 8000 where x1000
//! changed 0.1%. Scales are in the model file ([`crate::model`] docs); the
//! generated C code embeds the same integers.
//!
//! # The integer path, to the bit
//!
//! All arithmetic is two's-complement integer arithmetic; no step wraps (see
//! the bounds below). `>>` is an arithmetic right shift of a non-negative
//! value (so also a logical one).
//!
//! 1. **Input.** LinnOS: `x0[i]` = the 31 decimal digits of
//!    [`crate::features::encode_linnos_int`], each in `0..=9` (exponent
//!    `a_0 = 0`); `linnos-ext`: the 39 digits of
//!    [`crate::features::encode_linnos_ext_int`], likewise; `linnos-write`:
//!    the 47 digits of [`crate::features::encode_linnos_write_int`]. Heimdall: the 12 raw integer features of
//!    [`crate::features::heimdall_raw_int`] mapped by the model's
//!    [`crate::features::IntScaler`] to `0..=1024` (`a_0 = 10`).
//! 2. **Layer k** (`n` inputs, `m` outputs, quantized weights `Wq[o][i]`
//!    (i16), bias `bq[o]` (i64), output shift `r`), for each output `o`:
//!    `acc = bq[o] + 2^s * sum_i Wq[o][i] * u[i]`, where `u = x` and `s = 0`
//!    for layer 1 and for the last layer, and for every other hidden layer
//!    (k >= 2, ReLU) step 2b gives `u` and `s`. The sum is exact in any order.
//!
//!    **2b. Input rescaling of hidden layers k >= 2.** With `x` the previous
//!    hidden layer's outputs (`0 <= x <= 2^31 - 1`, step 3):
//!    `mx = max_i x[i]`, `s = max(0, bitlen(mx) - 16)` (`bitlen(v)` = the
//!    number of bits of `v`, `bitlen(0) = 0`; so `0 <= s <= 15`), and
//!    `u[i] = min((x[i] + h_s) >> s, 65535)` with `h_s = 2^(s-1)` if `s > 0`
//!    else 0 (round half up). So `0 <= u <= 2^16 - 1`, and `u = x` whenever
//!    every input is below `2^16`. This keeps 16 significant bits relative
//!    to the largest activation of this input (a per-input, power-of-two
//!    block scale) and lets the kernels multiply 16-bit values.
//! 3. **Hidden layers** (ReLU): `x'[o] = min((max(acc, 0) + h) >> r, 2^31 - 1)`
//!    with `h = 2^(r-1)` if `r > 0` else 0 (round half up). `x'` fits in i32.
//! 4. **Last layer** (no activation, `r = 0`): `out[o] = acc`.
//! 5. **Score**: `out[1] - out[0]` for 2 outputs, `out[0]` for 1, as i64.
//!    **Tie rule: score > 0 means slow; score <= 0 (including 0) means fast.**
//!
//! Step 2b is new in this version of the spec (the model file format is
//! unchanged, v1): before it, later hidden layers multiplied the full
//! `x` (up to 31 bits). Models with one hidden layer (the LinnOS base shape,
//! the shipped default model) score bit for bit as before; deeper models
//! differ by the rounding of `u` (on random 31-256-256-2 models the mean
//! |score error| against the exact f64 model went from 7.4e-5 to 8.3e-5,
//! test `deep_models_score_error_vs_f64`).
//!
//! ## Why nothing overflows
//!
//! The loader ([`crate::model::Model::from_bytes`]) guarantees: `|Wq| <= 32767
//! < 2^15`; width `<= 1024 = 2^10`; layer-1 `|bq| <= 2^30`, later `|bq| <= 2^40`.
//! - Layer 1 inputs are at most 9 (31, 39 or 47 LinnOS digits) or 1024 (12
//!   Heimdall inputs), so `n * max|x0| <= 12288 < 2^14` and every partial sum satisfies
//!   `|acc| <= 2^30 + 2^14 * 2^15 < 2^31`: i32 suffices.
//! - Step 2b: `x + h_s <= 2^31 - 1 + 2^14 < 2^32` (exact in u32 or i64).
//! - Hidden layers k >= 2 (the kernels): write `u = lo + 2^8 * hi` with the
//!   8-bit digits `lo = u & 255` and `hi = u >> 8`, both in `0..=255`. A
//!   pair product `Wq[o][i] * d[i] + Wq[o][j] * d[j]` of digits has magnitude
//!   at most `2 * 32767 * 255 = 16711170`, and a sum of at most 128 such
//!   pairs (256 inputs) at most `2139029760 < 2^31`: each digit's dot product
//!   over a block of up to 128 input pairs is exact in i32 (`vpmaddwd` /
//!   `vpdpwssd` of i16 values: a digit and a weight both fit in i16, and no
//!   pair is `-32768 * -32768`). Blocks are then summed in i64:
//!   `|sum_i Wq * u| <= 2^10 * 2^15 * 2^16 = 2^41`, times `2^s <= 2^15` is
//!   `< 2^56`, so `|acc| <= 2^40 + 2^56 < 2^57`.
//! - The last layer: `0 <= x <= 2^31 - 1` (step 3), so every partial sum has
//!   `|acc| <= 2^40 + 2^10 * 2^15 * 2^31 < 2^57`; i64 suffices.
//! - Step 3: `acc + h <= 2^57 + 2^61 < 2^63` (`r <= 62`); step 5:
//!   `|score| < 2^58`.
//!
//! Debug builds check every addition (Rust's overflow checks), and the tests
//! run the edge cases (all inputs at their maxima, weights at +-32767,
//! activations at the clamp, rounding ties in step 2b).
//!
//! # Kernels
//!
//! [`Packed`] re-lays the hidden layers out in tiles of 32 outputs with the
//! inputs taken in pairs and the two weights of each output interleaved, so
//! one step is `acc[j] += w[j][0] * v[2p] + w[j][1] * v[2p+1]` (on x86 exactly
//! `vpmaddwd` + `vpaddd`, or one `vpdpwssd`). Layer 1 (i32) multiplies the
//! inputs `x` themselves (they fit in i16). Hidden layers k >= 2 run step 2b
//! once per input and then, per 8-bit digit of `u`, the same step into i32
//! accumulators, flushed into i64 every 128 pairs (the bound above). Input
//! pairs that are both zero are skipped, which is exact and common (leading
//! zero digits, ReLU zeros). The last layer is a contiguous i64 dot product
//! per output. Each kernel is compiled portably (baseline target, any
//! architecture) and, on x86-64, again with AVX2 enabled and with AVX-512
//! (F, BW, DQ, VL, VNNI) enabled, with explicit `std::arch` intrinsics for
//! the hidden layers; [`Kernel::Auto`] picks the best the CPU reports at run
//! time. All of them compute the spec above to the bit (the tests compare
//! each with [`reference`](mod@reference), a deliberately plain scalar
//! version of the spec).

use augur_feature_store::HistorySnapshot;

use crate::features::{
    FeatureSet, HEIMDALL_INPUTS, LINNOS_EXT_INPUTS, LINNOS_INPUTS, LINNOS_WRITE_INPUTS, MAX_INPUTS,
    ReadInfo, encode_linnos, encode_linnos_ext, encode_linnos_ext_int, encode_linnos_int,
    encode_linnos_write, encode_linnos_write_int, heimdall_raw, heimdall_raw_int,
};
use crate::model::{Activation, MAX_WIDTH, Model};

/// Largest hidden activation (the clamp in step 3 of the spec).
pub const ACT_MAX: i64 = i32::MAX as i64;
/// Bits a hidden layer after the first rescales its inputs to (step 2b of
/// the spec).
pub const IN16_BITS: u32 = 16;
/// Largest rescaled input `u` of a hidden layer after the first: `2^16 - 1`.
pub const IN16_MAX: i64 = (1 << IN16_BITS) - 1;

/// Which compiled version of the integer kernels to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The best this CPU supports (AVX-512 VNNI, else AVX2, else portable).
    Auto,
    /// The portable build (no run-time CPU features).
    Portable,
    /// The AVX2 build where the CPU has AVX2 (even if it has AVX-512),
    /// else the portable one. For tests and benchmarks.
    Avx2,
}

mod kernels;
use kernels::{Isa, batch, forward, with_scratch};
pub use kernels::{Packed, Scratch};

/// Map an integer score to the decision (the tie rule: 0 is fast).
#[inline]
pub fn is_slow(score: i64) -> bool {
    score > 0
}

/// One input of [`Model::score_int_batch`]: a replica's history and the read.
pub trait ScoreInput {
    /// The replica's history at routing time.
    fn snapshot(&self) -> &HistorySnapshot;
    /// The read being routed.
    fn read(&self) -> ReadInfo;
}

impl ScoreInput for (HistorySnapshot, ReadInfo) {
    fn snapshot(&self) -> &HistorySnapshot {
        &self.0
    }
    fn read(&self) -> ReadInfo {
        self.1
    }
}

impl Model {
    /// Model input for the f32 path: LinnOS digits, or Heimdall raw features
    /// MinMax-scaled. Writes `n_inputs()` values and returns that count.
    #[inline]
    pub fn encode_f32(
        &self,
        h: &HistorySnapshot,
        r: ReadInfo,
        out: &mut [f32; MAX_INPUTS],
    ) -> usize {
        match self.fs {
            FeatureSet::LinnOs => {
                let mut v = [0f32; LINNOS_INPUTS];
                encode_linnos(h, &mut v);
                out[..LINNOS_INPUTS].copy_from_slice(&v);
                LINNOS_INPUTS
            }
            FeatureSet::LinnOsExt => {
                let mut v = [0f32; LINNOS_EXT_INPUTS];
                encode_linnos_ext(h, &mut v);
                out[..LINNOS_EXT_INPUTS].copy_from_slice(&v);
                LINNOS_EXT_INPUTS
            }
            FeatureSet::LinnOsWrite => {
                let mut v = [0f32; LINNOS_WRITE_INPUTS];
                encode_linnos_write(h, &mut v);
                out[..LINNOS_WRITE_INPUTS].copy_from_slice(&v);
                LINNOS_WRITE_INPUTS
            }
            FeatureSet::Heimdall => {
                let mut v = [0f32; HEIMDALL_INPUTS];
                heimdall_raw(h, r, &mut v);
                if let Some(s) = &self.scaler {
                    s.apply(&mut v);
                }
                out[..HEIMDALL_INPUTS].copy_from_slice(&v);
                HEIMDALL_INPUTS
            }
        }
    }

    /// Model input for the integer path (step 1 of the spec). Writes
    /// `n_inputs()` values and returns that count.
    #[inline]
    pub fn encode_int(
        &self,
        h: &HistorySnapshot,
        r: ReadInfo,
        out: &mut [i32; MAX_INPUTS],
    ) -> usize {
        match self.fs {
            FeatureSet::LinnOs => {
                let mut v = [0i32; LINNOS_INPUTS];
                encode_linnos_int(h, &mut v);
                out[..LINNOS_INPUTS].copy_from_slice(&v);
                LINNOS_INPUTS
            }
            FeatureSet::LinnOsExt => {
                let mut v = [0i32; LINNOS_EXT_INPUTS];
                encode_linnos_ext_int(h, &mut v);
                out[..LINNOS_EXT_INPUTS].copy_from_slice(&v);
                LINNOS_EXT_INPUTS
            }
            FeatureSet::LinnOsWrite => {
                let mut v = [0i32; LINNOS_WRITE_INPUTS];
                encode_linnos_write_int(h, &mut v);
                out[..LINNOS_WRITE_INPUTS].copy_from_slice(&v);
                LINNOS_WRITE_INPUTS
            }
            FeatureSet::Heimdall => {
                let mut raw = [0u32; HEIMDALL_INPUTS];
                heimdall_raw_int(h, r, &mut raw);
                if let Some(s) = &self.int_scaler {
                    s.apply(&raw, &mut out[..HEIMDALL_INPUTS]);
                }
                HEIMDALL_INPUTS
            }
        }
    }

    /// f32 path on an encoded input (`n_inputs()` values, see
    /// [`Model::encode_f32`]): the slow score, > 0 means slow.
    pub fn score_f32_encoded(&self, x: &[f32]) -> f32 {
        let mut a = [0f32; MAX_WIDTH];
        let mut b = [0f32; MAX_WIDTH];
        let n0 = self.fs.n_inputs().min(x.len());
        a[..n0].copy_from_slice(&x[..n0]);
        for l in &self.layers {
            for (o, (row, &bias)) in l.weights.chunks_exact(l.inputs).zip(&l.bias).enumerate() {
                let mut acc = bias;
                for (&w, &v) in row.iter().zip(&a[..l.inputs]) {
                    acc += w * v;
                }
                b[o] = if l.activation == Activation::Relu {
                    acc.max(0.0)
                } else {
                    acc
                };
            }
            std::mem::swap(&mut a, &mut b);
        }
        if self.n_outputs() == 2 {
            a[1] - a[0]
        } else {
            a[0]
        }
    }

    /// f32 reference path: encoded features in, "slow" score out (> 0 means
    /// slow: `out[1] - out[0]` or `out[0]`).
    pub fn score_f32(&self, snap: &HistorySnapshot, r: ReadInfo) -> f32 {
        let mut x = [0f32; MAX_INPUTS];
        let n = self.encode_f32(snap, r, &mut x);
        self.score_f32_encoded(&x[..n])
    }

    /// Integer fast path (bit-specified, see the module docs): score as i64,
    /// > 0 means slow. Allocation-free after a thread's first call.
    pub fn score_int(&self, snap: &HistorySnapshot, r: ReadInfo) -> i64 {
        let mut x = [0i32; MAX_INPUTS];
        let n = self.encode_int(snap, r, &mut x);
        with_scratch(&self.packed, |s| {
            forward(&self.packed, &x[..n], s, Kernel::Auto)
        })
    }

    /// Integer decision: [`Model::score_int`] > 0.
    pub fn predict_slow(&self, snap: &HistorySnapshot, r: ReadInfo) -> bool {
        is_slow(self.score_int(snap, r))
    }

    /// Integer path on an already encoded input (`n_inputs()` values from
    /// [`Model::encode_int`]; values outside the feature set's range void the
    /// overflow guarantee). Fewer values than `n_inputs()` score 0 (fast).
    pub fn score_int_encoded(&self, x: &[i32], s: &mut Scratch, k: Kernel) -> i64 {
        if x.len() < self.fs.n_inputs() {
            return 0;
        }
        forward(&self.packed, x, s, k)
    }

    /// Batch integer path: one score per input. `out` should be as long as
    /// `inputs`; only the first `min(len)` are scored.
    /// Takes any [`ScoreInput`] (a `(snapshot, read)` pair, or the policies'
    /// [`crate::PredictInput`]), so callers score their own records in place.
    pub fn score_int_batch<I: ScoreInput>(&self, inputs: &[I], out: &mut [i64]) {
        const CHUNK: usize = 64;
        let n = self.fs.n_inputs();
        let mut xs = [0i32; CHUNK * MAX_INPUTS];
        with_scratch(&self.packed, |s| {
            for (ins, outs) in inputs.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
                for (i, x) in ins.iter().zip(xs.chunks_exact_mut(n)) {
                    let mut v = [0i32; MAX_INPUTS];
                    self.encode_int(i.snapshot(), i.read(), &mut v);
                    x.copy_from_slice(&v[..n]);
                }
                batch(&self.packed, n, &xs[..ins.len() * n], outs, s, Kernel::Auto);
            }
        })
    }

    /// Batch integer path on encoded inputs laid end to end (`n_inputs()`
    /// values each); one score per complete input into `out`.
    pub fn score_int_batch_encoded(&self, xs: &[i32], out: &mut [i64], s: &mut Scratch, k: Kernel) {
        batch(&self.packed, self.fs.n_inputs(), xs, out, s, k)
    }

    /// Name of the integer kernel [`Kernel::Auto`] runs on this CPU.
    pub fn int_kernel_name(&self) -> &'static str {
        match self.packed.isa {
            Isa::Avx512 => "avx512-vnni",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}

pub mod reference;

#[cfg(test)]
mod tests;

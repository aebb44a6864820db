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

use std::cell::RefCell;

use augur_feature_store::HistorySnapshot;

use crate::features::{
    FeatureSet, HEIMDALL_INPUTS, LINNOS_EXT_INPUTS, LINNOS_INPUTS, LINNOS_WRITE_INPUTS, MAX_INPUTS,
    ReadInfo, encode_linnos, encode_linnos_ext, encode_linnos_ext_int, encode_linnos_int,
    encode_linnos_write, encode_linnos_write_int, heimdall_raw, heimdall_raw_int,
};
use crate::model::{Activation, MAX_WIDTH, Model, QuantLayer};

/// Largest hidden activation (the clamp in step 3 of the spec).
pub const ACT_MAX: i64 = i32::MAX as i64;
/// Bits a hidden layer after the first rescales its inputs to (step 2b of
/// the spec).
pub const IN16_BITS: u32 = 16;
/// Largest rescaled input `u` of a hidden layer after the first: `2^16 - 1`.
pub const IN16_MAX: i64 = (1 << IN16_BITS) - 1;
/// Most input pairs (so 256 inputs) one block of i32 digit accumulators
/// takes in step 2b (the overflow bound in the module docs).
const PAIRS_PER_BLOCK: usize = 128;

const T32: usize = 32;

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

/// The instruction sets the integer kernels can use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Isa {
    Portable,
    Avx2,
    /// AVX-512 F, BW, DQ, VL and VNNI (`vpdpwssd`).
    Avx512,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Hidden layer 1: tiles of T32, i32 accumulators.
    First32,
    /// Hidden layer k >= 2: inputs rescaled to 16 bits (step 2b), tiles of
    /// T32, i32 accumulators per 8-bit digit and block of pairs, then i64.
    Hidden16,
    /// Last layer: row-major dot products, i64.
    Out64,
}

#[derive(Clone, Debug)]
struct PLayer {
    kind: Kind,
    inputs: usize,
    outputs: usize,
    /// Outputs rounded up to the tile (hidden layers) or equal to outputs.
    padded: usize,
    shift: u32,
    /// Tiled (hidden) or row-major (last) weights; zero in padding.
    w: Vec<i16>,
    /// Bias, zero in padding.
    bias: Vec<i64>,
    /// The bias as i32 (layer 1 only, where `|bias| <= 2^30`), else empty.
    bias32: Vec<i32>,
}

/// Weights re-laid out for the fast path (built from the quantized layers).
#[derive(Clone, Debug)]
pub struct Packed {
    layers: Vec<PLayer>,
    /// Widest padded layer output.
    width: usize,
    /// Most input pairs of any layer.
    pairs: usize,
    isa: Isa,
}

impl Packed {
    pub(crate) fn new(q: &[QuantLayer]) -> Packed {
        let last = q.len().saturating_sub(1);
        let mut width = 0;
        let mut pairs = 0;
        let layers = q
            .iter()
            .enumerate()
            .map(|(k, l)| {
                let kind = if k == last {
                    Kind::Out64
                } else if k == 0 {
                    Kind::First32
                } else {
                    Kind::Hidden16
                };
                let tile = if kind == Kind::Out64 { 1 } else { T32 };
                let padded = l.outputs.div_ceil(tile) * tile;
                width = width.max(padded);
                let (n, m) = (l.inputs, l.outputs);
                let np = n.div_ceil(2);
                pairs = pairs.max(np);
                let w = if kind == Kind::Out64 {
                    l.weights.clone()
                } else {
                    // Input pairs (2p, 2p+1) interleaved per output, inputs
                    // padded to even: w[((t * np + p) * T32 + j) * 2 + e] =
                    // Wq[t * T32 + j][2p + e] (0 where 2p + e >= n).
                    let mut w = vec![0i16; padded * np * 2];
                    for o in 0..m {
                        let (t, j) = (o / T32, o % T32);
                        for i in 0..n {
                            let (pi, e) = (i / 2, i % 2);
                            w[((t * np + pi) * T32 + j) * 2 + e] = l.weights[o * n + i];
                        }
                    }
                    w
                };
                let mut bias = vec![0i64; padded];
                bias[..m].copy_from_slice(&l.bias);
                let bias32 = if kind == Kind::First32 {
                    bias.iter().map(|&b| b as i32).collect()
                } else {
                    Vec::new()
                };
                PLayer {
                    kind,
                    inputs: n,
                    outputs: m,
                    padded,
                    shift: l.out_shift,
                    w,
                    bias,
                    bias32,
                }
            })
            .collect();
        Packed {
            layers,
            width,
            pairs,
            isa: detect_isa(),
        }
    }
}

fn detect_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2")
            && has!("avx512f")
            && has!("avx512bw")
            && has!("avx512dq")
            && has!("avx512vl")
            && has!("avx512vnni")
        {
            return Isa::Avx512;
        }
        if has!("avx2") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

impl Packed {
    /// The instruction set kernel choice `k` runs with on this CPU.
    fn isa_for(&self, k: Kernel) -> Isa {
        match k {
            Kernel::Auto => self.isa,
            Kernel::Portable => Isa::Portable,
            Kernel::Avx2 => self.isa.min(Isa::Avx2),
        }
    }
}

/// Working memory of the integer path. Reuse one per thread to avoid
/// allocating per prediction ([`Model::score_int`] keeps one per thread).
#[derive(Clone, Debug, Default)]
pub struct Scratch {
    a: Vec<i32>,
    b: Vec<i32>,
    /// Input pairs of the current layer: `x` (layer 1) or `u` (later
    /// hidden layers), `v[2p] | v[2p+1] << 16`.
    lo: Vec<u32>,
    /// Indices of the input pairs that are not both 0.
    nz: Vec<u16>,
}

impl Scratch {
    /// Scratch sized for `model` (it grows on demand for bigger models).
    pub fn for_model(model: &Model) -> Scratch {
        let mut s = Scratch::default();
        s.fit(&model.packed);
        s
    }

    fn fit(&mut self, p: &Packed) {
        if self.a.len() < p.width {
            self.a.resize(p.width, 0);
            self.b.resize(p.width, 0);
        }
        if self.lo.len() < p.pairs {
            self.lo.resize(p.pairs, 0);
            self.nz.resize(p.pairs, 0);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn with_scratch<R>(p: &Packed, f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|c| match c.try_borrow_mut() {
        Ok(mut s) => {
            s.fit(p);
            f(&mut s)
        }
        Err(_) => {
            let mut s = Scratch::default();
            s.fit(p);
            f(&mut s)
        }
    })
}

/// Step 3 of the spec: ReLU, rounding right shift, clamp.
#[inline(always)]
fn relu_shift(acc: i64, half: i64, r: u32) -> i32 {
    ((acc.max(0) + half) >> r).min(ACT_MAX) as i32
}

#[inline(always)]
fn half_of(r: u32) -> i64 {
    if r == 0 { 0 } else { 1i64 << (r - 1) }
}

/// The two 16-bit halves of a packed pair, as `vpmaddwd` reads them
/// (signed).
#[inline(always)]
fn halves(v: u32) -> (i32, i32) {
    (v as u16 as i16 as i32, (v >> 16) as u16 as i16 as i32)
}

/// Layer 1's inputs as pairs `pairs[p] = x[2p] | x[2p+1] << 16` (each fits
/// in 16 bits, see the bounds; 0 past the end), and in `nz` the indices of
/// the pairs that are not both 0. Returns how many `nz` holds.
#[inline(always)]
fn prep_first(x: &[i32], pairs: &mut [u32], nz: &mut [u16]) -> usize {
    let mut k = 0;
    for (p, (c, dst)) in x.chunks(2).zip(pairs.iter_mut()).enumerate() {
        let x1 = c.get(1).copied().unwrap_or(0);
        *dst = c[0] as u16 as u32 | (x1 as u16 as u32) << 16;
        nz[k] = p as u16;
        k += (*dst != 0) as usize;
    }
    k
}

/// Step 2b of the spec for a hidden layer k >= 2: returns the shift `s` and
/// how many pairs `nz` holds; writes the rescaled inputs `u` as pairs,
/// `pairs[p] = u[2p] | u[2p+1] << 16` (0 past the end; the kernels split
/// them into 8-bit digits), and in `nz` the indices of the pairs whose `u`
/// are not both 0.
#[inline(always)]
fn prep16(x: &[i32], pairs: &mut [u32], nz: &mut [u16]) -> (u32, usize) {
    // Inputs are ReLU outputs (>= 0); max(0) only keeps a stray negative
    // from wrapping.
    let mx = x.iter().fold(0i32, |m, &v| m.max(v)) as u32;
    let s = (u32::BITS - mx.leading_zeros()).saturating_sub(IN16_BITS);
    let h = if s == 0 { 0 } else { 1u32 << (s - 1) };
    // x <= 2^31 - 1 and h <= 2^14, so x + h < 2^32: exact in u32.
    let u = |v: i32| ((v.max(0) as u32 + h) >> s).min(IN16_MAX as u32);
    let np = x.len().div_ceil(2);
    let pairs = &mut pairs[..np];
    for (c, d) in x.chunks_exact(2).zip(pairs.iter_mut()) {
        *d = u(c[0]) | u(c[1]) << 16;
    }
    if x.len() % 2 == 1 {
        pairs[np - 1] = u(x[x.len() - 1]);
    }
    let mut k = 0;
    for (p, &v) in pairs.iter().enumerate() {
        nz[k] = p as u16;
        k += (v != 0) as usize;
    }
    (s, k)
}

#[inline(always)]
fn first32(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]) {
    let c = prep_first(&x[..l.inputs], pairs, nz);
    let (pairs, nz) = (&*pairs, &nz[..c]);
    let np = l.inputs.div_ceil(2);
    let (r, half) = (l.shift, half_of(l.shift));
    for ((wt, bt), out) in
        l.w.chunks_exact(np * 2 * T32)
            .zip(l.bias32.chunks_exact(T32))
            .zip(dst.chunks_exact_mut(T32))
    {
        let mut acc = [0i32; T32];
        acc.copy_from_slice(bt);
        for &p in nz {
            let p = p as usize;
            let (x0, x1) = halves(pairs[p]);
            let w = &wt[p * 2 * T32..(p + 1) * 2 * T32];
            for (a, wj) in acc.iter_mut().zip(w.chunks_exact(2)) {
                *a += wj[0] as i32 * x0 + wj[1] as i32 * x1;
            }
        }
        for (o, &a) in out.iter_mut().zip(&acc) {
            *o = relu_shift(a as i64, half, r);
        }
    }
}

/// Output `o` of a hidden layer k >= 2 from its digit dot products:
/// `acc = bias + 2^s * (lo + 2^8 * hi)` (steps 2b and 3).
#[inline(always)]
fn finish16(bias: i64, dot: i64, s: u32, half: i64, r: u32) -> i32 {
    relu_shift(bias + (dot << s), half, r)
}

#[inline(always)]
fn hidden16(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]) {
    let (s, c) = prep16(&x[..l.inputs], pairs, nz);
    let (pairs, nz) = (&*pairs, &nz[..c]);
    let np = l.inputs.div_ceil(2);
    let (r, half) = (l.shift, half_of(l.shift));
    for ((wt, bt), out) in
        l.w.chunks_exact(np * 2 * T32)
            .zip(l.bias.chunks_exact(T32))
            .zip(dst.chunks_exact_mut(T32))
    {
        let mut dot = [0i64; T32];
        for blk in nz.chunks(PAIRS_PER_BLOCK) {
            let (mut al, mut ah) = ([0i32; T32], [0i32; T32]);
            for &p in blk {
                let p = p as usize;
                let v = pairs[p];
                let (l0, l1) = halves(v & 0x00FF_00FF);
                let (h0, h1) = halves((v >> 8) & 0x00FF_00FF);
                let w = &wt[p * 2 * T32..(p + 1) * 2 * T32];
                for ((a, b), wj) in al.iter_mut().zip(ah.iter_mut()).zip(w.chunks_exact(2)) {
                    let (w0, w1) = (wj[0] as i32, wj[1] as i32);
                    *a += w0 * l0 + w1 * l1;
                    *b += w0 * h0 + w1 * h1;
                }
            }
            for ((d, &a), &b) in dot.iter_mut().zip(&al).zip(&ah) {
                *d += a as i64 + ((b as i64) << 8);
            }
        }
        for ((o, &d), &b) in out.iter_mut().zip(&dot).zip(bt) {
            *o = finish16(b, d, s, half, r);
        }
    }
}

#[inline(always)]
fn out64(l: &PLayer, x: &[i32]) -> i64 {
    let n = l.inputs;
    let x = &x[..n];
    let mut out = [0i64; 2];
    for ((o, row), &b) in out.iter_mut().zip(l.w.chunks_exact(n)).zip(&l.bias) {
        let mut acc = 0i64;
        for (&w, &xi) in row.iter().zip(x) {
            acc += w as i64 * xi as i64;
        }
        *o = b + acc;
    }
    if l.outputs == 2 {
        out[1] - out[0]
    } else {
        out[0]
    }
}

/// One compiled version of the three layer kernels.
trait Kernels {
    fn first32(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]);
    fn hidden16(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]);
    fn out64(l: &PLayer, x: &[i32]) -> i64;
}

/// The kernels compiled for the baseline target.
struct PortableK;

impl Kernels for PortableK {
    #[inline(always)]
    fn first32(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]) {
        first32(l, x, pairs, nz, dst)
    }
    #[inline(always)]
    fn hidden16(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]) {
        hidden16(l, x, pairs, nz, dst)
    }
    #[inline(always)]
    fn out64(l: &PLayer, x: &[i32]) -> i64 {
        out64(l, x)
    }
}

/// The same kernels compiled with AVX2 enabled. Each layer is its own
/// (non-inlined) function so the vectoriser sees one small loop nest.
#[cfg(target_arch = "x86_64")]
struct Avx2K;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{PAIRS_PER_BLOCK, PLayer, T32};
    use std::arch::x86_64::*;

    const _: () = assert!(T32 == 32);

    /// Layer 1 with explicit AVX2 (the autovectoriser leaves this loop
    /// scalar inside the crate). Same arithmetic as [`super::first32`]:
    /// accumulators are i32 (no overflow, see the module docs); after the
    /// ReLU `0 <= acc < 2^31` and the rounding half is `<= 2^30`, so
    /// `acc + half < 2^32` is exact as u32 and a logical shift gives
    /// `(acc + half) >> r` (0 for `r >= 32`), which is `< 2^31`: the clamp
    /// to `2^31 - 1` never applies.
    #[target_feature(enable = "avx2")]
    pub(super) fn first32(
        l: &PLayer,
        x: &[i32],
        pairs: &mut [u32],
        nz: &mut [u16],
        dst: &mut [i32],
    ) {
        let c = super::prep_first(&x[..l.inputs], pairs, nz);
        let (pairs, nz) = (&*pairs, &nz[..c]);
        let np = l.inputs.div_ceil(2);
        let r = l.shift;
        let half = if r == 0 || r > 32 { 0 } else { 1u32 << (r - 1) };
        let half = _mm256_set1_epi32(half as i32);
        let count = _mm_cvtsi64_si128(r.min(32) as i64);
        let zero = _mm256_setzero_si256();
        for ((wt, bt), out) in
            l.w.chunks_exact(np * 2 * T32)
                .zip(l.bias32.chunks_exact(T32))
                .zip(dst.chunks_exact_mut(T32))
        {
            let mut acc = [zero; 4];
            for (q, a) in acc.iter_mut().enumerate() {
                // SAFETY: `bt` holds 32 i32, so 8 from q * 8 (q < 4) are in bounds;
                // loadu has no alignment requirement.
                *a = unsafe { _mm256_loadu_si256(bt.as_ptr().add(q * 8).cast()) };
            }
            for &p in nz {
                let p = p as usize;
                // Both inputs fit in i16 (|x| <= 1024), so vpmaddwd computes
                // w[2j] * x0 + w[2j+1] * x1 exactly (|w| <= 32767: no saturation).
                let xv = _mm256_set1_epi32(pairs[p] as i32);
                let w = &wt[p * 2 * T32..(p + 1) * 2 * T32];
                for (q, a) in acc.iter_mut().enumerate() {
                    // SAFETY: `w` holds 64 i16, so 16 from q * 16 (q < 4) are in bounds.
                    let wv = unsafe { _mm256_loadu_si256(w.as_ptr().add(q * 16).cast()) };
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(wv, xv));
                }
            }
            for (q, a) in acc.iter().enumerate() {
                let v = _mm256_max_epi32(*a, zero);
                let v = _mm256_srl_epi32(_mm256_add_epi32(v, half), count);
                // SAFETY: `out` holds 32 i32, so 8 from q * 8 (q < 4) are in bounds.
                unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(q * 8).cast(), v) };
            }
        }
    }

    /// Hidden layers k >= 2 with explicit AVX2, the arithmetic of
    /// [`super::hidden16`]: per tile of 32 outputs and block of at most
    /// 128 input pairs, `vpmaddwd` of the weight pairs with the low and the
    /// high 8-bit digit pairs of `u` into two sets of i32 accumulators
    /// (digits are in 0..=255, so each pair sum is at most 2 * 32767 * 255
    /// and 128 of them stay below 2^31: exact), then into i64.
    #[target_feature(enable = "avx2")]
    pub(super) fn hidden16(
        l: &PLayer,
        x: &[i32],
        pairs: &mut [u32],
        nz: &mut [u16],
        dst: &mut [i32],
    ) {
        let (s, c) = super::prep16(&x[..l.inputs], pairs, nz);
        let (pairs, nz) = (&*pairs, &nz[..c]);
        let np = l.inputs.div_ceil(2);
        let (r, half) = (l.shift, super::half_of(l.shift));
        let zero = _mm256_setzero_si256();
        for ((wt, bt), out) in
            l.w.chunks_exact(np * 2 * T32)
                .zip(l.bias.chunks_exact(T32))
                .zip(dst.chunks_exact_mut(T32))
        {
            let mut dot = [0i64; T32];
            for blk in nz.chunks(PAIRS_PER_BLOCK) {
                let (mut al, mut ah) = ([zero; 4], [zero; 4]);
                for &p in blk {
                    let p = p as usize;
                    let v = pairs[p];
                    let vl = _mm256_set1_epi32((v & 0x00FF_00FF) as i32);
                    let vh = _mm256_set1_epi32(((v >> 8) & 0x00FF_00FF) as i32);
                    let w = &wt[p * 2 * T32..(p + 1) * 2 * T32];
                    for q in 0..4 {
                        // SAFETY: `w` holds 64 i16, so 16 from q * 16 (q < 4) are in bounds.
                        let wv = unsafe { _mm256_loadu_si256(w.as_ptr().add(q * 16).cast()) };
                        al[q] = _mm256_add_epi32(al[q], _mm256_madd_epi16(wv, vl));
                        ah[q] = _mm256_add_epi32(ah[q], _mm256_madd_epi16(wv, vh));
                    }
                }
                let (mut a32, mut h32) = ([0i32; T32], [0i32; T32]);
                for q in 0..4 {
                    // SAFETY: both arrays hold 32 i32, so 8 from q * 8 (q < 4) are in bounds.
                    unsafe {
                        _mm256_storeu_si256(a32.as_mut_ptr().add(q * 8).cast(), al[q]);
                        _mm256_storeu_si256(h32.as_mut_ptr().add(q * 8).cast(), ah[q]);
                    }
                }
                for ((d, &a), &b) in dot.iter_mut().zip(&a32).zip(&h32) {
                    *d += a as i64 + ((b as i64) << 8);
                }
            }
            for ((o, &d), &b) in out.iter_mut().zip(&dot).zip(bt) {
                *o = super::finish16(b, d, s, half, r);
            }
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn out64(l: &PLayer, x: &[i32]) -> i64 {
        super::out64(l, x)
    }
}

// SAFETY (all three): `Avx2K` is only used when `Packed::isa_for` gives
// `Isa::Avx2`, which it does only if `detect_isa` found AVX2 at run time
// (`Isa::Avx512` is only reported together with AVX2).
#[cfg(target_arch = "x86_64")]
impl Kernels for Avx2K {
    #[inline(always)]
    fn first32(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]) {
        // SAFETY: see above; AVX2 is present.
        unsafe { avx2::first32(l, x, pairs, nz, dst) }
    }
    #[inline(always)]
    fn hidden16(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]) {
        // SAFETY: see above; AVX2 is present.
        unsafe { avx2::hidden16(l, x, pairs, nz, dst) }
    }
    #[inline(always)]
    fn out64(l: &PLayer, x: &[i32]) -> i64 {
        // SAFETY: see above; AVX2 is present.
        unsafe { avx2::out64(l, x) }
    }
}

/// The kernels with AVX-512 (F, BW, VNNI) enabled.
#[cfg(target_arch = "x86_64")]
struct Avx512K;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ACT_MAX, PAIRS_PER_BLOCK, PLayer, T32};
    use std::arch::x86_64::*;

    /// Layer 1, the arithmetic of [`super::first32`] with `vpdpwssd`
    /// (`acc += w[2j] * x0 + w[2j+1] * x1` per i32 lane, exact: inputs fit
    /// in i16, `|w| <= 32767`, and the i32 bound of the module docs), up to
    /// 8 tiles of 32 outputs per pass over the inputs. The epilogue is the
    /// one of [`super::avx2::first32`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn first32(
        l: &PLayer,
        x: &[i32],
        pairs: &mut [u32],
        nz: &mut [u16],
        dst: &mut [i32],
    ) {
        let c = super::prep_first(&x[..l.inputs], pairs, nz);
        let (pairs, nz) = (&*pairs, &nz[..c]);
        let np = l.inputs.div_ceil(2);
        let tile = np * 2 * T32;
        let tiles = l.padded / T32;
        let mut t = 0;
        while t < tiles {
            let (w, b, o) = (&l.w[t * tile..], &l.bias32[t * T32..], &mut dst[t * T32..]);
            if tiles - t >= 8 {
                group_first::<8>(w, np, pairs, nz, b, l.shift, o);
                t += 8;
            } else {
                group_first::<1>(w, np, pairs, nz, b, l.shift, o);
                t += 1;
            }
        }
    }

    /// `G` tiles of layer 1 (`G <= 8`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn group_first<const G: usize>(
        w: &[i16],
        np: usize,
        pairs: &[u32],
        nz: &[u16],
        bias: &[i32],
        r: u32,
        out: &mut [i32],
    ) {
        let tile = np * 2 * T32;
        assert!(G <= 8 && np > 0 && w.len() >= G * tile);
        assert!(bias.len() >= G * T32 && out.len() >= G * T32 && pairs.len() >= np);
        let half = if r == 0 || r > 32 { 0 } else { 1u32 << (r - 1) };
        let half = _mm512_set1_epi32(half as i32);
        let count = _mm_cvtsi64_si128(r.min(32) as i64);
        let zero = _mm512_setzero_si512();
        let mut acc = [zero; 16];
        for (k, a) in acc.iter_mut().enumerate().take(2 * G) {
            // SAFETY: `bias` holds at least G * 32 i32 (asserted), and
            // k * 16 + 16 <= G * 32.
            *a = unsafe { _mm512_loadu_si512(bias.as_ptr().add(k * 16).cast()) };
        }
        for &p in nz {
            let p = (p as usize).min(np - 1);
            let xv = _mm512_set1_epi32(pairs[p] as i32);
            for (k, a) in acc.iter_mut().enumerate().take(2 * G) {
                // SAFETY: tile k / 2 < G starts at (k / 2) * tile; pair p < np
                // adds p * 64 + (k % 2) * 32 and 32 i16 are read, so the
                // read ends at most at G * tile <= w.len() (asserted).
                let wv = unsafe {
                    _mm512_loadu_si512(
                        w.as_ptr()
                            .add((k / 2) * tile + p * 2 * T32 + (k % 2) * 32)
                            .cast(),
                    )
                };
                *a = _mm512_dpwssd_epi32(*a, wv, xv);
            }
        }
        for (k, a) in acc.iter().enumerate().take(2 * G) {
            let v = _mm512_max_epi32(*a, zero);
            let v = _mm512_srl_epi32(_mm512_add_epi32(v, half), count);
            // SAFETY: `out` holds at least G * 32 i32 (asserted).
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(k * 16).cast(), v) };
        }
    }

    /// Hidden layers k >= 2, the arithmetic of [`super::hidden16`] with
    /// `vpdpwssd` into i32 digit accumulators (exact by the bound in the
    /// module docs), up to 4 tiles of 32 outputs per pass, and an i64
    /// epilogue.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn hidden16(
        l: &PLayer,
        x: &[i32],
        pairs: &mut [u32],
        nz: &mut [u16],
        dst: &mut [i32],
    ) {
        let (s, c) = super::prep16(&x[..l.inputs], pairs, nz);
        let (pairs, nz) = (&*pairs, &nz[..c]);
        let np = l.inputs.div_ceil(2);
        let tile = np * 2 * T32;
        let tiles = l.padded / T32;
        let mut t = 0;
        while t < tiles {
            let (w, b, o) = (&l.w[t * tile..], &l.bias[t * T32..], &mut dst[t * T32..]);
            if tiles - t >= 4 {
                group16::<4>(w, np, pairs, nz, b, s, l.shift, o);
                t += 4;
            } else {
                group16::<1>(w, np, pairs, nz, b, s, l.shift, o);
                t += 1;
            }
        }
    }

    /// `G` tiles of a hidden layer k >= 2 (`G <= 4`): per block of at most
    /// 128 pairs, `lo += w . (u & 255)` and `hi += w . (u >> 8)` in i32, then
    /// `dot += lo + (hi << 8)` in i64; last `acc = bias + (dot << s)` and
    /// `min((max(acc, 0) + half) >> r, 2^31 - 1)` in i64 (exact by the
    /// bounds in the module docs).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    fn group16<const G: usize>(
        w: &[i16],
        np: usize,
        pairs: &[u32],
        nz: &[u16],
        bias: &[i64],
        s: u32,
        r: u32,
        out: &mut [i32],
    ) {
        let tile = np * 2 * T32;
        assert!(G <= 4 && np > 0 && w.len() >= G * tile);
        assert!(bias.len() >= G * T32 && out.len() >= G * T32 && pairs.len() >= np);
        let zero = _mm512_setzero_si512();
        let eight = _mm_cvtsi64_si128(8);
        let mut dot = [zero; 16];
        for blk in nz.chunks(PAIRS_PER_BLOCK) {
            let (mut al, mut ah) = ([zero; 8], [zero; 8]);
            for &p in blk {
                let p = (p as usize).min(np - 1);
                let v = pairs[p];
                let vl = _mm512_set1_epi32((v & 0x00FF_00FF) as i32);
                let vh = _mm512_set1_epi32(((v >> 8) & 0x00FF_00FF) as i32);
                for k in 0..2 * G {
                    // SAFETY: as in `group_first`: the read ends at most at
                    // G * tile <= w.len() (asserted), since p < np.
                    let wv = unsafe {
                        _mm512_loadu_si512(
                            w.as_ptr()
                                .add((k / 2) * tile + p * 2 * T32 + (k % 2) * 32)
                                .cast(),
                        )
                    };
                    al[k] = _mm512_dpwssd_epi32(al[k], wv, vl);
                    ah[k] = _mm512_dpwssd_epi32(ah[k], wv, vh);
                }
            }
            for k in 0..2 * G {
                let lo = [
                    _mm512_castsi512_si256(al[k]),
                    _mm512_extracti64x4_epi64::<1>(al[k]),
                ];
                let hi = [
                    _mm512_castsi512_si256(ah[k]),
                    _mm512_extracti64x4_epi64::<1>(ah[k]),
                ];
                for e in 0..2 {
                    let d = _mm512_add_epi64(
                        _mm512_cvtepi32_epi64(lo[e]),
                        _mm512_sll_epi64(_mm512_cvtepi32_epi64(hi[e]), eight),
                    );
                    dot[2 * k + e] = _mm512_add_epi64(dot[2 * k + e], d);
                }
            }
        }
        let half = _mm512_set1_epi64(super::half_of(r));
        let rcount = _mm_cvtsi64_si128(r as i64);
        let scount = _mm_cvtsi64_si128(s as i64);
        let amax = _mm512_set1_epi64(ACT_MAX);
        for (k, d) in dot.iter().enumerate().take(4 * G) {
            // SAFETY: `bias` holds at least G * 32 i64 (asserted), k * 8 + 8 <= G * 32.
            let b = unsafe { _mm512_loadu_si512(bias.as_ptr().add(k * 8).cast()) };
            let acc = _mm512_add_epi64(b, _mm512_sll_epi64(*d, scount));
            let v = _mm512_add_epi64(_mm512_max_epi64(acc, zero), half);
            let v = _mm512_min_epi64(_mm512_srl_epi64(v, rcount), amax);
            // SAFETY: `out` holds at least G * 32 i32 (asserted).
            unsafe {
                _mm256_storeu_si256(out.as_mut_ptr().add(k * 8).cast(), _mm512_cvtepi64_epi32(v))
            };
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512dq,avx512vl")]
    pub(super) fn out64(l: &PLayer, x: &[i32]) -> i64 {
        super::out64(l, x)
    }
}

// SAFETY (all three): `Avx512K` is only used when `Packed::isa_for` gives
// `Isa::Avx512`, which needs `detect_isa` to have found AVX2 and AVX-512 F,
// BW, DQ, VL and VNNI at run time.
#[cfg(target_arch = "x86_64")]
impl Kernels for Avx512K {
    #[inline(always)]
    fn first32(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]) {
        // SAFETY: see above.
        unsafe { avx512::first32(l, x, pairs, nz, dst) }
    }
    #[inline(always)]
    fn hidden16(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]) {
        // SAFETY: see above.
        unsafe { avx512::hidden16(l, x, pairs, nz, dst) }
    }
    #[inline(always)]
    fn out64(l: &PLayer, x: &[i32]) -> i64 {
        // SAFETY: see above.
        unsafe { avx512::out64(l, x) }
    }
}

#[inline(always)]
fn forward_impl<K: Kernels>(p: &Packed, x: &[i32], s: &mut Scratch) -> i64 {
    let Scratch { a, b, lo, nz } = s;
    let (a, b) = (&mut a[..p.width], &mut b[..p.width]);
    // Which buffer holds the current activations: None = x, Some(true) = a.
    let mut cur: Option<bool> = None;
    for l in &p.layers {
        let (src, dst): (&[i32], &mut [i32]) = match cur {
            None => (x, &mut *a),
            Some(true) => (&*a, &mut *b),
            Some(false) => (&*b, &mut *a),
        };
        let dst = &mut dst[..l.padded];
        match l.kind {
            Kind::Out64 => return K::out64(l, src),
            Kind::First32 => K::first32(l, src, lo, nz, dst),
            Kind::Hidden16 => K::hidden16(l, src, lo, nz, dst),
        }
        cur = Some(!matches!(cur, Some(true)));
    }
    0 // unreachable: the last layer is Out64
}

fn forward(p: &Packed, x: &[i32], s: &mut Scratch, k: Kernel) -> i64 {
    s.fit(p);
    match p.isa_for(k) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => forward_impl::<Avx512K>(p, x, s),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => forward_impl::<Avx2K>(p, x, s),
        _ => forward_impl::<PortableK>(p, x, s),
    }
}

#[inline(always)]
fn batch_impl<K: Kernels>(p: &Packed, n: usize, xs: &[i32], out: &mut [i64], s: &mut Scratch) {
    for (x, o) in xs.chunks_exact(n).zip(out.iter_mut()) {
        *o = forward_impl::<K>(p, x, s);
    }
}

fn batch(p: &Packed, n: usize, xs: &[i32], out: &mut [i64], s: &mut Scratch, k: Kernel) {
    s.fit(p);
    match p.isa_for(k) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => batch_impl::<Avx512K>(p, n, xs, out, s),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => batch_impl::<Avx2K>(p, n, xs, out, s),
        _ => batch_impl::<PortableK>(p, n, xs, out, s),
    }
}

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

/// A deliberately plain, obviously-correct scalar implementation of the
/// integer spec, straight from the quantized row-major layers, with every
/// operation checked (it panics rather than wrap). Tests and the benchmark
/// compare the fast path with it.
#[allow(clippy::needless_range_loop)] // index loops on purpose: plain and obvious
pub mod reference {
    use crate::model::{Activation, Model};

    /// Score an encoded integer input (see the module docs of [`crate::infer`]).
    pub fn score_int(model: &Model, x: &[i32]) -> i64 {
        let mut cur: Vec<i64> = x[..model.feature_set().n_inputs()]
            .iter()
            .map(|&v| v as i64)
            .collect();
        for (k, l) in model.quantized_layers().iter().enumerate() {
            // Step 2b: a hidden layer after the first rescales its inputs
            // to 16 bits and scales its dot products back by 2^s.
            let mut scale: i64 = 1;
            if k > 0 && l.activation == Activation::Relu {
                let mut mx: i64 = 0;
                for i in 0..cur.len() {
                    if cur[i] > mx {
                        mx = cur[i];
                    }
                }
                let bits = 64 - mx.leading_zeros();
                let s = bits.saturating_sub(super::IN16_BITS);
                if s > 0 {
                    for i in 0..cur.len() {
                        let mut u = (cur[i] + (1i64 << (s - 1))) >> s;
                        if u > super::IN16_MAX {
                            u = super::IN16_MAX;
                        }
                        cur[i] = u;
                    }
                }
                scale = 1i64 << s;
            }
            let mut next = Vec::with_capacity(l.outputs);
            for o in 0..l.outputs {
                let mut dot: i64 = 0;
                for i in 0..l.inputs {
                    let prod = (l.weights[o * l.inputs + i] as i64)
                        .checked_mul(cur[i])
                        .expect("product overflows i64");
                    dot = dot.checked_add(prod).expect("sum overflows i64");
                }
                let acc = dot
                    .checked_mul(scale)
                    .and_then(|d| d.checked_add(l.bias[o]))
                    .expect("sum overflows i64");
                if l.activation == Activation::Relu {
                    let mut v = if acc > 0 { acc } else { 0 };
                    if l.out_shift > 0 {
                        v = (v + (1i64 << (l.out_shift - 1))) >> l.out_shift;
                    }
                    if v > super::ACT_MAX {
                        v = super::ACT_MAX;
                    }
                    next.push(v);
                } else {
                    next.push(acc);
                }
            }
            cur = next;
        }
        if cur.len() == 2 {
            cur[1].checked_sub(cur[0]).expect("score overflows")
        } else {
            cur[0]
        }
    }

    /// f32 score computed in f64 with plain loops (for checking the f32 path).
    pub fn score_f64(model: &Model, x: &[f32]) -> f64 {
        let mut cur: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for l in model.layers() {
            let mut next = Vec::with_capacity(l.outputs);
            for o in 0..l.outputs {
                let mut acc = l.bias[o] as f64;
                for i in 0..l.inputs {
                    acc += l.weights[o * l.inputs + i] as f64 * cur[i];
                }
                next.push(if l.activation == Activation::Relu {
                    acc.max(0.0)
                } else {
                    acc
                });
            }
            cur = next;
        }
        if cur.len() == 2 {
            cur[1] - cur[0]
        } else {
            cur[0]
        }
    }
}

#[cfg(test)]
mod tests {
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
            let m = Model::from_layers(FeatureSet::LinnOs, layers, None, TrainingMeta::default())
                .unwrap();
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
        let z =
            Model::from_layers(FeatureSet::LinnOs, layers, None, TrainingMeta::default()).unwrap();
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
}

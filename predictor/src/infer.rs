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
//!    `acc = bq[o] + sum_i Wq[o][i] * x[i]`. Layer 1 may accumulate in i32,
//!    later layers in i64; the sum is exact in any order.
//! 3. **Hidden layers** (ReLU): `x'[o] = min((max(acc, 0) + h) >> r, 2^31 - 1)`
//!    with `h = 2^(r-1)` if `r > 0` else 0 (round half up). `x'` fits in i32.
//! 4. **Last layer** (no activation, `r = 0`): `out[o] = acc`.
//! 5. **Score**: `out[1] - out[0]` for 2 outputs, `out[0]` for 1, as i64.
//!    **Tie rule: score > 0 means slow; score <= 0 (including 0) means fast.**
//!
//! ## Why nothing overflows
//!
//! The loader ([`crate::model::Model::from_bytes`]) guarantees: `|Wq| <= 32767
//! < 2^15`; width `<= 1024 = 2^10`; layer-1 `|bq| <= 2^30`, later `|bq| <= 2^40`.
//! - Layer 1 inputs are at most 9 (31 or 39 LinnOS digits) or 1024 (12
//!   Heimdall inputs), so `n * max|x0| <= 12288 < 2^14` and every partial sum satisfies
//!   `|acc| <= 2^30 + 2^14 * 2^15 < 2^31`: i32 suffices.
//! - Later layers: `0 <= x <= 2^31 - 1` (step 3), so every partial sum has
//!   `|acc| <= 2^40 + 2^10 * 2^15 * 2^31 < 2^57`; `acc + h <= 2^57 + 2^61 < 2^63`
//!   (`r <= 62`); `|score| < 2^58`. i64 suffices.
//!
//! Debug builds check every addition (Rust's overflow checks), and the tests
//! run the edge cases (all inputs at their maxima, weights at +-32767).
//!
//! # Kernels
//!
//! [`Packed`] re-lays the hidden layers out in tiles of outputs so the inner
//! loop runs over a register-resident accumulator array. Layer 1 (i32): tiles
//! of 32 outputs, inputs taken in pairs with the two weights of each output
//! interleaved, so one step is `acc[j] += w[j][0] * x[2p] + w[j][1] * x[2p+1]`
//! (on AVX2 exactly `vpmaddwd` + `vpaddd`: inputs fit in i16). Later hidden
//! layers (i64): tiles of 16 outputs, `acc[j] += w[j] * x[i]`. Inputs (or
//! pairs) that are zero are skipped, which is exact and common (leading zero
//! digits, ReLU zeros). The last layer is a contiguous dot product per
//! output. Each kernel is compiled portably (baseline target, any
//! architecture) and, on x86-64, again with AVX2 enabled (layer 1 with
//! explicit `std::arch` intrinsics), chosen at run time.
//! [`reference`](mod@reference) is a deliberately plain scalar version of the
//! spec above, used by tests and the benchmark.

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

const T32: usize = 32;
const T64: usize = 16;

/// Which compiled version of the integer kernels to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The best this CPU supports (AVX2 where available).
    Auto,
    /// The portable build (no run-time CPU features).
    Portable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Hidden layer 1: tiles of T32, i32 accumulators.
    First32,
    /// Hidden layer k >= 2: tiles of T64, i64 accumulators.
    Hidden64,
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
    width: usize,
    avx2: bool,
}

impl Packed {
    pub(crate) fn new(q: &[QuantLayer]) -> Packed {
        let last = q.len().saturating_sub(1);
        let mut width = 0;
        let layers = q
            .iter()
            .enumerate()
            .map(|(k, l)| {
                let kind = if k == last {
                    Kind::Out64
                } else if k == 0 {
                    Kind::First32
                } else {
                    Kind::Hidden64
                };
                let tile = match kind {
                    Kind::First32 => T32,
                    Kind::Hidden64 => T64,
                    Kind::Out64 => 1,
                };
                let padded = l.outputs.div_ceil(tile) * tile;
                width = width.max(padded);
                let (n, m) = (l.inputs, l.outputs);
                let mut w = vec![0i16; padded * n];
                if kind == Kind::Out64 {
                    w.copy_from_slice(&l.weights);
                } else if kind == Kind::First32 {
                    // Input pairs (2p, 2p+1) interleaved per output, inputs
                    // padded to even: w[((t * np + p) * T32 + j) * 2 + e] =
                    // Wq[t * T32 + j][2p + e] (0 where 2p + e >= n).
                    let np = n.div_ceil(2);
                    w = vec![0i16; padded * np * 2];
                    for o in 0..m {
                        let (t, j) = (o / T32, o % T32);
                        for i in 0..n {
                            let (pi, e) = (i / 2, i % 2);
                            w[((t * np + pi) * T32 + j) * 2 + e] = l.weights[o * n + i];
                        }
                    }
                } else {
                    // w[(t * n + i) * tile + j] = Wq[t * tile + j][i]
                    for o in 0..m {
                        let (t, j) = (o / tile, o % tile);
                        for i in 0..n {
                            w[(t * n + i) * tile + j] = l.weights[o * n + i];
                        }
                    }
                }
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
            avx2: detect_avx2(),
        }
    }
}

fn detect_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Working memory of the integer path. Reuse one per thread to avoid
/// allocating per prediction ([`Model::score_int`] keeps one per thread).
#[derive(Clone, Debug, Default)]
pub struct Scratch {
    a: Vec<i32>,
    b: Vec<i32>,
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

/// Input pair `p` of layer 1: `(x[2p], x[2p+1])`, 0 past the end.
#[inline(always)]
fn pair(x: &[i32], p: usize) -> (i32, i32) {
    (x[2 * p], x.get(2 * p + 1).copied().unwrap_or(0))
}

#[inline(always)]
fn first32(l: &PLayer, x: &[i32], dst: &mut [i32]) {
    let n = l.inputs;
    let np = n.div_ceil(2);
    let x = &x[..n];
    let (r, half) = (l.shift, half_of(l.shift));
    for ((wt, bt), out) in
        l.w.chunks_exact(np * 2 * T32)
            .zip(l.bias32.chunks_exact(T32))
            .zip(dst.chunks_exact_mut(T32))
    {
        let mut acc = [0i32; T32];
        acc.copy_from_slice(bt);
        for (p, w) in wt.chunks_exact(2 * T32).enumerate() {
            let (x0, x1) = pair(x, p);
            if x0 == 0 && x1 == 0 {
                continue;
            }
            for (a, wj) in acc.iter_mut().zip(w.chunks_exact(2)) {
                *a += wj[0] as i32 * x0 + wj[1] as i32 * x1;
            }
        }
        for (o, &a) in out.iter_mut().zip(&acc) {
            *o = relu_shift(a as i64, half, r);
        }
    }
}

#[inline(always)]
fn hidden64(l: &PLayer, x: &[i32], dst: &mut [i32]) {
    let n = l.inputs;
    let x = &x[..n];
    let (r, half) = (l.shift, half_of(l.shift));
    for ((wt, bt), out) in
        l.w.chunks_exact(n * T64)
            .zip(l.bias.chunks_exact(T64))
            .zip(dst.chunks_exact_mut(T64))
    {
        let mut acc = [0i64; T64];
        acc.copy_from_slice(bt);
        for (w, &xi) in wt.chunks_exact(T64).zip(x) {
            if xi == 0 {
                continue;
            }
            let xi = xi as i64;
            for (a, &wj) in acc.iter_mut().zip(w) {
                *a += wj as i64 * xi;
            }
        }
        for (o, &a) in out.iter_mut().zip(&acc) {
            *o = relu_shift(a, half, r);
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
    fn first32(l: &PLayer, x: &[i32], dst: &mut [i32]);
    fn hidden64(l: &PLayer, x: &[i32], dst: &mut [i32]);
    fn out64(l: &PLayer, x: &[i32]) -> i64;
}

/// The kernels compiled for the baseline target.
struct PortableK;

impl Kernels for PortableK {
    #[inline(always)]
    fn first32(l: &PLayer, x: &[i32], dst: &mut [i32]) {
        first32(l, x, dst)
    }
    #[inline(always)]
    fn hidden64(l: &PLayer, x: &[i32], dst: &mut [i32]) {
        hidden64(l, x, dst)
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
    use super::PLayer;

    /// Layer 1 with explicit AVX2 (the autovectoriser leaves this loop
    /// scalar inside the crate). Same arithmetic as [`super::first32`]:
    /// accumulators are i32 (no overflow, see the module docs); after the
    /// ReLU `0 <= acc < 2^31` and the rounding half is `<= 2^30`, so
    /// `acc + half < 2^32` is exact as u32 and a logical shift gives
    /// `(acc + half) >> r` (0 for `r >= 32`), which is `< 2^31`: the clamp
    /// to `2^31 - 1` never applies.
    #[target_feature(enable = "avx2")]
    pub(super) fn first32(l: &PLayer, x: &[i32], dst: &mut [i32]) {
        use super::T32;
        use std::arch::x86_64::*;
        const _: () = assert!(T32 == 32);
        let n = l.inputs;
        let np = n.div_ceil(2);
        let x = &x[..n];
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
            for (p, w) in wt.chunks_exact(2 * T32).enumerate() {
                let (x0, x1) = super::pair(x, p);
                if x0 == 0 && x1 == 0 {
                    continue;
                }
                // Both inputs fit in i16 (|x| <= 1024), so vpmaddwd computes
                // w[2j] * x0 + w[2j+1] * x1 exactly (|w| <= 32767: no saturation).
                let xv = _mm256_set1_epi32((x0 as u16 as u32 | (x1 as u16 as u32) << 16) as i32);
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

    #[target_feature(enable = "avx2")]
    pub(super) fn hidden64(l: &PLayer, x: &[i32], dst: &mut [i32]) {
        super::hidden64(l, x, dst)
    }
    #[target_feature(enable = "avx2")]
    pub(super) fn out64(l: &PLayer, x: &[i32]) -> i64 {
        super::out64(l, x)
    }
}

// SAFETY (all three): `Avx2K` is only used when `Packed::avx2` is true, which
// `detect_avx2` sets only if the CPU reports AVX2 at run time.
#[cfg(target_arch = "x86_64")]
impl Kernels for Avx2K {
    #[inline(always)]
    fn first32(l: &PLayer, x: &[i32], dst: &mut [i32]) {
        // SAFETY: see above; AVX2 is present.
        unsafe { avx2::first32(l, x, dst) }
    }
    #[inline(always)]
    fn hidden64(l: &PLayer, x: &[i32], dst: &mut [i32]) {
        // SAFETY: see above; AVX2 is present.
        unsafe { avx2::hidden64(l, x, dst) }
    }
    #[inline(always)]
    fn out64(l: &PLayer, x: &[i32]) -> i64 {
        // SAFETY: see above; AVX2 is present.
        unsafe { avx2::out64(l, x) }
    }
}

#[inline(always)]
fn forward_impl<K: Kernels>(p: &Packed, x: &[i32], s: &mut Scratch) -> i64 {
    let (a, b) = (&mut s.a[..p.width], &mut s.b[..p.width]);
    // Which buffer holds the current activations: None = x, Some(true) = a.
    let mut cur: Option<bool> = None;
    for l in &p.layers {
        let (src, dst): (&[i32], &mut [i32]) = match cur {
            None => (x, &mut *a),
            Some(true) => (&*a, &mut *b),
            Some(false) => (&*b, &mut *a),
        };
        match l.kind {
            Kind::Out64 => return K::out64(l, src),
            Kind::First32 => K::first32(l, src, &mut dst[..l.padded]),
            Kind::Hidden64 => K::hidden64(l, src, &mut dst[..l.padded]),
        }
        cur = Some(!matches!(cur, Some(true)));
    }
    0 // unreachable: the last layer is Out64
}

fn forward(p: &Packed, x: &[i32], s: &mut Scratch, k: Kernel) -> i64 {
    s.fit(p);
    #[cfg(target_arch = "x86_64")]
    if p.avx2 && k == Kernel::Auto {
        return forward_impl::<Avx2K>(p, x, s);
    }
    let _ = k;
    forward_impl::<PortableK>(p, x, s)
}

fn batch(p: &Packed, n: usize, xs: &[i32], out: &mut [i64], s: &mut Scratch, k: Kernel) {
    s.fit(p);
    #[cfg(target_arch = "x86_64")]
    if p.avx2 && k == Kernel::Auto {
        for (x, o) in xs.chunks_exact(n).zip(out.iter_mut()) {
            *o = forward_impl::<Avx2K>(p, x, s);
        }
        return;
    }
    let _ = k;
    for (x, o) in xs.chunks_exact(n).zip(out.iter_mut()) {
        *o = forward_impl::<PortableK>(p, x, s);
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
        if self.packed.avx2 { "avx2" } else { "portable" }
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
        for l in model.quantized_layers() {
            let mut next = Vec::with_capacity(l.outputs);
            for o in 0..l.outputs {
                let mut acc: i64 = l.bias[o];
                for i in 0..l.inputs {
                    let prod = (l.weights[o * l.inputs + i] as i64)
                        .checked_mul(cur[i])
                        .expect("product overflows i64");
                    acc = acc.checked_add(prod).expect("sum overflows i64");
                }
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
            for k in [Kernel::Auto, Kernel::Portable] {
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

    #[test]
    fn tie_is_fast() {
        assert!(!is_slow(0));
        assert!(is_slow(1));
        assert!(!is_slow(-1));
    }
}

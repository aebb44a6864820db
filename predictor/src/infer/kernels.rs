//! The packed weight layout and the integer kernels that run it: portable,
//! and on x86-64 with AVX2 and with AVX-512 VNNI (chosen at run time). They
//! compute the spec in [`super`] to the bit.

use std::cell::RefCell;

use crate::model::{Model, QuantLayer};

use super::{ACT_MAX, IN16_BITS, IN16_MAX, Kernel};

/// Most input pairs (so 256 inputs) one block of i32 digit accumulators
/// takes in step 2b (the overflow bound in the spec, [`super`]).
const PAIRS_PER_BLOCK: usize = 128;

const T32: usize = 32;

/// The instruction sets the integer kernels can use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Isa {
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
    pub(super) isa: Isa,
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

pub(super) fn with_scratch<R>(p: &Packed, f: impl FnOnce(&mut Scratch) -> R) -> R {
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
pub(super) fn prep16(x: &[i32], pairs: &mut [u32], nz: &mut [u16]) -> (u32, usize) {
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
mod avx2;

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
mod avx512;

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

pub(super) fn forward(p: &Packed, x: &[i32], s: &mut Scratch, k: Kernel) -> i64 {
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

pub(super) fn batch(p: &Packed, n: usize, xs: &[i32], out: &mut [i64], s: &mut Scratch, k: Kernel) {
    s.fit(p);
    match p.isa_for(k) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => batch_impl::<Avx512K>(p, n, xs, out, s),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => batch_impl::<Avx2K>(p, n, xs, out, s),
        _ => batch_impl::<PortableK>(p, n, xs, out, s),
    }
}

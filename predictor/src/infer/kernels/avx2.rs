//! The hidden-layer kernels with AVX2 enabled (explicit `std::arch`
//! intrinsics); chosen at run time by [`super::Packed`].

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
pub(super) fn first32(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]) {
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
pub(super) fn hidden16(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]) {
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

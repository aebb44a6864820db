//! The hidden-layer kernels with AVX-512 (F, BW, DQ, VL, VNNI) enabled
//! (explicit `std::arch` intrinsics); chosen at run time by
//! [`super::Packed`].

use super::{ACT_MAX, PAIRS_PER_BLOCK, PLayer, T32};
use std::arch::x86_64::*;

/// Layer 1, the arithmetic of [`super::first32`] with `vpdpwssd`
/// (`acc += w[2j] * x0 + w[2j+1] * x1` per i32 lane, exact: inputs fit
/// in i16, `|w| <= 32767`, and the i32 bound of the module docs), up to
/// 8 tiles of 32 outputs per pass over the inputs. The epilogue is the
/// one of [`super::avx2::first32`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) fn first32(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]) {
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
pub(super) fn hidden16(l: &PLayer, x: &[i32], pairs: &mut [u32], nz: &mut [u16], dst: &mut [i32]) {
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

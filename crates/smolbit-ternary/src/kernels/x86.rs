//! x86-64 kernels: AVX2 (`maddubs`), AVX-512 VNNI (`vpdpbusd` on 256-bit vectors), F16C and
//! FMA; each equals its format's scalar reference (bit for bit for the integer products).
use std::arch::x86_64::*;

use super::ternary::{BLOCK, BLOCK_BYTES};

#[inline(always)]
unsafe fn hsum(v: __m256i) -> i32 {
    // SAFETY: register-only AVX2 operations.
    unsafe {
        let lo = _mm256_castsi256_si128(v);
        let hi = _mm256_extracti128_si256(v, 1);
        let s = _mm_add_epi32(lo, hi);
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
}

// Partial products of 32 codes with 32 activations, accumulated in a "small" register and
// flushed into i32 lanes. AVX2: `maddubs` gives i16 pairs (|p| <= 2 · 2 · 127 = 508), summed
// in i16 for at most FLUSH = 64 products (64 · 508 = 32512 < 2^15), then widened with
// `madd`. VNNI: `vpdpbusd` sums four u8 × i8 products straight into i32 lanes.
const FLUSH: usize = 64;

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn prod_avx2(small: __m256i, c: __m256i, x: __m256i) -> __m256i {
    _mm256_add_epi16(small, _mm256_maddubs_epi16(c, x))
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn flush_avx2(small: __m256i) -> __m256i {
    _mm256_madd_epi16(small, _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
unsafe fn prod_vnni(small: __m256i, c: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(small, c, x)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn flush_vnni(small: __m256i) -> __m256i {
    small
}

macro_rules! row_dot_n {
    ($name:ident, $features:literal, $prod:ident, $flush:ident) => {
        /// `N` tokens against one packed row: each block's codes are unpacked once and used
        /// for every token; per group, the exact integer sum minus the activation sum, times
        /// the group's scale. With groups of whole blocks, only the first `quarters` (0 to
        /// 4) 32-column quarters of the last block are computed: the caller passes how many
        /// hold real columns (the rest is padding, which adds nothing).
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name<const N: usize>(
            codes: &[u8],
            scales: &[f32],
            xs: [&[i8]; N],
            sums: [&[i32]; N],
            group: usize,
            quarters: usize,
        ) -> [f32; N] {
            let blocks = codes.len() / BLOCK_BYTES;
            for t in 0..N {
                assert!(xs[t].len() >= blocks * BLOCK && sums[t].len() >= scales.len());
            }
            assert!(scales.len() * group >= blocks * BLOCK && group.is_multiple_of(32));
            let mask = _mm256_set1_epi8(3);
            let cp = codes.as_ptr();
            let xp: [*const i8; N] = std::array::from_fn(|t| xs[t].as_ptr());
            let mut y = [0f32; N];
            // Four code vectors of block b.
            let unpack = |b: usize| {
                // SAFETY: b < blocks: 32 code bytes in bounds.
                let v = unsafe { _mm256_loadu_si256(cp.add(b * BLOCK_BYTES).cast()) };
                [
                    _mm256_and_si256(v, mask),
                    _mm256_and_si256(_mm256_srli_epi16(v, 2), mask),
                    _mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
                    _mm256_and_si256(_mm256_srli_epi16(v, 6), mask),
                ]
            };
            if group >= BLOCK {
                // Whole blocks per group; the small accumulators are flushed every
                // FLUSH / 4 blocks.
                let per = group / BLOCK;
                for g in 0..scales.len() {
                    let mut big = [_mm256_setzero_si256(); N];
                    let end = ((g + 1) * per).min(blocks);
                    let mut b = g * per;
                    while b < end {
                        let stop = (b + FLUSH / 4).min(end);
                        let mut small = [_mm256_setzero_si256(); N];
                        while b < stop {
                            let parts = unpack(b);
                            if b + 1 == blocks && quarters < 4 {
                                // The last block's padding quarters (code 1, activation
                                // 0) add nothing: skipped.
                                for t in 0..N {
                                    for (k, part) in parts.iter().enumerate().take(quarters) {
                                        // SAFETY: as below.
                                        small[t] = unsafe {
                                            $prod(
                                                small[t],
                                                *part,
                                                _mm256_loadu_si256(
                                                    xp[t].add(b * BLOCK + 32 * k).cast(),
                                                ),
                                            )
                                        };
                                    }
                                }
                                b += 1;
                                continue;
                            }
                            for t in 0..N {
                                // SAFETY: 128 activations of block b in bounds (asserted);
                                // the helpers need only this function's features.
                                unsafe {
                                    let xb = xp[t].add(b * BLOCK);
                                    small[t] =
                                        $prod(small[t], parts[0], _mm256_loadu_si256(xb.cast()));
                                    small[t] = $prod(
                                        small[t],
                                        parts[1],
                                        _mm256_loadu_si256(xb.add(32).cast()),
                                    );
                                    small[t] = $prod(
                                        small[t],
                                        parts[2],
                                        _mm256_loadu_si256(xb.add(64).cast()),
                                    );
                                    small[t] = $prod(
                                        small[t],
                                        parts[3],
                                        _mm256_loadu_si256(xb.add(96).cast()),
                                    );
                                }
                            }
                            b += 1;
                        }
                        for t in 0..N {
                            // SAFETY: register-only.
                            big[t] = _mm256_add_epi32(big[t], unsafe { $flush(small[t]) });
                        }
                    }
                    for t in 0..N {
                        // SAFETY: register-only.
                        let s = unsafe { hsum(big[t]) };
                        y[t] += scales[g] * (s - sums[t][g]) as f32;
                    }
                }
            } else {
                // 32 or 64 columns per group: 4 or 2 groups per block.
                let q = group / 32;
                for b in 0..blocks {
                    let parts = unpack(b);
                    for j in 0..4 / q {
                        let g = b * (4 / q) + j;
                        for t in 0..N {
                            let mut small = _mm256_setzero_si256();
                            for k in j * q..(j + 1) * q {
                                // SAFETY: as above.
                                small = unsafe {
                                    $prod(
                                        small,
                                        parts[k],
                                        _mm256_loadu_si256(xp[t].add(b * BLOCK + 32 * k).cast()),
                                    )
                                };
                            }
                            // SAFETY: register-only.
                            let s = unsafe { hsum($flush(small)) };
                            y[t] += scales[g] * (s - sums[t][g]) as f32;
                        }
                    }
                }
            }
            y
        }
    };
}

/// One token against one [`super::Q4Matrix`] row: eight groups at a time, two groups per
/// 32-byte load of codes (low nibbles: columns 0-15 of both, high: 16-31, against the two
/// groups' activations rearranged by lane), each pair's products summed in 16 bits (at most
/// 2 · 2 · 15 · 128, no saturation) and widened once, the eight groups' sums reduced to one
/// vector in group order, less the code offsets, converted and multiplied by the weight steps
/// (F16C) times the activation steps, then added to the lanes: the reference's f32 operations
/// in its order.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn q4_row_dot_avx2(
    codes: &[u8],
    scales: &[u16],
    x: &[i8],
    off: &[i32],
    steps: &[f32],
) -> f32 {
    use super::q4::{Q4_GROUP, Q4_LANES};
    let groups = scales.len();
    assert!(groups.is_multiple_of(2) && off.len() >= groups && steps.len() >= groups);
    assert!(codes.len() >= groups * Q4_GROUP / 2 && x.len() >= groups * Q4_GROUP);
    let low = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    // After the reduction the lanes hold groups 0, 2, 4, 6, 1, 3, 5, 7.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut acc = _mm256_setzero_ps();
    for g0 in (0..groups).step_by(Q4_LANES) {
        // The last vector of a row may hold fewer than eight groups (an even number).
        let n = (groups - g0).min(Q4_LANES);
        let mut v = [_mm256_setzero_si256(); Q4_LANES / 2];
        for (p, vp) in v.iter_mut().enumerate().take(n / 2) {
            let g = g0 + 2 * p;
            // SAFETY: groups g and g + 1: 32 code bytes and 64 activations in bounds
            // (asserted; g + 1 < groups as groups is even).
            unsafe {
                let b = _mm256_loadu_si256(codes.as_ptr().add(g * Q4_GROUP / 2).cast());
                let lo = _mm256_and_si256(b, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), low);
                let xa = _mm256_loadu_si256(x.as_ptr().add(g * Q4_GROUP).cast());
                let xb = _mm256_loadu_si256(x.as_ptr().add((g + 1) * Q4_GROUP).cast());
                let xlo = _mm256_permute2x128_si256(xa, xb, 0x20);
                let xhi = _mm256_permute2x128_si256(xa, xb, 0x31);
                let s16 =
                    _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi));
                // Lanes 0-3: group g's four partial sums; 4-7: group g + 1's.
                *vp = _mm256_madd_epi16(s16, ones);
            }
        }
        let h01 = _mm256_hadd_epi32(v[0], v[1]);
        let h23 = _mm256_hadd_epi32(v[2], v[3]);
        let sums = _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(h01, h23), order);
        let (o, d) = if n == Q4_LANES {
            // SAFETY: eight offsets, weight steps and activation steps at g0 are in bounds
            // (asserted).
            unsafe {
                (
                    _mm256_loadu_si256(off.as_ptr().add(g0).cast()),
                    _mm256_mul_ps(
                        _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(g0).cast())),
                        _mm256_loadu_ps(steps.as_ptr().add(g0)),
                    ),
                )
            }
        } else {
            // Missing groups get zero sums, offsets and steps: their lanes add +0.0, which
            // leaves them as the reference does (a lane is never -0.0).
            let (o, sc, st) = tail(&off[g0..groups], &scales[g0..groups], &steps[g0..groups]);
            // SAFETY: loads from the eight-element arrays.
            unsafe {
                (
                    _mm256_loadu_si256(o.as_ptr().cast()),
                    _mm256_mul_ps(
                        _mm256_cvtph_ps(_mm_loadu_si128(sc.as_ptr().cast())),
                        _mm256_loadu_ps(st.as_ptr()),
                    ),
                )
            }
        };
        let ints = _mm256_cvtepi32_ps(_mm256_sub_epi32(sums, o));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(d, ints));
    }
    let mut lanes = [0f32; Q4_LANES];
    // SAFETY: eight f32 into an array of eight.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    lanes.iter().fold(0f32, |a, &v| a + v)
}

/// One token against one [`super::Q8BlockMatrix`] row: eight groups at a time, each group's
/// 32 products as in `dot_i8_avx2` (|w| times x with w's sign, pairs summed in 16 bits, at most
/// 2 · 127 · 127, no saturation, then widened), the eight groups' sums reduced to one vector in
/// group order, converted and multiplied by the weight steps (F16C) times the activation steps,
/// then added to the lanes: the reference's f32 operations in its order.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn q8_block_row_dot_avx2(
    codes: &[i8],
    scales: &[u16],
    x: &[i8],
    steps: &[f32],
) -> f32 {
    use super::q8_0::{Q8_GROUP, Q8_LANES};
    let groups = scales.len();
    assert!(steps.len() >= groups);
    assert!(codes.len() >= groups * Q8_GROUP && x.len() >= groups * Q8_GROUP);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for g0 in (0..groups).step_by(Q8_LANES) {
        // The last vector of a row may hold fewer than eight groups.
        let n = (groups - g0).min(Q8_LANES);
        let v: [__m256i; Q8_LANES] = std::array::from_fn(|k| {
            if k >= n {
                return _mm256_setzero_si256();
            }
            let at = (g0 + k) * Q8_GROUP;
            // SAFETY: group g0 + k's 32 codes and activations are in bounds (asserted).
            unsafe {
                let w = _mm256_loadu_si256(codes.as_ptr().add(at).cast());
                let xv = _mm256_loadu_si256(x.as_ptr().add(at).cast());
                let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w));
                _mm256_madd_epi16(p, ones)
            }
        });
        // Pairwise sums: each 128-bit half of h0123 holds groups 0-3's sums over that half.
        let h0123 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        let h4567 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
        let s0123 = _mm_add_epi32(
            _mm256_castsi256_si128(h0123),
            _mm256_extracti128_si256(h0123, 1),
        );
        let s4567 = _mm_add_epi32(
            _mm256_castsi256_si128(h4567),
            _mm256_extracti128_si256(h4567, 1),
        );
        let sums = _mm256_set_m128i(s4567, s0123);
        let d = if n == Q8_LANES {
            // SAFETY: eight weight and activation steps at g0 are in bounds (asserted).
            unsafe {
                _mm256_mul_ps(
                    _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(g0).cast())),
                    _mm256_loadu_ps(steps.as_ptr().add(g0)),
                )
            }
        } else {
            // Missing groups: zero sums and steps, so their lanes add +0.0 (as in q4).
            let (_, sc, st) = tail(&[], &scales[g0..groups], &steps[g0..groups]);
            // SAFETY: loads from the eight-element arrays.
            unsafe {
                _mm256_mul_ps(
                    _mm256_cvtph_ps(_mm_loadu_si128(sc.as_ptr().cast())),
                    _mm256_loadu_ps(st.as_ptr()),
                )
            }
        };
        acc = _mm256_add_ps(acc, _mm256_mul_ps(d, _mm256_cvtepi32_ps(sums)));
    }
    let mut lanes = [0f32; Q8_LANES];
    // SAFETY: eight f32 into an array of eight.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    lanes.iter().fold(0f32, |a, &v| a + v)
}

/// The offsets, weight steps and activation steps of a row's last (fewer than eight) groups,
/// padded with zeros to one vector each.
fn tail(off: &[i32], scales: &[u16], steps: &[f32]) -> ([i32; 8], [u16; 8], [f32; 8]) {
    let (mut o, mut sc, mut st) = ([0i32; 8], [0u16; 8], [0f32; 8]);
    o[..off.len()].copy_from_slice(off);
    sc[..scales.len()].copy_from_slice(scales);
    st[..scales.len()].copy_from_slice(&steps[..scales.len()]);
    (o, sc, st)
}

/// Four i32 vectors summed horizontally, in one vector: `[Σa, Σb, Σc, Σd]`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn hsum4_vec(v: [__m256i; 4]) -> __m128i {
    let ab = _mm256_hadd_epi32(v[0], v[1]);
    let cd = _mm256_hadd_epi32(v[2], v[3]);
    let abcd = _mm256_hadd_epi32(ab, cd);
    _mm_add_epi32(
        _mm256_castsi256_si128(abcd),
        _mm256_extracti128_si256(abcd, 1),
    )
}

/// Four 512-bit i32 vectors summed horizontally, in one vector: `[Σa, Σb, Σc, Σd]`.
#[inline]
#[target_feature(enable = "avx2,avx512f")]
unsafe fn hsum4_512(v: [__m512i; 4]) -> __m128i {
    let half =
        v.map(|a| _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64::<1>(a)));
    // SAFETY: register-only.
    unsafe { hsum4_vec(half) }
}

/// Four i32 vectors summed horizontally: `[Σa, Σb, Σc, Σd]`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn hsum4(v: [__m256i; 4]) -> [i32; 4] {
    // SAFETY: register-only.
    let s = unsafe { hsum4_vec(v) };
    let mut out = [0i32; 4];
    // SAFETY: 16 bytes into a 4 x i32 array.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), s) };
    out
}

macro_rules! rows_dot {
    ($name:ident, $features:literal, $prod:ident, $flush:ident) => {
        /// One token against `M` packed rows (groups of whole blocks): each block's 128
        /// activations are loaded once for all rows; the rows' integer sums per group are
        /// reduced together; then, per row, the group sum minus the activation sum times
        /// the group's scale, as in the one-row kernel.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name<const M: usize>(
            codes: [&[u8]; M],
            scales: [&[f32]; M],
            x: &[i8],
            sums: &[i32],
            group: usize,
        ) -> [f32; M] {
            const { assert!(M == 4) };
            let blocks = codes[0].len() / BLOCK_BYTES;
            let groups = scales[0].len();
            for r in 0..M {
                assert!(codes[r].len() == blocks * BLOCK_BYTES && scales[r].len() == groups);
            }
            assert!(x.len() >= blocks * BLOCK && sums.len() >= groups);
            assert!(group.is_multiple_of(BLOCK) && groups * group >= blocks * BLOCK);
            let mask = _mm256_set1_epi8(3);
            let cp: [*const u8; M] = std::array::from_fn(|r| codes[r].as_ptr());
            let xp = x.as_ptr();
            // The next M rows (where a caller walking down the matrix goes next): fetched
            // into the cache while these are computed, at the pace they are consumed. Decode
            // stalls on memory latency without it (measured: 16 -> 25.5 GB/s in the stream
            // bench). A prefetch never faults; the address may lie past the matrix.
            let ahead = cp[M - 1].wrapping_add(blocks * BLOCK_BYTES);
            let per = group / BLOCK;
            let mut y = [0f32; M];
            for g in 0..groups {
                let mut big = [_mm256_setzero_si256(); M];
                let end = ((g + 1) * per).min(blocks);
                let mut b = g * per;
                while b < end {
                    let stop = (b + FLUSH / 4).min(end);
                    let mut small = [_mm256_setzero_si256(); M];
                    while b < stop {
                        let pf = ahead.wrapping_add(b * M * BLOCK_BYTES);
                        for line in (0..M * BLOCK_BYTES).step_by(64) {
                            _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(line).cast());
                        }
                        // SAFETY: b < blocks: 128 activations and 32 code bytes per row in
                        // bounds (asserted); the helpers need only this function's
                        // features.
                        unsafe {
                            let xb = xp.add(b * BLOCK);
                            let xv = [
                                _mm256_loadu_si256(xb.cast()),
                                _mm256_loadu_si256(xb.add(32).cast()),
                                _mm256_loadu_si256(xb.add(64).cast()),
                                _mm256_loadu_si256(xb.add(96).cast()),
                            ];
                            for r in 0..M {
                                let v = _mm256_loadu_si256(cp[r].add(b * BLOCK_BYTES).cast());
                                let mut acc = small[r];
                                acc = $prod(acc, _mm256_and_si256(v, mask), xv[0]);
                                acc = $prod(
                                    acc,
                                    _mm256_and_si256(_mm256_srli_epi16(v, 2), mask),
                                    xv[1],
                                );
                                acc = $prod(
                                    acc,
                                    _mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
                                    xv[2],
                                );
                                acc = $prod(
                                    acc,
                                    _mm256_and_si256(_mm256_srli_epi16(v, 6), mask),
                                    xv[3],
                                );
                                small[r] = acc;
                            }
                        }
                        b += 1;
                    }
                    for r in 0..M {
                        // SAFETY: register-only.
                        big[r] = _mm256_add_epi32(big[r], unsafe { $flush(small[r]) });
                    }
                }
                // SAFETY: register-only.
                let s = unsafe { hsum4([big[0], big[1], big[2], big[3]]) };
                for r in 0..M {
                    y[r] += scales[r][g] * (s[r] - sums[g]) as f32;
                }
            }
            y
        }
    };
}

rows_dot!(rows_dot_avx2, "avx2", prod_avx2, flush_avx2);

rows_dot!(
    rows_dot_vnni,
    "avx2,avx512f,avx512vl,avx512vnni",
    prod_vnni,
    flush_vnni
);

/// `N` tokens (1 to 4) against `rows` packed rows (a multiple of four; groups of whole blocks)
/// with AVX-512 VNNI on 512-bit vectors: the register-blocked form of [`rows_dot_vnni`] for
/// sequences decoded together, four rows at a time. `codes` and `scales` hold the rows one after
/// another (`rb` code bytes and `groups` scales a row); row `r`'s result for token `t` goes to
/// `out[t][r]` (added to it with `accumulate`: further trit planes).
///
/// Within each group, blocks go in pairs from the group's first: one 64-byte load holds a
/// pair's codes, and the activations must be in [`super::ternary::pair_activations`]' layout
/// (quarter `k` of both blocks side by side), so one shift and mask give 64 codes against 64
/// activations. A group's odd last block runs alone through 32-byte masked loads, computing only
/// its first `quarters` (0 to 4) quarters when it is the row's last block (the rest is padding,
/// which adds nothing). Each pair's codes are unpacked once for all tokens and each quarter's
/// activations loaded once for all four rows; the `4 · N` accumulators live in registers. Per
/// row and token, the group's integer sum minus the activation sum, times the group's scale,
/// added up over groups from 0: the one-token kernels' f32 operations in their order, four rows
/// to a vector, so the results are the same bits.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn rows_tokens_dot_vnni<const N: usize>(
    codes: &[u8],
    scales: &[f32],
    (rows, rb, groups): (usize, usize, usize),
    xs: [&[i8]; N],
    sums: [&[i32]; N],
    (group, quarters): (usize, usize),
    out: &mut [&mut [f32]; N],
    accumulate: bool,
) {
    const M: usize = 4;
    let blocks = rb / BLOCK_BYTES;
    assert!(rows.is_multiple_of(M) && rb.is_multiple_of(BLOCK_BYTES));
    assert!(codes.len() >= rows * rb && scales.len() >= rows * groups);
    for t in 0..N {
        assert!(xs[t].len() >= blocks * BLOCK && sums[t].len() >= groups);
        assert!(out[t].len() >= rows);
    }
    assert!(group.is_multiple_of(BLOCK) && groups * group >= blocks * BLOCK && quarters <= 4);
    let mask = _mm512_set1_epi8(3);
    let xp: [*const i8; N] = std::array::from_fn(|t| xs[t].as_ptr());
    let per = group / BLOCK;
    for r0 in (0..rows).step_by(M) {
        // SAFETY (pointer arithmetic): r0 + M <= rows, so each row's rb bytes are in `codes`.
        let cp: [*const u8; M] =
            std::array::from_fn(|r| unsafe { codes.as_ptr().add((r0 + r) * rb) });
        // As in `rows_dot_vnni`: the next four rows' codes fetched while these are computed.
        let ahead = cp[M - 1].wrapping_add(rb);
        let mut y = [_mm_setzero_ps(); N];
        for g in 0..groups {
            let mut acc = [[_mm512_setzero_si512(); N]; M];
            let end = ((g + 1) * per).min(blocks);
            let mut b = g * per;
            while b < end {
                // Two blocks (64 code bytes a row, 256 activations a token), or the group's last.
                let pair = end - b >= 2;
                let (k, used): (__mmask64, usize) = if pair {
                    (!0, 4)
                } else {
                    ((1 << 32) - 1, if b + 1 == blocks { quarters } else { 4 })
                };
                let pf = ahead.wrapping_add(b * M * BLOCK_BYTES);
                for line in (0..M * BLOCK_BYTES * if pair { 2 } else { 1 }).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(line).cast());
                }
                // SAFETY: the mask keeps the loads within blocks b (and b + 1 for a pair) of
                // each row's codes and each token's activations (asserted lengths);
                // masked-off bytes are not read.
                let mut v: [__m512i; M] = std::array::from_fn(|r| unsafe {
                    _mm512_maskz_loadu_epi8(k, cp[r].add(b * BLOCK_BYTES).cast())
                });
                for q in 0..used {
                    let at = b * BLOCK + if pair { 64 * q } else { 32 * q };
                    // SAFETY: as above.
                    let xq: [__m512i; N] = std::array::from_fn(|t| unsafe {
                        _mm512_maskz_loadu_epi8(k, xp[t].add(at))
                    });
                    for r in 0..M {
                        let c = _mm512_and_si512(v[r], mask);
                        v[r] = _mm512_srli_epi16::<2>(v[r]);
                        for t in 0..N {
                            acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], c, xq[t]);
                        }
                    }
                }
                b += if pair { 2 } else { 1 };
            }
            // The four rows' scales of group g.
            let sc = _mm_setr_ps(
                scales[r0 * groups + g],
                scales[(r0 + 1) * groups + g],
                scales[(r0 + 2) * groups + g],
                scales[(r0 + 3) * groups + g],
            );
            for t in 0..N {
                // SAFETY: register-only.
                let s = unsafe { hsum4_512([acc[0][t], acc[1][t], acc[2][t], acc[3][t]]) };
                let d = _mm_cvtepi32_ps(_mm_sub_epi32(s, _mm_set1_epi32(sums[t][g])));
                y[t] = _mm_add_ps(y[t], _mm_mul_ps(sc, d));
            }
        }
        for t in 0..N {
            let o = &mut out[t][r0..r0 + M];
            // SAFETY: four f32 in bounds (r0 + M <= rows <= out[t].len()).
            unsafe {
                let v = if accumulate {
                    _mm_add_ps(_mm_loadu_ps(o.as_ptr()), y[t])
                } else {
                    y[t]
                };
                _mm_storeu_ps(o.as_mut_ptr(), v);
            }
        }
    }
}

/// `N` int8 tokens (1 to 4) against `rows` int8 rows (a multiple of four, `cols` values each,
/// one after another in `w`) with AVX-512 VNNI on 512-bit vectors, four rows at a time; row
/// `r`'s result for token `t` goes to `out[t][r]`: the exact `Σ w·x` as f32 divided by
/// `tscales[t] · rscales[r]`, the portable path's operations four rows to a vector. `vpdpbusd`
/// takes unsigned bytes, so each weight is biased to `w + 128` (a sign-bit flip) and
/// `128 · Σ x` (`xsums`) taken off after. Each 64 weights are loaded once for all tokens and
/// each 64 activations once for all four rows; a last 32 columns go through masked loads (which
/// read nothing past them).
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn q8_rows_tokens_vnni<const N: usize>(
    w: &[i8],
    (rows, cols): (usize, usize),
    rscales: &[f32],
    xs: [&[i8]; N],
    (xsums, tscales): ([i32; N], [f32; N]),
    out: &mut [&mut [f32]; N],
) {
    const M: usize = 4;
    assert!(cols.is_multiple_of(32) && rows.is_multiple_of(M));
    assert!(w.len() >= rows * cols && rscales.len() >= rows);
    for t in 0..N {
        assert!(xs[t].len() == cols && out[t].len() >= rows);
    }
    let flip = _mm512_set1_epi8(i8::MIN);
    let xp: [*const i8; N] = std::array::from_fn(|t| xs[t].as_ptr());
    for r0 in (0..rows).step_by(M) {
        // SAFETY (pointer arithmetic): r0 + M <= rows, so each row's cols bytes are in `w`.
        let wp: [*const i8; M] =
            std::array::from_fn(|r| unsafe { w.as_ptr().add((r0 + r) * cols) });
        // The next four rows (contiguous after these), fetched at the pace these are read, as
        // in `rows_dot_vnni`; a prefetch never faults.
        let ahead = wp[M - 1].wrapping_add(cols);
        let mut acc = [[_mm512_setzero_si512(); N]; M];
        let mut c = 0;
        while c < cols {
            // 64 columns, or the last 32.
            let k: __mmask64 = if cols - c >= 64 { !0 } else { (1 << 32) - 1 };
            let pf = ahead.wrapping_add(c * M);
            for line in (0..M * 64).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(line).cast());
            }
            // SAFETY: the mask keeps every load within c..cols of its row or token (asserted
            // lengths); masked-off bytes are not read.
            let xv: [__m512i; N] =
                std::array::from_fn(|t| unsafe { _mm512_maskz_loadu_epi8(k, xp[t].add(c)) });
            for r in 0..M {
                // SAFETY: as above.
                let wv = unsafe { _mm512_maskz_loadu_epi8(k, wp[r].add(c)) };
                // Masked-off lanes: 0 ^ 0x80 = 128 against activation 0, nothing added.
                let wu = _mm512_xor_si512(wv, flip);
                for t in 0..N {
                    acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], wu, xv[t]);
                }
            }
            c += 64;
        }
        // SAFETY: four f32 of rscales in bounds (r0 + M <= rows).
        let rs = unsafe { _mm_loadu_ps(rscales.as_ptr().add(r0)) };
        for t in 0..N {
            // SAFETY: register-only.
            let s = unsafe { hsum4_512([acc[0][t], acc[1][t], acc[2][t], acc[3][t]]) };
            let dot = _mm_sub_epi32(s, _mm_set1_epi32(128 * xsums[t]));
            let v = _mm_div_ps(
                _mm_cvtepi32_ps(dot),
                _mm_mul_ps(_mm_set1_ps(tscales[t]), rs),
            );
            // SAFETY: four f32 in bounds (r0 + M <= rows <= out[t].len()).
            unsafe { _mm_storeu_ps(out[t].as_mut_ptr().add(r0), v) };
        }
    }
}

row_dot_n!(row_dot_n_avx2, "avx2", prod_avx2, flush_avx2);
row_dot_n!(
    row_dot_n_vnni,
    "avx2,avx512f,avx512vl,avx512vnni",
    prod_vnni,
    flush_vnni
);

/// `Σ w·x` of int8 vectors: |w| as u8 times x with w's sign, pairs to i16 (at most
/// 2 · 127 · 127, no saturation), then to i32.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn dot_i8_avx2(w: &[i8], x: &[i8]) -> i32 {
    assert!(w.len() == x.len() && w.len().is_multiple_of(32));
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    for i in (0..w.len()).step_by(32) {
        // SAFETY: i + 32 <= len for both (asserted).
        let (wv, xv) = unsafe {
            (
                _mm256_loadu_si256(w.as_ptr().add(i).cast()),
                _mm256_loadu_si256(x.as_ptr().add(i).cast()),
            )
        };
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
    }
    // SAFETY: register-only.
    unsafe { hsum(acc) }
}

/// Eight f32 values from eight binary16 ones (F16C).
#[inline(always)]
unsafe fn widen_f16(p: *const u16) -> __m256 {
    // SAFETY: the caller has F16C and eight readable values at `p`.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
}

/// Eight f32 values from eight bfloat16 ones (zero-extend, shift left 16).
#[inline(always)]
unsafe fn widen_bf16(p: *const u16) -> __m256 {
    // SAFETY: the caller has AVX2 and eight readable values at `p`.
    unsafe {
        _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())),
            16,
        ))
    }
}

/// Eight f32 values.
#[inline(always)]
unsafe fn widen_f32(p: *const f32) -> __m256 {
    // SAFETY: the caller has AVX and eight readable values at `p`.
    unsafe { _mm256_loadu_ps(p) }
}

/// Dot products of `R` weight rows with `N` tokens: per step of eight columns, each row's
/// weights are widened once and each token's activations loaded once, for `R · N` FMAs into as
/// many accumulators (independent chains); then each is summed horizontally, and the columns
/// past the last multiple of eight are added in scalar code.
macro_rules! float_tile {
    ($name:ident, $w:ty, $features:literal, $widen:ident, $scalar:expr) => {
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name<const R: usize, const N: usize>(
            ws: [&[$w]; R],
            xs: [&[f32]; N],
        ) -> [[f32; N]; R] {
            let n = ws[0].len();
            assert!(
                ws.iter().all(|w| w.len() == n) && xs.iter().all(|x| x.len() >= n),
                "rows of one length, activations at least as long"
            );
            let mut acc = [[_mm256_setzero_ps(); N]; R];
            let mut i = 0;
            while i + 8 <= n {
                // SAFETY: i + 8 <= n for every row and token (asserted above).
                unsafe {
                    let xv: [__m256; N] =
                        std::array::from_fn(|t| _mm256_loadu_ps(xs[t].as_ptr().add(i)));
                    for (a, w) in acc.iter_mut().zip(&ws) {
                        let wv = $widen(w.as_ptr().add(i));
                        for (a, x) in a.iter_mut().zip(&xv) {
                            *a = _mm256_fmadd_ps(wv, *x, *a);
                        }
                    }
                }
                i += 8;
            }
            let widen = $scalar;
            std::array::from_fn(|r| {
                std::array::from_fn(|t| {
                    // SAFETY: register-only.
                    let mut y = unsafe { hsum_ps(acc[r][t]) };
                    for k in i..n {
                        y += widen(ws[r][k]) * xs[t][k];
                    }
                    y
                })
            })
        }
    };
}

/// `Σ w·x` for one row of float weights: eight weights widened per FMA, four independent
/// accumulators, the tail in scalar code.
macro_rules! float_dot {
    ($name:ident, $w:ty, $features:literal, $widen:ident, $scalar:expr) => {
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name(w: &[$w], x: &[f32]) -> f32 {
            let n = w.len().min(x.len());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (j, a) in acc.iter_mut().enumerate() {
                    // SAFETY: i + 8j + 8 <= n for both slices.
                    unsafe {
                        let wv = $widen(w.as_ptr().add(i + 8 * j));
                        let xv = _mm256_loadu_ps(x.as_ptr().add(i + 8 * j));
                        *a = _mm256_fmadd_ps(wv, xv, *a);
                    }
                }
                i += 32;
            }
            let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            // SAFETY: register-only.
            let mut total = unsafe { hsum_ps(s) };
            let widen = $scalar;
            for k in i..n {
                total += widen(w[k]) * x[k];
            }
            total
        }
    };
}

float_dot!(dot_f16_avx2, u16, "avx2,fma,f16c", widen_f16, |b: u16| {
    half::f16::from_bits(b).to_f32()
});
float_dot!(dot_bf16_avx2, u16, "avx2,fma", widen_bf16, |b: u16| {
    f32::from_bits(u32::from(b) << 16)
});
float_dot!(dot_f32_avx2, f32, "avx2,fma", widen_f32, |v: f32| v);

float_tile!(tile_f16_avx2, u16, "avx2,fma,f16c", widen_f16, |b: u16| {
    half::f16::from_bits(b).to_f32()
});
float_tile!(tile_bf16_avx2, u16, "avx2,fma", widen_bf16, |b: u16| {
    f32::from_bits(u32::from(b) << 16)
});
float_tile!(tile_f32_avx2, f32, "avx2,fma", widen_f32, |v: f32| v);

#[inline(always)]
unsafe fn hsum_ps(v: __m256) -> f32 {
    // SAFETY: register-only AVX operations.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// Float activations: codes widened to f32 eight at a time, fused multiply-add with x.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn row_dot_f32_avx2(
    codes: &[u8],
    scales: &[f32],
    x: &[f32],
    sums: &[f32],
    group: usize,
) -> f32 {
    assert!(x.len() >= codes.len() * 4);
    let mask = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_ps();
    let mut y = 0f32;
    let mut g = 0;
    let mut filled = 0;
    let mut lanes = [0u8; 32];
    for b in 0..codes.len() / BLOCK_BYTES {
        // SAFETY: (b + 1) * 32 <= codes.len().
        let v = unsafe { _mm256_loadu_si256(codes.as_ptr().add(b * BLOCK_BYTES).cast()) };
        for k in 0..4 {
            let c = _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * k as i32)), mask);
            // SAFETY: lanes is 32 bytes.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), c) };
            let off = b * BLOCK + 32 * k;
            for e in 0..4 {
                // SAFETY: 8 bytes of lanes at 8e; off + 8e + 8 <= x.len() (asserted).
                unsafe {
                    let c8 = _mm_loadl_epi64(lanes.as_ptr().add(8 * e).cast());
                    let cf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c8));
                    let xv = _mm256_loadu_ps(x.as_ptr().add(off + 8 * e));
                    acc = _mm256_fmadd_ps(cf, xv, acc);
                }
            }
            filled += 32;
            if filled == group {
                filled = 0;
                // SAFETY: register-only.
                y += scales[g] * (unsafe { hsum_ps(acc) } - sums[g]);
                acc = _mm256_setzero_ps();
                g += 1;
            }
        }
    }
    y
}

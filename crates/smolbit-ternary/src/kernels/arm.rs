//! aarch64 kernels: NEON and NEON with the dot-product extension; each equals its format's
//! scalar reference bit for bit. NEON kernels: the same integer sums as the scalar reference. Codes (0, 1, 2) and int8
//! activations are both signed bytes here; baseline NEON multiplies them with `smull` to
//! i16 (two products per lane, at most 2 · 127 · 2 = 508, or 2 · 127 · 127 for int8 weights)
//! and pairwise-adds into i32 lanes; with the dot-product extension `sdot` sums four
//! products per i32 lane directly.
use std::arch::aarch64::*;

use super::q4::Q4_GROUP;
use super::ternary::{BLOCK, BLOCK_BYTES};

#[inline(always)]
unsafe fn prod_neon(acc: int32x4_t, c: int8x16_t, x: int8x16_t) -> int32x4_t {
    // SAFETY: register-only NEON operations (NEON is part of the aarch64 baseline).
    unsafe {
        let p = vmull_s8(vget_low_s8(c), vget_low_s8(x));
        vpadalq_s16(acc, vmlal_high_s8(p, c, x))
    }
}

/// `sdot` (inline assembly: the `vdotq_s32` intrinsic is not stable in Rust yet).
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn prod_dot(mut acc: int32x4_t, c: int8x16_t, x: int8x16_t) -> int32x4_t {
    // SAFETY: register-only; the dot-product extension is enabled for this function and
    // its callers are only reached when the CPU has it.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {c:v}.16b, {x:v}.16b",
            acc = inout(vreg) acc,
            c = in(vreg) c,
            x = in(vreg) x,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// The four quarters of a 128-column block, each as two 16-code vectors (columns
/// `32q .. 32q + 16` and `32q + 16 .. 32q + 32`).
#[inline(always)]
unsafe fn unpack(p: *const u8) -> [[int8x16_t; 2]; 4] {
    // SAFETY: the caller guarantees 32 readable bytes at p.
    unsafe {
        let mask = vdupq_n_u8(3);
        let (a, b) = (vld1q_u8(p), vld1q_u8(p.add(16)));
        let s = vreinterpretq_s8_u8;
        [
            [s(vandq_u8(a, mask)), s(vandq_u8(b, mask))],
            [
                s(vandq_u8(vshrq_n_u8::<2>(a), mask)),
                s(vandq_u8(vshrq_n_u8::<2>(b), mask)),
            ],
            [
                s(vandq_u8(vshrq_n_u8::<4>(a), mask)),
                s(vandq_u8(vshrq_n_u8::<4>(b), mask)),
            ],
            [s(vshrq_n_u8::<6>(a)), s(vshrq_n_u8::<6>(b))],
        ]
    }
}

macro_rules! kernels {
    ($row_dot_n:ident, $rows_dot:ident, $q4:ident, $dot_i8:ident, $features:literal, $prod:ident) => {
        /// `N` tokens against one packed row (as the AVX2 kernel of the same name, the last
        /// block's padding quarters skipped the same way).
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $row_dot_n<const N: usize>(
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
            let mut y = [0f32; N];
            if group >= BLOCK {
                let per = group / BLOCK;
                for g in 0..scales.len() {
                    let mut acc = [vdupq_n_s32(0); N];
                    for b in g * per..((g + 1) * per).min(blocks) {
                        // SAFETY: b < blocks: 32 code bytes and 128 activations per token
                        // in bounds (asserted).
                        unsafe {
                            let parts = unpack(codes.as_ptr().add(b * BLOCK_BYTES));
                            let q = if b + 1 == blocks { quarters } else { 4 };
                            for t in 0..N {
                                let xb = xs[t].as_ptr().add(b * BLOCK);
                                for (k, part) in parts.iter().enumerate().take(q) {
                                    acc[t] = $prod(acc[t], part[0], vld1q_s8(xb.add(32 * k)));
                                    acc[t] = $prod(acc[t], part[1], vld1q_s8(xb.add(32 * k + 16)));
                                }
                            }
                        }
                    }
                    for t in 0..N {
                        let s = vaddvq_s32(acc[t]);
                        y[t] += scales[g] * (s - sums[t][g]) as f32;
                    }
                }
            } else {
                // 32 or 64 columns per group: 4 or 2 groups per block.
                let q = group / 32;
                for b in 0..blocks {
                    // SAFETY: as above.
                    let parts = unsafe { unpack(codes.as_ptr().add(b * BLOCK_BYTES)) };
                    for j in 0..4 / q {
                        let g = b * (4 / q) + j;
                        for t in 0..N {
                            let mut acc = vdupq_n_s32(0);
                            for k in j * q..(j + 1) * q {
                                // SAFETY: as above.
                                unsafe {
                                    let xb = xs[t].as_ptr().add(b * BLOCK + 32 * k);
                                    acc = $prod(acc, parts[k][0], vld1q_s8(xb));
                                    acc = $prod(acc, parts[k][1], vld1q_s8(xb.add(16)));
                                }
                            }
                            let s = vaddvq_s32(acc);
                            y[t] += scales[g] * (s - sums[t][g]) as f32;
                        }
                    }
                }
            }
            y
        }

        /// One token against `M` packed rows (groups of whole blocks): each block's
        /// activations loaded once for all rows.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $rows_dot<const M: usize>(
            codes: [&[u8]; M],
            scales: [&[f32]; M],
            x: &[i8],
            sums: &[i32],
            group: usize,
        ) -> [f32; M] {
            let blocks = codes[0].len() / BLOCK_BYTES;
            let groups = scales[0].len();
            for r in 0..M {
                assert!(codes[r].len() == blocks * BLOCK_BYTES && scales[r].len() == groups);
            }
            assert!(x.len() >= blocks * BLOCK && sums.len() >= groups);
            assert!(group.is_multiple_of(BLOCK) && groups * group >= blocks * BLOCK);
            let per = group / BLOCK;
            let mut y = [0f32; M];
            for g in 0..groups {
                let mut acc = [vdupq_n_s32(0); M];
                for b in g * per..((g + 1) * per).min(blocks) {
                    // SAFETY: b < blocks: 128 activations and 32 code bytes per row in
                    // bounds (asserted).
                    unsafe {
                        let xb = x.as_ptr().add(b * BLOCK);
                        let xv: [[int8x16_t; 2]; 4] = std::array::from_fn(|k| {
                            [vld1q_s8(xb.add(32 * k)), vld1q_s8(xb.add(32 * k + 16))]
                        });
                        for r in 0..M {
                            let parts = unpack(codes[r].as_ptr().add(b * BLOCK_BYTES));
                            for k in 0..4 {
                                acc[r] = $prod(acc[r], parts[k][0], xv[k][0]);
                                acc[r] = $prod(acc[r], parts[k][1], xv[k][1]);
                            }
                        }
                    }
                }
                for r in 0..M {
                    let s = vaddvq_s32(acc[r]);
                    y[r] += scales[r][g] * (s - sums[g]) as f32;
                }
            }
            y
        }

        /// One token against one Q4 row: per group the exact integer sum (codes 0..=15 as
        /// signed bytes), then the reference's f32 operations in the reference's order.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $q4(
            codes: &[u8],
            scales: &[u16],
            x: &[i8],
            off: &[i32],
            steps: &[f32],
        ) -> f32 {
            use super::q4::Q4_LANES;
            let groups = scales.len();
            assert!(off.len() >= groups && steps.len() >= groups);
            assert!(codes.len() >= groups * Q4_GROUP / 2 && x.len() >= groups * Q4_GROUP);
            let low = vdupq_n_u8(0x0F);
            let mut lanes = [0f32; Q4_LANES];
            for g in 0..groups {
                // SAFETY: group g's 16 code bytes and 32 activations in bounds (asserted).
                let s = unsafe {
                    let b = vld1q_u8(codes.as_ptr().add(g * Q4_GROUP / 2));
                    let xp = x.as_ptr().add(g * Q4_GROUP);
                    let lo = vreinterpretq_s8_u8(vandq_u8(b, low));
                    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(b));
                    let acc = $prod(vdupq_n_s32(0), lo, vld1q_s8(xp));
                    vaddvq_s32($prod(acc, hi, vld1q_s8(xp.add(16))))
                };
                let d = half::f16::from_bits(scales[g]).to_f32() * steps[g];
                lanes[g % Q4_LANES] += d * (s - off[g]) as f32;
            }
            lanes.iter().fold(0f32, |a, &v| a + v)
        }

        /// `Σ w·x` of int8 vectors (values in -127..=127, length a multiple of 16).
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $dot_i8(w: &[i8], x: &[i8]) -> i32 {
            assert!(w.len() == x.len() && w.len().is_multiple_of(16));
            let mut acc = vdupq_n_s32(0);
            for i in (0..w.len()).step_by(16) {
                // SAFETY: i + 16 <= len for both (asserted).
                unsafe {
                    acc = $prod(
                        acc,
                        vld1q_s8(w.as_ptr().add(i)),
                        vld1q_s8(x.as_ptr().add(i)),
                    );
                }
            }
            vaddvq_s32(acc)
        }
    };
}

kernels!(
    row_dot_n_neon,
    rows_dot_neon,
    q4_row_dot_neon,
    dot_i8_neon,
    "neon",
    prod_neon
);
kernels!(
    row_dot_n_dot,
    rows_dot_dot,
    q4_row_dot_dot,
    dot_i8_dot,
    "neon,dotprod",
    prod_dot
);

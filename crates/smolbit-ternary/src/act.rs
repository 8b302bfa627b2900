//! int8 per-token absmax activation quantization (BitNet's W1.58A8), as transformers'
//! `BitLinear.activation_quant`: `scale = 127 / max(max|x|, 1e-5)`,
//! `q = clamp(round(x * scale), -128, 127)`, `x̂ = q / scale`.

/// Quantize one token's activations; returns the int8 values and the scale.
pub fn quantize_token(x: &[f32]) -> (Vec<i8>, f32) {
    let mut q = vec![0i8; x.len()];
    let scale = quantize_token_into(x, &mut q);
    (q, scale)
}

/// [`quantize_token`] into `out` (at least `x.len()` long; the rest is left as it is);
/// returns the scale. AVX2 where the CPU has it (bit-identical to the portable loop for
/// NaN-free input: `vcvtps2dq` rounds half to even, saturating packs clamp), else portable.
pub fn quantize_token_into(x: &[f32], out: &mut [i8]) -> f32 {
    assert!(out.len() >= x.len(), "output shorter than the token");
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just now).
        return unsafe { x86::quantize_token_into(x, out) };
    }
    quantize_token_portable(x, out)
}

/// The portable [`quantize_token_into`].
pub fn quantize_token_portable(x: &[f32], out: &mut [i8]) -> f32 {
    let scale = 127.0 / absmax(x);
    for (o, v) in out.iter_mut().zip(x) {
        *o = quantize_one(*v, scale);
    }
    scale
}

fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-5)
}

#[inline(always)]
fn quantize_one(v: f32, scale: f32) -> i8 {
    round_half_even(v * scale).clamp(-128.0, 127.0) as i8
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::quantize_token_into`] with AVX2: absmax eight lanes at a time, then 32 values
    /// per step converted (round half to even), packed with saturation to i16 and i8, and put
    /// back in order (the packs work per 128-bit lane); the tails in scalar code.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_token_into(x: &[f32], out: &mut [i8]) -> f32 {
        assert!(out.len() >= x.len());
        let n = x.len();
        let p = x.as_ptr();
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let mut m = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n.
            let v = unsafe { _mm256_loadu_ps(p.add(i)) };
            m = _mm256_max_ps(m, _mm256_and_ps(v, abs_mask));
            i += 8;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: 8 floats into an array of 8.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        let max = lanes
            .iter()
            .chain(&x[i..])
            .fold(0f32, |a, v| a.max(v.abs()))
            .max(1e-5);
        let scale = 127.0 / max;
        let s = _mm256_set1_ps(scale);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n <= out.len().
            unsafe {
                let q = |k: usize| {
                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p.add(i + 8 * k)), s))
                };
                let ab = _mm256_packs_epi32(q(0), q(1));
                let cd = _mm256_packs_epi32(q(2), q(3));
                let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
                _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), bytes);
            }
            i += 32;
        }
        for (o, v) in out[i..n].iter_mut().zip(&x[i..]) {
            *o = super::quantize_one(*v, scale);
        }
        scale
    }
}

/// `v.round_ties_even()` without a libm call (baseline x86-64 has no rounding instruction, and
/// `round_ties_even` becomes a call to `rintf`): for |v| < 2^23, `|v| + 2^23` lies where f32's
/// spacing is exactly 1, so the addition rounds |v| to an integer in the FPU's default
/// round-to-nearest-even mode; subtracting 2^23 and restoring the sign gives the result. Floats
/// with |v| >= 2^23 are integers already (and NaN stays NaN).
#[inline(always)]
pub fn round_half_even(v: f32) -> f32 {
    const TWO23: f32 = 8_388_608.0;
    let a = v.abs();
    if a < TWO23 {
        ((a + TWO23) - TWO23).copysign(v)
    } else {
        v
    }
}

/// Quantize and dequantize `x: [tokens, width]` in place (fake quantization for reference paths).
pub fn fake_quantize(x: &mut [f32], width: usize) {
    for row in x.chunks_mut(width) {
        let (q, scale) = quantize_token(row);
        for (v, q) in row.iter_mut().zip(q) {
            *v = f32::from(q) / scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_rounding_equals_round_ties_even() {
        let mut v = -300.0f32;
        while v <= 300.0 {
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
            v += 0.125;
        }
        for v in [
            0.5f32,
            1.5,
            2.5,
            -0.5,
            -2.5,
            0.49999997,
            4_194_304.5,
            8_388_607.5,
            -6e6 - 0.5,
            1e7,
            -1e9,
            126.5,
            -127.5,
        ] {
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn fast_quantization_equals_the_portable_loop() {
        // Ties (x · scale exactly k + 1/2: the maximum is 127, so the scale is 1), both signs,
        // and every tail length up to 40 around the 8- and 32-wide steps.
        let ties: Vec<f32> = std::iter::once(127.0)
            .chain((-127..127).map(|k| k as f32 + 0.5))
            .collect();
        let mut state = 7u64;
        for n in (0..=40).chain([255, 576, 1000]) {
            let x: Vec<f32> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 7.0
                })
                .collect();
            for x in [&x[..], &ties[..n.min(ties.len())]] {
                let mut want = vec![0i8; x.len()];
                let mut got = vec![1i8; x.len()];
                let sw = quantize_token_portable(x, &mut want);
                let sg = quantize_token_into(x, &mut got);
                assert_eq!((sg, &got), (sw, &want), "n = {}", x.len());
            }
        }
    }

    #[test]
    fn absmax_per_token() {
        let (q, s) = quantize_token(&[1.0, -2.0, 0.5, 0.0]);
        assert_eq!(s, 63.5);
        assert_eq!(q, vec![64, -127, 32, 0]); // 63.5 rounds to 64 (even), 31.75 to 32
        let (q, s) = quantize_token(&[0.0, 0.0]);
        assert_eq!((q, s), (vec![0, 0], 127.0 / 1e-5));
        let mut x = vec![1.0, -2.0, 3.0, 0.0, 0.25, -0.5];
        fake_quantize(&mut x, 3);
        assert!((x[2] - 3.0).abs() < 1e-6 && (x[5] + 0.5).abs() < 1e-6);
    }
}

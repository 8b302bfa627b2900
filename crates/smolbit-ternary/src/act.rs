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
/// returns the scale.
pub fn quantize_token_into(x: &[f32], out: &mut [i8]) -> f32 {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-5);
    let scale = 127.0 / max;
    for (o, v) in out.iter_mut().zip(x) {
        *o = round_half_even(v * scale).clamp(-128.0, 127.0) as i8;
    }
    scale
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

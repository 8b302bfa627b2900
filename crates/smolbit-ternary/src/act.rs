//! int8 per-token absmax activation quantization (BitNet's W1.58A8), as transformers'
//! `BitLinear.activation_quant`: `scale = 127 / max(max|x|, 1e-5)`,
//! `q = clamp(round(x * scale), -128, 127)`, `x̂ = q / scale`.

/// Quantize one token's activations; returns the int8 values and the scale.
pub fn quantize_token(x: &[f32]) -> (Vec<i8>, f32) {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-5);
    let scale = 127.0 / max;
    let q = x
        .iter()
        .map(|v| (v * scale).round_ties_even().clamp(-128.0, 127.0) as i8)
        .collect();
    (q, scale)
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

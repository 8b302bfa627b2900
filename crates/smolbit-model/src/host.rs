//! Rotary embedding on host memory, for the CPU path that runs whole blocks on the host next to
//! the packed kernels (see `Block::forward_host`; attention itself is
//! `smolbit_ternary::attention`). Same f32 formulas as the burn path in `layers`.

use smolbit_weights::ModelConfig;

/// Rotary tables for positions `past .. past + t`, `[t, d]` each: transformers' default RoPE,
/// `inv_freq = 1 / theta^(2i/d)`, angle `pos * inv_freq` in f32, `emb = cat(freqs, freqs)`.
pub(crate) fn rope_tables(c: &ModelConfig, past: usize, t: usize) -> (Vec<f32>, Vec<f32>) {
    let d = c.head_dim;
    let half = d / 2;
    let theta = c.rope_theta as f32;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
        .collect();
    let mut cos = Vec::with_capacity(t * d);
    let mut sin = Vec::with_capacity(t * d);
    for p in past..past + t {
        for _ in 0..2 {
            for &f in &inv_freq {
                let a = (p as f32 * f) as f64;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
    }
    (cos, sin)
}

/// `x * cos + rotate_half(x) * sin` in place, for `x: [t, heads * d]` (token-major, each head's
/// `d` values contiguous) with tables `[t, d]`.
pub(crate) fn apply_rope(x: &mut [f32], heads: usize, d: usize, cos: &[f32], sin: &[f32]) {
    let half = d / 2;
    for ((xt, c), s) in x
        .chunks_exact_mut(heads * d)
        .zip(cos.chunks_exact(d))
        .zip(sin.chunks_exact(d))
    {
        for h in xt.chunks_exact_mut(d) {
            let (x1, x2) = h.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] + -b * s[i];
                x2[i] = b * c[half + i] + a * s[half + i];
            }
        }
    }
}

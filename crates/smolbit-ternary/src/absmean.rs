//! BitNet b1.58 absmean quantization.
//!
//! As transformers' `WeightQuant` / bitnet.cpp: `inv = 1 / max(mean|W|, 1e-5)`,
//! `q = clamp(round(W * inv), -1, 1)` with round-half-to-even (`torch.round`), `Ŵ = q / inv`.
//! The mean is accumulated in f64 so the result does not depend on summation order.

use crate::{Granularity, TernaryMatrix};

/// BitNet's lower bound on the mean.
pub const MIN_SCALE: f32 = 1e-5;

/// Mean absolute value of `values`, clamped to [`MIN_SCALE`].
pub fn absmean_scale<'a>(values: impl Iterator<Item = &'a f32>) -> f32 {
    let (mut sum, mut n) = (0f64, 0usize);
    for v in values {
        sum += f64::from(v.abs());
        n += 1;
    }
    let mean = if n == 0 { 0.0 } else { (sum / n as f64) as f32 };
    mean.max(MIN_SCALE)
}

/// One trit: `clamp(round_half_even(w * inv), -1, 1)`.
#[inline]
pub fn trit(w: f32, inv: f32) -> i8 {
    (w * inv).round_ties_even().clamp(-1.0, 1.0) as i8
}

/// Quantize a `[rows, cols]` matrix with one absmean scale per tensor, row or group.
pub fn quantize(w: &[f32], rows: usize, cols: usize, granularity: Granularity) -> TernaryMatrix {
    assert_eq!(
        w.len(),
        rows * cols,
        "absmean::quantize: {} values for {rows}x{cols}",
        w.len()
    );
    let mut scales = vec![0f32; granularity.scales_per_plane(rows, cols)];
    let mut trits = vec![0i8; rows * cols];
    if granularity == Granularity::Tensor {
        let s = absmean_scale(w.iter());
        scales[0] = s;
        let inv = 1.0 / s;
        for (t, &x) in trits.iter_mut().zip(w) {
            *t = trit(x, inv);
        }
    } else {
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            for (idx, range) in granularity.segments(r, cols) {
                let s = absmean_scale(row[range.clone()].iter());
                scales[idx] = s;
                let inv = 1.0 / s;
                for c in range {
                    trits[r * cols + c] = trit(row[c], inv);
                }
            }
        }
    }
    TernaryMatrix {
        rows,
        cols,
        planes: 1,
        granularity,
        trits,
        scales,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_like_torch() {
        // mean|w| = 1, so w * inv = w: 0.5 -> 0, 1.5 -> 2 -> clamped 1, -0.5 -> -0.
        let w = [0.5, -0.5, 1.5, -1.5, 0.49, 2.0, -0.51, 0.0];
        let w: Vec<f32> = w.iter().map(|x| x * 8.0 / 6.99).collect();
        let m = quantize(&w, 1, 8, Granularity::Tensor);
        let s = m.scales[0];
        let inv = 1.0 / s;
        let want: Vec<i8> = w
            .iter()
            .map(|x| (x * inv).round_ties_even().clamp(-1.0, 1.0) as i8)
            .collect();
        assert_eq!(m.trits, want);
        assert_eq!(trit(0.5, 1.0), 0);
        assert_eq!(trit(-0.5, 1.0), 0);
        assert_eq!(trit(0.5000001, 1.0), 1);
        assert_eq!(trit(1.5, 1.0), 1);
    }

    #[test]
    fn scale_granularities() {
        let w: Vec<f32> = (0..12).map(|i| i as f32 - 5.5).collect();
        let t = quantize(&w, 2, 6, Granularity::Tensor);
        assert_eq!(t.scales, vec![3.0]);
        let r = quantize(&w, 2, 6, Granularity::Row);
        assert_eq!(r.scales, vec![3.0, 3.0]);
        let g = quantize(&w, 2, 6, Granularity::Group(4));
        // row 0: [-5.5,-4.5,-3.5,-2.5] [-1.5,-0.5]; row 1: [0.5,1.5,2.5,3.5] [4.5,5.5]
        assert_eq!(g.scales, vec![4.0, 1.0, 2.0, 5.0]);
        assert_eq!(
            quantize(&[0.0; 4], 1, 4, Granularity::Tensor).scales,
            vec![MIN_SCALE]
        );
    }
}

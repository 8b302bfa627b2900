//! Quantization error metrics.

/// `||W - Ŵ||_F / ||W||_F`.
pub fn relative_frobenius(w: &[f32], w_hat: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in w.iter().zip(w_hat) {
        num += f64::from(a - b).powi(2);
        den += f64::from(*a).powi(2);
    }
    if den == 0.0 { 0.0 } else { (num / den).sqrt() }
}

/// `||(W - Ŵ) Xᵀ||_F / ||W Xᵀ||_F` for `W, Ŵ: [rows, cols]` and sample inputs `X: [n, cols]`.
pub fn relative_output_error(w: &[f32], w_hat: &[f32], rows: usize, cols: usize, x: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for xr in x.chunks_exact(cols) {
        for r in 0..rows {
            let (mut y, mut d) = (0f64, 0f64);
            for c in 0..cols {
                let xv = f64::from(xr[c]);
                y += f64::from(w[r * cols + c]) * xv;
                d += f64::from(w[r * cols + c] - w_hat[r * cols + c]) * xv;
            }
            num += d * d;
            den += y * y;
        }
    }
    if den == 0.0 { 0.0 } else { (num / den).sqrt() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors() {
        assert_eq!(relative_frobenius(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((relative_frobenius(&[3.0, 4.0], &[0.0, 4.0]) - 0.6).abs() < 1e-12);
        // W = [[1, 0], [0, 1]], Ŵ = [[1, 0], [0, 0]], X = [[0, 2]]: WX = (0, 2), error (0, 2).
        let e = relative_output_error(
            &[1.0, 0.0, 0.0, 1.0],
            &[1.0, 0.0, 0.0, 0.0],
            2,
            2,
            &[0.0, 2.0],
        );
        assert!((e - 1.0).abs() < 1e-12);
    }
}

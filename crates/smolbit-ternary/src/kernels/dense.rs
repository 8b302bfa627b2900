//! Float weights: [`F16Matrix`] (binary16) and the f32 dot product, against float activations.

use super::rows::par_rows;
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{Isa, QuantizedTable};

/// A half-precision matrix for the output head and the embedding: IEEE binary16 values (rounded
/// to nearest even from f32), float activations, f32 sums. Half the bytes of f32 and within
/// f16 rounding (2^-11 relative per weight) of it.
#[derive(Debug, Clone)]
pub struct F16Matrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows * cols` binary16 bit patterns.
    pub data: Vec<u16>,
}

impl QuantizedTable for F16Matrix {
    fn quantize(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "w must be [rows, cols]");
        F16Matrix {
            rows,
            cols,
            data: w
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect(),
        }
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn append(&mut self, other: Self) {
        assert_eq!(
            other.cols, self.cols,
            "appended rows must have the same columns"
        );
        self.rows += other.rows;
        self.data.extend_from_slice(&other.data);
    }

    fn row(&self, r: usize) -> Vec<f32> {
        self.data[r * self.cols..][..self.cols]
            .iter()
            .map(|&b| half::f16::from_bits(b).to_f32())
            .collect()
    }

    fn bytes(&self) -> usize {
        self.data.len() * 2
    }

    fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
        assert_eq!(x.len(), tokens * self.cols, "x must be [tokens, cols]");
        par_rows(self.rows, tokens, |r, out| {
            let w = &self.data[r * self.cols..][..self.cols];
            for (t, o) in out.iter_mut().enumerate() {
                *o = dot_f16(isa, w, &x[t * self.cols..][..self.cols]);
            }
        })
    }
}

/// `Σ w·x` for binary16 `w`: F16C conversion and FMA on x86-64 with AVX2, else portable (eight
/// partial sums). The two differ only in f32 rounding.
fn dot_f16(isa: Isa, w: &[u16], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni)
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("fma")
    {
        // SAFETY: AVX2 (Isa), F16C and FMA were detected.
        return unsafe { x86::dot_f16_avx2(w, x) };
    }
    let _ = isa;
    dot_f16_portable(w, x)
}

/// The portable `dot_f16`: eight partial sums, binary16 widened exactly.
pub fn dot_f16_portable(w: &[u16], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (cw, cx) = (w.chunks_exact(8), x.chunks_exact(8));
    let tail: f32 = cw
        .remainder()
        .iter()
        .zip(cx.remainder())
        .map(|(&a, &b)| half::f16::from_bits(a).to_f32() * b)
        .sum();
    for (a, b) in cw.zip(cx) {
        for i in 0..8 {
            acc[i] += half::f16::from_bits(a[i]).to_f32() * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
/// `Σ a·b` in f32 with eight partial sums (vectorized with AVX2 + FMA when available).
pub(super) fn dot_f32(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) && is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 (Isa) and FMA were detected.
        return unsafe { x86::dot_f32_avx2(a, b) };
    }
    let _ = isa;
    dot_f32_portable(a, b)
}

/// `Σ a·b` in f32 with eight partial sums, in portable code (plain multiply and add: without
/// hardware FMA, `mul_add` is a library call).
#[inline(always)]
pub(crate) fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::random_x;

    /// The f16 table: rows round-trip f16 rounding; products in every implementation within
    /// the f16 rounding bound of the f64 product (2^-11 of Σ|w·x| per weight, plus f32
    /// accumulation: 1e-5 of Σ|w·x|), and the fast path within 1e-5 of Σ|w·x| of the portable one.
    #[test]
    fn f16_matches_dense() {
        for (rows, cols) in [(5, 7), (17, 64), (33, 300)] {
            let w = random_x(rows * cols, 5);
            let m = F16Matrix::quantize(&w, rows, cols);
            for r in 0..rows {
                for (c, v) in m.row(r).into_iter().enumerate() {
                    let want = w[r * cols + c];
                    assert!(
                        (v - want).abs() <= want.abs() / 2048.0 + 1e-7,
                        "row {r} col {c}"
                    );
                }
            }
            for tokens in [1, 3] {
                let x = random_x(tokens * cols, 6);
                let portable = m.matmul_with(Isa::Scalar, &x, tokens);
                for isa in Isa::available() {
                    let got = m.matmul_with(isa, &x, tokens);
                    for t in 0..tokens {
                        for r in 0..rows {
                            let (wr, xt) = (&w[r * cols..][..cols], &x[t * cols..][..cols]);
                            let exact: f64 = wr
                                .iter()
                                .zip(xt)
                                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                                .sum();
                            let mag: f64 = wr
                                .iter()
                                .zip(xt)
                                .map(|(&a, &b)| f64::from((a * b).abs()))
                                .sum();
                            let y = f64::from(got[t * rows + r]);
                            assert!(
                                (y - exact).abs() <= mag * (1.0 / 2048.0 + 1e-5),
                                "{isa:?} {rows}x{cols}"
                            );
                            let p = f64::from(portable[t * rows + r]);
                            assert!(
                                (y - p).abs() <= mag * 1e-5,
                                "{isa:?} vs portable {rows}x{cols}"
                            );
                        }
                    }
                }
            }
        }
    }
}

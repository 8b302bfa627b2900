//! [`Q8Matrix`]: int8 weights with a scale per row, against int8 activations.

#[cfg(target_arch = "aarch64")]
use super::arm;
use super::rows::{RowChunk, par_row_chunks, row_range};
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{Isa, QuantizedInput, QuantizedTable};

/// An 8-bit matrix for the output head and the embedding: per-row absmax scales
/// (`w ≈ q / scale`, `q` in -127..=127), columns padded to a multiple of 32.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `cols` rounded up to a multiple of 32.
    pub padded: usize,
    /// `rows * padded` values.
    pub data: Vec<i8>,
    /// Per row: `127 / max|w|`.
    pub scales: Vec<f32>,
}

impl Q8Matrix {
    /// Quantize a row-major `[rows, cols]` f32 matrix.
    pub fn from_f32(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "w must be [rows, cols]");
        let padded = cols.div_ceil(32) * 32;
        let mut data = vec![0i8; rows * padded];
        let mut scales = Vec::with_capacity(rows);
        for r in 0..rows {
            let row = &w[r * cols..][..cols];
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
            let s = 127.0 / max;
            for (d, v) in data[r * padded..][..cols].iter_mut().zip(row) {
                *d = crate::act::round_half_even(v * s).clamp(-127.0, 127.0) as i8;
            }
            scales.push(s);
        }
        Q8Matrix {
            rows,
            cols,
            padded,
            data,
            scales,
        }
    }
}

impl QuantizedTable for Q8Matrix {
    fn quantize(w: &[f32], rows: usize, cols: usize) -> Self {
        Q8Matrix::from_f32(w, rows, cols)
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn append(&mut self, other: Self) {
        assert_eq!(
            other.padded, self.padded,
            "appended rows must have the same columns"
        );
        self.rows += other.rows;
        self.data.extend_from_slice(&other.data);
        self.scales.extend_from_slice(&other.scales);
    }

    /// Row `r` dequantized (an embedding lookup).
    fn row(&self, r: usize) -> Vec<f32> {
        let s = self.scales[r];
        self.data[r * self.padded..][..self.cols]
            .iter()
            .map(|&q| f32::from(q) / s)
            .collect()
    }

    /// Bytes held.
    fn bytes(&self) -> usize {
        self.data.len() + self.scales.len() * 4
    }

    /// [`Q8Matrix::matmul`] with a chosen implementation.
    fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
        assert_eq!(x.len(), tokens * self.cols, "x must be [tokens, cols]");
        // One group per token (its sum is not needed here).
        let q = QuantizedInput::new(x, tokens, self.cols, self.padded, self.padded);
        par_row_chunks(self.rows, tokens, 4, |chunk| {
            self.chunk(isa, &q, tokens, chunk)
        })
    }

    fn matmul_rows(
        &self,
        isa: Isa,
        x: &[f32],
        tokens: usize,
        rows: std::ops::Range<usize>,
    ) -> Option<Vec<f32>> {
        assert_eq!(x.len(), tokens * self.cols, "x must be [tokens, cols]");
        assert!(rows.end <= self.rows, "rows past the table");
        let q = QuantizedInput::new(x, tokens, self.cols, self.padded, self.padded);
        Some(row_range(rows, tokens, |chunk| {
            self.chunk(isa, &q, tokens, chunk)
        }))
    }

    fn has_rows(&self) -> bool {
        true
    }
}
impl Q8Matrix {
    /// The tokens of `q` against the rows of `chunk`: on AVX-512 VNNI four rows by up to four
    /// tokens at once (each row's weights loaded once for all), elsewhere row by row.
    fn chunk(&self, isa: Isa, q: &QuantizedInput, tokens: usize, chunk: &mut RowChunk<'_>) {
        #[allow(unused_mut)]
        let mut from = 0;
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Vnni {
            // Four tokens at a time.
            for t0 in (0..tokens).step_by(4) {
                from = match tokens - t0 {
                    1 => self.vnni_chunk::<1>(q, chunk, t0),
                    2 => self.vnni_chunk::<2>(q, chunk, t0),
                    3 => self.vnni_chunk::<3>(q, chunk, t0),
                    _ => self.vnni_chunk::<4>(q, chunk, t0),
                };
            }
        }
        // The rest (on AVX-512 VNNI, the last one to three rows), row by row.
        let p = self.padded;
        for ri in from..chunk.rows() {
            let r = chunk.first_row() + ri;
            let w = &self.data[r * p..][..p];
            for t in 0..tokens {
                let x = &q.values[t * p..][..p];
                chunk.set(
                    ri,
                    t,
                    dot_i8(isa, w, x) as f32 / (q.scales[t] * self.scales[r]),
                );
            }
        }
    }

    /// Tokens `t0..t0 + N` of `q` against the whole four-row sets of `chunk` on AVX-512 VNNI: the
    /// same exact integer sums and f32 operations as the portable path. Returns the chunk row
    /// where the sets end.
    #[cfg(target_arch = "x86_64")]
    fn vnni_chunk<const N: usize>(
        &self,
        q: &QuantizedInput,
        chunk: &mut RowChunk<'_>,
        t0: usize,
    ) -> usize {
        let p = self.padded;
        let xs: [&[i8]; N] = std::array::from_fn(|t| &q.values[(t0 + t) * p..][..p]);
        // One group per token: its sum is the whole row's.
        let xsums: [i32; N] = std::array::from_fn(|t| q.group_sums[t0 + t]);
        let tscales: [f32; N] = std::array::from_fn(|t| q.scales[t0 + t]);
        let (first, n) = (chunk.first_row(), chunk.rows());
        let full = n / 4 * 4;
        let mut out = chunk.token_rows::<N>(t0);
        // SAFETY: only called with Isa::Avx512Vnni, produced only when the CPU has it.
        unsafe {
            x86::q8_rows_tokens_vnni::<N>(
                &self.data[first * p..][..full * p],
                (full, p),
                &self.scales[first..][..full],
                xs,
                (xsums, tscales),
                &mut out,
            )
        };
        full
    }
}

/// Exact `Σ w·x` of two int8 vectors (values in -127..=127, length a multiple of 32).
fn dot_i8(isa: Isa, w: &[i8], x: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
        // SAFETY: AVX2 is present whenever Isa is not Scalar.
        return unsafe { x86::dot_i8_avx2(w, x) };
    }
    #[cfg(target_arch = "aarch64")]
    match isa {
        // SAFETY: Isa::Neon/NeonDot are only produced on aarch64, NeonDot only with dotprod.
        Isa::Neon => return unsafe { arm::dot_i8_neon(w, x) },
        // SAFETY: as above.
        Isa::NeonDot => return unsafe { arm::dot_i8_dot(w, x) },
        _ => {}
    }
    let _ = isa;
    w.iter()
        .zip(x)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{SHAPES, random_x};

    #[test]
    fn q8_matches_scalar_and_dense() {
        // (9, 96): four-row sets whose last 32 columns take the 512-bit kernel's masked loads.
        for (rows, cols) in SHAPES.into_iter().chain([(9, 96)]) {
            let w = random_x(rows * cols, 11);
            let m = Q8Matrix::from_f32(&w, rows, cols);
            for tokens in [1, 2, 3, 4, 5, 9] {
                let x = random_x(tokens * cols, 12);
                let want = m.matmul_with(Isa::Scalar, &x, tokens);
                for isa in Isa::available() {
                    assert!(
                        m.matmul_with(isa, &x, tokens) == want,
                        "{isa:?} {rows}x{cols}"
                    );
                    // A team's parts: rows split at an awkward point give those rows' bits.
                    let cut = rows / 3;
                    for range in [0..cut, cut..rows] {
                        let part = m.matmul_rows(isa, &x, tokens, range.clone()).expect("rows");
                        for t in 0..tokens {
                            assert!(
                                part[t * range.len()..][..range.len()]
                                    == want[t * rows..][range.clone()],
                                "{isa:?} {rows}x{cols} rows {range:?}"
                            );
                        }
                    }
                }
                // Against the f32 product: two int8 roundings (weights and activations), each
                // off by at most half a step of 1/127 of the row's or token's absmax, so the
                // error is below (|x|max·|w|max / 127) · cols.
                for t in 0..tokens {
                    let xm = x[t * cols..][..cols]
                        .iter()
                        .fold(0f32, |a, v| a.max(v.abs()));
                    for r in 0..rows {
                        let wm = w[r * cols..][..cols]
                            .iter()
                            .fold(0f32, |a, v| a.max(v.abs()));
                        let dense: f32 = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
                        let bound = xm * wm / 127.0 * cols as f32;
                        assert!((want[t * rows + r] - dense).abs() <= bound);
                    }
                }
            }
            let row = m.row(rows - 1);
            for (c, v) in row.iter().enumerate() {
                let wv = w[(rows - 1) * cols + c];
                assert!((v - wv).abs() <= 0.5 / m.scales[rows - 1] + 1e-6);
            }
        }
    }
}

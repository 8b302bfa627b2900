//! Float weights against float activations: [`F16Matrix`] (binary16), [`Bf16Matrix`]
//! (bfloat16) and [`F32Matrix`], one generic [`FloatMatrix`] over a [`FloatFormat`], with f32
//! sums; the f32 dot product they and the ternary float-activation prefill share.

use std::marker::PhantomData;

use rayon::prelude::*;

use super::rows::par_row_chunks;
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{Isa, QuantizedTable};

/// A float weight format of [`FloatMatrix`]: how a value is stored and widened, and the kernels
/// that read it.
pub trait FloatFormat: std::fmt::Debug + Clone + Send + Sync + 'static {
    /// The stored element.
    type Stored: Copy + std::fmt::Debug + Send + Sync + 'static;
    /// f32 to the stored element, rounded to nearest even.
    fn encode(v: f32) -> Self::Stored;
    /// The stored element widened to f32 (exact).
    fn decode(s: Self::Stored) -> f32;
    /// A slice widened to f32 (exact), as [`FloatFormat::decode`] of each element.
    fn decode_slice(src: &[Self::Stored], dst: &mut [f32]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = Self::decode(v);
        }
    }
    /// `Σ w·x` on the best kernel for `isa` (portable: eight partial sums).
    fn dot(isa: Isa, w: &[Self::Stored], x: &[f32]) -> f32;
    /// A tile of dot products on a kernel for `isa`, or `None` where there is none.
    fn tile(isa: Isa, w: [&[Self::Stored]; TILE_ROWS], xs: [&[f32]; TILE]) -> Option<Tile>;
}

/// IEEE binary16: half of f32's bytes, within 2^-11 relative of it.
#[derive(Debug, Clone)]
pub struct Binary16;

/// bfloat16: f32's upper half (f32's range, 2^-8 relative precision).
#[derive(Debug, Clone)]
pub struct Bfloat16;

/// f32 as it is.
#[derive(Debug, Clone)]
pub struct Single;

/// Whether this CPU runs the AVX2 + FMA float kernels (and F16C, for binary16) for `isa`.
#[cfg(target_arch = "x86_64")]
fn avx2_fma(isa: Isa, f16c: bool) -> bool {
    matches!(isa, Isa::Avx2 | Isa::Avx512Vnni)
        && is_x86_feature_detected!("fma")
        && (!f16c || is_x86_feature_detected!("f16c"))
}

/// The kernels of one format: `$dot`/`$tile` from `x86` when [`avx2_fma`] holds, else the
/// portable dot product (and no tile).
macro_rules! float_kernels {
    ($f16c:expr, $dot:ident, $tile:ident) => {
        fn dot(isa: Isa, w: &[Self::Stored], x: &[f32]) -> f32 {
            #[cfg(target_arch = "x86_64")]
            if avx2_fma(isa, $f16c) {
                // SAFETY: AVX2 (Isa), FMA and, where needed, F16C were detected.
                return unsafe { x86::$dot(w, x) };
            }
            let _ = isa;
            dot_portable::<Self>(w, x)
        }

        fn tile(isa: Isa, w: [&[Self::Stored]; TILE_ROWS], xs: [&[f32]; TILE]) -> Option<Tile> {
            #[cfg(target_arch = "x86_64")]
            if avx2_fma(isa, $f16c) {
                // SAFETY: as above.
                return Some(unsafe { x86::$tile(w, xs) });
            }
            let _ = (isa, w, xs);
            None
        }
    };
}

impl FloatFormat for Binary16 {
    type Stored = u16;
    fn encode(v: f32) -> u16 {
        half::f16::from_f32(v).to_bits()
    }
    fn decode(s: u16) -> f32 {
        half::f16::from_bits(s).to_f32()
    }
    /// half's slice conversion (F16C where the CPU has it, detected at run time): the per-element
    /// software widening took a fifth of 128-token prefill (perf, f16 135M, 1 thread).
    fn decode_slice(src: &[u16], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let src: &[half::f16] = half::slice::HalfBitsSliceExt::reinterpret_cast(src);
        src.convert_to_f32_slice(dst);
    }
    float_kernels!(true, dot_f16_avx2, tile_f16_avx2);
}

impl FloatFormat for Bfloat16 {
    type Stored = u16;
    fn encode(v: f32) -> u16 {
        half::bf16::from_f32(v).to_bits()
    }
    fn decode(s: u16) -> f32 {
        f32::from_bits(u32::from(s) << 16)
    }
    float_kernels!(false, dot_bf16_avx2, tile_bf16_avx2);
}

impl FloatFormat for Single {
    type Stored = f32;
    fn encode(v: f32) -> f32 {
        v
    }
    fn decode(s: f32) -> f32 {
        s
    }
    float_kernels!(false, dot_f32_avx2, tile_f32_avx2);
}

/// A float matrix `[rows, cols]` for the dense linears on the host kernels and for the output
/// head and embedding: values in format `F`, float activations, f32 sums.
#[derive(Debug, Clone)]
pub struct FloatMatrix<F: FloatFormat> {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows * cols` stored values.
    pub data: Vec<F::Stored>,
    format: PhantomData<F>,
}

/// binary16 weights (the f16 head and embedding; an f16 checkpoint's linears as stored).
pub type F16Matrix = FloatMatrix<Binary16>;
/// bfloat16 weights (a bf16 checkpoint's linears as stored).
pub type Bf16Matrix = FloatMatrix<Bfloat16>;
/// f32 weights (an f32 checkpoint's linears).
pub type F32Matrix = FloatMatrix<Single>;

impl<F: FloatFormat> QuantizedTable for FloatMatrix<F> {
    fn quantize(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "w must be [rows, cols]");
        FloatMatrix {
            rows,
            cols,
            data: w.iter().map(|&v| F::encode(v)).collect(),
            format: PhantomData,
        }
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
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
            .map(|&v| F::decode(v))
            .collect()
    }

    /// Widened in one parallel pass (the transient copy of many-token products), without the
    /// default's vector per row.
    fn dequantize(&self) -> Vec<f32> {
        const CHUNK: usize = 1 << 14;
        let mut out = vec![0f32; self.data.len()];
        out.par_chunks_mut(CHUNK)
            .zip(self.data.par_chunks(CHUNK))
            .for_each(|(d, s)| F::decode_slice(s, d));
        out
    }

    fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<F::Stored>()
    }

    fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
        assert_eq!(x.len(), tokens * self.cols, "x must be [tokens, cols]");
        float_product::<F>(isa, &self.data, self.rows, self.cols, x, tokens)
    }
}

/// The portable `Σ w·x`: eight partial sums, weights widened exactly.
fn dot_portable<F: FloatFormat>(w: &[F::Stored], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (cw, cx) = (w.chunks_exact(8), x.chunks_exact(8));
    let tail: f32 = cw
        .remainder()
        .iter()
        .zip(cx.remainder())
        .map(|(&a, &b)| F::decode(a) * b)
        .sum();
    for (a, b) in cw.zip(cx) {
        for i in 0..8 {
            acc[i] += F::decode(a[i]) * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Rows sharing one tile of tokens in the many-token product.
const BAND: usize = 16;
/// Rows per call of the tiled kernels. (Three rows times four tokens, twelve accumulators with
/// seven loads per twelve FMAs, was slower than one row times eight tokens as written: 142
/// against 176-246 prompt tokens/s on the 135M f32 model, `smolbit --threads 1 bench
/// --prompt-tokens 128 --linears f32`, measured beside a distillation run on this 2-core
/// machine; the model crate sends 16 tokens and more to burn's GEMM instead.)
pub const TILE_ROWS: usize = 1;
/// Tokens per call of the tiled kernels: one widened weight vector serves eight FMAs into
/// eight accumulators.
pub const TILE: usize = 8;

/// A tile's dot products, `[row][token]`.
pub type Tile = [[f32; TILE]; TILE_ROWS];

/// `y = x Wᵀ` for a float table `w: [rows, cols]`: one token row by row with `F::dot`; many
/// tokens in tiles of [`TILE`] tokens over bands of [`BAND`] rows (the tile's activations stay
/// in L1 across the band), [`TILE_ROWS`] rows at a time through `F::tile` where the CPU has a
/// kernel, and `F::dot` per row and token for the rest (rows past the last group, tokens past
/// the last whole tile).
fn float_product<F: FloatFormat>(
    isa: Isa,
    w: &[F::Stored],
    rows: usize,
    cols: usize,
    x: &[f32],
    tokens: usize,
) -> Vec<f32> {
    par_row_chunks(rows, tokens, TILE_ROWS, |chunk| {
        let (first, n_rows) = (chunk.first_row(), chunk.rows());
        let row = |ri: usize| &w[(first + ri) * cols..][..cols];
        for b0 in (0..n_rows).step_by(BAND) {
            let band_end = (b0 + BAND).min(n_rows);
            for t0 in (0..tokens).step_by(TILE) {
                let n = TILE.min(tokens - t0);
                let xt = |i: usize| &x[(t0 + i) * cols..][..cols];
                let mut ri = b0;
                while ri < band_end {
                    if n == TILE
                        && band_end - ri >= TILE_ROWS
                        && let Some(y) = F::tile(
                            isa,
                            std::array::from_fn(|k| row(ri + k)),
                            std::array::from_fn(xt),
                        )
                    {
                        for (k, ys) in y.into_iter().enumerate() {
                            for (i, v) in ys.into_iter().enumerate() {
                                chunk.set(ri + k, t0 + i, v);
                            }
                        }
                        ri += TILE_ROWS;
                        continue;
                    }
                    for i in 0..n {
                        chunk.set(ri, t0 + i, F::dot(isa, row(ri), xt(i)));
                    }
                    ri += 1;
                }
            }
        }
    })
}

/// `Σ a·b` in f32 with eight partial sums (vectorized with AVX2 + FMA when available).
pub(super) fn dot_f32(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    Single::dot(isa, a, b)
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

    /// A float table: rows round-trip the format's rounding (relative `unit`: 2^-11 for
    /// binary16, 2^-8 for bfloat16, 0 for f32); products in every implementation within that
    /// rounding of the f64 product (`unit` of Σ|w·x|, plus f32 accumulation: 1e-5 of Σ|w·x|),
    /// and within 1e-5 of Σ|w·x| of the portable path; the dequantized matrix equals the rows.
    fn check_float_table<T: QuantizedTable>(unit: f32) {
        for (rows, cols) in [(5, 7), (17, 64), (33, 300)] {
            let w = random_x(rows * cols, 5);
            let m = T::quantize(&w, rows, cols);
            assert_eq!((m.rows(), m.cols()), (rows, cols));
            let all = m.dequantize();
            for r in 0..rows {
                let row = m.row(r);
                assert_eq!(&all[r * cols..][..cols], &row[..]);
                for (c, v) in row.into_iter().enumerate() {
                    let want = w[r * cols + c];
                    assert!(
                        (v - want).abs() <= want.abs() * unit + 1e-7,
                        "row {r} col {c}"
                    );
                }
            }
            // One token, fewer than a tile, and two tiles plus three (the tiled kernels).
            for tokens in [1, 3, 19] {
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
                                (y - exact).abs() <= mag * (f64::from(unit) + 1e-5),
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

    #[test]
    fn f16_matches_dense() {
        check_float_table::<F16Matrix>(1.0 / 2048.0);
    }

    #[test]
    fn bf16_matches_dense() {
        check_float_table::<Bf16Matrix>(1.0 / 256.0);
    }

    #[test]
    fn f32_matches_dense() {
        check_float_table::<F32Matrix>(0.0);
    }

    #[test]
    fn dequantize_equals_the_rows() {
        use crate::kernels::test_util::random_x;
        // Widths off the vector length; 40,000 values span several parallel chunks.
        for (rows, cols) in [(3, 7), (40, 1000)] {
            let w = random_x(rows * cols, 5);
            let f16 = F16Matrix::quantize(&w, rows, cols);
            let want: Vec<f32> = (0..rows).flat_map(|r| f16.row(r)).collect();
            assert_eq!(f16.dequantize(), want);
            let bf16 = Bf16Matrix::quantize(&w, rows, cols);
            let want: Vec<f32> = (0..rows).flat_map(|r| bf16.row(r)).collect();
            assert_eq!(bf16.dequantize(), want);
        }
    }

    #[test]
    fn bf16_widening_is_exact() {
        // Every bit pattern's upper half: half's conversion (an independent implementation)
        // and the shift agree, NaNs aside.
        for b in 0..=u16::MAX {
            let want = half::bf16::from_bits(b).to_f32();
            let got = Bfloat16::decode(b);
            assert!(
                want.to_bits() == got.to_bits() || want.is_nan() && got.is_nan(),
                "{b:#x}"
            );
        }
    }
}

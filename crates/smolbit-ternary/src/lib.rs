//! Ternary (1.58-bit) quantization and inference kernels as pure math on slices: no files, no
//! burn, no serde.
//!
//! - [`absmean`]: BitNet b1.58 exactly as transformers' BitNet integration and bitnet.cpp compute
//!   it (`s = mean|W|`, `q = clamp(round(W / s), -1, 1)`, round half to even like `torch.round`),
//!   per tensor, per output row or per group of input columns.
//! - [`planes`]: multi-plane ternary `W ≈ Σ_k s_k ⊙ T_k` (1 to 3 trit planes) with per-group
//!   scales fitted by alternating least squares, optionally weighted by calibration statistics
//!   (the mean square of each input channel), which is what keeps two planes usable.
//! - [`gptq`]: GPTQ-style error feedback for planes, using the full calibration `XᵀX`.
//! - [`act`]: int8 per-token absmax activation quantization (BitNet's W1.58A8; AVX2 or portable,
//!   bit-identical).
//! - [`pack`]: 2-bit (4 trits per byte) and base-3 (5 trits per byte) packings, plus the layout
//!   of transformers' BitNet `pack_weights`.
//! - [`ggml`]: the ternary tensor types of GGUF files (llama.cpp's TQ1_0 and TQ2_0, bitnet.cpp's
//!   I2_S) decoded to trits and scales and encoded, exactly.
//! - [`metrics`]: relative reconstruction error of `W` and of `W·X`.
//! - [`kernels`]: weights kept packed at 2 bits for inference: W1.58A8 and float-activation
//!   products (scalar reference, AVX2, AVX-512 VNNI, NEON, picked at run time; rows over
//!   rayon's pool; decode four rows a call with software prefetch, prefill in eight-token tiles
//!   over bands of rows), row stacking for projections of one input, and the 8-bit and 4-bit
//!   head/embedding matrices.
//! - [`attention`]: causal grouped-query attention over a host KV cache of f32 or f16 (AVX2 +
//!   FMA + F16C, the query heads of a key/value head together, or portable), for the CPU
//!   decoder path that runs whole blocks next to the kernels.
//! - [`ops`]: the elementwise steps of that path (SwiGLU, with an 8-lane `exp`).
//!
//! Matrices are row-major `[rows, cols]` = `[out_features, in_features]`, as in PyTorch.

pub mod absmean;
pub mod act;
pub mod attention;
pub mod ggml;
pub mod gptq;
pub mod kernels;
pub mod metrics;
pub mod ops;
pub mod pack;
pub mod planes;
pub mod scheme;

pub use scheme::{Activations, Granularity, Scheme, SchemeError};

/// A ternary matrix: `planes` trit planes with their scales.
///
/// `W[r, c] ≈ Σ_k scales[k][r, group(c)] * trits[k][r, c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TernaryMatrix {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Number of trit planes (1 to 3).
    pub planes: usize,
    /// How scales are shared.
    pub granularity: Granularity,
    /// `planes * rows * cols` values in {-1, 0, 1}, plane-major then row-major.
    pub trits: Vec<i8>,
    /// `planes * scale_rows * groups_per_row` scales (see [`Granularity`]).
    pub scales: Vec<f32>,
}

impl TernaryMatrix {
    /// Scales per plane: one for a tensor, one per row, or one per row and group.
    pub fn scales_per_plane(&self) -> usize {
        self.granularity.scales_per_plane(self.rows, self.cols)
    }

    /// The scale of plane `k` for element `(r, c)`.
    pub fn scale(&self, k: usize, r: usize, c: usize) -> f32 {
        self.scales[k * self.scales_per_plane() + self.granularity.scale_index(r, c, self.cols)]
    }

    /// The dense f32 matrix this represents.
    pub fn dequantize(&self) -> Vec<f32> {
        let n = self.rows * self.cols;
        let mut out = vec![0f32; n];
        for k in 0..self.planes {
            let t = &self.trits[k * n..(k + 1) * n];
            for r in 0..self.rows {
                for c in 0..self.cols {
                    let q = t[r * self.cols + c];
                    if q != 0 {
                        out[r * self.cols + c] += f32::from(q) * self.scale(k, r, c);
                    }
                }
            }
        }
        out
    }

    /// Storage bits per weight: packed trits plus scales of `scale_bits` each.
    pub fn bits_per_weight(&self, packing: pack::Packing, scale_bits: usize) -> f64 {
        let n = (self.rows * self.cols) as f64;
        let trit_bits = (self.planes * self.rows * packing.bytes_per_row(self.cols) * 8) as f64;
        let scale_bits = (self.planes * self.scales_per_plane() * scale_bits) as f64;
        (trit_bits + scale_bits) / n
    }
}

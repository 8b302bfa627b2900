//! Matrix products for inference on the CPU, one module per weight format, one per ISA.
//!
//! | module | format | activations |
//! |---|---|---|
//! | [`ternary`] | [`PackedTernary`]: trit planes at 2 bits a weight, a scale per plane, row and group | int8 (W1.58A8) or f32 |
//! | [`q8`] | [`Q8Matrix`]: int8 with a scale per row (head, embedding) | int8 |
//! | [`q8_0`] | [`Q8BlockMatrix`]: int8 with a binary16 step per 32 columns (dense linears, as Q8_0) | int8 |
//! | [`q4`] | [`Q4Matrix`]: 4 bits with a binary16 step per 32 columns (head, embedding, dense linears; as Q4_0) | int8 |
//! | [`dense`] | [`F16Matrix`] (binary16), [`Bf16Matrix`], [`F32Matrix`] (dense checkpoints' linears, the f16 head) | f32 |
//!
//! Each format's module holds its scalar reference beside the function that picks the kernel
//! for an [`Isa`]; the kernels themselves live in `x86` (AVX2, AVX-512 VNNI, F16C, FMA) and
//! `arm` (NEON, NEON with `sdot`). [`Isa::detect`] is the one place the implementation is chosen,
//! once per process; every product takes it (or an explicit [`Isa`], for tests and benchmarks).
//! The integer paths equal their scalar references bit for bit (tests beside each format, on
//! every ISA the CPU offers, and aarch64 under qemu-user: `scripts/test-aarch64.sh`).
//!
//! `rows` is the parallel machinery they share: chunks of rows on rayon's persistent pool, each
//! writing its outputs straight into the `[tokens, rows]` result. `QuantizedInput` is the
//! int8 quantization of activations (absmax, [`crate::act::quantize_token`], per token for the
//! ternary and per-row 8-bit formats, per 32 columns for the blocked 8- and 4-bit ones) with
//! per-group sums, shared by the int8 formats.

#[cfg(target_arch = "aarch64")]
mod arm;
pub mod dense;
pub mod q4;
pub mod q8;
pub mod q8_0;
mod rows;
pub mod ternary;
#[cfg(test)]
mod test_util;
#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;

pub(crate) use dense::dot_f32_portable;
pub use dense::{
    Bf16Matrix, Bfloat16, Binary16, F16Matrix, F32Matrix, FloatFormat, FloatMatrix, Single,
};
pub use q4::{Q4_GROUP, Q4Matrix, q4_row_dot_scalar};
pub use q8::Q8Matrix;
pub use q8_0::{Q8_GROUP, Q8BlockMatrix, q8_block_row_dot_scalar};
pub use ternary::{BLOCK, PackError, PackedTernary, code_at, row_dot_f32_scalar, row_dot_scalar};

/// Why a checkpoint's stored blocks (`to_blocks`' form) cannot become a blocked table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlocksError {
    /// Stored blocks cover whole 32-column groups only.
    #[error("{0} columns is not a multiple of 32")]
    Columns(usize),
    /// A buffer of the wrong length.
    #[error("{what} holds {got} values where a {rows}x{cols} matrix needs {want}")]
    Length {
        /// `codes` or `steps`.
        what: &'static str,
        /// Values given.
        got: usize,
        /// Values needed.
        want: usize,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// A step that is infinite or NaN.
    #[error("the step of row {row}, group {group} is not finite")]
    Step {
        /// Row.
        row: usize,
        /// Group of 32 columns.
        group: usize,
    },
    /// An 8-bit code outside -127..=127.
    #[error("code -128 at row {row}, column {col} (codes are -127..=127)")]
    Code {
        /// Row.
        row: usize,
        /// Column.
        col: usize,
    },
}

/// Check the stored form of a blocked table with `per_group` code bytes per 32 columns.
fn check_blocks(
    rows: usize,
    cols: usize,
    codes: usize,
    steps: &[u16],
    per_group: usize,
) -> Result<(), BlocksError> {
    const GROUP: usize = 32;
    if !cols.is_multiple_of(GROUP) {
        return Err(BlocksError::Columns(cols));
    }
    let groups = cols / GROUP;
    for (what, got, want) in [
        ("codes", codes, rows * groups * per_group),
        ("steps", steps.len(), rows * groups),
    ] {
        if got != want {
            return Err(BlocksError::Length {
                what,
                got,
                want,
                rows,
                cols,
            });
        }
    }
    match steps
        .iter()
        .position(|&s| !half::f16::from_bits(s).is_finite())
    {
        Some(i) => Err(BlocksError::Step {
            row: i / groups.max(1),
            group: i % groups.max(1),
        }),
        None => Ok(()),
    }
}

/// A blocked table's rows without their padding (its stored form): of each row, the first
/// `used` of its `per_row` code units and the first `real` of its `groups` steps.
fn strip_padding<T: Copy>(
    data: &[T],
    scales: &[u16],
    rows: usize,
    (per_row, used): (usize, usize),
    (groups, real): (usize, usize),
) -> (Vec<T>, Vec<u16>) {
    let mut codes = Vec::with_capacity(rows * used);
    let mut steps = Vec::with_capacity(rows * real);
    for r in 0..rows {
        codes.extend_from_slice(&data[r * per_row..][..used]);
        steps.extend_from_slice(&scales[r * groups..][..real]);
    }
    (codes, steps)
}

/// The inverse of [`strip_padding`]: padding codes are `fill`, padding steps 0.
fn add_padding<T: Copy>(
    codes: &[T],
    steps: &[u16],
    rows: usize,
    (per_row, used): (usize, usize),
    (groups, real): (usize, usize),
    fill: T,
) -> (Vec<T>, Vec<u16>) {
    let mut data = vec![fill; rows * per_row];
    let mut scales = vec![0u16; rows * groups];
    for r in 0..rows {
        data[r * per_row..][..used].copy_from_slice(&codes[r * used..][..used]);
        scales[r * groups..][..real].copy_from_slice(&steps[r * real..][..real]);
    }
    (data, scales)
}

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust.
    Scalar,
    /// x86-64 AVX2.
    Avx2,
    /// x86-64 AVX-512 VNNI (with AVX-512 VL and BW), on 256-bit vectors for the packed
    /// ternary kernels and 512-bit ones for the 8-bit tables.
    Avx512Vnni,
    /// aarch64 NEON (`smull` + pairwise add).
    Neon,
    /// aarch64 NEON with the dot-product extension (`sdot`).
    NeonDot,
}

impl Isa {
    /// The best implementation this CPU supports (`SMOLBIT_ISA=scalar|avx2|neon` caps it),
    /// decided once per process: every product asks, so the decode loop must not read the
    /// environment each time.
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let best = detect_cpu();
            match std::env::var("SMOLBIT_ISA").as_deref() {
                Ok("scalar") => Isa::Scalar,
                Ok("avx2") if best != Isa::Scalar => Isa::Avx2,
                Ok("neon") if best != Isa::Scalar => Isa::Neon,
                _ => best,
            }
        })
    }

    /// Every implementation this CPU supports, scalar first.
    pub fn available() -> Vec<Isa> {
        let best = detect_cpu();
        let mut v = vec![Isa::Scalar];
        if matches!(best, Isa::Avx2 | Isa::Avx512Vnni) {
            v.push(Isa::Avx2);
        }
        if best == Isa::Avx512Vnni {
            v.push(Isa::Avx512Vnni);
        }
        if matches!(best, Isa::Neon | Isa::NeonDot) {
            v.push(Isa::Neon);
        }
        if best == Isa::NeonDot {
            v.push(Isa::NeonDot);
        }
        v
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon-dotprod",
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn detect_cpu() -> Isa {
    if is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx2")
    {
        Isa::Avx512Vnni
    } else if is_x86_feature_detected!("avx2") {
        Isa::Avx2
    } else {
        Isa::Scalar
    }
}

#[cfg(target_arch = "aarch64")]
fn detect_cpu() -> Isa {
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        Isa::NeonDot
    } else {
        Isa::Neon
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect_cpu() -> Isa {
    Isa::Scalar
}

/// A `[rows, cols]` weight table on the host kernels (output head, embedding, dense linears):
/// [`Q8Matrix`] and [`Q4Matrix`] (against int8 activations), [`F16Matrix`], [`Bf16Matrix`] and
/// [`F32Matrix`] (float activations).
pub trait QuantizedTable: std::fmt::Debug + Send + Sync {
    /// Quantize a row-major `[rows, cols]` f32 matrix.
    fn quantize(w: &[f32], rows: usize, cols: usize) -> Self
    where
        Self: Sized;
    /// Rows.
    fn rows(&self) -> usize;
    /// Columns.
    fn cols(&self) -> usize;
    /// Row `r` dequantized (an embedding lookup).
    fn row(&self, r: usize) -> Vec<f32>;
    /// The whole `[rows, cols]` matrix dequantized, rows in parallel (for a transient dense
    /// GEMM over many tokens).
    fn dequantize(&self) -> Vec<f32> {
        let cols = self.cols();
        let mut out = vec![0f32; self.rows() * cols];
        out.par_chunks_mut(cols.max(1))
            .enumerate()
            .for_each(|(r, row)| row.copy_from_slice(&self.row(r)));
        out
    }
    /// Bytes held.
    fn bytes(&self) -> usize;
    /// Append the rows of `other` (the same columns), for tables read in pieces.
    fn append(&mut self, other: Self)
    where
        Self: Sized;
    /// `y = x Wᵀ` for `x: [tokens, cols]` with a chosen implementation; returns `[tokens, rows]`.
    fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32>;
    /// `y = x Wᵀ` with the best implementation this CPU supports.
    fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        self.matmul_with(Isa::detect(), x, tokens)
    }
    /// Rows `rows` of [`QuantizedTable::matmul_with`], computed on the calling thread:
    /// `[tokens, rows.len()]`, the same bits as those rows of the whole product (for a team of
    /// threads that split a product's rows among themselves); `None` where the format has no
    /// such path.
    fn matmul_rows(
        &self,
        isa: Isa,
        x: &[f32],
        tokens: usize,
        rows: std::ops::Range<usize>,
    ) -> Option<Vec<f32>> {
        let _ = (isa, x, tokens, rows);
        None
    }
    /// Whether [`QuantizedTable::matmul_rows`] has a path (answers `Some`).
    fn has_rows(&self) -> bool {
        false
    }
}

/// Tokens quantized to int8, padded, with per-group sums: one scale per token (BitNet's
/// per-token absmax, [`QuantizedInput::new`]) or one per group ([`QuantizedInput::per_group`]:
/// the same absmax rule applied to each group of a token, as llama.cpp's Q8_0 activations).
pub(crate) struct QuantizedInput {
    pub(crate) values: Vec<i8>,
    /// Per token, `127 / absmax` (per-token mode; empty otherwise).
    pub(crate) scales: Vec<f32>,
    /// Per token and group, the step `absmax / 127` as `1 / (127 / absmax)` (per-group mode;
    /// empty otherwise).
    pub(crate) steps: Vec<f32>,
    pub(crate) group_sums: Vec<i32>,
}

impl QuantizedInput {
    /// One scale per token.
    pub(crate) fn new(x: &[f32], tokens: usize, cols: usize, padded: usize, group: usize) -> Self {
        let groups = padded / group;
        let mut values = vec![0i8; tokens * padded];
        let mut group_sums = vec![0i32; tokens * groups];
        let one = |(t, (v, gs)): (usize, (&mut [i8], &mut [i32]))| {
            let s = crate::act::quantize_token_into(&x[t * cols..][..cols], v);
            for (g, chunk) in v.chunks(group).enumerate() {
                gs[g] = chunk.iter().map(|&v| i32::from(v)).sum();
            }
            s
        };
        // Tokens in parallel for prefill (a few per task); one token inline.
        let scales = if tokens > 1 {
            values
                .par_chunks_mut(padded)
                .zip(group_sums.par_chunks_mut(groups))
                .enumerate()
                .with_min_len(4)
                .map(one)
                .collect()
        } else {
            values
                .chunks_mut(padded)
                .zip(group_sums.chunks_mut(groups))
                .enumerate()
                .map(one)
                .collect()
        };
        QuantizedInput {
            values,
            scales,
            steps: Vec::new(),
            group_sums,
        }
    }

    /// One scale per group of `group` columns of each token (groups past `cols` are zero, with
    /// step 0).
    pub(crate) fn per_group(
        x: &[f32],
        tokens: usize,
        cols: usize,
        padded: usize,
        group: usize,
    ) -> Self {
        let groups = padded / group;
        let mut values = vec![0i8; tokens * padded];
        let mut group_sums = vec![0i32; tokens * groups];
        let mut steps = vec![0f32; tokens * groups];
        // One token: each group quantized on its own, its step and code sum recorded.
        let one = |t: usize, v: &mut [i8], gs: &mut [i32], st: &mut [f32]| {
            let xt = &x[t * cols..][..cols];
            for (g, chunk) in v.chunks_mut(group).enumerate() {
                let start = g * group;
                if start >= cols {
                    break;
                }
                let s = crate::act::quantize_token_into(&xt[start..cols.min(start + group)], chunk);
                st[g] = 1.0 / s;
                gs[g] = chunk.iter().map(|&v| i32::from(v)).sum();
            }
        };
        if tokens > 1 {
            values
                .par_chunks_mut(padded)
                .zip(group_sums.par_chunks_mut(groups))
                .zip(steps.par_chunks_mut(groups))
                .enumerate()
                .with_min_len(4)
                .for_each(|(t, ((v, gs), st))| one(t, v, gs, st));
        } else {
            values
                .chunks_mut(padded)
                .zip(group_sums.chunks_mut(groups))
                .zip(steps.chunks_mut(groups))
                .enumerate()
                .for_each(|(t, ((v, gs), st))| one(t, v, gs, st));
        }
        QuantizedInput {
            values,
            scales: Vec::new(),
            steps,
            group_sums,
        }
    }
}

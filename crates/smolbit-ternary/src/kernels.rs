//! Packed ternary matrix products for inference: weights stay at 2 bits (plus scales) from load
//! to product.
//!
//! Layout ([`PackedTernary`]): per plane and row, columns padded to a multiple of 128; each
//! 128-column block is 32 bytes, byte `j` holding the codes (`trit + 1`, so 0, 1, 2) of columns
//! `j`, `32 + j`, `64 + j`, `96 + j` in bit pairs 0-1, 2-3, 4-5, 6-7. One shift and mask turn a
//! block into four vectors of 32 consecutive codes. Scales: one per plane, row and group (groups
//! are multiples of 32 columns; per-tensor and per-row scales become one group per row).
//!
//! W1.58A8 ([`PackedTernary::matmul_i8`]): each token's activations are quantized to int8
//! (absmax, [`crate::act::quantize_token`]); per group, `Σ code·x` is an exact integer product
//! (u8 × i8 into i32), from which `Σ x` over the group is subtracted to get `Σ trit·x`; the group
//! scale and the token's scale are applied once per group in f32. Float activations
//! ([`PackedTernary::matmul_f32`]) compute `Σ trit·x` in f32 per group.
//!
//! Implementations: a scalar reference, AVX2 (`maddubs`), AVX-512 VNNI (`vpdpbusd` on 256-bit
//! vectors), NEON (`smull` + `sadalp`) and NEON with the dot-product extension (`sdot`), chosen
//! at run time; the integer paths equal the scalar one exactly. Rows are
//! split across rayon's persistent thread pool, each chunk of rows writing its outputs straight
//! into the `[tokens, rows]` result. Decode (one token) runs four rows per call, one
//! activation load and one horizontal sum serving all four, and prefetches the next four rows'
//! codes as it goes (decode is bound by memory latency without it); prefill runs tiles of eight
//! tokens over bands of 16 rows, so each unpacked block of codes serves the tile and the tile's
//! activations stay in L1 across the band. The NEON kernels share that structure (without the
//! prefetch); their tests run under qemu-user (`scripts/test-aarch64.sh`).
//!
//! Head and embedding: [`Q8Matrix`] (int8, per-row scale) and [`Q4Matrix`] (4-bit, a step per 32
//! columns), both against int8 activations.

use rayon::prelude::*;

use crate::{Granularity, TernaryMatrix};

/// Columns per packed block.
pub const BLOCK: usize = 128;
const BLOCK_BYTES: usize = BLOCK / 4;

/// A ternary matrix packed for the kernels.
#[derive(Debug, Clone)]
pub struct PackedTernary {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// `cols` rounded up to a multiple of [`BLOCK`].
    pub padded: usize,
    /// Trit planes.
    pub planes: usize,
    /// Columns per scale group (a multiple of 32).
    pub group: usize,
    /// `planes * rows * padded / 4` bytes.
    pub codes: Vec<u8>,
    /// `planes * rows * groups` scales.
    pub scales: Vec<f32>,
}

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust.
    Scalar,
    /// x86-64 AVX2.
    Avx2,
    /// x86-64 AVX-512 VNNI with 256-bit vectors (AVX-512 VL).
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

/// Why a matrix cannot be packed for the kernels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    /// Group sizes must be 32, 64, 128 or a multiple of 128 columns.
    #[error("group size {0} is not 32, 64, 128 or a multiple of 128")]
    Group(usize),
}

impl PackedTernary {
    /// Pack `m` (per-tensor, per-row, or groups of 32, 64, 128 or a multiple of 128 columns).
    pub fn from_matrix(m: &TernaryMatrix) -> Result<Self, PackError> {
        // Groups either split a block evenly (32, 64, 128) or span whole blocks (256, ...);
        // rows are padded to a whole number of both.
        let (padded, group) = match m.granularity {
            Granularity::Tensor | Granularity::Row => {
                let p = m.cols.div_ceil(BLOCK) * BLOCK;
                (p, p)
            }
            Granularity::Group(g)
                if g > 0
                    && (BLOCK.is_multiple_of(g) && g.is_multiple_of(32)
                        || g.is_multiple_of(BLOCK)) =>
            {
                let unit = g.max(BLOCK);
                (m.cols.div_ceil(unit) * unit, g)
            }
            Granularity::Group(g) => return Err(PackError::Group(g)),
        };
        let groups = padded.div_ceil(group);
        let n = m.rows * m.cols;
        let row_bytes = padded / 4;
        let mut codes = vec![0u8; m.planes * m.rows * row_bytes];
        let mut scales = vec![0f32; m.planes * m.rows * groups];
        let cols = m.cols;
        let code = |t: i8| (t + 1) as u8;
        for k in 0..m.planes {
            let trits = &m.trits[k * n..(k + 1) * n];
            let plane = &mut codes[k * m.rows * row_bytes..(k + 1) * m.rows * row_bytes];
            plane
                .par_chunks_mut(row_bytes.max(1))
                .zip(trits.par_chunks(cols.max(1)))
                .for_each(|(dst, src)| {
                    for (b, out) in dst.chunks_exact_mut(BLOCK_BYTES).enumerate() {
                        let base = b * BLOCK;
                        if base + BLOCK <= cols {
                            let blk = &src[base..base + BLOCK];
                            for (j, o) in out.iter_mut().enumerate() {
                                *o = code(blk[j])
                                    | code(blk[j + 32]) << 2
                                    | code(blk[j + 64]) << 4
                                    | code(blk[j + 96]) << 6;
                            }
                        } else {
                            // The last block of a row: columns past the end hold trit 0.
                            let at = |c: usize| code(if c < cols { src[c] } else { 0 });
                            for (j, o) in out.iter_mut().enumerate() {
                                let c = base + j;
                                *o = at(c) | at(c + 32) << 2 | at(c + 64) << 4 | at(c + 96) << 6;
                            }
                        }
                    }
                });
            for r in 0..m.rows {
                for g in 0..groups {
                    let c = g * group;
                    scales[(k * m.rows + r) * groups + g] =
                        if c < m.cols { m.scale(k, r, c) } else { 0.0 };
                }
            }
        }
        Ok(PackedTernary {
            rows: m.rows,
            cols: m.cols,
            padded,
            planes: m.planes,
            group,
            codes,
            scales,
        })
    }

    /// The rows of `parts` stacked in order (`[Σ rows, cols]`), or `None` when they differ in
    /// columns, planes or groups. Products with the stack equal the parts' products side by
    /// side exactly (same codes, scales and per-token activation quantization), so projections
    /// of one input (q, k, v; gate, up) run as one product.
    pub fn concat_rows(parts: &[&PackedTernary]) -> Option<PackedTernary> {
        let first = parts.first()?;
        if parts.iter().any(|p| {
            (p.cols, p.padded, p.planes, p.group)
                != (first.cols, first.padded, first.planes, first.group)
        }) {
            return None;
        }
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let (rb, g) = (first.padded / 4, first.groups());
        let mut codes = Vec::with_capacity(first.planes * rows * rb);
        let mut scales = Vec::with_capacity(first.planes * rows * g);
        for k in 0..first.planes {
            for p in parts {
                codes.extend_from_slice(&p.codes[k * p.rows * rb..][..p.rows * rb]);
                scales.extend_from_slice(&p.scales[k * p.rows * g..][..p.rows * g]);
            }
        }
        Some(PackedTernary {
            rows,
            codes,
            scales,
            ..**first
        })
    }

    /// Scale groups per row.
    pub fn groups(&self) -> usize {
        self.padded / self.group
    }

    /// Bytes held (codes and scales).
    pub fn bytes(&self) -> usize {
        self.codes.len() + self.scales.len() * 4
    }

    fn row_codes(&self, k: usize, r: usize) -> &[u8] {
        let rb = self.padded / 4;
        &self.codes[(k * self.rows + r) * rb..][..rb]
    }

    fn row_scales(&self, k: usize, r: usize) -> &[f32] {
        let g = self.groups();
        &self.scales[(k * self.rows + r) * g..][..g]
    }

    /// `y = x Wᵀ` for `x: [tokens, cols]` with int8 per-token activations (W1.58A8); returns
    /// `[tokens, rows]`.
    pub fn matmul_i8(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        self.matmul_i8_with(Isa::detect(), x, tokens)
    }

    /// [`PackedTernary::matmul_i8`] with a chosen implementation (for tests and benchmarks).
    pub fn matmul_i8_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
        assert_eq!(x.len(), tokens * self.cols, "x must be [tokens, cols]");
        let q = QuantizedInput::new(x, tokens, self.cols, self.padded, self.group);
        let groups = self.groups();
        if tokens == 1 {
            // Decode: one token. Groups of whole blocks (per-tensor, per-row, 128, 256, ...) go
            // ROWS rows at a time (one activation load and one horizontal sum serve them all);
            // 32- and 64-column groups row by row.
            let (x, sums) = (&q.values[..], &q.group_sums[..]);
            let inv = 1.0 / q.scales[0];
            return par_row_chunks(self.rows, 1, ROWS, |chunk| {
                let (first, n) = (chunk.first_row(), chunk.rows());
                let mut ri = 0;
                while ri < n {
                    let r = first + ri;
                    if self.group >= BLOCK && n - ri >= ROWS {
                        let mut acc = [0f32; ROWS];
                        for k in 0..self.planes {
                            let y = rows_dot_one(
                                isa,
                                std::array::from_fn(|i| self.row_codes(k, r + i)),
                                std::array::from_fn(|i| self.row_scales(k, r + i)),
                                x,
                                sums,
                                self.group,
                            );
                            for i in 0..ROWS {
                                acc[i] += y[i];
                            }
                        }
                        for (i, a) in acc.into_iter().enumerate() {
                            chunk.set(ri + i, 0, a * inv);
                        }
                        ri += ROWS;
                    } else {
                        let mut acc = 0f32;
                        for k in 0..self.planes {
                            acc += row_dot_one(
                                isa,
                                self.row_codes(k, r),
                                self.row_scales(k, r),
                                x,
                                sums,
                                self.group,
                            );
                        }
                        chunk.set(ri, 0, acc * inv);
                        ri += 1;
                    }
                }
            });
        }
        // Quarters of the last block that hold real columns (0 to 4; the rest is padding).
        let quarters = self
            .cols
            .saturating_sub(self.padded - BLOCK)
            .div_ceil(32)
            .min(4);
        // Prefill: rows in bands of BAND; for each tile of up to TILE tokens, every row of the
        // band in turn, so the tile's activations stay in L1 across the band (instead of
        // streaming all tokens from L2 for every row) and each unpacked block of codes serves
        // the whole tile.
        // Dividing by the activation scale, as a multiply by its inverse.
        let inv: Vec<f32> = q.scales.iter().map(|s| 1.0 / s).collect();
        par_row_chunks(self.rows, tokens, 1, |chunk| {
            let (first, n_rows) = (chunk.first_row(), chunk.rows());
            for b0 in (0..n_rows).step_by(BAND) {
                let band = b0..(b0 + BAND).min(n_rows);
                for t0 in (0..tokens).step_by(TILE) {
                    let n = TILE.min(tokens - t0);
                    let mut xs: [&[i8]; TILE] = [&[]; TILE];
                    let mut sums: [&[i32]; TILE] = [&[]; TILE];
                    for i in 0..n {
                        xs[i] = &q.values[(t0 + i) * self.padded..][..self.padded];
                        sums[i] = &q.group_sums[(t0 + i) * groups..][..groups];
                    }
                    let inv = &inv[t0..t0 + n];
                    for ri in band.clone() {
                        let r = first + ri;
                        let dot = |k: usize| {
                            row_dot_i8(
                                isa,
                                self.row_codes(k, r),
                                self.row_scales(k, r),
                                &xs,
                                &sums,
                                n,
                                self.group,
                                quarters,
                            )
                        };
                        let mut acc = dot(0);
                        for k in 1..self.planes {
                            let y = dot(k);
                            for i in 0..n {
                                acc[i] += y[i];
                            }
                        }
                        chunk.set_tokens(ri, t0, &acc[..n], inv);
                    }
                }
            }
        })
    }

    /// `y = x Wᵀ` for `x: [tokens, cols]` with float activations; returns `[tokens, rows]`.
    pub fn matmul_f32(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        self.matmul_f32_with(Isa::detect(), x, tokens)
    }

    /// [`PackedTernary::matmul_f32`] with a chosen implementation.
    pub fn matmul_f32_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
        assert_eq!(x.len(), tokens * self.cols, "x must be [tokens, cols]");
        let groups = self.groups();
        let mut xp = vec![0f32; tokens * self.padded];
        let mut sums = vec![0f32; tokens * groups];
        for t in 0..tokens {
            let row = &mut xp[t * self.padded..][..self.padded];
            row[..self.cols].copy_from_slice(&x[t * self.cols..][..self.cols]);
            for (g, chunk) in row.chunks(self.group).enumerate() {
                sums[t * groups + g] = chunk.iter().sum();
            }
        }
        if tokens >= 4 {
            // Prefill: expand each row once (all planes summed into one f32 row), then a dense
            // dot product per token; the expansion is shared by every token.
            return self.par_rows(tokens, |r, out| {
                let mut w = vec![0f32; self.padded];
                self.expand_row(r, &mut w);
                for (t, o) in out.iter_mut().enumerate() {
                    *o = dot_f32(isa, &w, &xp[t * self.padded..][..self.padded]);
                }
            });
        }
        self.par_rows(tokens, |r, out| {
            for (t, o) in out.iter_mut().enumerate() {
                let xr = &xp[t * self.padded..][..self.padded];
                let sr = &sums[t * groups..][..groups];
                let mut acc = 0f32;
                for k in 0..self.planes {
                    acc += row_dot_f32(
                        isa,
                        self.row_codes(k, r),
                        self.row_scales(k, r),
                        xr,
                        sr,
                        self.group,
                    );
                }
                *o = acc;
            }
        })
    }

    /// The dense `[rows, cols]` f32 matrix (all planes summed), rows in parallel: for callers
    /// that hand many tokens to a dense GEMM and drop the matrix afterwards.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, row)| {
                let mut w = vec![0f32; self.padded];
                self.expand_row(r, &mut w);
                row.copy_from_slice(&w[..self.cols]);
            });
        out
    }

    /// Add row `r` of every plane, dequantized, into `w` (`padded` long).
    fn expand_row(&self, r: usize, w: &mut [f32]) {
        for k in 0..self.planes {
            let (codes, scales) = (self.row_codes(k, r), self.row_scales(k, r));
            // Block by block, quarter by quarter: 32 columns share one shift and (as groups are
            // multiples of 32) one scale.
            for (b, block) in codes.chunks_exact(BLOCK_BYTES).enumerate() {
                for q in 0..4 {
                    let start = b * BLOCK + 32 * q;
                    let scale = scales[start / self.group];
                    let lut = [-scale, 0.0, scale, 0.0];
                    for (wc, &byte) in w[start..start + 32].iter_mut().zip(block) {
                        *wc += lut[usize::from((byte >> (2 * q)) & 3)];
                    }
                }
            }
        }
    }

    /// Run `f(row, outputs for each token)` over rows in parallel; returns `[tokens, rows]`.
    fn par_rows(&self, tokens: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
        par_rows(self.rows, tokens, f)
    }
}

/// Run `f(row, outputs for each token)` over `rows` in parallel on rayon's pool; returns
/// `[tokens, rows]`.
fn par_rows(rows: usize, tokens: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    par_row_chunks(rows, tokens, 1, |chunk| {
        let mut buf = vec![0f32; tokens];
        for ri in 0..chunk.rows() {
            f(chunk.first_row() + ri, &mut buf);
            for (t, &v) in buf.iter().enumerate() {
                chunk.set(ri, t, v);
            }
        }
    })
}

/// Run `f` over chunks of rows (multiples of `align`) in parallel on rayon's pool; each chunk
/// writes its rows' outputs straight into the `[tokens, rows]` result (before, chunks filled a
/// `[rows, tokens]` buffer that was then transposed: the transpose and the zeroing of the extra
/// buffer took about a seventh of 135M prefill time under perf).
fn par_row_chunks(
    rows: usize,
    tokens: usize,
    align: usize,
    f: impl Fn(&mut RowChunk<'_>) + Sync,
) -> Vec<f32> {
    let mut y = vec![0f32; rows * tokens];
    // Chunks big enough to amortize scheduling, small enough to balance two to 64 threads.
    let chunk = (rows / (rayon::current_num_threads() * 8)).clamp(8, 256);
    let chunk = chunk.div_ceil(align) * align;
    let out = Output {
        ptr: y.as_mut_ptr(),
        rows,
        tokens,
    };
    (0..rows.div_ceil(chunk)).into_par_iter().for_each(|ci| {
        let first = ci * chunk;
        f(&mut RowChunk {
            out: &out,
            first,
            rows: chunk.min(rows - first),
        });
    });
    y
}

/// A `[tokens, rows]` product output shared by the row chunks that fill it.
struct Output {
    ptr: *mut f32,
    rows: usize,
    tokens: usize,
}

// SAFETY: the chunks write through `ptr` only via `RowChunk::set`, each to its own rows.
unsafe impl Sync for Output {}

/// Rows `first..first + rows` of an [`Output`]: their only writer (chunks never overlap).
struct RowChunk<'a> {
    out: &'a Output,
    first: usize,
    rows: usize,
}

impl RowChunk<'_> {
    fn first_row(&self) -> usize {
        self.first
    }

    fn rows(&self) -> usize {
        self.rows
    }

    /// Outputs of the chunk's row `ri` for tokens `t0..t0 + v.len()`: `v[i] · scale[i]`.
    #[inline]
    fn set_tokens(&mut self, ri: usize, t0: usize, v: &[f32], scale: &[f32]) {
        assert!(ri < self.rows && t0 + v.len() <= self.out.tokens && scale.len() == v.len());
        let p = self.out.ptr;
        for (i, (v, s)) in v.iter().zip(scale).enumerate() {
            // SAFETY: as in `set`: token t0 + i < tokens (asserted), row first + ri of this
            // chunk alone.
            unsafe { *p.add((t0 + i) * self.out.rows + self.first + ri) = v * s };
        }
    }

    /// Output of the chunk's row `ri` for token `t`.
    #[inline]
    fn set(&mut self, ri: usize, t: usize, v: f32) {
        assert!(ri < self.rows && t < self.out.tokens);
        // SAFETY: `first + rows <= out.rows` (par_row_chunks) and the bounds above keep the
        // index inside the `tokens * rows` buffer, which outlives every chunk; row
        // `first + ri` belongs to this chunk alone, so no other thread writes the element.
        unsafe { *self.out.ptr.add(t * self.out.rows + self.first + ri) = v };
    }
}

/// Rows that share one tile of prefill activations.
const BAND: usize = 16;

/// Rows per call of the one-token multi-row kernel.
const ROWS: usize = 4;

/// [`row_dot_one`] for [`ROWS`] rows at once (groups of whole blocks only): the same integer
/// sums and the same f32 operations per row, so the results are identical.
fn rows_dot_one(
    isa: Isa,
    codes: [&[u8]; ROWS],
    scales: [&[f32]; ROWS],
    x: &[i8],
    sums: &[i32],
    group: usize,
) -> [f32; ROWS] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Isa::Avx2/Avx512Vnni are only produced when the CPU has those features.
        Isa::Avx2 => unsafe { x86::rows_dot_avx2::<ROWS>(codes, scales, x, sums, group) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx512Vnni => unsafe { x86::rows_dot_vnni::<ROWS>(codes, scales, x, sums, group) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: Isa::Neon/NeonDot are only produced on aarch64 (NEON is baseline) and
        // NeonDot only when the CPU has the dot-product extension.
        Isa::Neon => unsafe { arm::rows_dot_neon::<ROWS>(codes, scales, x, sums, group) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        Isa::NeonDot => unsafe { arm::rows_dot_dot::<ROWS>(codes, scales, x, sums, group) },
        _ => std::array::from_fn(|i| row_dot_scalar(codes[i], scales[i], x, sums, group)),
    }
}

/// Tokens quantized to int8, padded, with per-group sums.
struct QuantizedInput {
    values: Vec<i8>,
    scales: Vec<f32>,
    group_sums: Vec<i32>,
}

impl QuantizedInput {
    fn new(x: &[f32], tokens: usize, cols: usize, padded: usize, group: usize) -> Self {
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
            group_sums,
        }
    }
}

/// Tokens per tile in the i8 product (eight accumulators, the four unpacked code vectors and
/// the mask fill 13 of AVX2's 16 vector registers).
const TILE: usize = 8;

/// The first `n` tokens of a tile (`xs`, `sums`) against one packed row. `quarters`: the
/// 32-column quarters of the row's last block that hold real columns (0 to 4).
#[allow(clippy::too_many_arguments)]
fn row_dot_i8(
    isa: Isa,
    codes: &[u8],
    scales: &[f32],
    xs: &[&[i8]; TILE],
    sums: &[&[i32]; TILE],
    n: usize,
    group: usize,
    quarters: usize,
) -> [f32; TILE] {
    let mut out = [0f32; TILE];
    #[cfg(target_arch = "x86_64")]
    if n == TILE && matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
        // SAFETY: Isa::Avx2/Avx512Vnni are only produced when the CPU has those features.
        return unsafe {
            if isa == Isa::Avx2 {
                x86::row_dot_n_avx2::<TILE>(codes, scales, *xs, *sums, group, quarters)
            } else {
                x86::row_dot_n_vnni::<TILE>(codes, scales, *xs, *sums, group, quarters)
            }
        };
    }
    #[cfg(target_arch = "aarch64")]
    if n == TILE && matches!(isa, Isa::Neon | Isa::NeonDot) {
        // SAFETY: Isa::Neon/NeonDot are only produced on aarch64, NeonDot only with dotprod.
        return unsafe {
            if isa == Isa::NeonDot {
                arm::row_dot_n_dot::<TILE>(codes, scales, *xs, *sums, group, quarters)
            } else {
                arm::row_dot_n_neon::<TILE>(codes, scales, *xs, *sums, group, quarters)
            }
        };
    }
    // The scalar path computes the padding too (it adds nothing).
    let _ = quarters;
    for i in 0..n {
        out[i] = row_dot_one(isa, codes, scales, xs[i], sums[i], group);
    }
    out
}

fn row_dot_one(
    isa: Isa,
    codes: &[u8],
    scales: &[f32],
    x: &[i8],
    sums: &[i32],
    group: usize,
) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Isa::Avx2/Avx512Vnni are only produced when the CPU has those features.
        Isa::Avx2 => unsafe { x86::row_dot_n_avx2::<1>(codes, scales, [x], [sums], group, 4)[0] },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx512Vnni => unsafe {
            x86::row_dot_n_vnni::<1>(codes, scales, [x], [sums], group, 4)[0]
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: Isa::Neon/NeonDot are only produced on aarch64, NeonDot only with dotprod.
        Isa::Neon => unsafe { arm::row_dot_n_neon::<1>(codes, scales, [x], [sums], group, 4)[0] },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        Isa::NeonDot => unsafe { arm::row_dot_n_dot::<1>(codes, scales, [x], [sums], group, 4)[0] },
        _ => row_dot_scalar(codes, scales, x, sums, group),
    }
}

/// The exact integer result per group, scaled: the reference every fast path must equal.
pub fn row_dot_scalar(codes: &[u8], scales: &[f32], x: &[i8], sums: &[i32], group: usize) -> f32 {
    let mut y = 0f32;
    for (g, (&scale, &sum)) in scales.iter().zip(sums).enumerate() {
        let cols = g * group..(g + 1) * group;
        let acc: i32 = x[cols.clone()]
            .iter()
            .zip(cols)
            .map(|(&v, c)| i32::from(code_at(codes, c)) * i32::from(v))
            .sum();
        y += scale * (acc - sum) as f32;
    }
    y
}

/// The code (`trit + 1`) of column `c` in a packed row.
pub fn code_at(codes: &[u8], c: usize) -> u8 {
    let (b, within) = (c / BLOCK, c % BLOCK);
    (codes[b * BLOCK_BYTES + within % 32] >> (2 * (within / 32))) & 3
}

fn row_dot_f32(
    isa: Isa,
    codes: &[u8],
    scales: &[f32],
    x: &[f32],
    sums: &[f32],
    group: usize,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) && is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 was detected (Isa) and FMA just now.
        return unsafe { x86::row_dot_f32_avx2(codes, scales, x, sums, group) };
    }
    let _ = isa;
    row_dot_f32_scalar(codes, scales, x, sums, group)
}

/// `Σ a·b` in f32 with eight partial sums (vectorized with AVX2 + FMA when available).
fn dot_f32(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
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

/// Float activations: `Σ_g scale_g (Σ_{c∈g} code_c x_c − Σ_{c∈g} x_c)`.
pub fn row_dot_f32_scalar(
    codes: &[u8],
    scales: &[f32],
    x: &[f32],
    sums: &[f32],
    group: usize,
) -> f32 {
    let mut y = 0f32;
    for (g, (&scale, &sum)) in scales.iter().zip(sums).enumerate() {
        let cols = g * group..(g + 1) * group;
        let mut acc = 0f32;
        for (&v, c) in x[cols.clone()].iter().zip(cols) {
            acc += f32::from(code_at(codes, c)) * v;
        }
        y += scale * (acc - sum);
    }
    y
}

/// A compact `[rows, cols]` table (output head, embedding): [`Q8Matrix`] and [`Q4Matrix`]
/// (against int8 activations), [`F16Matrix`] (float activations).
pub trait QuantizedTable: std::fmt::Debug + Send + Sync {
    /// Quantize a row-major `[rows, cols]` f32 matrix.
    fn quantize(w: &[f32], rows: usize, cols: usize) -> Self
    where
        Self: Sized;
    /// Rows.
    fn rows(&self) -> usize;
    /// Row `r` dequantized (an embedding lookup).
    fn row(&self, r: usize) -> Vec<f32>;
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
}

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
        par_rows(self.rows, tokens, |r, row_out| {
            let w = &self.data[r * self.padded..][..self.padded];
            for (t, o) in row_out.iter_mut().enumerate() {
                let x = &q.values[t * self.padded..][..self.padded];
                *o = dot_i8(isa, w, x) as f32 / (q.scales[t] * self.scales[r]);
            }
        })
    }
}

/// Columns per 4-bit scale group.
pub const Q4_GROUP: usize = 32;
/// Groups reduced together (one vector of eight sums).
const Q4_LANES: usize = 8;

/// A 4-bit matrix for the output head and the embedding (as llama.cpp's Q4_0): per group of 32
/// columns of a row, `w ≈ q · d` with `d` the binary16 value at or just above `max|w| / 7` and
/// `q` in -7..=7, stored as `q + 8`. Columns are padded to a multiple of 256 (eight groups, one
/// vector of group sums in the kernel). Per group, 16 bytes: byte `j` holds column `j` in its
/// low nibble and column `16 + j` in its high nibble. 4.5 bits a weight: a 3B-shaped tied head
/// and embedding take 148 MB instead of 263 MB at 8 bits.
#[derive(Debug, Clone)]
pub struct Q4Matrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `cols` rounded up to a multiple of 256.
    pub padded: usize,
    /// `rows * padded / 2` bytes.
    pub data: Vec<u8>,
    /// `rows * padded / 32` group steps `d`, binary16 bit patterns.
    pub scales: Vec<u16>,
}

/// The binary16 step for a group whose largest magnitude is `max`: `max / 7` rounded up, so
/// that `max / d <= 7` (no code is clamped), finite.
fn q4_step(max: f32) -> half::f16 {
    let want = (max / 7.0).min(half::f16::MAX.to_f32());
    let d = half::f16::from_f32(want);
    if d.to_f32() < want {
        half::f16::from_bits(d.to_bits() + 1)
    } else {
        d
    }
}

impl Q4Matrix {
    /// Quantize a row-major `[rows, cols]` f32 matrix.
    pub fn from_f32(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "w must be [rows, cols]");
        let padded = cols.div_ceil(Q4_GROUP * Q4_LANES) * Q4_GROUP * Q4_LANES;
        let groups = padded / Q4_GROUP;
        let mut data = vec![0x88u8; rows * padded / 2];
        let mut scales = vec![0u16; rows * groups];
        for r in 0..rows {
            let row = &w[r * cols..][..cols];
            for g in 0..cols.div_ceil(Q4_GROUP) {
                let vals = &row[g * Q4_GROUP..((g + 1) * Q4_GROUP).min(cols)];
                let max = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = q4_step(max);
                scales[r * groups + g] = step.to_bits();
                let d = step.to_f32();
                let bytes = &mut data[(r * groups + g) * Q4_GROUP / 2..][..Q4_GROUP / 2];
                for (j, &v) in vals.iter().enumerate() {
                    let q = if d > 0.0 {
                        crate::act::round_half_even(v / d).clamp(-7.0, 7.0) as i8
                    } else {
                        0
                    };
                    let code = (q + 8) as u8;
                    let (byte, shift) = (j % 16, 4 * (j / 16));
                    bytes[byte] = bytes[byte] & !(0xF << shift) | code << shift;
                }
            }
        }
        Q4Matrix {
            rows,
            cols,
            padded,
            data,
            scales,
        }
    }

    /// The code (`q + 8`) of column `c` in row `r`.
    fn code(&self, r: usize, c: usize) -> u8 {
        let (g, j) = (c / Q4_GROUP, c % Q4_GROUP);
        let byte = self.data[r * self.padded / 2 + g * Q4_GROUP / 2 + j % 16];
        (byte >> (4 * (j / 16))) & 0xF
    }
}

impl QuantizedTable for Q4Matrix {
    fn quantize(w: &[f32], rows: usize, cols: usize) -> Self {
        Q4Matrix::from_f32(w, rows, cols)
    }

    fn rows(&self) -> usize {
        self.rows
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
        let groups = self.padded / Q4_GROUP;
        (0..self.cols)
            .map(|c| {
                let q = i32::from(self.code(r, c)) - 8;
                q as f32 * half::f16::from_bits(self.scales[r * groups + c / Q4_GROUP]).to_f32()
            })
            .collect()
    }

    /// Bytes held.
    fn bytes(&self) -> usize {
        self.data.len() + self.scales.len() * 2
    }

    /// Per group the exact integer `Σ q·x`; group `g` times its step is added to partial sum
    /// `g mod 8` (a multiply, then an add), and the eight partial sums are added in order at the
    /// end, in every implementation alike, so all give identical results.
    fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
        assert_eq!(x.len(), tokens * self.cols, "x must be [tokens, cols]");
        let q = QuantizedInput::new(x, tokens, self.cols, self.padded, Q4_GROUP);
        let groups = self.padded / Q4_GROUP;
        // 8 · Σx per group: the offset of the stored codes, removed per group.
        let off: Vec<i32> = q.group_sums.iter().map(|&s| 8 * s).collect();
        #[cfg(target_arch = "x86_64")]
        let isa = match isa {
            // The AVX2 kernel widens the steps with F16C.
            Isa::Avx2 | Isa::Avx512Vnni if !is_x86_feature_detected!("f16c") => Isa::Scalar,
            other => other,
        };
        par_rows(self.rows, tokens, |r, out| {
            let codes = &self.data[r * self.padded / 2..][..self.padded / 2];
            let scales = &self.scales[r * groups..][..groups];
            for (t, o) in out.iter_mut().enumerate() {
                let xt = &q.values[t * self.padded..][..self.padded];
                let ot = &off[t * groups..][..groups];
                *o = q4_row_dot(isa, codes, scales, xt, ot) / q.scales[t];
            }
        })
    }
}

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

/// The portable [`dot_f16`].
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

fn q4_row_dot(isa: Isa, codes: &[u8], scales: &[u16], x: &[i8], off: &[i32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
        // SAFETY: AVX2 is present whenever Isa is not Scalar, and F16C was checked by the
        // caller (`Q4Matrix::matmul_with`).
        return unsafe { x86::q4_row_dot_avx2(codes, scales, x, off) };
    }
    #[cfg(target_arch = "aarch64")]
    match isa {
        // SAFETY: Isa::Neon/NeonDot are only produced on aarch64, NeonDot only with dotprod.
        Isa::Neon => return unsafe { arm::q4_row_dot_neon(codes, scales, x, off) },
        // SAFETY: as above.
        Isa::NeonDot => return unsafe { arm::q4_row_dot_dot(codes, scales, x, off) },
        _ => {}
    }
    let _ = isa;
    q4_row_dot_scalar(codes, scales, x, off)
}

/// The reference for [`Q4Matrix`] products (see [`Q4Matrix::matmul_with`] for the order).
pub fn q4_row_dot_scalar(codes: &[u8], scales: &[u16], x: &[i8], off: &[i32]) -> f32 {
    let mut lanes = [0f32; Q4_LANES];
    for (g, (&d, &o)) in scales.iter().zip(off).enumerate() {
        let d = half::f16::from_bits(d).to_f32();
        let bytes = &codes[g * Q4_GROUP / 2..][..Q4_GROUP / 2];
        let xs = &x[g * Q4_GROUP..][..Q4_GROUP];
        let mut acc = 0i32;
        for j in 0..16 {
            acc += i32::from(bytes[j] & 0xF) * i32::from(xs[j]);
            acc += i32::from(bytes[j] >> 4) * i32::from(xs[16 + j]);
        }
        lanes[g % Q4_LANES] += d * (acc - o) as f32;
    }
    lanes.iter().fold(0f32, |a, &v| a + v)
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, BLOCK_BYTES};

    #[inline(always)]
    unsafe fn hsum(v: __m256i) -> i32 {
        // SAFETY: register-only AVX2 operations.
        unsafe {
            let lo = _mm256_castsi256_si128(v);
            let hi = _mm256_extracti128_si256(v, 1);
            let s = _mm_add_epi32(lo, hi);
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
            _mm_cvtsi128_si32(s)
        }
    }

    // Partial products of 32 codes with 32 activations, accumulated in a "small" register and
    // flushed into i32 lanes. AVX2: `maddubs` gives i16 pairs (|p| <= 2 · 2 · 127 = 508), summed
    // in i16 for at most FLUSH = 64 products (64 · 508 = 32512 < 2^15), then widened with
    // `madd`. VNNI: `vpdpbusd` sums four u8 × i8 products straight into i32 lanes.
    const FLUSH: usize = 64;

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn prod_avx2(small: __m256i, c: __m256i, x: __m256i) -> __m256i {
        _mm256_add_epi16(small, _mm256_maddubs_epi16(c, x))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn flush_avx2(small: __m256i) -> __m256i {
        _mm256_madd_epi16(small, _mm256_set1_epi16(1))
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    unsafe fn prod_vnni(small: __m256i, c: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(small, c, x)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn flush_vnni(small: __m256i) -> __m256i {
        small
    }

    macro_rules! row_dot_n {
        ($name:ident, $features:literal, $prod:ident, $flush:ident) => {
            /// `N` tokens against one packed row: each block's codes are unpacked once and used
            /// for every token; per group, the exact integer sum minus the activation sum, times
            /// the group's scale. With groups of whole blocks, only the first `quarters` (0 to
            /// 4) 32-column quarters of the last block are computed: the caller passes how many
            /// hold real columns (the rest is padding, which adds nothing).
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const N: usize>(
                codes: &[u8],
                scales: &[f32],
                xs: [&[i8]; N],
                sums: [&[i32]; N],
                group: usize,
                quarters: usize,
            ) -> [f32; N] {
                let blocks = codes.len() / BLOCK_BYTES;
                for t in 0..N {
                    assert!(xs[t].len() >= blocks * BLOCK && sums[t].len() >= scales.len());
                }
                assert!(scales.len() * group >= blocks * BLOCK && group.is_multiple_of(32));
                let mask = _mm256_set1_epi8(3);
                let cp = codes.as_ptr();
                let xp: [*const i8; N] = std::array::from_fn(|t| xs[t].as_ptr());
                let mut y = [0f32; N];
                // Four code vectors of block b.
                let unpack = |b: usize| {
                    // SAFETY: b < blocks: 32 code bytes in bounds.
                    let v = unsafe { _mm256_loadu_si256(cp.add(b * BLOCK_BYTES).cast()) };
                    [
                        _mm256_and_si256(v, mask),
                        _mm256_and_si256(_mm256_srli_epi16(v, 2), mask),
                        _mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
                        _mm256_and_si256(_mm256_srli_epi16(v, 6), mask),
                    ]
                };
                if group >= BLOCK {
                    // Whole blocks per group; the small accumulators are flushed every
                    // FLUSH / 4 blocks.
                    let per = group / BLOCK;
                    for g in 0..scales.len() {
                        let mut big = [_mm256_setzero_si256(); N];
                        let end = ((g + 1) * per).min(blocks);
                        let mut b = g * per;
                        while b < end {
                            let stop = (b + FLUSH / 4).min(end);
                            let mut small = [_mm256_setzero_si256(); N];
                            while b < stop {
                                let parts = unpack(b);
                                if b + 1 == blocks && quarters < 4 {
                                    // The last block's padding quarters (code 1, activation
                                    // 0) add nothing: skipped.
                                    for t in 0..N {
                                        for (k, part) in parts.iter().enumerate().take(quarters) {
                                            // SAFETY: as below.
                                            small[t] = unsafe {
                                                $prod(
                                                    small[t],
                                                    *part,
                                                    _mm256_loadu_si256(
                                                        xp[t].add(b * BLOCK + 32 * k).cast(),
                                                    ),
                                                )
                                            };
                                        }
                                    }
                                    b += 1;
                                    continue;
                                }
                                for t in 0..N {
                                    // SAFETY: 128 activations of block b in bounds (asserted);
                                    // the helpers need only this function's features.
                                    unsafe {
                                        let xb = xp[t].add(b * BLOCK);
                                        small[t] = $prod(
                                            small[t],
                                            parts[0],
                                            _mm256_loadu_si256(xb.cast()),
                                        );
                                        small[t] = $prod(
                                            small[t],
                                            parts[1],
                                            _mm256_loadu_si256(xb.add(32).cast()),
                                        );
                                        small[t] = $prod(
                                            small[t],
                                            parts[2],
                                            _mm256_loadu_si256(xb.add(64).cast()),
                                        );
                                        small[t] = $prod(
                                            small[t],
                                            parts[3],
                                            _mm256_loadu_si256(xb.add(96).cast()),
                                        );
                                    }
                                }
                                b += 1;
                            }
                            for t in 0..N {
                                // SAFETY: register-only.
                                big[t] = _mm256_add_epi32(big[t], unsafe { $flush(small[t]) });
                            }
                        }
                        for t in 0..N {
                            // SAFETY: register-only.
                            let s = unsafe { hsum(big[t]) };
                            y[t] += scales[g] * (s - sums[t][g]) as f32;
                        }
                    }
                } else {
                    // 32 or 64 columns per group: 4 or 2 groups per block.
                    let q = group / 32;
                    for b in 0..blocks {
                        let parts = unpack(b);
                        for j in 0..4 / q {
                            let g = b * (4 / q) + j;
                            for t in 0..N {
                                let mut small = _mm256_setzero_si256();
                                for k in j * q..(j + 1) * q {
                                    // SAFETY: as above.
                                    small = unsafe {
                                        $prod(
                                            small,
                                            parts[k],
                                            _mm256_loadu_si256(
                                                xp[t].add(b * BLOCK + 32 * k).cast(),
                                            ),
                                        )
                                    };
                                }
                                // SAFETY: register-only.
                                let s = unsafe { hsum($flush(small)) };
                                y[t] += scales[g] * (s - sums[t][g]) as f32;
                            }
                        }
                    }
                }
                y
            }
        };
    }

    /// One token against one [`super::Q4Matrix`] row: eight groups at a time, two groups per
    /// 32-byte load of codes (low nibbles: columns 0-15 of both, high: 16-31, against the two
    /// groups' activations rearranged by lane), each pair's products summed in 16 bits (at most
    /// 2 · 2 · 15 · 128, no saturation) and widened once, the eight groups' sums reduced to one
    /// vector in group order, less the code offsets, converted and multiplied by the steps
    /// (F16C), then added to the lanes: the reference's f32 operations in its order.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn q4_row_dot_avx2(
        codes: &[u8],
        scales: &[u16],
        x: &[i8],
        off: &[i32],
    ) -> f32 {
        use super::{Q4_GROUP, Q4_LANES};
        let groups = scales.len();
        assert!(groups.is_multiple_of(Q4_LANES) && off.len() >= groups);
        assert!(codes.len() >= groups * Q4_GROUP / 2 && x.len() >= groups * Q4_GROUP);
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        // After the reduction the lanes hold groups 0, 2, 4, 6, 1, 3, 5, 7.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut acc = _mm256_setzero_ps();
        for g0 in (0..groups).step_by(Q4_LANES) {
            let mut v = [_mm256_setzero_si256(); Q4_LANES / 2];
            for (p, vp) in v.iter_mut().enumerate() {
                let g = g0 + 2 * p;
                // SAFETY: groups g and g + 1: 32 code bytes and 64 activations in bounds
                // (asserted; g + 1 < groups as groups is a multiple of eight).
                unsafe {
                    let b = _mm256_loadu_si256(codes.as_ptr().add(g * Q4_GROUP / 2).cast());
                    let lo = _mm256_and_si256(b, low);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), low);
                    let xa = _mm256_loadu_si256(x.as_ptr().add(g * Q4_GROUP).cast());
                    let xb = _mm256_loadu_si256(x.as_ptr().add((g + 1) * Q4_GROUP).cast());
                    let xlo = _mm256_permute2x128_si256(xa, xb, 0x20);
                    let xhi = _mm256_permute2x128_si256(xa, xb, 0x31);
                    let s16 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(lo, xlo),
                        _mm256_maddubs_epi16(hi, xhi),
                    );
                    // Lanes 0-3: group g's four partial sums; 4-7: group g + 1's.
                    *vp = _mm256_madd_epi16(s16, ones);
                }
            }
            let h01 = _mm256_hadd_epi32(v[0], v[1]);
            let h23 = _mm256_hadd_epi32(v[2], v[3]);
            let sums = _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(h01, h23), order);
            // SAFETY: eight offsets and steps at g0 are in bounds (asserted).
            let (o, d) = unsafe {
                (
                    _mm256_loadu_si256(off.as_ptr().add(g0).cast()),
                    _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(g0).cast())),
                )
            };
            let ints = _mm256_cvtepi32_ps(_mm256_sub_epi32(sums, o));
            acc = _mm256_add_ps(acc, _mm256_mul_ps(d, ints));
        }
        let mut lanes = [0f32; Q4_LANES];
        // SAFETY: eight f32 into an array of eight.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        lanes.iter().fold(0f32, |a, &v| a + v)
    }

    /// Four i32 vectors summed horizontally: `[Σa, Σb, Σc, Σd]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum4(v: [__m256i; 4]) -> [i32; 4] {
        let ab = _mm256_hadd_epi32(v[0], v[1]);
        let cd = _mm256_hadd_epi32(v[2], v[3]);
        let abcd = _mm256_hadd_epi32(ab, cd);
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(abcd),
            _mm256_extracti128_si256(abcd, 1),
        );
        let mut out = [0i32; 4];
        // SAFETY: 16 bytes into a 4 x i32 array.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), s) };
        out
    }

    macro_rules! rows_dot {
        ($name:ident, $features:literal, $prod:ident, $flush:ident) => {
            /// One token against `M` packed rows (groups of whole blocks): each block's 128
            /// activations are loaded once for all rows; the rows' integer sums per group are
            /// reduced together; then, per row, the group sum minus the activation sum times
            /// the group's scale, as in the one-row kernel.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const M: usize>(
                codes: [&[u8]; M],
                scales: [&[f32]; M],
                x: &[i8],
                sums: &[i32],
                group: usize,
            ) -> [f32; M] {
                const { assert!(M == 4) };
                let blocks = codes[0].len() / BLOCK_BYTES;
                let groups = scales[0].len();
                for r in 0..M {
                    assert!(codes[r].len() == blocks * BLOCK_BYTES && scales[r].len() == groups);
                }
                assert!(x.len() >= blocks * BLOCK && sums.len() >= groups);
                assert!(group.is_multiple_of(BLOCK) && groups * group >= blocks * BLOCK);
                let mask = _mm256_set1_epi8(3);
                let cp: [*const u8; M] = std::array::from_fn(|r| codes[r].as_ptr());
                let xp = x.as_ptr();
                // The next M rows (where a caller walking down the matrix goes next): fetched
                // into the cache while these are computed, at the pace they are consumed. Decode
                // stalls on memory latency without it (measured: 16 -> 25.5 GB/s in the stream
                // bench). A prefetch never faults; the address may lie past the matrix.
                let ahead = cp[M - 1].wrapping_add(blocks * BLOCK_BYTES);
                let per = group / BLOCK;
                let mut y = [0f32; M];
                for g in 0..groups {
                    let mut big = [_mm256_setzero_si256(); M];
                    let end = ((g + 1) * per).min(blocks);
                    let mut b = g * per;
                    while b < end {
                        let stop = (b + FLUSH / 4).min(end);
                        let mut small = [_mm256_setzero_si256(); M];
                        while b < stop {
                            let pf = ahead.wrapping_add(b * M * BLOCK_BYTES);
                            for line in (0..M * BLOCK_BYTES).step_by(64) {
                                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(line).cast());
                            }
                            // SAFETY: b < blocks: 128 activations and 32 code bytes per row in
                            // bounds (asserted); the helpers need only this function's
                            // features.
                            unsafe {
                                let xb = xp.add(b * BLOCK);
                                let xv = [
                                    _mm256_loadu_si256(xb.cast()),
                                    _mm256_loadu_si256(xb.add(32).cast()),
                                    _mm256_loadu_si256(xb.add(64).cast()),
                                    _mm256_loadu_si256(xb.add(96).cast()),
                                ];
                                for r in 0..M {
                                    let v = _mm256_loadu_si256(cp[r].add(b * BLOCK_BYTES).cast());
                                    let mut acc = small[r];
                                    acc = $prod(acc, _mm256_and_si256(v, mask), xv[0]);
                                    acc = $prod(
                                        acc,
                                        _mm256_and_si256(_mm256_srli_epi16(v, 2), mask),
                                        xv[1],
                                    );
                                    acc = $prod(
                                        acc,
                                        _mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
                                        xv[2],
                                    );
                                    acc = $prod(
                                        acc,
                                        _mm256_and_si256(_mm256_srli_epi16(v, 6), mask),
                                        xv[3],
                                    );
                                    small[r] = acc;
                                }
                            }
                            b += 1;
                        }
                        for r in 0..M {
                            // SAFETY: register-only.
                            big[r] = _mm256_add_epi32(big[r], unsafe { $flush(small[r]) });
                        }
                    }
                    // SAFETY: register-only.
                    let s = unsafe { hsum4([big[0], big[1], big[2], big[3]]) };
                    for r in 0..M {
                        y[r] += scales[r][g] * (s[r] - sums[g]) as f32;
                    }
                }
                y
            }
        };
    }

    rows_dot!(rows_dot_avx2, "avx2", prod_avx2, flush_avx2);

    rows_dot!(
        rows_dot_vnni,
        "avx2,avx512f,avx512vl,avx512vnni",
        prod_vnni,
        flush_vnni
    );

    row_dot_n!(row_dot_n_avx2, "avx2", prod_avx2, flush_avx2);
    row_dot_n!(
        row_dot_n_vnni,
        "avx2,avx512f,avx512vl,avx512vnni",
        prod_vnni,
        flush_vnni
    );

    /// `Σ w·x` of int8 vectors: |w| as u8 times x with w's sign, pairs to i16 (at most
    /// 2 · 127 · 127, no saturation), then to i32.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_i8_avx2(w: &[i8], x: &[i8]) -> i32 {
        assert!(w.len() == x.len() && w.len().is_multiple_of(32));
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        for i in (0..w.len()).step_by(32) {
            // SAFETY: i + 32 <= len for both (asserted).
            let (wv, xv) = unsafe {
                (
                    _mm256_loadu_si256(w.as_ptr().add(i).cast()),
                    _mm256_loadu_si256(x.as_ptr().add(i).cast()),
                )
            };
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
        }
        // SAFETY: register-only.
        unsafe { hsum(acc) }
    }

    /// `Σ w·x` for binary16 `w`: eight weights converted with `vcvtph2ps` per FMA, four
    /// independent accumulators, the tail in scalar code.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16_avx2(w: &[u16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8j + 8 <= n for both slices.
                unsafe {
                    let h = _mm_loadu_si128(w.as_ptr().add(i + 8 * j).cast());
                    let xv = _mm256_loadu_ps(x.as_ptr().add(i + 8 * j));
                    *a = _mm256_fmadd_ps(_mm256_cvtph_ps(h), xv, *a);
                }
            }
            i += 32;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        // SAFETY: register-only.
        let mut total = unsafe { hsum_ps(s) };
        for k in i..n {
            total += half::f16::from_bits(w[k]).to_f32() * x[k];
        }
        total
    }

    #[inline(always)]
    unsafe fn hsum_ps(v: __m256) -> f32 {
        // SAFETY: register-only AVX operations.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    /// Four independent 8-lane FMA chains.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, lane) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8j + 8 <= n for both slices.
                unsafe {
                    let x = _mm256_loadu_ps(a.as_ptr().add(i + 8 * j));
                    let y = _mm256_loadu_ps(b.as_ptr().add(i + 8 * j));
                    *lane = _mm256_fmadd_ps(x, y, *lane);
                }
            }
            i += 32;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        // SAFETY: register-only.
        let mut total = unsafe { hsum_ps(s) };
        for k in i..n {
            total += a[k] * b[k];
        }
        total
    }

    /// Float activations: codes widened to f32 eight at a time, fused multiply-add with x.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row_dot_f32_avx2(
        codes: &[u8],
        scales: &[f32],
        x: &[f32],
        sums: &[f32],
        group: usize,
    ) -> f32 {
        assert!(x.len() >= codes.len() * 4);
        let mask = _mm256_set1_epi8(3);
        let mut acc = _mm256_setzero_ps();
        let mut y = 0f32;
        let mut g = 0;
        let mut filled = 0;
        let mut lanes = [0u8; 32];
        for b in 0..codes.len() / BLOCK_BYTES {
            // SAFETY: (b + 1) * 32 <= codes.len().
            let v = unsafe { _mm256_loadu_si256(codes.as_ptr().add(b * BLOCK_BYTES).cast()) };
            for k in 0..4 {
                let c =
                    _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * k as i32)), mask);
                // SAFETY: lanes is 32 bytes.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), c) };
                let off = b * BLOCK + 32 * k;
                for e in 0..4 {
                    // SAFETY: 8 bytes of lanes at 8e; off + 8e + 8 <= x.len() (asserted).
                    unsafe {
                        let c8 = _mm_loadl_epi64(lanes.as_ptr().add(8 * e).cast());
                        let cf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c8));
                        let xv = _mm256_loadu_ps(x.as_ptr().add(off + 8 * e));
                        acc = _mm256_fmadd_ps(cf, xv, acc);
                    }
                }
                filled += 32;
                if filled == group {
                    filled = 0;
                    // SAFETY: register-only.
                    y += scales[g] * (unsafe { hsum_ps(acc) } - sums[g]);
                    acc = _mm256_setzero_ps();
                    g += 1;
                }
            }
        }
        y
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    //! NEON kernels: the same integer sums as the scalar reference. Codes (0, 1, 2) and int8
    //! activations are both signed bytes here; baseline NEON multiplies them with `smull` to
    //! i16 (two products per lane, at most 2 · 127 · 2 = 508, or 2 · 127 · 127 for int8 weights)
    //! and pairwise-adds into i32 lanes; with the dot-product extension `sdot` sums four
    //! products per i32 lane directly.
    use std::arch::aarch64::*;

    use super::{BLOCK, BLOCK_BYTES, Q4_GROUP};

    #[inline(always)]
    unsafe fn prod_neon(acc: int32x4_t, c: int8x16_t, x: int8x16_t) -> int32x4_t {
        // SAFETY: register-only NEON operations (NEON is part of the aarch64 baseline).
        unsafe {
            let p = vmull_s8(vget_low_s8(c), vget_low_s8(x));
            vpadalq_s16(acc, vmlal_high_s8(p, c, x))
        }
    }

    /// `sdot` (inline assembly: the `vdotq_s32` intrinsic is not stable in Rust yet).
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn prod_dot(mut acc: int32x4_t, c: int8x16_t, x: int8x16_t) -> int32x4_t {
        // SAFETY: register-only; the dot-product extension is enabled for this function and
        // its callers are only reached when the CPU has it.
        unsafe {
            std::arch::asm!(
                "sdot {acc:v}.4s, {c:v}.16b, {x:v}.16b",
                acc = inout(vreg) acc,
                c = in(vreg) c,
                x = in(vreg) x,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        acc
    }

    /// The four quarters of a 128-column block, each as two 16-code vectors (columns
    /// `32q .. 32q + 16` and `32q + 16 .. 32q + 32`).
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> [[int8x16_t; 2]; 4] {
        // SAFETY: the caller guarantees 32 readable bytes at p.
        unsafe {
            let mask = vdupq_n_u8(3);
            let (a, b) = (vld1q_u8(p), vld1q_u8(p.add(16)));
            let s = vreinterpretq_s8_u8;
            [
                [s(vandq_u8(a, mask)), s(vandq_u8(b, mask))],
                [
                    s(vandq_u8(vshrq_n_u8::<2>(a), mask)),
                    s(vandq_u8(vshrq_n_u8::<2>(b), mask)),
                ],
                [
                    s(vandq_u8(vshrq_n_u8::<4>(a), mask)),
                    s(vandq_u8(vshrq_n_u8::<4>(b), mask)),
                ],
                [s(vshrq_n_u8::<6>(a)), s(vshrq_n_u8::<6>(b))],
            ]
        }
    }

    macro_rules! kernels {
        ($row_dot_n:ident, $rows_dot:ident, $q4:ident, $dot_i8:ident, $features:literal, $prod:ident) => {
            /// `N` tokens against one packed row (as the AVX2 kernel of the same name, the last
            /// block's padding quarters skipped the same way).
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $row_dot_n<const N: usize>(
                codes: &[u8],
                scales: &[f32],
                xs: [&[i8]; N],
                sums: [&[i32]; N],
                group: usize,
                quarters: usize,
            ) -> [f32; N] {
                let blocks = codes.len() / BLOCK_BYTES;
                for t in 0..N {
                    assert!(xs[t].len() >= blocks * BLOCK && sums[t].len() >= scales.len());
                }
                assert!(scales.len() * group >= blocks * BLOCK && group.is_multiple_of(32));
                let mut y = [0f32; N];
                if group >= BLOCK {
                    let per = group / BLOCK;
                    for g in 0..scales.len() {
                        let mut acc = [vdupq_n_s32(0); N];
                        for b in g * per..((g + 1) * per).min(blocks) {
                            // SAFETY: b < blocks: 32 code bytes and 128 activations per token
                            // in bounds (asserted).
                            unsafe {
                                let parts = unpack(codes.as_ptr().add(b * BLOCK_BYTES));
                                let q = if b + 1 == blocks { quarters } else { 4 };
                                for t in 0..N {
                                    let xb = xs[t].as_ptr().add(b * BLOCK);
                                    for (k, part) in parts.iter().enumerate().take(q) {
                                        acc[t] = $prod(acc[t], part[0], vld1q_s8(xb.add(32 * k)));
                                        acc[t] =
                                            $prod(acc[t], part[1], vld1q_s8(xb.add(32 * k + 16)));
                                    }
                                }
                            }
                        }
                        for t in 0..N {
                            let s = vaddvq_s32(acc[t]);
                            y[t] += scales[g] * (s - sums[t][g]) as f32;
                        }
                    }
                } else {
                    // 32 or 64 columns per group: 4 or 2 groups per block.
                    let q = group / 32;
                    for b in 0..blocks {
                        // SAFETY: as above.
                        let parts = unsafe { unpack(codes.as_ptr().add(b * BLOCK_BYTES)) };
                        for j in 0..4 / q {
                            let g = b * (4 / q) + j;
                            for t in 0..N {
                                let mut acc = vdupq_n_s32(0);
                                for k in j * q..(j + 1) * q {
                                    // SAFETY: as above.
                                    unsafe {
                                        let xb = xs[t].as_ptr().add(b * BLOCK + 32 * k);
                                        acc = $prod(acc, parts[k][0], vld1q_s8(xb));
                                        acc = $prod(acc, parts[k][1], vld1q_s8(xb.add(16)));
                                    }
                                }
                                let s = vaddvq_s32(acc);
                                y[t] += scales[g] * (s - sums[t][g]) as f32;
                            }
                        }
                    }
                }
                y
            }

            /// One token against `M` packed rows (groups of whole blocks): each block's
            /// activations loaded once for all rows.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $rows_dot<const M: usize>(
                codes: [&[u8]; M],
                scales: [&[f32]; M],
                x: &[i8],
                sums: &[i32],
                group: usize,
            ) -> [f32; M] {
                let blocks = codes[0].len() / BLOCK_BYTES;
                let groups = scales[0].len();
                for r in 0..M {
                    assert!(codes[r].len() == blocks * BLOCK_BYTES && scales[r].len() == groups);
                }
                assert!(x.len() >= blocks * BLOCK && sums.len() >= groups);
                assert!(group.is_multiple_of(BLOCK) && groups * group >= blocks * BLOCK);
                let per = group / BLOCK;
                let mut y = [0f32; M];
                for g in 0..groups {
                    let mut acc = [vdupq_n_s32(0); M];
                    for b in g * per..((g + 1) * per).min(blocks) {
                        // SAFETY: b < blocks: 128 activations and 32 code bytes per row in
                        // bounds (asserted).
                        unsafe {
                            let xb = x.as_ptr().add(b * BLOCK);
                            let xv: [[int8x16_t; 2]; 4] = std::array::from_fn(|k| {
                                [vld1q_s8(xb.add(32 * k)), vld1q_s8(xb.add(32 * k + 16))]
                            });
                            for r in 0..M {
                                let parts = unpack(codes[r].as_ptr().add(b * BLOCK_BYTES));
                                for k in 0..4 {
                                    acc[r] = $prod(acc[r], parts[k][0], xv[k][0]);
                                    acc[r] = $prod(acc[r], parts[k][1], xv[k][1]);
                                }
                            }
                        }
                    }
                    for r in 0..M {
                        let s = vaddvq_s32(acc[r]);
                        y[r] += scales[r][g] * (s - sums[g]) as f32;
                    }
                }
                y
            }

            /// One token against one Q4 row: per group the exact integer sum (codes 0..=15 as
            /// signed bytes), then the reference's f32 operations in the reference's order.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $q4(codes: &[u8], scales: &[u16], x: &[i8], off: &[i32]) -> f32 {
                use super::Q4_LANES;
                let groups = scales.len();
                assert!(off.len() >= groups);
                assert!(codes.len() >= groups * Q4_GROUP / 2 && x.len() >= groups * Q4_GROUP);
                let low = vdupq_n_u8(0x0F);
                let mut lanes = [0f32; Q4_LANES];
                for g in 0..groups {
                    // SAFETY: group g's 16 code bytes and 32 activations in bounds (asserted).
                    let s = unsafe {
                        let b = vld1q_u8(codes.as_ptr().add(g * Q4_GROUP / 2));
                        let xp = x.as_ptr().add(g * Q4_GROUP);
                        let lo = vreinterpretq_s8_u8(vandq_u8(b, low));
                        let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(b));
                        let acc = $prod(vdupq_n_s32(0), lo, vld1q_s8(xp));
                        vaddvq_s32($prod(acc, hi, vld1q_s8(xp.add(16))))
                    };
                    let d = half::f16::from_bits(scales[g]).to_f32();
                    lanes[g % Q4_LANES] += d * (s - off[g]) as f32;
                }
                lanes.iter().fold(0f32, |a, &v| a + v)
            }

            /// `Σ w·x` of int8 vectors (values in -127..=127, length a multiple of 16).
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $dot_i8(w: &[i8], x: &[i8]) -> i32 {
                assert!(w.len() == x.len() && w.len().is_multiple_of(16));
                let mut acc = vdupq_n_s32(0);
                for i in (0..w.len()).step_by(16) {
                    // SAFETY: i + 16 <= len for both (asserted).
                    unsafe {
                        acc = $prod(
                            acc,
                            vld1q_s8(w.as_ptr().add(i)),
                            vld1q_s8(x.as_ptr().add(i)),
                        );
                    }
                }
                vaddvq_s32(acc)
            }
        };
    }

    kernels!(
        row_dot_n_neon,
        rows_dot_neon,
        q4_row_dot_neon,
        dot_i8_neon,
        "neon",
        prod_neon
    );
    kernels!(
        row_dot_n_dot,
        rows_dot_dot,
        q4_row_dot_dot,
        dot_i8_dot,
        "neon,dotprod",
        prod_dot
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SplitMix64 stream, so tests need no RNG crate.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    fn random_matrix(
        rows: usize,
        cols: usize,
        planes: usize,
        gran: Granularity,
        seed: u64,
    ) -> TernaryMatrix {
        let mut r = rng(seed);
        let n = rows * cols;
        let trits = (0..planes * n).map(|_| (r() % 3) as i8 - 1).collect();
        let per = gran.scales_per_plane(rows, cols);
        let scales = (0..planes * per)
            .map(|_| 0.01 + (r() % 1000) as f32 / 1000.0)
            .collect();
        TernaryMatrix {
            rows,
            cols,
            planes,
            granularity: gran,
            trits,
            scales,
        }
    }

    fn random_x(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rng(seed);
        (0..n)
            .map(|_| ((r() % 20001) as f32 - 10000.0) / 2500.0)
            .collect()
    }

    const SHAPES: [(usize, usize); 6] = [
        (1, 32),
        (7, 100),
        (33, 576),
        (65, 1000),
        (130, 2048),
        (3, 300),
    ];

    #[test]
    fn stacked_rows_give_the_parts_products() {
        for (planes, gran) in [(1, Granularity::Tensor), (2, Granularity::Group(64))] {
            let parts: Vec<PackedTernary> = [(12, 300), (5, 300), (9, 300)]
                .iter()
                .enumerate()
                .map(|(i, &(r, c))| {
                    PackedTernary::from_matrix(&random_matrix(r, c, planes, gran, 40 + i as u64))
                        .expect("packs")
                })
                .collect();
            let refs: Vec<&PackedTernary> = parts.iter().collect();
            let stack = PackedTernary::concat_rows(&refs).expect("same shape");
            assert_eq!(stack.rows, 26);
            for tokens in [1, 5] {
                let x = random_x(tokens * 300, 8);
                let got = stack.matmul_i8(&x, tokens);
                for t in 0..tokens {
                    let mut want = Vec::new();
                    for p in &parts {
                        want.extend_from_slice(&p.matmul_i8(&x, tokens)[t * p.rows..][..p.rows]);
                    }
                    assert_eq!(
                        &got[t * 26..][..26],
                        &want[..],
                        "planes {planes} t {tokens}"
                    );
                }
            }
        }
        let a = PackedTernary::from_matrix(&random_matrix(4, 300, 1, Granularity::Row, 1));
        let b = PackedTernary::from_matrix(&random_matrix(4, 600, 1, Granularity::Row, 2));
        let (a, b) = (a.expect("packs"), b.expect("packs"));
        assert!(PackedTernary::concat_rows(&[&a, &b]).is_none());
    }

    #[test]
    fn packing_round_trips_every_code() {
        for (rows, cols) in SHAPES {
            let m = random_matrix(rows, cols, 2, Granularity::Row, 3);
            let p = PackedTernary::from_matrix(&m).expect("packs");
            for k in 0..2 {
                for r in 0..rows {
                    for c in 0..p.padded {
                        let want = if c < cols {
                            m.trits[k * rows * cols + r * cols + c] + 1
                        } else {
                            1
                        };
                        assert_eq!(code_at(p.row_codes(k, r), c) as i8, want, "({k},{r},{c})");
                    }
                }
            }
        }
    }

    #[test]
    fn fast_paths_equal_the_scalar_reference_exactly() {
        // Integer products summed in i32 are exact in every path, and each path applies the
        // same f32 operations in the same order per group, so the results are bit-identical.
        let grans = [
            Granularity::Tensor,
            Granularity::Row,
            Granularity::Group(32),
            Granularity::Group(64),
            Granularity::Group(128),
            Granularity::Group(256),
        ];
        for (i, (rows, cols)) in SHAPES.into_iter().enumerate() {
            for (j, gran) in grans.into_iter().enumerate() {
                let m = random_matrix(rows, cols, 1 + (i + j) % 3, gran, (i * 10 + j) as u64);
                let p = PackedTernary::from_matrix(&m).expect("packs");
                for tokens in [1, 3, 4, 8, 9, 17] {
                    let x = random_x(tokens * cols, 99 + i as u64);
                    let want = p.matmul_i8_with(Isa::Scalar, &x, tokens);
                    for isa in Isa::available() {
                        let got = p.matmul_i8_with(isa, &x, tokens);
                        assert!(
                            got == want,
                            "{isa:?} differs on {rows}x{cols} {gran:?} t={tokens}"
                        );
                    }
                }
            }
        }
        eprintln!("implementations checked: {:?}", Isa::available());
    }

    #[test]
    fn extreme_inputs_do_not_overflow_the_i16_sums() {
        // The AVX2 kernels sum products in i16 for a bounded number of blocks before widening:
        // every weight +1 (or -1) against activations all at the int8 extreme is the largest
        // sum each can see. Rows of 4096 columns span many flushes; the f32 result is exact
        // here (integers below 2^24 times one scale), so it is checked against the closed form
        // as well as the scalar path.
        let (rows, cols) = (8, 4096);
        for (trit, sign) in [(1i8, 1f32), (-1, 1.0), (1, -1.0)] {
            for gran in [Granularity::Tensor, Granularity::Group(128)] {
                let m = TernaryMatrix {
                    rows,
                    cols,
                    planes: 1,
                    granularity: gran,
                    trits: vec![trit; rows * cols],
                    scales: vec![1.0; gran.scales_per_plane(rows, cols)],
                };
                let p = PackedTernary::from_matrix(&m).expect("packs");
                for tokens in [1, 8] {
                    let x = vec![sign; tokens * cols];
                    let want = p.matmul_i8_with(Isa::Scalar, &x, tokens);
                    for (i, v) in want.iter().enumerate() {
                        assert_eq!(*v, f32::from(trit) * sign * cols as f32, "scalar {i}");
                    }
                    for isa in Isa::available() {
                        assert!(
                            p.matmul_i8_with(isa, &x, tokens) == want,
                            "{isa:?} {gran:?} t={tokens} trit {trit} x {sign}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kernels_match_the_dequantized_product() {
        // Against an independent formulation: dense f64 matmul of the dequantized weights with
        // the fake-quantized (int8) or raw activations. Tolerance: f32 accumulation of up to 2048
        // terms of magnitude <= 4 * 1: 1e-4 relative to the row's absolute sum.
        for (i, (rows, cols)) in SHAPES.into_iter().enumerate() {
            let m = random_matrix(rows, cols, 2, Granularity::Group(64), 7 + i as u64);
            let p = PackedTernary::from_matrix(&m).expect("packs");
            let w = m.dequantize();
            let tokens = 5;
            let x = random_x(tokens * cols, 5);
            let mut xq = x.clone();
            crate::act::fake_quantize(&mut xq, cols);
            for (got, xin) in [
                (p.matmul_i8(&x, tokens), &xq),
                (p.matmul_f32(&x, tokens), &x),
            ] {
                for t in 0..tokens {
                    for r in 0..rows {
                        let (mut want, mut mag) = (0f64, 0f64);
                        for c in 0..cols {
                            let term = f64::from(xin[t * cols + c]) * f64::from(w[r * cols + c]);
                            want += term;
                            mag += term.abs();
                        }
                        let g = f64::from(got[t * rows + r]);
                        assert!(
                            (g - want).abs() <= 1e-4 * mag.max(1.0),
                            "{rows}x{cols} r{r} t{t}: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn q8_matches_scalar_and_dense() {
        for (rows, cols) in SHAPES {
            let w = random_x(rows * cols, 11);
            let m = Q8Matrix::from_f32(&w, rows, cols);
            for tokens in [1, 3] {
                let x = random_x(tokens * cols, 12);
                let want = m.matmul_with(Isa::Scalar, &x, tokens);
                for isa in Isa::available() {
                    assert!(
                        m.matmul_with(isa, &x, tokens) == want,
                        "{isa:?} {rows}x{cols}"
                    );
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

    #[test]
    fn q4_matches_scalar_and_dense() {
        for (i, (rows, cols)) in SHAPES.into_iter().chain([(5, 2048), (3, 700)]).enumerate() {
            let w = random_x(rows * cols, 21 + i as u64);
            let m = Q4Matrix::from_f32(&w, rows, cols);
            for tokens in [1, 2] {
                let x = random_x(tokens * cols, 22);
                let want = m.matmul_with(Isa::Scalar, &x, tokens);
                for isa in Isa::available() {
                    assert!(
                        m.matmul_with(isa, &x, tokens) == want,
                        "{isa:?} {rows}x{cols}"
                    );
                }
                // Against the f32 product, computed independently: weights rounded to half a
                // step of max|w|/7 per group, activations to half a step of max|x|/127, so the
                // error is below (|w|max/14 · |x|max + |w|max · |x|max/254) · cols (plus f32
                // rounding, far smaller).
                for t in 0..tokens {
                    let xt = &x[t * cols..][..cols];
                    let xm = xt.iter().fold(0f32, |a, v| a.max(v.abs()));
                    for r in 0..rows {
                        let wr = &w[r * cols..][..cols];
                        let wm = wr.iter().fold(0f32, |a, v| a.max(v.abs()));
                        let dense: f64 = wr.iter().zip(xt).map(|(a, b)| f64::from(a * b)).sum();
                        let bound = f64::from(wm * xm) * (1.0 / 14.0 + 1.0 / 254.0) * cols as f64;
                        let got = f64::from(want[t * rows + r]);
                        assert!(
                            (got - dense).abs() <= bound,
                            "{rows}x{cols}: {got} vs {dense}"
                        );
                    }
                }
            }
            // Lookup: each value within half a step of its group.
            let row = m.row(rows - 1);
            let groups = m.padded / Q4_GROUP;
            for (c, v) in row.iter().enumerate() {
                let d = half::f16::from_bits(m.scales[(rows - 1) * groups + c / Q4_GROUP]).to_f32();
                assert!((v - w[(rows - 1) * cols + c]).abs() <= 0.5 * d * 1.0001 + 1e-6);
            }
        }
    }

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

    #[test]
    fn dequantize_matches_the_matrix() {
        for (i, (rows, cols)) in SHAPES.into_iter().enumerate() {
            let m = random_matrix(rows, cols, 1 + i % 3, Granularity::Group(32), i as u64);
            let p = PackedTernary::from_matrix(&m).expect("packs");
            let (a, b) = (p.dequantize(), m.dequantize());
            // Same terms, added plane by plane in the same order: equal up to f32 rounding.
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn refuses_groups_that_are_not_multiples_of_32() {
        let m = random_matrix(2, 64, 1, Granularity::Group(48), 1);
        assert_eq!(
            PackedTernary::from_matrix(&m).expect_err("refused"),
            PackError::Group(48)
        );
        let m = random_matrix(2, 64, 1, Granularity::Group(192), 1);
        assert_eq!(
            PackedTernary::from_matrix(&m).expect_err("refused"),
            PackError::Group(192)
        );
    }
}

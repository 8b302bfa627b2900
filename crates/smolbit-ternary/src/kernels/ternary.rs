//! [`PackedTernary`]: trit planes at 2 bits a weight against int8 (W1.58A8) or float
//! activations, with the scalar references every ISA's kernel must equal.
//!
//! Layout: per plane and row, columns padded to a multiple of 128; each 128-column block is 32
//! bytes, byte `j` holding the codes (`trit + 1`, so 0, 1, 2) of columns `j`, `32 + j`, `64 + j`,
//! `96 + j` in bit pairs 0-1, 2-3, 4-5, 6-7. One shift and mask turn a block into four vectors of
//! 32 consecutive codes. Scales: one per plane, row and group (groups are multiples of 32
//! columns; per-tensor and per-row scales become one group per row).
//!
//! W1.58A8 ([`PackedTernary::matmul_i8`]): per group, `Σ code·x` is an exact integer product
//! (u8 × i8 into i32), from which `Σ x` over the group is subtracted to get `Σ trit·x`; the group
//! scale and the token's scale are applied once per group in f32. Float activations
//! ([`PackedTernary::matmul_f32`]) compute `Σ trit·x` in f32 per group.
//!
//! Decode (one token) runs four rows per call, one activation load and one horizontal sum
//! serving all four, and prefetches the next four rows' codes as it goes (decode is bound by
//! memory latency without it). Several tokens on AVX-512 VNNI (groups of whole blocks) run the
//! register-blocked kernel: four rows by up to four tokens, 512-bit, each pair of blocks' codes
//! unpacked once for all four tokens, in bands of 16 rows through every group of four tokens
//! (sequences decoded together, and prefill: at 128 tokens it beat the tiles by 1.4× on the
//! 135M model and 1.6× on the 3B shape, `smolbit bench`). Elsewhere (AVX2, NEON, 32- and
//! 64-column groups) a few tokens run the one-token kernels in turn and prefill runs tiles of
//! eight tokens over bands of 16 rows, so each unpacked block of codes serves the tile and the
//! tile's activations stay in L1 across the band. The NEON kernels share that structure
//! (without the prefetch).

use rayon::prelude::*;

#[cfg(target_arch = "aarch64")]
use super::arm;
use super::dense::dot_f32;
use super::rows::{RowChunk, par_row_chunks, par_rows, row_range};
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{Isa, QuantizedInput};
use crate::{Granularity, TernaryMatrix};

/// Columns per packed block.
pub const BLOCK: usize = 128;
pub(super) const BLOCK_BYTES: usize = BLOCK / 4;

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
        let quarters = self.quarters();
        if tokens <= DECODE_TOKENS || Decode::blocks(self, isa) {
            // Decode: one token, or a few decoded together (`smolbit serve`'s batches), and on
            // the register-blocked kernel any number of tokens (prefill too). Groups of whole
            // blocks (per-tensor, per-row, 128, 256, ...) go ROWS rows at a time (one
            // activation load and one horizontal sum serve them all); 32- and 64-column groups
            // row by row. Several tokens on AVX-512 VNNI run register-blocked, ROWS rows by four
            // tokens (each block of codes unpacked once for them); elsewhere each chunk of rows
            // runs the one-token kernel for every token in turn (its codes come from memory once
            // and from cache after that). All give the scalar reference's results exactly.
            let decode = Decode::new(self, isa, q, tokens, quarters);
            return par_row_chunks(self.rows, tokens, ROWS, |chunk| decode.run(chunk));
        }
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

    /// Rows `rows` of [`PackedTernary::matmul_i8_with`], computed on the calling thread:
    /// `[tokens, rows.len()]`, the same bits as those rows of the whole product. For a team of
    /// threads that split one product's rows among themselves (each quantizes the activations
    /// itself, which is cheap at a few tokens and needs no hand-over). The decode path's kernels
    /// run: register-blocked on AVX-512 VNNI, elsewhere one token at a time (slow for many).
    pub fn matmul_i8_rows(
        &self,
        isa: Isa,
        x: &[f32],
        tokens: usize,
        rows: std::ops::Range<usize>,
    ) -> Vec<f32> {
        let [part] = self.matmul_i8_row_sets(isa, x, tokens, [rows]);
        part
    }

    /// [`PackedTernary::matmul_i8_rows`] for several sets of rows of one input (the activations
    /// quantized once): one `[tokens, set.len()]` result per set.
    pub fn matmul_i8_row_sets<const S: usize>(
        &self,
        isa: Isa,
        x: &[f32],
        tokens: usize,
        sets: [std::ops::Range<usize>; S],
    ) -> [Vec<f32>; S] {
        assert_eq!(x.len(), tokens * self.cols, "x must be [tokens, cols]");
        assert!(
            sets.iter().all(|r| r.end <= self.rows),
            "rows past the matrix"
        );
        let q = QuantizedInput::new(x, tokens, self.cols, self.padded, self.group);
        let decode = Decode::new(self, isa, q, tokens, self.quarters());
        sets.map(|rows| row_range(rows, tokens, |chunk| decode.run(chunk)))
    }

    /// Quarters of the last block that hold real columns (0 to 4; the rest is padding).
    fn quarters(&self) -> usize {
        self.cols
            .saturating_sub(self.padded - BLOCK)
            .div_ceil(32)
            .min(4)
    }

    /// Tokens `t0..t0 + N` of `q` (its values in [`pair_activations`]' layout: `paired`)
    /// against rows `band` of `chunk` (whole [`ROWS`]-row sets), register-blocked (AVX-512
    /// VNNI, groups of whole blocks).
    #[cfg(target_arch = "x86_64")]
    fn decode_rows_tokens<const N: usize>(
        &self,
        q: &QuantizedInput,
        paired: &[i8],
        quarters: usize,
        chunk: &mut RowChunk<'_>,
        (t0, band): (usize, std::ops::Range<usize>),
    ) {
        let (groups, rb, pad) = (self.groups(), self.padded / 4, self.padded);
        let xs: [&[i8]; N] = std::array::from_fn(|t| &paired[(t0 + t) * pad..][..pad]);
        let sums: [&[i32]; N] =
            std::array::from_fn(|t| &q.group_sums[(t0 + t) * groups..][..groups]);
        let (first, n) = (chunk.first_row() + band.start, band.len());
        let mut out = chunk.token_rows::<N>(t0).map(|o| &mut o[band.clone()]);
        for k in 0..self.planes {
            let at = k * self.rows + first;
            // SAFETY: only called with Isa::Avx512Vnni, produced only when the CPU has it.
            unsafe {
                x86::rows_tokens_dot_vnni::<N>(
                    &self.codes[at * rb..][..n * rb],
                    &self.scales[at * groups..][..n * groups],
                    (n, rb, groups),
                    xs,
                    sums,
                    (self.group, quarters),
                    &mut out,
                    k > 0,
                )
            };
        }
        // Divided by the activation scale, as a multiply by its inverse (as `decode_chunk`).
        for (o, &s) in out.iter_mut().zip(&q.scales[t0..]) {
            let inv = 1.0 / s;
            for v in o.iter_mut() {
                *v *= inv;
            }
        }
    }

    /// Token `t` of `q` against the rows of `chunk` from its row `from` on, on the one-token
    /// kernels (the decode path of [`PackedTernary::matmul_i8_with`]).
    fn decode_chunk(
        &self,
        isa: Isa,
        q: &QuantizedInput,
        t: usize,
        chunk: &mut RowChunk<'_>,
        from: usize,
    ) {
        let groups = self.groups();
        let x = &q.values[t * self.padded..][..self.padded];
        let sums = &q.group_sums[t * groups..][..groups];
        let inv = 1.0 / q.scales[t];
        let (first, n) = (chunk.first_row(), chunk.rows());
        let mut ri = from;
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
                    chunk.set(ri + i, t, a * inv);
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
                chunk.set(ri, t, acc * inv);
                ri += 1;
            }
        }
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
/// The decode path of [`PackedTernary::matmul_i8_with`] for `tokens` quantized tokens (up to
/// [`DECODE_TOKENS`], or any number on the register-blocked kernel): whatever a chunk of rows
/// needs, prepared once per product.
// The register-blocked fields are read on x86-64 only.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Decode<'a> {
    m: &'a PackedTernary,
    isa: Isa,
    q: QuantizedInput,
    tokens: usize,
    quarters: usize,
    /// Several tokens on AVX-512 VNNI with groups of whole blocks: the register-blocked
    /// kernel, on `paired` activations.
    blocked: bool,
    paired: Vec<i8>,
}

impl<'a> Decode<'a> {
    fn new(
        m: &'a PackedTernary,
        isa: Isa,
        q: QuantizedInput,
        tokens: usize,
        quarters: usize,
    ) -> Self {
        let blocked = tokens > 1 && Decode::blocks(m, isa);
        #[cfg(target_arch = "x86_64")]
        let paired = if blocked {
            pair_activations(&q.values, m.padded, m.group / BLOCK)
        } else {
            Vec::new()
        };
        #[cfg(not(target_arch = "x86_64"))]
        let paired = Vec::new();
        Decode {
            m,
            isa,
            q,
            tokens,
            quarters,
            blocked,
            paired,
        }
    }

    /// Whether several tokens against `m` take the register-blocked kernel: AVX-512 VNNI, groups
    /// of whole blocks.
    fn blocks(m: &PackedTernary, isa: Isa) -> bool {
        cfg!(target_arch = "x86_64") && isa == Isa::Avx512Vnni && m.group >= BLOCK
    }

    /// The rows of `chunk`: register-blocked where it applies (four tokens at a time), then
    /// (the rest, or everything) the one-token kernels token by token.
    fn run(&self, chunk: &mut RowChunk<'_>) {
        #[allow(unused_mut)]
        let mut from = 0;
        #[cfg(target_arch = "x86_64")]
        if self.blocked {
            let (m, q, p, k) = (self.m, &self.q, &self.paired, self.quarters);
            // Bands of BAND rows, each through every group of four tokens: a band's codes and
            // a group's activations stay in L1 while the other goes past (as the tiles do).
            from = chunk.rows() / ROWS * ROWS;
            for b0 in (0..from).step_by(BAND) {
                let band = b0..(b0 + BAND).min(from);
                for t0 in (0..self.tokens).step_by(DECODE_TOKENS) {
                    let at = (t0, band.clone());
                    match self.tokens - t0 {
                        1 => m.decode_rows_tokens::<1>(q, p, k, chunk, at),
                        2 => m.decode_rows_tokens::<2>(q, p, k, chunk, at),
                        3 => m.decode_rows_tokens::<3>(q, p, k, chunk, at),
                        _ => m.decode_rows_tokens::<4>(q, p, k, chunk, at),
                    }
                }
            }
        }
        for t in 0..self.tokens {
            self.m.decode_chunk(self.isa, &self.q, t, chunk, from);
        }
    }
}

/// Int8 activations (tokens of `padded` values) rearranged for the 512-bit multi-token kernel:
/// in each group of `per` blocks, blocks pair up from the group's first, and within a pair
/// quarter `k` (32 values) of the first block and quarter `k` of the second lie side by side at
/// `64 · k`, matching one 64-byte load of the pair's codes; a group's odd last block stays as
/// it was.
#[cfg(target_arch = "x86_64")]
pub(super) fn pair_activations(values: &[i8], padded: usize, per: usize) -> Vec<i8> {
    let mut out = values.to_vec();
    let blocks = padded / BLOCK;
    for (src, dst) in values
        .chunks_exact(padded)
        .zip(out.chunks_exact_mut(padded))
    {
        for g0 in (0..blocks).step_by(per) {
            let end = (g0 + per).min(blocks);
            let mut b = g0;
            while end - b >= 2 {
                let (a, c) = (&src[b * BLOCK..][..BLOCK], &src[(b + 1) * BLOCK..][..BLOCK]);
                let d = &mut dst[b * BLOCK..][..2 * BLOCK];
                for k in 0..4 {
                    d[64 * k..][..32].copy_from_slice(&a[32 * k..][..32]);
                    d[64 * k + 32..][..32].copy_from_slice(&c[32 * k..][..32]);
                }
                b += 2;
            }
        }
    }
    out
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
/// Tokens per tile in the i8 product (eight accumulators, the four unpacked code vectors and
/// the mask fill 13 of AVX2's 16 vector registers).
const TILE: usize = 8;

/// Tokens up to which int8 products run the decode path (decoding several sequences at once)
/// rather than the multi-token tiles; also the register-blocked kernel's width.
const DECODE_TOKENS: usize = 4;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{SHAPES, random_matrix, random_x};

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
            // Three blocks a group: the multi-token kernel's pairs start at odd blocks too.
            Granularity::Group(384),
        ];
        for (i, (rows, cols)) in SHAPES.into_iter().enumerate() {
            for (j, gran) in grans.into_iter().enumerate() {
                let m = random_matrix(rows, cols, 1 + (i + j) % 3, gran, (i * 10 + j) as u64);
                let p = PackedTernary::from_matrix(&m).expect("packs");
                for tokens in [1, 2, 3, 4, 6, 8, 9, 16, 17] {
                    let x = random_x(tokens * cols, 99 + i as u64);
                    let want = p.matmul_i8_with(Isa::Scalar, &x, tokens);
                    for isa in Isa::available() {
                        let got = p.matmul_i8_with(isa, &x, tokens);
                        assert!(
                            got == want,
                            "{isa:?} differs on {rows}x{cols} {gran:?} t={tokens}"
                        );
                        // A team's parts: rows split at an awkward point give those rows' bits.
                        let cut = rows * 2 / 5;
                        for range in [0..cut, cut..rows] {
                            let part = p.matmul_i8_rows(isa, &x, tokens, range.clone());
                            for t in 0..tokens {
                                assert!(
                                    part[t * range.len()..][..range.len()]
                                        == want[t * rows..][range.clone()],
                                    "{isa:?} rows {range:?} of {rows}x{cols} {gran:?} t={tokens}"
                                );
                            }
                        }
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
                for tokens in [1, 4, 8] {
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

//! Ternary linears on burn's wgpu backend: CubeCL kernels over the packed 2-bit weights.
//!
//! The weights are [`PackedTernary`]'s bytes read as little-endian `u32` words (16 trits a word:
//! word `i` of a 128-column block holds columns `4i + b + 32s` in bits `8b + 2s`, `b, s < 4`) and
//! its per plane/row/group `f32` scales, uploaded once. Three kernels (and the fused decode
//! step's in `fused`, which share `ternary_part` with the first):
//!
//! - `ternary_matvec`: `y = x Wᵀ` for a few tokens (decode). One cube per output row; its units
//!   stride over the row's words, decode each word's 16 trits and accumulate `trit · x` in f32,
//!   scaled per 32-column quarter, then reduce in shared memory. For int8-activation schemes the
//!   kernel first reduces the token's absmax, rounds each activation to an integer in -128..=127
//!   as it reads it, and divides by the token's scale at the end (one launch, no separate
//!   quantization ops): the trit·integer sums are exact in f32 (below `128 · cols < 2²⁴`), so
//!   this is the W1.58A8 product up to the final scale multiplications.
//! - `ternary_unpack`: the dense `[rows, cols]` f32 matrix (planes summed) for prefill, where
//!   burn's GEMM on a transient copy beats a matrix-vector kernel per token, and as the reference
//!   the matrix-vector kernel is tested against (`tests/wgpu.rs`).
//! - `ternary_gemm`: the product for many tokens without the dense copy, each decoded trit
//!   serving a tile of 8 tokens; behind `SMOLBIT_GPU_PREFILL=tiled`, since on lavapipe it is 7×
//!   slower than the unpack and burn's GEMM (docs/gpu.md).
//!
//! Activations reach the kernels as burn tensors: `Tensor::try_into_primitive::<CubeBackend>`
//! yields the CubeCL tensor (its client, buffer and layout), and the output goes back through
//! `Tensor::from_primitive`. Everything around the linears stays in burn.

use burn::prelude::*;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeDevice};
use cubecl::client::Client;
use cubecl::prelude::{BufferArg, CubeCount, CubeDim, CubeElement};
use cubecl::server::Handle;
use smolbit_ternary::kernels::PackedTernary;

use kernels::{ternary_gemm, ternary_matvec, ternary_unpack};

/// Units per cube of the matrix-vector kernel (a power of two for the tree reduction).
const CUBE: u32 = 64;
/// The tiled prefill kernel's cubes (8 units on each of 32 rows, as the fused step's products)
/// and the tokens each decoded trit serves.
const GEMM_UNITS: u32 = 8;
const GEMM_ROWS: u32 = 32;
const GEMM_TILE: u32 = 8;
/// Cubes per grid row: grids are two-dimensional so that no dimension passes wgpu's 65,535.
const GRID_X: u32 = 32_768;

/// The CubeCL kernels (the prelude stays in here: its `Tensor` would shadow burn's).
pub(crate) mod kernels {
    use cubecl::prelude::*;

    /// Sum of `v` over every unit of the cube (every unit gets it); `partial` has one slot per
    /// unit.
    #[cube]
    pub(crate) fn all_sum(partial: &mut Shared<[f32]>, v: f32) -> f32 {
        let unit = UNIT_POS;
        partial[unit as usize] = v;
        sync_cube();
        let mut half = CUBE_DIM / 2;
        while half > 0 {
            if unit < half {
                let other = partial[(unit + half) as usize];
                partial[unit as usize] += other;
            }
            sync_cube();
            half /= 2;
        }
        let total = partial[0];
        sync_cube();
        total
    }

    /// Sum of `v` over the units of this unit's row of the cube (`CUBE_DIM_X` units a row,
    /// `CUBE_DIM_Y` rows); `partial` has one slot per unit of the cube.
    #[cube]
    pub(crate) fn row_sum(partial: &mut Shared<[f32]>, v: f32) -> f32 {
        let x = UNIT_POS_X;
        let base = UNIT_POS_Y * CUBE_DIM_X;
        partial[(base + x) as usize] = v;
        sync_cube();
        let mut half = CUBE_DIM_X / 2;
        while half > 0 {
            if x < half {
                let other = partial[(base + x + half) as usize];
                partial[(base + x) as usize] += other;
            }
            sync_cube();
            half /= 2;
        }
        let total = partial[base as usize];
        sync_cube();
        total
    }

    /// Maximum of `v` over every unit of the cube (any shape).
    #[cube]
    pub(crate) fn all_max(partial: &mut Shared<[f32]>, v: f32) -> f32 {
        let unit = UNIT_POS;
        partial[unit as usize] = v;
        sync_cube();
        let mut half = CUBE_DIM / 2;
        while half > 0 {
            if unit < half {
                let other = partial[(unit + half) as usize];
                partial[unit as usize] = partial[unit as usize].max(other);
            }
            sync_cube();
            half /= 2;
        }
        let total = partial[0];
        sync_cube();
        total
    }

    /// This unit's part of `Σ_c trit(row, c) · x̂[c]` over all planes with their scales, where
    /// `x̂` is `x[xbase..]` or, with `round`, it rounded to int8 at scale `xs`. Units stride over
    /// the row's words by `CUBE_DIM_X` (the matrix-vector kernels here and in `fused`).
    #[cube]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ternary_part(
        x: &[f32],
        xbase: u32,
        codes: &[u32],
        scales: &[f32],
        row: u32,
        rows: u32,
        cols: u32,
        words: u32,
        groups: u32,
        group: u32,
        planes: u32,
        xs: f32,
        #[comptime] round: bool,
    ) -> f32 {
        let mut acc = 0.0f32;
        for k in 0..planes {
            let wbase = (k * rows + row) * words;
            let sbase = (k * rows + row) * groups;
            let mut w = UNIT_POS_X;
            while w < words {
                let word = codes[(wbase + w) as usize];
                let block = w / 8;
                let col0 = block * 128 + (w % 8) * 4;
                #[unroll]
                for s in 0..4u32 {
                    let first = block * 128 + 32 * s;
                    let scale = scales[(sbase + first / group) as usize];
                    let mut part = 0.0f32;
                    #[unroll]
                    for b in 0..4u32 {
                        let c = col0 + 32 * s + b;
                        let code = (word >> (8 * b + 2 * s)) & 3;
                        if c < cols {
                            let mut v = x[(xbase + c) as usize];
                            if round {
                                v = (v * xs).round().clamp(-128.0, 127.0);
                            }
                            part += (f32::cast_from(code) - 1.0) * v;
                        }
                    }
                    acc += scale * part;
                }
                w += CUBE_DIM_X;
            }
        }
        acc
    }

    #[cube(launch_unchecked)]
    pub(super) fn ternary_matvec(
        x: &[f32],
        codes: &[u32],
        scales: &[f32],
        out: &mut [f32],
        rows: u32,
        cols: u32,
        words: u32,
        groups: u32,
        group: u32,
        planes: u32,
        tokens: u32,
        #[comptime] cube: u32,
        #[comptime] act8: bool,
    ) {
        let row = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
        if row >= rows {
            terminate!();
        }
        let unit = UNIT_POS_X;
        let mut partial = Shared::<[f32]>::new_slice(cube as usize);
        for t in 0..tokens {
            let xbase = t * cols;
            // int8 activations: the token's absmax scale, `127 / max(max|x|, 1e-5)` as the
            // reference computes it, reduced over the cube. Every cube reads the whole token
            // (cached): redundant work, but one launch fewer per projection, and launches are
            // what bounds decoding on wgpu (docs/gpu.md: 7.4 -> 14.4 tok/s at 3B on an H100).
            let mut xs = 1.0f32;
            if act8 {
                let mut m = 0.0f32;
                let mut c = unit;
                while c < cols {
                    m = m.max(x[(xbase + c) as usize].abs());
                    c += CUBE_DIM_X;
                }
                xs = (1.0 / all_max(&mut partial, m).max(1e-5)) * 127.0;
            }
            let acc = ternary_part(
                x, xbase, codes, scales, row, rows, cols, words, groups, group, planes, xs, act8,
            );
            let y = all_sum(&mut partial, acc);
            if unit == 0 {
                out[(t * rows + row) as usize] = y / xs;
            }
        }
    }

    /// `y[t, j] = Σ_c W[j, c] · x[t, c]` for many tokens (prefill) without a dense copy:
    /// cubes of `CUBE_DIM_Y` rows with `CUBE_DIM_X` units each; every decoded trit serves a
    /// tile of `tile` tokens before the next word is read. `x` is used as given (for int8
    /// schemes the caller passes the rounded values and divides by the token scales after).
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ternary_gemm(
        x: &[f32],
        codes: &[u32],
        scales: &[f32],
        out: &mut [f32],
        rows: u32,
        cols: u32,
        words: u32,
        groups: u32,
        group: u32,
        planes: u32,
        tokens: u32,
        #[comptime] units: u32,
        #[comptime] tile: u32,
    ) {
        let j = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * CUBE_DIM_Y + UNIT_POS_Y;
        let live = j < rows;
        let ux = UNIT_POS_X;
        let mut partial = Shared::<[f32]>::new_slice(units as usize);
        let mut acc = Array::<f32>::new(tile as usize);
        let mut part = Array::<f32>::new(tile as usize);
        let mut t0 = 0u32;
        while t0 < tokens {
            #[unroll]
            for i in 0..tile {
                acc[i as usize] = 0.0;
            }
            if live {
                for k in 0..planes {
                    let wbase = (k * rows + j) * words;
                    let sbase = (k * rows + j) * groups;
                    let mut w = ux;
                    while w < words {
                        let word = codes[(wbase + w) as usize];
                        let block = w / 8;
                        let col0 = block * 128 + (w % 8) * 4;
                        #[unroll]
                        for s in 0..4u32 {
                            let scale = scales[(sbase + (block * 128 + 32 * s) / group) as usize];
                            #[unroll]
                            for i in 0..tile {
                                part[i as usize] = 0.0;
                            }
                            #[unroll]
                            for b in 0..4u32 {
                                let c = col0 + 32 * s + b;
                                let trit = f32::cast_from((word >> (8 * b + 2 * s)) & 3) - 1.0;
                                if c < cols {
                                    #[unroll]
                                    for i in 0..tile {
                                        if t0 + i < tokens {
                                            part[i as usize] +=
                                                trit * x[((t0 + i) * cols + c) as usize];
                                        }
                                    }
                                }
                            }
                            #[unroll]
                            for i in 0..tile {
                                acc[i as usize] += scale * part[i as usize];
                            }
                        }
                        w += CUBE_DIM_X;
                    }
                }
            }
            #[unroll]
            for i in 0..tile {
                let y = row_sum(&mut partial, acc[i as usize]);
                if live && ux == 0 && t0 + i < tokens {
                    out[((t0 + i) * rows + j) as usize] = y;
                }
            }
            t0 += tile;
        }
    }

    #[cube(launch_unchecked)]
    pub(super) fn ternary_unpack(
        codes: &[u32],
        scales: &[f32],
        out: &mut [f32],
        rows: u32,
        cols: u32,
        words: u32,
        groups: u32,
        group: u32,
        planes: u32,
    ) {
        // One unit per (row, word): 16 columns of the dense row.
        let pos = ABSOLUTE_POS as u32;
        if pos >= rows * words {
            terminate!();
        }
        let row = pos / words;
        let w = pos % words;
        let block = w / 8;
        let col0 = block * 128 + (w % 8) * 4;
        #[unroll]
        for s in 0..4u32 {
            #[unroll]
            for b in 0..4u32 {
                let c = col0 + 32 * s + b;
                if c < cols {
                    let mut v = 0.0f32;
                    for k in 0..planes {
                        let word = codes[((k * rows + row) * words + w) as usize];
                        let code = (word >> (8 * b + 2 * s)) & 3;
                        let first = block * 128 + 32 * s;
                        let scale = scales[((k * rows + row) * groups + first / group) as usize];
                        v += scale * (f32::cast_from(code) - 1.0);
                    }
                    out[(row * cols + c) as usize] = v;
                }
            }
        }
    }
}

/// A packed ternary weight resident on a CubeCL device.
#[derive(Clone)]
pub struct GpuTernary {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    words: usize,
    groups: usize,
    group: usize,
    planes: usize,
    codes: Handle,
    scales: Handle,
    client: Client,
    device: CubeDevice,
}

impl std::fmt::Debug for GpuTernary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTernary")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("planes", &self.planes)
            .field("group", &self.group)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl GpuTernary {
    /// Upload `w` to the CubeCL device `device` (an error for other devices).
    pub fn upload(w: &PackedTernary, device: &Device) -> Result<Self, String> {
        // Kernel indices are u32: every column index of every plane must fit.
        if (w.planes * w.rows)
            .checked_mul(w.padded)
            .is_none_or(|n| n > u32::MAX as usize)
        {
            return Err(format!(
                "{}x{} ternary matrix ({} planes) is too large for 32-bit indices",
                w.rows, w.cols, w.planes
            ));
        }
        // The CubeCL client and device behind `device`, read off a one-element tensor.
        let probe = Tensor::<1>::zeros([1], device)
            .try_into_primitive::<CubeBackend>()
            .map_err(|e| format!("not a CubeCL device: {e:?}"))?;
        Ok(GpuTernary::on(w, probe.client, probe.device))
    }

    /// Upload `w` through `client`.
    fn on(w: &PackedTernary, client: Client, device: CubeDevice) -> Self {
        let codes: Vec<u32> = w
            .codes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        GpuTernary {
            rows: w.rows,
            cols: w.cols,
            words: w.padded / 16,
            groups: w.groups(),
            group: w.group,
            planes: w.planes,
            codes: client.create_from_slice(u32::as_bytes(&codes)),
            scales: client.create_from_slice(f32::as_bytes(&w.scales)),
            client,
            device,
        }
    }

    /// Bytes held on the device (codes and scales).
    pub fn bytes(&self) -> usize {
        self.planes * self.rows * (self.words * 4 + self.groups * 4)
    }

    /// The packed codes, `planes · rows · words` little-endian `u32` words.
    pub(crate) fn codes(&self) -> &Handle {
        &self.codes
    }

    /// The scales, `planes · rows · groups`.
    pub(crate) fn scales(&self) -> &Handle {
        &self.scales
    }

    /// The CubeCL client it lives on.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Words of codes held.
    pub(crate) fn code_words(&self) -> usize {
        self.planes * self.rows * self.words
    }

    /// Scales held.
    pub(crate) fn scale_count(&self) -> usize {
        self.planes * self.rows * self.groups
    }

    /// The packed matrix, read back from the device.
    pub fn download(&self) -> Result<PackedTernary, String> {
        let read = |h: &Handle| {
            self.client
                .read_one(h.clone())
                .map_err(|e| format!("reading a ternary matrix back: {e:?}"))
        };
        let codes = read(&self.codes)?;
        let scales = read(&self.scales)?;
        Ok(PackedTernary {
            rows: self.rows,
            cols: self.cols,
            padded: self.words * 16,
            planes: self.planes,
            group: self.group,
            codes: codes[..self.code_words() * 4].to_vec(),
            scales: f32::from_bytes(&scales)[..self.scale_count()].to_vec(),
        })
    }

    /// The rows of `parts` stacked in order on their device (products then equal the parts'
    /// side by side), or `None` when their columns, planes or groups differ. Read back and
    /// uploaded again, once, when a model is loaded.
    pub fn concat_rows(parts: &[&GpuTernary]) -> Option<GpuTernary> {
        let first = parts.first()?;
        let packed = parts
            .iter()
            .map(|p| p.download())
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let stacked = PackedTernary::concat_rows(&packed.iter().collect::<Vec<_>>())?;
        if (stacked.planes * stacked.rows)
            .checked_mul(stacked.padded)
            .is_none_or(|n| n > u32::MAX as usize)
        {
            return None;
        }
        Some(GpuTernary::on(
            &stacked,
            first.client.clone(),
            first.device.clone(),
        ))
    }

    pub(crate) fn dims(&self) -> [u32; 6] {
        [
            self.rows,
            self.cols,
            self.words,
            self.groups,
            self.group,
            self.planes,
        ]
        .map(|v| u32::try_from(v).expect("ternary matrix dimensions fit in u32"))
    }

    /// `y = x Wᵀ` for `x: [T, cols]` by the matrix-vector kernel; returns `[T, rows]`. With
    /// `act8`, each token is quantized to int8 inside the kernel (BitNet's absmax rule, as
    /// `act_quant` in the reference path) and the integer products are scaled back.
    pub fn matvec(&self, x: Tensor<2>, act8: bool) -> Tensor<2> {
        let [t, cols] = x.dims();
        assert_eq!(cols, self.cols, "input width");
        let x = into_contiguous(
            x.try_into_primitive::<CubeBackend>()
                .expect("input on the weight's CubeCL device"),
        );
        let out = self.empty([t, self.rows]);
        let [rows, cols, words, groups, group, planes] = self.dims();
        let grid_x = rows.min(GRID_X);
        let count = CubeCount::Static(grid_x, rows.div_ceil(grid_x), 1);
        // SAFETY: every buffer's declared length is its real length, and the kernel bounds each
        // index by the dimensions passed (codes: planes·rows·words, scales: planes·rows·groups,
        // x: t·cols, out: t·rows).
        unsafe {
            ternary_matvec::launch_unchecked(
                &self.client,
                count,
                CubeDim::new_1d(CUBE),
                BufferArg::from_raw_parts(x.handle.clone(), t * self.cols),
                BufferArg::from_raw_parts(self.codes.clone(), self.planes * self.rows * self.words),
                BufferArg::from_raw_parts(
                    self.scales.clone(),
                    self.planes * self.rows * self.groups,
                ),
                BufferArg::from_raw_parts(out.handle.clone(), t * self.rows),
                rows,
                cols,
                words,
                groups,
                group,
                planes,
                t as u32,
                CUBE,
                act8,
            );
        }
        Tensor::from_primitive::<CubeBackend>(out)
    }

    /// `y = x Wᵀ` for `x: [T, cols]` by the tiled kernel (prefill without a dense copy of the
    /// weight; `x` as given, no int8 rounding); returns `[T, rows]`.
    pub fn gemm(&self, x: Tensor<2>) -> Tensor<2> {
        let [t, cols] = x.dims();
        assert_eq!(cols, self.cols, "input width");
        let x = into_contiguous(
            x.try_into_primitive::<CubeBackend>()
                .expect("input on the weight's CubeCL device"),
        );
        let out = self.empty([t, self.rows]);
        let [rows, cols, words, groups, group, planes] = self.dims();
        let cubes = rows.div_ceil(GEMM_ROWS);
        let grid_x = cubes.min(GRID_X);
        // SAFETY: as in `matvec` (x: t·cols, out: t·rows; rows past the end compute nothing).
        unsafe {
            ternary_gemm::launch_unchecked(
                &self.client,
                CubeCount::Static(grid_x, cubes.div_ceil(grid_x), 1),
                CubeDim::new_2d(GEMM_UNITS, GEMM_ROWS),
                BufferArg::from_raw_parts(x.handle.clone(), t * self.cols),
                BufferArg::from_raw_parts(self.codes.clone(), self.code_words()),
                BufferArg::from_raw_parts(self.scales.clone(), self.scale_count()),
                BufferArg::from_raw_parts(out.handle.clone(), t * self.rows),
                rows,
                cols,
                words,
                groups,
                group,
                planes,
                t as u32,
                GEMM_UNITS * GEMM_ROWS,
                GEMM_TILE,
            );
        }
        Tensor::from_primitive::<CubeBackend>(out)
    }

    /// The dense `[rows, cols]` matrix (all planes summed), computed on the device.
    pub fn unpack(&self) -> Tensor<2> {
        let out = self.empty([self.rows, self.cols]);
        let [rows, cols, words, groups, group, planes] = self.dims();
        let units = self.rows * self.words;
        let dim = CubeDim::new_1d(256);
        let count = cubecl::calculate_cube_count_elemwise(&self.client, units, dim);
        // SAFETY: as in `matvec`; the kernel returns for positions past rows·words.
        unsafe {
            ternary_unpack::launch_unchecked(
                &self.client,
                count,
                dim,
                BufferArg::from_raw_parts(self.codes.clone(), self.planes * self.rows * self.words),
                BufferArg::from_raw_parts(
                    self.scales.clone(),
                    self.planes * self.rows * self.groups,
                ),
                BufferArg::from_raw_parts(out.handle.clone(), self.rows * self.cols),
                rows,
                cols,
                words,
                groups,
                group,
                planes,
            );
        }
        Tensor::from_primitive::<CubeBackend>(out)
    }

    fn empty(&self, shape: [usize; 2]) -> CubeTensor {
        empty_device_contiguous_dtype(
            self.client.clone(),
            self.device.clone(),
            burn::tensor::Shape::new(shape),
            burn::tensor::DType::F32,
        )
    }
}

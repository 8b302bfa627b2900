//! The launch-lean decode step on CubeCL devices (wgpu): one token through the whole model in a
//! number of kernel launches known when the model is built, with no per-token host uploads and
//! one device-to-host read.
//!
//! burn runs every op as its own dispatch, a few hundred per token, plus uploads of positions and
//! rotary tables; on an H100 that held a 3B and a 135M model to the same 14 tok/s. Here a layer of
//! the usual shape (stacked q/k/v, stacked gate/up) is eight launches:
//!
//! 1. RMSNorm of the residual, with the int8 scale of the normalized row (for `:a8` linears);
//! 2. the stacked q/k/v matrix-vector product;
//! 3. RoPE on q and k, appending k and v to the layer's cache at the token's position;
//! 4. attention of each query head over the cached positions (one cube per head, online
//!    softmax over tiles of positions in shared memory);
//! 5. the o projection, added to the residual;
//! 6. RMSNorm, with the int8 scale;
//! 7. the stacked gate/up product with SwiGLU (or relu²) applied as it is written;
//! 8. the down projection, added to the residual.
//!
//! Before the layers one launch copies the token's embedding row (the id is a launch argument);
//! after them the final norm, the head's product and, for greedy decoding, an argmax that leaves
//! the id on the device: `8 · layers + 4` launches and one 4-byte read per token. BitNet's
//! sub-norms add one norm launch each; linears with their own input norm (`Linear::PreNormed`)
//! or that cannot be stacked add a norm or a product each. [`FusedDecoder::launches`] is the
//! count by construction; the launch and read sites count what really ran ([`crate::Model::gpu_counters`]) and
//! `smolbit bench --json` prints both per token.
//!
//! The matrix-vector kernels read `gpu`'s packed 2-bit layout (per-group scales; int8
//! activations rounded in the kernel, or by the preceding norm when every reader of its output is
//! an int8 product) or a dense f32 matrix, 16 outputs a cube, with a comptime epilogue (write,
//! add to the residual, or gated activation of the rows `j` and `j + f`). Positions are launch arguments; the rotary tables for every position
//! are uploaded once, computed on the host by the same function as the CPU path. The keys and
//! values live in the burn path's cache tensors (`[K, capacity, D]` per layer), written in
//! place, so prefill (burn's GEMM) and fused decode steps share one cache.
//!
//! Prefill stays on burn's ops; every decode step of one token takes this path unless
//! [`crate::LoadOptions::burn_decode`] asks for burn's ops (the path it is tested against).

use std::sync::atomic::{AtomicU64, Ordering};

use burn::prelude::*;
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use cubecl::client::Client;
use cubecl::prelude::{BufferArg, CubeCount, CubeDim, CubeElement};
use cubecl::server::Handle;
use smolbit_weights::ModelConfig;
use smolbit_weights::config::HiddenAct;

use crate::gpu::GpuTernary;
use crate::layers::{Block, Fused, KvCache, Linear, Norm};

/// The matrix-vector kernels' cubes: `GEMV_UNITS` units on each of `GEMV_ROWS` outputs
/// (powers of two; 256 units, wgpu's default cap per cube). On lavapipe a cube costs much the
/// same whatever it does: one output a cube (64 units) made 200,000 cubes a token at 135M and
/// decoded `b158` at 1.0 tok/s; 16 x 16 at 2.9, 8 x 32 at 3.4, 32 x 8 at 2.2. On a GPU, 8
/// units of a row read 32 contiguous bytes a step (one memory sector).
const GEMV_UNITS: u32 = 8;
const GEMV_ROWS: u32 = 32;
/// Units of the norm and argmax kernels' single cube.
const NORM_CUBE: u32 = 256;
/// Attention: units per cube (one cube per query head) and positions per shared-memory tile.
const ATTN_CUBE: u32 = 64;
const ATTN_TILE: u32 = 256;
/// Largest head dimension the attention kernel's shared accumulator holds.
const MAX_HEAD_DIM: u32 = 256;
/// Cubes per grid row (wgpu caps each grid dimension at 65,535).
const GRID_X: u32 = 32_768;

mod kernels {
    use crate::gpu::kernels::{all_max, all_sum, row_sum, ternary_part};
    use cubecl::prelude::*;

    /// `x = table[id]` for one row of `hidden` values.
    #[cube(launch_unchecked)]
    pub(super) fn embed(table: &[f32], x: &mut [f32], id: u32, hidden: u32) {
        let c = ABSOLUTE_POS as u32;
        if c < hidden {
            x[c as usize] = table[(id * hidden + c) as usize];
        }
    }

    /// `out = x · rsqrt(mean(x²) + eps) · w` over `n` values (one cube); with `act8`, also the
    /// int8 scale of `out`, `127 / max(max|out|, 1e-5)`, into `scale[0]`, and with `quantize`
    /// `out` rounded to int8 at that scale (held as f32) instead of the floats.
    #[cube(launch_unchecked)]
    pub(super) fn rms_norm(
        x: &[f32],
        w: &[f32],
        out: &mut [f32],
        scale: &mut [f32],
        n: u32,
        eps: f32,
        #[comptime] cube: u32,
        #[comptime] act8: bool,
        #[comptime] quantize: bool,
    ) {
        let unit = UNIT_POS_X;
        let mut partial = Shared::<[f32]>::new_slice(cube as usize);
        let mut s = 0.0f32;
        let mut c = unit;
        while c < n {
            let v = x[c as usize];
            s += v * v;
            c += CUBE_DIM_X;
        }
        let var = all_sum(&mut partial, s) / f32::cast_from(n);
        let inv = 1.0 / (var + eps).sqrt();
        let mut m = 0.0f32;
        c = unit;
        while c < n {
            let v = x[c as usize] * inv * w[c as usize];
            out[c as usize] = v;
            m = m.max(v.abs());
            c += CUBE_DIM_X;
        }
        if act8 {
            let xs = (1.0 / all_max(&mut partial, m).max(1e-5)) * 127.0;
            if unit == 0 {
                scale[0] = xs;
            }
            if quantize {
                // The int8 values themselves, rounded as the products would round them.
                c = unit;
                while c < n {
                    out[c as usize] = (out[c as usize] * xs).round().clamp(-128.0, 127.0);
                    c += CUBE_DIM_X;
                }
            }
        }
    }

    /// Write `y` (or `ys`, the pair `(g, u)` for gated outputs) at output `j` by the epilogue:
    /// `out[offset + j] = y`, `out[offset + j] += y`, or `out[j] = act(g) · u`.
    #[cube]
    fn epilogue(
        out: &mut [f32],
        j: u32,
        offset: u32,
        y: f32,
        u: f32,
        #[comptime] add: bool,
        #[comptime] glu: bool,
        #[comptime] relu2: bool,
    ) {
        if glu {
            if relu2 {
                let r = y.max(0.0);
                out[j as usize] = r * r * u;
            } else {
                out[j as usize] = y / (1.0 + (-y).exp()) * u;
            }
        } else if add {
            out[(offset + j) as usize] += y;
        } else {
            out[(offset + j) as usize] = y;
        }
    }

    /// `y_j = Σ_c W[j, c] · x[c]` for packed ternary `W` (see `gpu` for the layout), then the
    /// epilogue. Each cube computes `CUBE_DIM_Y` outputs, `CUBE_DIM_X` units each (one launch
    /// needs few cubes: per-cube costs dominate on software drivers); with `glu` an output is
    /// rows `j` and `j + rows / 2` (gate and up). int8 activations: `act8` rounds `x` at the
    /// scale `xscale[0]` when `given` (computed by the norm before; with `prequant` the norm
    /// already wrote the rounded values), else at the scale the cube reduces itself.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemv_ternary(
        x: &[f32],
        xscale: &[f32],
        codes: &[u32],
        scales: &[f32],
        out: &mut [f32],
        rows: u32,
        cols: u32,
        words: u32,
        groups: u32,
        group: u32,
        planes: u32,
        offset: u32,
        #[comptime] units: u32,
        #[comptime] act8: bool,
        #[comptime] given: bool,
        #[comptime] prequant: bool,
        #[comptime] add: bool,
        #[comptime] glu: bool,
        #[comptime] relu2: bool,
    ) {
        let j = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * CUBE_DIM_Y + UNIT_POS_Y;
        let mut outputs = rows;
        if glu {
            outputs = rows / 2;
        }
        // Every unit takes part in the reductions; rows past the end compute nothing.
        let live = j < outputs;
        let mut partial = Shared::<[f32]>::new_slice(units as usize);
        let mut xs = 1.0f32;
        if act8 {
            if given {
                xs = xscale[0];
            } else {
                let mut m = 0.0f32;
                let mut c = UNIT_POS;
                while c < cols {
                    m = m.max(x[c as usize].abs());
                    c += CUBE_DIM;
                }
                xs = (1.0 / all_max(&mut partial, m).max(1e-5)) * 127.0;
            }
        }
        let mut a = 0.0f32;
        if live {
            a = ternary_part(
                x,
                0,
                codes,
                scales,
                j,
                rows,
                cols,
                words,
                groups,
                group,
                planes,
                xs,
                act8 && !prequant,
            );
        }
        let y = row_sum(&mut partial, a) / xs;
        let mut u = 0.0f32;
        if glu {
            let mut b = 0.0f32;
            if live {
                b = ternary_part(
                    x,
                    0,
                    codes,
                    scales,
                    j + outputs,
                    rows,
                    cols,
                    words,
                    groups,
                    group,
                    planes,
                    xs,
                    act8 && !prequant,
                );
            }
            u = row_sum(&mut partial, b) / xs;
        }
        if live && UNIT_POS_X == 0 {
            epilogue(out, j, offset, y, u, add, glu, relu2);
        }
    }

    /// [`gemv_ternary`] for a dense row-major f32 `W: [rows, cols]`.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemv_dense(
        x: &[f32],
        w: &[f32],
        out: &mut [f32],
        rows: u32,
        cols: u32,
        offset: u32,
        #[comptime] units: u32,
        #[comptime] add: bool,
        #[comptime] glu: bool,
        #[comptime] relu2: bool,
    ) {
        let j = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * CUBE_DIM_Y + UNIT_POS_Y;
        let mut outputs = rows;
        if glu {
            outputs = rows / 2;
        }
        let live = j < outputs;
        let mut partial = Shared::<[f32]>::new_slice(units as usize);
        let mut a = 0.0f32;
        if live {
            let mut c = UNIT_POS_X;
            while c < cols {
                a += w[(j * cols + c) as usize] * x[c as usize];
                c += CUBE_DIM_X;
            }
        }
        let y = row_sum(&mut partial, a);
        let mut u = 0.0f32;
        if glu {
            let mut b = 0.0f32;
            if live {
                let r = j + outputs;
                let mut c = UNIT_POS_X;
                while c < cols {
                    b += w[(r * cols + c) as usize] * x[c as usize];
                    c += CUBE_DIM_X;
                }
            }
            u = row_sum(&mut partial, b);
        }
        if live && UNIT_POS_X == 0 {
            epilogue(out, j, offset, y, u, add, glu, relu2);
        }
    }

    /// `out[i] = act(gu[i]) · gu[f + i]` (gate and up side by side).
    #[cube(launch_unchecked)]
    pub(super) fn glu(gu: &[f32], out: &mut [f32], f: u32, #[comptime] relu2: bool) {
        let i = ABSOLUTE_POS as u32;
        if i < f {
            let g = gu[i as usize];
            let u = gu[(f + i) as usize];
            if relu2 {
                let r = g.max(0.0);
                out[i as usize] = r * r * u;
            } else {
                out[i as usize] = g / (1.0 + (-g).exp()) * u;
            }
        }
    }

    /// RoPE (transformers' `rotate_half` form, tables `[positions, d / 2]`) on the q heads in
    /// place and on the k heads, which go with the v heads into the caches `[K, cap, d]` at
    /// `pos`. One unit per (head, pair of dimensions).
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rope_append(
        qkv: &mut [f32],
        cos: &[f32],
        sin: &[f32],
        kc: &mut [f32],
        vc: &mut [f32],
        nh: u32,
        nkv: u32,
        d: u32,
        pos: u32,
        cap: u32,
        #[comptime] rope: bool,
    ) {
        let half = d / 2;
        let i = ABSOLUTE_POS as u32;
        if i >= (nh + nkv) * half {
            terminate!();
        }
        let head = i / half;
        let e = i % half;
        let qw = nh * d;
        let mut base = head * d;
        if head >= nh {
            base = qw + (head - nh) * d;
        }
        let a = qkv[(base + e) as usize];
        let b = qkv[(base + e + half) as usize];
        let mut ra = a;
        let mut rb = b;
        if rope {
            let c = cos[(pos * half + e) as usize];
            let s = sin[(pos * half + e) as usize];
            ra = a * c + -b * s;
            rb = b * c + a * s;
        }
        if head < nh {
            qkv[(base + e) as usize] = ra;
            qkv[(base + e + half) as usize] = rb;
        } else {
            let kvh = head - nh;
            let dst = (kvh * cap + pos) * d;
            kc[(dst + e) as usize] = ra;
            kc[(dst + e + half) as usize] = rb;
            let vsrc = qw + nkv * d + kvh * d;
            vc[(dst + e) as usize] = qkv[(vsrc + e) as usize];
            vc[(dst + e + half) as usize] = qkv[(vsrc + e + half) as usize];
        }
    }

    /// Attention of query head `CUBE_POS_X` (at the front of `qkv`) over the first `len`
    /// cached positions of its key/value head, by tiles of `tile` positions with a running
    /// maximum and sum (the softmax rescaled as the maximum grows).
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend(
        qkv: &[f32],
        kc: &[f32],
        vc: &[f32],
        out: &mut [f32],
        nh: u32,
        nkv: u32,
        d: u32,
        len: u32,
        cap: u32,
        scale: f32,
        #[comptime] cube: u32,
        #[comptime] tile: u32,
        #[comptime] dmax: u32,
    ) {
        let h = CUBE_POS_X;
        let kvh = h / (nh / nkv);
        let unit = UNIT_POS_X;
        let mut partial = Shared::<[f32]>::new_slice(cube as usize);
        let mut sc = Shared::<[f32]>::new_slice(tile as usize);
        let mut acc = Shared::<[f32]>::new_slice(dmax as usize);
        let mut e = unit;
        while e < d {
            acc[e as usize] = 0.0;
            e += CUBE_DIM_X;
        }
        let mut m = f32::min_value();
        let mut l = 0.0f32;
        let mut start = 0u32;
        while start < len {
            let mut n = len - start;
            if n > tile {
                n = tile;
            }
            let mut j = unit;
            let mut tmax = f32::min_value();
            while j < n {
                let kb = (kvh * cap + start + j) * d;
                let mut s = 0.0f32;
                for i in 0..d {
                    s += qkv[(h * d + i) as usize] * kc[(kb + i) as usize];
                }
                s *= scale;
                sc[j as usize] = s;
                tmax = tmax.max(s);
                j += CUBE_DIM_X;
            }
            let new_m = all_max(&mut partial, tmax).max(m);
            let mut ts = 0.0f32;
            j = unit;
            while j < n {
                let p = (sc[j as usize] - new_m).exp();
                sc[j as usize] = p;
                ts += p;
                j += CUBE_DIM_X;
            }
            let corr = (m - new_m).exp();
            l = l * corr + all_sum(&mut partial, ts);
            e = unit;
            while e < d {
                let mut a = acc[e as usize] * corr;
                for jj in 0..n {
                    a += sc[jj as usize] * vc[((kvh * cap + start + jj) * d + e) as usize];
                }
                acc[e as usize] = a;
                e += CUBE_DIM_X;
            }
            m = new_m;
            sync_cube();
            start += tile;
        }
        e = unit;
        while e < d {
            out[(h * d + e) as usize] = acc[e as usize] / l;
            e += CUBE_DIM_X;
        }
    }

    /// `id[0]` = the index of the largest of `x[..n]` (the first on ties, as the host argmax).
    #[cube(launch_unchecked)]
    pub(super) fn argmax(x: &[f32], id: &mut [u32], n: u32, #[comptime] cube: u32) {
        let unit = UNIT_POS_X;
        let mut bv = Shared::<[f32]>::new_slice(cube as usize);
        let mut bi = Shared::<[u32]>::new_slice(cube as usize);
        let mut best = f32::min_value();
        let mut idx = n;
        let mut c = unit;
        while c < n {
            let v = x[c as usize];
            if idx == n || v > best {
                best = v;
                idx = c;
            }
            c += CUBE_DIM_X;
        }
        bv[unit as usize] = best;
        bi[unit as usize] = idx;
        sync_cube();
        let mut half = CUBE_DIM_X / 2;
        while half > 0 {
            if unit < half {
                let ov = bv[(unit + half) as usize];
                let oi = bi[(unit + half) as usize];
                let mv = bv[unit as usize];
                let mi = bi[unit as usize];
                if oi < n && (mi == n || ov > mv || (ov == mv && oi < mi)) {
                    bv[unit as usize] = ov;
                    bi[unit as usize] = oi;
                }
            }
            sync_cube();
            half /= 2;
        }
        if unit == 0 {
            id[0] = bi[0];
        }
    }
}

/// The scratch buffers of a step (their discriminants index `FusedDecoder::bufs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Buf {
    /// The residual stream `[hidden]`.
    X,
    /// A normalized input `[max(hidden, q, f)]`.
    N,
    /// A second normalized input (a linear's own norm), as `N`.
    N2,
    /// q, k, v side by side.
    Qkv,
    /// Attention output `[q]`.
    Att,
    /// Gate and up side by side `[2f]` (when they run as separate products).
    Gu,
    /// The gated activation `[f]`.
    Glu,
    /// Logits `[vocab]`.
    Logits,
}

/// How many `Buf`s there are.
const BUFS: usize = 8;

/// A linear's weight on the device.
// Built once per model, a few hundred of them; boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Weight {
    Ternary {
        w: GpuTernary,
        act8: bool,
    },
    /// Row-major f32 `[rows, cols]`.
    Dense {
        w: Handle,
        rows: usize,
        cols: usize,
    },
}

impl Weight {
    fn rows(&self) -> usize {
        match self {
            Weight::Ternary { w, .. } => w.rows,
            Weight::Dense { rows, .. } => *rows,
        }
    }
}

/// What a product does with its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Epilogue {
    /// Write at an offset of the destination.
    Write(usize),
    /// Add to the destination (the residual).
    Add,
    /// `act(rows j) · rows (j + f)`.
    Glu(HiddenAct),
}

/// One launch of the step.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Op {
    Norm {
        w: Handle,
        len: usize,
        eps: f32,
        src: Buf,
        dst: Buf,
        /// Also compute the int8 scale of the output.
        scale: bool,
        /// Write the int8 values instead of the floats (every reader is an int8 product).
        quantize: bool,
    },
    Gemv {
        w: Weight,
        src: Buf,
        dst: Buf,
        epi: Epilogue,
        /// The int8 scale of `src` was computed by the norm that wrote it.
        given: bool,
        /// That norm wrote the int8 values themselves.
        prequant: bool,
    },
    Glu {
        act: HiddenAct,
        f: usize,
    },
    /// RoPE and the cache append of the layer (with rotation or not: SmolLM3's no-RoPE
    /// layers).
    RopeAppend {
        rope: bool,
    },
    /// Attention over the layer's cache.
    Attend,
}

impl Op {
    /// The buffers it reads, and the one it writes (caches aside).
    fn buffers(&self) -> (Vec<Buf>, Option<Buf>) {
        match self {
            Op::Norm { src, dst, .. } => (vec![*src], Some(*dst)),
            Op::Gemv { src, dst, epi, .. } => {
                let mut reads = vec![*src];
                if *epi == Epilogue::Add {
                    reads.push(*dst);
                }
                (reads, Some(*dst))
            }
            Op::Glu { .. } => (vec![Buf::Gu], Some(Buf::Glu)),
            Op::RopeAppend { .. } => (vec![Buf::Qkv], Some(Buf::Qkv)),
            Op::Attend => (vec![Buf::Qkv], Some(Buf::Att)),
        }
    }
}

/// The fused decoder of a model: its plan of launches and its scratch buffers.
pub(crate) struct FusedDecoder {
    client: Client,
    device: Device,
    /// One step at a time: the scratch buffers are shared.
    lock: std::sync::Mutex<()>,
    /// Kernels launched and device-to-host reads made so far, counted at the launch and read
    /// sites.
    launches: AtomicU64,
    reads: AtomicU64,
    embed: Handle,
    hidden: usize,
    vocab: usize,
    layers: Vec<Vec<Op>>,
    /// Final norm and head.
    tail: Vec<Op>,
    cos: Handle,
    sin: Handle,
    /// Positions the rotary tables hold.
    positions: usize,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    /// The scratch buffers, indexed by `Buf`.
    bufs: [Handle; BUFS],
    scale: Handle,
    id: Handle,
}

impl std::fmt::Debug for FusedDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedDecoder")
            .field("layers", &self.layers.len())
            .field("launches", &self.launches(true))
            .finish_non_exhaustive()
    }
}

/// The CubeCL tensor of a burn tensor, contiguous (copied once if it is not).
fn cube_tensor(t: Tensor<2>) -> Option<CubeTensor> {
    let t = t.try_into_primitive::<CubeBackend>().ok()?;
    Some(if t.is_contiguous() && t.is_contiguous_buffer() {
        t
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    })
}

/// Planning a step from the model's blocks: `None` when a linear is of a kind the step does not
/// run (int8 fake-quantized dense linears of the reference path).
struct Planner {
    ops: Vec<Op>,
    /// The buffer whose int8 scale the last norm computed.
    scaled: Option<Buf>,
}

impl Planner {
    /// The ops, with norms whose every reader is an int8 product (with the norm's scale) writing
    /// the int8 values, so that the products do not round them again row by row.
    fn finish(mut self) -> Vec<Op> {
        let n = self.ops.len();
        for i in 0..n {
            let Op::Norm {
                dst, scale: true, ..
            } = self.ops[i]
            else {
                continue;
            };
            let mut readers = Vec::new();
            let mut ok = true;
            for j in i + 1..n {
                let (reads, writes) = self.ops[j].buffers();
                if reads.contains(&dst) {
                    match &self.ops[j] {
                        Op::Gemv {
                            w: Weight::Ternary { act8: true, .. },
                            given: true,
                            ..
                        } => readers.push(j),
                        _ => ok = false,
                    }
                }
                if writes == Some(dst) {
                    break;
                }
            }
            if !ok || readers.is_empty() {
                continue;
            }
            if let Op::Norm { quantize, .. } = &mut self.ops[i] {
                *quantize = true;
            }
            for j in readers {
                if let Op::Gemv { prequant, .. } = &mut self.ops[j] {
                    *prequant = true;
                }
            }
        }
        self.ops
    }

    fn norm(&mut self, n: &Norm, src: Buf, dst: Buf) {
        let (w, eps) = n.device_weight();
        let len = w.dims()[0];
        let w = cube_tensor(w.unsqueeze::<2>()).map(|t| t.handle);
        self.ops.push(Op::Norm {
            w: w.expect("norm weight on the CubeCL device"),
            len,
            eps: eps as f32,
            src,
            dst,
            scale: true,
            quantize: false,
        });
        self.scaled = Some(dst);
    }

    fn weight(l: &Linear) -> Option<Weight> {
        match l {
            Linear::Gpu { w, act8 } => Some(Weight::Ternary {
                w: w.clone(),
                act8: *act8,
            }),
            Linear::Dense {
                w,
                act8: false,
                act_group: 0,
            } => {
                // Stored as a transposed view of `[out, in]`.
                let t = cube_tensor(w.clone().transpose())?;
                let [cols, rows] = w.dims();
                Some(Weight::Dense {
                    w: t.handle,
                    rows,
                    cols,
                })
            }
            _ => None,
        }
    }

    /// `dst (epi)= l(src)`, through the linear's own norm first if it has one.
    fn linear(&mut self, l: &Linear, src: Buf, dst: Buf, epi: Epilogue) -> Option<()> {
        let (src, inner) = match l {
            Linear::PreNormed { norm, inner } => {
                self.norm(norm, src, Buf::N2);
                (Buf::N2, &**inner)
            }
            l => (src, l),
        };
        let w = Planner::weight(inner)?;
        self.ops.push(Op::Gemv {
            w,
            src,
            dst,
            epi,
            given: self.scaled == Some(src),
            prequant: false,
        });
        Some(())
    }

    fn block(&mut self, b: &Block) -> Option<()> {
        self.norm(&b.attn_norm, Buf::X, Buf::N);
        match &b.qkv {
            Fused::Stacked(l, _) => self.linear(l, Buf::N, Buf::Qkv, Epilogue::Write(0))?,
            Fused::Separate(parts) => {
                let mut off = 0;
                for l in parts {
                    self.linear(l, Buf::N, Buf::Qkv, Epilogue::Write(off))?;
                    off += l.rows();
                }
            }
        }
        self.ops.push(Op::RopeAppend { rope: b.use_rope });
        self.ops.push(Op::Attend);
        let mut src = Buf::Att;
        if let Some(n) = &b.attn_sub_norm {
            self.norm(n, Buf::Att, Buf::N);
            src = Buf::N;
        }
        self.linear(&b.wo, src, Buf::X, Epilogue::Add)?;
        self.norm(&b.mlp_norm, Buf::X, Buf::N);
        match &b.gate_up {
            Fused::Stacked(l, outs) if outs.len() == 2 && outs[0] == outs[1] => {
                self.linear(l, Buf::N, Buf::Glu, Epilogue::Glu(b.act))?;
            }
            Fused::Stacked(..) => return None,
            Fused::Separate(parts) => {
                let [gate, up] = &parts[..] else { return None };
                self.linear(gate, Buf::N, Buf::Gu, Epilogue::Write(0))?;
                self.linear(up, Buf::N, Buf::Gu, Epilogue::Write(gate.rows()))?;
                self.ops.push(Op::Glu {
                    act: b.act,
                    f: gate.rows(),
                });
                self.scaled = None;
            }
        }
        let mut src = Buf::Glu;
        if let Some(n) = &b.ffn_sub_norm {
            self.norm(n, Buf::Glu, Buf::N);
            src = Buf::N;
        }
        self.linear(&b.down, src, Buf::X, Epilogue::Add)?;
        Some(())
    }
}

impl FusedDecoder {
    /// The step for a model on a CubeCL device, or `None` when one of its linears is of a kind
    /// the step does not run (then decoding stays on burn's ops).
    pub(crate) fn new(
        c: &ModelConfig,
        embed: &Tensor<2>,
        head: &Tensor<2>,
        norm: &Norm,
        blocks: &[Block],
        device: &Device,
    ) -> Option<Self> {
        if c.head_dim > MAX_HEAD_DIM as usize
            || c.head_dim % 2 == 1
            || c.num_kv_heads == 0
            || !c.num_heads.is_multiple_of(c.num_kv_heads)
        {
            return None;
        }
        let emb = cube_tensor(embed.clone())?;
        let client = emb.client.clone();
        let mut layers = Vec::with_capacity(blocks.len());
        for b in blocks {
            let mut p = Planner {
                ops: Vec::new(),
                scaled: None,
            };
            p.block(b)?;
            layers.push(p.finish());
        }
        let mut p = Planner {
            ops: Vec::new(),
            scaled: None,
        };
        p.norm(norm, Buf::X, Buf::N);
        // The head is `[hidden, vocab]`: its transpose is the row-major `[vocab, hidden]`.
        let head = Linear::Dense {
            w: head.clone(),
            act8: false,
            act_group: 0,
        };
        p.linear(&head, Buf::N, Buf::Logits, Epilogue::Write(0))?;
        // The head's norm needs no int8 scale.
        if let Some(Op::Norm { scale, .. }) = p.ops.first_mut() {
            *scale = false;
        }
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let wide = h.max(q).max(f);
        // Elements of each buffer, in `Buf`'s order.
        let sizes: [usize; BUFS] = [h, wide, wide, q + 2 * kv, q, 2 * f, f, c.vocab_size];
        // Rotary tables for every position, as the CPU path computes them (one half of each
        // row: the two halves are equal).
        let positions = c.max_position_embeddings;
        let half = c.head_dim / 2;
        let (cos, sin) = crate::host::rope_tables(c, 0, positions);
        let halves = |t: Vec<f32>| -> Vec<f32> {
            t.chunks_exact(c.head_dim)
                .flat_map(|r| r[..half].to_vec())
                .collect()
        };
        let (cos, sin) = (halves(cos), halves(sin));
        // Kernel indices are u32.
        let largest = [c.vocab_size * h, positions * half, positions * kv];
        if largest.iter().any(|&n| n > u32::MAX as usize) {
            return None;
        }
        Some(FusedDecoder {
            bufs: sizes.map(|n| client.empty(n * 4)),
            scale: client.create_from_slice(f32::as_bytes(&[1.0])),
            id: client.create_from_slice(u32::as_bytes(&[0])),
            cos: client.create_from_slice(f32::as_bytes(&cos)),
            sin: client.create_from_slice(f32::as_bytes(&sin)),
            positions,
            embed: emb.handle,
            hidden: h,
            vocab: c.vocab_size,
            layers,
            tail: p.ops,
            n_heads: c.num_heads,
            n_kv: c.num_kv_heads,
            head_dim: c.head_dim,
            client,
            device: device.clone(),
            lock: std::sync::Mutex::new(()),
            launches: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        })
    }

    /// Launches per decoded token by construction: the embedding row, every layer's ops, the
    /// final norm and head, and the argmax when `greedy`.
    pub(crate) fn launches(&self, greedy: bool) -> usize {
        1 + self.layers.iter().map(Vec::len).sum::<usize>() + self.tail.len() + usize::from(greedy)
    }

    /// Kernels launched and device-to-host reads made so far.
    pub(crate) fn counters(&self) -> (u64, u64) {
        (
            self.launches.load(Ordering::Relaxed),
            self.reads.load(Ordering::Relaxed),
        )
    }

    fn launched(&self) {
        self.launches.fetch_add(1, Ordering::Relaxed);
    }

    fn buf(&self, b: Buf) -> &Handle {
        &self.bufs[b as usize]
    }

    fn len(&self, b: Buf) -> usize {
        self.buf(b).size() as usize / 4
    }

    fn arg(&self, b: Buf) -> BufferArg {
        // SAFETY: the buffer's real length.
        unsafe { BufferArg::from_raw_parts(self.buf(b).clone(), self.len(b)) }
    }

    /// Run token `id` at the cache's next position through every layer and the head, leaving
    /// the logits in `Buf::Logits`; then, with `greedy`, the argmax in `self.id`.
    fn run(&self, id: u32, cache: &mut KvCache, greedy: bool) {
        let pos = cache.len();
        assert!(pos < self.positions, "position within the rotary tables");
        let (nkv, d) = (self.n_kv, self.head_dim);
        let device = &self.device;
        let kv: Vec<(Handle, Handle, usize)> = (0..self.layers.len())
            .map(|i| {
                let (k, v) = cache.ensure(i, nkv, d, pos + 1, device);
                let (k, v) = (cube3(k), cube3(v));
                let cap = k.meta.shape()[1];
                (k.handle, v.handle, cap)
            })
            .collect();
        let h = self.hidden as u32;
        // SAFETY (every launch below): each buffer argument is passed with its real length,
        // and the kernels bound every index by the dimensions passed with it (the embedding
        // `vocab · hidden`, products `rows · cols` or packed `planes · rows · words`, caches
        // `K · cap · D` with `pos < cap`, rotary tables `positions · D/2` with
        // `pos < positions`).
        unsafe {
            kernels::embed::launch_unchecked(
                &self.client,
                cubecl::calculate_cube_count_elemwise(
                    &self.client,
                    self.hidden,
                    CubeDim::new_1d(256),
                ),
                CubeDim::new_1d(256),
                BufferArg::from_raw_parts(self.embed.clone(), self.vocab * self.hidden),
                self.arg(Buf::X),
                id,
                h,
            );
        }
        self.launched();
        for (i, ops) in self.layers.iter().enumerate() {
            for op in ops {
                self.launch(op, pos, &kv[i]);
            }
        }
        for op in &self.tail {
            self.launch(op, pos, &kv[0]);
        }
        if greedy {
            unsafe {
                kernels::argmax::launch_unchecked(
                    &self.client,
                    CubeCount::Static(1, 1, 1),
                    CubeDim::new_1d(NORM_CUBE),
                    self.arg(Buf::Logits),
                    BufferArg::from_raw_parts(self.id.clone(), 1),
                    self.vocab as u32,
                    NORM_CUBE,
                );
            }
            self.launched();
        }
        cache.advance(1);
    }

    /// The logits of token `id` after the cache (one read of `[vocab]`).
    pub(crate) fn logits(&self, id: u32, cache: &mut KvCache) -> Vec<f32> {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.run(id, cache, false);
        self.reads.fetch_add(1, Ordering::Relaxed);
        let bytes = self
            .client
            .read_one(self.buf(Buf::Logits).clone())
            .expect("reading the logits back from the device");
        f32::from_bytes(&bytes).to_vec()
    }

    /// The greedy next token after `id` (one read of 4 bytes).
    pub(crate) fn argmax(&self, id: u32, cache: &mut KvCache) -> u32 {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.run(id, cache, true);
        self.reads.fetch_add(1, Ordering::Relaxed);
        let bytes = self
            .client
            .read_one(self.id.clone())
            .expect("reading the token id back from the device");
        u32::from_bytes(&bytes)[0]
    }

    fn launch(&self, op: &Op, pos: usize, kv: &(Handle, Handle, usize)) {
        let client = &self.client;
        match op {
            Op::Norm {
                w,
                len,
                eps,
                src,
                dst,
                scale,
                quantize,
            } => unsafe {
                kernels::rms_norm::launch_unchecked(
                    client,
                    CubeCount::Static(1, 1, 1),
                    CubeDim::new_1d(NORM_CUBE),
                    self.arg(*src),
                    BufferArg::from_raw_parts(w.clone(), *len),
                    self.arg(*dst),
                    BufferArg::from_raw_parts(self.scale.clone(), 1),
                    *len as u32,
                    *eps,
                    NORM_CUBE,
                    *scale,
                    *quantize,
                );
            },
            Op::Gemv {
                w,
                src,
                dst,
                epi,
                given,
                prequant,
            } => {
                let rows = w.rows();
                let (offset, add, glu, relu2) = match *epi {
                    Epilogue::Write(o) => (o, false, false, false),
                    Epilogue::Add => (0, true, false, false),
                    Epilogue::Glu(act) => (0, false, true, act == HiddenAct::Relu2),
                };
                let outputs = if glu { rows / 2 } else { rows } as u32;
                let cubes = outputs.div_ceil(GEMV_ROWS);
                let grid_x = cubes.min(GRID_X);
                let count = CubeCount::Static(grid_x, cubes.div_ceil(grid_x), 1);
                let dim = CubeDim::new_2d(GEMV_UNITS, GEMV_ROWS);
                match w {
                    Weight::Ternary { w, act8 } => unsafe {
                        let [rows, cols, words, groups, group, planes] = w.dims();
                        kernels::gemv_ternary::launch_unchecked(
                            client,
                            count,
                            dim,
                            self.arg(*src),
                            BufferArg::from_raw_parts(self.scale.clone(), 1),
                            BufferArg::from_raw_parts(w.codes().clone(), w.code_words()),
                            BufferArg::from_raw_parts(w.scales().clone(), w.scale_count()),
                            self.arg(*dst),
                            rows,
                            cols,
                            words,
                            groups,
                            group,
                            planes,
                            offset as u32,
                            GEMV_UNITS * GEMV_ROWS,
                            *act8,
                            *given,
                            *prequant,
                            add,
                            glu,
                            relu2,
                        );
                    },
                    Weight::Dense { w, rows, cols } => unsafe {
                        kernels::gemv_dense::launch_unchecked(
                            client,
                            count,
                            dim,
                            self.arg(*src),
                            BufferArg::from_raw_parts(w.clone(), rows * cols),
                            self.arg(*dst),
                            *rows as u32,
                            *cols as u32,
                            offset as u32,
                            GEMV_UNITS * GEMV_ROWS,
                            add,
                            glu,
                            relu2,
                        );
                    },
                }
            }
            Op::Glu { act, f } => unsafe {
                let dim = CubeDim::new_1d(256);
                kernels::glu::launch_unchecked(
                    client,
                    cubecl::calculate_cube_count_elemwise(client, *f, dim),
                    dim,
                    self.arg(Buf::Gu),
                    self.arg(Buf::Glu),
                    *f as u32,
                    *act == HiddenAct::Relu2,
                );
            },
            Op::RopeAppend { rope } => unsafe {
                let (k, v, cap) = kv;
                let units = (self.n_heads + self.n_kv) * self.head_dim / 2;
                let dim = CubeDim::new_1d(64);
                let cache_len = self.n_kv * cap * self.head_dim;
                kernels::rope_append::launch_unchecked(
                    client,
                    cubecl::calculate_cube_count_elemwise(client, units, dim),
                    dim,
                    self.arg(Buf::Qkv),
                    BufferArg::from_raw_parts(self.cos.clone(), self.positions * self.head_dim / 2),
                    BufferArg::from_raw_parts(self.sin.clone(), self.positions * self.head_dim / 2),
                    BufferArg::from_raw_parts(k.clone(), cache_len),
                    BufferArg::from_raw_parts(v.clone(), cache_len),
                    self.n_heads as u32,
                    self.n_kv as u32,
                    self.head_dim as u32,
                    pos as u32,
                    *cap as u32,
                    *rope,
                );
            },
            Op::Attend => unsafe {
                let (k, v, cap) = kv;
                let cache_len = self.n_kv * cap * self.head_dim;
                kernels::attend::launch_unchecked(
                    client,
                    CubeCount::Static(self.n_heads as u32, 1, 1),
                    CubeDim::new_1d(ATTN_CUBE),
                    self.arg(Buf::Qkv),
                    BufferArg::from_raw_parts(k.clone(), cache_len),
                    BufferArg::from_raw_parts(v.clone(), cache_len),
                    self.arg(Buf::Att),
                    self.n_heads as u32,
                    self.n_kv as u32,
                    self.head_dim as u32,
                    pos as u32 + 1,
                    *cap as u32,
                    (1.0 / (self.head_dim as f64).sqrt()) as f32,
                    ATTN_CUBE,
                    ATTN_TILE,
                    MAX_HEAD_DIM,
                );
            },
        }
        self.launched();
    }
}

/// `y = W x` for one token by the step's ternary matrix-vector kernel alone (`act8`: the int8
/// rounding in the kernel), for the tests that hold it to the CPU scalar reference.
#[doc(hidden)]
pub fn ternary_gemv(w: &GpuTernary, x: &[f32], act8: bool) -> Vec<f32> {
    assert_eq!(x.len(), w.cols, "input width");
    let client = w.client();
    let xh = client.create_from_slice(f32::as_bytes(x));
    let out = client.empty(w.rows * 4);
    let [rows, cols, words, groups, group, planes] = w.dims();
    let cubes = rows.div_ceil(GEMV_ROWS);
    let grid_x = cubes.min(GRID_X);
    // SAFETY: buffers with their real lengths; the kernel bounds every index by the dimensions.
    unsafe {
        kernels::gemv_ternary::launch_unchecked(
            client,
            CubeCount::Static(grid_x, cubes.div_ceil(grid_x), 1),
            CubeDim::new_2d(GEMV_UNITS, GEMV_ROWS),
            BufferArg::from_raw_parts(xh.clone(), x.len()),
            BufferArg::from_raw_parts(xh, 1),
            BufferArg::from_raw_parts(w.codes().clone(), w.code_words()),
            BufferArg::from_raw_parts(w.scales().clone(), w.scale_count()),
            BufferArg::from_raw_parts(out.clone(), w.rows),
            rows,
            cols,
            words,
            groups,
            group,
            planes,
            0,
            GEMV_UNITS * GEMV_ROWS,
            act8,
            false,
            false,
            false,
            false,
            false,
        );
    }
    let bytes = client.read_one(out).expect("reading the product back");
    f32::from_bytes(&bytes).to_vec()
}

/// The CubeCL tensor of a cache buffer (contiguous by construction: allocated by `zeros` and
/// written in place).
fn cube3(t: Tensor<3>) -> CubeTensor {
    let t = t
        .try_into_primitive::<CubeBackend>()
        .expect("the KV cache on the CubeCL device");
    assert!(
        t.is_contiguous() && t.is_contiguous_buffer(),
        "KV cache buffers are contiguous"
    );
    t
}

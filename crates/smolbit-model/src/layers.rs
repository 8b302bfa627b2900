//! Decoder layers. Shapes are for one sequence (no batch dimension): `T` new positions,
//! `S` = past + `T` cached positions, `H` query heads, `K` key/value heads, `D` head dim.

use burn::prelude::*;
use burn::tensor::activation::{relu, silu, softmax};
use smolbit_weights::ModelConfig;
use smolbit_weights::config::HiddenAct;
use smolbit_weights::mapping::{LayerRole, Role, hf_name};

use crate::ModelError;

/// Per-layer cached keys and values: buffers `[K, capacity, D]` each, of which the first `len`
/// positions are filled. New positions are written in place (burn's CPU backend assigns into a
/// uniquely owned tensor without copying); the capacity doubles when it runs out, so a decoded
/// token copies only its own keys and values, not the whole cache.
///
/// The host path (`Block::forward_host`) keeps its own per-layer keys and values in host memory
/// instead, `[positions, K * D]` each, appended to, in f32 or f16 ([`crate::KvStorage`]); a
/// cache serves one path only.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<3>, Tensor<3>)>>,
    host: Vec<HostKv>,
    len: usize,
}

/// One layer's keys and values on the host path.
#[derive(Debug)]
pub(crate) enum HostKv {
    F32(Vec<f32>, Vec<f32>),
    F16(Vec<half::f16>, Vec<half::f16>),
}

impl KvCache {
    pub(crate) fn new(n_layers: usize, storage: crate::KvStorage) -> Self {
        KvCache {
            layers: (0..n_layers).map(|_| None).collect(),
            host: (0..n_layers)
                .map(|_| match storage {
                    crate::KvStorage::F32 => HostKv::F32(Vec::new(), Vec::new()),
                    crate::KvStorage::F16 => HostKv::F16(Vec::new(), Vec::new()),
                })
                .collect(),
            len: 0,
        }
    }

    pub(crate) fn host_mut(&mut self, i: usize) -> &mut HostKv {
        &mut self.host[i]
    }

    /// Bytes held by the host path's keys and values (the burn path's buffers are not counted).
    pub fn host_bytes(&self) -> usize {
        self.host
            .iter()
            .map(|kv| match kv {
                HostKv::F32(k, v) => (k.len() + v.len()) * 4,
                HostKv::F16(k, v) => (k.len() + v.len()) * 2,
            })
            .sum()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn layer_mut(&mut self, i: usize) -> &mut Option<(Tensor<3>, Tensor<3>)> {
        &mut self.layers[i]
    }

    /// Layer `i`'s key and value buffers with room for `s` positions (see [`grown`]), left in
    /// the cache; the returned handles share their buffers (the fused GPU step writes into
    /// them).
    #[cfg(feature = "wgpu")]
    pub(crate) fn ensure(
        &mut self,
        i: usize,
        nkv: usize,
        d: usize,
        s: usize,
        device: &Device,
    ) -> (Tensor<3>, Tensor<3>) {
        let past = self.len;
        let slot = &mut self.layers[i];
        let (k, v) = grown(slot.take(), nkv, d, past, s, device);
        *slot = Some((k.clone(), v.clone()));
        (k, v)
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// A layer's key and value buffers `[K, capacity, D]` with room for `s` positions: `old` when it
/// has it, else new ones of the next power of two (at least 64, and double the old capacity),
/// holding `old`'s first `past` positions.
fn grown(
    old: Option<(Tensor<3>, Tensor<3>)>,
    nkv: usize,
    d: usize,
    past: usize,
    s: usize,
    device: &Device,
) -> (Tensor<3>, Tensor<3>) {
    match old {
        Some((kb, vb)) if kb.dims()[1] >= s => (kb, vb),
        old => {
            let cap = s.next_power_of_two().max(64);
            let (mut kb, mut vb) = (
                Tensor::<3>::zeros([nkv, cap, d], device),
                Tensor::<3>::zeros([nkv, cap, d], device),
            );
            if let Some((pk, pv)) = old
                && past > 0
            {
                kb = kb.slice_assign([0..nkv, 0..past, 0..d], pk.narrow(1, 0, past));
                vb = vb.slice_assign([0..nkv, 0..past, 0..d], pv.narrow(1, 0, past));
            }
            (kb, vb)
        }
    }
}

/// One sequence's part of a host-path step ([`Block::forward_host`]): `t` consecutive rows of
/// the step's input, after `past` cached positions, with its rotary tables (positions
/// `past .. past + t`) and its cache of the layer.
pub(crate) struct HostSeq<'a> {
    pub(crate) t: usize,
    pub(crate) past: usize,
    pub(crate) rope: &'a (Vec<f32>, Vec<f32>),
    pub(crate) cache: &'a mut HostKv,
}

/// Append a step's keys and values (`[t, K * D]`, after RoPE) to a layer's host cache, stored as
/// `E`, then attend to everything cached.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cache_and_attend<E: smolbit_ternary::attention::KvElement>(
    keys: &mut Vec<E>,
    values: &mut Vec<E>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    past: usize,
    heads: smolbit_ternary::attention::Heads,
) -> Vec<f32> {
    assert_eq!(
        keys.len(),
        past * heads.n_kv * heads.d,
        "host KV cache out of step"
    );
    E::extend_from_f32(keys, k);
    E::extend_from_f32(values, v);
    smolbit_ternary::attention::attention(q, keys, values, t, past, heads)
}

/// Tokens from which float-activation ternary layers use a transient dense GEMM.
const DENSE_PREFILL: usize = 16;

/// Tokens from which float tables (f32/f16/bf16 linears) use a transient f32 copy and burn's
/// GEMM instead of their own tiled kernels. At 128 prompt tokens on the 135M model the GEMM
/// ran at 305 (f32) and 253 (f16) tokens/s against 176 and 196 for the tiles, but the copy costs
/// about 0.09 s a prompt in f16, so below about 48 tokens the tiles are faster
/// (`smolbit --threads 1 bench --prompt-tokens 128`, measured beside a distillation run).
const TABLE_GEMM: usize = 48;

/// A linear layer's weight.
// A burn tensor is ~580 bytes with the wgpu backend compiled in; a model holds seven linears a
// layer, built once and never moved on the hot path, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Linear {
    /// Dense `[in, out]` (a transposed view of HF's `[out, in]`): `y = x.matmul(w)`; with
    /// `act8`, the input is int8 fake-quantized first (the reference path of W1.58A8).
    Dense {
        /// The weight.
        w: Tensor<2>,
        /// Fake-quantize inputs to int8.
        act8: bool,
        /// With `act8`: one scale per group of this many columns (0: one per token).
        act_group: usize,
    },
    /// Packed ternary weights run by `smolbit_ternary::kernels` (CPU): the input goes to the
    /// host, through the kernel, and back as a tensor.
    Ternary {
        /// The packed weight.
        w: smolbit_ternary::kernels::PackedTernary,
        /// int8 activations (W1.58A8) or float.
        act8: bool,
    },
    /// A dense linear on the host kernels (CPU): f32, binary16 or bfloat16 weights against
    /// float activations, or int8/int4 weights against int8 activations.
    Table(HostTable),
    /// Packed ternary weights on a CubeCL device (wgpu), run by the kernels in `gpu`.
    #[cfg(feature = "wgpu")]
    Gpu {
        /// The packed weight, resident on the device.
        w: crate::gpu::GpuTernary,
        /// int8 activations (W1.58A8) or float.
        act8: bool,
    },
    /// A linear whose input first goes through its own RMSNorm (transformers' BitNet
    /// `use_rms_norm`); never stacked with others, since each normalizes differently.
    PreNormed {
        /// The norm.
        norm: Box<Norm>,
        /// The linear.
        inner: Box<Linear>,
    },
}

/// The weights of a dense linear on the host kernels (`smolbit_ternary::kernels`).
#[derive(Debug)]
pub enum HostTable {
    /// f32 (an f32 checkpoint's weights as stored).
    F32(smolbit_ternary::kernels::F32Matrix),
    /// binary16.
    F16(smolbit_ternary::kernels::F16Matrix),
    /// bfloat16.
    Bf16(smolbit_ternary::kernels::Bf16Matrix),
    /// int8, a binary16 step per 32 columns (as llama.cpp's Q8_0), int8 activations.
    Q8(smolbit_ternary::kernels::Q8BlockMatrix),
    /// 4-bit, a binary16 step per 32 columns, int8 activations.
    Q4(smolbit_ternary::kernels::Q4Matrix),
}

impl HostTable {
    /// `w: [rows, cols]` (HF's `[out, in]`) stored as `kind`.
    pub fn new(kind: crate::LinearStorage, w: &[f32], rows: usize, cols: usize) -> Self {
        use crate::LinearStorage as S;
        use smolbit_ternary::kernels::{
            Bf16Matrix, F16Matrix, F32Matrix, Q4Matrix, Q8BlockMatrix, QuantizedTable,
        };
        match kind {
            S::F32 => HostTable::F32(F32Matrix::quantize(w, rows, cols)),
            S::F16 => HostTable::F16(F16Matrix::quantize(w, rows, cols)),
            S::Bf16 => HostTable::Bf16(Bf16Matrix::quantize(w, rows, cols)),
            S::Q8 => HostTable::Q8(Q8BlockMatrix::quantize(w, rows, cols)),
            S::Q4 => HostTable::Q4(Q4Matrix::quantize(w, rows, cols)),
        }
    }

    /// A blocked checkpoint's table as read (`smolbit quantize --scheme q8|q4`).
    pub fn from_blocked(t: smolbit_weights::blocked::BlockedTable) -> Self {
        use smolbit_weights::blocked::BlockedTable as B;
        match t {
            B::Q8(m) => HostTable::Q8(m),
            B::Q4(m) => HostTable::Q4(m),
        }
    }

    fn table(&self) -> &dyn smolbit_ternary::kernels::QuantizedTable {
        match self {
            HostTable::F32(m) => m,
            HostTable::F16(m) => m,
            HostTable::Bf16(m) => m,
            HostTable::Q8(m) => m,
            HostTable::Q4(m) => m,
        }
    }

    /// How it is stored.
    pub fn storage(&self) -> crate::LinearStorage {
        use crate::LinearStorage as S;
        match self {
            HostTable::F32(_) => S::F32,
            HostTable::F16(_) => S::F16,
            HostTable::Bf16(_) => S::Bf16,
            HostTable::Q8(_) => S::Q8,
            HostTable::Q4(_) => S::Q4,
        }
    }

    /// The rows of `parts` stacked in order, when they are stored alike with the same columns
    /// (products then equal the parts' side by side: rows are independent in every format).
    fn concat(parts: &[&HostTable]) -> Option<HostTable> {
        use smolbit_ternary::kernels::QuantizedTable;
        fn stack<T: QuantizedTable + Clone>(parts: &[Option<&T>]) -> Option<T> {
            let first = (*parts.first()?)?;
            let mut out = first.clone();
            for p in &parts[1..] {
                let p = (*p)?;
                if p.cols() != first.cols() {
                    return None;
                }
                out.append(p.clone());
            }
            Some(out)
        }
        macro_rules! by {
            ($v:ident) => {
                stack(
                    &parts
                        .iter()
                        .map(|p| match p {
                            HostTable::$v(m) => Some(m),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                )
                .map(HostTable::$v)
            };
        }
        match parts.first()? {
            HostTable::F32(_) => by!(F32),
            HostTable::F16(_) => by!(F16),
            HostTable::Bf16(_) => by!(Bf16),
            HostTable::Q8(_) => by!(Q8),
            HostTable::Q4(_) => by!(Q4),
        }
    }

    /// The `[rows, cols]` f32 values it stands for.
    pub(crate) fn dequantize(&self) -> Vec<f32> {
        self.table().dequantize()
    }

    /// Float activations (f32, f16, bf16): many tokens go through burn's GEMM instead.
    fn float_activations(&self) -> bool {
        matches!(
            self,
            HostTable::F32(_) | HostTable::F16(_) | HostTable::Bf16(_)
        )
    }
}

/// Weights run by the host kernels, and how.
#[derive(Clone, Copy)]
enum HostWeights<'a> {
    /// Packed ternary, with int8 activations or not.
    Packed(&'a smolbit_ternary::kernels::PackedTernary, bool),
    /// A dense table.
    Table(&'a dyn smolbit_ternary::kernels::QuantizedTable),
}

impl HostWeights<'_> {
    fn rows(self) -> usize {
        match self {
            HostWeights::Packed(w, _) => w.rows,
            HostWeights::Table(w) => w.rows(),
        }
    }

    /// The product on host rows `x: [T, in]`: `[T, out]` row-major.
    fn product(self, x: &[f32], t: usize) -> Vec<f32> {
        match self {
            HostWeights::Packed(w, true) => w.matmul_i8(x, t),
            HostWeights::Packed(w, false) => w.matmul_f32(x, t),
            HostWeights::Table(w) => w.matmul(x, t),
        }
    }
}

impl Linear {
    /// The weights when `tokens` tokens run through the host kernels: packed ternary and
    /// dense tables on the CPU, except float activations from [`DENSE_PREFILL`] (ternary) or
    /// [`TABLE_GEMM`] (tables) tokens on, which take burn's GEMM on a transient dense copy.
    fn host_kernels(&self, tokens: usize) -> Option<HostWeights<'_>> {
        match self {
            Linear::Ternary { w, act8 } if *act8 || tokens < DENSE_PREFILL => {
                Some(HostWeights::Packed(w, *act8))
            }
            Linear::Table(w) if !w.float_activations() || tokens < TABLE_GEMM => {
                Some(HostWeights::Table(w.table()))
            }
            _ => None,
        }
    }

    /// `x: [T, in]` -> `[T, out]`.
    pub(crate) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let t = x.dims()[0];
        if let Some(w) = self.host_kernels(t) {
            let device = x.device();
            let y = host_product(w, x, None);
            return Tensor::from_data(TensorData::new(y, [t, w.rows()]), &device);
        }
        match self {
            Linear::PreNormed { norm, inner } => inner.forward(norm.apply(x)),
            Linear::Dense { w, act8, act_group } => {
                let x = match (*act8, *act_group) {
                    (false, _) => x,
                    (true, 0) => act_quant(x),
                    (true, g) => act_quant_groups(x, g),
                };
                x.matmul(w.clone())
            }
            // Many tokens with float activations: expand the weight for this call only and use
            // burn's GEMM (the packed or table copy stays the only resident one).
            Linear::Ternary { w, .. } => transient_gemm(x, w.dequantize(), w.rows, w.cols),
            Linear::Table(w) => {
                let w = w.table();
                transient_gemm(x, w.dequantize(), w.rows(), w.cols())
            }
            #[cfg(feature = "wgpu")]
            Linear::Gpu { w, act8 } => {
                if x.dims()[0] < DENSE_PREFILL {
                    // Decode: one kernel launch (int8 quantization fused in for `:a8`).
                    w.matvec(x, *act8)
                } else {
                    // Prefill: a transient dense copy and burn's GEMM, or with
                    // `SMOLBIT_GPU_PREFILL=tiled` the tiled ternary kernel (docs/gpu.md
                    // compares them).
                    let product = |x: Tensor<2>| {
                        if gpu_prefill_tiled() {
                            w.gemm(x)
                        } else {
                            x.matmul(w.unpack().transpose())
                        }
                    };
                    if *act8 {
                        let (q, scale) = act_quant_parts(x);
                        product(q).div(scale)
                    } else {
                        product(x)
                    }
                }
            }
        }
    }

    /// [`Linear::forward`] on host rows `x: [T, in]`: the packed kernels directly, anything
    /// else through a tensor on `device`.
    pub(crate) fn forward_host(&self, x: Vec<f32>, t: usize, device: &Device) -> Vec<f32> {
        if let Linear::PreNormed { norm, inner } = self {
            let mut x = x;
            norm.apply_host(&mut x);
            return inner.forward_host(x, t, device);
        }
        if let Some(w) = self.host_kernels(t) {
            return w.product(&x, t);
        }
        let cols = x.len() / t.max(1);
        crate::tensor_to_vec(self.forward(crate::upload2(x, t, cols, device)))
    }

    /// How the weight is stored and run: "ternary" (packed, CPU kernels), "ternary-gpu",
    /// "burn-f32" (burn's matmul), or a host table's storage ("f32", "f16", "bf16", "q8",
    /// "q4").
    pub fn storage(&self) -> &'static str {
        match self {
            Linear::Dense { .. } => "burn-f32",
            Linear::Ternary { .. } => "ternary",
            Linear::Table(w) => w.storage().name(),
            #[cfg(feature = "wgpu")]
            Linear::Gpu { .. } => "ternary-gpu",
            Linear::PreNormed { inner, .. } => inner.storage(),
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Linear::Dense { w, .. } => w.dims()[1],
            Linear::Ternary { w, .. } => w.rows,
            Linear::Table(w) => w.table().rows(),
            #[cfg(feature = "wgpu")]
            Linear::Gpu { w, .. } => w.rows,
            Linear::PreNormed { inner, .. } => inner.rows(),
        }
    }

    /// Bytes of weight data held.
    pub fn bytes(&self) -> usize {
        match self {
            Linear::Dense { w, .. } => w.dims().iter().product::<usize>() * 4,
            Linear::Ternary { w, .. } => w.bytes(),
            Linear::Table(w) => w.table().bytes(),
            #[cfg(feature = "wgpu")]
            Linear::Gpu { w, .. } => w.bytes(),
            Linear::PreNormed { inner, .. } => inner.bytes(),
        }
    }
}

/// Whether ternary prefill on the GPU takes the tiled kernel (`SMOLBIT_GPU_PREFILL=tiled`, read
/// once) instead of the unpack and burn's GEMM.
#[cfg(feature = "wgpu")]
fn gpu_prefill_tiled() -> bool {
    static TILED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TILED.get_or_init(|| std::env::var("SMOLBIT_GPU_PREFILL").is_ok_and(|v| v == "tiled"))
}

/// `x: [T, in]` times the transpose of a transient dense `[rows, cols]` weight, by burn's GEMM.
fn transient_gemm(x: Tensor<2>, w: Vec<f32>, rows: usize, cols: usize) -> Tensor<2> {
    let dense = Tensor::<2>::from_data(TensorData::new(w, [rows, cols]), &x.device());
    x.matmul(dense.transpose())
}

/// The host kernels on `x: [T, in]` (RMS-normalized first on the host when `norm` is given),
/// on the host: `[T, out]` row-major.
fn host_product(w: HostWeights<'_>, x: Tensor<2>, norm: Option<&Norm>) -> Vec<f32> {
    let t = x.dims()[0];
    let mut host = crate::tensor_to_vec(x);
    if let Some(n) = norm {
        n.apply_host(&mut host);
    }
    w.product(&host, t)
}

/// Linears applied to the same input (q, k, v; gate, up). Packed ternary ones of one shape run
/// as one stacked product (one activation quantization, one parallel pass: fewer per-call costs
/// in decode); anything else runs one by one. Outputs are identical either way.
// As for `Linear`: two per layer, built once, never moved on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Fused {
    /// One product over the stacked rows, split into outputs of these widths.
    Stacked(Linear, Vec<usize>),
    /// Separate products.
    Separate(Vec<Linear>),
}

impl Fused {
    pub(crate) fn new(parts: Vec<Linear>) -> Self {
        use smolbit_ternary::kernels::PackedTernary;
        if let Some(f) = Fused::stack(
            &parts,
            |l| match l {
                Linear::Ternary { w, act8 } => Some((w, *act8)),
                _ => None,
            },
            PackedTernary::concat_rows,
            |w, act8| Linear::Ternary { w, act8 },
        ) {
            return f;
        }
        #[cfg(feature = "wgpu")]
        if let Some(f) = Fused::stack(
            &parts,
            |l| match l {
                Linear::Gpu { w, act8 } => Some((w, *act8)),
                _ => None,
            },
            crate::gpu::GpuTernary::concat_rows,
            |w, act8| Linear::Gpu { w, act8 },
        ) {
            return f;
        }
        // Dense f32 weights off the CPU stack into one product (fewer dispatches per step),
        // stored `[Σ out, in]` row-major (the layout the fused step reads) and used transposed;
        // on the CPU they stay apart, as the reference path they are.
        if let Some(f) = Fused::stack(
            &parts,
            |l| match l {
                Linear::Dense {
                    w,
                    act8: false,
                    act_group: 0,
                } if w.device() != Device::flex() => Some((w, false)),
                _ => None,
            },
            |ws: &[&Tensor<2>]| {
                ws.iter()
                    .all(|w| w.dims()[0] == ws[0].dims()[0])
                    .then(|| Tensor::cat(ws.iter().map(|w| (*w).clone().transpose()).collect(), 0))
            },
            |w, _| Linear::Dense {
                w: w.transpose(),
                act8: false,
                act_group: 0,
            },
        ) {
            return f;
        }
        if let Some(f) = Fused::stack(
            &parts,
            |l| match l {
                Linear::Table(w) => Some((w, false)),
                _ => None,
            },
            HostTable::concat,
            |w, _| Linear::Table(w),
        ) {
            return f;
        }
        Fused::Separate(parts)
    }

    /// The parts as one stacked linear, when `pick` takes every one of them (its weight and
    /// int8 setting, the same for all) and `concat` stacks their weights' rows.
    fn stack<'a, W: 'a>(
        parts: &'a [Linear],
        pick: impl Fn(&'a Linear) -> Option<(&'a W, bool)>,
        concat: impl Fn(&[&W]) -> Option<W>,
        make: impl Fn(W, bool) -> Linear,
    ) -> Option<Fused> {
        let picked: Vec<(&W, bool)> = parts.iter().map(pick).collect::<Option<_>>()?;
        let act8 = picked.first()?.1;
        if picked.iter().any(|&(_, a)| a != act8) {
            return None;
        }
        let w = concat(&picked.iter().map(|&(w, _)| w).collect::<Vec<_>>())?;
        Some(Fused::Stacked(
            make(w, act8),
            parts.iter().map(Linear::rows).collect(),
        ))
    }

    /// The stacked weights when this runs on the host kernels for `tokens` tokens.
    fn host(&self, tokens: usize) -> Option<HostWeights<'_>> {
        match self {
            Fused::Stacked(l, _) => l.host_kernels(tokens),
            Fused::Separate(_) => None,
        }
    }

    /// `x: [T, in]` -> one `[T, out_i]` per part (`N` parts, fixed when the block was built),
    /// after `norm` when given (on the host, with the product, on the host path).
    pub(crate) fn forward<const N: usize>(
        &self,
        x: Tensor<2>,
        norm: Option<&Norm>,
    ) -> [Tensor<2>; N] {
        let t = x.dims()[0];
        let parts: Vec<Tensor<2>> = match self {
            Fused::Stacked(l, outs) => {
                let y = match self.host(t) {
                    Some(w) => {
                        let device = x.device();
                        let y = host_product(w, x, norm);
                        Tensor::from_data(TensorData::new(y, [t, w.rows()]), &device)
                    }
                    None => l.forward(Norm::maybe(norm, x)),
                };
                let mut start = 0;
                outs.iter()
                    .map(|&n| {
                        let part = y.clone().narrow(1, start, n);
                        start += n;
                        part
                    })
                    .collect()
            }
            Fused::Separate(parts) => {
                let x = Norm::maybe(norm, x);
                parts.iter().map(|l| l.forward(x.clone())).collect()
            }
        };
        parts
            .try_into()
            .unwrap_or_else(|p: Vec<_>| panic!("{} projections, not {N}", p.len()))
    }

    /// SwiGLU, `silu(gate(x)) * up(x)`, for a gate/up pair, after `norm` when given. Stacked
    /// packed weights on the CPU compute it on the host as the product comes back (one upload
    /// of `[T, F]` instead of two narrows, a sigmoid and two multiplies) with
    /// `smolbit_ternary::ops::swiglu` (burn's `silu(g).mul(u)` formula, a vectorized `exp`);
    /// otherwise with burn's ops.
    pub(crate) fn swiglu(&self, x: Tensor<2>, norm: Option<&Norm>, act: HiddenAct) -> Tensor<2> {
        let t = x.dims()[0];
        if let (Some(w), Fused::Stacked(_, outs)) = (self.host(t), self)
            && outs.len() == 2
            && outs[0] == outs[1]
        {
            let f = outs[0];
            let device = x.device();
            let y = host_product(w, x, norm);
            let inner = host_glu(&y, f, act);
            return Tensor::from_data(TensorData::new(inner, [t, f]), &device);
        }
        let [gate, up] = self.forward(x, norm);
        match act {
            HiddenAct::Silu => silu(gate).mul(up),
            HiddenAct::Relu2 => {
                let r = relu(gate);
                r.clone().mul(r).mul(up)
            }
        }
    }

    /// The parts' outputs side by side, `[T, Σ out_i]`, for host rows `x: [T, in]` after
    /// `norm` (the host path).
    pub(crate) fn forward_host(
        &self,
        x: &[f32],
        t: usize,
        norm: &Norm,
        device: &Device,
    ) -> Vec<f32> {
        let mut h = x.to_vec();
        norm.apply_host(&mut h);
        match self {
            Fused::Stacked(l, _) => l.forward_host(h, t, device),
            Fused::Separate(parts) => {
                let ys: Vec<Vec<f32>> = parts
                    .iter()
                    .map(|l| l.forward_host(h.clone(), t, device))
                    .collect();
                let widths: Vec<usize> = ys.iter().map(|y| y.len() / t.max(1)).collect();
                let mut out = Vec::with_capacity(ys.iter().map(Vec::len).sum());
                for ti in 0..t {
                    for (y, &w) in ys.iter().zip(&widths) {
                        out.extend_from_slice(&y[ti * w..][..w]);
                    }
                }
                out
            }
        }
    }

    /// [`Fused::swiglu`] on host rows (gate and up side by side, then
    /// `smolbit_ternary::ops::swiglu` or `relu2_glu`).
    pub(crate) fn swiglu_host(
        &self,
        x: &[f32],
        t: usize,
        norm: &Norm,
        device: &Device,
        act: HiddenAct,
    ) -> Vec<f32> {
        let y = self.forward_host(x, t, norm, device);
        host_glu(&y, y.len() / t.max(1) / 2, act)
    }

    fn bytes(&self) -> usize {
        match self {
            Fused::Stacked(l, _) => l.bytes(),
            Fused::Separate(parts) => parts.iter().map(Linear::bytes).sum(),
        }
    }
}

/// `act(gate) · up` on host rows `[gate | up]` (`[T, 2f]`) -> `[T, f]`.
pub(crate) fn host_glu(gu: &[f32], f: usize, act: HiddenAct) -> Vec<f32> {
    match act {
        HiddenAct::Silu => smolbit_ternary::ops::swiglu(gu, f),
        HiddenAct::Relu2 => smolbit_ternary::ops::relu2_glu(gu, f),
    }
}

/// BitNet's per-token int8 absmax fake quantization of `x: [T, width]`:
/// `scale = 127 / max(max|x|, 1e-5)`, `x̂ = clamp(round(x * scale), -128, 127) / scale`.
pub(crate) fn act_quant(x: Tensor<2>) -> Tensor<2> {
    let (q, scale) = act_quant_parts(x);
    q.div(scale)
}

/// [`act_quant`] applied to each group of `group` columns of each token on its own (the int8
/// activations of the q8 and q4 tables; a last partial group is padded with zeros).
pub(crate) fn act_quant_groups(x: Tensor<2>, group: usize) -> Tensor<2> {
    let [t, c] = x.dims();
    let padded = c.div_ceil(group) * group;
    let x = if padded > c {
        let device = x.device();
        Tensor::cat(vec![x, Tensor::zeros([t, padded - c], &device)], 1)
    } else {
        x
    };
    act_quant(x.reshape([t * padded / group, group]))
        .reshape([t, padded])
        .narrow(1, 0, c)
}

/// [`act_quant`] before the division: the integers `q` (as f32) and each token's `scale`
/// (`[T, 1]`).
pub(crate) fn act_quant_parts(x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let scale = x
        .clone()
        .abs()
        .max_dim(1)
        .clamp_min(1e-5)
        .recip()
        .mul_scalar(127.0);
    (x.mul(scale.clone()).round().clamp(-128.0, 127.0), scale)
}

/// Inputs seen by the four kinds of linear in a block, accumulated over calibration text.
#[derive(Debug, Clone, Default)]
pub struct InputRecorder {
    /// Per input site (q/k/v, o, gate/up, down): sum of x^2 per column.
    pub sum_sq: [Vec<f64>; 4],
    /// Rows seen per site.
    pub count: [usize; 4],
    /// Sampled input rows per site (row-major), at most `max_samples` rows.
    pub samples: [Vec<f32>; 4],
    /// Sample budget per site.
    pub max_samples: usize,
    /// Accumulate `XᵀX` per site (for GPTQ).
    pub hessian: bool,
    /// Per site `Σ XᵀX` (`cols x cols`) when `hessian`.
    pub xtx: [Vec<f64>; 4],
}

impl InputRecorder {
    fn record(&mut self, site: usize, x: &Tensor<2>) {
        let [t, cols] = x.dims();
        let data = crate::tensor_to_vec(x.clone());
        let sum = &mut self.sum_sq[site];
        if sum.is_empty() {
            sum.resize(cols, 0.0);
        }
        for row in data.chunks_exact(cols) {
            for (s, v) in sum.iter_mut().zip(row) {
                *s += f64::from(*v) * f64::from(*v);
            }
        }
        self.count[site] += t;
        if self.hessian {
            let g = crate::tensor_to_vec(x.clone().transpose().matmul(x.clone()));
            let acc = &mut self.xtx[site];
            if acc.is_empty() {
                acc.resize(cols * cols, 0.0);
            }
            for (a, v) in acc.iter_mut().zip(g) {
                *a += f64::from(v);
            }
        }
        let have = self.samples[site].len() / cols.max(1);
        if have < self.max_samples {
            // Evenly spaced rows of this window.
            let take = (self.max_samples - have).min(8).min(t);
            for i in 0..take {
                let r = i * t / take;
                self.samples[site].extend_from_slice(&data[r * cols..(r + 1) * cols]);
            }
        }
    }
}

/// `x * rsqrt(mean(x^2) + eps) * w` over the last dimension of `x: [T, hidden]`.
pub(crate) fn rms_norm(x: Tensor<2>, w: &Tensor<1>, eps: f64) -> Tensor<2> {
    let var = x.clone().square().mean_dim(1);
    let inv = var.add_scalar(eps).sqrt().recip();
    x.mul(inv).mul(w.clone().unsqueeze::<2>())
}

/// An RMSNorm weight, on the device and on the host (for the host kernels' path).
#[derive(Debug)]
pub struct Norm {
    w: Tensor<1>,
    host: Vec<f32>,
    eps: f64,
}

impl Norm {
    pub(crate) fn new(w: Tensor<1>, eps: f64) -> Self {
        let host = crate::tensor_to_vec(w.clone());
        Norm { w, host, eps }
    }

    /// [`rms_norm`] with burn's ops.
    pub(crate) fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        rms_norm(x, &self.w, self.eps)
    }

    /// The weight on the device and epsilon.
    #[cfg(feature = "wgpu")]
    pub(crate) fn device_weight(&self) -> (Tensor<1>, f64) {
        (self.w.clone(), self.eps)
    }

    fn maybe(norm: Option<&Norm>, x: Tensor<2>) -> Tensor<2> {
        match norm {
            Some(n) => n.apply(x),
            None => x,
        }
    }

    /// [`rms_norm`] in place on host rows `[T, hidden]`: the same formula in f32 (the mean's
    /// summation order may differ from burn's: results agree to f32 rounding).
    pub(crate) fn apply_host(&self, x: &mut [f32]) {
        let eps = self.eps as f32;
        for row in x.chunks_exact_mut(self.host.len()) {
            let var = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
            let inv = (var + eps).sqrt().recip();
            for (v, &w) in row.iter_mut().zip(&self.host) {
                *v = *v * inv * w;
            }
        }
    }
}

/// Rotary tables for positions `past .. past + T`: `cos`, `sin` as `[1, T, D]`.
pub(crate) struct Rope {
    cos: Tensor<3>,
    sin: Tensor<3>,
}

impl Rope {
    /// Computed like transformers' default RoPE: `inv_freq = 1 / theta^(2i/D)` and the angle
    /// `pos * inv_freq` in f32, then `emb = cat(freqs, freqs)`.
    pub(crate) fn new(c: &ModelConfig, past: usize, t: usize, device: &Device) -> Self {
        let d = c.head_dim;
        let (cos, sin) = crate::host::rope_tables(c, past, t);
        Rope {
            cos: Tensor::from_data(TensorData::new(cos, [1, t, d]), device),
            sin: Tensor::from_data(TensorData::new(sin, [1, t, d]), device),
        }
    }

    /// `x * cos + rotate_half(x) * sin` for `x: [heads, T, D]`.
    fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        let d = x.dims()[2];
        let x1 = x.clone().narrow(2, 0, d / 2);
        let x2 = x.clone().narrow(2, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 2);
        x.mul(self.cos.clone()).add(rotated.mul(self.sin.clone()))
    }
}

/// One decoder block.
#[derive(Debug)]
pub struct Block {
    pub(crate) attn_norm: Norm,
    /// q, k, v.
    pub(crate) qkv: Fused,
    pub(crate) wo: Linear,
    pub(crate) mlp_norm: Norm,
    /// gate, up.
    pub(crate) gate_up: Fused,
    pub(crate) down: Linear,
    /// BitNet: RMSNorm of the attention output before `wo`.
    pub(crate) attn_sub_norm: Option<Norm>,
    /// BitNet: RMSNorm of `act(gate) · up` before `down`.
    pub(crate) ffn_sub_norm: Option<Norm>,
    pub(crate) act: HiddenAct,
    pub(crate) use_rope: bool,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
}

impl Block {
    /// Query heads, key/value heads and the head dimension.
    pub(crate) fn heads(&self) -> (usize, usize, usize) {
        (self.n_heads, self.n_kv, self.head_dim)
    }

    pub(crate) fn load(
        c: &ModelConfig,
        i: usize,
        get1: &impl Fn(&str, usize) -> Result<Tensor<1>, ModelError>,
        lin: &impl Fn(&str, usize, usize) -> Result<Linear, ModelError>,
    ) -> Result<Self, ModelError> {
        let name = |r: LayerRole| hf_name(Role::Layer(r), Some(i));
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let lin = |r: LayerRole, out: usize, inp: usize| lin(&name(r), out, inp);
        Ok(Block {
            attn_norm: Norm::new(get1(&name(LayerRole::AttnNorm), h)?, c.rms_norm_eps),
            qkv: Fused::new(vec![
                lin(LayerRole::Q, q, h)?,
                lin(LayerRole::K, kv, h)?,
                lin(LayerRole::V, kv, h)?,
            ]),
            wo: lin(LayerRole::O, h, q)?,
            mlp_norm: Norm::new(get1(&name(LayerRole::MlpNorm), h)?, c.rms_norm_eps),
            gate_up: Fused::new(vec![lin(LayerRole::Gate, f, h)?, lin(LayerRole::Up, f, h)?]),
            down: lin(LayerRole::Down, h, f)?,
            attn_sub_norm: c
                .arch
                .has_sub_norms()
                .then(|| get1(&name(LayerRole::AttnSubNorm), q))
                .transpose()?
                .map(|w| Norm::new(w, c.rms_norm_eps)),
            ffn_sub_norm: c
                .arch
                .has_sub_norms()
                .then(|| get1(&name(LayerRole::FfnSubNorm), f))
                .transpose()?
                .map(|w| Norm::new(w, c.rms_norm_eps)),
            act: c.hidden_act,
            use_rope: c.rope_layers[i],
            n_heads: c.num_heads,
            n_kv: c.num_kv_heads,
            head_dim: c.head_dim,
        })
    }

    /// Bytes of linear weights held.
    pub fn linear_bytes(&self) -> usize {
        self.qkv.bytes() + self.wo.bytes() + self.gate_up.bytes() + self.down.bytes()
    }

    /// How the down projection is stored (as [`Linear::storage`]): what the block's
    /// linears run on.
    pub fn linear_storage(&self) -> &'static str {
        self.down.storage()
    }

    /// `x: [T, hidden]` -> `[T, hidden]`.
    pub(crate) fn forward(
        &self,
        x: Tensor<2>,
        rope: &Rope,
        cache: &mut Option<(Tensor<3>, Tensor<3>)>,
        past: usize,
        mut rec: Option<&mut InputRecorder>,
    ) -> Tensor<2> {
        // Recording calibration inputs needs the normed tensors; otherwise the norms go with
        // the products (on the host for the CPU kernels).
        fn normed<'a>(
            x: &Tensor<2>,
            norm: &'a Norm,
            site: usize,
            rec: Option<&mut InputRecorder>,
        ) -> (Tensor<2>, Option<&'a Norm>) {
            match rec {
                Some(r) => {
                    let h = norm.apply(x.clone());
                    r.record(site, &h);
                    (h, None)
                }
                None => (x.clone(), Some(norm)),
            }
        }
        let (h, norm) = normed(&x, &self.attn_norm, 0, rec.as_deref_mut());
        let x = x.add(self.attention(h, norm, rope, cache, past, rec.as_deref_mut()));
        let (h, norm) = normed(&x, &self.mlp_norm, 2, rec.as_deref_mut());
        let mut inner = self.gate_up.swiglu(h, norm, self.act);
        if let Some(n) = &self.ffn_sub_norm {
            inner = n.apply(inner);
        }
        if let Some(r) = rec {
            r.record(3, &inner);
        }
        x.add(self.down.forward(inner))
    }

    /// [`Block::forward`] on the host: `x: [T, hidden]` host rows updated in place, keys and
    /// values appended to each sequence's layer cache. `x` holds the rows of one or more
    /// sequences one after another (`seqs`, in that order): the linears run on all rows at once
    /// (several sequences decoding together read each weight once), attention per sequence
    /// against its own cache. The linears run as in `forward` (the packed kernels directly,
    /// anything else through burn on `device`); norms, RoPE, attention, SwiGLU and the residual
    /// adds run on the host, so a decoded token costs no tensor operations at all on a packed
    /// model.
    pub(crate) fn forward_host(&self, x: &mut [f32], seqs: &mut [HostSeq<'_>], device: &Device) {
        let (nh, nkv, d) = (self.n_heads, self.n_kv, self.head_dim);
        let (qw, kw) = (nh * d, nkv * d);
        let t: usize = seqs.iter().map(|s| s.t).sum();
        let qkv = self.qkv.forward_host(x, t, &self.attn_norm, device);
        let heads = smolbit_ternary::attention::Heads {
            n_heads: nh,
            n_kv: nkv,
            d,
        };
        // Each sequence's queries, keys and values (its rows of `qkv`), RoPE, the append to its
        // cache and its attention; sequences decoded together run in parallel (each reads only
        // its own cache).
        let width = qw + 2 * kw;
        let mut starts = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for s in seqs.iter() {
            starts.push(row);
            row += s.t;
        }
        let one = |(s, &start): (&mut HostSeq<'_>, &usize)| -> Vec<f32> {
            let mut q = Vec::with_capacity(s.t * qw);
            let mut k = Vec::with_capacity(s.t * kw);
            let mut v = Vec::with_capacity(s.t * kw);
            for row in qkv[start * width..][..s.t * width].chunks_exact(width) {
                q.extend_from_slice(&row[..qw]);
                k.extend_from_slice(&row[qw..qw + kw]);
                v.extend_from_slice(&row[qw + kw..]);
            }
            if self.use_rope {
                crate::host::apply_rope(&mut q, nh, d, &s.rope.0, &s.rope.1);
                crate::host::apply_rope(&mut k, nkv, d, &s.rope.0, &s.rope.1);
            }
            match &mut *s.cache {
                HostKv::F32(keys, values) => {
                    cache_and_attend(keys, values, &q, &k, &v, s.t, s.past, heads)
                }
                HostKv::F16(keys, values) => {
                    cache_and_attend(keys, values, &q, &k, &v, s.t, s.past, heads)
                }
            }
        };
        let parts: Vec<Vec<f32>> = if seqs.len() > 1 {
            use rayon::prelude::*;
            seqs.par_iter_mut().zip(&starts).map(one).collect()
        } else {
            seqs.iter_mut().zip(&starts).map(one).collect()
        };
        let mut attn = parts.concat();
        if let Some(n) = &self.attn_sub_norm {
            n.apply_host(&mut attn);
        }
        let o = self.wo.forward_host(attn, t, device);
        for (xv, ov) in x.iter_mut().zip(&o) {
            *xv += ov;
        }
        let mut inner = self
            .gate_up
            .swiglu_host(x, t, &self.mlp_norm, device, self.act);
        if let Some(n) = &self.ffn_sub_norm {
            n.apply_host(&mut inner);
        }
        let y = self.down.forward_host(inner, t, device);
        for (xv, yv) in x.iter_mut().zip(&y) {
            *xv += yv;
        }
    }

    /// Self-attention of `x` (after `norm` when given).
    fn attention(
        &self,
        x: Tensor<2>,
        norm: Option<&Norm>,
        rope: &Rope,
        cache: &mut Option<(Tensor<3>, Tensor<3>)>,
        past: usize,
        rec: Option<&mut InputRecorder>,
    ) -> Tensor<2> {
        let t = x.dims()[0];
        let (nh, nkv, d) = (self.n_heads, self.n_kv, self.head_dim);
        let group = nh / nkv;
        // [T, H*D] -> [H, T, D]
        let heads = |y: Tensor<2>, n: usize| y.reshape([t, n, d]).swap_dims(0, 1);
        let [q, k, v] = self.qkv.forward(x, norm);
        let mut q = heads(q, nh);
        let mut k = heads(k, nkv);
        let v = heads(v, nkv);
        if self.use_rope {
            q = rope.apply(q);
            k = rope.apply(k);
        }
        let s = past + t;
        let (kb, vb) = grown(cache.take(), nkv, d, past, s, &k.device());
        let kb = kb.slice_assign([0..nkv, past..s, 0..d], k);
        let vb = vb.slice_assign([0..nkv, past..s, 0..d], v);
        let (k, v) = (kb.clone().narrow(1, 0, s), vb.clone().narrow(1, 0, s));
        *cache = Some((kb, vb));
        // Query head h uses key/value head h / group (transformers' repeat_kv), so the `group`
        // query heads of one KV head become `group * T` rows against that head's keys.
        let q = q.reshape([nkv, group * t, d]);
        let mut scores = q
            .matmul(k.swap_dims(1, 2))
            .mul_scalar(1.0 / (d as f64).sqrt());
        if t > 1 {
            // Row r is position past + (r % T); it may see keys 0..=past + r % T.
            let mut mask = Vec::with_capacity(group * t * s);
            for r in 0..group * t {
                let pos = past + r % t;
                mask.extend((0..s).map(|j| if j <= pos { 0.0f32 } else { f32::NEG_INFINITY }));
            }
            let mask =
                Tensor::<2>::from_data(TensorData::new(mask, [group * t, s]), &scores.device());
            scores = scores.add(mask.unsqueeze::<3>());
        }
        let probs = softmax(scores, 2);
        // [K, G*T, D] -> [H, T, D] -> [T, H, D] -> [T, H*D]
        let out = probs
            .matmul(v)
            .reshape([nh, t, d])
            .swap_dims(0, 1)
            .reshape([t, nh * d]);
        let out = match &self.attn_sub_norm {
            Some(n) => n.apply(out),
            None => out,
        };
        if let Some(r) = rec {
            r.record(1, &out);
        }
        self.wo.forward(out)
    }
}

//! The training network: a Llama / SmolLM3 decoder written with burn's tensor operations over
//! whole sequences (no KV cache), so that burn's autodiff can differentiate it.
//!
//! The teacher and the student share this code. A teacher linear is a frozen `[in, out]` matrix;
//! a student linear holds latent f32 weights and learnable scales, and every forward pass
//! ternarizes the latent weights through a straight-through estimator ([`StudentLinear::weight`]).

use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};
use smolbit_ternary::{Granularity, Scheme};
use smolbit_weights::{ModelConfig, ModelDir};

use crate::DistillError;

/// Names of a block's seven linears, in checkpoint order within the block.
pub(crate) const LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// `[rows, cols]` of linear `i` of [`LINEARS`].
pub(crate) fn linear_shape(c: &ModelConfig, i: usize) -> (usize, usize) {
    let (h, f) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    match i {
        0 => (q, h),
        1 | 2 => (kv, h),
        3 => (h, q),
        4 | 5 => (f, h),
        _ => (h, f),
    }
}

/// The HF weight name of linear `i` of layer `layer`.
pub(crate) fn linear_name(layer: usize, i: usize) -> String {
    format!("model.layers.{layer}.{}.weight", LINEARS[i])
}

/// A student linear: latent weights `w` `[rows, cols]` and scales `s` `[planes, rows, groups]`
/// (`groups` 1 for per-tensor and per-row scales; per-tensor scales are `[planes, 1, 1]`).
#[derive(Debug, Clone)]
pub(crate) struct StudentLinear {
    pub w: Tensor<2>,
    pub s: Tensor<3>,
    pub rows: usize,
    pub cols: usize,
    pub planes: usize,
    pub granularity: Granularity,
    pub act8: bool,
    /// The trits of the current latent weights and scales ([`StudentLinear::refresh`]).
    pub t: Tensor<3>,
}

/// The shape of the scale tensor for a scheme.
pub(crate) fn scale_shape(g: Granularity, planes: usize, rows: usize, cols: usize) -> [usize; 3] {
    match g {
        Granularity::Tensor => [planes, 1, 1],
        Granularity::Row => [planes, rows, 1],
        Granularity::Group(n) => [planes, rows, cols.div_ceil(n)],
    }
}

impl StudentLinear {
    /// Scales broadcast to every weight: `[planes, rows, cols]`.
    fn full_scales(&self, s: Tensor<3>) -> Tensor<3> {
        let (k, r, c) = (self.planes, self.rows, self.cols);
        match self.granularity {
            Granularity::Tensor | Granularity::Row => s.expand([k, r, c]),
            Granularity::Group(g) => {
                let groups = c.div_ceil(g);
                s.unsqueeze_dim::<4>(3)
                    .expand([k, r, groups, g])
                    .reshape([k, r, groups * g])
                    .narrow(2, 0, c)
            }
        }
    }

    /// The trits nearest to the latent weights for the current scales, `[planes, rows, cols]`
    /// in {-1, 0, 1} (as f32, detached): the combination `Σ_k s_k t_k` nearest to `w` (for one
    /// plane `clamp(round(w / s))`). All planes but the last are enumerated (1, 3 or 9
    /// candidates), the last plane's trit is then the rounded residual; the first candidate wins
    /// ties.
    pub fn nearest_trits(&self) -> Tensor<3> {
        // On the plain device: nothing here needs (or should touch) the autodiff graph.
        let w = self.w.clone().detach().inner();
        let s = self.full_scales(self.s.clone().detach().inner());
        let (k, r, c) = (self.planes, self.rows, self.cols);
        let plane = |p: usize| s.clone().narrow(0, p, 1).reshape([r, c]);
        let last = plane(k - 1);
        // `x s / s²` is `x / s`, and 0 for a zero scale (an all-zero group).
        let inv_last = last.clone().div(last.clone().square().clamp_min(1e-30));
        let mut best: Option<(Tensor<2>, Vec<Tensor<2>>)> = None;
        for combo in 0..3usize.pow(k as u32 - 1) {
            let mut res = w.clone();
            let mut fixed = Vec::with_capacity(k - 1);
            let mut x = combo;
            for p in 0..k - 1 {
                let t = (x % 3) as f32 - 1.0;
                x /= 3;
                if t != 0.0 {
                    res = res.sub(plane(p).mul_scalar(t));
                }
                fixed.push(t);
            }
            let t_last = res.clone().mul(inv_last.clone()).round().clamp(-1.0, 1.0);
            let d = res.sub(t_last.clone().mul(last.clone())).abs();
            best = Some(match best {
                None => {
                    let mut ts: Vec<Tensor<2>> = fixed
                        .iter()
                        .map(|&t| Tensor::full([r, c], t, &w.device()))
                        .collect();
                    ts.push(t_last);
                    (d, ts)
                }
                Some((bd, mut ts)) => {
                    let better = d.clone().lower(bd.clone());
                    let prev_last = ts.pop().expect("k trits");
                    let mut out: Vec<Tensor<2>> = ts
                        .into_iter()
                        .zip(&fixed)
                        .map(|(t, &f)| t.mask_fill(better.clone(), f))
                        .collect();
                    out.push(prev_last.mask_where(better.clone(), t_last));
                    (bd.mask_where(better, d), out)
                }
            });
        }
        let Some((_, ts)) = best else {
            unreachable!("at least one candidate")
        };
        Tensor::stack::<3>(ts, 0).autodiff()
    }

    /// Recompute the cached trits ([`StudentLinear::nearest_trits`]); called whenever the
    /// latent weights or the scales change.
    pub fn refresh(&mut self) {
        self.t = self.nearest_trits();
    }

    /// The weight a forward pass uses: `Σ_k s_k ⊙ T_k` in value, with the gradient of the
    /// latent weights passed straight through (`w - detach(w)` adds zero) and the scales'
    /// gradient `Σ (∂L/∂Ŵ) ⊙ T_k` over each scale's weights.
    pub fn weight(&self) -> Tensor<2> {
        let t = self.t.clone();
        let q = self
            .full_scales(self.s.clone())
            .mul(t)
            .sum_dim(0)
            .reshape([self.rows, self.cols]);
        self.w.clone().sub(self.w.clone().detach()).add(q)
    }
}

/// A linear layer of the training network.
// Seven per block, built once: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(crate) enum Lin {
    /// A frozen weight, stored transposed `[in, out]`.
    Frozen(Tensor<2>),
    /// A trainable ternary student linear.
    Student(StudentLinear),
}

/// BitNet's int8 per-token fake quantization with a straight-through gradient.
fn act_quant_ste(x: Tensor<2>) -> Tensor<2> {
    let scale = x
        .clone()
        .abs()
        .max_dim(1)
        .clamp_min(1e-5)
        .recip()
        .mul_scalar(127.0);
    let q = x
        .clone()
        .mul(scale.clone())
        .round()
        .clamp(-128.0, 127.0)
        .div(scale);
    x.clone().add(q.sub(x).detach())
}

impl Lin {
    /// `x: [N, in]` -> `[N, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Lin::Frozen(w) => x.matmul(w.clone()),
            Lin::Student(s) => {
                let x = if s.act8 { act_quant_ste(x) } else { x };
                x.matmul(s.weight().transpose())
            }
        }
    }
}

/// One decoder block.
#[derive(Debug, Clone)]
pub(crate) struct NetBlock {
    pub attn_norm: Tensor<1>,
    pub mlp_norm: Tensor<1>,
    /// q, k, v, o, gate, up, down.
    pub lins: Vec<Lin>,
    pub use_rope: bool,
}

/// Everything a forward pass needs besides the blocks' weights.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
    pub rope_theta: f64,
}

impl Shape {
    pub fn new(c: &ModelConfig) -> Self {
        Shape {
            hidden: c.hidden_size,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            eps: c.rms_norm_eps,
            rope_theta: c.rope_theta,
        }
    }
}

/// Per-sequence-length constants: rotary tables `[1, 1, L, D]` and the causal mask `[1, 1, L, L]`
/// (0 or a large negative number added to the scores).
pub(crate) struct SeqConsts {
    cos: Tensor<4>,
    sin: Tensor<4>,
    mask: Tensor<4>,
}

impl SeqConsts {
    /// Rotary tables computed as transformers' default RoPE (f32 `inv_freq` and angles).
    pub fn new(sh: &Shape, len: usize, device: &Device) -> Self {
        let d = sh.head_dim;
        let theta = sh.rope_theta as f32;
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
            .collect();
        let (mut cos, mut sin) = (Vec::with_capacity(len * d), Vec::with_capacity(len * d));
        for p in 0..len {
            for _ in 0..2 {
                for &f in &inv {
                    let a = f64::from(p as f32 * f);
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
        let mut mask = vec![0f32; len * len];
        for i in 0..len {
            for j in i + 1..len {
                mask[i * len + j] = -1e30;
            }
        }
        SeqConsts {
            cos: Tensor::from_data(TensorData::new(cos, [1, 1, len, d]), device),
            sin: Tensor::from_data(TensorData::new(sin, [1, 1, len, d]), device),
            mask: Tensor::from_data(TensorData::new(mask, [1, 1, len, len]), device),
        }
    }
}

/// `x * rsqrt(mean(x^2) + eps) * w` over the last dimension.
pub(crate) fn rms_norm(x: Tensor<2>, w: &Tensor<1>, eps: f64) -> Tensor<2> {
    let inv = x
        .clone()
        .square()
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    x.mul(inv).mul(w.clone().unsqueeze::<2>())
}

fn rope(x: Tensor<4>, k: &SeqConsts) -> Tensor<4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x.mul(k.cos.clone()).add(rotated.mul(k.sin.clone()))
}

impl NetBlock {
    /// Recompute every student linear's trits.
    pub fn refresh(&mut self) {
        for l in &mut self.lins {
            if let Lin::Student(s) = l {
                s.refresh();
            }
        }
    }

    /// A copy whose parameters are outside the graph (for evaluation).
    pub fn detached(&self) -> NetBlock {
        let mut b = self.clone();
        for l in &mut b.lins {
            if let Lin::Student(s) = l {
                s.w = s.w.clone().detach();
                s.s = s.s.clone().detach();
            }
        }
        b.attn_norm = b.attn_norm.detach();
        b.mlp_norm = b.mlp_norm.detach();
        b
    }

    /// `x: [B·L, hidden]` (B sequences of L tokens, token-major) -> `[B·L, hidden]`.
    pub fn forward(&self, x: Tensor<2>, b: usize, sh: &Shape, k: &SeqConsts) -> Tensor<2> {
        let n = x.dims()[0];
        let l = n / b;
        let (nh, nkv, d) = (sh.heads, sh.kv_heads, sh.head_dim);
        let h = rms_norm(x.clone(), &self.attn_norm, sh.eps);
        let heads = |t: Tensor<2>, m: usize| t.reshape([b, l, m, d]).swap_dims(1, 2);
        let mut q = heads(self.lins[0].forward(h.clone()), nh);
        let mut kk = heads(self.lins[1].forward(h.clone()), nkv);
        let v = heads(self.lins[2].forward(h), nkv);
        if self.use_rope {
            q = rope(q, k);
            kk = rope(kk, k);
        }
        let rep = nh / nkv;
        let widen = |t: Tensor<4>| {
            if rep == 1 {
                t
            } else {
                t.unsqueeze_dim::<5>(2)
                    .expand([b, nkv, rep, l, d])
                    .reshape([b, nh, l, d])
            }
        };
        let (kk, v) = (widen(kk), widen(v));
        let scores = q
            .matmul(kk.swap_dims(2, 3))
            .mul_scalar(1.0 / (d as f64).sqrt())
            .add(k.mask.clone());
        let att = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([n, nh * d]);
        let x = x.add(self.lins[3].forward(att));
        let h = rms_norm(x.clone(), &self.mlp_norm, sh.eps);
        let g = self.lins[4].forward(h.clone());
        let u = self.lins[5].forward(h);
        x.add(self.lins[6].forward(silu(g).mul(u)))
    }
}

/// The frozen parts of the model: embedding (host rows), final norm and head.
pub(crate) struct Frozen {
    pub embed: Vec<f32>,
    pub norm: Tensor<1>,
    /// `[hidden, vocab]`.
    pub head: Tensor<2>,
}

impl Frozen {
    /// Embedding rows for `tokens`, `[tokens.len(), hidden]` on `device`.
    pub fn embed(&self, tokens: &[u32], hidden: usize, device: &Device) -> Tensor<2> {
        let mut x = Vec::with_capacity(tokens.len() * hidden);
        for &t in tokens {
            let t = t as usize;
            x.extend_from_slice(&self.embed[t * hidden..(t + 1) * hidden]);
        }
        Tensor::from_data(TensorData::new(x, [tokens.len(), hidden]), device)
    }

    /// Final norm and head: `[N, hidden]` -> `[N, vocab]`.
    pub fn logits(&self, x: Tensor<2>, eps: f64) -> Tensor<2> {
        rms_norm(x, &self.norm, eps).matmul(self.head.clone())
    }
}

/// Check that the teacher is a model this network implements.
pub(crate) fn check_teacher(md: &ModelDir) -> Result<(), DistillError> {
    let c = &md.config;
    let bad = |what: String| DistillError::Input {
        path: md.path.clone(),
        what,
    };
    if md.quant.is_some() {
        return Err(bad(
            "is already quantized; the teacher must be a full-precision checkpoint (smolbit convert)"
                .into(),
        ));
    }
    if c.arch.has_sub_norms() {
        return Err(bad(
            "BitNet architectures are ternary already; distill a Llama / SmolLM teacher".into(),
        ));
    }
    if c.hidden_act != smolbit_weights::config::HiddenAct::Silu {
        return Err(bad(format!(
            "hidden activation {:?} is not supported by distill (SiLU only)",
            c.hidden_act
        )));
    }
    Ok(())
}

/// Load the teacher's blocks (frozen) and frozen parts onto `device`.
pub(crate) fn load_teacher(
    md: &ModelDir,
    device: &Device,
) -> Result<(Vec<NetBlock>, Frozen), DistillError> {
    let c = &md.config;
    let load = |e: smolbit_weights::LoadError| DistillError::Load(Box::new(e));
    let vec1 = |name: &str, n: usize| -> Result<Tensor<1>, DistillError> {
        Ok(Tensor::from_data(
            TensorData::new(md.tensor_f32(name, &[n]).map_err(load)?, [n]),
            device,
        ))
    };
    let mut blocks = Vec::with_capacity(c.num_layers);
    for layer in 0..c.num_layers {
        let mut lins = Vec::with_capacity(7);
        for i in 0..7 {
            let (r, cols) = linear_shape(c, i);
            let w = md
                .linear_f32(&linear_name(layer, i), r, cols)
                .map_err(load)?;
            lins.push(Lin::Frozen(
                Tensor::<2>::from_data(TensorData::new(w, [r, cols]), device).transpose(),
            ));
        }
        blocks.push(NetBlock {
            attn_norm: vec1(
                &format!("model.layers.{layer}.input_layernorm.weight"),
                c.hidden_size,
            )?,
            mlp_norm: vec1(
                &format!("model.layers.{layer}.post_attention_layernorm.weight"),
                c.hidden_size,
            )?,
            lins,
            use_rope: c.rope_layers[layer],
        });
        md.weights.release();
    }
    let (v, h) = (c.vocab_size, c.hidden_size);
    let embed = md
        .linear_f32("model.embed_tokens.weight", v, h)
        .map_err(load)?;
    let head_rows = if c.tie_word_embeddings {
        embed.clone()
    } else {
        md.linear_f32("lm_head.weight", v, h).map_err(load)?
    };
    let head = Tensor::<2>::from_data(TensorData::new(head_rows, [v, h]), device).transpose();
    let norm = vec1("model.norm.weight", h)?;
    md.weights.release();
    Ok((blocks, Frozen { embed, norm, head }))
}

/// Whether a scheme can be distilled, and why not.
pub(crate) fn check_scheme(s: &Scheme) -> Result<(), String> {
    if s.calibrated || s.gptq || s.scales8 {
        return Err(format!(
            "scheme {s}: distill starts from the uncalibrated fit and learns the scales itself; \
             use it without :cal, :gptq and :s8"
        ));
    }
    Ok(())
}

/// Logits of the whole network for `b` sequences `tokens` (token-major, `b·L`).
pub(crate) fn forward_logits(
    blocks: &[NetBlock],
    frozen: &Frozen,
    sh: &Shape,
    tokens: &[u32],
    b: usize,
    k: &SeqConsts,
    device: &Device,
) -> Tensor<2> {
    let mut x = frozen.embed(tokens, sh.hidden, device);
    for blk in blocks {
        x = blk.forward(x, b, sh, k);
    }
    frozen.logits(x, sh.eps)
}

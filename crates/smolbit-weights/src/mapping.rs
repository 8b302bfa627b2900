//! Tensor names: Hugging Face <-> GGUF, as one table (llama.cpp's `tensor_mapping.py` for the
//! llama family; BitNet's sub-norms as transformers' `BitNetForCausalLM` and llama.cpp's and
//! bitnet.cpp's `bitnet*` architectures name them), and the list of tensors a decoder needs.

use crate::config::ModelConfig;

/// What a tensor is, independent of file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Token embedding `[vocab, hidden]`.
    Embed,
    /// Final RMSNorm weight `[hidden]`.
    FinalNorm,
    /// Output head `[vocab, hidden]` (absent when tied).
    Head,
    /// Per-layer tensor.
    Layer(LayerRole),
}

/// Per-layer tensors of a Llama-family block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum LayerRole {
    AttnNorm,
    Q,
    K,
    V,
    O,
    MlpNorm,
    Gate,
    Up,
    Down,
    /// BitNet's RMSNorm over the attention output, before `o_proj`.
    AttnSubNorm,
    /// BitNet's RMSNorm over `act(gate) * up`, before `down_proj`.
    FfnSubNorm,
}

impl LayerRole {
    /// The seven projections (the linears a ternary checkpoint packs), as opposed to norms.
    pub fn is_linear(self) -> bool {
        !matches!(
            self,
            LayerRole::AttnNorm
                | LayerRole::MlpNorm
                | LayerRole::AttnSubNorm
                | LayerRole::FfnSubNorm
        )
    }

    fn sub_norm(self) -> bool {
        matches!(self, LayerRole::AttnSubNorm | LayerRole::FfnSubNorm)
    }
}

/// `(role, HF name, GGUF name)`; `{}` stands for the layer index.
const TABLE: &[(Role, &str, &str)] = &[
    (
        Role::Embed,
        "model.embed_tokens.weight",
        "token_embd.weight",
    ),
    (Role::FinalNorm, "model.norm.weight", "output_norm.weight"),
    (Role::Head, "lm_head.weight", "output.weight"),
    (
        Role::Layer(LayerRole::AttnNorm),
        "model.layers.{}.input_layernorm.weight",
        "blk.{}.attn_norm.weight",
    ),
    (
        Role::Layer(LayerRole::Q),
        "model.layers.{}.self_attn.q_proj.weight",
        "blk.{}.attn_q.weight",
    ),
    (
        Role::Layer(LayerRole::K),
        "model.layers.{}.self_attn.k_proj.weight",
        "blk.{}.attn_k.weight",
    ),
    (
        Role::Layer(LayerRole::V),
        "model.layers.{}.self_attn.v_proj.weight",
        "blk.{}.attn_v.weight",
    ),
    (
        Role::Layer(LayerRole::O),
        "model.layers.{}.self_attn.o_proj.weight",
        "blk.{}.attn_output.weight",
    ),
    (
        Role::Layer(LayerRole::MlpNorm),
        "model.layers.{}.post_attention_layernorm.weight",
        "blk.{}.ffn_norm.weight",
    ),
    (
        Role::Layer(LayerRole::Gate),
        "model.layers.{}.mlp.gate_proj.weight",
        "blk.{}.ffn_gate.weight",
    ),
    (
        Role::Layer(LayerRole::Up),
        "model.layers.{}.mlp.up_proj.weight",
        "blk.{}.ffn_up.weight",
    ),
    (
        Role::Layer(LayerRole::Down),
        "model.layers.{}.mlp.down_proj.weight",
        "blk.{}.ffn_down.weight",
    ),
    (
        Role::Layer(LayerRole::AttnSubNorm),
        "model.layers.{}.self_attn.attn_sub_norm.weight",
        "blk.{}.attn_sub_norm.weight",
    ),
    (
        Role::Layer(LayerRole::FfnSubNorm),
        "model.layers.{}.mlp.ffn_sub_norm.weight",
        "blk.{}.ffn_sub_norm.weight",
    ),
];

/// One tensor the decoder needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    /// What it is.
    pub role: Role,
    /// Layer index for per-layer tensors.
    pub layer: Option<usize>,
    /// Name in a Hugging Face checkpoint.
    pub hf_name: String,
    /// Name in a GGUF file.
    pub gguf_name: String,
    /// Expected shape, outermost first (PyTorch order).
    pub shape: Vec<usize>,
}

/// Every tensor a decoder with this config needs, in a stable order (HF checkpoint order).
pub fn needed_tensors(c: &ModelConfig) -> Vec<Needed> {
    let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let shape = |role: Role| -> Vec<usize> {
        match role {
            Role::Embed | Role::Head => vec![v, h],
            Role::FinalNorm => vec![h],
            Role::Layer(l) => match l {
                LayerRole::AttnNorm | LayerRole::MlpNorm => vec![h],
                LayerRole::Q => vec![q, h],
                LayerRole::K | LayerRole::V => vec![kv, h],
                LayerRole::O => vec![h, q],
                LayerRole::Gate | LayerRole::Up => vec![f, h],
                LayerRole::Down => vec![h, f],
                LayerRole::AttnSubNorm => vec![q],
                LayerRole::FfnSubNorm => vec![f],
            },
        }
    };
    let mut out = Vec::new();
    for &(role, hf, gg) in TABLE {
        match role {
            Role::Layer(_) => {}
            Role::Head if c.tie_word_embeddings => {}
            _ => out.push(Needed {
                role,
                layer: None,
                hf_name: hf.to_string(),
                gguf_name: gg.to_string(),
                shape: shape(role),
            }),
        }
    }
    for i in 0..c.num_layers {
        for &(role, hf, gg) in TABLE {
            if let Role::Layer(l) = role {
                if l.sub_norm() && !c.arch.has_sub_norms() {
                    continue;
                }
                out.push(Needed {
                    role,
                    layer: Some(i),
                    hf_name: hf.replace("{}", &i.to_string()),
                    gguf_name: gg.replace("{}", &i.to_string()),
                    shape: shape(role),
                });
            }
        }
    }
    out
}

/// What the HF tensor `name` is (`model.layers.3.mlp.up_proj.weight` is `Layer(Up)`), if it is
/// one the decoder uses.
pub fn role_of(name: &str) -> Option<Role> {
    TABLE
        .iter()
        .find_map(|&(role, hf, _)| match hf.split_once("{}") {
            None => (hf == name).then_some(role),
            Some((pre, post)) => {
                let mid = name.strip_prefix(pre)?.strip_suffix(post)?;
                (!mid.is_empty() && mid.bytes().all(|b| b.is_ascii_digit())).then_some(role)
            }
        })
}

/// Whether the HF tensor `name` is the weight of a linear layer: a block projection or the
/// output head.
pub fn is_linear_weight(name: &str) -> bool {
    matches!(role_of(name), Some(Role::Head))
        || matches!(role_of(name), Some(Role::Layer(l)) if l.is_linear())
}

/// The HF name of a per-layer tensor.
pub fn hf_name(role: Role, layer: Option<usize>) -> String {
    TABLE
        .iter()
        .find(|(r, _, _)| *r == role)
        .map(|(_, hf, _)| hf.replace("{}", &layer.unwrap_or(0).to_string()))
        .unwrap_or_default()
}

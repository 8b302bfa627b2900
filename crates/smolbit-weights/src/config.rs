//! Model configuration: a serde mirror of Hugging Face `config.json` ([`HfConfig`]) resolved into
//! [`ModelConfig`], which has no optional fields and refuses features smolbit does not implement.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

/// The decoder families smolbit runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    /// `LlamaForCausalLM` (SmolLM, SmolLM2).
    Llama,
    /// `SmolLM3ForCausalLM`: Llama with no-RoPE layers.
    SmolLM3,
    /// `BitNetForCausalLM` (BitNet b1.58 2B4T): Llama with an RMSNorm over the attention output
    /// before `o_proj` (`attn_sub_norm`) and one over the MLP's inner activations before
    /// `down_proj` (`ffn_sub_norm`), relu² by default.
    BitNet,
}

impl Arch {
    /// The `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::SmolLM3 => "smollm3",
            Arch::BitNet => "bitnet",
        }
    }

    /// Whether blocks have BitNet's sub-norms (before `o_proj` and before `down_proj`).
    pub fn has_sub_norms(self) -> bool {
        self == Arch::BitNet
    }

    /// The `architectures[0]` class name.
    pub fn class_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::SmolLM3 => "SmolLM3ForCausalLM",
            Arch::BitNet => "BitNetForCausalLM",
        }
    }
}

/// The MLP's gate activation: `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HiddenAct {
    /// `x * sigmoid(x)` (Llama, SmolLM).
    #[default]
    Silu,
    /// `relu(x)²` (BitNet b1.58): never run in f16, whose range it overflows.
    Relu2,
}

impl HiddenAct {
    /// transformers' name (`hidden_act`).
    pub fn name(self) -> &'static str {
        match self {
            HiddenAct::Silu => "silu",
            HiddenAct::Relu2 => "relu2",
        }
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid JSON, or a field of the wrong type.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A valid config that asks for something smolbit does not implement.
    #[error("{path}: unsupported: {what}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The feature.
        what: String,
    },
    /// Values that contradict each other (heads not dividing the hidden size, ...).
    #[error("{path}: invalid: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// RoPE parameters as transformers 5 writes them (`rope_parameters`) or as `rope_scaling` was.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct RopeParameters {
    /// `default`, `linear`, `llama3`, `yarn`, ...
    #[serde(default)]
    pub rope_type: Option<String>,
    /// Older spelling of `rope_type`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Base frequency.
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

/// Mirror of the `config.json` fields smolbit reads; unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
#[allow(missing_docs)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    pub rope_parameters: Option<RopeParameters>,
    pub rope_scaling: Option<RopeParameters>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: Option<bool>,
    pub hidden_act: Option<String>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub no_rope_layers: Option<Vec<u8>>,
    pub no_rope_layer_interval: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<Json>,
    pub pad_token_id: Option<u32>,
}

/// A fully resolved decoder configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Family.
    pub arch: Arch,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// The MLP's gate activation.
    #[serde(default)]
    pub hidden_act: HiddenAct,
    /// Decoder blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Whether each layer applies RoPE (false for SmolLM3's no-RoPE layers).
    pub rope_layers: Vec<bool>,
    /// Context length the model was trained for.
    pub max_position_embeddings: usize,
    /// Output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (possibly several).
    pub eos_token_ids: Vec<u32>,
    /// Padding token, if any.
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    /// Parameters of the model: embedding (counted once when tied to the output head), output
    /// head, attention and MLP projections, and norms.
    pub fn parameter_count(&self) -> u64 {
        let (h, i, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let q = (self.num_heads * self.head_dim) as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let sub_norms = if self.arch.has_sub_norms() { q + i } else { 0 };
        let layer = h * q * 2 + h * kv * 2 + 3 * h * i + 2 * h + sub_norms;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + head + self.num_layers as u64 * layer + h
    }

    /// Read and resolve `<dir>/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_json_str(&text, &path)
    }

    /// Parse and resolve config.json text; `path` is only used in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let hf: HfConfig = serde_json::from_str(text).map_err(|source| ConfigError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        hf.resolve(path)
    }

    /// The config.json that transformers reads for this model (both RoPE spellings, so older and
    /// newer transformers agree).
    pub fn to_hf_json(&self, dtype: &str) -> Json {
        let mut c = json!({
            "architectures": [self.arch.class_name()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": self.hidden_act.name(),
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() {
                [one] => json!(one),
                many => json!(many),
            },
            "pad_token_id": self.pad_token_id,
            "dtype": dtype,
            "torch_dtype": dtype,
        });
        if self.arch == Arch::SmolLM3 {
            c["no_rope_layers"] = json!(
                self.rope_layers
                    .iter()
                    .map(|&r| u8::from(r))
                    .collect::<Vec<_>>()
            );
            c["use_sliding_window"] = json!(false);
            c["sliding_window"] = Json::Null;
        }
        c
    }
}

impl HfConfig {
    /// Check and resolve into a [`ModelConfig`].
    pub fn resolve(self, path: &Path) -> Result<ModelConfig, ConfigError> {
        let unsupported = |what: String| ConfigError::Unsupported {
            path: path.to_path_buf(),
            what,
        };
        let invalid = |what: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        let model_type = self
            .model_type
            .clone()
            .or_else(|| {
                self.architectures
                    .iter()
                    .flatten()
                    .next()
                    .map(|a| match a.as_str() {
                        "LlamaForCausalLM" => "llama".to_string(),
                        "SmolLM3ForCausalLM" => "smollm3".to_string(),
                        "BitNetForCausalLM" => "bitnet".to_string(),
                        other => other.to_string(),
                    })
            })
            .unwrap_or_default();
        // 1bitLLM's bitnet_b1_58 checkpoints say "llama" but are another model: their own
        // `BitnetForCausalLM` code ternarizes full-precision weights at run time and adds
        // sub-norms named `inner_attn_ln` / `ffn_layernorm`. Running them as Llama would give
        // fluent garbage, so they are refused by name.
        if self
            .architectures
            .iter()
            .flatten()
            .any(|a| a == "BitnetForCausalLM")
        {
            return Err(unsupported(
                "1bitLLM's BitnetForCausalLM (custom modeling code with full-precision weights \
                 ternarized at run time); convert it with llama.cpp's convert_hf_to_gguf.py to a \
                 TQ1_0/TQ2_0 GGUF (architecture 'bitnet') and convert that with `smolbit convert`"
                    .into(),
            ));
        }
        let arch = match model_type.as_str() {
            "llama" => Arch::Llama,
            "smollm3" => Arch::SmolLM3,
            "bitnet" => Arch::BitNet,
            other => {
                return Err(unsupported(format!(
                    "model_type '{other}' (supported: llama, smollm3, bitnet)"
                )));
            }
        };
        let hidden_act = match self.hidden_act.as_deref() {
            None if arch == Arch::BitNet => HiddenAct::Relu2,
            None | Some("silu") => HiddenAct::Silu,
            Some("relu2") => HiddenAct::Relu2,
            Some(act) => {
                return Err(unsupported(format!(
                    "hidden_act '{act}' (supported: silu, relu2)"
                )));
            }
        };
        if self.attention_bias == Some(true) || self.mlp_bias == Some(true) {
            return Err(unsupported("attention_bias / mlp_bias".into()));
        }
        if self.use_sliding_window == Some(true) {
            return Err(unsupported("use_sliding_window".into()));
        }
        for rp in [&self.rope_parameters, &self.rope_scaling]
            .into_iter()
            .flatten()
        {
            let ty = rp
                .rope_type
                .as_deref()
                .or(rp.kind.as_deref())
                .unwrap_or("default");
            if ty != "default" {
                return Err(unsupported(format!("rope type '{ty}' (only default RoPE)")));
            }
        }
        let rope_theta = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0);
        let n_heads = self.num_attention_heads;
        let n_kv = self.num_key_value_heads.unwrap_or(n_heads);
        if n_heads == 0 || n_kv == 0 || !n_heads.is_multiple_of(n_kv) {
            return Err(invalid(format!(
                "num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv}"
            )));
        }
        let head_dim = match self.head_dim {
            Some(h) => h,
            None if self.hidden_size.is_multiple_of(n_heads) => self.hidden_size / n_heads,
            None => {
                return Err(invalid(format!(
                    "hidden_size {} is not divisible by num_attention_heads {n_heads}",
                    self.hidden_size
                )));
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(invalid(format!(
                "head_dim {head_dim} must be even and non-zero"
            )));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return Err(invalid(
                "vocab_size, hidden_size and num_hidden_layers must be non-zero".into(),
            ));
        }
        let n_layers = self.num_hidden_layers;
        if arch.has_sub_norms() && n_heads * head_dim != self.hidden_size {
            return Err(unsupported(format!(
                "bitnet with num_attention_heads * head_dim = {} != hidden_size {} (transformers \
                 sizes attn_sub_norm by hidden_size)",
                n_heads * head_dim,
                self.hidden_size
            )));
        }
        let rope_layers = match arch {
            Arch::Llama | Arch::BitNet => vec![true; n_layers],
            Arch::SmolLM3 => match &self.no_rope_layers {
                Some(v) if v.len() == n_layers => v.iter().map(|&x| x != 0).collect(),
                Some(v) => {
                    return Err(invalid(format!(
                        "no_rope_layers has {} entries for {n_layers} layers",
                        v.len()
                    )));
                }
                None => {
                    let interval = self.no_rope_layer_interval.unwrap_or(4);
                    if interval == 0 {
                        return Err(invalid("no_rope_layer_interval is 0".into()));
                    }
                    (0..n_layers).map(|i| (i + 1) % interval != 0).collect()
                }
            },
        };
        let eos_token_ids = match &self.eos_token_id {
            None | Some(Json::Null) => vec![],
            Some(Json::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(Json::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            Some(other) => {
                return Err(invalid(format!(
                    "eos_token_id {other} is not an id or list of ids"
                )));
            }
        };
        Ok(ModelConfig {
            arch,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            hidden_act,
            num_layers: n_layers,
            num_heads: n_heads,
            num_kv_heads: n_kv,
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            rope_layers,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(arch == Arch::SmolLM3),
            bos_token_id: self.bos_token_id,
            eos_token_ids,
            pad_token_id: self.pad_token_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str, expect: Result<(f64, Vec<bool>, usize), &str>) {
        let got = ModelConfig::from_json_str(json, Path::new("config.json"));
        match (got, expect) {
            (Ok(c), Ok((theta, rope, hd))) => {
                assert_eq!(c.rope_theta, theta);
                assert_eq!(c.rope_layers, rope);
                assert_eq!(c.head_dim, hd);
            }
            (Err(e), Err(msg)) => {
                let e = e.to_string();
                assert!(e.starts_with("config.json: ") && e.contains(msg), "{e}");
            }
            (got, expect) => panic!("got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn parameter_count_matches_transformers() {
        // transformers 5.24 `AutoModelForCausalLM.from_pretrained(d).num_parameters()` on the
        // fixtures (tied embeddings counted once), and SmolLM2-135M's published 134,515,008.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
        for (dir, n) in [("tiny-llama", 155_968), ("tiny-smollm3", 45_344)] {
            let c = ModelConfig::from_dir(&root.join(dir)).expect("fixture config");
            assert_eq!(c.parameter_count(), n, "{dir}");
        }
        let smollm2 = r#"{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 8192, "tie_word_embeddings": true}"#;
        let c = ModelConfig::from_json_str(smollm2, Path::new("config.json")).expect("parses");
        assert_eq!(c.parameter_count(), 134_515_008);
        // BitNet b1.58 2B4T: 2,412,820,480 parameters as its `-bf16` config states (sub-norms
        // included, tied head counted once); relu² by default.
        let bitnet = r#"{"architectures": ["BitNetForCausalLM"], "vocab_size": 128256,
            "hidden_size": 2560, "intermediate_size": 6912, "num_hidden_layers": 30,
            "num_attention_heads": 20, "num_key_value_heads": 5, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 4096, "tie_word_embeddings": true, "rope_theta": 500000.0}"#;
        let c = ModelConfig::from_json_str(bitnet, Path::new("config.json")).expect("parses");
        assert_eq!((c.arch, c.hidden_act), (Arch::BitNet, HiddenAct::Relu2));
        assert_eq!(c.parameter_count(), 2_412_820_480);
    }

    const BASE: &str = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 4, "num_attention_heads": 2, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 32"#;

    #[test]
    fn rope_spellings_and_no_rope_layers() {
        let all = vec![true; 4];
        check(
            &format!(r#"{{"model_type": "llama", {BASE}}}"#),
            Ok((10000.0, all.clone(), 4)),
        );
        check(
            &format!(r#"{{"model_type": "llama", "rope_theta": 5e5, {BASE}}}"#),
            Ok((5e5, all.clone(), 4)),
        );
        check(
            &format!(
                r#"{{"model_type": "llama", "rope_parameters": {{"rope_type": "default", "rope_theta": 7.0}}, {BASE}}}"#
            ),
            Ok((7.0, all.clone(), 4)),
        );
        check(
            &format!(r#"{{"model_type": "smollm3", "head_dim": 6, {BASE}}}"#),
            Ok((10000.0, vec![true, true, true, false], 6)),
        );
        check(
            &format!(r#"{{"model_type": "smollm3", "no_rope_layers": [0, 1, 0, 1], {BASE}}}"#),
            Ok((10000.0, vec![false, true, false, true], 4)),
        );
        check(
            &format!(r#"{{"model_type": "smollm3", "no_rope_layer_interval": 2, {BASE}}}"#),
            Ok((10000.0, vec![true, false, true, false], 4)),
        );
    }

    #[test]
    fn refusals() {
        check(
            &format!(r#"{{"model_type": "gpt2", {BASE}}}"#),
            Err("unsupported: model_type 'gpt2'"),
        );
        check(
            &format!(
                r#"{{"model_type": "llama", "rope_scaling": {{"rope_type": "llama3"}}, {BASE}}}"#
            ),
            Err("rope type 'llama3'"),
        );
        check(
            &format!(
                r#"{{"model_type": "llama", "rope_parameters": {{"rope_type": "yarn", "rope_theta": 1.0}}, {BASE}}}"#
            ),
            Err("rope type 'yarn'"),
        );
        check(
            &format!(r#"{{"model_type": "llama", "num_key_value_heads": 3, {BASE}}}"#),
            Err("not a multiple"),
        );
        check(
            &format!(r#"{{"model_type": "smollm3", "no_rope_layers": [1], {BASE}}}"#),
            Err("no_rope_layers has 1"),
        );
        check(r#"{"model_type": "llama"}"#, Err("missing field"));
        check(
            &format!(r#"{{"model_type": "llama", "hidden_act": "gelu", {BASE}}}"#),
            Err("hidden_act 'gelu'"),
        );
        check(
            &format!(
                r#"{{"model_type": "llama", "architectures": ["BitnetForCausalLM"], {BASE}}}"#
            ),
            Err("1bitLLM's BitnetForCausalLM"),
        );
    }
}

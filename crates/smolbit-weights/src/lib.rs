//! Checkpoint I/O for smolbit: the only crate that touches model files.
//!
//! - [`gguf`]: a memory-mapped GGUF (v2/v3) reader with every metadata type, and
//!   [`dequant`]: F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K to f32.
//! - [`safetensors`]: memory-mapped (sharded) reading and streaming writing.
//! - [`config`]: HF `config.json` mirror resolved into [`config::ModelConfig`].
//! - [`mapping`]: the HF <-> GGUF tensor-name table.
//! - [`tokenizer`]: `tokenizer.json` rebuilt from a GGUF's BPE metadata.
//! - [`convert`]: GGUF or HF directory -> normalized HF directory.
//! - [`quantize`]: ternary checkpoints (packed trits + scales) written and read back.
//! - [`blocked`]: 8- and 4-bit checkpoints (a binary16 step per 32 columns, as Q8_0/Q4_0).
//! - [`native`]: natively ternary checkpoints in transformers' BitNet format (BitNet b1.58
//!   2B4T, Falcon3-1.58bit), read straight into trits and scales.
//! - [`ModelDir`]: what the model crate loads from.
//!
//! This crate knows nothing about burn or about inference.

pub mod blocked;
pub mod cache;
pub mod config;
pub mod convert;
pub mod dequant;
pub mod gguf;
pub mod keys;
pub mod mapping;
pub mod native;
pub mod quantize;
pub mod safetensors;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use config::{Arch, ConfigError, ModelConfig};
pub use convert::{ConvertError, ConvertOptions, ConvertReport, convert};

/// Why a model directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The config is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The weights are unreadable.
    #[error(transparent)]
    Safetensors(#[from] safetensors::SafetensorsError),
    /// A tensor's shape contradicts the config.
    #[error("{path}: tensor '{name}' has shape {got:?}, config implies {expected:?}")]
    Shape {
        /// The model directory.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape in the file.
        got: Vec<usize>,
        /// Expected shape.
        expected: Vec<usize>,
    },
    /// A ternary checkpoint that cannot be read.
    #[error("{0}")]
    Quantized(String),
    /// The directory does not exist.
    #[error("{path}: not a model directory ({what})")]
    NotADir {
        /// The path.
        path: PathBuf,
        /// Why.
        what: String,
    },
}

/// How a directory's linears are stored, from config.json's `quantization_config`.
// Read once per directory and matched immediately: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Quantization {
    /// Floating point.
    None,
    /// `smolbit quantize` (or `smolbit convert` of a ternary GGUF).
    Smolbit(quantize::QuantConfig),
    /// transformers' BitNet format.
    BitNet(native::HfBitNet),
}

fn read_quant_config(dir: &Path) -> Result<Quantization, LoadError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
        path: path.clone(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
        path: path.clone(),
        source,
    })?;
    let Some(q) = v.get("quantization_config") else {
        return Ok(Quantization::None);
    };
    match q.get("quant_method").and_then(|m| m.as_str()) {
        Some("smolbit") => serde_json::from_value(q.clone())
            .map(Quantization::Smolbit)
            .map_err(|source| ConfigError::Json { path, source }.into()),
        Some("bitnet") => Ok(Quantization::BitNet(native::HfBitNet::from_json(q, &path)?)),
        other => Err(ConfigError::Unsupported {
            path,
            what: format!(
                "quantization method {}",
                other.map_or("(none)".to_string(), |m| format!("'{m}'"))
            ),
        }
        .into()),
    }
}

/// A Hugging Face style model directory: resolved config plus memory-mapped weights.
#[derive(Debug)]
pub struct ModelDir {
    /// The directory.
    pub path: PathBuf,
    /// Resolved config.
    pub config: ModelConfig,
    /// The weights.
    pub weights: safetensors::SafeTensors,
    /// `quantization_config` of a ternary checkpoint (for transformers' BitNet format, a
    /// description in smolbit's terms: `b158`, int8 activations).
    pub quant: Option<quantize::QuantConfig>,
    /// transformers' BitNet format, when the checkpoint is in it.
    pub bitnet: Option<native::HfBitNet>,
}

impl ModelDir {
    /// Open `dir/config.json` and its safetensors weights.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::NotADir {
                path: dir.to_path_buf(),
                what: if dir.exists() {
                    "a file; convert it first with `smolbit convert`".into()
                } else {
                    "does not exist".into()
                },
            });
        }
        let config = ModelConfig::from_dir(dir)?;
        let quant = read_quant_config(dir)?;
        let weights = safetensors::SafeTensors::open_dir(dir)?;
        let (quant, bitnet) = match quant {
            Quantization::None => (None, None),
            Quantization::Smolbit(q) => (Some(q), None),
            Quantization::BitNet(b) => (
                Some(quantize::QuantConfig {
                    quant_method: "bitnet".into(),
                    scheme: "b158:tensor:a8".into(),
                    planes: 1,
                    granularity: "tensor".into(),
                    activations: "int8".into(),
                    packing: match b.mode {
                        native::Mode::Offline => "hf-bitnet".into(),
                        native::Mode::Online => "online".into(),
                    },
                    calibrated: false,
                    modules_not_converted: b.modules_to_not_convert.clone(),
                    bits_per_weight: b.bits_per_weight(&config, &weights),
                    source: Some(b.describe()),
                    pre_norm_eps: b.use_rms_norm.then_some(b.rms_norm_eps),
                    distillation: None,
                }),
                Some(b),
            ),
        };
        Ok(ModelDir {
            path: dir.to_path_buf(),
            config,
            weights,
            quant,
            bitnet,
        })
    }

    /// Whether the linear `name` is stored ternary (and so runs on the ternary kernels with
    /// the checkpoint's activations).
    pub fn is_ternary(&self, name: &str) -> bool {
        match (&self.bitnet, &self.quant) {
            (Some(b), _) => b.converts(name),
            (None, Some(_)) => {
                !self.weights.contains(name)
                    && self.weights.contains(&format!(
                        "{}.trits",
                        name.strip_suffix(".weight").unwrap_or(name)
                    ))
            }
            (None, None) => false,
        }
    }

    /// The RMSNorm (weight `[cols]`, epsilon) applied to the input of the linear `name` before
    /// it (transformers' BitNet `use_rms_norm`), if any.
    pub fn linear_pre_norm(
        &self,
        name: &str,
        cols: usize,
    ) -> Result<Option<(Vec<f32>, f64)>, LoadError> {
        if let Some(b) = &self.bitnet {
            return Ok(b
                .pre_norm(&self.weights, name, cols)?
                .map(|w| (w, b.rms_norm_eps)));
        }
        match self.quant.as_ref().and_then(|q| q.pre_norm_eps) {
            Some(eps) if self.is_ternary(name) => {
                let norm = format!(
                    "{}.rms_norm.weight",
                    name.strip_suffix(".weight").unwrap_or(name)
                );
                Ok(Some((self.tensor_f32(&norm, &[cols])?, eps)))
            }
            _ => Ok(None),
        }
    }

    /// A linear layer's weight `[rows, cols]` as f32: read directly, or unpacked and dequantized
    /// from a ternary checkpoint (the reference path; fast kernels keep weights packed).
    pub fn linear_f32(&self, name: &str, rows: usize, cols: usize) -> Result<Vec<f32>, LoadError> {
        if let Some(t) = self.linear_blocked(name, rows, cols)? {
            return Ok(t.dequantize());
        }
        match self.linear_ternary(name, rows, cols)? {
            Some(m) => Ok(m.dequantize()),
            None => self.tensor_f32(name, &[rows, cols]),
        }
    }

    /// A linear layer's ternary weight, still as trits and scales, when this checkpoint stores
    /// `name` quantized (`None` for floating-point weights).
    pub fn linear_ternary(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<smolbit_ternary::TernaryMatrix>, LoadError> {
        if let Some(b) = &self.bitnet {
            return if b.converts(name) {
                b.read_linear(&self.weights, name, rows, cols).map(Some)
            } else {
                Ok(None)
            };
        }
        match &self.quant {
            Some(qc) if !self.weights.contains(name) && qc.blocked_format().is_none() => {
                quantize::read_ternary(self, qc, name, rows, cols)
                    .map(Some)
                    .map_err(|e| LoadError::Quantized(e.to_string()))
            }
            _ => Ok(None),
        }
    }

    /// A linear layer's 8- or 4-bit table, when this is a blocked checkpoint (`q8`, `q4`)
    /// that stores `name` quantized.
    pub fn linear_blocked(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<blocked::BlockedTable>, LoadError> {
        match self.quant.as_ref().and_then(|q| q.blocked_format()) {
            Some(f) if !self.weights.contains(name) => {
                blocked::read_blocked(self, f, name, rows, cols)
                    .map(Some)
                    .map_err(|e| LoadError::Quantized(e.to_string()))
            }
            _ => Ok(None),
        }
    }

    /// A tensor as f32 (row-major), checked against `shape`.
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        self.check_shape(name, shape)?;
        Ok(self.weights.to_f32(name)?)
    }

    /// An error unless the stored tensor `name` exists with `shape`.
    pub fn check_shape(&self, name: &str, shape: &[usize]) -> Result<(), LoadError> {
        let e = self.weights.entry(name)?;
        if e.shape != shape {
            return Err(LoadError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                got: e.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(())
    }
}

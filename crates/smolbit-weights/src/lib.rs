//! Checkpoint I/O for smolbit: the only crate that touches model files.
//!
//! - [`gguf`]: a memory-mapped GGUF (v2/v3) reader with every metadata type, and
//!   [`dequant`]: F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K to f32.
//! - [`safetensors`]: memory-mapped (sharded) reading and streaming writing.
//! - [`config`]: HF `config.json` mirror resolved into [`config::ModelConfig`].
//! - [`mapping`]: the HF <-> GGUF tensor-name table.
//! - [`tokenizer`]: `tokenizer.json` rebuilt from a GGUF's BPE metadata.
//! - [`convert`]: GGUF or HF directory -> normalized HF directory.
//! - [`ModelDir`]: what the model crate loads from.
//!
//! This crate knows nothing about burn or about inference.

pub mod cache;
pub mod config;
pub mod convert;
pub mod dequant;
pub mod gguf;
pub mod keys;
pub mod mapping;
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
    /// The directory does not exist.
    #[error("{path}: not a model directory ({what})")]
    NotADir {
        /// The path.
        path: PathBuf,
        /// Why.
        what: String,
    },
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
        let weights = safetensors::SafeTensors::open_dir(dir)?;
        Ok(ModelDir {
            path: dir.to_path_buf(),
            config,
            weights,
        })
    }

    /// A tensor as f32 (row-major), checked against `shape`.
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let e = self.weights.entry(name)?;
        if e.shape != shape {
            return Err(LoadError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                got: e.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(self.weights.to_f32(name)?)
    }
}

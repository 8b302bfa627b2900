//! `smolbit convert`: a GGUF file or a Hugging Face directory in, a normalized Hugging Face
//! directory out (config.json, model.safetensors, tokenizer files), which every later stage reads
//! and HF transformers loads.
//!
//! The output is written to a temporary sibling directory and renamed into place at the end, so a
//! failure never leaves a half-written model behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::config::{Arch, ConfigError, ModelConfig};
use crate::gguf::{GgufError, GgufFile};
use crate::keys::{self, arch_key};
use crate::mapping::{self, LayerRole, Needed, Role};
use crate::safetensors::{self, Dtype, SafeTensors, SafetensorsError, TensorSpec};
use crate::tokenizer;

/// Files copied from a Hugging Face input directory when present.
const HF_SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading the GGUF failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// Reading or writing safetensors failed.
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    /// config.json is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The input is neither a GGUF file nor a model directory.
    #[error("{path}: {what}")]
    Input {
        /// The input path.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// Tensors the architecture needs are absent.
    #[error("{path}: missing tensors: {}", names.join(", "))]
    MissingTensors {
        /// The checkpoint.
        path: PathBuf,
        /// Names as the checkpoint spells them.
        names: Vec<String>,
    },
    /// A tensor whose shape contradicts the config.
    #[error("{path}: tensor '{name}' has shape {got:?}, config implies {expected:?}")]
    Shape {
        /// The checkpoint.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape in the file (outermost first).
        got: Vec<usize>,
        /// Shape the config implies.
        expected: Vec<usize>,
    },
    /// The output could not be written.
    #[error("{path}: {what}")]
    Output {
        /// The output path.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
}

/// Conversion settings.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Output element type; `None` keeps a HF input's dtype and writes f32 for GGUF input
    /// (dequantized values are exact in f32).
    pub dtype: Option<Dtype>,
    /// Replace an existing output directory.
    pub overwrite: bool,
}

/// What a conversion did (burn-store style: used, missing, left over).
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// The resolved model config.
    pub config: ModelConfig,
    /// Output tensor count.
    pub tensors_written: usize,
    /// Input tensors that were not needed (reported, not fatal).
    pub leftover: Vec<String>,
    /// Whether tokenizer files were written.
    pub tokenizer: bool,
    /// The output dtype.
    pub dtype: Dtype,
    /// Bytes of model.safetensors.
    pub bytes: u64,
}

/// Convert `input` (a `.gguf` file or a HF model directory) into a HF directory at `out`.
pub fn convert(
    input: &Path,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    write_dir_atomically(out, opts.overwrite, |staging| {
        if input.is_dir() {
            convert_hf(input, staging, opts)
        } else if input.is_file() {
            convert_gguf(input, staging, opts)
        } else {
            Err(ConvertError::Input {
                path: input.to_path_buf(),
                what: "no such file or directory".into(),
            })
        }
    })
}

/// Build an output directory atomically: refuse an existing `out` unless `overwrite`, let `build`
/// fill a staging directory beside it, then rename it into place; on failure remove the staging
/// directory so nothing half-written is left.
pub fn write_dir_atomically<T, E>(
    out: &Path,
    overwrite: bool,
    build: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<ConvertError>,
{
    if out.exists() && !overwrite {
        return Err(ConvertError::Output {
            path: out.to_path_buf(),
            what: "already exists (pass --force to replace it)".into(),
        }
        .into());
    }
    let staging = staging_dir(out)?;
    match build(&staging) {
        Ok(v) => {
            commit_dir(&staging, out)?;
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// A fresh temporary directory beside `out` (same filesystem, so the final rename is atomic).
pub fn staging_dir(out: &Path) -> Result<PathBuf, ConvertError> {
    let name = out.file_name().ok_or_else(|| ConvertError::Output {
        path: out.to_path_buf(),
        what: "output path has no directory name".into(),
    })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| ConvertError::Output {
        path: parent.clone(),
        what: format!("cannot create: {e}"),
    })?;
    let staging = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| ConvertError::Output {
        path: staging.clone(),
        what: format!("cannot create: {e}"),
    })?;
    Ok(staging)
}

/// Move a finished staging directory to `out`, replacing what was there.
pub fn commit_dir(staging: &Path, out: &Path) -> Result<(), ConvertError> {
    let err = |what: String| ConvertError::Output {
        path: out.to_path_buf(),
        what,
    };
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| err(format!("cannot replace: {e}")))?;
    }
    std::fs::rename(staging, out).map_err(|e| err(format!("cannot move output into place: {e}")))
}

/// Copy the tokenizer and generation files of a model directory that exist (`HF_SIDE_FILES`);
/// returns whether `tokenizer.json` was among them.
pub(crate) fn copy_side_files(from: &Path, to: &Path) -> Result<bool, ConvertError> {
    let mut tokenizer = false;
    for f in HF_SIDE_FILES {
        let src = from.join(f);
        if src.is_file() {
            std::fs::copy(&src, to.join(f)).map_err(|e| ConvertError::Output {
                path: to.join(f),
                what: format!("cannot copy {}: {e}", src.display()),
            })?;
            tokenizer |= *f == "tokenizer.json";
        }
    }
    Ok(tokenizer)
}

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ConvertError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ConvertError::Output {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    std::fs::write(path, text + "\n").map_err(|e| ConvertError::Output {
        path: path.to_path_buf(),
        what: e.to_string(),
    })
}

fn st_metadata(source: &Path) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "converter".to_string(),
            format!("smolbit {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "source".to_string(),
            source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    ])
}

// ------------------------------------------------------------------------------------- GGUF

/// The model config a GGUF's metadata describes.
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig, ConvertError> {
    let arch_name = g.require_str(keys::GENERAL_ARCHITECTURE)?;
    let arch = match arch_name {
        "llama" => Arch::Llama,
        "smollm3" => Arch::SmolLM3,
        other => {
            return Err(ConvertError::Input {
                path: g.path().to_path_buf(),
                what: format!("unsupported architecture '{other}' (supported: llama, smollm3)"),
            });
        }
    };
    let k = |key: &str| arch_key(arch_name, key);
    let invalid = |what: String| ConvertError::Input {
        path: g.path().to_path_buf(),
        what,
    };
    let as_usize =
        |key: &str| -> Result<usize, ConvertError> { Ok(g.require_u64(&k(key))? as usize) };
    let hidden = as_usize(keys::EMBEDDING_LENGTH)?;
    let n_layers = as_usize(keys::BLOCK_COUNT)?;
    let n_heads = as_usize(keys::HEAD_COUNT)?;
    let n_kv = match g.get(&k(keys::HEAD_COUNT_KV)) {
        Some(_) => as_usize(keys::HEAD_COUNT_KV)?,
        None => n_heads,
    };
    if n_heads == 0 || hidden == 0 || n_layers == 0 || n_layers > 4096 || hidden > 1 << 20 {
        return Err(invalid(format!(
            "implausible sizes: {n_layers} layers, {n_heads} heads, hidden {hidden}"
        )));
    }
    let head_dim = match g.get(&k(keys::KEY_LENGTH)) {
        Some(_) => as_usize(keys::KEY_LENGTH)?,
        None => hidden / n_heads,
    };
    if let Some(v) = g.get(&k(keys::ROPE_DIMENSION_COUNT)) {
        let rot = v.as_u64().unwrap_or(0) as usize;
        if rot != head_dim {
            return Err(invalid(format!(
                "partial rotary embeddings ({} = {rot}, head dim {head_dim}) are not supported",
                k(keys::ROPE_DIMENSION_COUNT)
            )));
        }
    }
    if let Some(v) = g.get(&k(keys::ROPE_SCALING_TYPE))
        && v.as_str() != Some("none")
    {
        return Err(invalid(format!("rope scaling {v} is not supported")));
    }
    if g.tensor("rope_freqs.weight").is_some() {
        return Err(invalid(
            "rope_freqs.weight (Llama 3 RoPE scaling) is not supported".into(),
        ));
    }
    let vocab = match g.get(&k(keys::VOCAB_SIZE)) {
        Some(_) => as_usize(keys::VOCAB_SIZE)?,
        None => match g.get(keys::TOKENIZER_TOKENS).and_then(|v| v.as_array()) {
            Some(t) => t.len(),
            None => g
                .tensor("token_embd.weight")
                .map(|t| t.dims.get(1).copied().unwrap_or(0) as usize)
                .unwrap_or(0),
        },
    };
    let tok_id = |key: &str| g.get(key).and_then(|v| v.as_u64()).map(|v| v as u32);
    let rope_layers = match arch {
        Arch::Llama => vec![true; n_layers],
        // llama.cpp's smollm3 graph skips RoPE on every 4th layer (n_no_rope_layer_step = 4).
        Arch::SmolLM3 => (0..n_layers).map(|i| (i + 1) % 4 != 0).collect(),
    };
    let hf = json!({
        "model_type": arch.model_type(),
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": as_usize(keys::FEED_FORWARD_LENGTH)?,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "rms_norm_eps": g.require_f64(&k(keys::RMS_EPS))?,
        "rope_theta": match g.get(&k(keys::ROPE_FREQ_BASE)) {
            Some(_) => g.require_f64(&k(keys::ROPE_FREQ_BASE))?,
            None => 10000.0,
        },
        "max_position_embeddings": as_usize(keys::CONTEXT_LENGTH)?,
        "tie_word_embeddings": g.tensor("output.weight").is_none(),
        "no_rope_layers": rope_layers.iter().map(|&r| u8::from(r)).collect::<Vec<_>>(),
        "bos_token_id": tok_id(keys::TOKENIZER_BOS_ID),
        "eos_token_id": tok_id(keys::TOKENIZER_EOS_ID),
        "pad_token_id": tok_id(keys::TOKENIZER_PAD_ID),
    });
    let text = hf.to_string();
    Ok(ModelConfig::from_json_str(&text, g.path())?)
}

/// Undo llama.cpp's q/k row permutation (`convert_hf_to_gguf.py` `LlamaModel.permute`): within
/// each head, GGUF row `2 * i + j` is HF row `j * (head_dim / 2) + i`.
pub fn unpermute_rows(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let head_rows = rows / n_head;
    let half = head_rows / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_rows + 2 * i + j;
                let dst = h * head_rows + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn check_tensors<'a>(
    path: &Path,
    needed: &'a [Needed],
    shape_of: impl Fn(&str) -> Option<Vec<usize>>,
    name_of: impl Fn(&'a Needed) -> &'a str,
) -> Result<(), ConvertError> {
    let missing: Vec<String> = needed
        .iter()
        .filter(|n| shape_of(name_of(n)).is_none())
        .map(|n| name_of(n).to_string())
        .collect();
    if !missing.is_empty() {
        return Err(ConvertError::MissingTensors {
            path: path.to_path_buf(),
            names: missing,
        });
    }
    for n in needed {
        let got = shape_of(name_of(n)).unwrap_or_default();
        if got != n.shape {
            return Err(ConvertError::Shape {
                path: path.to_path_buf(),
                name: name_of(n).to_string(),
                got,
                expected: n.shape.clone(),
            });
        }
    }
    Ok(())
}

fn convert_gguf(
    input: &Path,
    staging: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    let g = GgufFile::open(input)?;
    let config = config_from_gguf(&g)?;
    let needed = mapping::needed_tensors(&config);
    check_tensors(
        input,
        &needed,
        |name| g.tensor(name).map(|t| t.torch_shape()),
        |n| n.gguf_name.as_str(),
    )?;
    let used: std::collections::HashSet<&str> =
        needed.iter().map(|n| n.gguf_name.as_str()).collect();
    let leftover: Vec<String> = g
        .tensors
        .iter()
        .filter(|t| !used.contains(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect();

    let dtype = opts.dtype.unwrap_or(Dtype::F32);
    let specs: Vec<TensorSpec> = needed
        .iter()
        .map(|n| TensorSpec {
            name: n.hf_name.clone(),
            dtype,
            shape: n.shape.clone(),
        })
        .collect();
    let st_path = staging.join("model.safetensors");
    safetensors::write_streaming(&st_path, &specs, &st_metadata(input), |i, _| {
        let n = &needed[i];
        let info = g
            .tensor(&n.gguf_name)
            .ok_or_else(|| ConvertError::MissingTensors {
                path: input.to_path_buf(),
                names: vec![n.gguf_name.clone()],
            })?;
        let mut w = g.tensor_f32(info);
        let cols = n.shape.last().copied().unwrap_or(1);
        match n.role {
            Role::Layer(LayerRole::Q) => w = unpermute_rows(&w, config.num_heads, cols),
            Role::Layer(LayerRole::K) => w = unpermute_rows(&w, config.num_kv_heads, cols),
            _ => {}
        }
        Ok::<_, ConvertError>(safetensors::encode_f32(&w, dtype))
    })?;

    write_json(
        &staging.join("config.json"),
        &config.to_hf_json(dtype.torch_name()),
    )?;
    write_json(
        &staging.join("generation_config.json"),
        &json!({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_ids.first(),
                "pad_token_id": config.pad_token_id}),
    )?;
    let tok = tokenizer::from_gguf(&g, config.max_position_embeddings)?;
    if let Some(t) = &tok {
        write_json(&staging.join("tokenizer.json"), &t.tokenizer)?;
        write_json(&staging.join("tokenizer_config.json"), &t.tokenizer_config)?;
    }
    Ok(ConvertReport {
        config,
        tensors_written: specs.len(),
        leftover,
        tokenizer: tok.is_some(),
        dtype,
        bytes: std::fs::metadata(&st_path).map(|m| m.len()).unwrap_or(0),
    })
}

// ------------------------------------------------------------------------------------- HF

fn convert_hf(
    input: &Path,
    staging: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    let config = ModelConfig::from_dir(input)?;
    let st = SafeTensors::open_dir(input)?;
    let needed = mapping::needed_tensors(&config);
    check_tensors(
        input,
        &needed,
        |name| st.entry(name).ok().map(|e| e.shape.clone()),
        |n| n.hf_name.as_str(),
    )?;
    let used: std::collections::HashSet<&str> = needed.iter().map(|n| n.hf_name.as_str()).collect();
    let leftover: Vec<String> = st
        .names()
        .filter(|n| !used.contains(n))
        .map(String::from)
        .collect();
    let mut dtypes = Vec::new();
    let specs: Vec<TensorSpec> = needed
        .iter()
        .map(|n| {
            let src = st.entry(&n.hf_name).map(|e| e.dtype).unwrap_or(Dtype::F32);
            dtypes.push(src);
            TensorSpec {
                name: n.hf_name.clone(),
                dtype: opts.dtype.unwrap_or(src),
                shape: n.shape.clone(),
            }
        })
        .collect();
    let st_path = staging.join("model.safetensors");
    safetensors::write_streaming(&st_path, &specs, &st_metadata(input), |i, spec| {
        let name = &needed[i].hf_name;
        Ok::<_, ConvertError>(if dtypes[i] == spec.dtype {
            st.bytes(name)?.to_vec()
        } else {
            safetensors::encode_f32(&st.to_f32(name)?, spec.dtype)
        })
    })?;
    let out_dtype = opts
        .dtype
        .unwrap_or_else(|| dtypes.first().copied().unwrap_or(Dtype::F32));
    write_json(
        &staging.join("config.json"),
        &config.to_hf_json(out_dtype.torch_name()),
    )?;
    let tokenizer = copy_side_files(input, staging)?;
    Ok(ConvertReport {
        config,
        tensors_written: specs.len(),
        leftover,
        tokenizer,
        dtype: out_dtype,
        bytes: std::fs::metadata(&st_path).map(|m| m.len()).unwrap_or(0),
    })
}

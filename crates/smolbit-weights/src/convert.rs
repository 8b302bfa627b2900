//! `smolbit convert`: a GGUF file or a Hugging Face directory in, a normalized Hugging Face
//! directory out (config.json, model.safetensors, tokenizer files), which every later stage reads
//! and HF transformers loads.
//!
//! The output is written to a temporary sibling directory and renamed into place at the end, so a
//! failure never leaves a half-written model behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::config::{Arch, ConfigError, HiddenAct, ModelConfig};
use crate::gguf::{GgufError, GgufFile};
use crate::keys::{self, arch_key};
use crate::mapping::{self, LayerRole, Needed, Role};
use crate::quantize::{Item, QuantConfig};
use crate::safetensors::{self, Dtype, SafetensorsError, TensorSpec};
use crate::tokenizer;
use smolbit_ternary::ggml::{self, TernaryType};
use smolbit_ternary::{Granularity, Scheme, TernaryMatrix};

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
    /// For a natively ternary input, the scheme its linears were written with and where they
    /// came from (e.g. `b158:g256 from TQ2_0`); `None` for a full-precision output.
    pub ternary: Option<String>,
    /// What the input needed fixing (one line each), e.g. a missing pre-tokenizer name.
    pub warnings: Vec<String>,
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

/// The GGUF architectures smolbit reads: `(name, family, whether llama.cpp's converter permuted
/// the q/k rows)`. The `bitnet*` architectures use NeoX ("rotate half") RoPE, so their q/k rows
/// are stored as in the HF checkpoint.
const GGUF_ARCHS: &[(&str, Arch, bool)] = &[
    ("llama", Arch::Llama, true),
    ("smollm3", Arch::SmolLM3, true),
    // llama.cpp's BitNet (1bitLLM's models, and 2B4T converted upstream).
    ("bitnet", Arch::BitNet, false),
    // bitnet.cpp's names for BitNet b1.58 2B4T (`bitnet-25` before 2025-04-23).
    ("bitnet-b1.58", Arch::BitNet, false),
    ("bitnet-25", Arch::BitNet, false),
];

fn gguf_arch(g: &GgufFile) -> Result<(&str, Arch, bool), ConvertError> {
    let name = g.require_str(keys::GENERAL_ARCHITECTURE)?;
    GGUF_ARCHS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(_, arch, permuted)| (name, arch, permuted))
        .ok_or_else(|| ConvertError::Input {
            path: g.path().to_path_buf(),
            what: format!(
                "unsupported architecture '{name}' (supported: {})",
                GGUF_ARCHS
                    .iter()
                    .map(|(n, _, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// The FFN activation of a GGUF: `bitnet-b1.58` / `bitnet-25` are relu² (bitnet.cpp's
/// `build_bitnet_158`); `bitnet` reads `bitnet.hidden_activation` and defaults to SiLU, as
/// llama.cpp's loader does (1bitLLM's models use SiLU; 2B4T converted upstream says "relu2").
fn gguf_hidden_act(g: &GgufFile, name: &str, arch: Arch) -> Result<HiddenAct, ConvertError> {
    match (name, arch) {
        ("bitnet-b1.58" | "bitnet-25", _) => Ok(HiddenAct::Relu2),
        (_, Arch::BitNet) => {
            let key = arch_key(name, keys::HIDDEN_ACTIVATION);
            match g.get(&key).map(|v| v.as_str()) {
                None => Ok(HiddenAct::Silu),
                Some(Some("relu2" | "relu_sqr" | "relu_squared")) => Ok(HiddenAct::Relu2),
                Some(Some("silu" | "swish" | "swiglu")) => Ok(HiddenAct::Silu),
                Some(other) => Err(ConvertError::Input {
                    path: g.path().to_path_buf(),
                    what: format!(
                        "{key} is {}, expected relu2 or silu",
                        other.unwrap_or("not a string")
                    ),
                }),
            }
        }
        _ => Ok(HiddenAct::Silu),
    }
}

/// The model config a GGUF's metadata describes.
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig, ConvertError> {
    let (arch_name, arch, _) = gguf_arch(g)?;
    let hidden_act = gguf_hidden_act(g, arch_name, arch)?;
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
        Arch::Llama | Arch::BitNet => vec![true; n_layers],
        // llama.cpp's smollm3 graph skips RoPE on every 4th layer (n_no_rope_layer_step = 4).
        Arch::SmolLM3 => (0..n_layers).map(|i| (i + 1) % 4 != 0).collect(),
    };
    let hf = json!({
        "model_type": arch.model_type(),
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": as_usize(keys::FEED_FORWARD_LENGTH)?,
        "hidden_act": hidden_act.name(),
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
pub fn unpermute_rows<T: Copy + Default>(w: &[T], n_head: usize, cols: usize) -> Vec<T> {
    let rows = w.len() / cols;
    let head_rows = rows / n_head;
    let half = head_rows / 2;
    let mut out = vec![T::default(); w.len()];
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
    let (_, _, permuted) = gguf_arch(&g)?;
    let needed = mapping::needed_tensors(&config);
    check_tensors(
        input,
        &needed,
        |name| g.tensor(name).map(|t| t.torch_shape()),
        |n| n.gguf_name.as_str(),
    )?;
    // Per-tensor multipliers of ternary projections (llama.cpp's `bitnet` graph applies
    // `<name>.scale` after the product).
    let scale_of = |n: &Needed| n.gguf_name.replace(".weight", ".scale");
    let mut used: std::collections::HashSet<String> =
        needed.iter().map(|n| n.gguf_name.clone()).collect();
    used.extend(
        needed
            .iter()
            .map(scale_of)
            .filter(|s| g.tensor(s).is_some()),
    );
    let leftover: Vec<String> = g
        .tensors
        .iter()
        .filter(|t| !used.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    let info = |n: &Needed| {
        g.tensor(&n.gguf_name)
            .ok_or_else(|| ConvertError::MissingTensors {
                path: input.to_path_buf(),
                names: vec![n.gguf_name.clone()],
            })
    };
    let ternary_types: std::collections::BTreeSet<&'static str> = needed
        .iter()
        .filter_map(|n| g.tensor(&n.gguf_name)?.ggml_type.ternary())
        .map(|t| t.name())
        .collect();
    // A permuted q/k row order (llama.cpp's converter, `llama` architecture) is undone here.
    let unpermute = |n: &Needed| match n.role {
        Role::Layer(LayerRole::Q) if permuted => Some(config.num_heads),
        Role::Layer(LayerRole::K) if permuted => Some(config.num_kv_heads),
        _ => None,
    };
    let tok = tokenizer::from_gguf(&g, config.max_position_embeddings)?;
    let mut warnings = tok.as_ref().map(|t| t.warnings.clone()).unwrap_or_default();
    let st_path = staging.join("model.safetensors");

    let (dtype, tensors_written, ternary) = if ternary_types.is_empty() {
        let dtype = opts.dtype.unwrap_or(Dtype::F32);
        let specs: Vec<TensorSpec> = needed
            .iter()
            .map(|n| TensorSpec {
                name: n.hf_name.clone(),
                dtype,
                shape: n.shape.clone(),
            })
            .collect();
        safetensors::write_streaming(&st_path, &specs, &st_metadata(input), |i, _| {
            let n = &needed[i];
            let mut w = g.tensor_f32(info(n)?);
            if let Some(heads) = unpermute(n) {
                w = unpermute_rows(&w, heads, n.shape[1]);
            }
            Ok::<_, ConvertError>(safetensors::encode_f32(&w, dtype))
        })?;
        (dtype, specs.len(), None)
    } else {
        // A natively ternary GGUF: the projections stay trits (a ternary checkpoint in
        // smolbit's layout), everything else is dequantized (F16/BF16 kept as they are).
        let scheme: Scheme = match ternary_types.iter().copied().collect::<Vec<_>>().as_slice() {
            ["I2_S"] => "b158",
            ["TQ1_0"] | ["TQ2_0"] | ["TQ1_0", "TQ2_0"] => "b158:g256",
            mixed => {
                return Err(ConvertError::Input {
                    path: input.to_path_buf(),
                    what: format!(
                        "mixes ternary types {} (one scale per tensor and per 256 values)",
                        mixed.join(" and ")
                    ),
                });
            }
        }
        .parse()
        .map_err(|e: smolbit_ternary::SchemeError| ConvertError::Input {
            path: input.to_path_buf(),
            what: e.to_string(),
        })?;
        let source_dtype = |t: crate::dequant::GgmlType| match t {
            crate::dequant::GgmlType::F16 => Dtype::F16,
            crate::dequant::GgmlType::BF16 => Dtype::BF16,
            _ => Dtype::F32,
        };
        let mut items = Vec::new();
        let mut kept = Vec::new();
        for n in &needed {
            let t = info(n)?;
            if t.ggml_type.ternary().is_some() {
                items.push(Item::Ternary {
                    name: n.hf_name.clone(),
                    rows: n.shape[0],
                    cols: n.shape[1],
                });
            } else {
                if g.tensor(&scale_of(n)).is_some() {
                    return Err(ConvertError::Input {
                        path: input.to_path_buf(),
                        what: format!(
                            "'{}' has a per-tensor scale but is {:?}, not ternary",
                            n.gguf_name, t.ggml_type
                        ),
                    });
                }
                if matches!(n.role, Role::Layer(l) if l.is_linear()) {
                    kept.push(n.hf_name.trim_end_matches(".weight").to_string());
                }
                items.push(Item::Float {
                    name: n.hf_name.clone(),
                    dtype: opts.dtype.unwrap_or(source_dtype(t.ggml_type)),
                    shape: n.shape.clone(),
                });
            }
        }
        let by_hf: std::collections::HashMap<&str, &Needed> =
            needed.iter().map(|n| (n.hf_name.as_str(), n)).collect();
        let bad = |n: &Needed, what: String| ConvertError::Input {
            path: input.to_path_buf(),
            what: format!("tensor '{}': {what}", n.gguf_name),
        };
        let bits = crate::quantize::write_ternary_checkpoint::<ConvertError>(
            &st_path,
            &scheme,
            &items,
            &st_metadata(input),
            |name, rows, cols| {
                let n = by_hf[name];
                let t = info(n)?;
                let ty = t.ggml_type.ternary().unwrap_or(TernaryType::TQ2_0);
                let d = ggml::decode(ty, g.tensor_bytes(t), rows * cols)
                    .map_err(|e| bad(n, e.to_string()))?;
                let mut m = TernaryMatrix {
                    rows,
                    cols,
                    planes: 1,
                    granularity: scheme.granularity,
                    trits: d.trits,
                    scales: d.scales,
                };
                if let Some(st) = g.tensor(&scale_of(n)) {
                    let v = g.tensor_f32(st);
                    match v.as_slice() {
                        [s] if s.is_finite() => m.scales.iter_mut().for_each(|x| *x *= s),
                        _ => {
                            return Err(bad(
                                n,
                                format!("scale tensor holds {v:?}, expected one finite value"),
                            ));
                        }
                    }
                }
                if let Some(heads) = unpermute(n) {
                    m.trits = unpermute_rows(&m.trits, heads, cols);
                    if let Granularity::Group(gs) = m.granularity {
                        m.scales = unpermute_rows(&m.scales, heads, cols.div_ceil(gs));
                    }
                }
                Ok(m)
            },
            |i| {
                // One item per needed tensor, in order.
                let n = &needed[i];
                let Item::Float { dtype, .. } = &items[i] else {
                    return Err(ConvertError::Output {
                        path: st_path.clone(),
                        what: format!("internal: '{}' asked for as a float tensor", n.hf_name),
                    });
                };
                let t = info(n)?;
                Ok(match (t.ggml_type, dtype) {
                    (crate::dequant::GgmlType::F16, Dtype::F16)
                    | (crate::dequant::GgmlType::BF16, Dtype::BF16)
                    | (crate::dequant::GgmlType::F32, Dtype::F32) => g.tensor_bytes(t).to_vec(),
                    _ => {
                        let mut w = g.tensor_f32(t);
                        if let Some(heads) = unpermute(n) {
                            w = unpermute_rows(&w, heads, n.shape[1]);
                        }
                        safetensors::encode_f32(&w, *dtype)
                    }
                })
            },
        )?;
        let types = ternary_types.iter().copied().collect::<Vec<_>>().join("+");
        let qc = QuantConfig::native(&scheme, kept, bits, format!("{types} GGUF"), None);
        if !qc.modules_not_converted.is_empty() {
            warnings.push(format!(
                "{} projections are not ternary and stay in floating point: {}",
                qc.modules_not_converted.len(),
                qc.modules_not_converted.join(", ")
            ));
        }
        write_json(
            &staging.join("config.json"),
            &with_quantization(config.to_hf_json("float32"), &qc),
        )?;
        (
            opts.dtype.unwrap_or(Dtype::F32),
            items.len(),
            Some(format!("{} from {types}", qc.scheme)),
        )
    };

    if ternary.is_none() {
        write_json(
            &staging.join("config.json"),
            &config.to_hf_json(dtype.torch_name()),
        )?;
    }
    let mut eos: Vec<u32> = config.eos_token_ids.clone();
    for id in tok.iter().flat_map(|t| t.end_of_generation.iter()) {
        if !eos.contains(id) {
            eos.push(*id);
        }
    }
    write_json(
        &staging.join("generation_config.json"),
        &json!({"bos_token_id": config.bos_token_id,
                "eos_token_id": match eos.as_slice() { [one] => json!(one), many => json!(many) },
                "pad_token_id": config.pad_token_id}),
    )?;
    if let Some(t) = &tok {
        write_json(&staging.join("tokenizer.json"), &t.tokenizer)?;
        write_json(&staging.join("tokenizer_config.json"), &t.tokenizer_config)?;
    }
    warnings.dedup();
    Ok(ConvertReport {
        ternary,
        warnings,
        config,
        tensors_written,
        leftover,
        tokenizer: tok.is_some(),
        dtype,
        bytes: std::fs::metadata(&st_path).map(|m| m.len()).unwrap_or(0),
    })
}

/// `config` with a `quantization_config`.
fn with_quantization(mut config: serde_json::Value, qc: &QuantConfig) -> serde_json::Value {
    config["quantization_config"] = serde_json::to_value(qc).unwrap_or_default();
    config
}

// ------------------------------------------------------------------------------------- HF

/// A transformers BitNet checkpoint (offline or online) to a ternary checkpoint in smolbit's
/// layout: the same trits and per-tensor scales (`b158`, int8 activations), everything else as
/// stored; `use_rms_norm` weights kept as `<name>.rms_norm.weight`.
fn convert_hf_bitnet(
    input: &Path,
    staging: &Path,
    opts: &ConvertOptions,
    md: &crate::ModelDir,
    b: &crate::native::HfBitNet,
) -> Result<ConvertReport, ConvertError> {
    let load = |e: crate::LoadError| ConvertError::Input {
        path: input.to_path_buf(),
        what: e.to_string().replace(&format!("{}: ", input.display()), ""),
    };
    let needed = mapping::needed_tensors(&md.config);
    let mut items = Vec::new();
    let mut norms = Vec::new();
    let mut kept = Vec::new();
    for n in &needed {
        let linear = matches!(n.role, Role::Layer(l) if l.is_linear());
        if linear && b.converts(&n.hf_name) {
            items.push(Item::Ternary {
                name: n.hf_name.clone(),
                rows: n.shape[0],
                cols: n.shape[1],
            });
            if let Some(w) = b
                .pre_norm(&md.weights, &n.hf_name, n.shape[1])
                .map_err(load)?
            {
                let name = format!("{}.rms_norm.weight", n.hf_name.trim_end_matches(".weight"));
                items.push(Item::Float {
                    name: name.clone(),
                    dtype: Dtype::F32,
                    shape: vec![n.shape[1]],
                });
                norms.push((name, w));
            }
        } else {
            md.check_shape(&n.hf_name, &n.shape).map_err(load)?;
            if linear {
                kept.push(n.hf_name.trim_end_matches(".weight").to_string());
            }
            let src = md.weights.entry(&n.hf_name)?.dtype;
            items.push(Item::Float {
                name: n.hf_name.clone(),
                dtype: opts.dtype.unwrap_or(src),
                shape: n.shape.clone(),
            });
        }
    }
    let scheme: Scheme =
        "b158"
            .parse()
            .map_err(|e: smolbit_ternary::SchemeError| ConvertError::Input {
                path: input.to_path_buf(),
                what: e.to_string(),
            })?;
    let st_path = staging.join("model.safetensors");
    let bits = crate::quantize::write_ternary_checkpoint::<ConvertError>(
        &st_path,
        &scheme,
        &items,
        &st_metadata(input),
        |name, rows, cols| b.read_linear(&md.weights, name, rows, cols).map_err(load),
        |i| match &items[i] {
            Item::Float { name, dtype, .. } => {
                if let Some((_, w)) = norms.iter().find(|(n, _)| n == name) {
                    return Ok(safetensors::encode_f32(w, *dtype));
                }
                let src = md.weights.entry(name)?.dtype;
                Ok(if src == *dtype {
                    md.weights.bytes(name)?.to_vec()
                } else {
                    safetensors::encode_f32(&md.weights.to_f32(name)?, *dtype)
                })
            }
            Item::Ternary { name, .. } => Err(ConvertError::Output {
                path: st_path.clone(),
                what: format!("internal: '{name}' asked for as a float tensor"),
            }),
        },
    )?;
    let qc = QuantConfig::native(
        &scheme,
        kept,
        bits,
        b.describe(),
        b.use_rms_norm.then_some(b.rms_norm_eps),
    );
    let dtype = opts.dtype.unwrap_or(Dtype::F32);
    write_json(
        &staging.join("config.json"),
        &with_quantization(md.config.to_hf_json(dtype.torch_name()), &qc),
    )?;
    let tokenizer = copy_side_files(input, staging)?;
    Ok(ConvertReport {
        ternary: Some(format!("{} from {}", qc.scheme, b.describe())),
        warnings: Vec::new(),
        config: md.config.clone(),
        tensors_written: items.len(),
        leftover: Vec::new(),
        tokenizer,
        dtype,
        bytes: std::fs::metadata(&st_path).map(|m| m.len()).unwrap_or(0),
    })
}

fn convert_hf(
    input: &Path,
    staging: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    let md = crate::ModelDir::open(input).map_err(|e| match e {
        crate::LoadError::Config(c) => ConvertError::Config(c),
        crate::LoadError::Safetensors(s) => ConvertError::Safetensors(s),
        other => ConvertError::Input {
            path: input.to_path_buf(),
            what: other.to_string(),
        },
    })?;
    if let Some(b) = &md.bitnet {
        return convert_hf_bitnet(input, staging, opts, &md, b);
    }
    if md.quant.is_some() {
        return Err(ConvertError::Input {
            path: input.to_path_buf(),
            what: "is already a smolbit ternary checkpoint; it loads as it is".into(),
        });
    }
    let config = md.config;
    let st = md.weights;
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
        ternary: None,
        warnings: Vec::new(),
        config,
        tensors_written: specs.len(),
        leftover,
        tokenizer,
        dtype: out_dtype,
        bytes: std::fs::metadata(&st_path).map(|m| m.len()).unwrap_or(0),
    })
}

//! `cargo xtask random-model --shape S --out PATH [--format F] [--dtype f16|bf16|f32]
//! [--arch A]`: a checkpoint of the given shape with random weights (deterministic), for
//! measuring speed and memory at scale without downloading anything: speed does not depend on
//! the values.
//!
//! Shapes: `smollm3-3b` is SmolLM3-3B's (hidden 2048, 36 layers, 16 heads, 4 KV heads, FFN
//! 11008, vocabulary 128256, tied embeddings, no RoPE every 4th layer); `smollm2-135m` is
//! SmolLM2-135M's; `bitnet-2b` is BitNet b1.58 2B4T's (hidden 2560, 30 layers, 20 heads, 5 KV
//! heads, FFN 6912, vocabulary 128256, tied, relu², sub-norms).
//!
//! Formats (`--format`; `hf` is the only one for the SmolLM shapes, `hf-offline` the default
//! for `bitnet-2b`):
//! - `hf`: a float HF directory (`--dtype`, f16 by default); quantize it with `smolbit quantize`.
//! - natively ternary: every projection's weights are drawn, rounded to bf16 and ternarized with
//!   absmean per tensor, so every format holds the same trits:
//!   - `hf-offline`: transformers' BitNet layout as 2B4T ships it (uint8 `[out/4, in]`,
//!     `weight_scale` = mean|W| in bf16, `autobitlinear`); `hf-bitlinear`: the same with
//!     `1 / mean|W|` (`bitlinear`); `hf-online`: the bf16 masters (`-bf16`'s layout).
//!   - `tq1_0`, `tq2_0`, `i2_s`: GGUF files (`--arch`, `bitnet-b1.58` by default, as bitnet.cpp
//!     names 2B4T) with the F16 token embedding the official file has.
//!   - `gguf-f16`: a GGUF whose projections are `trit · scale` in F16 (the scale an f16
//!     value, so exact): the input of llama.cpp's and bitnet.cpp's own `llama-quantize`
//!     (`TQ2_0`, `I2_S`) for the peer-engine benchmark. `--arch bitnet` for mainline llama.cpp,
//!     which does not know `bitnet-b1.58`.
//!
//! GGUFs carry no vocabulary (`tokenizer.ggml.model = "no_vocab"`): benchmarks feed token ids.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use half::{bf16, f16};
use serde_json::json;
use smolbit_ternary::ggml::{self, TernaryType};
use smolbit_ternary::{Granularity, absmean, pack};
use smolbit_weights::ModelConfig;
use smolbit_weights::dequant::GgmlType;
use smolbit_weights::gguf::{self, Value};
use smolbit_weights::keys::{self, arch_key};
use smolbit_weights::mapping::{Needed, Role, needed_tensors};
use smolbit_weights::safetensors::{Dtype, TensorSpec, encode_f32, write_streaming};

fn config(shape: &str) -> Result<serde_json::Value> {
    Ok(match shape {
        "smollm3-3b" => json!({
            "architectures": ["SmolLM3ForCausalLM"],
            "model_type": "smollm3",
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 4,
            "vocab_size": 128256,
            "max_position_embeddings": 65536,
            "rms_norm_eps": 1e-6,
            "rope_theta": 5_000_000.0,
            "no_rope_layer_interval": 4,
            "tie_word_embeddings": true,
            "bos_token_id": 128000,
            "eos_token_id": 128012,
        }),
        "smollm2-135m" => json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "vocab_size": 49152,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100_000.0,
            "tie_word_embeddings": true,
            "bos_token_id": 1,
            "eos_token_id": 2,
        }),
        // microsoft/bitnet-b1.58-2B-4T's config.json (transformers' BitNetConfig defaults with
        // the published tie_word_embeddings and context).
        "bitnet-2b" => json!({
            "architectures": ["BitNetForCausalLM"],
            "model_type": "bitnet",
            "hidden_size": 2560,
            "intermediate_size": 6912,
            "num_hidden_layers": 30,
            "num_attention_heads": 20,
            "num_key_value_heads": 5,
            "vocab_size": 128256,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500_000.0,
            "hidden_act": "relu2",
            "tie_word_embeddings": true,
            "bos_token_id": 128000,
            "eos_token_id": 128001,
        }),
        other => bail!("--shape '{other}': known shapes are smollm3-3b, smollm2-135m, bitnet-2b"),
    })
}

/// A deterministic stream per tensor (xorshift), so every format draws the same values.
fn values(name: &str, n: usize) -> Vec<f32> {
    let mut state = name.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    }) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Uniform in ±0.035 (std 0.02, transformers' initializer range).
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.07
        })
        .collect()
}

fn is_projection(n: &Needed) -> bool {
    matches!(n.role, Role::Layer(l) if l.is_linear())
}

/// A tensor's float values: 1 for norms, random otherwise, rounded to bf16 for the natively
/// ternary formats (their masters are bf16).
fn tensor(n: &Needed, ternary: bool) -> Vec<f32> {
    let count: usize = n.shape.iter().product();
    if n.shape.len() == 1 {
        return vec![1.0; count];
    }
    let mut v = values(&n.hf_name, count);
    if ternary {
        v.iter_mut().for_each(|x| *x = bf16::from_f32(*x).to_f32());
    }
    v
}

/// A projection's trits and absmean scale (of the bf16 masters, as transformers' WeightQuant
/// on the `-bf16` weights).
fn ternary(n: &Needed) -> (Vec<i8>, f32) {
    let m = absmean::quantize(
        &tensor(n, true),
        n.shape[0],
        n.shape[1],
        Granularity::Tensor,
    );
    (m.trits, m.scales[0])
}

const FORMATS: &[&str] = &[
    "hf",
    "hf-offline",
    "hf-bitlinear",
    "hf-online",
    "tq1_0",
    "tq2_0",
    "i2_s",
    "gguf-f16",
];

pub fn run(args: &[String]) -> Result<()> {
    let (mut shape, mut out, mut dtype) = ("smollm3-3b".to_string(), None, None);
    let (mut format, mut arch) = (None, "bitnet-b1.58".to_string());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--shape" => shape = value()?,
            "--out" => out = Some(PathBuf::from(value()?)),
            "--format" => format = Some(value()?),
            "--arch" => arch = value()?,
            "--dtype" => {
                dtype = Some(match value()?.as_str() {
                    "f16" => Dtype::F16,
                    "f32" => Dtype::F32,
                    "bf16" => Dtype::BF16,
                    other => bail!("--dtype '{other}': f16, bf16 or f32"),
                })
            }
            other => bail!("random-model: unknown argument '{other}'"),
        }
    }
    let out = out.context("random-model: --out <PATH> is required")?;
    if out.exists() {
        bail!("{}: already exists", out.display());
    }
    let bitnet = shape == "bitnet-2b";
    let format = format.unwrap_or_else(|| if bitnet { "hf-offline" } else { "hf" }.to_string());
    if !FORMATS.contains(&format.as_str()) {
        bail!("--format '{format}': one of {}", FORMATS.join(", "));
    }
    if format != "hf" && !bitnet {
        bail!("--format {format}: natively ternary formats are for --shape bitnet-2b");
    }
    if !["bitnet", "bitnet-b1.58", "bitnet-25"].contains(&arch.as_str()) {
        bail!("--arch '{arch}': bitnet, bitnet-b1.58 or bitnet-25");
    }
    let mut cfg = config(&shape)?;
    let text = serde_json::to_string_pretty(&cfg)?;
    let c = ModelConfig::from_json_str(&text, &out.join("config.json"))?;
    let tensors: Vec<Needed> = needed_tensors(&c);
    let params: usize = tensors
        .iter()
        .map(|n| n.shape.iter().product::<usize>())
        .sum();
    eprintln!(
        "[random-model] {shape} as {format}: {} tensors, {:.2} B parameters -> {}",
        tensors.len(),
        params as f64 / 1e9,
        out.display()
    );
    let tmp = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_file(&tmp);
    match format.as_str() {
        "hf" | "hf-offline" | "hf-bitlinear" | "hf-online" => {
            std::fs::create_dir_all(&tmp).with_context(|| format!("{}", tmp.display()))?;
            let dtype = dtype.unwrap_or(if bitnet { Dtype::BF16 } else { Dtype::F16 });
            cfg["torch_dtype"] = json!(dtype.torch_name());
            if let Some(q) = match format.as_str() {
                "hf-offline" => Some(
                    json!({"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}),
                ),
                "hf-bitlinear" => Some(
                    json!({"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}),
                ),
                "hf-online" => Some(
                    json!({"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}),
                ),
                _ => None,
            } {
                cfg["quantization_config"] = q;
            }
            std::fs::write(
                tmp.join("config.json"),
                serde_json::to_string_pretty(&cfg)? + "\n",
            )?;
            write_hf(&tmp, &shape, &format, dtype, &tensors)?;
        }
        _ => write_gguf(&tmp, &arch, &format, &c, &tensors)?,
    }
    std::fs::rename(&tmp, &out).with_context(|| format!("{}", out.display()))?;
    eprintln!("[random-model] wrote {}", out.display());
    Ok(())
}

fn write_hf(dir: &Path, shape: &str, format: &str, dtype: Dtype, tensors: &[Needed]) -> Result<()> {
    let packed = format == "hf-offline" || format == "hf-bitlinear";
    let mut specs = Vec::new();
    for n in tensors {
        if packed && is_projection(n) {
            // 2B4T stores its scales in bf16.
            specs.extend(smolbit_weights::native::packed_specs(
                &n.hf_name,
                n.shape[0],
                n.shape[1],
                Dtype::BF16,
            ));
        } else {
            specs.push(TensorSpec {
                name: n.hf_name.clone(),
                dtype,
                shape: n.shape.clone(),
            });
        }
    }
    let by_name: BTreeMap<&str, &Needed> =
        tensors.iter().map(|n| (n.hf_name.as_str(), n)).collect();
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    metadata.insert("smolbit_random_shape".to_string(), shape.to_string());
    let mut scale = 0f32;
    write_streaming(
        &dir.join("model.safetensors"),
        &specs,
        &metadata,
        |_, spec| -> Result<Vec<u8>, smolbit_weights::safetensors::SafetensorsError> {
            if spec.name.ends_with("_scale") {
                let s = if format == "hf-bitlinear" {
                    1.0 / scale
                } else {
                    scale
                };
                return Ok(encode_f32(&[s], Dtype::BF16));
            }
            let n = by_name[spec.name.as_str()];
            if spec.dtype == Dtype::U8 {
                let (t, s) = ternary(n);
                scale = s;
                return Ok(pack::pack_hf_bitnet(&t, n.shape[0], n.shape[1]).unwrap_or_default());
            }
            Ok(encode_f32(&tensor(n, format != "hf"), spec.dtype))
        },
    )?;
    Ok(())
}

fn write_gguf(
    path: &Path,
    arch: &str,
    format: &str,
    c: &ModelConfig,
    tensors: &[Needed],
) -> Result<()> {
    let ty = match format {
        "tq1_0" => GgmlType::TQ1_0,
        "tq2_0" => GgmlType::TQ2_0,
        "i2_s" => GgmlType::I2_S,
        _ => GgmlType::F16,
    };
    let k = |key: &str| arch_key(arch, key);
    let u32v = |v: usize| Value::U32(v as u32);
    let mut meta = vec![
        (
            keys::GENERAL_ARCHITECTURE.to_string(),
            Value::String(arch.to_string()),
        ),
        (
            keys::GENERAL_NAME.to_string(),
            Value::String(format!("random bitnet-2b ({format})")),
        ),
        (k(keys::CONTEXT_LENGTH), u32v(c.max_position_embeddings)),
        (k(keys::EMBEDDING_LENGTH), u32v(c.hidden_size)),
        (k(keys::BLOCK_COUNT), u32v(c.num_layers)),
        (k(keys::FEED_FORWARD_LENGTH), u32v(c.intermediate_size)),
        (k(keys::HEAD_COUNT), u32v(c.num_heads)),
        (k(keys::HEAD_COUNT_KV), u32v(c.num_kv_heads)),
        (k(keys::ROPE_DIMENSION_COUNT), u32v(c.head_dim)),
        (k(keys::ROPE_FREQ_BASE), Value::F32(c.rope_theta as f32)),
        (k(keys::RMS_EPS), Value::F32(c.rms_norm_eps as f32)),
        (k(keys::VOCAB_SIZE), u32v(c.vocab_size)),
        // "no_vocab": read by mainline llama.cpp and by bitnet.cpp's older fork alike ("none"
        // only by the former).
        (
            keys::TOKENIZER_MODEL.to_string(),
            Value::String("no_vocab".into()),
        ),
    ];
    if arch == "bitnet" {
        // llama.cpp's `bitnet` defaults to SiLU without it (and, as read, maps unknown names to
        // SiLU too): speed is the same, and smolbit reads relu2.
        meta.push((k(keys::HIDDEN_ACTIVATION), Value::String("relu2".into())));
    }
    let specs: Vec<gguf::TensorSpec> = tensors
        .iter()
        .map(|n| gguf::TensorSpec {
            name: n.gguf_name.clone(),
            shape: n.shape.clone(),
            ggml_type: if is_projection(n) {
                ty
            } else if n.role == Role::Embed {
                GgmlType::F16
            } else {
                GgmlType::F32
            },
        })
        .collect();
    gguf::write_streaming(path, &meta, &specs, |i| -> Result<Vec<u8>> {
        let (n, spec) = (&tensors[i], &specs[i]);
        if !is_projection(n) {
            let v = tensor(n, true);
            return Ok(match spec.ggml_type {
                GgmlType::F16 => v
                    .iter()
                    .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                    .collect(),
                _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            });
        }
        let (t, s) = ternary(n);
        // The scale an f16 value, so that every format (and trit · scale in F16) is exact.
        let s16 = f16::from_f32(s).to_f32();
        Ok(match spec.ggml_type {
            GgmlType::TQ1_0 | GgmlType::TQ2_0 => {
                let tt = if spec.ggml_type == GgmlType::TQ1_0 {
                    TernaryType::TQ1_0
                } else {
                    TernaryType::TQ2_0
                };
                ggml::encode(tt, &t, &vec![s16; t.len() / ggml::QK_K])
            }
            GgmlType::I2_S => ggml::encode(TernaryType::I2_S, &t, &[s16]),
            _ => t
                .iter()
                .flat_map(|&x| f16::from_f32(f32::from(x) * s16).to_le_bytes())
                .collect(),
        })
    })?;
    Ok(())
}

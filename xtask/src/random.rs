//! `cargo xtask random-model --shape smollm3-3b|smollm2-135m --out DIR [--dtype f16|f32]`: a
//! checkpoint of the given architecture with random weights (deterministic seed), for measuring
//! speed and memory at scale without downloading anything: speed does not depend on the values.
//! Quantize it with `smolbit quantize --scheme ...` like any other model.
//!
//! Shapes: `smollm3-3b` is SmolLM3-3B's (hidden 2048, 36 layers, 16 heads, 4 KV heads, FFN 11008,
//! vocabulary 128256, tied embeddings, no RoPE every 4th layer); `smollm2-135m` is
//! SmolLM2-135M's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::json;
use smolbit_weights::ModelConfig;
use smolbit_weights::mapping::needed_tensors;
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
        other => bail!("--shape '{other}': known shapes are smollm3-3b, smollm2-135m"),
    })
}

pub fn run(args: &[String]) -> Result<()> {
    let (mut shape, mut out, mut dtype) = ("smollm3-3b".to_string(), None, Dtype::F16);
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
            "--dtype" => {
                dtype = match value()?.as_str() {
                    "f16" => Dtype::F16,
                    "f32" => Dtype::F32,
                    "bf16" => Dtype::BF16,
                    other => bail!("--dtype '{other}': f16, bf16 or f32"),
                }
            }
            other => bail!("random-model: unknown argument '{other}'"),
        }
    }
    let out = out.context("random-model: --out <DIR> is required")?;
    if out.exists() {
        bail!("{}: already exists", out.display());
    }
    let mut cfg = config(&shape)?;
    cfg["torch_dtype"] = json!(dtype.torch_name());
    let text = serde_json::to_string_pretty(&cfg)?;
    let c = ModelConfig::from_json_str(&text, &out.join("config.json"))?;
    let tmp = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}", tmp.display()))?;
    std::fs::write(tmp.join("config.json"), text + "\n")?;
    let tensors: Vec<_> = needed_tensors(&c)
        .into_iter()
        .filter(|n| !(c.tie_word_embeddings && n.hf_name == "lm_head.weight"))
        .collect();
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|n| TensorSpec {
            name: n.hf_name.clone(),
            dtype,
            shape: n.shape.clone(),
        })
        .collect();
    let total: usize = specs
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    eprintln!(
        "[random-model] {shape}: {} tensors, {:.2} B parameters -> {}",
        specs.len(),
        total as f64 / 1e9,
        out.display()
    );
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    metadata.insert("smolbit_random_shape".to_string(), shape.clone());
    write_streaming(
        &tmp.join("model.safetensors"),
        &specs,
        &metadata,
        |_, spec| -> Result<Vec<u8>, smolbit_weights::safetensors::SafetensorsError> {
            let n: usize = spec.shape.iter().product();
            let values: Vec<f32> = if spec.shape.len() == 1 {
                vec![1.0; n] // RMSNorm weights
            } else {
                // Uniform in ±0.035 (std 0.02, transformers' initializer range).
                (0..n)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.07
                    })
                    .collect()
            };
            Ok(encode_f32(&values, spec.dtype))
        },
    )?;
    std::fs::rename(&tmp, &out).with_context(|| format!("{}", out.display()))?;
    eprintln!("[random-model] wrote {}", out.display());
    Ok(())
}

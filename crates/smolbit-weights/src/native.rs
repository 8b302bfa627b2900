//! Natively ternary Hugging Face checkpoints: transformers' BitNet quantization
//! (`quantization_config.quant_method: "bitnet"`), as BitNet b1.58 2B4T (`BitNetForCausalLM`)
//! and Falcon3-1.58bit / Falcon-E / Llama3-8B-1.58 (`LlamaForCausalLM`) ship it, read straight
//! into trits and scales.
//!
//! Follows transformers 5.24 `integrations/bitnet.py` and `utils/quantization_config.py`:
//! - offline (the default): each converted projection is `<name>.weight`, uint8
//!   `[out / 4, in]` in `pack_weights` layout (bits `2i` of byte `(j, c)` hold row
//!   `i · out/4 + j` as `trit + 1`), and `<name>.weight_scale`, one value. Its direction depends on
//!   `linear_class`: `"bitlinear"` (the default) computes `y / (weight_scale · act_scale)`, so the
//!   stored value is `1 / mean|W|`; `"autobitlinear"` (2B4T) computes
//!   `linear(x̂, W) · weight_scale`, so it is `mean|W|`. A wrong direction gives fluent garbage.
//! - online: the projections hold full-precision weights (the `-bf16` masters) and are
//!   ternarized at load exactly as `WeightQuant` does (absmean per tensor), which is
//!   `smolbit quantize --scheme b158`.
//! - `modules_to_not_convert`: modules left as plain linears (float activations); when absent,
//!   transformers leaves the output head unconverted. Matching follows
//!   `should_convert_module`: a pattern matches a module name from the start up to a module
//!   boundary (as a regular expression), or as a suffix.
//! - `use_rms_norm`: every converted linear first applies its own RMSNorm
//!   (`<name>.rms_norm.weight`, epsilon `rms_norm_eps`) to its input.
//!
//! Activations are int8 per token for every converted linear (both classes).

use std::path::Path;

use serde_json::Value as Json;
use smolbit_ternary::{Granularity, TernaryMatrix, absmean, pack};

use crate::config::ConfigError;
use crate::safetensors::{Dtype, SafeTensors, TensorSpec};
use crate::{LoadError, ModelConfig};

/// How a stored `weight_scale` relates to the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearClass {
    /// `BitLinear`: divides by `weight_scale` (stored `1 / mean|W|`).
    BitLinear,
    /// `AutoBitLinear`: multiplies by `weight_scale` (stored `mean|W|`).
    AutoBitLinear,
}

/// Where the trits come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Packed uint8 trits and a `weight_scale` per projection.
    Offline,
    /// Full-precision weights, ternarized at load (absmean per tensor).
    Online,
}

/// transformers' `BitNetQuantConfig`, resolved.
#[derive(Debug, Clone)]
pub struct HfBitNet {
    /// Scale direction.
    pub linear_class: LinearClass,
    /// Packed or ternarized at load.
    pub mode: Mode,
    /// Module-name patterns left unconverted (`["lm_head"]` when the config gives none).
    pub modules_to_not_convert: Vec<String>,
    /// A learnable RMSNorm before every converted linear.
    pub use_rms_norm: bool,
    /// Its epsilon.
    pub rms_norm_eps: f64,
    patterns: Vec<regex::Regex>,
}

/// The two tensors of an offline-packed projection `name` (`[rows, cols]` weights): the uint8
/// `[rows / 4, cols]` codes and the one-value `<name>_scale` in `scale`'s type.
pub fn packed_specs(name: &str, rows: usize, cols: usize, scale: Dtype) -> [TensorSpec; 2] {
    [
        TensorSpec {
            name: name.to_string(),
            dtype: Dtype::U8,
            shape: vec![rows / 4, cols],
        },
        TensorSpec {
            name: format!("{name}_scale"),
            dtype: scale,
            shape: vec![1],
        },
    ]
}

/// `a.b.weight` -> `a.b`
fn module_of(weight: &str) -> &str {
    weight.strip_suffix(".weight").unwrap_or(weight)
}

impl HfBitNet {
    /// Resolve a `quantization_config` object; `path` (config.json) is used in errors.
    pub fn from_json(q: &Json, path: &Path) -> Result<Self, ConfigError> {
        let unsupported = |what: String| ConfigError::Unsupported {
            path: path.to_path_buf(),
            what,
        };
        let invalid = |what: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        let string = |key: &str, default: &str| -> Result<String, ConfigError> {
            match q.get(key) {
                None | Some(Json::Null) => Ok(default.to_string()),
                Some(Json::String(s)) => Ok(s.clone()),
                Some(other) => Err(invalid(format!(
                    "quantization_config.{key} is {other}, expected a string"
                ))),
            }
        };
        let linear_class = match string("linear_class", "bitlinear")?.as_str() {
            "bitlinear" => LinearClass::BitLinear,
            "autobitlinear" => LinearClass::AutoBitLinear,
            other => {
                return Err(unsupported(format!(
                    "quantization_config.linear_class '{other}' (supported: bitlinear, autobitlinear)"
                )));
            }
        };
        let mode = match string("quantization_mode", "offline")?.as_str() {
            "offline" => Mode::Offline,
            "online" => Mode::Online,
            other => {
                return Err(unsupported(format!(
                    "quantization_config.quantization_mode '{other}' (supported: offline, online)"
                )));
            }
        };
        let modules_to_not_convert = match q.get("modules_to_not_convert") {
            None | Some(Json::Null) => vec!["lm_head".to_string()],
            Some(Json::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(String::from).ok_or_else(|| {
                        invalid(format!(
                            "quantization_config.modules_to_not_convert holds {v}, expected names"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(invalid(format!(
                    "quantization_config.modules_to_not_convert is {other}, expected a list"
                )));
            }
        };
        let patterns = modules_to_not_convert
            .iter()
            .map(|key| {
                // `re.match(rf"(?:{key}){boundary}", name)`: from the start, ending at the end
                // of the name or before a '.'; a key that is not a valid expression matches
                // literally.
                let expr = regex::Regex::new(&format!(r"^(?:{key})(?:\..*)?$")).or_else(|_| {
                    regex::Regex::new(&format!(r"^(?:{})(?:\..*)?$", regex::escape(key)))
                });
                expr.map_err(|e| {
                    invalid(format!(
                        "quantization_config.modules_to_not_convert: '{key}': {e}"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let use_rms_norm = match q.get("use_rms_norm") {
            None | Some(Json::Null) => false,
            Some(Json::Bool(b)) => *b,
            Some(other) => {
                return Err(invalid(format!(
                    "quantization_config.use_rms_norm is {other}, expected true or false"
                )));
            }
        };
        let rms_norm_eps = match q.get("rms_norm_eps") {
            None | Some(Json::Null) => 1e-6,
            Some(v) => v.as_f64().ok_or_else(|| {
                invalid(format!(
                    "quantization_config.rms_norm_eps is {v}, expected a number"
                ))
            })?,
        };
        Ok(HfBitNet {
            linear_class,
            mode,
            modules_to_not_convert,
            use_rms_norm,
            rms_norm_eps,
            patterns,
        })
    }

    /// A short description for reports: `transformers BitNet (autobitlinear, offline)`.
    pub fn describe(&self) -> String {
        format!(
            "transformers BitNet ({}, {}{})",
            match self.linear_class {
                LinearClass::BitLinear => "bitlinear",
                LinearClass::AutoBitLinear => "autobitlinear",
            },
            match self.mode {
                Mode::Offline => "offline",
                Mode::Online => "online",
            },
            if self.use_rms_norm {
                ", use_rms_norm"
            } else {
                ""
            }
        )
    }

    /// Whether transformers turns the tensor `weight_name` into a BitLinear: it is a linear
    /// layer's weight (a projection or the head) and no pattern matches its module name
    /// (`should_convert_module`).
    pub fn converts(&self, weight_name: &str) -> bool {
        if !crate::mapping::is_linear_weight(weight_name) {
            return false;
        }
        let module = module_of(weight_name);
        !self
            .modules_to_not_convert
            .iter()
            .zip(&self.patterns)
            .any(|(key, re)| re.is_match(module) || module.ends_with(key.as_str()))
    }

    /// The ternary weight `[rows, cols]` stored under `weight_name` (which must be converted).
    pub fn read_linear(
        &self,
        st: &SafeTensors,
        weight_name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<TernaryMatrix, LoadError> {
        let file = st.file_of(weight_name).to_path_buf();
        let bad = |what: String| {
            LoadError::Quantized(format!(
                "{}: tensor '{weight_name}': {what}",
                file.display()
            ))
        };
        let e = st.entry(weight_name)?;
        match self.mode {
            Mode::Online => {
                if e.dtype == Dtype::U8 {
                    return Err(bad(
                        "is packed (U8) but quantization_mode is 'online', which expects \
                         full-precision weights"
                            .into(),
                    ));
                }
                if e.shape != [rows, cols] {
                    return Err(bad(format!(
                        "has shape {:?}, config implies [{rows}, {cols}]",
                        e.shape
                    )));
                }
                let w = st.to_f32(weight_name)?;
                Ok(absmean::quantize(&w, rows, cols, Granularity::Tensor))
            }
            Mode::Offline => {
                if e.dtype != Dtype::U8 {
                    return Err(bad(format!(
                        "is {}, expected U8 packed trits (quantization_mode 'offline'; \
                         full-precision weights need 'online')",
                        e.dtype.name()
                    )));
                }
                if !rows.is_multiple_of(4) || e.shape != [rows / 4, cols] {
                    return Err(bad(format!(
                        "packed shape {:?} disagrees with the config: {rows} x {cols} weights \
                         pack into [{}, {cols}] (four rows a byte)",
                        e.shape,
                        rows.div_ceil(4)
                    )));
                }
                let bytes = st.bytes(weight_name)?;
                let trits = pack::unpack_hf_bitnet(bytes, rows, cols).ok_or_else(|| {
                    let at = bytes
                        .iter()
                        .position(|b| (0..4).any(|i| (b >> (2 * i)) & 3 == 3))
                        .unwrap_or(0);
                    bad(format!(
                        "code 3 (not a trit) in byte {at} ({:#04x})",
                        bytes[at]
                    ))
                })?;
                let scale_name = format!("{weight_name}_scale");
                if !st.contains(&scale_name) {
                    return Err(bad(format!(
                        "has no '{scale_name}' (offline BitNet projections store one scale each)"
                    )));
                }
                let ws = st.to_f32(&scale_name)?;
                let s = match ws.as_slice() {
                    [s] if s.is_finite() && *s > 0.0 => *s,
                    _ => {
                        return Err(bad(format!(
                            "'{scale_name}' holds {ws:?}, expected one positive finite value"
                        )));
                    }
                };
                let scale = match self.linear_class {
                    LinearClass::AutoBitLinear => s,
                    LinearClass::BitLinear => 1.0 / s,
                };
                Ok(TernaryMatrix {
                    rows,
                    cols,
                    planes: 1,
                    granularity: Granularity::Tensor,
                    trits,
                    scales: vec![scale],
                })
            }
        }
    }

    /// The RMSNorm weight `[cols]` applied before the converted linear `weight_name`
    /// (`use_rms_norm`), or `None` without it.
    pub fn pre_norm(
        &self,
        st: &SafeTensors,
        weight_name: &str,
        cols: usize,
    ) -> Result<Option<Vec<f32>>, LoadError> {
        if !self.use_rms_norm || !self.converts(weight_name) {
            return Ok(None);
        }
        let name = format!("{}.rms_norm.weight", module_of(weight_name));
        if !st.contains(&name) {
            return Err(LoadError::Quantized(format!(
                "{}: no tensor '{name}' (quantization_config.use_rms_norm puts an RMSNorm \
                 before every BitLinear)",
                st.root().display()
            )));
        }
        let e = st.entry(&name)?;
        if e.shape != [cols] {
            return Err(LoadError::Quantized(format!(
                "{}: tensor '{name}' has shape {:?}, expected [{cols}]",
                st.file_of(&name).display(),
                e.shape
            )));
        }
        Ok(Some(st.to_f32(&name)?))
    }

    /// Bits per weight stored for the converted linears of `c` (packed codes and scales, or the
    /// full-precision weights of an online checkpoint).
    pub fn bits_per_weight(&self, c: &ModelConfig, st: &SafeTensors) -> f64 {
        let (mut bits, mut weights) = (0f64, 0f64);
        for n in crate::mapping::needed_tensors(c) {
            let linear = matches!(n.role, crate::mapping::Role::Layer(l) if l.is_linear());
            if !linear || !self.converts(&n.hf_name) {
                continue;
            }
            let Ok(e) = st.entry(&n.hf_name) else {
                continue;
            };
            let mut bytes = e.shape.iter().product::<usize>() * e.dtype.size();
            if let Ok(s) = st.entry(&format!("{}_scale", n.hf_name)) {
                bytes += s.shape.iter().product::<usize>() * s.dtype.size();
            }
            bits += 8.0 * bytes as f64;
            weights += n.shape.iter().product::<usize>() as f64;
        }
        if weights > 0.0 { bits / weights } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(q: &str) -> Result<HfBitNet, ConfigError> {
        let v: Json = serde_json::from_str(q).expect("json");
        HfBitNet::from_json(&v, Path::new("config.json"))
    }

    #[test]
    fn defaults_and_refusals() {
        let b = cfg(r#"{"quant_method": "bitnet"}"#).expect("defaults");
        assert_eq!(b.linear_class, LinearClass::BitLinear);
        assert_eq!(b.mode, Mode::Offline);
        assert!(!b.use_rms_norm);
        assert!(!b.converts("lm_head.weight"));
        assert!(b.converts("model.layers.0.self_attn.q_proj.weight"));
        let e = cfg(r#"{"quant_method": "bitnet", "linear_class": "tritlinear"}"#)
            .expect_err("unknown class")
            .to_string();
        assert!(
            e.starts_with("config.json: ") && e.contains("linear_class 'tritlinear'"),
            "{e}"
        );
        let e = cfg(r#"{"quant_method": "bitnet", "quantization_mode": "later"}"#)
            .expect_err("unknown mode")
            .to_string();
        assert!(e.contains("quantization_mode 'later'"), "{e}");
    }

    #[test]
    fn modules_to_not_convert_match_like_transformers() {
        // transformers' should_convert_module: prefix up to a module boundary (as a regex), or
        // suffix.
        let b = cfg(
            r#"{"quant_method": "bitnet", "modules_to_not_convert": ["model.layers.1", "layers.*.mlp.down_proj", "o_proj"]}"#,
        )
        .expect("config");
        for (name, converted) in [
            ("model.layers.1.self_attn.q_proj.weight", false),
            ("model.layers.11.self_attn.q_proj.weight", true),
            ("model.layers.0.mlp.down_proj.weight", true), // the regex is anchored at the start
            ("model.layers.0.self_attn.o_proj.weight", false), // suffix
            ("model.layers.0.mlp.gate_proj.weight", true),
            ("lm_head.weight", true), // listed modules replace the default
        ] {
            assert_eq!(b.converts(name), converted, "{name}");
        }
    }
}

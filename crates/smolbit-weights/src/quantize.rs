//! Ternary checkpoints: quantize a converted HF directory with a [`Scheme`] and write packed
//! trits and scales; read them back bit-identically.
//!
//! Layout of a quantized directory:
//! - `config.json`: the model config plus `quantization_config` (see [`QuantConfig`]).
//! - `model.safetensors`: for every block linear `<name>.weight` of the source, `<name>.trits`
//!   (U8 `[planes, rows, bytes_per_row]`, packed as [`Packing`] says) and `<name>.scales`
//!   (`[planes, scales_per_plane]`: F16 for group scales, F32 for per-tensor and per-row scales,
//!   whose size is negligible); every other tensor (embedding, norms, output head) as in
//!   the source.
//! - tokenizer and generation files copied; `quantization.json`: per-layer errors.
//!
//! Policy: all attention and MLP projections are quantized; the embedding, the RMSNorm weights and
//! the output head stay in the source's floating point (at 135M the tied embedding/head is 28 % of
//! the parameters, and ternary heads are what breaks small models first).
//! [`QuantizeOptions::quantize_embeddings`] overrides this for the embedding and output head.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use smolbit_ternary::pack::{self, Packing};
use smolbit_ternary::planes::{self, PlaneOptions};
use smolbit_ternary::{Granularity, Scheme, TernaryMatrix, absmean, metrics};

use crate::convert::{copy_side_files, write_dir_atomically, write_json};
use crate::mapping::{self, Role};
use crate::safetensors::{self, Dtype, SafetensorsError, TensorSpec};

/// `quantization_config` in config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantConfig {
    /// Always `smolbit`.
    pub quant_method: String,
    /// Canonical scheme string, e.g. `planes2:g64:af`.
    pub scheme: String,
    /// Trit planes.
    pub planes: usize,
    /// `tensor`, `row` or `g<N>`.
    pub granularity: String,
    /// `int8` or `float`.
    pub activations: String,
    /// `2bit` or `base3`.
    pub packing: String,
    /// Scales fitted with calibration statistics.
    pub calibrated: bool,
    /// Tensors left in floating point.
    pub modules_not_converted: Vec<String>,
    /// Storage bits per weight of the quantized linears (trits + f16 scales).
    pub bits_per_weight: f64,
    /// Where the trits came from when they were not quantized by smolbit (a natively ternary
    /// checkpoint: `TQ2_0 GGUF`, `transformers BitNet (autobitlinear, offline)`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Epsilon of the RMSNorm applied before every quantized linear (`<name>.rms_norm.weight`),
    /// for checkpoints trained with one (transformers' BitNet `use_rms_norm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_norm_eps: Option<f64>,
    /// How a distilled student was trained (`smolbit distill`: teacher, stages, data hash,
    /// settings); absent for post-training quantization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<serde_json::Value>,
}

impl QuantConfig {
    /// The description of trits that were not quantized by smolbit (a natively ternary
    /// checkpoint written in smolbit's layout): one plane of `scheme`, 2-bit packing, int8
    /// activations.
    pub fn native(
        scheme: &Scheme,
        modules_not_converted: Vec<String>,
        bits_per_weight: f64,
        source: String,
        pre_norm_eps: Option<f64>,
    ) -> Self {
        QuantConfig {
            quant_method: "smolbit".into(),
            scheme: scheme.to_string(),
            planes: 1,
            granularity: scheme.granularity.to_string(),
            activations: "int8".into(),
            packing: Packing::TwoBit.name().into(),
            calibrated: false,
            modules_not_converted,
            bits_per_weight,
            source: Some(source),
            pre_norm_eps,
            distillation: None,
        }
    }

    /// The parsed scheme.
    pub fn scheme(&self) -> Result<Scheme, smolbit_ternary::SchemeError> {
        self.scheme.parse()
    }

    /// The parsed packing.
    pub fn packing(&self) -> Option<Packing> {
        Packing::from_name(&self.packing)
    }

    /// The blocked integer format (`q8`, `q4`) of an int8/int4 checkpoint; `None` for ternary
    /// ones.
    pub fn blocked_format(&self) -> Option<crate::blocked::BlockedFormat> {
        crate::blocked::BlockedFormat::from_scheme(&self.scheme)
    }

    /// Whether linear inputs are quantized to int8 per token.
    pub fn int8_activations(&self) -> bool {
        self.activations == "int8"
    }
}

/// Statistics of one linear layer's inputs over calibration text.
#[derive(Debug, Clone, Default)]
pub struct InputStats {
    /// Mean of `x_j^2` per input column.
    pub mean_sq: Vec<f32>,
    /// A few input rows `[n, cols]` for the output-error metric.
    pub samples: Vec<f32>,
    /// `XᵀX / n` (`cols x cols`), collected for GPTQ schemes; empty otherwise.
    pub xtx: Vec<f32>,
}

/// Calibration statistics by HF weight name (`model.layers.0.self_attn.q_proj.weight`).
pub type Calibration = BTreeMap<String, InputStats>;

/// Why quantization failed.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// Loading the source failed.
    #[error(transparent)]
    Load(#[from] crate::LoadError),
    /// Writing failed.
    #[error(transparent)]
    Convert(#[from] crate::ConvertError),
    /// safetensors I/O.
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    /// A request that cannot be honoured.
    #[error("{path}: {what}")]
    Invalid {
        /// The model directory.
        path: PathBuf,
        /// Why.
        what: String,
    },
}

/// Quantization settings.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// The scheme.
    pub scheme: Scheme,
    /// Byte layout of the trits.
    pub packing: Packing,
    /// Calibration statistics (required by `:cal` schemes; enables the output-error metric).
    pub calibration: Option<Calibration>,
    /// Replace an existing output.
    pub overwrite: bool,
    /// Alternating least-squares iterations for planes schemes.
    pub iters: usize,
    /// Also quantize the token embedding and an untied output head (policy override; by default
    /// they stay in floating point).
    pub quantize_embeddings: bool,
}

/// Error and size of one quantized layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// HF weight name.
    pub name: String,
    /// `[rows, cols]`.
    pub shape: [usize; 2],
    /// `||W - Ŵ|| / ||W||`.
    pub weight_rel_error: f64,
    /// `||(W - Ŵ)X|| / ||WX||` on calibration inputs, when given.
    pub output_rel_error: Option<f64>,
    /// Storage bits per weight.
    pub bits_per_weight: f64,
}

/// What `quantize_model` did.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizeReport {
    /// Canonical scheme.
    pub scheme: String,
    /// Packing.
    pub packing: String,
    /// Per layer, in checkpoint order.
    pub layers: Vec<LayerReport>,
    /// Bits per weight over all quantized linears.
    pub bits_per_weight: f64,
    /// `||W - Ŵ|| / ||W||` over all quantized linears together.
    pub model_weight_rel_error: f64,
    /// Mean of the per-layer output errors, when calibration was given.
    pub mean_output_rel_error: Option<f64>,
    /// Bytes of model.safetensors.
    pub bytes: u64,
}

/// Quantize one `[rows, cols]` matrix with a scheme (pure math, exposed for tests and tools).
/// A GPTQ scheme without a Hessian is fitted by calibration-weighted least squares instead.
pub fn quantize_matrix(
    w: &[f32],
    rows: usize,
    cols: usize,
    scheme: &Scheme,
    importance: Option<&[f32]>,
    iters: usize,
) -> TernaryMatrix {
    if scheme.absmean {
        return absmean::quantize(w, rows, cols, scheme.granularity);
    }
    let opts = PlaneOptions {
        planes: scheme.planes,
        granularity: scheme.granularity,
        iters,
    };
    let weighted = scheme.calibrated || scheme.gptq;
    planes::quantize(w, rows, cols, opts, importance.filter(|_| weighted))
}

/// [`quantize_matrix`] with the calibration Hessian `XᵀX` that GPTQ schemes need.
pub fn quantize_matrix_with(
    w: &[f32],
    rows: usize,
    cols: usize,
    scheme: &Scheme,
    importance: Option<&[f32]>,
    hessian: Option<&[f32]>,
    iters: usize,
) -> Result<TernaryMatrix, smolbit_ternary::gptq::GptqError> {
    match (scheme.gptq, scheme.granularity) {
        // The scheme parser only accepts gptq with group scales.
        (true, Granularity::Group(g)) => {
            let h = hessian.ok_or(smolbit_ternary::gptq::GptqError::Shape { got: 0, cols })?;
            smolbit_ternary::gptq::quantize(w, rows, cols, scheme.planes, g, h, iters)
        }
        _ => Ok(quantize_matrix(w, rows, cols, scheme, importance, iters)),
    }
}

/// Group scales are f16 (they cost bits per weight); per-tensor and per-row scales stay f32.
pub fn scale_dtype(g: Granularity) -> Dtype {
    match g {
        Granularity::Group(_) => Dtype::F16,
        Granularity::Tensor | Granularity::Row => Dtype::F32,
    }
}

pub(crate) fn is_linear(role: Role) -> bool {
    matches!(role, Role::Layer(l) if l.is_linear())
}

/// `a.b.weight` -> `a.b`
pub(crate) fn base_name(weight: &str) -> &str {
    weight.strip_suffix(".weight").unwrap_or(weight)
}

/// Open a converted full-precision directory, refusing one that is already quantized.
pub(crate) fn open_full_precision(
    input: &Path,
    verb: &str,
) -> Result<crate::ModelDir, QuantizeError> {
    let md = crate::ModelDir::open(input)?;
    if md.quant.is_some() {
        return Err(QuantizeError::Invalid {
            path: input.to_path_buf(),
            what: format!("is already quantized; {verb} the converted full-precision directory"),
        });
    }
    Ok(md)
}

/// Quantize the HF directory `input` into `out`.
pub fn quantize_model(
    input: &Path,
    out: &Path,
    opts: &QuantizeOptions,
) -> Result<QuantizeReport, QuantizeError> {
    let invalid = |what: String| QuantizeError::Invalid {
        path: input.to_path_buf(),
        what,
    };
    let md = open_full_precision(input, "quantize")?;
    if opts.scheme.needs_calibration() && opts.calibration.is_none() {
        return Err(invalid(format!(
            "scheme {} needs calibration statistics (--calibration <FILE>)",
            opts.scheme
        )));
    }
    write_dir_atomically(out, opts.overwrite, |staging| {
        write_quantized(&md, staging, opts, None)
    })
}

/// Trits and scales fitted elsewhere (by `smolbit distill`), by HF weight name, and how.
#[derive(Debug)]
pub struct Fitted<'a> {
    /// One matrix per block linear, in `opts.scheme`'s planes and granularity.
    pub matrices: &'a BTreeMap<String, TernaryMatrix>,
    /// Kept (not quantized) tensors that replace the input's, by HF name, in f32 (written in
    /// the input tensor's dtype): trained norm weights.
    pub tensors: BTreeMap<String, Vec<f32>>,
    /// Recorded as `quantization_config.distillation`.
    pub distillation: serde_json::Value,
}

/// Write the HF directory `input`'s model with the block linears taken from `fitted` instead
/// of quantized, into `out` (atomically, as [`quantize_model`]); `side` adds files to the
/// staging directory before it is renamed into place.
pub fn write_fitted(
    input: &Path,
    out: &Path,
    opts: &QuantizeOptions,
    fitted: &Fitted<'_>,
    side: impl FnOnce(&Path) -> Result<(), QuantizeError>,
) -> Result<QuantizeReport, QuantizeError> {
    let md = open_full_precision(input, "distill")?;
    write_dir_atomically(out, opts.overwrite, |staging| {
        let report = write_quantized(&md, staging, opts, Some(fitted))?;
        side(staging)?;
        Ok(report)
    })
}

fn write_quantized(
    md: &crate::ModelDir,
    staging: &Path,
    opts: &QuantizeOptions,
    fitted: Option<&Fitted<'_>>,
) -> Result<QuantizeReport, QuantizeError> {
    let scheme = opts.scheme;
    let needed = mapping::needed_tensors(&md.config);
    let mut specs = Vec::new();
    let mut kept = Vec::new();
    for n in &needed {
        if is_linear(n.role)
            || (opts.quantize_embeddings && matches!(n.role, Role::Embed | Role::Head))
        {
            let (rows, cols) = (n.shape[0], n.shape[1]);
            let base = base_name(&n.hf_name);
            specs.push(TensorSpec {
                name: format!("{base}.trits"),
                dtype: Dtype::U8,
                shape: vec![scheme.planes, rows, opts.packing.bytes_per_row(cols)],
            });
            specs.push(TensorSpec {
                name: format!("{base}.scales"),
                dtype: if scheme.scales8 {
                    Dtype::I8
                } else {
                    scale_dtype(scheme.granularity)
                },
                shape: vec![
                    scheme.planes,
                    scheme.granularity.scales_per_plane(rows, cols),
                ],
            });
            if scheme.scales8 {
                specs.push(TensorSpec {
                    name: format!("{base}.row_scales"),
                    dtype: Dtype::F32,
                    shape: vec![scheme.planes, rows],
                });
            }
        } else {
            let dtype = md.weights.entry(&n.hf_name)?.dtype;
            specs.push(TensorSpec {
                name: n.hf_name.clone(),
                dtype,
                shape: n.shape.clone(),
            });
            kept.push(base_name(&n.hf_name).to_string());
        }
    }
    if let Some(f) = fitted
        && let Some(name) = f
            .tensors
            .keys()
            .find(|k| !specs.iter().any(|s| &s.name == *k))
    {
        return Err(QuantizeError::Invalid {
            path: md.path.clone(),
            what: format!("{name}: a replacement for a tensor the output does not keep"),
        });
    }
    let mut layers = Vec::new();
    let mut current: Option<TernaryMatrix> = None;
    let mut row_scales: Vec<f32> = Vec::new();
    let mut errors = ErrorSums::default();
    let (mut bits, mut weights) = (0f64, 0f64);
    let st_path = staging.join("model.safetensors");
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("quantization".to_string(), scheme.to_string());
    safetensors::write_streaming(&st_path, &specs, &meta, |_, spec| {
        if let Some(base) = spec.name.strip_suffix(".trits") {
            let name = format!("{base}.weight");
            let (rows, cols) = (spec.shape[1], md.weights.entry(&name)?.shape[1]);
            let w = md.tensor_f32(&name, &[rows, cols])?;
            let stats = opts.calibration.as_ref().and_then(|c| c.get(&name));
            let importance = stats.map(|s| s.mean_sq.as_slice());
            let hessian = stats.map(|s| s.xtx.as_slice()).filter(|h| !h.is_empty());
            let mut m = match fitted.and_then(|f| f.matrices.get(&name)) {
                Some(m) => {
                    if (m.rows, m.cols, m.planes, m.granularity)
                        != (rows, cols, scheme.planes, scheme.granularity)
                    {
                        return Err(QuantizeError::Invalid {
                            path: md.path.clone(),
                            what: format!("{name}: fitted matrix does not match the scheme"),
                        });
                    }
                    m.clone()
                }
                None if fitted.is_some() => {
                    return Err(QuantizeError::Invalid {
                        path: md.path.clone(),
                        what: format!("{name}: no fitted matrix"),
                    });
                }
                None => {
                    quantize_matrix_with(&w, rows, cols, &scheme, importance, hessian, opts.iters)
                        .map_err(|e| QuantizeError::Invalid {
                        path: md.path.clone(),
                        what: format!("{name}: {e}"),
                    })?
                }
            };
            if scheme.scales8 {
                row_scales = planes::round_scales_8bit(&mut m, &w);
            }
            let w_hat = m.dequantize();
            let weight_rel_error = errors.add(&w, &w_hat);
            let bpw = if scheme.scales8 {
                m.bits_per_weight(opts.packing, 8)
                    + (m.planes * rows * 32) as f64 / (rows * cols) as f64
            } else {
                m.bits_per_weight(opts.packing, scale_dtype(scheme.granularity).size() * 8)
            };
            bits += bpw * (rows * cols) as f64;
            weights += (rows * cols) as f64;
            layers.push(LayerReport {
                name,
                shape: [rows, cols],
                weight_rel_error,
                output_rel_error: stats
                    .filter(|s| !s.samples.is_empty())
                    .map(|s| metrics::relative_output_error(&w, &w_hat, rows, cols, &s.samples)),
                bits_per_weight: bpw,
            });
            let n = rows * cols;
            let mut bytes = Vec::with_capacity(spec.shape.iter().product());
            for k in 0..m.planes {
                bytes.extend(pack::pack(
                    &m.trits[k * n..(k + 1) * n],
                    rows,
                    cols,
                    opts.packing,
                ));
            }
            current = Some(m);
            Ok::<_, QuantizeError>(bytes)
        } else if spec.name.ends_with(".scales") {
            let m = current.as_ref().ok_or_else(|| QuantizeError::Invalid {
                path: md.path.clone(),
                what: format!("internal: scales of {} before its trits", spec.name),
            })?;
            if scheme.scales8 {
                Ok(planes::scale_codes(m, &row_scales)
                    .into_iter()
                    .map(|c| c as u8)
                    .collect())
            } else {
                Ok(safetensors::encode_f32(
                    &m.scales,
                    scale_dtype(scheme.granularity),
                ))
            }
        } else if spec.name.ends_with(".row_scales") {
            Ok(safetensors::encode_f32(&row_scales, Dtype::F32))
        } else if let Some(v) = fitted.and_then(|f| f.tensors.get(&spec.name)) {
            if v.len() != spec.shape.iter().product::<usize>() {
                return Err(QuantizeError::Invalid {
                    path: md.path.clone(),
                    what: format!("{}: replacement has {} values", spec.name, v.len()),
                });
            }
            Ok(safetensors::encode_f32(v, spec.dtype))
        } else {
            Ok(md.weights.bytes(&spec.name)?.to_vec())
        }
    })?;

    let bits_per_weight = if weights > 0.0 { bits / weights } else { 0.0 };
    let qc = QuantConfig {
        quant_method: "smolbit".into(),
        scheme: scheme.to_string(),
        planes: scheme.planes,
        granularity: scheme.granularity.to_string(),
        activations: match scheme.activations {
            smolbit_ternary::Activations::Int8 => "int8".into(),
            smolbit_ternary::Activations::Float => "float".into(),
        },
        packing: opts.packing.name().into(),
        calibrated: scheme.needs_calibration(),
        modules_not_converted: kept,
        bits_per_weight,
        source: None,
        pre_norm_eps: None,
        distillation: fitted.map(|f| f.distillation.clone()),
    };
    let outs: Vec<f64> = layers.iter().filter_map(|l| l.output_rel_error).collect();
    let report = QuantizeReport {
        scheme: scheme.to_string(),
        packing: opts.packing.name().into(),
        bits_per_weight,
        model_weight_rel_error: errors.relative(),
        mean_output_rel_error: (!outs.is_empty())
            .then(|| outs.iter().sum::<f64>() / outs.len() as f64),
        bytes: std::fs::metadata(&st_path).map(|m| m.len()).unwrap_or(0),
        layers,
    };
    write_metadata(md, staging, &qc, &report)?;
    Ok(report)
}

/// The relative Frobenius error `||W - Ŵ|| / ||W||` over all quantized linears together (the
/// same quantity as `metrics::relative_frobenius`), accumulated one layer at a time.
#[derive(Debug, Default)]
pub(crate) struct ErrorSums {
    num: f64,
    den: f64,
}

impl ErrorSums {
    /// Add a layer; returns the layer's own relative error.
    pub(crate) fn add(&mut self, w: &[f32], w_hat: &[f32]) -> f64 {
        let num: f64 = w
            .iter()
            .zip(w_hat)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let den: f64 = w.iter().map(|a| f64::from(*a).powi(2)).sum();
        self.num += num;
        self.den += den;
        ratio(num, den)
    }

    /// Over every layer added.
    pub(crate) fn relative(&self) -> f64 {
        ratio(self.num, self.den)
    }
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 { (num / den).sqrt() } else { 0.0 }
}

/// Beside the weights in `staging`: the source's config.json with `quantization_config` set to
/// `qc`, its tokenizer and generation files, and `report` as `quantization.json`.
pub(crate) fn write_metadata(
    md: &crate::ModelDir,
    staging: &Path,
    qc: &QuantConfig,
    report: &QuantizeReport,
) -> Result<(), QuantizeError> {
    let path = md.path.join("config.json");
    let invalid = |e: String| QuantizeError::Invalid {
        path: path.clone(),
        what: e,
    };
    let src = std::fs::read_to_string(&path).map_err(|e| invalid(e.to_string()))?;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&src).map_err(|e| invalid(e.to_string()))?;
    cfg["quantization_config"] = serde_json::to_value(qc).unwrap_or_default();
    write_json(&staging.join("config.json"), &cfg)?;
    copy_side_files(&md.path, staging)?;
    write_json(
        &staging.join("quantization.json"),
        &serde_json::to_value(report).unwrap_or_default(),
    )?;
    Ok(())
}

/// Read a quantized linear back as a [`TernaryMatrix`].
pub fn read_ternary(
    md: &crate::ModelDir,
    qc: &QuantConfig,
    weight_name: &str,
    rows: usize,
    cols: usize,
) -> Result<TernaryMatrix, QuantizeError> {
    let invalid = |what: String| QuantizeError::Invalid {
        path: md.path.clone(),
        what,
    };
    let scheme = qc
        .scheme()
        .map_err(|e| invalid(format!("config.json: {e}")))?;
    let packing = qc
        .packing()
        .ok_or_else(|| invalid(format!("config.json: unknown packing '{}'", qc.packing)))?;
    let base = base_name(weight_name);
    let trits_name = format!("{base}.trits");
    let e = md.weights.entry(&trits_name)?;
    let want = vec![scheme.planes, rows, packing.bytes_per_row(cols)];
    if e.shape != want || e.dtype != Dtype::U8 {
        return Err(invalid(format!(
            "tensor '{trits_name}' has shape {:?}, expected U8 {want:?}",
            e.shape
        )));
    }
    let bytes = md.weights.bytes(&trits_name)?;
    let per_plane = rows * packing.bytes_per_row(cols);
    let mut trits = Vec::with_capacity(scheme.planes * rows * cols);
    for k in 0..scheme.planes {
        trits.extend(
            pack::unpack(
                &bytes[k * per_plane..(k + 1) * per_plane],
                rows,
                cols,
                packing,
            )
            .map_err(|e| invalid(format!("tensor '{trits_name}': {e}")))?,
        );
    }
    let scales_name = format!("{base}.scales");
    let spp = scheme.granularity.scales_per_plane(rows, cols);
    let se = md.weights.entry(&scales_name)?;
    if se.shape != [scheme.planes, spp] {
        return Err(invalid(format!(
            "tensor '{scales_name}' has shape {:?}, expected [{}, {spp}]",
            se.shape, scheme.planes
        )));
    }
    let mut scales = md.weights.to_f32(&scales_name)?;
    if scheme.scales8 {
        let rs_name = format!("{base}.row_scales");
        let rs = md.weights.to_f32(&rs_name)?;
        if rs.len() != scheme.planes * rows {
            return Err(invalid(format!(
                "tensor '{rs_name}' has {} values, expected {}",
                rs.len(),
                scheme.planes * rows
            )));
        }
        let per_row = spp / rows.max(1);
        for (i, s) in scales.iter_mut().enumerate() {
            let (p, r) = (i / spp, i % spp / per_row.max(1));
            *s = *s * rs[p * rows + r] / 127.0;
        }
    }
    Ok(TernaryMatrix {
        rows,
        cols,
        planes: scheme.planes,
        granularity: scheme.granularity,
        trits,
        scales,
    })
}

/// Write the per-tensor b1.58 scheme in the format transformers' BitNet integration loads
/// (`quant_method: "bitnet"`, `linear_class: "bitlinear"`, offline): every block linear as
/// `<name>.weight` uint8 `[rows / 4, cols]` in `pack_weights` layout and `<name>.weight_scale`
/// `[1]` = `1 / mean|W|`; everything else as in the source. Only `b158:tensor` maps onto
/// BitLinear (one scale per tensor, int8 activations).
pub fn export_hf_bitnet(
    input: &Path,
    out: &Path,
    overwrite: bool,
) -> Result<QuantizeReport, QuantizeError> {
    let invalid = |what: String| QuantizeError::Invalid {
        path: input.to_path_buf(),
        what,
    };
    let md = open_full_precision(input, "export from")?;
    let needed = mapping::needed_tensors(&md.config);
    for n in needed.iter().filter(|n| is_linear(n.role)) {
        if n.shape[0] % 4 != 0 {
            return Err(invalid(format!(
                "'{}' has {} rows; BitLinear needs a multiple of 4",
                n.hf_name, n.shape[0]
            )));
        }
    }
    write_dir_atomically(out, overwrite, |staging| {
        let mut specs = Vec::new();
        for n in &needed {
            if is_linear(n.role) {
                specs.extend(crate::native::packed_specs(
                    &n.hf_name,
                    n.shape[0],
                    n.shape[1],
                    Dtype::F32,
                ));
            } else {
                specs.push(TensorSpec {
                    name: n.hf_name.clone(),
                    dtype: Dtype::F32,
                    shape: n.shape.clone(),
                });
            }
        }
        let mut layers = Vec::new();
        let mut pending_scale = None;
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let st_path = staging.join("model.safetensors");
        safetensors::write_streaming(&st_path, &specs, &meta, |_, spec| {
            if spec.dtype == Dtype::U8 {
                let (rows, cols) = (spec.shape[0] * 4, spec.shape[1]);
                let w = md.tensor_f32(&spec.name, &[rows, cols])?;
                let m = absmean::quantize(&w, rows, cols, Granularity::Tensor);
                layers.push(LayerReport {
                    name: spec.name.clone(),
                    shape: [rows, cols],
                    weight_rel_error: metrics::relative_frobenius(&w, &m.dequantize()),
                    output_rel_error: None,
                    bits_per_weight: 2.0 + 32.0 / (rows * cols) as f64,
                });
                pending_scale = Some(1.0 / m.scales[0]);
                Ok::<_, QuantizeError>(
                    pack::pack_hf_bitnet(&m.trits, rows, cols).unwrap_or_default(),
                )
            } else if spec.name.ends_with(".weight_scale") {
                Ok(pending_scale.take().unwrap_or(1.0).to_le_bytes().to_vec())
            } else {
                Ok(safetensors::encode_f32(
                    &md.tensor_f32(&spec.name, &spec.shape)?,
                    Dtype::F32,
                ))
            }
        })?;
        let mut cfg = md.config.to_hf_json("float32");
        cfg["quantization_config"] = serde_json::json!({
            "quant_method": "bitnet",
            "linear_class": "bitlinear",
            "quantization_mode": "offline",
            "modules_to_not_convert": ["lm_head"],
        });
        write_json(&staging.join("config.json"), &cfg)?;
        copy_side_files(&md.path, staging)?;
        let bytes = std::fs::metadata(&st_path).map(|m| m.len()).unwrap_or(0);
        let n: f64 = layers
            .iter()
            .map(|l| (l.shape[0] * l.shape[1]) as f64)
            .sum();
        Ok(QuantizeReport {
            scheme: "b158:tensor:a8".into(),
            packing: "hf-bitnet".into(),
            bits_per_weight: layers
                .iter()
                .map(|l| l.bits_per_weight * (l.shape[0] * l.shape[1]) as f64)
                .sum::<f64>()
                / n.max(1.0),
            model_weight_rel_error: 0.0,
            mean_output_rel_error: None,
            bytes,
            layers,
        })
    })
}

/// One tensor of a ternary checkpoint that [`write_ternary_checkpoint`] writes.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// A linear `[rows, cols]` (HF weight name), stored as `.trits` and `.scales`.
    Ternary {
        /// `<name>.weight`
        name: String,
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
    },
    /// Any other tensor, stored as given.
    Float {
        /// The tensor's name.
        name: String,
        /// Element type written.
        dtype: Dtype,
        /// Shape.
        shape: Vec<usize>,
    },
}

/// Write `model.safetensors` of a ternary checkpoint (the layout [`quantize_model`] writes,
/// with the 2-bit packing) from trits that already exist: `ternary(name, rows, cols)` gives each
/// linear's matrix (one plane, granularity `scheme`'s), `float(i)` the bytes of every other
/// item. Returns the stored bits per weight of the ternary linears.
pub(crate) fn write_ternary_checkpoint<E>(
    path: &Path,
    scheme: &Scheme,
    items: &[Item],
    meta: &BTreeMap<String, String>,
    mut ternary: impl FnMut(&str, usize, usize) -> Result<TernaryMatrix, E>,
    mut float: impl FnMut(usize) -> Result<Vec<u8>, E>,
) -> Result<f64, E>
where
    E: From<SafetensorsError> + From<crate::ConvertError>,
{
    let packing = Packing::TwoBit;
    let scale_dtype = scale_dtype(scheme.granularity);
    let mut specs = Vec::new();
    let mut owner = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Item::Ternary { name, rows, cols } => {
                let base = base_name(name);
                specs.push(TensorSpec {
                    name: format!("{base}.trits"),
                    dtype: Dtype::U8,
                    shape: vec![1, *rows, packing.bytes_per_row(*cols)],
                });
                specs.push(TensorSpec {
                    name: format!("{base}.scales"),
                    dtype: scale_dtype,
                    shape: vec![1, scheme.granularity.scales_per_plane(*rows, *cols)],
                });
                owner.extend([i, i]);
            }
            Item::Float { name, dtype, shape } => {
                specs.push(TensorSpec {
                    name: name.clone(),
                    dtype: *dtype,
                    shape: shape.clone(),
                });
                owner.push(i);
            }
        }
    }
    let (mut bits, mut weights) = (0f64, 0f64);
    let mut scales: Option<Vec<f32>> = None;
    safetensors::write_streaming(path, &specs, meta, |k, spec| match &items[owner[k]] {
        Item::Ternary { name, rows, cols } => {
            if spec.name.ends_with(".scales") {
                let s = scales.take().ok_or_else(|| crate::ConvertError::Output {
                    path: path.to_path_buf(),
                    what: format!("internal: scales of {name} before its trits"),
                })?;
                return Ok(safetensors::encode_f32(&s, scale_dtype));
            }
            let m = ternary(name, *rows, *cols)?;
            if m.planes != 1 || m.granularity != scheme.granularity || m.rows != *rows {
                return Err(crate::ConvertError::Output {
                    path: path.to_path_buf(),
                    what: format!(
                        "internal: {name} is {} planes by {}, expected 1 by {}",
                        m.planes, m.granularity, scheme.granularity
                    ),
                }
                .into());
            }
            bits += m.bits_per_weight(packing, scale_dtype.size() * 8) * (rows * cols) as f64;
            weights += (rows * cols) as f64;
            let bytes = pack::pack(&m.trits, *rows, *cols, packing);
            scales = Some(m.scales);
            Ok(bytes)
        }
        Item::Float { .. } => float(owner[k]),
    })?;
    Ok(if weights > 0.0 { bits / weights } else { 0.0 })
}

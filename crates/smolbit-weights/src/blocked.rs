//! Blocked 8- and 4-bit checkpoints (`smolbit quantize --scheme q8|q4`): the int8 and int4
//! baselines a llama.cpp user would pick (Q8_0, Q4_0), written and read back bit-identically.
//!
//! Layout of a blocked directory (as a ternary one, [`crate::quantize`]):
//! - `config.json`: the model config plus `quantization_config` with `scheme` `q8` or `q4`,
//!   `packing` `q8_0` or `q4_0`, `activations` `int8`, `granularity` `g32`, `planes` 0.
//! - `model.safetensors`: for every block linear `<name>.weight` of the source,
//!   `<name>.qweight` and `<name>.qscales`; every other tensor as in the source.
//!   - q8: `qweight` I8 `[rows, cols]`, the codes -127..=127.
//!   - q4: `qweight` U8 `[rows, cols / 2]`; per row, one 16-byte block per 32 columns, byte `j`
//!     holding column `j` in its low nibble and column `16 + j` in its high one, each as
//!     `q + 8` (llama.cpp's Q4_0 nibble order).
//!   - `qscales` F16 `[rows, cols / 32]`: the step `d` of each 32-column group, `w = q · d`.
//!
//! The codes and steps are the kernels' own ([`Q8BlockMatrix::to_blocks`],
//! [`Q4Matrix::to_blocks`]), so a checkpoint loads into the same tables that `--linears q8|q4`
//! makes from the source at load time. Columns must be whole groups of 32 (every SmolLM and
//! BitNet shape is).

use std::collections::BTreeMap;
use std::path::Path;

use smolbit_ternary::kernels::{Q4Matrix, Q8BlockMatrix, QuantizedTable};

use crate::convert::write_dir_atomically;
use crate::mapping;
use crate::quantize::{
    ErrorSums, LayerReport, QuantConfig, QuantizeError, QuantizeReport, base_name, is_linear,
    open_full_precision, write_metadata,
};
use crate::safetensors::{self, Dtype, TensorSpec};

/// Columns per step.
const GROUP: usize = 32;

/// A blocked integer format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockedFormat {
    /// int8 codes, a binary16 step per 32 columns (8.5 bits a weight).
    Q8,
    /// int4 codes, a binary16 step per 32 columns (4.5 bits a weight).
    Q4,
}

impl BlockedFormat {
    /// The format a `--scheme` names (`q8`, `q4`), if it names one.
    pub fn from_scheme(s: &str) -> Option<Self> {
        match s {
            "q8" => Some(BlockedFormat::Q8),
            "q4" => Some(BlockedFormat::Q4),
            _ => None,
        }
    }

    /// The scheme name.
    pub fn name(self) -> &'static str {
        match self {
            BlockedFormat::Q8 => "q8",
            BlockedFormat::Q4 => "q4",
        }
    }

    /// The packing recorded in `quantization_config`.
    fn packing(self) -> &'static str {
        match self {
            BlockedFormat::Q8 => "q8_0",
            BlockedFormat::Q4 => "q4_0",
        }
    }

    /// Storage bits per weight (codes plus one binary16 step per 32).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            BlockedFormat::Q8 => 8.5,
            BlockedFormat::Q4 => 4.5,
        }
    }

    /// The `qweight` tensor's dtype and shape for a `[rows, cols]` linear.
    fn codes_spec(self, rows: usize, cols: usize) -> (Dtype, Vec<usize>) {
        match self {
            BlockedFormat::Q8 => (Dtype::I8, vec![rows, cols]),
            BlockedFormat::Q4 => (Dtype::U8, vec![rows, cols / 2]),
        }
    }
}

/// A blocked linear as the kernels hold it.
#[derive(Debug, Clone)]
pub enum BlockedTable {
    /// [`BlockedFormat::Q8`].
    Q8(Q8BlockMatrix),
    /// [`BlockedFormat::Q4`].
    Q4(Q4Matrix),
}

impl BlockedTable {
    /// Quantize a row-major `[rows, cols]` matrix (the kernels' quantizers).
    pub fn quantize(format: BlockedFormat, w: &[f32], rows: usize, cols: usize) -> Self {
        match format {
            BlockedFormat::Q8 => BlockedTable::Q8(Q8BlockMatrix::quantize(w, rows, cols)),
            BlockedFormat::Q4 => BlockedTable::Q4(Q4Matrix::quantize(w, rows, cols)),
        }
    }

    /// The format.
    pub fn format(&self) -> BlockedFormat {
        match self {
            BlockedTable::Q8(_) => BlockedFormat::Q8,
            BlockedTable::Q4(_) => BlockedFormat::Q4,
        }
    }

    /// The `[rows, cols]` weights dequantized (exact: a code times a binary16 step is an f32).
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            BlockedTable::Q8(m) => m.dequantize(),
            BlockedTable::Q4(m) => m.dequantize(),
        }
    }

    /// The stored bytes of `qweight` and the steps, or `None` when the columns are not whole
    /// groups of 32.
    fn to_stored(&self) -> Option<(Vec<u8>, Vec<u16>)> {
        match self {
            BlockedTable::Q8(m) => m
                .to_blocks()
                .map(|(c, s)| (c.into_iter().map(|q| q as u8).collect(), s)),
            BlockedTable::Q4(m) => m.to_blocks(),
        }
    }
}

fn invalid(path: &Path, what: String) -> QuantizeError {
    QuantizeError::Invalid {
        path: path.to_path_buf(),
        what,
    }
}

/// Quantize the HF directory `input` into a blocked checkpoint `out` (written atomically;
/// `overwrite` replaces an existing `out`). The embedding, norms and output head stay as in
/// the source.
pub fn quantize_blocked(
    input: &Path,
    out: &Path,
    format: BlockedFormat,
    overwrite: bool,
) -> Result<QuantizeReport, QuantizeError> {
    let md = open_full_precision(input, "quantize")?;
    write_dir_atomically(out, overwrite, |staging| {
        write_blocked(&md, staging, format)
    })
}

fn write_blocked(
    md: &crate::ModelDir,
    staging: &Path,
    format: BlockedFormat,
) -> Result<QuantizeReport, QuantizeError> {
    let needed = mapping::needed_tensors(&md.config);
    let (mut specs, mut kept) = (Vec::new(), Vec::new());
    for n in &needed {
        if is_linear(n.role) {
            let (rows, cols) = (n.shape[0], n.shape[1]);
            if !cols.is_multiple_of(GROUP) {
                return Err(invalid(
                    &md.path,
                    format!(
                        "{}: {cols} columns is not a multiple of {GROUP}, which {} needs",
                        n.hf_name,
                        format.name()
                    ),
                ));
            }
            let base = base_name(&n.hf_name);
            let (dtype, shape) = format.codes_spec(rows, cols);
            specs.push(TensorSpec {
                name: format!("{base}.qweight"),
                dtype,
                shape,
            });
            specs.push(TensorSpec {
                name: format!("{base}.qscales"),
                dtype: Dtype::F16,
                shape: vec![rows, cols / GROUP],
            });
        } else {
            specs.push(TensorSpec {
                name: n.hf_name.clone(),
                dtype: md.weights.entry(&n.hf_name)?.dtype,
                shape: n.shape.clone(),
            });
            kept.push(base_name(&n.hf_name).to_string());
        }
    }
    let mut layers = Vec::new();
    let mut steps: Vec<u16> = Vec::new();
    let mut errors = ErrorSums::default();
    let st_path = staging.join("model.safetensors");
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("quantization".to_string(), format.name().to_string());
    safetensors::write_streaming(&st_path, &specs, &meta, |_, spec| {
        if let Some(base) = spec.name.strip_suffix(".qweight") {
            let name = format!("{base}.weight");
            let (rows, cols) = {
                let e = md.weights.entry(&name)?;
                (e.shape[0], e.shape[1])
            };
            let w = md.tensor_f32(&name, &[rows, cols])?;
            let table = BlockedTable::quantize(format, &w, rows, cols);
            layers.push(LayerReport {
                name,
                shape: [rows, cols],
                weight_rel_error: errors.add(&w, &table.dequantize()),
                output_rel_error: None,
                bits_per_weight: format.bits_per_weight(),
            });
            let (codes, s) = table
                .to_stored()
                .ok_or_else(|| invalid(&md.path, format!("{base}: columns not whole groups")))?;
            steps = s;
            Ok::<_, QuantizeError>(codes)
        } else if spec.name.ends_with(".qscales") {
            Ok(std::mem::take(&mut steps)
                .into_iter()
                .flat_map(u16::to_le_bytes)
                .collect())
        } else {
            Ok(md.weights.bytes(&spec.name)?.to_vec())
        }
    })?;

    let qc = QuantConfig {
        quant_method: "smolbit".into(),
        scheme: format.name().into(),
        planes: 0,
        granularity: format!("g{GROUP}"),
        activations: "int8".into(),
        packing: format.packing().into(),
        calibrated: false,
        modules_not_converted: kept,
        bits_per_weight: format.bits_per_weight(),
        source: None,
        pre_norm_eps: None,
        distillation: None,
    };
    let report = QuantizeReport {
        scheme: format.name().into(),
        packing: format.packing().into(),
        bits_per_weight: format.bits_per_weight(),
        model_weight_rel_error: errors.relative(),
        mean_output_rel_error: None,
        bytes: std::fs::metadata(&st_path).map(|m| m.len()).unwrap_or(0),
        layers,
    };
    write_metadata(md, staging, &qc, &report)?;
    Ok(report)
}

/// Read a blocked linear (`name` is its `.weight` name) back into the kernels' table, exactly.
pub fn read_blocked(
    md: &crate::ModelDir,
    format: BlockedFormat,
    weight_name: &str,
    rows: usize,
    cols: usize,
) -> Result<BlockedTable, QuantizeError> {
    let base = base_name(weight_name);
    let (codes_name, steps_name) = (format!("{base}.qweight"), format!("{base}.qscales"));
    if !cols.is_multiple_of(GROUP) {
        return Err(invalid(
            &md.path,
            format!("{weight_name}: {cols} columns is not a multiple of {GROUP}"),
        ));
    }
    let (dtype, shape) = format.codes_spec(rows, cols);
    for (name, dtype, shape) in [
        (&codes_name, dtype, shape),
        (&steps_name, Dtype::F16, vec![rows, cols / GROUP]),
    ] {
        let e = md.weights.entry(name)?;
        if e.dtype != dtype || e.shape != shape {
            return Err(invalid(
                &md.path,
                format!(
                    "{name}: {:?} {:?}, expected {dtype:?} {shape:?} for {}",
                    e.dtype,
                    e.shape,
                    format.name()
                ),
            ));
        }
    }
    let codes = md.weights.bytes(&codes_name)?;
    let steps: Vec<u16> = md
        .weights
        .bytes(&steps_name)?
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let bad = |e: smolbit_ternary::kernels::BlocksError| invalid(&md.path, format!("{base}: {e}"));
    Ok(match format {
        BlockedFormat::Q8 => {
            let codes: Vec<i8> = codes.iter().map(|&b| b as i8).collect();
            BlockedTable::Q8(Q8BlockMatrix::from_blocks(rows, cols, &codes, &steps).map_err(bad)?)
        }
        BlockedFormat::Q4 => {
            BlockedTable::Q4(Q4Matrix::from_blocks(rows, cols, codes, &steps).map_err(bad)?)
        }
    })
}

//! The SmolLM decoder on burn: Llama (SmolLM, SmolLM2, and with BitLinear projections
//! Falcon3-1.58bit), SmolLM3 (no-RoPE layers) and BitNet b1.58 (`BitNetForCausalLM`: sub-norms
//! before `o_proj` and `down_proj`, relu²).
//!
//! Embedding, RMSNorm, grouped-query attention with rotary embeddings (HF's non-interleaved
//! `rotate_half` form), SwiGLU (or relu²-gated) MLP, tied or untied output head and a KV cache
//! for incremental decoding. Weights come from a Hugging Face directory through
//! `smolbit-weights`; this crate is the only one that names burn.
//!
//! It runs on burn's Flex CPU backend, and on wgpu with the `wgpu` feature; see [`device`].
//!
//! Ternary checkpoints (`smolbit quantize`, or natively ternary ones: transformers' BitNet
//! directories and converted TQ1_0 / TQ2_0 / I2_S GGUFs) keep their linears packed at 2 bits
//! on the CPU and run them through `smolbit_ternary::kernels` ([`Linear::Ternary`]: int8 per-token activations for
//! `:a8` schemes, float otherwise), and on wgpu through the CubeCL kernels of the `gpu` module
//! (`Linear::Gpu`). Dense linears on the CPU run on the host kernels too ([`Linear::Table`]: the
//! checkpoint's f32, binary16 or bfloat16 weights as stored, or by [`LoadOptions::linears`] int8
//! or int4 ones); everything else stays in burn. With [`LoadOptions::reference_linears`] (or a
//! group size the packed layout does not take), trits are unpacked to f32 at load and `:a8`
//! inputs are fake-quantized to int8 (the reference path the kernels are tested against).
//! [`Model::calibrate`] records each linear's input statistics for calibrated schemes.
//!
//! On the CPU the blocks run on the host path by default: the residual stream stays in host
//! memory, and norms, RoPE, attention (`smolbit_ternary::attention`, over a host KV cache of f32
//! or, with [`LoadOptions::kv_cache`], f16) and SwiGLU run beside the kernels, so decoding makes
//! no burn calls on a packed model. Several sequences step together through
//! [`Model::forward_last_batch`]; their decode steps on a packed model run on a team of threads
//! (module `team`: the whole step per thread, products split by rows, parts exchanged at
//! barriers).
//! [`LoadOptions::burn_ops`] (or `SMOLBIT_BURN_OPS=1`) runs burn's ops instead, as every other
//! device does; the two are tested against each other.

#[cfg(feature = "wgpu")]
pub mod fused;
#[cfg(feature = "wgpu")]
pub mod gpu;
mod host;
mod layers;
mod team;

use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;
use smolbit_ternary::kernels::{F16Matrix, Q4Matrix, Q8Matrix, QuantizedTable};
use smolbit_weights::{LoadError, ModelConfig, ModelDir};

pub use burn::prelude::Device;
pub use layers::{Block, HostTable, InputRecorder, KvCache, Linear};

pub use smolbit_weights::quantize::{Calibration, InputStats, QuantConfig};

/// Why the model could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Loading the directory failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A token id outside the vocabulary.
    #[error("token id {id} is out of range (vocabulary size {vocab})")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// More positions than the model's context.
    #[error("{needed} positions exceed the model's context length {max}")]
    ContextOverflow {
        /// Positions the call needs.
        needed: usize,
        /// `max_position_embeddings`.
        max: usize,
    },
    /// No tokens given.
    #[error("no input tokens")]
    Empty,
    /// A device name this build does not provide.
    #[error("unknown device '{0}' (available: {1})")]
    Device(String, &'static str),
}

/// Device names this build accepts.
pub const DEVICES: &str = if cfg!(feature = "wgpu") {
    "cpu, wgpu"
} else {
    "cpu"
};

/// The burn device for a name: `cpu` (burn's Flex backend) or, with the `wgpu` feature, `wgpu`.
pub fn device(name: &str) -> Result<Device, ModelError> {
    match name {
        "cpu" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(Default::default())),
        other => Err(ModelError::Device(other.to_string(), DEVICES)),
    }
}

/// A loaded decoder.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    device: Device,
    /// `[vocab, hidden]`
    embed: Table,
    layers: Vec<Block>,
    /// The final RMSNorm.
    norm: layers::Norm,
    /// `[hidden, vocab]` (a transposed view of the embedding when tied), or f16, 8- or 4-bit.
    head: Table,
    quant: Option<QuantConfig>,
    /// Run the blocks on the host (CPU device, unless `LoadOptions::burn_ops`).
    host: bool,
    /// Element type of the host path's KV cache.
    kv: KvStorage,
    /// The launch-lean decode step on a CubeCL device (`fused`).
    #[cfg(feature = "wgpu")]
    fused: Option<fused::FusedDecoder>,
}

/// Upload a row-major f32 matrix `[rows, cols]`.
pub(crate) fn upload2(data: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}

/// How to load a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Unpack ternary linears to f32 and run them through burn's matmul (the reference path)
    /// instead of the packed CPU kernels. Also set by `SMOLBIT_REFERENCE=1`.
    pub reference_linears: bool,
    /// Storage of the embedding and output head.
    pub head: HeadPolicy,
    /// On the CPU, run every step of the blocks with burn's tensor ops, as on other devices,
    /// instead of the host path (norms, RoPE, attention and SwiGLU on host memory next to the
    /// packed kernels, the default there). Also set by `SMOLBIT_BURN_OPS=1`. The two paths
    /// are tested against each other.
    pub burn_ops: bool,
    /// Element type of the KV cache on the host path (other paths keep f32).
    pub kv_cache: KvStorage,
    /// Storage of dense linears on the CPU host path.
    pub linears: LinearPolicy,
    /// On a GPU (CubeCL) device, decode through burn's ops, one dispatch per op, instead of the
    /// fused step (the path it is tested against). Also set by `SMOLBIT_BURN_DECODE=1`.
    pub burn_decode: bool,
}

/// How a dense linear's weights are stored on the host kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearStorage {
    /// f32.
    F32,
    /// IEEE binary16 (rounded to nearest even).
    F16,
    /// bfloat16 (rounded to nearest even).
    Bf16,
    /// int8 with a binary16 step per 32 columns (`smolbit_ternary::kernels::Q8BlockMatrix`, as
    /// llama.cpp's Q8_0), int8 activations (the head in q8 keeps a scale per row).
    Q8,
    /// 4-bit with a binary16 step per 32 columns (`smolbit_ternary::kernels::Q4Matrix`), int8
    /// activations.
    Q4,
}

impl LinearStorage {
    /// Whether its kernels quantize activations to int8 (q8, q4).
    pub fn int8_activations(self) -> bool {
        matches!(self, LinearStorage::Q8 | LinearStorage::Q4)
    }

    /// Its name: "f32", "f16", "bf16", "q8" or "q4".
    pub fn name(self) -> &'static str {
        match self {
            LinearStorage::F32 => "f32",
            LinearStorage::F16 => "f16",
            LinearStorage::Bf16 => "bf16",
            LinearStorage::Q8 => "q8",
            LinearStorage::Q4 => "q4",
        }
    }
}

/// How dense (not ternary) linears are stored and run on the CPU host path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LinearPolicy {
    /// The checkpoint's own precision on the host kernels: binary16 and bfloat16 weights as
    /// stored, anything else in f32.
    #[default]
    Auto,
    /// f32 through burn's matmul (the path before the host kernels; for comparison).
    Burn,
    /// This storage (converted at load).
    Store(LinearStorage),
}

impl std::str::FromStr for LinearPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        use LinearStorage as S;
        Ok(match s {
            "auto" => LinearPolicy::Auto,
            "burn" => LinearPolicy::Burn,
            "f32" => LinearPolicy::Store(S::F32),
            "f16" => LinearPolicy::Store(S::F16),
            "bf16" => LinearPolicy::Store(S::Bf16),
            "q8" => LinearPolicy::Store(S::Q8),
            "q4" => LinearPolicy::Store(S::Q4),
            other => {
                return Err(format!(
                    "unknown linear storage '{other}' (auto, burn, f32, f16, bf16, q8, q4)"
                ));
            }
        })
    }
}

impl LinearPolicy {
    /// The storage of a dense linear whose checkpoint stores it as `dtype` (`None`: burn).
    fn storage(self, dtype: Option<smolbit_weights::safetensors::Dtype>) -> Option<LinearStorage> {
        use smolbit_weights::safetensors::Dtype;
        match self {
            LinearPolicy::Burn => None,
            LinearPolicy::Store(s) => Some(s),
            LinearPolicy::Auto => Some(match dtype {
                Some(Dtype::F16) => LinearStorage::F16,
                Some(Dtype::BF16) => LinearStorage::Bf16,
                _ => LinearStorage::F32,
            }),
        }
    }
}

/// How the KV cache stores keys and values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvStorage {
    /// f32, as computed (the default: the golden-logit tests hold to 1e-4 with it).
    #[default]
    F32,
    /// binary16, rounded once when cached and widened as attention reads them: half the
    /// memory and half the bytes attention reads per token (llama.cpp's default cache type).
    F16,
}

impl KvStorage {
    /// Its name: "f32" or "f16".
    pub fn name(self) -> &'static str {
        match self {
            KvStorage::F32 => "f32",
            KvStorage::F16 => "f16",
        }
    }
}

impl std::str::FromStr for KvStorage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(KvStorage::F32),
            "f16" => Ok(KvStorage::F16),
            other => Err(format!("unknown KV cache storage '{other}' (f32, f16)")),
        }
    }
}

/// How the embedding and output head are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HeadPolicy {
    /// On the CPU kernels: 8-bit for ternary checkpoints, for dense ones the storage of their
    /// linears ([`LoadOptions::linears`]: f16, q8 or q4; f32 for f32 and bf16); f32 elsewhere.
    #[default]
    Auto,
    /// f32 (as loaded).
    F32,
    /// binary16 (`smolbit_ternary::kernels::F16Matrix`), float activations: half of f32's
    /// bytes at f16 rounding.
    F16,
    /// 8-bit, per-row absmax scales (`smolbit_ternary::kernels::Q8Matrix`), int8 activations.
    Q8,
    /// 4-bit, a binary16 step per 32 columns (`smolbit_ternary::kernels::Q4Matrix`, as
    /// llama.cpp's Q4_0), int8 activations: 4.5 bits a weight, for memory-bound decoding of
    /// large vocabularies.
    Q4,
}

impl std::str::FromStr for HeadPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => HeadPolicy::Auto,
            "f32" => HeadPolicy::F32,
            "f16" => HeadPolicy::F16,
            "q8" => HeadPolicy::Q8,
            "q4" => HeadPolicy::Q4,
            other => {
                return Err(format!(
                    "unknown head storage '{other}' (auto, f32, f16, q8, q4)"
                ));
            }
        })
    }
}

/// The embedding table or the output head.
#[derive(Debug, Clone)]
enum Table {
    /// f32: the embedding `[vocab, hidden]`, or the head `[hidden, vocab]`.
    Dense(Box<Tensor<2>>),
    /// 8- or 4-bit `[vocab, hidden]` (named "q8" or "q4"), shared by a tied embedding and head.
    Quantized(Arc<dyn QuantizedTable>, &'static str),
}

impl Model {
    /// Load a Hugging Face style directory (as `smolbit convert` writes) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        Model::load_with(dir, device, LoadOptions::default())
    }

    /// [`Model::load`] with options.
    pub fn load_with(dir: &Path, device: &Device, opts: LoadOptions) -> Result<Self, ModelError> {
        let md = ModelDir::open(dir)?;
        let c = md.config.clone();
        let get1 = |name: &str, n: usize| -> Result<Tensor<1>, ModelError> {
            Ok(Tensor::from_data(
                TensorData::new(md.tensor_f32(name, &[n])?, [n]),
                device,
            ))
        };
        // Linear weights: dense; or ternary, kept packed for the CPU kernels or the wgpu
        // kernels, or unpacked to f32 (the reference path: `SMOLBIT_REFERENCE=1`,
        // `reference_linears`, unsupported groups).
        let act8 = md.quant.as_ref().is_some_and(QuantConfig::int8_activations);
        let reference = opts.reference_linears || std::env::var_os("SMOLBIT_REFERENCE").is_some();
        let kernels = *device == Device::flex() && !reference;
        let cpu = *device == Device::flex();
        let host = cpu && !opts.burn_ops && std::env::var_os("SMOLBIT_BURN_OPS").is_none();
        let head_policy = match opts.head {
            HeadPolicy::Auto if kernels && md.quant.is_some() => HeadPolicy::Q8,
            // A dense checkpoint on the host kernels: the head in the linears' storage (an f16
            // checkpoint reads its f16 head as stored; `--linears q4` makes a 4-bit model).
            HeadPolicy::Auto if kernels && host => {
                let embed = md.weights.entry("model.embed_tokens.weight").ok();
                match opts.linears.storage(embed.map(|e| e.dtype)) {
                    Some(LinearStorage::F16) => HeadPolicy::F16,
                    Some(LinearStorage::Q8) => HeadPolicy::Q8,
                    Some(LinearStorage::Q4) => HeadPolicy::Q4,
                    _ => HeadPolicy::F32,
                }
            }
            HeadPolicy::Auto => HeadPolicy::F32,
            // The quantized tables run on the CPU kernels only.
            HeadPolicy::F16 | HeadPolicy::Q8 | HeadPolicy::Q4 if !cpu => HeadPolicy::F32,
            p => p,
        };
        // The embedding and head may be ternary too (quantize --quantize-embeddings); they are
        // read as f32 and, by policy, stored in 8 or 4 bits.
        let (v, h) = (c.vocab_size, c.hidden_size);
        let table = |name: &str| -> Result<Table, ModelError> {
            let t = match head_policy {
                HeadPolicy::Q8 => Table::Quantized(
                    Arc::new(quantized_table::<Q8Matrix>(&md, name, v, h)?),
                    "q8",
                ),
                HeadPolicy::F16 => Table::Quantized(
                    Arc::new(quantized_table::<F16Matrix>(&md, name, v, h)?),
                    "f16",
                ),
                HeadPolicy::Q4 => Table::Quantized(
                    Arc::new(quantized_table::<Q4Matrix>(&md, name, v, h)?),
                    "q4",
                ),
                _ => Table::Dense(Box::new(upload2(md.linear_f32(name, v, h)?, v, h, device))),
            };
            md.weights.release();
            Ok(t)
        };
        let embed = table("model.embed_tokens.weight")?;
        let as_head = |t: &Table| match t {
            Table::Dense(w) => Table::Dense(Box::new((**w).clone().transpose())),
            Table::Quantized(m, kind) => Table::Quantized(m.clone(), kind),
        };
        let head = if c.tie_word_embeddings {
            as_head(&embed)
        } else {
            as_head(&table("lm_head.weight")?)
        };
        let norm = layers::Norm::new(get1("model.norm.weight", c.hidden_size)?, c.rms_norm_eps);
        let load_linear = |name: &str, rows: usize, cols: usize| -> Result<Linear, ModelError> {
            // int8 activations for the ternary linears of an `:a8` checkpoint only (a linear
            // left in floating point, as transformers' `modules_to_not_convert`, takes floats).
            let act8 = act8 && md.is_ternary(name);
            // Packed once, then run by the CPU kernels or uploaded to a CubeCL device.
            let packed = match md.linear_ternary(name, rows, cols)? {
                Some(m) if !reference => {
                    smolbit_ternary::kernels::PackedTernary::from_matrix(&m).ok()
                }
                _ => None,
            };
            match packed {
                Some(w) if kernels => return Ok(Linear::Ternary { w, act8 }),
                #[cfg(feature = "wgpu")]
                Some(w) => {
                    if let Ok(w) = gpu::GpuTernary::upload(&w, device) {
                        return Ok(Linear::Gpu { w, act8 });
                    }
                }
                _ => {}
            }
            // A dense linear (or a ternary one the packed layout does not take, dequantized) on
            // the host kernels, unless `:a8` fake quantization is asked. Where the host kernels
            // do not run (the reference path, burn's ops, other devices) a storage the user
            // chose still decides the weights: burn's matmul on its dequantized values, with
            // inputs fake-quantized to int8 per 32 columns for q8 and q4 (the reference the
            // kernels are tested against).
            // A blocked (q8, q4) checkpoint's linears keep their stored codes unless another
            // storage is asked for; off the host kernels they run as the reference path above.
            let dtype = md.weights.entry(name).ok().map(|e| e.dtype);
            let blocked = md.linear_blocked(name, rows, cols)?;
            let stored = blocked.as_ref().map(|t| match t.format() {
                smolbit_weights::blocked::BlockedFormat::Q8 => LinearStorage::Q8,
                smolbit_weights::blocked::BlockedFormat::Q4 => LinearStorage::Q4,
            });
            let storage = match (act8, stored, opts.linears) {
                (true, _, _) => None,
                (false, Some(s), LinearPolicy::Auto) => Some(s),
                _ => opts.linears.storage(dtype),
            };
            if let Some(kind) = storage
                && (host && !reference
                    || stored.is_some()
                    || matches!(opts.linears, LinearPolicy::Store(_)))
            {
                let table = match blocked {
                    Some(t) if stored == Some(kind) => layers::HostTable::from_blocked(t),
                    _ => {
                        layers::HostTable::new(kind, &md.linear_f32(name, rows, cols)?, rows, cols)
                    }
                };
                if host && !reference {
                    return Ok(Linear::Table(table));
                }
                return Ok(Linear::Dense {
                    w: upload2(table.dequantize(), rows, cols, device).transpose(),
                    act8: kind.int8_activations(),
                    act_group: match kind {
                        LinearStorage::Q4 => smolbit_ternary::kernels::Q4_GROUP,
                        _ => smolbit_ternary::kernels::Q8_GROUP,
                    },
                });
            }
            Ok(Linear::Dense {
                w: Model::upload_linear(&md, name, rows, cols, device)?.transpose(),
                act8,
                act_group: 0,
            })
        };
        let lin = |name: &str, rows: usize, cols: usize| -> Result<Linear, ModelError> {
            let l = match md.linear_pre_norm(name, cols)? {
                Some((w, eps)) => Linear::PreNormed {
                    norm: Box::new(layers::Norm::new(
                        Tensor::from_data(TensorData::new(w, [cols]), device),
                        eps,
                    )),
                    inner: Box::new(load_linear(name, rows, cols)?),
                },
                None => load_linear(name, rows, cols)?,
            };
            md.weights.release();
            Ok(l)
        };
        let layers = (0..c.num_layers)
            .map(|i| Block::load(&c, i, &get1, &lin))
            .collect::<Result<Vec<_>, _>>()?;
        release_free_heap();
        #[cfg(feature = "wgpu")]
        let fused = match (&embed, &head) {
            (Table::Dense(e), Table::Dense(h))
                if !cpu
                    && !opts.burn_decode
                    && std::env::var_os("SMOLBIT_BURN_DECODE").is_none() =>
            {
                fused::FusedDecoder::new(&c, e, h, &norm, &layers, device)
            }
            _ => None,
        };
        Ok(Model {
            #[cfg(feature = "wgpu")]
            fused,
            config: c,
            device: device.clone(),
            embed,
            layers,
            norm,
            head,
            quant: md.quant.clone(),
            host,
            kv: if host { opts.kv_cache } else { KvStorage::F32 },
        })
    }

    fn upload_linear(
        md: &ModelDir,
        name: &str,
        rows: usize,
        cols: usize,
        device: &Device,
    ) -> Result<Tensor<2>, ModelError> {
        Ok(upload2(
            md.linear_f32(name, rows, cols)?,
            rows,
            cols,
            device,
        ))
    }

    /// Bytes held by the decoder blocks' linear weights (as stored: packed ternary, a host
    /// table's format, or f32).
    pub fn linear_bytes(&self) -> usize {
        self.layers.iter().map(Block::linear_bytes).sum()
    }

    /// How the blocks' linears are stored and run ([`Linear::storage`] of the first block's
    /// down projection).
    pub fn linear_storage(&self) -> &'static str {
        self.layers.first().map_or("none", Block::linear_storage)
    }

    /// How the output head is stored: "f32", "f16", "q8" or "q4".
    pub fn head_storage(&self) -> &'static str {
        match &self.head {
            Table::Dense(_) => "f32",
            Table::Quantized(_, kind) => kind,
        }
    }

    /// Weight bytes one decoded token reads: the blocks' linears and the output head (the
    /// embedding contributes one row).
    pub fn decode_bytes(&self) -> usize {
        let head = match &self.head {
            Table::Dense(w) => w.dims().iter().product::<usize>() * 4,
            Table::Quantized(m, _) => m.bytes(),
        };
        self.linear_bytes() + head
    }

    /// The ternary checkpoint's quantization config, if this is one.
    pub fn quant_config(&self) -> Option<&QuantConfig> {
        self.quant.as_ref()
    }

    /// Run windows of calibration tokens and collect, for every linear layer, the mean square of
    /// each input column and a few sample input rows (keyed by HF weight name); with `hessian`,
    /// also `XᵀX / n` per linear input (for GPTQ schemes).
    pub fn calibrate(
        &self,
        windows: &[Vec<u32>],
        max_samples: usize,
        hessian: bool,
    ) -> Result<Calibration, ModelError> {
        let mut recs: Vec<InputRecorder> = (0..self.config.num_layers)
            .map(|_| InputRecorder {
                max_samples,
                hessian,
                ..Default::default()
            })
            .collect();
        for w in windows {
            self.run_blocks(w, &mut self.new_cache(), Some(&mut recs))?;
        }
        use smolbit_weights::mapping::{LayerRole as L, Role, hf_name};
        let sites: [&[L]; 4] = [&[L::Q, L::K, L::V], &[L::O], &[L::Gate, L::Up], &[L::Down]];
        let mut out = Calibration::new();
        for (i, rec) in recs.into_iter().enumerate() {
            for (site, roles) in sites.iter().enumerate() {
                let n = rec.count[site].max(1) as f64;
                let stats = InputStats {
                    mean_sq: rec.sum_sq[site].iter().map(|s| (s / n) as f32).collect(),
                    samples: rec.samples[site].clone(),
                    xtx: rec.xtx[site].iter().map(|s| (s / n) as f32).collect(),
                };
                for &role in *roles {
                    out.insert(hf_name(Role::Layer(role), Some(i)), stats.clone());
                }
            }
        }
        Ok(out)
    }

    /// The resolved config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_layers, self.kv)
    }

    /// How the KV cache stores keys and values: `LoadOptions::kv_cache` on the host path,
    /// f32 on every other.
    pub fn kv_storage(&self) -> KvStorage {
        self.kv
    }

    fn check_tokens(&self, tokens: &[u32], cache: &KvCache) -> Result<(), ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::Empty);
        }
        if let Some(&id) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(ModelError::TokenOutOfRange {
                id,
                vocab: self.config.vocab_size,
            });
        }
        let needed = cache.len() + tokens.len();
        if needed > self.config.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                needed,
                max: self.config.max_position_embeddings,
            });
        }
        Ok(())
    }

    /// Run `tokens` after what `cache` holds and return the final hidden states `[T, hidden]`
    /// (after the last RMSNorm), appending the new keys and values to `cache`.
    pub fn hidden(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor<2>, ModelError> {
        if self.host {
            let x = self.hidden_host(tokens, cache)?;
            return Ok(upload2(
                x,
                tokens.len(),
                self.config.hidden_size,
                &self.device,
            ));
        }
        let x = self.run_blocks(tokens, cache, None)?;
        Ok(self.norm.apply(x))
    }

    /// [`Model::hidden`] on the host path: embedding rows, blocks and final norm on host
    /// memory; `[T, hidden]` row-major.
    fn hidden_host(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        self.check_tokens(tokens, cache)?;
        let t = tokens.len();
        let mut x = self.embed_host(tokens);
        let past = cache.len();
        let rope = host::rope_tables(&self.config, past, t);
        for (i, layer) in self.layers.iter().enumerate() {
            let mut seq = [layers::HostSeq {
                t,
                past,
                rope: &rope,
                cache: cache.host_mut(i),
            }];
            layer.forward_host(&mut x, &mut seq, &self.device);
        }
        cache.advance(t);
        self.norm.apply_host(&mut x);
        Ok(x)
    }

    /// Embedding rows of `tokens` on the host, `[T, hidden]`.
    fn embed_host(&self, tokens: &[u32]) -> Vec<f32> {
        match &self.embed {
            Table::Dense(e) => {
                let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
                let ids =
                    Tensor::<1, Int>::from_data(TensorData::new(ids, [tokens.len()]), &self.device);
                tensor_to_vec((**e).clone().select(0, ids))
            }
            Table::Quantized(m, _) => tokens.iter().flat_map(|&t| m.row(t as usize)).collect(),
        }
    }

    /// One step of several sequences at once: `inputs[i]` (a prompt, or the last token) after
    /// what `caches[i]` holds; the next-token logits of each. On the CPU host path all their
    /// tokens go through the linears together (each weight read once for all of them, as the
    /// packed kernels take several tokens), attention per sequence against its own cache (the
    /// sequences in parallel), and the head on each sequence's last position only; elsewhere,
    /// and for one sequence, this is [`Model::forward_last`] per sequence. Batched logits equal
    /// the single-sequence ones up to the kernels' summation order: the packed ternary and 8-bit
    /// kernels give the same bits for any number of tokens, float tables may sum in another
    /// order.
    pub fn forward_last_batch(
        &self,
        inputs: &[&[u32]],
        caches: &mut [&mut KvCache],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        assert_eq!(inputs.len(), caches.len(), "one input per cache");
        if !self.host || inputs.len() <= 1 {
            return inputs
                .iter()
                .zip(caches.iter_mut())
                .map(|(t, c)| self.forward_last(t, c))
                .collect();
        }
        for (t, c) in inputs.iter().zip(caches.iter()) {
            self.check_tokens(t, c)?;
        }
        if let Some(logits) = self.step_on_team(inputs, caches) {
            return Ok(logits);
        }
        let b = inputs.len();
        let mut x = self.embed_host(&inputs.concat());
        let pasts: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        let ropes: Vec<_> = pasts
            .iter()
            .zip(inputs)
            .map(|(&p, t)| host::rope_tables(&self.config, p, t.len()))
            .collect();
        for (i, layer) in self.layers.iter().enumerate() {
            let mut seqs: Vec<layers::HostSeq<'_>> = caches
                .iter_mut()
                .zip(&ropes)
                .zip(pasts.iter().zip(inputs))
                .map(|((c, rope), (&past, t))| layers::HostSeq {
                    t: t.len(),
                    past,
                    rope,
                    cache: c.host_mut(i),
                })
                .collect();
            layer.forward_host(&mut x, &mut seqs, &self.device);
        }
        for (c, t) in caches.iter_mut().zip(inputs) {
            c.advance(t.len());
        }
        // Each sequence's last position (the norm is per position).
        let n = self.config.hidden_size;
        let mut last = Vec::with_capacity(b * n);
        let mut end = 0;
        for t in inputs {
            end += t.len();
            last.extend_from_slice(&x[(end - 1) * n..end * n]);
        }
        self.norm.apply_host(&mut last);
        let logits = self.head_host(last, b);
        let vocab = logits.len() / b;
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// [`Model::forward_last_batch`]'s decode step on a team of threads (`team`), where it
    /// applies: one token per sequence, at most `team::max_seqs()` sequences, at least two
    /// threads in rayon's pool, every linear packed ternary with int8 activations and an 8-bit
    /// head. `None` elsewhere (the caller runs the general path).
    fn step_on_team(
        &self,
        inputs: &[&[u32]],
        caches: &mut [&mut KvCache],
    ) -> Option<Vec<Vec<f32>>> {
        if inputs.iter().any(|t| t.len() != 1) {
            return None;
        }
        let (layers, head, n) = self.team_plan(inputs.len())?;
        let step = team::Step {
            layers,
            norm: &self.norm,
            head,
            x: self.embed_host(&inputs.concat()),
        };
        let seqs = caches
            .iter_mut()
            .enumerate()
            .map(|(index, c)| {
                let past = c.len();
                team::TeamSeq {
                    index,
                    past,
                    rope: host::rope_tables(&self.config, past, 1),
                    cache: c,
                }
            })
            .collect();
        let logits = team::run(&step, seqs, n)?;
        for c in caches.iter_mut() {
            c.advance(1);
        }
        Some(logits)
    }

    /// The team's weights and size for a decode step of `seqs` sequences, where it applies.
    fn team_plan(
        &self,
        seqs: usize,
    ) -> Option<(Vec<team::TeamLayer<'_>>, &dyn QuantizedTable, usize)> {
        let n = rayon::current_num_threads().min(seqs);
        if !self.host || n < 2 || seqs > team::max_seqs() {
            return None;
        }
        let head = match &self.head {
            Table::Quantized(m, _) if m.has_rows() => m.as_ref(),
            _ => return None,
        };
        let layers = self
            .layers
            .iter()
            .map(team::TeamLayer::of)
            .collect::<Option<Vec<_>>>()?;
        Some((layers, head, n))
    }

    /// Whether a decode step of `seqs` sequences (one token each, through
    /// [`Model::forward_last_batch`]) runs on a team of threads (module `team`) rather than one
    /// parallel call per product.
    pub fn decodes_on_team(&self, seqs: usize) -> bool {
        self.team_plan(seqs).is_some()
    }

    /// Embedding and decoder blocks (no final norm), optionally recording each block's linear
    /// inputs into `recs` (one recorder per layer).
    fn run_blocks(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        mut recs: Option<&mut [InputRecorder]>,
    ) -> Result<Tensor<2>, ModelError> {
        self.check_tokens(tokens, cache)?;
        let mut x = match &self.embed {
            Table::Dense(e) => {
                let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
                let ids =
                    Tensor::<1, Int>::from_data(TensorData::new(ids, [tokens.len()]), &self.device);
                (**e).clone().select(0, ids)
            }
            Table::Quantized(m, _) => {
                let rows: Vec<f32> = tokens.iter().flat_map(|&t| m.row(t as usize)).collect();
                upload2(rows, tokens.len(), self.config.hidden_size, &self.device)
            }
        };
        let past = cache.len();
        let rope = layers::Rope::new(&self.config, past, tokens.len(), &self.device);
        for (i, layer) in self.layers.iter().enumerate() {
            let rec = recs.as_deref_mut().map(|r| &mut r[i]);
            x = layer.forward(x, &rope, cache.layer_mut(i), past, rec);
        }
        cache.advance(tokens.len());
        Ok(x)
    }

    /// Logits `[T, vocab]` for every position of `tokens`, continuing from `cache`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor<2>, ModelError> {
        let h = self.hidden(tokens, cache)?;
        Ok(self.logits(h))
    }

    /// `h: [T, hidden]` -> logits `[T, vocab]`.
    fn logits(&self, h: Tensor<2>) -> Tensor<2> {
        match &self.head {
            Table::Dense(w) => h.matmul((**w).clone()),
            Table::Quantized(m, _) => {
                let t = h.dims()[0];
                let y = m.matmul(&tensor_to_vec(h), t);
                upload2(y, t, m.rows(), &self.device)
            }
        }
    }

    /// Logits of the last position only (what decoding needs), as a `Vec`.
    pub fn forward_last(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
    ) -> Result<Vec<f32>, ModelError> {
        #[cfg(feature = "wgpu")]
        if let (Some(f), [id]) = (&self.fused, tokens) {
            self.check_tokens(tokens, cache)?;
            return Ok(f.logits(*id, cache));
        }
        let (t, n) = (tokens.len(), self.config.hidden_size);
        let last = if self.host {
            self.hidden_host(tokens, cache)?[(t - 1) * n..].to_vec()
        } else {
            tensor_to_vec(self.hidden(tokens, cache)?.narrow(0, t - 1, 1))
        };
        Ok(self.head_host(last, 1))
    }

    /// The greedy next token after `tokens` (the argmax of [`Model::forward_last`]'s logits). A
    /// one-token step on the fused GPU path takes the argmax on the device and reads back only
    /// the id.
    pub fn forward_argmax(&self, tokens: &[u32], cache: &mut KvCache) -> Result<u32, ModelError> {
        #[cfg(feature = "wgpu")]
        if let (Some(f), [id]) = (&self.fused, tokens) {
            self.check_tokens(tokens, cache)?;
            return Ok(f.argmax(*id, cache));
        }
        Ok(argmax(&self.forward_last(tokens, cache)?) as u32)
    }

    /// Kernel launches one greedy decode step makes by construction, when decode steps take the
    /// fused GPU path (`None` elsewhere: the CPU, or burn's ops).
    pub fn decode_launches(&self) -> Option<usize> {
        #[cfg(feature = "wgpu")]
        if let Some(f) = &self.fused {
            return Some(f.launches(true));
        }
        None
    }

    /// Kernels launched and device-to-host reads made by the fused GPU decode step so far,
    /// counted where they happen (`None` without that step).
    pub fn gpu_counters(&self) -> Option<(u64, u64)> {
        #[cfg(feature = "wgpu")]
        if let Some(f) = &self.fused {
            return Some(f.counters());
        }
        None
    }

    /// Logits `[T, vocab]` of host hidden states `x: [T, hidden]`.
    fn head_host(&self, x: Vec<f32>, t: usize) -> Vec<f32> {
        match &self.head {
            Table::Dense(w) => tensor_to_vec(
                upload2(x, t, self.config.hidden_size, &self.device).matmul((**w).clone()),
            ),
            Table::Quantized(m, _) => m.matmul(&x, t),
        }
    }

    /// Greedy decoding: up to `max_new` tokens after `prompt`, stopping after an EOS token
    /// (which is included, as transformers' `generate` returns it).
    pub fn generate_greedy(&self, prompt: &[u32], max_new: usize) -> Result<Vec<u32>, ModelError> {
        let mut cache = self.new_cache();
        let mut out = Vec::with_capacity(max_new);
        let mut logits = self.forward_last(prompt, &mut cache)?;
        for _ in 0..max_new {
            let next = argmax(&logits) as u32;
            out.push(next);
            if self.config.eos_token_ids.contains(&next) || out.len() == max_new {
                break;
            }
            logits = self.forward_last(&[next], &mut cache)?;
        }
        Ok(out)
    }
}

/// A compact (f16, 8- or 4-bit) table read in pieces of 4,096 rows, so that the f32 copy of a
/// large embedding (1 GB at SmolLM3-3B's 128,256 × 2,048) never exists whole; quantized
/// (ternary) tables are dequantized whole.
fn quantized_table<M: QuantizedTable>(
    md: &ModelDir,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<M, ModelError> {
    if md.is_ternary(name) {
        return Ok(M::quantize(&md.linear_f32(name, rows, cols)?, rows, cols));
    }
    md.check_shape(name, &[rows, cols])?;
    const PIECE: usize = 4096;
    let mut out: Option<M> = None;
    for start in (0..rows).step_by(PIECE) {
        let n = PIECE.min(rows - start);
        let piece = M::quantize(
            &md.weights
                .rows_f32(name, cols, start, n)
                .map_err(LoadError::from)?,
            n,
            cols,
        );
        md.weights.release();
        match &mut out {
            None => out = Some(piece),
            Some(m) => m.append(piece),
        }
    }
    Ok(out.unwrap_or_else(|| M::quantize(&[], 0, cols)))
}

/// Hand memory freed during loading back to the OS. Loading allocates and frees large transient
/// buffers (unpacked trits, f32 pieces of tables) on rayon's threads; glibc keeps what those
/// threads' arenas freed mapped, which showed as about 40 MB of the 3B-shaped model's peak RSS.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            /// glibc: release free memory from the heap and every arena.
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns free pages to the OS; it takes no pointers.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Read a float tensor back as a flat `Vec<f32>`.
pub fn tensor_to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>()
        .expect("reading back an f32 tensor from its own device cannot fail")
}

/// Index of the largest value (the first one on ties, as `torch.argmax`; NaNs are never
/// larger, and a NaN first value gives 0). Two passes the compiler vectorizes: the maximum over
/// sixteen lanes, then the first index holding it (a scalar scan of a 49,152-word vocabulary
/// took about 40 µs a token, serial in every decode step).
pub fn argmax(v: &[f32]) -> usize {
    const LANES: usize = 16;
    if v.first().is_none_or(|x| x.is_nan()) {
        return 0;
    }
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &x in lanes.iter().chain(tail) {
        max = if x > max { x } else { max };
    }
    v.iter().position(|&x| x == max).unwrap_or(0)
}

/// Indices of the `k` largest values, largest first.
pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    let k = k.min(v.len());
    idx.select_nth_unstable_by(
        k.saturating_sub(1).min(v.len().saturating_sub(1)),
        |&a, &b| v[b].total_cmp(&v[a]),
    );
    idx.truncate(k);
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx
}

#[cfg(test)]
mod tests {
    /// The plain scan `argmax` replaced, as the reference: first index of the largest value.
    fn scan(v: &[f32]) -> usize {
        let mut best = 0;
        for (i, &x) in v.iter().enumerate() {
            if x > v[best] {
                best = i;
            }
        }
        best
    }

    #[test]
    fn argmax_equals_the_plain_scan() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for len in [1usize, 2, 15, 16, 17, 33, 1000, 49_152] {
            for case in 0..6 {
                // Few distinct values, so ties are common.
                let mut v: Vec<f32> = (0..len).map(|_| (next() % 9) as f32 - 4.0).collect();
                match case {
                    1 => v[len / 2] = f32::NAN,
                    2 => v.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
                    3 => v[len - 1] = 100.0,
                    4 => v[0] = f32::NAN,
                    5 => v.iter_mut().step_by(3).for_each(|x| *x = -0.0),
                    _ => {}
                }
                assert_eq!(super::argmax(&v), scan(&v), "len {len} case {case}");
            }
        }
        assert_eq!(super::argmax(&[]), 0);
    }
}

//! Resumable training state: `<out>.state/ckpt-<step>/` (meta.json, params.safetensors,
//! adam.safetensors) and a `latest` file naming the newest complete checkpoint. A checkpoint
//! directory is written in full before `latest` is replaced (write, then rename), so an
//! interruption at any point leaves the previous checkpoint intact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::{Deserialize, Serialize};
use smolbit_weights::safetensors::{self, Dtype, SafeTensors, TensorSpec};

use crate::optim::AdamW;
use crate::{DistillError, Settings, Student};

/// One point of a curve.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Optimizer step (global in the block-wise stage, of the stage end to end).
    pub step: u64,
    /// Training tokens seen by then (in the stage).
    pub tokens: u64,
    /// The loss or the perplexity.
    pub value: f64,
}

/// The training data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// Files read.
    pub files: usize,
    /// Tokens in the corpus.
    pub corpus_tokens: u64,
    /// Packed sequences.
    pub sequences: usize,
    /// sha256 over file names and bytes.
    pub sha256: String,
    /// Standard-library modules left out because the held-out text holds them.
    #[serde(default)]
    pub excluded: Vec<String>,
    /// Chat-formatted documents made from the corpus, and their tokens.
    #[serde(default)]
    pub chat_docs: usize,
    #[serde(default)]
    pub chat_tokens: u64,
}

/// The block-wise stage's progress and curves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockwiseLog {
    /// Optimizer steps per block.
    pub steps_per_block: u64,
    /// The block in training (or the next one).
    pub block: usize,
    /// Steps done in that block.
    pub step: u64,
    /// Whether every block is done.
    pub done: bool,
    /// Per block, the reconstruction error (relative mean square) before training.
    pub before: Vec<f64>,
    /// Per block, after.
    pub after: Vec<f64>,
    /// Loss per step.
    pub curve: Vec<CurvePoint>,
    /// Seconds spent training.
    pub seconds: f64,
}

/// The end-to-end stage's progress and curves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct E2eLog {
    /// Planned steps.
    pub steps: u64,
    /// Steps done.
    pub step: u64,
    /// KL divergence per step.
    pub curve: Vec<CurvePoint>,
    /// Held-out perplexity every `eval_every` steps.
    pub perplexity: Vec<CurvePoint>,
    /// Seconds spent in training steps (evaluations excluded).
    pub seconds: f64,
    /// Training tokens per second.
    pub tokens_per_second: f64,
}

/// Everything but tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub format: String,
    pub settings: Settings,
    pub teacher: PathBuf,
    pub data: DataInfo,
    pub global_step: u64,
    pub blockwise: Option<BlockwiseLog>,
    pub e2e: Option<E2eLog>,
    pub initial_perplexity: Option<f64>,
    pub adam_t: u64,
}

const FORMAT: &str = "smolbit-distill-state/1";

impl Meta {
    pub fn new(settings: Settings, teacher: &Path, data: DataInfo) -> Self {
        Meta {
            format: FORMAT.into(),
            settings,
            teacher: teacher.to_path_buf(),
            data,
            global_step: 0,
            blockwise: None,
            e2e: None,
            initial_perplexity: None,
            adam_t: 0,
        }
    }
}

/// A loaded state.
pub(crate) struct Resumed {
    pub meta: Meta,
    pub dir: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> DistillError + '_ {
    move |e| DistillError::Input {
        path: path.to_path_buf(),
        what: e.to_string(),
    }
}

fn st_err(e: safetensors::SafetensorsError) -> DistillError {
    DistillError::Data(e.to_string())
}

fn write_tensors(path: &Path, tensors: Vec<(String, Vec<f32>)>) -> Result<(), DistillError> {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, v)| TensorSpec {
            name: n.clone(),
            dtype: Dtype::F32,
            shape: vec![v.len()],
        })
        .collect();
    safetensors::write_streaming(path, &specs, &BTreeMap::new(), |i, _| {
        Ok::<_, safetensors::SafetensorsError>(safetensors::encode_f32(&tensors[i].1, Dtype::F32))
    })
    .map_err(st_err)
}

fn host(t: Tensor<1>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap_or_default()
}

/// Save a checkpoint of `meta`, the student's parameters and the optimizer.
pub(crate) fn save(
    root: &Path,
    meta: &Meta,
    student: &mut Student,
    adam: &AdamW,
) -> Result<(), DistillError> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let name = format!("ckpt-{}", meta.global_step);
    let dir = root.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut meta = meta.clone();
    meta.adam_t = adam.t;
    let params: Vec<(String, Vec<f32>)> = student
        .params()
        .into_iter()
        .map(|(n, p)| (n, host(p.value_flat())))
        .collect();
    write_tensors(&dir.join("params.safetensors"), params)?;
    let mut moments = Vec::new();
    for (n, m) in &adam.m {
        moments.push((format!("m.{n}"), host(m.clone())));
    }
    for (n, v) in &adam.v {
        moments.push((format!("v.{n}"), host(v.clone())));
    }
    write_tensors(&dir.join("adam.safetensors"), moments)?;
    let text = serde_json::to_string_pretty(&meta).unwrap_or_default();
    std::fs::write(dir.join("meta.json"), text).map_err(io(&dir))?;
    let tmp = root.join("latest.tmp");
    std::fs::write(&tmp, &name).map_err(io(&tmp))?;
    std::fs::rename(&tmp, root.join("latest")).map_err(io(root))?;
    // Older checkpoints are no longer needed.
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("ckpt-") && n != name {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

fn latest(root: &Path) -> Result<PathBuf, DistillError> {
    let p = root.join("latest");
    let name = std::fs::read_to_string(&p).map_err(|_| DistillError::Input {
        path: root.to_path_buf(),
        what: "no saved training state to resume (missing 'latest')".into(),
    })?;
    Ok(root.join(name.trim()))
}

/// Load the newest checkpoint, refusing one saved by a run with other settings or teacher.
pub(crate) fn load(
    root: &Path,
    settings: &Settings,
    teacher: &Path,
) -> Result<Resumed, DistillError> {
    let dir = latest(root)?;
    let p = dir.join("meta.json");
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    let meta: Meta = serde_json::from_str(&text).map_err(|e| DistillError::Input {
        path: p.clone(),
        what: format!("not a distill state: {e}"),
    })?;
    if meta.format != FORMAT {
        return Err(DistillError::Input {
            path: p,
            what: format!("state format '{}', expected '{FORMAT}'", meta.format),
        });
    }
    if meta.settings != *settings || meta.teacher != teacher {
        return Err(DistillError::Input {
            path: root.to_path_buf(),
            what: "was saved by a run with another teacher or other settings; resume with the \
                   same command line, or delete it"
                .into(),
        });
    }
    Ok(Resumed { meta, dir })
}

/// Put the saved parameters into the student.
pub(crate) fn restore_params(r: &Resumed, student: &mut Student) -> Result<(), DistillError> {
    let path = r.dir.join("params.safetensors");
    let st = SafeTensors::open_files(&r.dir, std::slice::from_ref(&path)).map_err(st_err)?;
    for (name, mut p) in student.params() {
        let v = st.to_f32(&name).map_err(st_err)?;
        let cur = p.value_flat();
        if v.len() != cur.dims()[0] {
            return Err(DistillError::Input {
                path: path.clone(),
                what: format!(
                    "tensor '{name}' has {} values, expected {}",
                    v.len(),
                    cur.dims()[0]
                ),
            });
        }
        let n = v.len();
        p.set_flat(Tensor::from_data(TensorData::new(v, [n]), &cur.device()));
    }
    Ok(())
}

/// The optimizer of the newest checkpoint.
/// Its moments go on `device` (the plain device the optimizer computes on).
pub(crate) fn load_adam(root: &Path, device: &Device) -> Result<AdamW, DistillError> {
    let dir = latest(root)?;
    let p = dir.join("meta.json");
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    let meta: Meta = serde_json::from_str(&text).map_err(|e| DistillError::Input {
        path: p.clone(),
        what: e.to_string(),
    })?;
    let path = dir.join("adam.safetensors");
    let st = SafeTensors::open_files(&dir, std::slice::from_ref(&path)).map_err(st_err)?;
    let mut adam = AdamW {
        t: meta.adam_t,
        ..Default::default()
    };
    let names: Vec<String> = st.names().map(str::to_string).collect();
    for n in names {
        let v = st.to_f32(&n).map_err(st_err)?;
        let len = v.len();
        let t = Tensor::<1>::from_data(TensorData::new(v, [len]), device);
        if let Some(k) = n.strip_prefix("m.") {
            adam.m.insert(k.to_string(), t);
        } else if let Some(k) = n.strip_prefix("v.") {
            adam.v.insert(k.to_string(), t);
        }
    }
    Ok(adam)
}

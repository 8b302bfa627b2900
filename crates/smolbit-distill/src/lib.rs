//! `smolbit distill`: quantization-aware distillation of a ternary student from a full-precision
//! teacher, on burn's autodiff (the CPU here, wgpu where built with the `wgpu` feature).
//!
//! The student starts as the post-training fit of the scheme ([`student`]): latent f32 weights
//! and learnable scales per plane and group. Every forward pass ternarizes the latent weights
//! to the nearest trit combination under the current scales, with a straight-through gradient
//! ([`net::StudentLinear::weight`]); embeddings, norms and head stay the teacher's, frozen.
//!
//! Two stages ([`Stage`]):
//! 1. block-wise reconstruction: block `i` learns to map the teacher's input of block `i` to the
//!    teacher's output, one block at a time, on activations cached in host memory (only one
//!    block is ever in the graph);
//! 2. end to end: KL divergence from the teacher's next-token distribution to the student's,
//!    AdamW, cosine schedule after a linear warm-up, global-norm clipping, accumulation.
//!
//! Training state goes to `<out>.state/` every `checkpoint_every` steps, written into a fresh
//! directory that a pointer file names only once it is complete, so an interrupted run
//! (Ctrl-C included) resumes from the last checkpoint with `resume`. The result is a normal
//! smolbit ternary checkpoint, written atomically, with `distill.json` (loss and held-out
//! perplexity curves) beside it.

mod data;
mod net;
mod optim;
mod stages;
mod state;
mod student;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};
use smolbit_ternary::{Activations, Scheme, TernaryMatrix};
use smolbit_weights::ModelDir;

use net::{Frozen, Lin, NetBlock, SeqConsts, Shape, StudentLinear};

pub use state::CurvePoint;

/// Why distillation failed.
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    /// Loading the teacher failed.
    #[error(transparent)]
    Load(Box<smolbit_weights::LoadError>),
    /// Writing the checkpoint failed.
    #[error(transparent)]
    Write(Box<smolbit_weights::quantize::QuantizeError>),
    /// A file or directory that cannot be used.
    #[error("{}: {what}", path.display())]
    Input {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        what: String,
    },
    /// The training data.
    #[error("data: {0}")]
    Data(String),
    /// Settings that cannot work together.
    #[error("{0}")]
    Settings(String),
    /// Interrupted; the state directory holds a resumable checkpoint.
    #[error("interrupted at step {step}; resume with --resume (state in {})", state.display())]
    Interrupted {
        /// The last saved step.
        step: u64,
        /// The state directory.
        state: PathBuf,
    },
}

/// Which stages run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Block-wise reconstruction only.
    Blockwise,
    /// End-to-end KL only.
    E2e,
    /// Block-wise, then end to end.
    Both,
}

impl Stage {
    fn blockwise(self) -> bool {
        matches!(self, Stage::Blockwise | Stage::Both)
    }
    fn e2e(self) -> bool {
        matches!(self, Stage::E2e | Stage::Both)
    }
}

/// Settings that decide the result (recorded in the checkpoint and compared on `--resume`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Canonical scheme.
    pub scheme: String,
    /// Stages.
    pub stage: Stage,
    /// Tokens of the end-to-end stage.
    pub tokens: u64,
    /// Tokens each block sees in the block-wise stage (over all its epochs).
    pub blockwise_tokens: u64,
    /// Distinct sequences cached for the block-wise stage (`blockwise_tokens` cycles over them).
    pub blockwise_sequences: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step.
    pub accumulate: usize,
    /// Peak learning rate of the latent weights (end to end).
    pub lr: f64,
    /// Peak learning rate of the scales (end to end).
    pub scale_lr: f64,
    /// Peak learning rates of the block-wise stage (weights, scales).
    pub blockwise_lr: f64,
    /// Block-wise scale learning rate.
    pub blockwise_scale_lr: f64,
    /// Warm-up steps as a fraction of a stage's (or a block's) steps.
    pub warmup: f64,
    /// Global gradient norm clip (0: none).
    pub clip: f64,
    /// AdamW weight decay on the latent weights.
    pub weight_decay: f64,
    /// KL temperature.
    pub temperature: f64,
    /// Shuffling seed.
    pub seed: u64,
    /// Alternating least-squares iterations of the initial fit.
    pub iters: usize,
    /// Train on the standard library of `python3`.
    pub stdlib: bool,
    /// The user's data files.
    pub data: Vec<PathBuf>,
    /// Train the blocks' RMSNorm weights too (at the scale learning rate, no weight decay).
    #[serde(default)]
    pub train_norms: bool,
    /// Fraction of the training sequences that are chat-formatted (tasks from the corpus's
    /// docstrings, answered with the functions' code, in the teacher's chat template); ignored
    /// when the teacher has no chat template.
    #[serde(default)]
    pub chat_fraction: f64,
}

/// Everything [`distill`] needs.
#[derive(Debug, Clone)]
pub struct DistillOptions {
    /// Full-precision teacher directory.
    pub teacher: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// What decides the result.
    pub settings: Settings,
    /// Held-out text for perplexity (modules named in its `# ===== Lib/<file> =====` headers
    /// are left out of the training data).
    pub ppl_text: PathBuf,
    /// The held-out text itself when it is not read from `ppl_text` (a compiled-in default;
    /// `ppl_text` then only names it).
    pub ppl_contents: Option<String>,
    /// Held-out tokens scored at each evaluation (0: all).
    pub eval_tokens: usize,
    /// Evaluate every this many end-to-end steps (0: only at the start and the end).
    pub eval_every: u64,
    /// Save the training state every this many steps.
    pub checkpoint_every: u64,
    /// Continue from `<out>.state/`.
    pub resume: bool,
    /// Replace an existing output directory.
    pub force: bool,
    /// Where to train.
    pub device: Device,
    /// Stop after this many optimizer steps in this process (0: none; for tests of resuming).
    pub stop_after: u64,
    /// Set to stop at the next step boundary with a checkpoint (Ctrl-C).
    pub interrupt: Arc<AtomicBool>,
    /// Print progress to stderr.
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillReport {
    /// Format tag.
    pub format: String,
    /// Teacher directory.
    pub teacher: PathBuf,
    /// Settings.
    pub settings: Settings,
    /// Data: files, tokens, hash.
    pub data: state::DataInfo,
    /// Block-wise stage: per block, the relative reconstruction error before and after, and
    /// the loss curve.
    pub blockwise: Option<state::BlockwiseLog>,
    /// End-to-end stage: loss and held-out perplexity curves.
    pub e2e: Option<state::E2eLog>,
    /// Held-out perplexity of the post-training fit (this network, `eval_tokens` tokens).
    pub initial_perplexity: Option<f64>,
    /// Held-out perplexity of the result.
    pub final_perplexity: Option<f64>,
    /// Peak resident set size of the process, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Bits per weight of the quantized linears.
    pub bits_per_weight: f64,
}

/// The `SIGINT` flag: set by the handler [`install_interrupt_handler`] installs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Make Ctrl-C set a flag that [`distill`] checks between steps (it then saves a checkpoint
/// and returns [`DistillError::Interrupted`]); returns that flag, mirrored into an `Arc`.
pub fn install_interrupt_handler() -> Arc<AtomicBool> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    let flag = Arc::new(AtomicBool::new(false));
    let mirror = flag.clone();
    std::thread::spawn(move || {
        loop {
            if INTERRUPTED.load(Ordering::SeqCst) {
                mirror.store(true, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    flag
}

/// Peak resident set size of this process in MiB (`VmHWM`, Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resident set size of this process in MiB (`VmRSS`, Linux).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |k| k / 1024.0)
}

/// The state directory of a run writing `out`.
pub fn state_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".state");
    PathBuf::from(s)
}

/// The student: blocks with [`Lin::Student`] linears on the autodiff device.
pub(crate) struct Student {
    pub blocks: Vec<NetBlock>,
    /// The blocks' RMSNorm weights are trained too.
    pub train_norms: bool,
}

impl Student {
    /// Every trained tensor with its name, in a fixed order.
    pub fn params(&mut self) -> Vec<(String, optim::ParamRef<'_>)> {
        self.blocks
            .iter_mut()
            .enumerate()
            .flat_map(|(i, b)| stages::block_params(b, i, self.train_norms))
            .collect()
    }

    /// Recompute the trits of every linear after its parameters changed.
    pub fn refresh(&mut self) {
        for b in &mut self.blocks {
            b.refresh();
        }
    }

    /// The trits and scales the next forward pass would use, by HF weight name.
    pub fn fitted(&self) -> std::collections::BTreeMap<String, TernaryMatrix> {
        let mut out = std::collections::BTreeMap::new();
        for (i, b) in self.blocks.iter().enumerate() {
            for (j, l) in b.lins.iter().enumerate() {
                if let Lin::Student(s) = l {
                    out.insert(net::linear_name(i, j), fitted_matrix(s));
                }
            }
        }
        out
    }

    /// The RMSNorm weights by HF name when they are trained (they replace the teacher's in
    /// the output), else nothing.
    pub fn norms(&self) -> std::collections::BTreeMap<String, Vec<f32>> {
        let mut out = std::collections::BTreeMap::new();
        if self.train_norms {
            for (i, b) in self.blocks.iter().enumerate() {
                for (name, t) in [
                    ("input_layernorm", &b.attn_norm),
                    ("post_attention_layernorm", &b.mlp_norm),
                ] {
                    out.insert(
                        format!("model.layers.{i}.{name}.weight"),
                        host(t.clone().detach().inner()),
                    );
                }
            }
        }
        out
    }
}

fn host(t: Tensor<1>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap_or_default()
}

/// A student linear's current trits and scales as a [`TernaryMatrix`].
fn fitted_matrix(s: &StudentLinear) -> TernaryMatrix {
    let n = s.planes * s.rows * s.cols;
    let trits = host(s.t.clone().reshape([n]))
        .into_iter()
        .map(|v| v as i8)
        .collect();
    let ns = s.s.dims().iter().product::<usize>();
    let scales = host(s.s.clone().detach().inner().reshape([ns]));
    TernaryMatrix {
        rows: s.rows,
        cols: s.cols,
        planes: s.planes,
        granularity: s.granularity,
        trits,
        scales,
    }
}

/// The post-training fit of every block linear, and the student it initialises.
fn init_student(
    md: &ModelDir,
    teacher: &[NetBlock],
    scheme: &Scheme,
    iters: usize,
    train_norms: bool,
    device: &Device,
) -> Result<Student, DistillError> {
    let c = &md.config;
    let act8 = scheme.activations == Activations::Int8;
    let mut blocks = Vec::with_capacity(c.num_layers);
    for (layer, tb) in teacher.iter().enumerate() {
        let mut lins = Vec::with_capacity(7);
        for i in 0..7 {
            let (rows, cols) = net::linear_shape(c, i);
            let w = md
                .linear_f32(&net::linear_name(layer, i), rows, cols)
                .map_err(|e| DistillError::Load(Box::new(e)))?;
            let m = smolbit_weights::quantize::quantize_matrix(&w, rows, cols, scheme, None, iters);
            let latent = student::consistent_latent(&w, &m);
            let shape = net::scale_shape(scheme.granularity, scheme.planes, rows, cols);
            let mut lin = StudentLinear {
                w: Tensor::<2>::from_data(TensorData::new(latent, [rows, cols]), device)
                    .require_grad(),
                s: Tensor::<3>::from_data(TensorData::new(m.scales, shape), device).require_grad(),
                rows,
                cols,
                planes: scheme.planes,
                granularity: scheme.granularity,
                act8,
                t: Tensor::zeros([scheme.planes, rows, cols], device),
            };
            lin.refresh();
            lins.push(Lin::Student(lin));
        }
        md.weights.release();
        let norm = |t: &Tensor<1>| {
            if train_norms {
                t.clone().require_grad()
            } else {
                t.clone()
            }
        };
        blocks.push(NetBlock {
            attn_norm: norm(&tb.attn_norm),
            mlp_norm: norm(&tb.mlp_norm),
            lins,
            use_rope: tb.use_rope,
        });
    }
    Ok(Student {
        blocks,
        train_norms,
    })
}

/// Mean negative log-likelihood of `tokens` (one sequence) under the network, on `device`.
fn sequence_nll(
    blocks: &[NetBlock],
    frozen: &Frozen,
    sh: &Shape,
    tokens: &[u32],
    device: &Device,
) -> (f64, usize) {
    let l = tokens.len();
    let k = SeqConsts::new(sh, l, device);
    let logits = net::forward_logits(blocks, frozen, sh, tokens, 1, &k, device);
    let logits = logits.narrow(0, 0, l - 1).detach();
    let targets: Vec<i64> = tokens[1..].iter().map(|&t| i64::from(t)).collect();
    let idx = Tensor::<2, Int>::from_data(TensorData::new(targets, [l - 1, 1]), device);
    let lp = log_softmax(logits, 1).gather(1, idx);
    let sum: f64 = host(lp.reshape([l - 1]))
        .iter()
        .map(|&v| f64::from(v))
        .sum();
    (-sum, l - 1)
}

/// Held-out perplexity in windows of `ctx` tokens (every position but each window's first is
/// scored, as `smolbit perplexity` does).
fn perplexity(
    blocks: &[NetBlock],
    frozen: &Frozen,
    sh: &Shape,
    tokens: &[u32],
    ctx: usize,
    device: &Device,
) -> f64 {
    let blocks: Vec<NetBlock> = blocks.iter().map(NetBlock::detached).collect();
    let blocks = &blocks[..];
    let (mut nll, mut n) = (0f64, 0usize);
    for w in tokens.chunks(ctx).filter(|w| w.len() >= 2) {
        let (a, b) = sequence_nll(blocks, frozen, sh, w, device);
        nll += a;
        n += b;
    }
    (nll / n.max(1) as f64).exp()
}

/// Cosine learning-rate factor after a linear warm-up, for step `s` (0-based) of `total`.
pub(crate) fn schedule(s: u64, total: u64, warmup: f64) -> f64 {
    let total = total.max(1) as f64;
    let warm = (warmup * total).round().max(1.0);
    let s = s as f64;
    if s < warm {
        (s + 1.0) / warm
    } else {
        let p = ((s - warm) / (total - warm).max(1.0)).min(1.0);
        0.5 * (1.0 + (std::f64::consts::PI * p).cos()).max(0.0) * 0.9 + 0.1
    }
}

/// Run the distillation described by `opts`.
pub fn distill(opts: &DistillOptions) -> Result<DistillReport, DistillError> {
    let st = &opts.settings;
    let scheme: Scheme = st
        .scheme
        .parse()
        .map_err(|e: smolbit_ternary::SchemeError| DistillError::Settings(e.to_string()))?;
    net::check_scheme(&scheme).map_err(DistillError::Settings)?;
    if st.seq_len < 2 || st.batch == 0 || st.accumulate == 0 {
        return Err(DistillError::Settings(
            "--seq-len must be at least 2, --batch and --accumulate at least 1".into(),
        ));
    }
    let md = ModelDir::open(&opts.teacher).map_err(|e| DistillError::Load(Box::new(e)))?;
    net::check_teacher(&md)?;
    if st.seq_len > md.config.max_position_embeddings {
        return Err(DistillError::Settings(format!(
            "--seq-len {} exceeds the teacher's context {}",
            st.seq_len, md.config.max_position_embeddings
        )));
    }
    if opts.out.exists() && !opts.force {
        return Err(DistillError::Input {
            path: opts.out.clone(),
            what: "already exists (pass --force to replace it)".into(),
        });
    }
    let state_path = state_dir(&opts.out);
    let resumed = if opts.resume {
        Some(state::load(&state_path, st, &opts.teacher)?)
    } else {
        if state_path.exists() {
            return Err(DistillError::Input {
                path: state_path,
                what: "holds an earlier run's state: pass --resume to continue it, or delete it"
                    .into(),
            });
        }
        None
    };

    let device = opts.device.clone().autodiff();
    let sh = Shape::new(&md.config);
    let tokenizer_path = opts.teacher.join("tokenizer.json");
    let tokenizer =
        tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| DistillError::Input {
            path: tokenizer_path.clone(),
            what: e.to_string(),
        })?;
    let ppl_text = match &opts.ppl_contents {
        Some(t) => Ok(t.clone()),
        None => std::fs::read_to_string(&opts.ppl_text),
    }
    .map_err(|e| DistillError::Input {
        path: opts.ppl_text.clone(),
        what: e.to_string(),
    })?;
    let mut heldout = tokenizer
        .encode(ppl_text.as_str(), false)
        .map_err(|e| DistillError::Input {
            path: opts.ppl_text.clone(),
            what: e.to_string(),
        })?
        .get_ids()
        .to_vec();
    if opts.eval_tokens > 0 {
        heldout.truncate(opts.eval_tokens);
    }
    let sep = md
        .config
        .eos_token_ids
        .first()
        .copied()
        .or(md.config.bos_token_id)
        .unwrap_or(0);
    let excluded = data::heldout_modules(&ppl_text);
    let files = data::corpus_files(st.stdlib, &st.data, &excluded)?;
    if files.is_empty() {
        return Err(DistillError::Data(
            "no training files (the standard library is off and --data gave none)".into(),
        ));
    }
    let t_start = Instant::now();
    let say = |m: &str| {
        if opts.progress {
            eprintln!(
                "[{:>6.1} s, RSS {:.0} MiB] {m}",
                t_start.elapsed().as_secs_f64(),
                rss_mib()
            );
        }
    };
    let chat = match (st.chat_fraction > 0.0)
        .then(|| smolbit_generate::load_chat_template(&opts.teacher))
        .transpose()
        .map_err(|e| DistillError::Input {
            path: opts.teacher.clone(),
            what: e.to_string(),
        })?
        .flatten()
    {
        Some((template, render)) => {
            say("making chat-formatted pairs from the corpus's docstrings");
            data::chat_docs(&files, &template, &render, &tokenizer)?
        }
        None => Vec::new(),
    };
    say(&format!("tokenizing {} files", files.len()));
    let corpus = data::build(
        &files,
        &tokenizer,
        sep,
        st.seq_len,
        st.seed,
        chat,
        st.chat_fraction,
    )?;
    let info = state::DataInfo {
        files: corpus.files,
        corpus_tokens: corpus.corpus_tokens as u64,
        sequences: corpus.sequences(),
        sha256: corpus.hash.clone(),
        excluded,
        chat_docs: corpus.chat_docs,
        chat_tokens: corpus.chat_tokens as u64,
    };
    if let Some(r) = &resumed
        && r.meta.data.sha256 != info.sha256
    {
        return Err(DistillError::Input {
            path: state_path,
            what: "the training data changed since this state was saved".into(),
        });
    }
    say(&format!(
        "corpus: {} files, {} tokens; {} chat pairs, {} tokens; {} sequences of {}",
        info.files,
        info.corpus_tokens,
        info.chat_docs,
        info.chat_tokens,
        info.sequences,
        st.seq_len
    ));

    say("loading the teacher");
    let (teacher, frozen) = net::load_teacher(&md, &device)?;
    say(&format!(
        "fitting {} (post-training initialisation)",
        scheme
    ));
    let mut student = init_student(&md, &teacher, &scheme, st.iters, st.train_norms, &device)?;
    let mut meta = match resumed {
        Some(r) => {
            state::restore_params(&r, &mut student)?;
            student.refresh();
            r.meta
        }
        None => state::Meta::new(st.clone(), &opts.teacher, info),
    };
    // Windows of 512 tokens, as `smolbit perplexity` and `smolbit eval` score by default.
    let eval_ctx = 512.min(md.config.max_position_embeddings);
    if meta.initial_perplexity.is_none() && !heldout.is_empty() {
        say("held-out perplexity of the post-training fit");
        meta.initial_perplexity = Some(perplexity(
            &student.blocks,
            &frozen,
            &sh,
            &heldout,
            eval_ctx,
            &device,
        ));
    }
    let mut steps_here = 0u64;
    let run = stages::Run {
        opts,
        sh: &sh,
        corpus: &corpus,
        frozen: &frozen,
        device: &device,
        state_path: &state_path,
        heldout: &heldout,
        eval_ctx,
    };
    if st.stage.blockwise() {
        run.blockwise(&teacher, &mut student, &mut meta, &mut steps_here)?;
    }
    if st.stage.e2e() {
        run.e2e(&teacher, &mut student, &mut meta, &mut steps_here)?;
    }
    say("held-out perplexity of the result");
    let final_perplexity = (!heldout.is_empty())
        .then(|| perplexity(&student.blocks, &frozen, &sh, &heldout, eval_ctx, &device));
    let fitted = student.fitted();
    let mut report = DistillReport {
        format: "smolbit-distill/1".into(),
        teacher: opts.teacher.clone(),
        settings: st.clone(),
        data: meta.data.clone(),
        blockwise: meta.blockwise.clone(),
        e2e: meta.e2e.clone(),
        initial_perplexity: meta.initial_perplexity,
        final_perplexity,
        peak_rss_mib: peak_rss_mib(),
        bits_per_weight: 0.0,
    };
    let qopts = smolbit_weights::quantize::QuantizeOptions {
        scheme,
        packing: smolbit_ternary::pack::Packing::Base3,
        calibration: None,
        overwrite: opts.force,
        iters: st.iters,
        quantize_embeddings: false,
    };
    let record = serde_json::json!({
        "tool": "smolbit distill",
        "teacher": opts.teacher,
        "settings": st,
        "data_sha256": meta.data.sha256,
        "data_tokens": meta.data.corpus_tokens,
        "initial_perplexity": meta.initial_perplexity,
        "final_perplexity": final_perplexity,
    });
    let fitted_ref = smolbit_weights::quantize::Fitted {
        matrices: &fitted,
        tensors: student.norms(),
        distillation: record,
    };
    let (mut bits, mut weights) = (0f64, 0f64);
    for m in fitted.values() {
        let n = (m.rows * m.cols) as f64;
        bits += n * m.bits_per_weight(
            qopts.packing,
            smolbit_weights::quantize::scale_dtype(m.granularity).size() * 8,
        );
        weights += n;
    }
    report.bits_per_weight = bits / weights.max(1.0);
    let text = serde_json::to_string_pretty(&report).unwrap_or_default() + "\n";
    smolbit_weights::quantize::write_fitted(
        &opts.teacher,
        &opts.out,
        &qopts,
        &fitted_ref,
        |staging| {
            std::fs::write(staging.join("distill.json"), &text).map_err(|e| {
                smolbit_weights::quantize::QuantizeError::Invalid {
                    path: staging.join("distill.json"),
                    what: e.to_string(),
                }
            })
        },
    )
    .map_err(|e| DistillError::Write(Box::new(e)))?;
    let _ = std::fs::remove_dir_all(&state_path);
    Ok(report)
}

#[cfg(test)]
mod tests;

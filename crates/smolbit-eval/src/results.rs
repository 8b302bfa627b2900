//! The results file (`results.json`, schema [`SCHEMA`]): what `smolbit eval` writes, `smolbit eval
//! merge` combines, and the report renderer reads.
//!
//! ```text
//! { schema, created_unix, dataset {path, sha256, tasks, shard}, settings {...},
//!   environment {os, arch, cpu, cores, threads, smolbit_version, burn_version, git_commit, python},
//!   models: [ { name, path, scheme, parameters, weight_bytes, bits_per_weight, load_ms,
//!               peak_rss_mb, quality {perplexity, kl_mean, top1_agreement, ...} | null,
//!               summary {tasks, syntax_valid_rate, pass_rate, pass_at_k, ttft_ms {mean, p50, p95},
//!                        ...},
//!               tasks: [ { index, id, category, syntax_valid, tests_passed, tests_total, passed,
//!                          samples: [ { text, code, outcome, error, generated_tokens, ttft_ms,
//!                                       decode_tok_s, total_ms, stop_reason, degeneration,
//!                                       degenerate, ... } ] } ] } ] }
//! ```
//!
//! A task's top-level `syntax_valid`, `tests_*` and `passed` are those of its first sample (the
//! greedy answer when not sampling); `pass_at_k` uses all samples. Rates are fractions in [0, 1].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check::Outcome;
use crate::extract::Degeneration;

/// Version tag of the results format; readers refuse other values.
pub const SCHEMA: &str = "smolbit-eval/1";

/// A whole evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Seconds since the Unix epoch when the run finished.
    pub created_unix: u64,
    /// The suite.
    pub dataset: DatasetInfo,
    /// How it was run.
    pub settings: Settings,
    /// Where it was run.
    pub environment: Environment,
    /// One entry per `--model`, the first being the reference.
    pub models: Vec<ModelResult>,
}

/// The suite that was run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Path as given.
    pub path: String,
    /// sha256 of the file.
    pub sha256: String,
    /// Tasks in the whole file.
    pub tasks: usize,
    /// `[index, count]` when this is one shard; `null` for the whole suite (also after merge).
    pub shard: Option<[usize; 2]>,
}

/// Settings of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Token limit per answer.
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// Answers per task.
    pub samples: usize,
    /// Base seed of sampling.
    pub seed: u64,
    /// Stop generating once the first fenced code block is closed.
    pub stop_after_code: bool,
    /// Stop generating once the answer's tail is far past degenerate.
    #[serde(default)]
    pub stop_on_degeneration: bool,
    /// `cpu` or `wgpu`.
    pub device: String,
    /// Sandbox wall-clock timeout per task, seconds.
    pub timeout_s: f64,
    /// Sandbox address-space limit, MiB.
    pub memory_limit_mb: u64,
    /// `namespaces` or `rlimits_only`.
    pub isolation: String,
    /// The held-out text for perplexity, if any.
    pub perplexity_text: Option<String>,
    /// sha256 of that text.
    pub perplexity_text_sha256: Option<String>,
    /// Tokens of it scored (0 = all).
    pub perplexity_max_tokens: usize,
    /// Window length.
    pub perplexity_ctx: usize,
    /// The prompt style asked for (`None`: each model's default, in its [`ModelResult`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_style: Option<PromptStyle>,
}

/// How a code stub is put to a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptStyle {
    /// The stub inside an instruction, through the model's chat template; the answer's code
    /// block is the solution (the stub's imports kept). Instruction tasks are always asked so.
    Chat,
    /// The model continues the stub verbatim, stopped at OpenAI's HumanEval stop sequences; the
    /// stub plus the continuation is the solution. For base models.
    Completion,
}

impl std::str::FromStr for PromptStyle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chat" => Ok(PromptStyle::Chat),
            "completion" => Ok(PromptStyle::Completion),
            _ => Err(format!("unknown prompt style '{s}' (chat, completion)")),
        }
    }
}

impl std::fmt::Display for PromptStyle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PromptStyle::Chat => "chat",
            PromptStyle::Completion => "completion",
        })
    }
}

/// The machine and software.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// `std::env::consts::OS`.
    pub os: String,
    /// `std::env::consts::ARCH`.
    pub arch: String,
    /// CPU model name.
    pub cpu: String,
    /// Logical CPUs available.
    pub cores: usize,
    /// Threads used by the model's CPU backend.
    pub threads: usize,
    /// smolbit's version.
    pub smolbit_version: String,
    /// burn's version.
    pub burn_version: String,
    /// `git describe`-style commit of the working tree, `+dirty` when modified.
    pub git_commit: Option<String>,
    /// The sandbox's Python version.
    pub python: String,
}

/// Mean and percentiles of a measurement over tasks.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Arithmetic mean.
    pub mean: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
}

impl Stats {
    /// Stats of `xs` (zeros when empty).
    pub fn of(xs: &[f64]) -> Stats {
        if xs.is_empty() {
            return Stats::default();
        }
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Stats {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: rank(0.5),
            p95: rank(0.95),
        }
    }
}

/// Quality against the reference model on the held-out text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Perplexity of this model.
    pub perplexity: f64,
    /// Mean `KL(P_ref || P)` in nats (`null` for the reference itself).
    pub kl_mean: Option<f64>,
    /// Top-1 agreement with the reference (`null` for the reference itself).
    pub top1_agreement: Option<f64>,
    /// Predictions scored.
    pub scored: usize,
    /// Window length.
    pub ctx: usize,
}

/// One model's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    /// Display name (the directory's name unless given).
    pub name: String,
    /// The model directory.
    pub path: String,
    /// Weights: `f32`, `f16`, `bf16`, or the ternary scheme string.
    pub scheme: String,
    /// Parameters (embedding counted once when tied).
    pub parameters: u64,
    /// Bytes of the safetensors files.
    pub weight_bytes: u64,
    /// `weight_bytes * 8 / parameters`: storage bits per weight over the whole model.
    pub bits_per_weight: f64,
    /// Storage bits per weight of the ternary linears alone, for ternary checkpoints.
    pub linear_bits_per_weight: Option<f64>,
    /// Time to load the model, milliseconds.
    pub load_ms: f64,
    /// Peak resident memory while loading and answering, MiB.
    pub peak_rss_mb: Option<f64>,
    /// Held-out text quality (absent with `--no-perplexity` or in shards other than 0).
    pub quality: Option<Quality>,
    /// Rates and timing statistics over `tasks`.
    pub summary: Summary,
    /// Per task, in suite order.
    pub tasks: Vec<TaskResult>,
    /// For a student written by `smolbit distill`, its training curves (from its
    /// `distill.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<Distillation>,
    /// How stub tasks were put to this model (absent in results from before prompt styles,
    /// which asked every task in chat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_style: Option<PromptStyle>,
}

/// A distilled student's training curves: `[training tokens, value]` points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distillation {
    /// End-to-end KL divergence to the teacher per step.
    pub kl: Vec<[f64; 2]>,
    /// Held-out perplexity (as `smolbit distill` scored it: its first `--eval-tokens` tokens),
    /// from the post-training fit (0 tokens) to the result.
    pub perplexity: Vec<[f64; 2]>,
}

impl Distillation {
    /// The curves of a `distill.json` (format `smolbit-distill/1`); `None` when it has none.
    pub fn from_distill_json(v: &serde_json::Value) -> Option<Self> {
        let points = |a: &serde_json::Value| -> Vec<[f64; 2]> {
            a.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| Some([p["tokens"].as_f64()?, p["value"].as_f64()?]))
                        .collect()
                })
                .unwrap_or_default()
        };
        let e2e = &v["e2e"];
        let kl = points(&e2e["curve"]);
        let mut perplexity = Vec::new();
        if let Some(p) = v["initial_perplexity"].as_f64() {
            perplexity.push([0.0, p]);
        }
        perplexity.extend(points(&e2e["perplexity"]));
        if let Some(p) = v["final_perplexity"].as_f64() {
            let end = kl.last().map_or(0.0, |k| k[0]);
            perplexity.push([end, p]);
        }
        (!kl.is_empty() || !perplexity.is_empty()).then_some(Distillation { kl, perplexity })
    }
}

/// One task's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Position in the suite.
    pub index: usize,
    /// Task id.
    pub id: String,
    /// Category.
    pub category: String,
    /// First sample's code parses and is not empty.
    pub syntax_valid: bool,
    /// First sample's passing tests.
    pub tests_passed: usize,
    /// Tests of the task.
    pub tests_total: usize,
    /// First sample passes every test.
    pub passed: bool,
    /// Every answer.
    pub samples: Vec<SampleResult>,
}

/// One answer to one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    /// The generated text.
    pub text: String,
    /// The code extracted from it.
    pub code: String,
    /// How the check ended.
    pub outcome: Outcome,
    /// Syntax valid (non-empty and parsed by CPython).
    pub syntax_valid: bool,
    /// Tests passed.
    pub tests_passed: usize,
    /// All tests passed.
    pub passed: bool,
    /// First error, one line.
    pub error: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub generated_tokens: usize,
    /// Time to first token, ms.
    pub ttft_ms: f64,
    /// Prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Decode tokens per second after the first.
    pub decode_tok_s: f64,
    /// Generation wall time, ms.
    pub total_ms: f64,
    /// Why generation stopped.
    pub stop_reason: String,
    /// Repetition measures of `text`.
    pub degeneration: Degeneration,
    /// [`Degeneration::is_degenerate`] of `text`.
    pub degenerate: bool,
    /// Sandbox wall time, ms.
    pub check_ms: f64,
}

/// Rates and statistics of one model over its tasks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Tasks evaluated.
    pub tasks: usize,
    /// Tasks whose (first) answer is valid code.
    pub syntax_valid: usize,
    /// `syntax_valid / tasks`.
    pub syntax_valid_rate: f64,
    /// Tasks whose (first) answer passes all tests.
    pub passed: usize,
    /// `passed / tasks`: pass@1 of the first answer.
    pub pass_rate: f64,
    /// Unbiased pass@k over all samples, for k = 1, and powers of 2 up to the samples per task.
    pub pass_at_k: BTreeMap<String, f64>,
    /// Tests passed over all tasks (first answers).
    pub tests_passed: usize,
    /// Tests over all tasks.
    pub tests_total: usize,
    /// `tests_passed / tests_total`.
    pub test_pass_rate: f64,
    /// Answers flagged degenerate (all samples).
    pub degenerate: usize,
    /// `degenerate / answers`.
    pub degenerate_rate: f64,
    /// Answers ending in each [`Outcome`] (all samples).
    pub outcomes: BTreeMap<String, usize>,
    /// Per category: `[tasks, syntax valid, passed]`.
    pub categories: BTreeMap<String, [usize; 3]>,
    /// Time to first token over answers, ms.
    pub ttft_ms: Stats,
    /// Decode speed over answers, tokens/s.
    pub decode_tok_s: Stats,
    /// Generation time over answers, ms.
    pub total_ms: Stats,
    /// Generated tokens over answers.
    pub generated_tokens: Stats,
}

/// The unbiased pass@k estimator of Chen et al. (2021): `1 - C(n-c, k) / C(n, k)` for `n`
/// samples of which `c` pass, computed as a product to stay finite.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k == 0 || n == 0 || k > n {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

impl Summary {
    /// Summarize `tasks`.
    pub fn of(tasks: &[TaskResult]) -> Summary {
        let n = tasks.len();
        let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let mut s = Summary {
            tasks: n,
            ..Summary::default()
        };
        let samples: Vec<&SampleResult> = tasks.iter().flat_map(|t| &t.samples).collect();
        for t in tasks {
            s.syntax_valid += usize::from(t.syntax_valid);
            s.passed += usize::from(t.passed);
            s.tests_passed += t.tests_passed;
            s.tests_total += t.tests_total;
            let c = s.categories.entry(t.category.clone()).or_insert([0; 3]);
            c[0] += 1;
            c[1] += usize::from(t.syntax_valid);
            c[2] += usize::from(t.passed);
        }
        for x in &samples {
            s.degenerate += usize::from(x.degenerate);
            let key = serde_json::to_value(x.outcome)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            *s.outcomes.entry(key).or_default() += 1;
        }
        s.syntax_valid_rate = frac(s.syntax_valid, n);
        s.pass_rate = frac(s.passed, n);
        s.test_pass_rate = frac(s.tests_passed, s.tests_total);
        s.degenerate_rate = frac(s.degenerate, samples.len());
        let min_samples = tasks.iter().map(|t| t.samples.len()).min().unwrap_or(0);
        let mut k = 1;
        while k <= min_samples {
            let mean = tasks
                .iter()
                .map(|t| {
                    let c = t.samples.iter().filter(|x| x.passed).count();
                    pass_at_k(t.samples.len(), c, k)
                })
                .sum::<f64>()
                / n.max(1) as f64;
            s.pass_at_k.insert(k.to_string(), mean);
            k *= 2;
        }
        let stat = |f: fn(&SampleResult) -> f64| {
            Stats::of(&samples.iter().map(|x| f(x)).collect::<Vec<_>>())
        };
        s.ttft_ms = stat(|x| x.ttft_ms);
        s.decode_tok_s = stat(|x| x.decode_tok_s);
        s.total_ms = stat(|x| x.total_ms);
        s.generated_tokens = stat(|x| x.generated_tokens as f64);
        s
    }
}

/// Why results could not be read or merged.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// Unreadable or not JSON of this schema.
    #[error("{path}: {what}")]
    Bad {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// Shards that do not belong together.
    #[error("cannot merge {path}: {what}")]
    Mismatch {
        /// The file.
        path: String,
        /// What differs.
        what: String,
    },
}

impl Results {
    /// Read a results file, refusing other schemas.
    pub fn read(path: &std::path::Path) -> Result<Results, ResultsError> {
        let bad = |what: String| ResultsError::Bad {
            path: path.display().to_string(),
            what,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let schema = v.get("schema").and_then(|s| s.as_str()).unwrap_or("");
        if schema != SCHEMA {
            return Err(bad(format!(
                "schema '{schema}' is not '{SCHEMA}' (not a smolbit results file, or another version)"
            )));
        }
        serde_json::from_value(v).map_err(|e| bad(format!("invalid results: {e}")))
    }

    /// Combine shards of one run: same dataset, settings and models; tasks are concatenated in
    /// suite order and summaries recomputed. Quality comes from the shard that measured it; peak
    /// RSS is the largest and load time the first shard's.
    pub fn merge(parts: Vec<(String, Results)>) -> Result<Results, ResultsError> {
        let mut iter = parts.into_iter();
        let Some((_, mut out)) = iter.next() else {
            return Err(ResultsError::Bad {
                path: "-".into(),
                what: "nothing to merge".into(),
            });
        };
        let mut seen: std::collections::HashSet<(usize, usize)> = out
            .models
            .iter()
            .enumerate()
            .flat_map(|(m, r)| r.tasks.iter().map(move |t| (m, t.index)))
            .collect();
        for (path, part) in iter {
            let mismatch = |what: &str| ResultsError::Mismatch {
                path: path.clone(),
                what: what.to_string(),
            };
            if part.dataset.sha256 != out.dataset.sha256 {
                return Err(mismatch("a different dataset"));
            }
            let mut a = part.settings.clone();
            let b = &out.settings;
            a.isolation.clone_from(&b.isolation);
            if &a != b {
                return Err(mismatch("different settings"));
            }
            if part.models.len() != out.models.len()
                || part
                    .models
                    .iter()
                    .zip(&out.models)
                    .any(|(x, y)| x.path != y.path || x.scheme != y.scheme)
            {
                return Err(mismatch("different models"));
            }
            for (m, (dst, src)) in out.models.iter_mut().zip(part.models).enumerate() {
                for t in src.tasks {
                    if !seen.insert((m, t.index)) {
                        return Err(mismatch(&format!("task '{}' appears twice", t.id)));
                    }
                    dst.tasks.push(t);
                }
                if dst.quality.is_none() {
                    dst.quality = src.quality;
                }
                dst.peak_rss_mb = match (dst.peak_rss_mb, src.peak_rss_mb) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
            out.created_unix = out.created_unix.max(part.created_unix);
        }
        for m in &mut out.models {
            m.tasks.sort_by_key(|t| t.index);
            m.summary = Summary::of(&m.tasks);
        }
        out.dataset.shard = None;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_at_k_matches_the_closed_form() {
        // Binomial form evaluated directly for small n: 1 - C(n-c,k)/C(n,k).
        fn choose(n: u64, k: u64) -> f64 {
            if k > n {
                return 0.0;
            }
            (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
        }
        for n in 1..=10usize {
            for c in 0..=n {
                for k in 1..=n {
                    let direct =
                        1.0 - choose((n - c) as u64, k as u64) / choose(n as u64, k as u64);
                    let got = pass_at_k(n, c, k);
                    // Both are sums/products of at most 10 terms of size <= 1: 1e-12 is ample.
                    assert!(
                        (got - direct).abs() < 1e-12,
                        "n={n} c={c} k={k}: {got} vs {direct}"
                    );
                }
            }
        }
        assert_eq!(pass_at_k(5, 0, 1), 0.0);
        assert_eq!(pass_at_k(5, 5, 3), 1.0);
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
    }

    #[test]
    fn stats_use_nearest_rank() {
        let s = Stats::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.mean, s.p50, s.p95), (3.0, 3.0, 5.0));
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&xs);
        assert_eq!((s.p50, s.p95), (50.0, 95.0));
    }
}

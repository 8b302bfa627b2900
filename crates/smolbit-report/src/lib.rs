//! Renders `results.json` (written by `smolbit eval`, schema `smolbit-eval/1`) into a Markdown
//! comparison report plus SVG charts.
//!
//! The report comes from a minijinja template, `templates/report.md.j2`, compiled into the crate;
//! [`ReportOptions::templates`] points at a directory whose `*.j2` files replace or add to the
//! built-in ones. Every number in the report is read from the results (or derived from them:
//! winners, target checks); the template only formats. Model text is shown only through the
//! `codeblock` filter (a fence longer than any backtick run inside) or `md` (table-cell escaping),
//! so it cannot break the Markdown.
//!
//! Template context: `title`, `generated`, `dataset`, `settings`, `environment`, `models` (each
//! model's results plus `weight_mb`, `params_m`, `is_reference`), `findings`
//! (metric, values, winner), `criteria`, `categories`, `samples`, `degenerate`, `charts`,
//! `reproduce`, `targets`.

pub mod svg;

use std::path::{Path, PathBuf};

use minijinja::value::{Serde, Value};
use minijinja::{Environment, syntax::SyntaxConfig};
use serde::Serialize;
use serde_json::json;
use smolbit_eval::results::{ModelResult, PromptStyle, Results};

/// The built-in template.
pub const DEFAULT_TEMPLATE: &str = include_str!("../templates/report.md.j2");

/// Success criteria (defaults: the original report's targets).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Targets {
    /// Median time to first token, milliseconds.
    pub latency_ms: f64,
    /// Peak resident memory, GB (10^9 bytes).
    pub memory_gb: f64,
    /// Fraction of answers that are valid code.
    pub syntax_valid: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            latency_ms: 200.0,
            memory_gb: 10.0,
            syntax_valid: 0.8,
        }
    }
}

/// How to render.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Report title (default: from the first model's name).
    pub title: Option<String>,
    /// Success criteria.
    pub targets: Targets,
    /// A directory of `*.j2` templates overriding the built-in ones.
    pub templates: Option<PathBuf>,
    /// Commands that reproduce the results, shown in the report.
    pub reproduce: Vec<String>,
    /// Tasks whose answers are shown for every model (default 3).
    pub samples: Option<usize>,
}

/// A rendered report.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The Markdown.
    pub markdown: String,
    /// `(file name, SVG)` of each chart, referenced as `charts/<file name>`.
    pub charts: Vec<(String, String)>,
}

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A template could not be read or rendered.
    #[error("{path}: {what}")]
    Template {
        /// The template.
        path: String,
        /// What failed.
        what: String,
    },
    /// An output could not be written.
    #[error("{path}: {what}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        what: String,
    },
    /// The results cannot be reported.
    #[error("{0}")]
    Results(String),
}

fn pct(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

/// A number with about three significant digits, scientific when very large or small.
pub fn sig(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Escape text for one Markdown table cell (or inline text): pipes, newlines, markup characters.
pub fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' | '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// `text` as a fenced block whose fence is longer than any backtick run inside it.
pub fn codeblock(text: &str, lang: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat((longest + 1).max(3));
    let body = text.trim_end_matches('\n');
    format!("{fence}{lang}\n{body}\n{fence}")
}

fn excerpt(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        out.push('…');
    }
    out
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time (proleptic Gregorian calendar).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

struct Metric {
    name: &'static str,
    higher_is_better: bool,
    value: fn(&ModelResult) -> Option<f64>,
    show: fn(f64) -> String,
}

fn metrics() -> Vec<Metric> {
    vec![
        Metric {
            name: "Syntax valid",
            higher_is_better: true,
            value: |m| Some(m.summary.syntax_valid_rate),
            show: pct,
        },
        Metric {
            name: "Tasks passed (pass@1)",
            higher_is_better: true,
            value: |m| Some(m.summary.pass_rate),
            show: pct,
        },
        Metric {
            name: "Test cases passed",
            higher_is_better: true,
            value: |m| Some(m.summary.test_pass_rate),
            show: pct,
        },
        Metric {
            name: "Degenerate answers",
            higher_is_better: false,
            value: |m| Some(m.summary.degenerate_rate),
            show: pct,
        },
        Metric {
            name: "Time to first token (median)",
            higher_is_better: false,
            value: |m| Some(m.summary.ttft_ms.p50),
            show: |v| format!("{} ms", sig(v)),
        },
        Metric {
            name: "Decode speed (median)",
            higher_is_better: true,
            value: |m| Some(m.summary.decode_tok_s.p50),
            show: |v| format!("{} tok/s", sig(v)),
        },
        Metric {
            name: "Answer latency (median)",
            higher_is_better: false,
            value: |m| Some(m.summary.total_ms.p50),
            show: |v| format!("{} ms", sig(v)),
        },
        Metric {
            name: "Peak memory (RSS)",
            higher_is_better: false,
            value: |m| m.peak_rss_mb,
            show: |v| format!("{} MiB", sig(v)),
        },
        Metric {
            name: "Weights on disk",
            higher_is_better: false,
            value: |m| Some(m.weight_bytes as f64 / 1e6),
            show: |v| format!("{} MB", sig(v)),
        },
        Metric {
            name: "Perplexity on held-out code",
            higher_is_better: false,
            value: |m| m.quality.as_ref().map(|q| q.perplexity),
            show: sig,
        },
    ]
}

fn findings(models: &[ModelResult]) -> Vec<serde_json::Value> {
    metrics()
        .into_iter()
        .map(|metric| {
            let vals: Vec<Option<f64>> = models.iter().map(|m| (metric.value)(m)).collect();
            let present: Vec<(usize, f64)> = vals
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.filter(|x| x.is_finite()).map(|x| (i, x)))
                .collect();
            let best = present.iter().map(|p| p.1).reduce(|a, b| {
                if metric.higher_is_better {
                    a.max(b)
                } else {
                    a.min(b)
                }
            });
            let winners: Vec<&str> = match best {
                Some(b) => present
                    .iter()
                    .filter(|(_, x)| (x - b).abs() <= 1e-9 * b.abs().max(1e-12))
                    .map(|(i, _)| models[*i].name.as_str())
                    .collect(),
                None => vec![],
            };
            let winner = match winners.len() {
                0 => "n/a".to_string(),
                n if n == models.len() && n > 1 => "tie".to_string(),
                _ => winners.join(", "),
            };
            json!({
                "metric": metric.name,
                "higher_is_better": metric.higher_is_better,
                "values": vals.iter().map(|v| v.map_or("n/a".to_string(), metric.show)).collect::<Vec<_>>(),
                "raw": vals,
                "winner": winner,
            })
        })
        .collect()
}

fn criteria(models: &[ModelResult], t: &Targets) -> Vec<serde_json::Value> {
    let row = |name: String, vals: Vec<serde_json::Value>| json!({"name": name, "values": vals});
    let cell = |text: String, met: Option<bool>| json!({"text": text, "met": met});
    vec![
        row(
            format!(
                "Latency: median time to first token < {} ms",
                sig(t.latency_ms)
            ),
            models
                .iter()
                .map(|m| {
                    let v = m.summary.ttft_ms.p50;
                    cell(format!("{} ms", sig(v)), Some(v < t.latency_ms))
                })
                .collect(),
        ),
        row(
            format!("Memory: peak RSS < {} GB", sig(t.memory_gb)),
            models
                .iter()
                .map(|m| match m.peak_rss_mb {
                    Some(mb) => {
                        let gb = mb * 1_048_576.0 / 1e9;
                        cell(format!("{} GB", sig(gb)), Some(gb < t.memory_gb))
                    }
                    None => cell("not measured".into(), None),
                })
                .collect(),
        ),
        row(
            format!("Code quality: syntax valid > {}", pct(t.syntax_valid)),
            models
                .iter()
                .map(|m| {
                    let v = m.summary.syntax_valid_rate;
                    cell(pct(v), Some(v > t.syntax_valid))
                })
                .collect(),
        ),
    ]
}

fn charts(models: &[ModelResult]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let bpw: Vec<(String, f64, f64)> = models
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                m.bits_per_weight,
                m.summary.pass_rate * 100.0,
            )
        })
        .collect();
    out.push((
        "pass-rate-vs-bits.svg".to_string(),
        "Tasks passed vs bits per weight".to_string(),
        svg::scatter(
            "Tasks passed (pass@1) vs storage bits per weight",
            "bits per weight (whole model, on disk)",
            "tasks passed (%)",
            &bpw,
            false,
        ),
    ));
    let ppl: Vec<(String, f64, f64)> = models
        .iter()
        .filter_map(|m| {
            m.quality
                .as_ref()
                .map(|q| (m.name.clone(), m.bits_per_weight, q.perplexity))
        })
        .collect();
    if !ppl.is_empty() {
        out.push((
            "perplexity-vs-bits.svg".to_string(),
            "Perplexity vs bits per weight".to_string(),
            svg::scatter(
                "Perplexity on held-out code vs storage bits per weight",
                "bits per weight (whole model, on disk)",
                "perplexity",
                &ppl,
                true,
            ),
        ));
    }
    let speed: Vec<(String, f64)> = models
        .iter()
        .map(|m| (m.name.clone(), m.summary.decode_tok_s.p50))
        .collect();
    let curves: Vec<(String, Vec<(f64, f64)>)> = models
        .iter()
        .filter_map(|m| {
            let d = m.distillation.as_ref()?;
            (d.perplexity.len() >= 2).then(|| {
                (
                    m.name.clone(),
                    d.perplexity.iter().map(|p| (p[0], p[1])).collect(),
                )
            })
        })
        .collect();
    if !curves.is_empty() {
        out.push((
            "distillation.svg".to_string(),
            "Held-out perplexity during distillation".to_string(),
            svg::lines(
                "Held-out perplexity during distillation (smolbit distill's own scoring)",
                "end-to-end training tokens",
                "perplexity",
                &curves,
                true,
            ),
        ));
    }
    out.push((
        "decode-speed.svg".to_string(),
        "Decode speed per model".to_string(),
        svg::bars("Decode speed (median over answers)", "tok/s", &speed),
    ));
    out
}

fn context(
    results: &Results,
    opts: &ReportOptions,
) -> Result<(Value, Vec<(String, String)>), ReportError> {
    let models = &results.models;
    if models.is_empty() {
        return Err(ReportError::Results("the results contain no models".into()));
    }
    let model_views: Vec<serde_json::Value> = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut v = serde_json::to_value(m).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.remove("tasks");
                o.insert("is_reference".into(), json!(i == 0));
                o.insert("weight_mb".into(), json!(m.weight_bytes as f64 / 1e6));
                o.insert("params_m".into(), json!(m.parameters as f64 / 1e6));
                // Results from before prompt styles asked every task in chat.
                o.insert(
                    "prompt_style".into(),
                    json!(m.prompt_style.unwrap_or(PromptStyle::Chat).to_string()),
                );
            }
            v
        })
        .collect();
    let mut cats: Vec<String> = Vec::new();
    for m in models {
        for t in &m.tasks {
            if !cats.contains(&t.category) {
                cats.push(t.category.clone());
            }
        }
    }
    let categories: Vec<serde_json::Value> = cats
        .iter()
        .map(|c| {
            json!({
                "name": c,
                "per_model": models.iter().map(|m| {
                    let x = m.summary.categories.get(c).copied().unwrap_or([0; 3]);
                    json!({"tasks": x[0], "syntax_valid": x[1], "passed": x[2]})
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    let n_samples = opts.samples.unwrap_or(3);
    let samples: Vec<serde_json::Value> = models[0]
        .tasks
        .iter()
        .filter(|t| models.iter().all(|m| m.tasks.iter().any(|u| u.id == t.id)))
        .take(n_samples)
        .map(|t| {
            json!({
                "id": t.id,
                "category": t.category,
                "per_model": models.iter().map(|m| {
                    let u = m.tasks.iter().find(|u| u.id == t.id);
                    let s = u.and_then(|u| u.samples.first());
                    json!({
                        "model": m.name,
                        "text": s.map(|s| s.text.clone()).unwrap_or_default(),
                        "outcome": s.map(|s| s.outcome),
                        "passed": u.map(|u| u.passed),
                        "syntax_valid": u.map(|u| u.syntax_valid),
                        "generated_tokens": s.map(|s| s.generated_tokens),
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    let degenerate: Vec<serde_json::Value> = models
        .iter()
        .map(|m| {
            let examples: Vec<serde_json::Value> = m
                .tasks
                .iter()
                .flat_map(|t| t.samples.iter().map(move |s| (t, s)))
                .filter(|(_, s)| s.degenerate)
                .take(2)
                .map(|(t, s)| {
                    json!({
                        "id": t.id,
                        "excerpt": excerpt(&s.text, 240),
                        "longest_repeat_run": s.degeneration.longest_repeat_run,
                        "distinct2": s.degeneration.distinct2,
                        "longest_periodic_chars": s.degeneration.longest_periodic_chars,
                    })
                })
                .collect();
            json!({
                "model": m.name,
                "count": m.summary.degenerate,
                "rate": m.summary.degenerate_rate,
                "examples": examples,
            })
        })
        .collect();
    let chart_list = charts(models);
    let title = opts
        .title
        .clone()
        .unwrap_or_else(|| format!("{} ternary comparison report", models[0].name));
    let ctx = json!({
        "title": title,
        "generated": utc(results.created_unix),
        "dataset": results.dataset,
        "settings": results.settings,
        "environment": results.environment,
        "models": model_views,
        "findings": findings(models),
        "criteria": criteria(models, &opts.targets),
        "categories": categories,
        "samples": samples,
        "degenerate": degenerate,
        "charts": chart_list.iter().map(|(f, t, _)| json!({"file": format!("charts/{f}"), "title": t})).collect::<Vec<_>>(),
        "reproduce": opts.reproduce,
        "targets": opts.targets,
    });
    let files = chart_list.into_iter().map(|(f, _, s)| (f, s)).collect();
    Ok((Value::from(Serde(&ctx)), files))
}

fn environment(opts: &ReportOptions) -> Result<Environment<'static>, ReportError> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| ReportError::Template {
            path: "syntax".into(),
            what: e.to_string(),
        })?;
    env.set_syntax(syntax);
    env.add_filter("pct", |v: f64| pct(v));
    env.add_filter("sig", |v: f64| sig(v));
    env.add_filter("fixed", |v: f64, digits: Option<usize>| {
        format!("{v:.*}", digits.unwrap_or(1))
    });
    env.add_filter("md", |s: String| md(&s));
    env.add_filter("codeblock", |s: String, lang: Option<String>| {
        codeblock(&s, lang.as_deref().unwrap_or(""))
    });
    env.add_filter("excerpt", |s: String, n: usize| excerpt(&s, n));
    env.add_template_owned("report.md.j2".to_string(), DEFAULT_TEMPLATE.to_string())
        .map_err(|e| ReportError::Template {
            path: "report.md.j2 (built in)".into(),
            what: e.to_string(),
        })?;
    if let Some(dir) = &opts.templates {
        let entries = std::fs::read_dir(dir).map_err(|e| ReportError::Template {
            path: dir.display().to_string(),
            what: e.to_string(),
        })?;
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if !name.ends_with(".j2") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| ReportError::Template {
                path: path.display().to_string(),
                what: e.to_string(),
            })?;
            env.add_template_owned(name, text)
                .map_err(|e| ReportError::Template {
                    path: path.display().to_string(),
                    what: e.to_string(),
                })?;
        }
    }
    Ok(env)
}

/// Render the report for `results`.
pub fn render(results: &Results, opts: &ReportOptions) -> Result<Rendered, ReportError> {
    let env = environment(opts)?;
    let (ctx, charts) = context(results, opts)?;
    let tmpl = env
        .get_template("report.md.j2")
        .map_err(|e| ReportError::Template {
            path: "report.md.j2".into(),
            what: e.to_string(),
        })?;
    let markdown = tmpl.render(ctx).map_err(|e| ReportError::Template {
        path: "report.md.j2".into(),
        what: format!("{e:#}").replace('\n', " "),
    })?;
    Ok(Rendered { markdown, charts })
}

/// Render and write `dir/report.md` and `dir/charts/*.svg` (each file written to a temporary
/// name, then renamed).
pub fn write_report(
    dir: &Path,
    results: &Results,
    opts: &ReportOptions,
) -> Result<(), ReportError> {
    let r = render(results, opts)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| ReportError::Io {
            path: path.clone(),
            what: e.to_string(),
        }
    };
    let charts = dir.join("charts");
    std::fs::create_dir_all(&charts).map_err(io(&charts))?;
    let write = |path: PathBuf, text: &str| -> Result<(), ReportError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    };
    for (name, svg) in &r.charts {
        write(charts.join(name), svg)?;
    }
    write(dir.join("report.md"), &r.markdown)
}

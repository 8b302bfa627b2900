//! `cargo xtask pipeline`: fetch, convert, quantize, evaluate, report.
//!
//! ```text
//! cargo xtask pipeline [--model <GGUF|HF dir>] [--schemes q8,q4,b158,planes3:g64:a8]
//!                      [--dtype f16|bf16|f32] [--dataset FILE|humaneval]
//!                      [--also <GGUF|HF dir> ...] [--quick] [--name NAME]
//!                      [--distill planes2:g128,b158 [--distill-tokens N]]
//! ```
//!
//! By default it compares what a user chooses between: the normal model in f16 (as the seed
//! ran it; `--dtype`), the int8 and int4 baselines (`q8`, `q4`), BitNet b1.58 (`b158`) and
//! three trit planes with int8 activations, each on its fastest CPU kernels. The first model is
//! the reference for perplexity, KL and top-1 agreement; the schemes quantize the f32 conversion.
//!
//! A natively ternary model (a BitNet b1.58 / Falcon3-1.58bit directory, a TQ1_0, TQ2_0 or
//! I2_S GGUF) is converted to `models/<name>/native` and evaluated as it is: post-training
//! schemes do not apply to it. `--also` adds models (converted the same way) to the
//! evaluation after the main model's variants, so a native ternary model is reported beside the
//! post-training schemes of the default model (without KL/top-1 when its vocabulary differs).
//!
//! Outputs: `models/<name>/f32`, `models/<name>/<dtype>` and `models/<name>/<scheme>` (git-ignored), and
//! `reports/<name>/` (`--quick`: `reports/<name>-quick/`) with `report.md`, `results.json` and
//! `charts/*.svg`. Each stage writes a stamp, `.smolbit-stage`, holding a hash of everything it
//! read (input files, settings, and the source of the crates that compute it); a re-run skips a
//! stage whose stamp matches, so only what changed is redone. The inference stages run the
//! `smolbit` binary built in the workspace's one optimized profile (see the root Cargo.toml).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::fetch::{fetch_default_model, sha256_file};
use crate::project_root;

/// The variants a user chooses between: int8 and int4 (llama.cpp's Q8_0 / Q4_0 baselines),
/// BitNet b1.58, and three trit planes with int8 activations (the post-training scheme that still
/// writes code; `:a8` costs it 4 % perplexity against float activations, docs/schemes.md).
const DEFAULT_SCHEMES: &str = "q8,q4,b158,planes3:g64:a8";
const CALIBRATION: &str = "datasets/text/calibration-code.py";
const HELDOUT: &str = "datasets/text/heldout-code.py";

struct Args {
    model: Option<PathBuf>,
    also: Vec<PathBuf>,
    schemes: Vec<String>,
    dataset: PathBuf,
    quick: bool,
    name: Option<String>,
    shard: Option<(usize, usize)>,
    /// Schemes to distill (`smolbit distill`) beside the post-training ones.
    distill: Vec<String>,
    /// End-to-end tokens of each distillation (`--distill-tokens`).
    distill_tokens: Option<u64>,
    /// Precision of the evaluated full-precision model (`--dtype`): f16 as the seed ran it, or
    /// f32. Quantization always reads the f32 conversion.
    dtype: String,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args {
        model: None,
        also: Vec::new(),
        schemes: DEFAULT_SCHEMES.split(',').map(String::from).collect(),
        dataset: PathBuf::from("datasets/coding-suite.jsonl"),
        quick: false,
        name: None,
        shard: None,
        distill: Vec::new(),
        distill_tokens: None,
        dtype: "f16".into(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().with_context(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--model" => a.model = Some(PathBuf::from(value("--model")?)),
            "--also" => a.also.push(PathBuf::from(value("--also")?)),
            "--schemes" => {
                a.schemes = value("--schemes")?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            "--distill" => {
                a.distill = value("--distill")?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            "--distill-tokens" => {
                let v = value("--distill-tokens")?;
                a.distill_tokens = Some(
                    v.parse()
                        .with_context(|| format!("--distill-tokens {v}: not a number"))?,
                );
            }
            "--dataset" => a.dataset = PathBuf::from(value("--dataset")?),
            "--dtype" => {
                let v = value("--dtype")?;
                if !matches!(v.as_str(), "f16" | "bf16" | "f32") {
                    bail!("--dtype {v}: expected f16, bf16 or f32");
                }
                a.dtype = v.clone();
            }
            "--name" => a.name = Some(value("--name")?.clone()),
            "--quick" => a.quick = true,
            "--shard" => {
                let v = value("--shard")?;
                let (i, n) = v
                    .split_once('/')
                    .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)))
                    .filter(|&(i, n): &(usize, usize)| i < n)
                    .with_context(|| format!("--shard {v}: expected I/N with 0 <= I < N"))?;
                a.shard = Some((i, n));
            }
            "-h" | "--help" => {
                eprintln!(
                    "usage: cargo xtask pipeline [--model <GGUF|HF dir>] [--schemes {DEFAULT_SCHEMES}] \
                     [--dataset FILE|humaneval] [--dtype f16|bf16|f32] [--also <GGUF|HF dir> ...] [--quick] [--name NAME] [--shard I/N] [--distill SCHEMES [--distill-tokens N]]"
                );
                std::process::exit(0);
            }
            other => bail!("pipeline: unknown argument '{other}' (see --help)"),
        }
    }
    Ok(a)
}

fn model_name(input: &Path) -> String {
    let stem = if input.is_dir() {
        input.file_name()
    } else {
        input.file_stem()
    };
    let stem = stem
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    stem.to_lowercase().replace(['.', ' '], "-")
}

/// A scheme as a directory name: `planes2:g64:cal` → `planes2-g64-cal`.
fn slug(scheme: &str) -> String {
    scheme.replace([':', '/', ' '], "-")
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 over the contents of every file under the given paths (sorted), relative to the root.
fn tree_hash(paths: &[&str]) -> Result<String> {
    let root = project_root();
    let mut files = Vec::new();
    let mut stack: Vec<PathBuf> = paths.iter().map(|p| root.join(p)).collect();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).with_context(|| format!("{}", p.display()))? {
                stack.push(e?.path());
            }
        } else if p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(
            f.strip_prefix(&root)
                .unwrap_or(&f)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(std::fs::read(&f).with_context(|| format!("{}", f.display()))?);
    }
    Ok(hex(&h.finalize()))
}

/// Identity of a model input: a file's sha256, or a directory's config and weight files.
fn input_key(input: &Path) -> Result<String> {
    if input.is_file() {
        return sha256_file(input);
    }
    if !input.is_dir() {
        bail!("{}: no such file or directory", input.display());
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(input)
        .with_context(|| format!("{}: cannot read", input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for p in names {
        h.update(
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(sha256_file(&p)?.as_bytes());
    }
    Ok(hex(&h.finalize()))
}

fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize())
}

const STAMP: &str = ".smolbit-stage";

fn up_to_date(dir: &Path, key: &str, outputs: &[&Path]) -> bool {
    std::fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s.trim() == key)
        && outputs.iter().all(|p| p.exists())
}

/// Build the `smolbit` binary (the workspace's one optimized profile) and return its path.
pub fn build_smolbit() -> Result<PathBuf> {
    let status = Command::new(cargo())
        .current_dir(project_root())
        .args(["build", "--quiet", "-p", "smolbit"])
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building smolbit failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"));
    Ok(target.join("debug").join("smolbit"))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Run one stage's command. With `log`, its output goes to the log file under a spinner, and
/// the log's tail is shown on failure; without, it inherits the terminal (for commands with
/// their own progress bars).
fn run_stage(label: &str, cmd: &mut Command, log: Option<&Path>) -> Result<Duration> {
    let start = Instant::now();
    cmd.current_dir(project_root());
    let Some(log) = log else {
        eprintln!("{label}");
        let status = cmd
            .status()
            .with_context(|| format!("{label}: cannot start"))?;
        if !status.success() {
            bail!("{label}: failed ({status})");
        }
        return Ok(start.elapsed());
    };
    let file = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
    let err = file.try_clone()?;
    let bar = ProgressBar::new_spinner().with_message(label.to_string());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let status = cmd
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .status()
        .with_context(|| format!("{label}: cannot start"))?;
    bar.finish_and_clear();
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{label}: failed ({status}); log {}:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    eprintln!("{label}: done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(start.elapsed())
}

fn rel(p: &Path) -> String {
    p.strip_prefix(project_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Whether `input` is natively ternary: a GGUF with ternary tensors, or a directory whose
/// config has a `quantization_config` (transformers' BitNet, or smolbit's own).
fn is_native(input: &Path) -> Result<bool> {
    if input.is_dir() {
        return Ok(smolbit_weights::ModelDir::open(input)?.quant.is_some());
    }
    let g = smolbit_weights::gguf::GgufFile::open(input)?;
    Ok(g.tensors.iter().any(|t| t.ggml_type.ternary().is_some()))
}

/// Convert `input` into `models/<name>/<dtype>` (full precision) or, for a natively ternary
/// input, `models/<name>/native` (its trits and scales, other tensors in their own types),
/// unless the stamp says it is up to date. Returns the directory, the stage key and whether the
/// model is natively ternary.
fn convert_stage(
    bin: &Path,
    input: &Path,
    models: &Path,
    dtype: &str,
    code: &str,
    logs: &Path,
    reproduce: &mut Vec<String>,
) -> Result<(PathBuf, String, bool)> {
    let native = is_native(input)?;
    let dir = models.join(if native { "native" } else { dtype });
    let mut convert_key = key(&["convert", &input_key(input)?, code]);
    if !native && dtype != "f32" {
        convert_key = key(&[&convert_key, dtype]);
    }
    let (i, o) = (input.display().to_string(), dir.display().to_string());
    let mut cmd: Vec<&str> = vec!["convert", &i, "--out", &o];
    if !native {
        cmd.extend(["--dtype", dtype]);
    }
    reproduce.push(format!("smolbit {}", cmd.join(" ").replace(&o, &rel(&dir))));
    if up_to_date(&dir, &convert_key, &[&dir.join("config.json")]) {
        eprintln!("[convert] up to date: {}", rel(&dir));
    } else {
        cmd.push("--force");
        let log = logs.join(format!("convert-{}.log", model_name(input)));
        run_stage(
            &format!("[convert] {} -> {}", input.display(), rel(&dir)),
            Command::new(bin).args(&cmd),
            Some(&log),
        )?;
        std::fs::write(dir.join(STAMP), &convert_key)?;
    }
    Ok((dir, convert_key, native))
}

pub fn run(args: &[String]) -> Result<()> {
    let args = parse(args)?;
    let root = project_root();
    let total = Instant::now();

    eprintln!("[build] cargo build -p smolbit (optimized dev profile)");
    let bin = build_smolbit()?;

    let input = match &args.model {
        Some(m) => m.clone(),
        None => {
            eprintln!("[fetch] default model");
            fetch_default_model()?
        }
    };
    let name = args.name.clone().unwrap_or_else(|| model_name(&input));
    let models = root.join("models").join(&name);
    let report_dir = root.join("reports").join(if args.quick {
        format!("{name}-quick")
    } else {
        name.clone()
    });
    let logs = report_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("{}", logs.display()))?;
    let mut reproduce = vec![format!("cargo build -p smolbit  # binary: {}", rel(&bin))];
    if args.model.is_none() {
        reproduce.push("cargo xtask fetch-model".into());
    }

    // Convert.
    let code = tree_hash(&["crates/smolbit-weights/src", "crates/smolbit-ternary/src"])?;
    let (conv_dir, convert_key, native) =
        convert_stage(&bin, &input, &models, "f32", &code, &logs, &mut reproduce)?;
    // The evaluated full-precision model, in `--dtype` (the reference for KL and top-1).
    let reference = if native || args.dtype == "f32" {
        (conv_dir.clone(), convert_key.clone())
    } else {
        let (d, k, _) = convert_stage(
            &bin,
            &input,
            &models,
            &args.dtype,
            &code,
            &logs,
            &mut reproduce,
        )?;
        (d, k)
    };
    let mut extra = Vec::new();
    for m in &args.also {
        let dir = root.join("models").join(model_name(m));
        let (d, k, _) = convert_stage(&bin, m, &dir, &args.dtype, &code, &logs, &mut reproduce)?;
        extra.push((d, k));
    }
    let f32_dir = conv_dir.clone();
    let o = f32_dir.display().to_string();
    let schemes: &[String] = if native {
        eprintln!(
            "[quantize] {} is natively ternary: evaluated as it is, without post-training schemes",
            input.display()
        );
        &[]
    } else {
        &args.schemes
    };

    // Quantize.
    let quant_code = tree_hash(&[
        "crates/smolbit-weights/src",
        "crates/smolbit-ternary/src",
        "crates/smolbit-model/src",
    ])?;
    let mut model_dirs = vec![reference];
    for scheme in schemes {
        let dir = models.join(slug(scheme));
        let calibrated = scheme.contains(":cal") || scheme.contains(":gptq");
        let cal_key = if calibrated {
            sha256_file(&root.join(CALIBRATION))?
        } else {
            String::new()
        };
        let k = key(&["quantize", &convert_key, scheme, &cal_key, &quant_code]);
        let d = dir.display().to_string();
        let mut cmd_args = vec![
            "quantize".to_string(),
            "--model".into(),
            o.clone(),
            "--scheme".into(),
            scheme.clone(),
            "--out".into(),
            d.clone(),
            "--force".into(),
        ];
        if calibrated {
            cmd_args.extend(["--calibration".into(), CALIBRATION.into()]);
        }
        reproduce.push(format!(
            "smolbit {}",
            cmd_args
                .iter()
                .filter(|a| a.as_str() != "--force")
                .map(|a| a.replace(&format!("{}/", root.display()), ""))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        if up_to_date(&dir, &k, &[&dir.join("config.json")]) {
            eprintln!("[quantize {scheme}] up to date: {}", rel(&dir));
        } else {
            run_stage(
                &format!("[quantize {scheme}] -> {}", rel(&dir)),
                Command::new(&bin).args(&cmd_args),
                Some(&logs.join(format!("quantize-{}.log", slug(scheme)))),
            )?;
            std::fs::write(dir.join(STAMP), &k)?;
        }
        model_dirs.push((dir, k));
    }

    // Distill (after the post-training schemes: the students start from the same fits).
    if !args.distill.is_empty() && !native {
        let distill_code = tree_hash(&[
            "crates/smolbit-distill/src",
            "crates/smolbit-weights/src",
            "crates/smolbit-ternary/src",
        ])?;
        // --quick: a smoke run of each stage.
        let (tokens, blockwise) = match (args.distill_tokens, args.quick) {
            (Some(t), _) => (t, t / 4),
            (None, true) => (2048, 1024),
            (None, false) => (262_144, 65_536),
        };
        for scheme in &args.distill {
            let dir = models.join(format!("distill-{}", slug(scheme)));
            let k = key(&[
                "distill",
                &convert_key,
                scheme,
                &tokens.to_string(),
                &blockwise.to_string(),
                &distill_code,
            ]);
            let mut cmd_args: Vec<String> = vec![
                "distill".into(),
                "--teacher".into(),
                o.clone(),
                "--scheme".into(),
                scheme.clone(),
                "--out".into(),
                dir.display().to_string(),
                "--tokens".into(),
                tokens.to_string(),
                "--blockwise-tokens".into(),
                blockwise.to_string(),
            ];
            reproduce.push(format!(
                "smolbit {}",
                cmd_args
                    .iter()
                    .map(|a| a.replace(&format!("{}/", root.display()), ""))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            cmd_args.push("--force".into());
            let mut state = dir.as_os_str().to_owned();
            state.push(".state");
            if Path::new(&state).join("latest").is_file() {
                // An interrupted run of the same settings continues where it stopped.
                cmd_args.push("--resume".into());
            }
            if up_to_date(&dir, &k, &[&dir.join("config.json")]) {
                eprintln!("[distill {scheme}] up to date: {}", rel(&dir));
            } else {
                run_stage(
                    &format!("[distill {scheme}] -> {}", rel(&dir)),
                    Command::new(&bin).args(&cmd_args),
                    Some(&logs.join(format!("distill-{}.log", slug(scheme)))),
                )?;
                std::fs::write(dir.join(STAMP), &k)?;
            }
            model_dirs.push((dir, k));
        }
    }

    model_dirs.extend(extra);

    // Evaluate (one shard: its own results file, merged later by `smolbit eval merge`).
    let results = match args.shard {
        Some((i, n)) => report_dir
            .join("shards")
            .join(format!("results-{i}-of-{n}.json")),
        None => report_dir.join("results.json"),
    };
    let stamp_dir = results.parent().unwrap_or(&report_dir).to_path_buf();
    std::fs::create_dir_all(&stamp_dir)?;
    let mut eval_args: Vec<String> = vec!["eval".into()];
    for (d, _) in &model_dirs {
        eval_args.extend(["--model".into(), rel(d)]);
    }
    eval_args.extend([
        "--dataset".into(),
        args.dataset.display().to_string(),
        "--perplexity-text".into(),
        HELDOUT.into(),
        "--out".into(),
        rel(&results),
    ]);
    if let Some((i, n)) = args.shard {
        eval_args.extend(["--shard".into(), format!("{i}/{n}")]);
    }
    if args.quick {
        eval_args.extend([
            "--per-category".into(),
            "1".into(),
            "--perplexity-max-tokens".into(),
            "1024".into(),
        ]);
    }
    let eval_code = tree_hash(&[
        "crates/smolbit-eval/src",
        "crates/smolbit-generate/src",
        "crates/smolbit-model/src",
        "crates/smolbit-ternary/src",
        "crates/smolbit-weights/src",
    ])?;
    // `--dataset humaneval` names the cached HumanEval (fetched here when missing).
    let dataset_file = if args.dataset == Path::new("humaneval") {
        smolbit_eval::humaneval::fetch()?
    } else {
        root.join(&args.dataset)
    };
    let dataset_key = sha256_file(&dataset_file)
        .with_context(|| format!("dataset {}", args.dataset.display()))?;
    let mut parts: Vec<&str> = vec!["eval", &dataset_key, &eval_code];
    parts.extend(model_dirs.iter().map(|(_, k)| k.as_str()));
    let joined = eval_args.join(" ");
    parts.push(&joined);
    let eval_key = key(&parts);
    reproduce.push(format!("smolbit {joined}"));
    let stamp = if args.shard.is_some() {
        stamp_dir.join(format!("{}.stage", results.display()))
    } else {
        stamp_dir.join(STAMP)
    };
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == eval_key) && results.exists() {
        eprintln!("[eval] up to date: {}", rel(&results));
    } else {
        let _ = std::fs::remove_file(&stamp);
        run_stage(
            &format!("[eval] {} models -> {}", model_dirs.len(), rel(&results)),
            Command::new(&bin).args(&eval_args),
            None,
        )?;
        std::fs::write(&stamp, &eval_key)?;
    }
    if args.shard.is_some() {
        eprintln!(
            "[shard] {} (merge with `smolbit eval merge`, then `cargo xtask report`)",
            rel(&results)
        );
        return Ok(());
    }

    // Report (cheap: always rendered, so template changes show at once).
    let res = smolbit_eval::results::Results::read(&results)?;
    reproduce.push(format!(
        "smolbit report --results {} --out-dir {}",
        rel(&results),
        rel(&report_dir)
    ));
    let opts = smolbit_report::ReportOptions {
        title: Some(format!(
            "{name}: the normal model against int8, int4 and ternary{}",
            if args.quick { " (quick run)" } else { "" }
        )),
        reproduce: std::iter::once(format!(
            "cargo xtask pipeline{}{}{}",
            if args.quick { " --quick" } else { "" },
            args.model
                .as_ref()
                .map(|m| format!(" --model {}", m.display()))
                .unwrap_or_default(),
            args.also
                .iter()
                .map(|m| format!(" --also {}", m.display()))
                .collect::<String>()
        ))
        .chain(std::iter::once("# which runs:".to_string()))
        .chain(reproduce)
        .collect(),
        ..Default::default()
    };
    smolbit_report::write_report(&report_dir, &res, &opts)?;
    eprintln!(
        "[report] {} ({:.1} min in all)",
        rel(&report_dir.join("report.md")),
        total.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// `cargo xtask report --results FILE [--results FILE ...] --out-dir DIR [--title T]`: render a
/// report from a results file; several (shards) are merged first and the merged `results.json`
/// is written beside the report.
pub fn report(args: &[String]) -> Result<()> {
    let (mut results, mut out, mut title) = (Vec::new(), None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--results" => results.push(PathBuf::from(value()?)),
            "--out-dir" => out = Some(PathBuf::from(value()?)),
            "--title" => title = Some(value()?),
            other => bail!("report: unknown argument '{other}'"),
        }
    }
    let out = out.context("report: --out-dir <DIR> is required")?;
    let res = match results.as_slice() {
        [] => bail!("report: --results <FILE> is required"),
        [one] => smolbit_eval::results::Results::read(one)?,
        many => {
            let mut parts = Vec::new();
            for p in many {
                parts.push((
                    p.display().to_string(),
                    smolbit_eval::results::Results::read(p)?,
                ));
            }
            let merged = smolbit_eval::results::Results::merge(parts)?;
            std::fs::create_dir_all(&out)?;
            let path = out.join("results.json");
            std::fs::write(&path, serde_json::to_string_pretty(&merged)? + "\n")
                .with_context(|| format!("{}: cannot write", path.display()))?;
            eprintln!("[merge] {} shards -> {}", many.len(), path.display());
            merged
        }
    };
    let opts = smolbit_report::ReportOptions {
        title,
        reproduce: vec![format!(
            "cargo xtask report {} --out-dir {}",
            results
                .iter()
                .map(|r| format!("--results {}", r.display()))
                .collect::<Vec<_>>()
                .join(" "),
            out.display()
        )],
        ..Default::default()
    };
    smolbit_report::write_report(&out, &res, &opts)?;
    eprintln!("[report] {}", out.join("report.md").display());
    Ok(())
}

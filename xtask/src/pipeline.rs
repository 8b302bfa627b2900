//! `cargo xtask pipeline`: the end-to-end run on a model.
//!
//! Stages available today: fetch (default model) and convert, with the convert stage skipped when
//! its output records the same input sha256. Quantize, evaluate and report stages are added by
//! their issues. Inference-heavy stages run the `smolbit` binary built in the workspace's
//! optimized dev profile (see the root Cargo.toml), never an unoptimized build.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::fetch::{fetch_default_model, sha256_file};
use crate::project_root;

struct Args {
    model: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut model = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--model" => model = Some(PathBuf::from(it.next().context("--model needs a path")?)),
            other => bail!("pipeline: unknown argument '{other}'"),
        }
    }
    Ok(Args { model })
}

fn smolbit(args: &[&str]) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(project_root())
        .args(["run", "--quiet", "--package", "smolbit", "--"])
        .args(args)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("smolbit {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn model_name(input: &Path) -> String {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    stem.to_lowercase().replace(['.', ' '], "-")
}

pub fn run(args: &[String]) -> Result<()> {
    let args = parse(args)?;
    let input = match args.model {
        Some(m) => m,
        None => fetch_default_model()?,
    };
    let out = project_root().join("models").join(model_name(&input));
    let stamp_path = out.join(".smolbit-source");
    let stamp = if input.is_file() {
        sha256_file(&input)?
    } else {
        input.display().to_string()
    };
    if std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        eprintln!("[convert] up to date: {}", out.display());
    } else {
        eprintln!("[convert] {} -> {}", input.display(), out.display());
        let (i, o) = (input.display().to_string(), out.display().to_string());
        smolbit(&["convert", &i, "--out", &o, "--force"])?;
        std::fs::write(&stamp_path, &stamp)
            .with_context(|| format!("{}: cannot write", stamp_path.display()))?;
    }
    eprintln!("[done] model directory: {}", out.display());
    Ok(())
}

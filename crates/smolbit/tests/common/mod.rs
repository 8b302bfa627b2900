//! Helpers shared by the `smolbit` binary's end-to-end tests.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Run the binary.
pub fn smolbit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smolbit"))
        .args(args)
        .output()
        .expect("run smolbit")
}

/// Run the binary and require success.
pub fn smolbit_ok(args: &[&str]) -> Output {
    let out = smolbit(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The default model converted once per test binary into `<target tmp>/<name>`; `None`
/// (skipped) when it is not cached, unless `SMOLBIT_REQUIRE_MODEL=1`. Under the target
/// directory and replaced by every run: a static is never dropped, so a temporary directory
/// held here would outlive the process (and fill /tmp run by run).
pub fn real_model(name: &str) -> Option<&'static Path> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let gguf = smolbit_weights::cache::default_model_for_tests()?;
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        smolbit_ok(&[
            "convert",
            gguf.to_str().expect("utf8"),
            "--out",
            dir.to_str().expect("utf8"),
            "--force",
        ]);
        Some(dir)
    })
    .as_deref()
}

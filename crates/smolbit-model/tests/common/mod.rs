//! Helpers shared by the integration tests: fixture paths and transformers' golden logits.
#![allow(dead_code)] // each test file uses part of this

use std::path::{Path, PathBuf};

/// A file or directory under the repository's `testdata/`.
pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

/// Tokens and per-position logits written by a fixture script.
pub struct Golden {
    pub tokens: Vec<u32>,
    pub logits: Vec<Vec<f32>>,
}

/// Read `testdata/<file>` (`{"tokens": [...], "logits": [[...], ...]}`).
pub fn golden(file: &str) -> Golden {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(testdata(file)).expect("read golden"))
            .expect("json");
    Golden {
        tokens: serde_json::from_value(v["tokens"].clone()).expect("tokens"),
        logits: serde_json::from_value(v["logits"].clone()).expect("logits"),
    }
}

/// Quantize the checkpoint in `src` into `out` by `scheme` as `smolbit quantize` does by default
/// (no calibration, two least-squares iterations for planes schemes, embedding and head kept).
pub fn quantize(src: &Path, out: &Path, scheme: &str, packing: smolbit_ternary::pack::Packing) {
    let opts = smolbit_weights::quantize::QuantizeOptions {
        scheme: scheme.parse().expect("scheme"),
        packing,
        calibration: None,
        overwrite: false,
        iters: 2,
        quantize_embeddings: false,
    };
    smolbit_weights::quantize::quantize_model(src, out, &opts).expect("quantize");
}

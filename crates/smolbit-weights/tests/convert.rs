//! The converter on the tiny fixtures: outputs, reports, and the errors for bad inputs (missing
//! tensors, wrong shapes, unsupported architectures) with no partial output left behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use smolbit_weights::safetensors::{self, Dtype, SafeTensors, TensorSpec};
use smolbit_weights::{ConvertOptions, ModelConfig, convert};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

fn opts() -> ConvertOptions {
    ConvertOptions::default()
}

/// Nothing but `out` (when the conversion succeeded) is left in `parent`.
fn assert_no_leftovers(parent: &Path, expect: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(parent)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, expect, "unexpected files in {}", parent.display());
}

#[test]
fn gguf_to_hf_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("m");
    let r = convert(&testdata("tiny-llama.gguf"), &out, &opts()).expect("convert");
    assert_eq!(r.tensors_written, 3 + 2 * 9);
    assert!(r.leftover.is_empty());
    assert!(!r.tokenizer, "the tiny GGUF carries no tokenizer");
    assert_no_leftovers(tmp.path(), &["m"]);
    let cfg = ModelConfig::from_dir(&out).expect("config");
    assert_eq!(
        (
            cfg.num_layers,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim
        ),
        (2, 4, 2, 16)
    );
    assert_eq!(cfg.rope_theta, 50000.0);
    assert!(!cfg.tie_word_embeddings);
    let st = SafeTensors::open_dir(&out).expect("weights");
    assert_eq!(st.metadata().get("format").map(String::as_str), Some("pt"));
    assert_eq!(
        st.entry("model.layers.1.mlp.down_proj.weight")
            .expect("down")
            .shape,
        vec![64, 256]
    );

    // An existing output is refused unless overwriting is asked for.
    let err = convert(&testdata("tiny-llama.gguf"), &out, &opts()).expect_err("exists");
    assert!(
        err.to_string()
            .ends_with("already exists (pass --force to replace it)"),
        "{err}"
    );
    let force = ConvertOptions {
        overwrite: true,
        dtype: Some(Dtype::BF16),
    };
    let r = convert(&testdata("tiny-llama.gguf"), &out, &force).expect("overwrite");
    assert_eq!(r.dtype, Dtype::BF16);
    assert_no_leftovers(tmp.path(), &["m"]);
}

#[test]
fn hf_directory_round_trip_keeps_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("m");
    let r = convert(&testdata("tiny-llama"), &out, &opts()).expect("convert sharded f16");
    assert_eq!(r.dtype, Dtype::F16);
    let src = SafeTensors::open_dir(&testdata("tiny-llama")).expect("src");
    let dst = SafeTensors::open_dir(&out).expect("dst");
    for name in src.names() {
        assert_eq!(
            src.bytes(name).expect("src"),
            dst.bytes(name).expect("dst"),
            "{name}"
        );
    }
    assert_eq!(
        ModelConfig::from_dir(&out).expect("cfg"),
        ModelConfig::from_dir(&testdata("tiny-llama")).expect("cfg")
    );
}

/// Copy a fixture model directory, letting `edit` change its config and tensors.
fn edited_copy(
    src: &str,
    edit_config: impl FnOnce(&mut serde_json::Value),
    keep: impl Fn(&str) -> bool,
    reshape: impl Fn(&str, Vec<usize>) -> Vec<usize>,
) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testdata(src).join("config.json")).expect("read"),
    )
    .expect("json");
    edit_config(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).expect("write");
    let st = SafeTensors::open_dir(&testdata(src)).expect("open");
    let specs: Vec<TensorSpec> = st
        .names()
        .filter(|n| keep(n))
        .map(|n| {
            let e = st.entry(n).expect("entry");
            TensorSpec {
                name: n.to_string(),
                dtype: Dtype::F32,
                shape: reshape(n, e.shape.clone()),
            }
        })
        .collect();
    safetensors::write_streaming(
        &dir.join("model.safetensors"),
        &specs,
        &BTreeMap::new(),
        |_, s| {
            let n: usize = s.shape.iter().product();
            Ok::<_, safetensors::SafetensorsError>(safetensors::encode_f32(
                &vec![0.5; n],
                Dtype::F32,
            ))
        },
    )
    .expect("write");
    tmp
}

fn check_convert_error(input_tmp: &tempfile::TempDir, expect: &str) {
    let input = input_tmp.path().join("in");
    let err = convert(&input, &input_tmp.path().join("out"), &opts()).expect_err("must fail");
    let msg = err.to_string();
    assert!(msg.contains(expect), "expected '{expect}' in: {msg}");
    assert!(!msg.contains('\n'), "not one line: {msg}");
    assert_no_leftovers(input_tmp.path(), &["in"]);
}

#[test]
fn bad_hf_inputs() {
    let keep_all = |_: &str| true;
    let same = |_: &str, s: Vec<usize>| s;
    check_convert_error(
        &edited_copy(
            "tiny-smollm3",
            |_| {},
            |n| n != "model.layers.2.mlp.up_proj.weight",
            same,
        ),
        "missing tensors: model.layers.2.mlp.up_proj.weight",
    );
    check_convert_error(
        &edited_copy(
            "tiny-smollm3",
            |c| c["intermediate_size"] = 65.into(),
            keep_all,
            same,
        ),
        "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [64, 32], config implies [65, 32]",
    );
    check_convert_error(
        &edited_copy(
            "tiny-smollm3",
            |_| {},
            keep_all,
            |n, s| {
                if n == "model.norm.weight" {
                    vec![31]
                } else {
                    s
                }
            },
        ),
        "tensor 'model.norm.weight' has shape [31], config implies [32]",
    );
    check_convert_error(
        &edited_copy(
            "tiny-smollm3",
            |c| c["model_type"] = "mamba".into(),
            keep_all,
            same,
        ),
        "unsupported: model_type 'mamba'",
    );
    check_convert_error(
        &edited_copy(
            "tiny-smollm3",
            |c| {
                c["rope_parameters"] =
                    serde_json::json!({"rope_type": "yarn", "rope_theta": 1.0, "factor": 4.0})
            },
            keep_all,
            same,
        ),
        "unsupported: rope type 'yarn'",
    );
}

#[test]
fn bad_gguf_inputs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(testdata("tiny-llama.gguf")).expect("read");
    let truncated = tmp.path().join("t.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).expect("write");
    let err = convert(&truncated, &tmp.path().join("out"), &opts()).expect_err("truncated");
    assert!(
        err.to_string().contains("truncated: data of tensor"),
        "{err}"
    );
    // An unsupported architecture: rename `llama` in the metadata value (same length keeps the
    // layout valid).
    let mut arch = bytes.clone();
    let value = b"\x05\0\0\0\0\0\0\0llama";
    let pos = arch
        .windows(value.len())
        .position(|w| w == value)
        .expect("arch value")
        + 8;
    arch[pos..pos + 5].copy_from_slice(b"gemma");
    let p = tmp.path().join("a.gguf");
    std::fs::write(&p, &arch).expect("write");
    let err = convert(&p, &tmp.path().join("out"), &opts()).expect_err("arch");
    assert!(
        err.to_string()
            .contains("a.gguf: unsupported architecture 'gemma'"),
        "{err}"
    );
    let err = convert(
        &tmp.path().join("nope.gguf"),
        &tmp.path().join("out"),
        &opts(),
    )
    .expect_err("missing");
    assert!(
        err.to_string()
            .ends_with("nope.gguf: no such file or directory"),
        "{err}"
    );
    assert_no_leftovers(tmp.path(), &["a.gguf", "t.gguf"]);
}

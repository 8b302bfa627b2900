//! The `smolbit` binary end to end on the tiny fixtures: output formats and one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

fn smolbit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smolbit"))
        .args(args)
        .output()
        .expect("run smolbit")
}

/// A failing command exits 1 with exactly one line on stderr containing `expect`.
fn check_error(args: &[&str], expect: &str) {
    let out = smolbit(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(expect),
        "{args:?}: expected '{expect}' in: {err}"
    );
}

#[test]
fn convert_then_logits_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("m");
    let out = smolbit(&[
        "convert",
        testdata("tiny-llama.gguf").to_str().expect("utf8"),
        "--out",
        model.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("converted "));
    let json = tmp.path().join("l.json");
    let out = smolbit(&[
        "logits",
        "--model",
        model.to_str().expect("utf8"),
        "--tokens",
        "1,17,42",
        "--out",
        json.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("read")).expect("json");
    assert_eq!(v["tokens"], serde_json::json!([1, 17, 42]));
    assert_eq!(v["last_logits"].as_array().expect("logits").len(), 256);
    let top10 = v["top10"].as_array().expect("top10");
    assert_eq!(top10.len(), 3);
    assert!(
        top10
            .iter()
            .all(|r| r.as_array().is_some_and(|r| r.len() == 10))
    );
    // The first row's top-1 is the argmax of transformers' logits at position 0 of the fixture
    // (same first token), checked against the golden file rather than our own output.
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("tiny-llama-gguf-logits.json")).expect("read"),
    )
    .expect("json");
    let row0: Vec<f32> = serde_json::from_value(golden["logits"][0].clone()).expect("row");
    let argmax = (0..row0.len()).fold(0, |b, i| if row0[i] > row0[b] { i } else { b });
    assert_eq!(top10[0][0], argmax);
}

#[test]
fn errors_are_one_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = |p: &Path| p.to_str().expect("utf8").to_string();
    let truncated = tmp.path().join("cut.gguf");
    std::fs::write(
        &truncated,
        &std::fs::read(testdata("tiny-llama.gguf")).expect("read")[..5000],
    )
    .expect("write");
    let out_dir = tmp.path().join("out");
    check_error(
        &["convert", &t(&truncated), "--out", &t(&out_dir)],
        "cut.gguf: truncated: data of tensor",
    );
    assert!(!out_dir.exists(), "no partial output");
    check_error(
        &["convert", "/nonexistent/model", "--out", &t(&out_dir)],
        "/nonexistent/model: no such file or directory",
    );
    let json = t(&tmp.path().join("l.json"));
    let model = t(&testdata("tiny-smollm3"));
    check_error(
        &[
            "logits", "--model", &model, "--tokens", "1,x", "--out", &json,
        ],
        "--tokens: 'x' is not a token id",
    );
    check_error(
        &[
            "logits", "--model", &model, "--tokens", "1,999", "--out", &json,
        ],
        "token id 999 is out of range",
    );
    check_error(
        &[
            "logits",
            "--model",
            "/nonexistent",
            "--tokens",
            "1",
            "--out",
            &json,
        ],
        "/nonexistent: not a model directory (does not exist)",
    );
    check_error(
        &[
            "logits", "--model", &model, "--tokens", "1", "--out", &json, "--device", "tpu",
        ],
        "unknown device 'tpu'",
    );
    let no_weights = tmp.path().join("empty");
    std::fs::create_dir(&no_weights).expect("mkdir");
    std::fs::copy(
        testdata("tiny-smollm3/config.json"),
        no_weights.join("config.json"),
    )
    .expect("copy");
    check_error(
        &[
            "logits",
            "--model",
            &t(&no_weights),
            "--tokens",
            "1",
            "--out",
            &json,
        ],
        "no model.safetensors or model.safetensors.index.json",
    );
    assert!(!Path::new(&json).exists());
}

/// The default model converted once for the CLI tests that need a tokenizer; `None` (skipped)
/// when it is not cached, unless `SMOLBIT_REQUIRE_MODEL=1`.
fn real_model() -> Option<&'static Path> {
    static DIR: std::sync::OnceLock<Option<(tempfile::TempDir, PathBuf)>> =
        std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let gguf = smolbit_weights::cache::default_model_for_tests()?;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("m");
        let out = smolbit(&[
            "convert",
            gguf.to_str().expect("utf8"),
            "--out",
            dir.to_str().expect("utf8"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some((tmp, dir))
    })
    .as_ref()
    .map(|(_, d)| d.as_path())
}

#[test]
fn generate_json_and_streamed_text_agree() {
    let Some(model) = real_model() else { return };
    let m = model.to_str().expect("utf8");
    let args = [
        "generate",
        "--model",
        m,
        "--prompt",
        "Write a Python function that adds two numbers.",
        "--chat",
        "--max-new-tokens",
        "16",
    ];
    let out = smolbit(&[&args[..], &["--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in ["prompt_tokens", "tokens", "text", "ttft_ms", "decode_tok_s"] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["tokens"].as_array().expect("tokens").len(), 16);
    let streamed = smolbit(&args);
    assert!(streamed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&streamed.stdout),
        format!("{}\n", v["text"].as_str().expect("text"))
    );
    assert!(String::from_utf8_lossy(&streamed.stderr).contains("tok/s decode"));
}

#[test]
fn chat_reads_turns_from_stdin() {
    use std::io::Write;
    let Some(model) = real_model() else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_smolbit"))
        .args([
            "chat",
            "--model",
            model.to_str().expect("utf8"),
            "--max-new-tokens",
            "8",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"Hi!\nWhat is 2+2?\n/exit\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("> ").count(), 3, "{stdout}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .matches("tok/s]")
            .count(),
        2
    );
}

#[test]
fn generate_without_tokenizer_is_a_clear_error() {
    let model = testdata("tiny-smollm3");
    check_error(
        &[
            "generate",
            "--model",
            model.to_str().expect("utf8"),
            "--prompt",
            "hi",
        ],
        "tiny-smollm3: no tokenizer.json",
    );
}

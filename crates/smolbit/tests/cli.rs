//! The `smolbit` binary end to end on the tiny fixtures: output formats and one-line errors.

mod common;
use common::{real_model, smolbit, smolbit_ok};

use std::path::{Path, PathBuf};
use std::process::Command;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

/// `smolbit logits --tokens <tokens>` on `model`, written to `<dir>/l.json` and read back.
fn logits_json(model: &Path, tokens: &str, dir: &Path) -> serde_json::Value {
    let json = dir.join("l.json");
    smolbit_ok(&[
        "logits",
        "--model",
        model.to_str().expect("utf8"),
        "--tokens",
        tokens,
        "--out",
        json.to_str().expect("utf8"),
    ]);
    serde_json::from_str(&std::fs::read_to_string(&json).expect("read")).expect("json")
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
    let v = logits_json(&model, "1,17,42", tmp.path());
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
    // The 8- and 4-bit schemes take no calibration; a blocked checkpoint is not requantized.
    let q8 = t(&tmp.path().join("q8"));
    check_error(
        &[
            "quantize",
            "--model",
            &model,
            "--scheme",
            "q8",
            "--out",
            &q8,
            "--calibration",
            &model,
        ],
        "--scheme q8: the 8- and 4-bit formats take no --calibration",
    );
    smolbit_ok(&[
        "quantize", "--model", &model, "--scheme", "q8", "--out", &q8,
    ]);
    check_error(
        &[
            "quantize",
            "--model",
            &q8,
            "--scheme",
            "q4",
            "--out",
            &t(&tmp.path().join("q4")),
        ],
        "is already quantized",
    );
    assert!(!tmp.path().join("q4").exists(), "no partial output");
}

#[test]
fn generate_json_and_streamed_text_agree() {
    let Some(model) = real_model("smollm2-cli") else {
        return;
    };
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
    let Some(model) = real_model("smollm2-cli") else {
        return;
    };
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

/// `smolbit eval` refuses bad input with one line naming the file and the problem, before any
/// model is loaded.
#[test]
fn eval_errors_are_one_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = |p: &Path| p.to_str().expect("utf8").to_string();
    let good = r#"{"id": "a", "category": "bug_fixing", "prompt": "p", "entry_point": "f", "test_setup": "", "tests": ["assert f() == 1"], "canonical_solution": "def f():\n    return 1\n"}"#;
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).expect("write");
        t(&p)
    };
    let model = t(&testdata("tiny-llama"));
    let out = t(&tmp.path().join("r.json"));
    let bad_line = write("bad.jsonl", &format!("{good}\n{{oops"));
    check_error(
        &[
            "eval",
            "--model",
            &model,
            "--dataset",
            &bad_line,
            "--out",
            &out,
        ],
        "bad.jsonl:2: not a task",
    );
    let import = write(
        "import.jsonl",
        &good.replace(
            r#""test_setup": """#,
            r#""test_setup": "import no_such_module_xyz""#,
        ),
    );
    check_error(
        &[
            "eval",
            "--model",
            &model,
            "--dataset",
            &import,
            "--out",
            &out,
        ],
        "import.jsonl: task 'a': canonical solution fails its tests (SetupError: ModuleNotFoundError",
    );
    let fine = write("fine.jsonl", good);
    check_error(
        &[
            "eval",
            "--model",
            &t(&tmp.path().join("nope")),
            "--dataset",
            &fine,
            "--out",
            &out,
            "--no-perplexity",
        ],
        "nope",
    );
    check_error(
        &["eval", "--model", &model, "--dataset", &fine],
        "give --out",
    );
    let not_results = write("x.json", r#"{"schema": "other/9"}"#);
    check_error(
        &["eval", "merge", &not_results, &not_results, "--out", &out],
        "x.json: schema 'other/9' is not 'smolbit-eval/1'",
    );
    check_error(
        &[
            "report",
            "--results",
            &not_results,
            "--out-dir",
            &t(tmp.path()),
        ],
        "x.json: schema 'other/9'",
    );
    assert!(!Path::new(&out).exists(), "no results written");
}

/// Two shards of a two-task suite on the default model in f32 and b158, merged and rendered:
/// the pipeline's CI path end to end. b158's answers must be flagged degenerate.
#[test]
fn eval_shards_merge_and_report_on_the_real_model() {
    let Some(f32_dir) = real_model("smollm2-cli") else {
        eprintln!("skipped: default model not cached");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = |p: &Path| p.to_str().expect("utf8").to_string();
    let b158 = tmp.path().join("b158");
    let out = smolbit(&[
        "quantize",
        "--model",
        &t(f32_dir),
        "--scheme",
        "b158",
        "--out",
        &t(&b158),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/coding-suite.jsonl");
    let two: Vec<String> = std::fs::read_to_string(&suite)
        .expect("suite")
        .lines()
        .take(2)
        .map(String::from)
        .collect();
    let dataset = tmp.path().join("two.jsonl");
    std::fs::write(&dataset, two.join("\n") + "\n").expect("write");
    let heldout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/text/heldout-code.py");
    let mut shards = Vec::new();
    for i in 0..2 {
        let r = tmp.path().join(format!("r{i}.json"));
        let out = smolbit(&[
            "eval",
            "--model",
            &t(f32_dir),
            "--model",
            &t(&b158),
            "--dataset",
            &t(&dataset),
            "--out",
            &t(&r),
            "--shard",
            &format!("{i}/2"),
            "--max-new-tokens",
            "64",
            "--perplexity-text",
            &t(&heldout),
            "--perplexity-max-tokens",
            "128",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        shards.push(t(&r));
    }
    let merged = tmp.path().join("merged.json");
    let out = smolbit(&[
        "eval",
        "merge",
        &shards[0],
        &shards[1],
        "--out",
        &t(&merged),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&merged).expect("merged")).expect("json");
    assert_eq!(v["schema"], "smolbit-eval/1");
    assert!(v["dataset"]["shard"].is_null());
    for m in v["models"].as_array().expect("models") {
        let tasks = m["tasks"].as_array().expect("tasks");
        let ids: Vec<&str> = tasks
            .iter()
            .map(|t| t["id"].as_str().expect("id"))
            .collect();
        assert_eq!(
            ids,
            ["fg-factorial", "fg-is-prime"],
            "suite order after merge"
        );
        for t in tasks {
            for k in ["syntax_valid", "tests_passed", "tests_total", "passed"] {
                assert!(!t[k].is_null(), "{k}");
            }
        }
        assert_eq!(m["summary"]["tasks"], 2);
        assert!(m["peak_rss_mb"].as_f64().is_some_and(|x| x > 10.0));
    }
    // Quality was measured once (shard 0) and survives the merge.
    let q = &v["models"][1]["quality"];
    assert!(
        q["kl_mean"].as_f64().is_some_and(|kl| kl > 1.0),
        "b158 is far from f32: {q}"
    );
    let b = &v["models"][1]["tasks"];
    for t in b.as_array().expect("tasks") {
        assert_eq!(
            t["samples"][0]["degenerate"], true,
            "b158 output: {}",
            t["samples"][0]["text"]
        );
        assert_eq!(t["passed"], false);
    }
    let report = tmp.path().join("report");
    let out = smolbit(&["report", "--results", &t(&merged), "--out-dir", &t(&report)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(report.join("report.md")).expect("report");
    assert!(md.contains("| **Syntax valid**") && md.contains("b158"));
}

/// A natively ternary GGUF converts to a ternary checkpoint (saying so, with what it had to
/// fix), a transformers BitNet directory runs as it is, and a corrupt packed tensor is a
/// one-line error naming the file and the tensor.
#[test]
fn native_ternary_models() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("i2s");
    let out = smolbit(&[
        "convert",
        testdata("native/gguf/i2_s.gguf").to_str().expect("utf8"),
        "--out",
        model.to_str().expect("utf8"),
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("natively ternary: projections kept as trits (b158:tensor:a8 from I2_S)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: ") && stderr.contains("placeholder"),
        "{stderr}"
    );
    // The same model as an HF directory and as the converted I2_S file: same greedy token.
    let greedy = |dir: &Path| {
        logits_json(dir, "61,1,17,42", tmp.path())["top10"][3][0]
            .as_u64()
            .expect("top-1")
    };
    assert_eq!(greedy(&model), greedy(&testdata("native/gguf/hf")));

    // A packed byte with a code 3.
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).expect("mkdir");
    let src = testdata("native/bitnet-auto");
    std::fs::copy(src.join("config.json"), bad.join("config.json")).expect("copy");
    let mut bytes = std::fs::read(src.join("model.safetensors")).expect("read");
    let st = smolbit_weights::safetensors::SafeTensors::open_dir(&src).expect("open");
    let name = "model.layers.1.mlp.up_proj.weight";
    let data = st.bytes(name).expect("tensor");
    let offset = bytes
        .windows(data.len())
        .position(|w| w == data)
        .expect("tensor bytes in the file");
    bytes[offset] = 0xff;
    std::fs::write(bad.join("model.safetensors"), bytes).expect("write");
    check_error(
        &[
            "logits",
            "--model",
            bad.to_str().expect("utf8"),
            "--tokens",
            "1",
            "--out",
            tmp.path().join("x.json").to_str().expect("utf8"),
        ],
        "model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight': code 3 (not a trit) in byte 0",
    );
}

/// `smolbit eval` takes natively ternary models; a model whose tokenizer differs from the first
/// model's gets perplexity but no KL or top-1 agreement (its tokens mean other things), one with
/// the same tokenizer gets both; the report renders them side by side.
#[test]
fn eval_native_models_with_and_without_a_shared_vocabulary() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = |p: &Path| p.to_str().expect("utf8").to_string();
    let convert = |file: &str, out: &Path| {
        smolbit_ok(&["convert", &t(&testdata(file)), "--out", &t(out)]);
    };
    let (a, b, c) = (
        tmp.path().join("tq2"),
        tmp.path().join("i2s"),
        tmp.path().join("other-vocab"),
    );
    convert("native/gguf/tq2_0.gguf", &a);
    convert("native/gguf/i2_s.gguf", &b);
    convert("native/gguf/tq1_0.gguf", &c);
    // Another tokenizer: one merge fewer.
    let tok = c.join("tokenizer.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tok).expect("read")).expect("json");
    v["model"]["merges"].as_array_mut().expect("merges").pop();
    std::fs::write(&tok, v.to_string()).expect("write");
    // A suite of one task whose prompt the 64-token vocabulary can spell.
    let suite = tmp.path().join("suite.jsonl");
    std::fs::write(
        &suite,
        serde_json::json!({"id": "fg-one", "category": "function_generation", "prompt": "ab",
            "entry_point": "f", "test_setup": "", "tests": ["assert f() == 1"],
            "canonical_solution": "def f():\n    return 1\n"})
        .to_string()
            + "\n",
    )
    .expect("write");
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "ab ba ab. ab ba: ab ab ba ba ab\n".repeat(8)).expect("write");
    let results = tmp.path().join("r.json");
    smolbit_ok(&[
        "eval",
        "--model",
        &t(&a),
        "--model",
        &t(&b),
        "--model",
        &t(&c),
        "--dataset",
        &t(&suite),
        "--out",
        &t(&results),
        "--max-new-tokens",
        "8",
        "--perplexity-text",
        &t(&text),
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results).expect("read")).expect("json");
    let models = v["models"].as_array().expect("models");
    let q = |i: usize| &models[i]["quality"];
    assert!(q(0)["perplexity"].as_f64().is_some_and(f64::is_finite));
    assert!(
        q(1)["kl_mean"].as_f64().is_some(),
        "same tokenizer: {}",
        q(1)
    );
    assert!(
        q(2)["kl_mean"].is_null() && q(2)["top1_agreement"].is_null(),
        "{}",
        q(2)
    );
    assert!(q(2)["perplexity"].as_f64().is_some_and(f64::is_finite));
    assert!(
        models[0]["scheme"]
            .as_str()
            .is_some_and(|s| s.contains("native: TQ2_0 GGUF")),
        "{}",
        models[0]["scheme"]
    );
    let report = tmp.path().join("report");
    smolbit_ok(&[
        "report",
        "--results",
        &t(&results),
        "--out-dir",
        &t(&report),
    ]);
    let md = std::fs::read_to_string(report.join("report.md")).expect("report");
    assert!(
        md.contains("| other-vocab |"),
        "the third model is in the report: {md}"
    );
    assert!(
        md.contains("n/a (other vocabulary)"),
        "no KL for another vocabulary"
    );
}

#[test]
fn eval_runs_humaneval_and_any_suite_from_any_directory() {
    // An installed binary run from `/`: the built-in held-out text, HumanEval from the cache
    // (fetched by `cargo xtask fetch-model`), and a suite with categories of its own.
    let Some(f32_dir) = real_model("smollm2-cli") else {
        eprintln!("skipped: default model not cached");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = |p: &Path| p.to_str().expect("utf8").to_string();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_smolbit"))
            .current_dir("/")
            .args(args)
            .output()
            .expect("run smolbit");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).expect("results")).expect("json")
    };
    let he = tmp.path().join("he.json");
    run(&[
        "eval",
        "--model",
        &t(f32_dir),
        "--dataset",
        "humaneval",
        "--prompt-style",
        "completion",
        "--per-category",
        "2",
        "--max-new-tokens",
        "24",
        "--perplexity-max-tokens",
        "64",
        "--out",
        &t(&he),
    ]);
    let r = read(&he);
    assert_eq!(r["dataset"]["path"], "humaneval");
    assert_eq!(r["dataset"]["tasks"], 164);
    assert_eq!(r["settings"]["perplexity_text"], "builtin:heldout-code.py");
    let m = &r["models"][0];
    assert_eq!(m["prompt_style"], "completion");
    let tasks = m["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|t| t["category"] == "humaneval"));
    // A completion answer is the stub plus the continuation: always defines the entry point.
    let code = tasks[0]["samples"][0]["code"].as_str().expect("code");
    assert!(code.contains("def has_close_elements("), "{code}");
    assert!(m["quality"]["perplexity"].as_f64().is_some());

    let suite = tmp.path().join("poems.jsonl");
    std::fs::write(
        &suite,
        r#"{"id": "p1", "category": "poetry", "prompt": "Write a Python function haiku() that returns the string 'old pond'.", "entry_point": "haiku", "tests": ["assert haiku() == 'old pond'"], "canonical_solution": "def haiku():\n    return 'old pond'\n"}"#,
    )
    .expect("write");
    let own = tmp.path().join("own.json");
    run(&[
        "eval",
        "--model",
        &t(f32_dir),
        "--dataset",
        &t(&suite),
        "--max-new-tokens",
        "24",
        "--no-perplexity",
        "--out",
        &t(&own),
    ]);
    let r = read(&own);
    assert_eq!(r["models"][0]["prompt_style"], "chat");
    assert_eq!(r["models"][0]["tasks"][0]["category"], "poetry");
    assert_eq!(r["models"][0]["summary"]["categories"]["poetry"][0], 1);
}

/// `bench --device wgpu --json` counts the fused decode step's launches and device reads per
/// token, and they are its design's: eight launches a layer and four more, one read (the id).
/// Skips with a note without a wgpu adapter unless `SMOLBIT_REQUIRE_WGPU=1` (CI, lavapipe).
#[test]
fn bench_on_wgpu_counts_the_fused_steps_launches() {
    let model = testdata("tiny-llama");
    let out = smolbit(&[
        "bench",
        "--model",
        model.to_str().expect("utf8"),
        "--device",
        "wgpu",
        "--prompt-tokens",
        "4",
        "--new-tokens",
        "5",
        "--repeats",
        "1",
        "--json",
    ]);
    if !out.status.success() {
        assert!(
            std::env::var_os("SMOLBIT_REQUIRE_WGPU").is_none(),
            "bench on wgpu failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("skipped: no wgpu adapter here");
        return;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).expect("config"))
            .expect("config json");
    let layers = config["num_hidden_layers"].as_f64().expect("layers");
    assert_eq!(
        v["design_launches_per_token"].as_f64(),
        Some(8.0 * layers + 4.0)
    );
    assert_eq!(v["launches_per_token"].as_f64(), Some(8.0 * layers + 4.0));
    assert_eq!(v["device_reads_per_token"].as_f64(), Some(1.0));
}

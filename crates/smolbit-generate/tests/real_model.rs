//! Generation on the real default model against transformers (testdata/smollm2-reference.json).
//! Skipped with a message when the model is not cached, unless `SMOLBIT_REQUIRE_MODEL=1`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use smolbit_generate::{
    GenerateError, GenerateParams, Generator, Message, SamplingParams, StopReason,
};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

fn generator() -> Option<&'static Generator> {
    static GEN: OnceLock<Option<Generator>> = OnceLock::new();
    GEN.get_or_init(|| {
        let gguf = smolbit_weights::cache::default_model_for_tests()?;
        // Under the target directory, replaced by every run: a static is never dropped, so a
        // temporary directory held here would outlive the process (and fill /tmp run by run).
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smollm2-generate");
        let options = smolbit_weights::ConvertOptions {
            overwrite: true,
            ..Default::default()
        };
        smolbit_weights::convert(&gguf, &dir, &options).expect("convert");
        let g = Generator::load(&dir, &smolbit_model::device("cpu").expect("cpu")).expect("load");
        Some(g)
    })
    .as_ref()
}

fn reference() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(testdata("smollm2-reference.json")).expect("read"),
    )
    .expect("json")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).expect("ids")
}

/// Generate, collecting the streamed pieces; the concatenated stream must equal the final text.
fn run(g: &Generator, prompt: &[u32], params: &GenerateParams) -> smolbit_generate::Generation {
    let mut streamed = String::new();
    let out = g
        .generate(prompt, params, &mut |t| streamed.push_str(t))
        .expect("generate");
    assert_eq!(
        streamed, out.text,
        "streamed text differs from the final text"
    );
    out
}

#[test]
fn chat_prompt_and_greedy_text_match_transformers() {
    let Some(g) = generator() else { return };
    for case in reference()["greedy"].as_array().expect("greedy") {
        let prompt = g
            .chat_prompt(
                &[Message::new(
                    "user",
                    case["prompt"].as_str().expect("prompt"),
                )],
                None,
            )
            .expect("prompt");
        assert_eq!(prompt, ids(&case["prompt_tokens"]), "chat prompt ids");
        let params = GenerateParams {
            max_new_tokens: 64,
            ..Default::default()
        };
        let out = run(g, &prompt, &params);
        assert_eq!(out.tokens, ids(&case["tokens"]), "greedy tokens");
        // transformers' decode keeps special tokens; ours skips them.
        let want = case["text"]
            .as_str()
            .expect("text")
            .replace("<|im_end|>", "");
        assert_eq!(out.text, want);
        let expected_reason = if out.tokens.len() < 64 {
            StopReason::Eos
        } else {
            StopReason::MaxTokens
        };
        assert_eq!(out.stop_reason, expected_reason);
        assert!(out.timings.ttft_ms > 0.0 && out.timings.total_ms >= out.timings.ttft_ms);
        assert_eq!(out.timings.generated_tokens, out.tokens.len());
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let Some(g) = generator() else { return };
    let prompt = g
        .chat_prompt(&[Message::new("user", "Write a haiku about Rust.")], None)
        .expect("prompt");
    let params = |seed| GenerateParams {
        max_new_tokens: 24,
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            top_k: 50,
            seed,
            ..Default::default()
        },
        stop: vec![],
    };
    let a = run(g, &prompt, &params(7));
    let b = run(g, &prompt, &params(7));
    let c = run(g, &prompt, &params(8));
    assert_eq!(a.tokens, b.tokens, "same seed, same tokens");
    assert_ne!(
        a.tokens, c.tokens,
        "another seed should change a 24-token sample"
    );
}

#[test]
fn stop_strings_and_limits() {
    let Some(g) = generator() else { return };
    let case = &reference()["greedy"][0];
    let prompt = ids(&case["prompt_tokens"]);
    // The greedy answer starts with "```python\ndef calculate_factorial(n):"; stop inside it.
    let params = GenerateParams {
        max_new_tokens: 64,
        stop: vec!["(n)".into()],
        ..Default::default()
    };
    let out = run(g, &prompt, &params);
    assert_eq!(out.stop_reason, StopReason::StopString);
    assert_eq!(out.text, "```python\ndef calculate_factorial");
    let out = run(
        g,
        &prompt,
        &GenerateParams {
            max_new_tokens: 5,
            ..Default::default()
        },
    );
    assert_eq!(
        (out.tokens.len(), out.stop_reason),
        (5, StopReason::MaxTokens)
    );
    let long = vec![198u32; 8192];
    let err = g
        .generate(&long, &GenerateParams::default(), &mut |_| {})
        .expect_err("too long");
    assert!(
        matches!(
            err,
            GenerateError::PromptTooLong {
                tokens: 8192,
                max: 8192
            }
        ),
        "{err}"
    );
    let bad = GenerateParams {
        sampling: SamplingParams {
            top_p: 0.0,
            temperature: 1.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let err = g
        .generate(&prompt, &bad, &mut |_| {})
        .expect_err("bad top-p");
    assert_eq!(err.to_string(), "top-p 0 must be in (0, 1]");
}

#[test]
fn streaming_keeps_multibyte_characters_whole() {
    let Some(g) = generator() else { return };
    // Feed the tokens of a string with multi-byte characters through the stream one at a time:
    // every released piece is valid UTF-8 by type, and together they rebuild the string.
    let text = "naïve café — ünïcödé ✓ 日本語 🙂";
    let ids = g.encode(text, false).expect("encode");
    let mut stream = smolbit_generate::TextStream::new(vec![]);
    let mut out = String::new();
    let mut pieces = 0;
    for id in ids {
        let piece = stream.push(g.tokenizer(), id).expect("push");
        pieces += usize::from(!piece.is_empty());
        out.push_str(&piece);
    }
    out.push_str(&stream.finish(g.tokenizer()).expect("finish"));
    assert_eq!(out, text);
    assert!(pieces > 5);
}

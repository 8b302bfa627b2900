//! Chat templates and logits processors against transformers' own output
//! (testdata/make_generation_fixtures.py).

use std::path::{Path, PathBuf};

use smolbit_generate::sampling::{SamplingParams, process};
use smolbit_generate::{ChatTemplate, DateTime, Message, RenderOptions};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

fn read_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(testdata(name)).expect("read")).expect("json")
}

/// Every conversation renders byte-identically to `apply_chat_template` (same pinned date).
#[test]
fn chat_templates_render_like_transformers() {
    let fixture = read_json("chat/rendered.json");
    let now = DateTime {
        year: 2026,
        month: 11,
        day: 26,
        hour: 12,
        minute: 0,
        second: 0,
    };
    let mut checked = 0;
    for case in fixture["cases"].as_array().expect("cases") {
        let name = case["template"].as_str().expect("template");
        let src =
            std::fs::read_to_string(testdata(&format!("chat/{name}.jinja"))).expect("template");
        let template = ChatTemplate::new(&src).expect("compiles");
        let messages: Vec<Message> =
            serde_json::from_value(case["messages"].clone()).expect("messages");
        let mut extra = case["kwargs"].as_object().cloned().unwrap_or_default();
        let add_generation_prompt = extra
            .remove("add_generation_prompt")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let enable_thinking = extra.remove("enable_thinking").and_then(|v| v.as_bool());
        let opts = RenderOptions {
            add_generation_prompt,
            enable_thinking,
            extra,
            now: Some(now),
            bos_token: Some("<|im_start|>".into()),
            eos_token: Some("<|im_end|>".into()),
        };
        let got = template.render(&messages, &opts).expect("render");
        assert_eq!(
            got,
            case["rendered"].as_str().expect("rendered"),
            "{name} / {}",
            case["case"]
        );
        checked += 1;
    }
    assert_eq!(checked, 13, "fixture cases");
}

#[test]
fn template_errors_are_reported() {
    let err = ChatTemplate::new("{% for %}").expect_err("syntax");
    assert!(err.to_string().starts_with("chat template: "), "{err}");
    let t = ChatTemplate::new("{{ raise_exception('only user and assistant roles') }}")
        .expect("compiles");
    let err = t
        .render(&[], &RenderOptions::default())
        .expect_err("raises");
    assert!(
        err.to_string().contains("only user and assistant roles"),
        "{err}"
    );
}

/// Scores after repetition penalty / temperature / top-k / top-p / min-p equal transformers'
/// (filtered entries exactly, kept entries within 1e-5 relative: float32 softmax and cumulative
/// sums in a different summation order).
#[test]
fn logits_processors_match_transformers() {
    let fixture = read_json("sampling.json");
    for case in fixture["cases"].as_array().expect("cases") {
        let p = &case["params"];
        let params = SamplingParams {
            temperature: p["temperature"].as_f64().unwrap_or(1.0) as f32,
            top_k: p["top_k"].as_u64().unwrap_or(0) as usize,
            top_p: p["top_p"].as_f64().unwrap_or(1.0) as f32,
            min_p: p["min_p"].as_f64().unwrap_or(0.0) as f32,
            repetition_penalty: p["repetition_penalty"].as_f64().unwrap_or(1.0) as f32,
            seed: 0,
        };
        let history: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).expect("ids");
        let mut scores: Vec<f32> = serde_json::from_value(case["logits"].clone()).expect("logits");
        process(&mut scores, &history, &params);
        let want: Vec<Option<f32>> =
            serde_json::from_value(case["scores"].clone()).expect("scores");
        for (i, (got, want)) in scores.iter().zip(&want).enumerate() {
            match want {
                None => assert_eq!(*got, f32::NEG_INFINITY, "{p}: token {i} should be filtered"),
                Some(w) => assert!(
                    (got - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{p}: token {i}: {got} vs {w}"
                ),
            }
        }
    }
}

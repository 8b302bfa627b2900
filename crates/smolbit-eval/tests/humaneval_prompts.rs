//! Completion-style HumanEval prompts are the token ids transformers gives
//! (`testdata/humaneval-prompt-ids.json`, made by `testdata/make_humaneval_fixtures.py`), on the
//! default model.

use std::path::Path;

use smolbit_eval::results::PromptStyle;
use smolbit_eval::run::prompt_ids;
use smolbit_eval::{DatasetSource, load_dataset};
use smolbit_generate::Generator;

#[test]
fn completion_prompts_match_transformers() {
    let Some(gguf) = smolbit_weights::cache::default_model_for_tests() else {
        return;
    };
    if !smolbit_eval::humaneval::cached_path().is_file() {
        assert_ne!(
            std::env::var("SMOLBIT_REQUIRE_MODEL").as_deref(),
            Ok("1"),
            "HumanEval missing; run `cargo xtask fetch-model`"
        );
        eprintln!("skipped: HumanEval not cached (run `cargo xtask fetch-model`)");
        return;
    }
    let tasks = load_dataset(&DatasetSource::HumanEval)
        .expect("HumanEval")
        .tasks;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("m");
    smolbit_weights::convert(&gguf, &dir, &Default::default()).expect("convert");
    let dev = smolbit_model::device("cpu").expect("cpu");
    let g = Generator::load(&dir, &dev).expect("load");
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/humaneval-prompt-ids.json"),
        )
        .expect("fixture"),
    )
    .expect("json");
    let problems = fixture["problems"].as_array().expect("problems");
    assert!(problems.len() >= 3);
    for p in problems {
        let id = p["task_id"].as_str().expect("id");
        let want: Vec<u32> = p["input_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let task = tasks.iter().find(|t| t.id == id).expect("task");
        let got = prompt_ids(&g, task, PromptStyle::Completion).expect("prompt");
        assert_eq!(got, want, "{id}");
        // The chat style wraps the stub in an instruction through the template instead.
        let chat = prompt_ids(&g, task, PromptStyle::Chat).expect("chat prompt");
        assert!(chat.len() > got.len(), "{id}: chat prompt");
    }
}

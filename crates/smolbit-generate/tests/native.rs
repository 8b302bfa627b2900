//! Chat with a natively ternary model: BitNet b1.58 2B4T's chat template (which smolbit puts in
//! place of bitnet.cpp's GGUF placeholder) renders as transformers renders it, and a converted
//! BitNet GGUF chats with BOS first and stops on `<|eot_id|>` as well as its EOS
//! (testdata/native, made by testdata/make_native_fixtures.py).

use std::path::{Path, PathBuf};

use smolbit_generate::{ChatTemplate, GenerateParams, Generator, Message, RenderOptions};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/native")
        .join(name)
}

#[test]
fn bitnet_2b4t_template_renders_like_transformers() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("bitnet-2b4t-chat.json")).expect("read"),
    )
    .expect("json");
    let src = smolbit_weights::tokenizer::BITNET_2B4T_CHAT_TEMPLATE;
    assert_eq!(fixture["template"].as_str(), Some(src));
    let template = ChatTemplate::new(src).expect("compiles");
    let opts = RenderOptions {
        add_generation_prompt: true,
        ..RenderOptions::default()
    };
    for case in fixture["cases"].as_array().expect("cases") {
        let messages: Vec<Message> =
            serde_json::from_value(case["messages"].clone()).expect("messages");
        assert_eq!(
            template.render(&messages, &opts).expect("render"),
            case["rendered"].as_str().expect("rendered")
        );
    }
}

#[test]
fn converted_bitnet_gguf_chats_with_bos_and_stops_on_eot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("m");
    smolbit_weights::convert(&testdata("gguf/tq2_0.gguf"), &out, &Default::default())
        .expect("convert");
    let g = Generator::load(&out, &smolbit_model::device("cpu").expect("cpu")).expect("load");
    // The GGUF's EOS (<|end_of_text|>, 62) and the template's end of turn (<|eot_id|>, 63).
    assert!(
        g.eos_ids().contains(&62) && g.eos_ids().contains(&63),
        "{:?}",
        g.eos_ids()
    );
    let ids = g
        .chat_prompt(&[Message::new("user", "ab")], None)
        .expect("prompt");
    // <|begin_of_text|> (61), then "User: ab<|eot_id|>Assistant: " in the tiny vocabulary.
    let text = g.tokenizer().decode(&ids, false).expect("decode");
    assert_eq!(ids[0], 61);
    assert_eq!(text, "<|begin_of_text|>User: ab<|eot_id|>Assistant: ");
    let params = GenerateParams {
        max_new_tokens: 4,
        ..Default::default()
    };
    let out = g.generate(&ids, &params, &mut |_| {}).expect("generate");
    assert!(!out.tokens.is_empty() && out.tokens.len() <= 4);
}

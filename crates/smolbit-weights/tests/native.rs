//! Natively ternary checkpoints (testdata/native, made by testdata/make_native_fixtures.py):
//! transformers' BitNet directories and TQ1_0 / TQ2_0 / I2_S GGUFs of one model give the same
//! trits and scales, bit for bit, as the fixture script's independent readers (numpy, gguf-py's
//! dequantizer); conversions keep them; bad files are one-line errors naming file and tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use smolbit_weights::mapping::{Role, needed_tensors};
use smolbit_weights::safetensors::{self, Dtype, SafeTensors, TensorSpec};
use smolbit_weights::{ConvertOptions, ModelConfig, ModelDir, convert};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/native")
        .join(name)
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn trit_bytes(t: &[i8]) -> Vec<u8> {
    t.iter().map(|&x| x as u8).collect()
}

struct Expected {
    trits_sha256: String,
    scale: f32,
    dequant: BTreeMap<String, String>,
}

/// expected.json by GGUF tensor name.
fn expected() -> BTreeMap<String, Expected> {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("gguf/expected.json")).expect("expected.json"),
    )
    .expect("json");
    v["tensors"]
        .as_object()
        .expect("tensors")
        .iter()
        .map(|(name, e)| {
            let dequant = ["tq1_0", "tq2_0"]
                .iter()
                .map(|t| {
                    (
                        t.to_string(),
                        e[format!("{t}_dequant_sha256")]
                            .as_str()
                            .expect("hash")
                            .to_string(),
                    )
                })
                .collect();
            (
                name.clone(),
                Expected {
                    trits_sha256: e["trits_sha256"].as_str().expect("sha").to_string(),
                    scale: e["scale"].as_f64().expect("scale") as f32,
                    dequant,
                },
            )
        })
        .collect()
}

/// Every projection of a model directory against expected.json: same trits, every scale equal
/// to the tensor's one value.
fn check_trits(dir: &Path, what: &str) {
    let md = ModelDir::open(dir).expect("open");
    let exp = expected();
    let mut seen = 0;
    for n in needed_tensors(&md.config) {
        let Role::Layer(l) = n.role else { continue };
        if !l.is_linear() {
            continue;
        }
        let e = &exp[&n.gguf_name];
        let m = md
            .linear_ternary(&n.hf_name, n.shape[0], n.shape[1])
            .expect("read")
            .unwrap_or_else(|| panic!("{what}: {} is not ternary", n.hf_name));
        assert_eq!(
            sha(&trit_bytes(&m.trits)),
            e.trits_sha256,
            "{what}: trits of {}",
            n.hf_name
        );
        assert!(
            m.scales.iter().all(|&s| s == e.scale),
            "{what}: scales of {} are {:?}, expected {}",
            n.hf_name,
            &m.scales[..m.scales.len().min(4)],
            e.scale
        );
        seen += 1;
    }
    assert_eq!(seen, 7, "{what}: projections");
}

#[test]
fn hf_offline_directory_matches_numpy_trits() {
    check_trits(&testdata("gguf/hf"), "HF offline autobitlinear");
    let md = ModelDir::open(&testdata("gguf/hf")).expect("open");
    let qc = md.quant.as_ref().expect("described");
    assert_eq!(qc.quant_method, "bitnet");
    assert!(qc.int8_activations());
    assert_eq!(md.config.arch, smolbit_weights::Arch::BitNet);
    assert_eq!(
        md.config.hidden_act,
        smolbit_weights::config::HiddenAct::Relu2
    );
    // uint8 codes (2 bits) plus one f32 scale per tensor.
    assert!(
        (qc.bits_per_weight - 2.0).abs() < 1e-3,
        "{}",
        qc.bits_per_weight
    );
}

#[test]
fn ternary_ggufs_convert_to_the_same_trits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (file, scheme, source) in [
        ("tq2_0.gguf", "b158:g256:a8", "TQ2_0 GGUF"),
        ("tq1_0.gguf", "b158:g256:a8", "TQ1_0 GGUF"),
        ("i2_s.gguf", "b158:tensor:a8", "I2_S GGUF"),
        // llama.cpp's `bitnet`: bare trits and a `<name>.scale` each.
        ("tq2_0-scale.gguf", "b158:g256:a8", "TQ2_0 GGUF"),
    ] {
        let out = tmp.path().join(file);
        let r = convert(
            &testdata(&format!("gguf/{file}")),
            &out,
            &ConvertOptions::default(),
        )
        .expect(file);
        assert!(r.leftover.is_empty(), "{file}: {:?}", r.leftover);
        assert!(
            r.ternary.as_deref().is_some_and(|t| t.starts_with(scheme)),
            "{file}: {:?}",
            r.ternary
        );
        check_trits(&out, file);
        let md = ModelDir::open(&out).expect("open");
        let qc = md.quant.as_ref().expect("quantization_config");
        assert_eq!(
            (qc.scheme.as_str(), qc.source.as_deref()),
            (scheme, Some(source))
        );
        assert_eq!(md.config.arch, smolbit_weights::Arch::BitNet);
        assert_eq!(
            md.config.hidden_act,
            smolbit_weights::config::HiddenAct::Relu2,
            "{file}: bitnet-b1.58 and bitnet-25 are relu², bitnet says so in its metadata"
        );
        // The F16 embedding is kept as F16 (exact), not widened.
        assert_eq!(
            md.weights
                .entry("model.embed_tokens.weight")
                .expect("embed")
                .dtype,
            Dtype::F16
        );
        // The GGUF's tokenizer: Llama 3's pre-tokenizer assumed (with a warning), the
        // placeholder chat template replaced by 2B4T's, <|eot_id|> an end of generation.
        assert!(
            r.warnings.iter().any(|w| w.contains("llama-bpe")),
            "{:?}",
            r.warnings
        );
        assert!(
            r.warnings.iter().any(|w| w.contains("placeholder")),
            "{:?}",
            r.warnings
        );
        let tc: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("tokenizer_config.json")).expect("read"),
        )
        .expect("json");
        assert_eq!(
            tc["chat_template"].as_str(),
            Some(smolbit_weights::tokenizer::BITNET_2B4T_CHAT_TEMPLATE)
        );
        let gc: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("generation_config.json")).expect("read"),
        )
        .expect("json");
        assert_eq!(gc["eos_token_id"], serde_json::json!([62, 63]));
    }
}

#[test]
fn tq_dequantization_matches_gguf_py() {
    // Our ggml dequantizer of the TQ1_0/TQ2_0 bytes, and the trits times their scales, both
    // equal gguf-py's float32 dequantization exactly (the values are ±s or 0 with s an f16).
    let exp = expected();
    for t in ["tq1_0", "tq2_0"] {
        let g = smolbit_weights::gguf::GgufFile::open(&testdata(&format!("gguf/{t}.gguf")))
            .expect("open");
        for (name, e) in &exp {
            let info = g.tensor(name).expect("tensor");
            assert_eq!(
                sha(&f32_bytes(&g.tensor_f32(info))),
                e.dequant[t],
                "{t} {name}"
            );
        }
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("m");
    convert(
        &testdata("gguf/tq2_0.gguf"),
        &out,
        &ConvertOptions::default(),
    )
    .expect("convert");
    let md = ModelDir::open(&out).expect("open");
    for n in needed_tensors(&md.config) {
        if !md.is_ternary(&n.hf_name) {
            continue;
        }
        if let Some(m) = md
            .linear_ternary(&n.hf_name, n.shape[0], n.shape[1])
            .expect("read")
        {
            assert_eq!(
                sha(&f32_bytes(&m.dequantize())),
                exp[&n.gguf_name].dequant["tq2_0"]
            );
        }
    }
}

#[test]
fn every_hf_bitnet_format_opens() {
    // Online (bf16 masters, ternarized at load), offline in both scale directions, the Llama
    // architecture with BitLinear (Falcon3), with use_rms_norm.
    for (dir, source, pre_norm) in [
        (
            "bitnet-online",
            "transformers BitNet (autobitlinear, online)",
            false,
        ),
        (
            "bitnet-auto",
            "transformers BitNet (autobitlinear, offline)",
            false,
        ),
        (
            "bitnet-bitlinear",
            "transformers BitNet (bitlinear, offline)",
            false,
        ),
        ("falcon3", "transformers BitNet (bitlinear, offline)", false),
        (
            "falcon3-rmsnorm",
            "transformers BitNet (bitlinear, offline, use_rms_norm)",
            true,
        ),
    ] {
        let md = ModelDir::open(&testdata(dir)).expect(dir);
        let qc = md.quant.as_ref().expect("described");
        assert_eq!(qc.source.as_deref(), Some(source), "{dir}");
        let q = "model.layers.0.self_attn.q_proj.weight";
        let (rows, cols) = (
            md.config.num_heads * md.config.head_dim,
            md.config.hidden_size,
        );
        let m = md.linear_ternary(q, rows, cols).expect("read").expect(dir);
        assert!(
            m.trits.iter().any(|&t| t != 0) && m.scales[0] > 0.0,
            "{dir}"
        );
        assert_eq!(
            md.linear_pre_norm(q, cols).expect("norm").is_some(),
            pre_norm,
            "{dir}"
        );
        // The head stays floating point (transformers' default / modules_to_not_convert).
        assert!(!md.is_ternary("lm_head.weight"), "{dir}");
    }
}

#[test]
fn scale_direction_follows_linear_class() {
    // Both offline directions describe mean|W|: autobitlinear stores it, bitlinear its inverse.
    let md = ModelDir::open(&testdata("bitnet-bitlinear")).expect("open");
    let st = &md.weights;
    let name = "model.layers.0.mlp.down_proj.weight";
    let stored = st.to_f32(&format!("{name}_scale")).expect("scale")[0];
    let (rows, cols) = (md.config.hidden_size, md.config.intermediate_size);
    let m = md
        .linear_ternary(name, rows, cols)
        .expect("read")
        .expect("ternary");
    assert_eq!(m.scales[0], 1.0 / stored);
    assert!(stored > 1.0, "1 / mean|W| of 0.1-scale weights: {stored}");
    let md = ModelDir::open(&testdata("bitnet-auto")).expect("open");
    let stored = md.weights.to_f32(&format!("{name}_scale")).expect("scale")[0];
    let m = md
        .linear_ternary(name, rows, cols)
        .expect("read")
        .expect("ternary");
    assert_eq!(m.scales[0], stored);
    assert!(stored < 1.0, "mean|W|: {stored}");
}

#[test]
fn hf_bitnet_converts_to_smolbit_layout_with_the_same_trits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for dir in ["gguf/hf", "falcon3-rmsnorm", "bitnet-online"] {
        let out = tmp.path().join(dir.replace('/', "-"));
        let r = convert(&testdata(dir), &out, &ConvertOptions::default()).expect(dir);
        assert!(r.ternary.is_some(), "{dir}");
        let (a, b) = (
            ModelDir::open(&testdata(dir)).expect("open"),
            ModelDir::open(&out).expect("open"),
        );
        assert_eq!(b.quant.as_ref().expect("qc").quant_method, "smolbit");
        for n in needed_tensors(&a.config) {
            let (rows, cols) = (n.shape[0], *n.shape.last().expect("shape"));
            if !a.is_ternary(&n.hf_name) || n.shape.len() != 2 {
                continue;
            }
            let (x, y) = (
                a.linear_ternary(&n.hf_name, rows, cols)
                    .expect("a")
                    .expect("a"),
                b.linear_ternary(&n.hf_name, rows, cols)
                    .expect("b")
                    .expect("b"),
            );
            assert_eq!(
                (x.trits, x.scales),
                (y.trits, y.scales),
                "{dir} {}",
                n.hf_name
            );
            assert_eq!(
                a.linear_pre_norm(&n.hf_name, cols).expect("a"),
                b.linear_pre_norm(&n.hf_name, cols).expect("b"),
                "{dir} {}",
                n.hf_name
            );
        }
    }
}

/// Copy a fixture directory, rewriting its weights through `edit` (name, dtype, shape, bytes) and
/// its config through `cfg`.
fn mutate(
    src: &str,
    dst: &Path,
    edit: impl Fn(&str, &mut Dtype, &mut Vec<usize>, &mut Vec<u8>) -> bool,
    cfg: impl Fn(&mut serde_json::Value),
) {
    std::fs::create_dir_all(dst).expect("mkdir");
    let st = SafeTensors::open_dir(&testdata(src)).expect("open");
    let mut specs = Vec::new();
    let mut data = Vec::new();
    for name in st.names() {
        let e = st.entry(name).expect("entry");
        let (mut dtype, mut shape, mut bytes) = (
            e.dtype,
            e.shape.clone(),
            st.bytes(name).expect("bytes").to_vec(),
        );
        if !edit(name, &mut dtype, &mut shape, &mut bytes) {
            continue;
        }
        specs.push(TensorSpec {
            name: name.to_string(),
            dtype,
            shape,
        });
        data.push(bytes);
    }
    safetensors::write_streaming::<safetensors::SafetensorsError>(
        &dst.join("model.safetensors"),
        &specs,
        &BTreeMap::new(),
        |i, _| Ok(data[i].clone()),
    )
    .expect("write");
    let mut c: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testdata(src).join("config.json")).expect("read"),
    )
    .expect("json");
    cfg(&mut c);
    std::fs::write(dst.join("config.json"), c.to_string()).expect("write");
}

#[test]
fn bad_bitnet_files_are_one_line_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let q = "model.layers.0.self_attn.q_proj.weight";
    let read_q = |dir: &Path| -> String {
        let r = (|| -> Result<(), smolbit_weights::LoadError> {
            let md = ModelDir::open(dir)?;
            let c: &ModelConfig = &md.config;
            md.linear_ternary(q, c.num_heads * c.head_dim, c.hidden_size)?;
            Ok(())
        })();
        r.map_or_else(|e| e.to_string(), |()| "no error".into())
    };
    let keep = |_: &mut serde_json::Value| {};
    type Case<'a> = (&'a str, Box<dyn Fn(&Path) + 'a>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "code3",
            Box::new(|d: &Path| {
                mutate(
                    "bitnet-auto",
                    d,
                    |n, _, _, b| {
                        if n == q {
                            b[3] |= 0b1100;
                        }
                        true
                    },
                    keep,
                )
            }),
            "tensor 'model.layers.0.self_attn.q_proj.weight': code 3 (not a trit) in byte 3",
        ),
        (
            "shape",
            Box::new(|d: &Path| {
                mutate(
                    "bitnet-auto",
                    d,
                    |n, _, s, b| {
                        if n == q {
                            s[0] -= 1;
                            b.truncate(s[0] * s[1]);
                        }
                        true
                    },
                    keep,
                )
            }),
            "tensor 'model.layers.0.self_attn.q_proj.weight': packed shape [7, 32] disagrees",
        ),
        (
            "noscale",
            Box::new(|d: &Path| {
                mutate(
                    "bitnet-auto",
                    d,
                    |n, _, _, _| n != format!("{q}_scale"),
                    keep,
                )
            }),
            "has no 'model.layers.0.self_attn.q_proj.weight_scale'",
        ),
        (
            "class",
            Box::new(|d: &Path| {
                mutate(
                    "bitnet-auto",
                    d,
                    |_, _, _, _| true,
                    |c| c["quantization_config"]["linear_class"] = "tritlinear".into(),
                )
            }),
            "unsupported: quantization_config.linear_class 'tritlinear'",
        ),
    ];
    for (name, make, msg) in cases {
        let d = tmp.path().join(name);
        make(&d);
        let e = read_q(&d);
        assert!(
            e.contains(msg) && !e.contains('\n') && e.contains(&*d.to_string_lossy()),
            "{name}: {e}"
        );
    }
}

/// A ternary GGUF with a corrupt code, and one with a tensor shorter than its type needs: the
/// conversion fails with one line naming the file and the tensor, and leaves nothing behind.
#[test]
fn bad_ternary_ggufs_are_one_line_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (file, tensor) in [
        ("tq2_0.gguf", "blk.0.ffn_up.weight"),
        ("i2_s.gguf", "blk.0.attn_k.weight"),
    ] {
        let src = testdata(&format!("gguf/{file}"));
        let g = smolbit_weights::gguf::GgufFile::open(&src).expect("open");
        let info = g.tensor(tensor).expect("tensor");
        let data = g.tensor_bytes(info);
        let mut bytes = std::fs::read(&src).expect("read");
        let at = bytes
            .windows(data.len())
            .position(|w| w == data)
            .expect("tensor bytes in the file");
        bytes[at + 1] = 0xff; // four codes 3
        let bad = tmp.path().join(file);
        std::fs::write(&bad, &bytes).expect("write");
        let out = tmp.path().join(format!("{file}.out"));
        let e = convert(&bad, &out, &ConvertOptions::default())
            .expect_err("corrupt code")
            .to_string();
        assert!(
            e.starts_with(&*bad.to_string_lossy())
                && e.contains(&format!("tensor '{tensor}': code 3 (not a trit) at byte 1"))
                && !e.contains('\n'),
            "{e}"
        );
        assert!(!out.exists(), "{file}: partial output left");
    }
}

/// bitnet.cpp's converter writes Falcon3-style models as architecture `llama` with llama.cpp's
/// q/k row permutation: converted, every projection's trits equal the transformers directory's
/// (the permutation undone on trits and scales) and the scales agree to an ulp (the directory
/// stores `1 / mean|W|`).
#[test]
fn llama_architecture_i2_s_unpermutes_to_the_hf_trits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("m");
    convert(
        &testdata("llama-i2s/model-i2_s.gguf"),
        &out,
        &ConvertOptions::default(),
    )
    .expect("convert");
    let (hf, gg) = (
        ModelDir::open(&testdata("llama-i2s")).expect("hf"),
        ModelDir::open(&out).expect("converted"),
    );
    assert_eq!(gg.config.arch, smolbit_weights::Arch::Llama);
    let mut checked = 0;
    for n in needed_tensors(&hf.config) {
        if !hf.is_ternary(&n.hf_name) {
            continue;
        }
        let (rows, cols) = (n.shape[0], n.shape[1]);
        let a = hf
            .linear_ternary(&n.hf_name, rows, cols)
            .expect("hf")
            .expect("hf");
        let b = gg
            .linear_ternary(&n.hf_name, rows, cols)
            .expect("gguf")
            .expect("gguf");
        assert_eq!(a.trits, b.trits, "{}", n.hf_name);
        assert!(
            (a.scales[0] - b.scales[0]).abs() <= a.scales[0] * 1e-6,
            "{}: {} vs {}",
            n.hf_name,
            a.scales[0],
            b.scales[0]
        );
        checked += 1;
    }
    assert_eq!(checked, 7);
}

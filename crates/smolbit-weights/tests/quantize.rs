//! Ternary checkpoints: trits equal numpy's absmean (testdata/make_bitnet_fixtures.py), exact
//! round trips through both packings for every scheme, and clean refusals.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use smolbit_ternary::Scheme;
use smolbit_ternary::pack::Packing;
use smolbit_weights::quantize::{QuantizeOptions, quantize_matrix, quantize_model, read_ternary};
use smolbit_weights::safetensors::Dtype;
use smolbit_weights::{ConvertOptions, ModelDir, convert};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

fn opts(scheme: &str, packing: Packing) -> QuantizeOptions {
    QuantizeOptions {
        scheme: scheme.parse().expect("scheme"),
        packing,
        calibration: None,
        overwrite: false,
        iters: 6,
        quantize_embeddings: false,
    }
}

fn f32_copy(src: &str, tmp: &Path) -> PathBuf {
    let out = tmp.join("f32");
    convert(
        &testdata(src),
        &out,
        &ConvertOptions {
            dtype: Some(Dtype::F32),
            overwrite: false,
        },
    )
    .expect("convert");
    out
}

fn sha256_hex(trits: &[i8]) -> String {
    let bytes: Vec<u8> = trits.iter().map(|&t| t as u8).collect();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn b158_trits_equal_numpy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f32_dir = f32_copy("tiny-llama", tmp.path());
    let out = tmp.path().join("q");
    quantize_model(&f32_dir, &out, &opts("b158", Packing::Base3)).expect("quantize");
    let md = ModelDir::open(&out).expect("open");
    let qc = md.quant.clone().expect("quantization_config");
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("b158-numpy-trits.json")).expect("read"),
    )
    .expect("json");
    let refs = refs["tiny-llama"].as_object().expect("tiny-llama");
    assert_eq!(refs.len(), 14);
    let src = ModelDir::open(&f32_dir).expect("src");
    for (name, r) in refs {
        let shape = src.weights.entry(name).expect("entry").shape.clone();
        let m = read_ternary(&md, &qc, name, shape[0], shape[1]).expect("read");
        assert_eq!(
            sha256_hex(&m.trits),
            r["sha256"].as_str().expect("sha"),
            "{name}: trits differ from numpy"
        );
        let inv = 1.0f32 / m.scales[0];
        assert_eq!(
            inv,
            r["scale_inv"].as_f64().expect("scale") as f32,
            "{name}: 1/scale"
        );
    }
}

/// Every scheme and packing: what is read back is bit-identical to what was quantized
/// (trits exactly; scales exactly after their storage rounding to f16/f32).
#[test]
fn checkpoints_round_trip_exactly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f32_dir = f32_copy("tiny-smollm3", tmp.path());
    let src = ModelDir::open(&f32_dir).expect("src");
    for (i, scheme) in [
        "b158",
        "b158:row",
        "b158:g32",
        "planes1:row",
        "planes2:g32",
        "planes3:g64:a8",
        "planes2:g32:s8",
    ]
    .iter()
    .enumerate()
    {
        for packing in [Packing::TwoBit, Packing::Base3] {
            let out = tmp.path().join(format!("q{i}-{packing}"));
            let report = quantize_model(&f32_dir, &out, &opts(scheme, packing)).expect("quantize");
            assert_eq!(report.layers.len(), 4 * 7);
            let md = ModelDir::open(&out).expect("open");
            let qc = md.quant.clone().expect("quantization_config");
            assert_eq!(
                qc.scheme,
                scheme.parse::<Scheme>().expect("scheme").to_string()
            );
            assert_eq!(qc.packing, packing.name());
            for layer in &report.layers {
                let [rows, cols] = layer.shape;
                let w = src.tensor_f32(&layer.name, &[rows, cols]).expect("w");
                let parsed = qc.scheme().expect("scheme");
                let mut want = quantize_matrix(&w, rows, cols, &parsed, None, 6);
                if parsed.scales8 {
                    smolbit_ternary::planes::round_scales_8bit(&mut want, &w);
                }
                let got = read_ternary(&md, &qc, &layer.name, rows, cols).expect("read back");
                assert_eq!(got.trits, want.trits, "{scheme} {packing} {}", layer.name);
                let dtype = smolbit_weights::quantize::scale_dtype(want.granularity);
                let stored: Vec<f32> = want
                    .scales
                    .iter()
                    .map(|&s| {
                        if dtype == Dtype::F16 && !parsed.scales8 {
                            half::f16::from_f32(s).to_f32()
                        } else {
                            s
                        }
                    })
                    .collect();
                assert_eq!(
                    got.scales, stored,
                    "{scheme} {packing} {} scales",
                    layer.name
                );
                assert_eq!(
                    md.linear_f32(&layer.name, rows, cols).expect("dense"),
                    got.dequantize()
                );
            }
            // Non-quantized tensors are copied byte for byte.
            assert_eq!(
                md.weights.bytes("model.norm.weight").expect("norm"),
                src.weights.bytes("model.norm.weight").expect("norm")
            );
        }
    }
}

#[test]
fn refusals() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f32_dir = f32_copy("tiny-smollm3", tmp.path());
    let err = quantize_model(
        &f32_dir,
        &tmp.path().join("x"),
        &opts("planes2:g64:cal", Packing::Base3),
    )
    .expect_err("cal");
    assert!(
        err.to_string()
            .contains("needs calibration statistics (--calibration <FILE>)"),
        "{err}"
    );
    let q = tmp.path().join("q");
    quantize_model(&f32_dir, &q, &opts("b158", Packing::TwoBit)).expect("quantize");
    let err = quantize_model(&q, &tmp.path().join("y"), &opts("b158", Packing::TwoBit))
        .expect_err("twice");
    assert!(err.to_string().contains("is already quantized"), "{err}");
    let err = quantize_model(&f32_dir, &q, &opts("b158", Packing::TwoBit)).expect_err("exists");
    assert!(
        err.to_string()
            .ends_with("already exists (pass --force to replace it)"),
        "{err}"
    );
    assert!(!tmp.path().join("x").exists() && !tmp.path().join("y").exists());
    // A corrupt trit byte is detected on load.
    let st = q.join("model.safetensors");
    let mut bytes = std::fs::read(&st).expect("read");
    // Overwrite the first trit byte of one layer with 0xff (2-bit code 3, which no packer writes).
    let hlen = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + hlen]).expect("header");
    let begin = header["model.layers.0.mlp.up_proj.trits"]["data_offsets"][0]
        .as_u64()
        .expect("offset") as usize;
    let pos = 8 + hlen + begin;
    bytes[pos] = 0xff;
    std::fs::write(&st, &bytes).expect("write");
    let md = ModelDir::open(&q).expect("header still fine");
    let qc = md.quant.clone().expect("qc");
    let bad = [
        "model.layers.0",
        "model.layers.1",
        "model.layers.2",
        "model.layers.3",
    ]
    .iter()
    .flat_map(|l| {
        [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ]
        .map(|p| format!("{l}.{p}.weight"))
    })
    .filter_map(|name| {
        let (rows, cols) = match name.split('.').nth(4) {
            Some("k_proj") | Some("v_proj") => (16, 32),
            Some("gate_proj") | Some("up_proj") => (64, 32),
            Some("down_proj") => (32, 64),
            _ => (32, 32),
        };
        read_ternary(&md, &qc, &name, rows, cols).err()
    })
    .collect::<Vec<_>>();
    assert_eq!(bad.len(), 1, "exactly the corrupted layer fails: {bad:?}");
    assert!(
        bad[0].to_string().contains("invalid packed byte 0xff"),
        "{}",
        bad[0]
    );
}

/// A GPTQ scheme runs end to end through `quantize_model` with calibration statistics (here
/// synthetic: unit `XᵀX`, where GPTQ reduces to nearest rounding with fitted scales), and is
/// refused without them.
#[test]
fn gptq_scheme_through_checkpoints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f32_dir = f32_copy("tiny-smollm3", tmp.path());
    let src = ModelDir::open(&f32_dir).expect("src");
    let mut cal = smolbit_weights::quantize::Calibration::new();
    for name in src.weights.names().filter(|n| n.contains("proj")) {
        let cols = src.weights.entry(name).expect("entry").shape[1];
        let mut xtx = vec![0f32; cols * cols];
        for i in 0..cols {
            xtx[i * cols + i] = 1.0;
        }
        cal.insert(
            name.to_string(),
            smolbit_weights::quantize::InputStats {
                mean_sq: vec![1.0; cols],
                samples: vec![],
                xtx,
            },
        );
    }
    let mut o = opts("planes2:g32:gptq", Packing::Base3);
    let err = quantize_model(&f32_dir, &tmp.path().join("x"), &o).expect_err("needs calibration");
    assert!(
        err.to_string().contains("needs calibration statistics"),
        "{err}"
    );
    o.calibration = Some(cal);
    let report = quantize_model(&f32_dir, &tmp.path().join("g"), &o).expect("gptq");
    assert_eq!(report.scheme, "planes2:g32:gptq:af");
    assert!(
        report.model_weight_rel_error > 0.0 && report.model_weight_rel_error < 0.5,
        "{}",
        report.model_weight_rel_error
    );
    let md = ModelDir::open(&tmp.path().join("g")).expect("open");
    assert!(md.quant.as_ref().is_some_and(|q| q.calibrated));
}

/// The float-embedding policy can be overridden: the (tied) embedding is then stored as trits and
/// reads back as its dequantized matrix.
#[test]
fn embeddings_can_be_quantized_on_request() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f32_dir = f32_copy("tiny-smollm3", tmp.path());
    let mut o = opts("planes2:g32", Packing::Base3);
    o.quantize_embeddings = true;
    let out = tmp.path().join("q");
    let report = quantize_model(&f32_dir, &out, &o).expect("quantize");
    assert_eq!(report.layers.len(), 4 * 7 + 1);
    let md = ModelDir::open(&out).expect("open");
    assert!(
        md.weights.contains("model.embed_tokens.trits")
            && !md.weights.contains("model.embed_tokens.weight")
    );
    let qc = md.quant.clone().expect("qc");
    assert!(
        !qc.modules_not_converted
            .iter()
            .any(|m| m == "model.embed_tokens")
    );
    let e = md
        .linear_f32("model.embed_tokens.weight", 256, 32)
        .expect("embedding");
    let m = read_ternary(&md, &qc, "model.embed_tokens.weight", 256, 32).expect("trits");
    assert_eq!(e, m.dequantize());
}

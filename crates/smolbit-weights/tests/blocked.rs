//! Blocked 8- and 4-bit checkpoints (`quantize --scheme q8|q4`): exact round trips through the
//! checkpoint, values equal to llama.cpp's Q8_0 / Q4_0 decoding of the same blocks (smolbit's
//! GGML dequantizer, checked against gguf-py in `tests/dequant.rs`), and clean refusals.

use std::path::{Path, PathBuf};

use smolbit_weights::blocked::{BlockedFormat, BlockedTable, quantize_blocked};
use smolbit_weights::dequant::{GgmlType, dequantize};
use smolbit_weights::safetensors::Dtype;
use smolbit_weights::{ConvertOptions, ModelDir, convert};

fn f32_copy(tmp: &Path) -> PathBuf {
    let out = tmp.join("f32");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny-llama");
    convert(
        &src,
        &out,
        &ConvertOptions {
            dtype: Some(Dtype::F32),
            overwrite: false,
        },
    )
    .expect("convert");
    out
}

const LINEARS: [(&str, usize, usize); 7] = [
    ("self_attn.q_proj", 64, 64),
    ("self_attn.k_proj", 32, 64),
    ("self_attn.v_proj", 32, 64),
    ("self_attn.o_proj", 64, 64),
    ("mlp.gate_proj", 256, 64),
    ("mlp.up_proj", 256, 64),
    ("mlp.down_proj", 64, 256),
];

/// GGML blocks (binary16 `d`, then the 32 codes: Q8_0 as int8, Q4_0 as 16 bytes of nibbles
/// `q + 8`, low nibbles first) built from a checkpoint's `qweight`/`qscales`.
fn ggml_blocks(format: BlockedFormat, codes: &[u8], steps: &[u8]) -> Vec<u8> {
    let per = match format {
        BlockedFormat::Q8 => 32,
        BlockedFormat::Q4 => 16,
    };
    let mut out = Vec::new();
    for (d, q) in steps.chunks_exact(2).zip(codes.chunks_exact(per)) {
        out.extend_from_slice(d);
        out.extend_from_slice(q);
    }
    out
}

#[test]
fn blocked_checkpoints_round_trip_and_decode_as_ggml() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f32_dir = f32_copy(tmp.path());
    let src = ModelDir::open(&f32_dir).expect("open f32");
    for format in [BlockedFormat::Q8, BlockedFormat::Q4] {
        let out = tmp.path().join(format.name());
        let report = quantize_blocked(&f32_dir, &out, format, false).expect("quantize");
        assert_eq!(report.layers.len(), 14);
        let md = ModelDir::open(&out).expect("open blocked");
        let qc = md.quant.clone().expect("quantization_config");
        assert_eq!(qc.blocked_format(), Some(format));
        assert!(!md.is_ternary("model.layers.0.mlp.down_proj.weight"));
        // The embedding, norms and head are the source's, byte for byte.
        for kept in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.norm.weight",
        ] {
            assert_eq!(
                md.weights.bytes(kept).expect("kept"),
                src.weights.bytes(kept).expect("source")
            );
        }
        for layer in 0..2 {
            for (lin, rows, cols) in LINEARS {
                let name = format!("model.layers.{layer}.{lin}.weight");
                let w = src.tensor_f32(&name, &[rows, cols]).expect("source weight");
                let want = BlockedTable::quantize(format, &w, rows, cols);
                let got = md
                    .linear_blocked(&name, rows, cols)
                    .expect("read")
                    .expect("blocked");
                match (&got, &want) {
                    (BlockedTable::Q8(a), BlockedTable::Q8(b)) => {
                        assert_eq!((&a.data, &a.scales), (&b.data, &b.scales), "{name}")
                    }
                    (BlockedTable::Q4(a), BlockedTable::Q4(b)) => {
                        assert_eq!((&a.data, &a.scales), (&b.data, &b.scales), "{name}")
                    }
                    _ => panic!("{name}: format changed"),
                }
                // The stored blocks decode under GGML's Q8_0 / Q4_0 rules to the same values,
                // exactly (a code times a binary16 step is exact in f32).
                let base = name.strip_suffix(".weight").expect("weight name");
                let blocks = ggml_blocks(
                    format,
                    md.weights.bytes(&format!("{base}.qweight")).expect("codes"),
                    md.weights.bytes(&format!("{base}.qscales")).expect("steps"),
                );
                let ty = match format {
                    BlockedFormat::Q8 => GgmlType::Q8_0,
                    BlockedFormat::Q4 => GgmlType::Q4_0,
                };
                let mut ggml = vec![0f32; rows * cols];
                dequantize(ty, &blocks, &mut ggml);
                let ours = md.linear_f32(&name, rows, cols).expect("dequantized");
                assert_eq!(ours, ggml, "{name}");
                // Quantization error stays within half a step per weight.
                let step_bound = match format {
                    BlockedFormat::Q8 => 1.0 / 127.0,
                    BlockedFormat::Q4 => 1.0 / 7.0,
                };
                for (row, (a, b)) in w.chunks(cols).zip(ours.chunks(cols)).enumerate() {
                    for g in 0..cols / 32 {
                        let max = a[g * 32..][..32].iter().fold(0f32, |m, v| m.max(v.abs()));
                        for c in g * 32..(g + 1) * 32 {
                            // Steps are rounded up to binary16, hence the 0.1 % allowance.
                            assert!(
                                (a[c] - b[c]).abs() <= 0.5 * max * step_bound * 1.001 + 1e-12,
                                "{name} row {row} col {c}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn blocked_refusals_name_the_problem() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f32_dir = f32_copy(tmp.path());
    let q8 = tmp.path().join("q8");
    quantize_blocked(&f32_dir, &q8, BlockedFormat::Q8, false).expect("quantize");
    // An existing output is not replaced without overwrite; a quantized input is refused.
    let again = quantize_blocked(&f32_dir, &q8, BlockedFormat::Q8, false).expect_err("exists");
    assert!(again.to_string().contains("exists"), "{again}");
    let twice = quantize_blocked(&q8, &tmp.path().join("x"), BlockedFormat::Q4, false)
        .expect_err("already quantized");
    assert!(twice.to_string().contains("already quantized"), "{twice}");
    assert!(!tmp.path().join("x").exists(), "no half-written output");
    // A qweight of the wrong shape is an error naming the tensor, not a panic.
    let md = ModelDir::open(&q8).expect("open");
    let err = md
        .linear_blocked("model.layers.0.mlp.down_proj.weight", 256, 64)
        .expect_err("wrong shape");
    assert!(err.to_string().contains("down_proj.qweight"), "{err}");
}

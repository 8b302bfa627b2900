//! GGUF reading and dequantization against gguf-py (fixtures from testdata/make_fixtures.py), and
//! malformed-file handling.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use smolbit_weights::gguf::{GgufError, GgufFile, Value};
use smolbit_weights::safetensors::SafeTensors;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

/// Our dequantization of gguf-py-written random blocks must equal gguf-py's numpy
/// dequantization. Tolerance: 1 ulp-scale relative error (1e-6 * (1 + |x|)) because numpy
/// groups the scale products differently (`d * sc * q - dmin * m` vs ggml's `(d * sc) * q - m`).
#[test]
fn dequantize_matches_gguf_py() {
    let g = GgufFile::open(&testdata("dequant.gguf")).expect("open dequant.gguf");
    let expected =
        SafeTensors::open_files(&testdata(""), &[testdata("dequant_expected.safetensors")])
            .expect("open expected");
    let mut checked = Vec::new();
    for t in &g.tensors {
        let ours = g.tensor_f32(t);
        let theirs = expected.to_f32(&t.name).expect("expected tensor");
        assert_eq!(ours.len(), theirs.len(), "{}", t.name);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{} [{i}]: ours {a} gguf-py {b}",
                t.name
            );
        }
        checked.push(t.name.clone());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "bf16", "f16", "f32", "q4_0", "q4_1", "q4_k", "q5_0", "q5_1", "q5_k", "q6_k", "q8_0"
        ]
    );
}

#[test]
fn metadata_of_every_value_type() {
    let g = GgufFile::open(&testdata("dequant.gguf")).expect("open");
    assert_eq!(g.version, 3);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("dequant_metadata.json")).expect("read"),
    )
    .expect("json");
    let check = |key: &str, expect: Value| assert_eq!(g.get(key), Some(&expect), "{key}");
    check("test.u8", Value::U8(200));
    check("test.i8", Value::I8(-100));
    check("test.u16", Value::U16(60000));
    check("test.i16", Value::I16(-30000));
    check("test.u32", Value::U32(4_000_000_000));
    check("test.i32", Value::I32(-2_000_000_000));
    check("test.f32", Value::F32(0.5));
    check("test.bool", Value::Bool(true));
    check(
        "test.string",
        Value::String(json["test.string"].as_str().expect("str").to_string()),
    );
    check(
        "test.u64",
        Value::U64(
            json["test.u64"]
                .as_str()
                .expect("str")
                .parse()
                .expect("u64"),
        ),
    );
    check("test.i64", Value::I64(-(1 << 62)));
    check("test.f64", Value::F64(1e-300));
    check(
        "test.array_str",
        Value::Array(vec![
            Value::String("a".into()),
            Value::String("bc".into()),
            Value::String(String::new()),
        ]),
    );
    check(
        "test.array_i32",
        Value::Array(vec![Value::I32(1), Value::I32(-2), Value::I32(3)]),
    );
    assert_eq!(
        g.get("general.architecture").and_then(Value::as_str),
        Some("llama")
    );
}

fn write_tmp(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).expect("write");
    (dir, path)
}

/// Each malformed variant of a valid file gives an error that names the file and says what is
/// wrong (the expected fragment).
fn check_bad(bytes: &[u8], expect: &str) {
    let (_dir, path) = write_tmp(bytes);
    let err = GgufFile::open(&path).expect_err("malformed file must not parse");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    assert!(msg.contains(expect), "expected '{expect}' in: {msg}");
    assert!(!msg.contains('\n'), "error is not one line: {msg}");
}

/// Offset of the first tensor-info record's type field for a tensor named `name`.
fn tensor_info_offset(bytes: &[u8], name: &str) -> usize {
    let needle = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
    bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("tensor name in file")
        + needle.len()
}

#[test]
fn malformed_files_give_clean_errors() {
    let good = std::fs::read(testdata("tiny-llama.gguf")).expect("read");
    check_bad(b"", "truncated: magic");
    check_bad(b"GGML\x03\x00\x00\x00", "not a GGUF file");
    let mut v1 = good.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    check_bad(&v1, "unsupported GGUF version 1");
    let mut be = good.clone();
    be[4..8].copy_from_slice(&3u32.to_be_bytes());
    check_bad(&be, "unsupported GGUF version 50331648");
    let mut many = good.clone();
    many[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    check_bad(&many, "tensor count 18446744073709551615 is impossible");
    let mut kv = good.clone();
    kv[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    check_bad(&kv, "metadata count 1099511627776 is impossible");
    check_bad(&good[..good.len() / 2], "truncated: data of tensor");
    check_bad(
        &good[..200],
        "tensor count 21 is impossible: only 176 bytes follow",
    );
    let mut short_key = good[..24].to_vec();
    short_key[8..16].copy_from_slice(&0u64.to_le_bytes());
    short_key[16..24].copy_from_slice(&1u64.to_le_bytes());
    short_key.extend_from_slice(&100u64.to_le_bytes());
    short_key.extend_from_slice(b"general.arch");
    check_bad(
        &short_key,
        "truncated: metadata key needs 100 bytes at offset 32",
    );

    // Tensor-info fields of token_embd.weight: n_dims, dims..., type, offset.
    let at = tensor_info_offset(&good, "token_embd.weight");
    let mut dims = good.clone();
    dims[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
    check_bad(&dims, "tensor 'token_embd.weight' has 9 dimensions");
    let n_dims = u32::from_le_bytes(good[at..at + 4].try_into().expect("4 bytes")) as usize;
    let ty_at = at + 4 + 8 * n_dims;
    let mut ty = good.clone();
    ty[ty_at..ty_at + 4].copy_from_slice(&16u32.to_le_bytes());
    check_bad(
        &ty,
        "tensor 'token_embd.weight' has unsupported ggml type 16 (IQ2_XXS)",
    );
    let mut off = good.clone();
    off[ty_at + 4..ty_at + 12].copy_from_slice(&(1u64 << 30).to_le_bytes());
    check_bad(&off, "truncated: data of tensor 'token_embd.weight'");
    let mut unaligned = good.clone();
    unaligned[ty_at + 4..ty_at + 12].copy_from_slice(&3u64.to_le_bytes());
    check_bad(&unaligned, "offset 3 is not aligned");
    let mut huge = good.clone();
    huge[at + 4..at + 12].copy_from_slice(&(1u64 << 50).to_le_bytes());
    check_bad(&huge, "absurd dimensions");
}

#[test]
fn missing_file_is_an_error() {
    let err = GgufFile::open(Path::new("/nonexistent/x.gguf")).expect_err("missing");
    assert!(matches!(err, GgufError::Io { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/x.gguf: cannot read")
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random corruption (overwritten bytes and truncation) never panics; whatever parses can be
    /// dequantized in full.
    #[test]
    fn corrupted_files_never_panic(
        edits in proptest::collection::vec((0usize..15_000, any::<u8>()), 1..8),
        cut in 0usize..16_000,
    ) {
        let mut bytes = std::fs::read(testdata("dequant.gguf")).expect("read");
        for (pos, val) in edits {
            if pos < bytes.len() {
                bytes[pos] = val;
            }
        }
        bytes.truncate(cut.max(1));
        let (_dir, path) = write_tmp(&bytes);
        if let Ok(g) = GgufFile::open(&path) {
            for t in &g.tensors {
                let _ = g.tensor_f32(t);
            }
        }
    }
}

/// Version 2 has the same layout as version 3 (64-bit counts; v3 added big-endian files), so a v3
/// file relabelled as v2 must read identically.
#[test]
fn version_2_reads_like_version_3() {
    let mut bytes = std::fs::read(testdata("dequant.gguf")).expect("read");
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let (_dir, path) = write_tmp(&bytes);
    let v2 = GgufFile::open(&path).expect("v2 parses");
    let v3 = GgufFile::open(&testdata("dequant.gguf")).expect("v3 parses");
    assert_eq!(v2.version, 2);
    assert_eq!(v2.metadata, v3.metadata);
    assert_eq!(v2.tensors, v3.tensors);
    for t in &v3.tensors {
        assert_eq!(v2.tensor_bytes(t), v3.tensor_bytes(t));
    }
}

/// The writer's files read back with the same metadata and tensor bytes, aligned as gguf-py
/// aligns them (the reader checks offsets against `general.alignment`'s default of 32), for
/// float and ternary types (I2_S with its trailing scale).
#[test]
fn written_files_read_back() {
    use smolbit_weights::dequant::GgmlType;
    use smolbit_weights::gguf::{TensorSpec, Value, write_streaming};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.gguf");
    let meta = vec![
        (
            "general.architecture".to_string(),
            Value::String("bitnet-b1.58".into()),
        ),
        ("a.u32".to_string(), Value::U32(7)),
        ("a.f32".to_string(), Value::F32(0.5)),
        ("a.bool".to_string(), Value::Bool(true)),
        (
            "a.strings".to_string(),
            Value::Array(vec![Value::String("x".into()), Value::String("yz".into())]),
        ),
    ];
    let specs = vec![
        TensorSpec {
            name: "f32".into(),
            shape: vec![3],
            ggml_type: GgmlType::F32,
        },
        TensorSpec {
            name: "tq2".into(),
            shape: vec![2, 256],
            ggml_type: GgmlType::TQ2_0,
        },
        TensorSpec {
            name: "i2s".into(),
            shape: vec![1, 128],
            ggml_type: GgmlType::I2_S,
        },
    ];
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|s| {
            let n = s
                .ggml_type
                .bytes_for(s.shape.iter().product::<usize>() as u64) as usize;
            (0..n).map(|i| (i * 7 % 251) as u8 & 0x55).collect()
        })
        .collect();
    write_streaming::<smolbit_weights::gguf::GgufError>(&path, &meta, &specs, |i| {
        Ok(data[i].clone())
    })
    .expect("write");
    let g = GgufFile::open(&path).expect("read back");
    assert_eq!(g.metadata, meta);
    for (s, d) in specs.iter().zip(&data) {
        let t = g.tensor(&s.name).expect("tensor");
        assert_eq!(
            (t.torch_shape(), t.ggml_type),
            (s.shape.clone(), s.ggml_type)
        );
        assert_eq!(g.tensor_bytes(t), d.as_slice(), "{}", s.name);
    }
}

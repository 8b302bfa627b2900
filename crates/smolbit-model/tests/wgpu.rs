//! The model on burn's wgpu backend (in CI: Mesa's software Vulkan driver, lavapipe).
//!
//! - The CubeCL ternary kernels against the CPU scalar reference, exactly: integer activations
//!   and power-of-two scales make every partial sum exact in f32 in both implementations, so any
//!   difference is a decoding or indexing bug, not rounding.
//! - Golden logits from HF transformers on wgpu, for f32 checkpoints and for b1.58 (the GPU
//!   matrix-vector kernel and the transient dense prefill), at the tolerance stated below.
//!
//! Shapes are few and small: each new shape costs a shader compilation on lavapipe.
#![cfg(feature = "wgpu")]

mod common;
use common::*;

use burn::prelude::*;
use smolbit_model::gpu::GpuTernary;
use smolbit_model::{HeadPolicy, LoadOptions, Model, device, tensor_to_vec};
use smolbit_ternary::kernels::{Isa, PackedTernary};
use smolbit_ternary::{Granularity, TernaryMatrix};

/// Logit tolerance against transformers (f32 PyTorch on a CPU): 1e-4 as on the CPU backend.
/// The GPU sums in another order (per unit, then a tree), which moves these ~1-magnitude logits
/// by about 1e-6; a wrong RoPE, mask or layout moves them by 1e-2 or more.
const TOL: f32 = 1e-4;

/// The wgpu device, or `None` (the test then passes with a note) when this machine has no
/// Vulkan/Metal/DX12 adapter; `SMOLBIT_REQUIRE_WGPU=1` (set by `.ci/run`, which installs Mesa's
/// software driver) turns that into a failure.
fn wgpu() -> Option<burn::prelude::Device> {
    let dev = device("wgpu").expect("this build has the wgpu feature");
    let probe = dev.clone();
    // wgpu panics when it finds no adapter; a one-element tensor round trip tells.
    let ok =
        std::panic::catch_unwind(move || tensor_to_vec(Tensor::<1>::ones([1], &probe)) == [1.0])
            .unwrap_or(false);
    if ok {
        return Some(dev);
    }
    assert!(
        std::env::var_os("SMOLBIT_REQUIRE_WGPU").is_none(),
        "no wgpu adapter, and SMOLBIT_REQUIRE_WGPU is set (install mesa-vulkan-drivers)"
    );
    eprintln!("skipped: no wgpu adapter on this machine (set SMOLBIT_REQUIRE_WGPU=1 to fail)");
    None
}

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Random trits; scales `2^-3 ..= 1` so that products and sums stay exact in f32.
fn random_matrix(
    rows: usize,
    cols: usize,
    planes: usize,
    g: Granularity,
    seed: u64,
) -> TernaryMatrix {
    let mut r = rng(seed);
    let n = rows * cols;
    let trits = (0..planes * n).map(|_| (r() % 3) as i8 - 1).collect();
    let per = g.scales_per_plane(rows, cols);
    let scales = (0..planes * per)
        .map(|_| 1.0 / (1u32 << (r() % 4)) as f32)
        .collect();
    TernaryMatrix {
        rows,
        cols,
        planes,
        granularity: g,
        trits,
        scales,
    }
}

#[test]
fn ternary_kernels_equal_the_cpu_reference_exactly() {
    let Some(dev) = wgpu() else { return };
    let cases = [
        (1, 32, 1, Granularity::Tensor, 1),
        (7, 100, 2, Granularity::Row, 3),
        (33, 576, 1, Granularity::Group(32), 1),
        (65, 1000, 3, Granularity::Group(64), 2),
        (130, 2048, 1, Granularity::Group(256), 1),
        (3, 300, 2, Granularity::Group(128), 5),
    ];
    for (i, &(rows, cols, planes, g, tokens)) in cases.iter().enumerate() {
        let m = random_matrix(rows, cols, planes, g, i as u64);
        let p = PackedTernary::from_matrix(&m).expect("pack");
        let gpu = GpuTernary::upload(&p, &dev).expect("upload");
        let mut r = rng(100 + i as u64);
        let x: Vec<f32> = (0..tokens * cols)
            .map(|_| (r() % 255) as f32 - 127.0)
            .collect();
        // Each token's absmax is 127 (for the int8 check below).
        let mut x = x;
        for t in 0..tokens {
            x[t * cols + (t * 7) % cols] = if t % 2 == 0 { 127.0 } else { -127.0 };
        }
        let x8 = x.clone();
        let want = p.matmul_f32_with(Isa::Scalar, &x, tokens);
        let want_f32 = want.clone();
        let xt = Tensor::<2>::from_data(TensorData::new(x, [tokens, cols]), &dev);
        let xt8 = xt.clone();
        let got = tensor_to_vec(gpu.matvec(xt.clone(), false));
        assert_eq!(
            got, want,
            "matvec {rows}x{cols}, {planes} planes, {g:?}, {tokens} tokens"
        );
        // int8 activations quantized in the kernel against the CPU's W1.58A8 path: these
        // integer inputs quantize to themselves on both sides (scale 127/127), so the two differ
        // only by the final division by a scale within an ulp of 1: relative tolerance 1e-6.
        let got = tensor_to_vec(gpu.matvec(xt, true));
        let want = p.matmul_i8_with(Isa::Scalar, &x8, tokens);
        for (j, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "matvec a8 {rows}x{cols}, {planes} planes, {g:?}: at {j}, {a} vs {b}"
            );
        }
        // The fused decode step's kernel (16 outputs a cube), one
        // token: exactly the reference, and for int8 within the same 1e-6 as above.
        let got = smolbit_model::fused::ternary_gemv(&gpu, &x8[..cols], false);
        let want = p.matmul_f32_with(Isa::Scalar, &x8[..cols], 1);
        assert_eq!(
            got, want,
            "fused gemv {rows}x{cols}, {planes} planes, {g:?}"
        );
        let got = smolbit_model::fused::ternary_gemv(&gpu, &x8[..cols], true);
        let want = p.matmul_i8_with(Isa::Scalar, &x8[..cols], 1);
        for (j, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "fused gemv a8 {rows}x{cols}, {planes} planes, {g:?}: at {j}, {a} vs {b}"
            );
        }
        // The tiled prefill kernel, on these tokens and on 11 (one full tile of 8 and a
        // partial one), exactly.
        let got = tensor_to_vec(gpu.gemm(xt8.clone()));
        assert_eq!(got, want_f32, "tiled {rows}x{cols}, {planes} planes, {g:?}");
        let x11: Vec<f32> = (0..11 * cols).map(|_| (r() % 255) as f32 - 127.0).collect();
        let got = tensor_to_vec(gpu.gemm(Tensor::<2>::from_data(
            TensorData::new(x11.clone(), [11, cols]),
            &dev,
        )));
        assert_eq!(
            got,
            p.matmul_f32_with(Isa::Scalar, &x11, 11),
            "tiled {rows}x{cols}, {planes} planes, {g:?}, 11 tokens"
        );
        let dense = tensor_to_vec(gpu.unpack());
        assert_eq!(
            dense,
            p.dequantize(),
            "unpack {rows}x{cols}, {planes} planes, {g:?}"
        );
    }
}

fn worst(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// Whole-sequence logits and a prefill-then-decode pass through the KV cache.
fn check(model: &Model, g: &Golden, what: &str) {
    let vocab = model.config().vocab_size;
    let all = tensor_to_vec(
        model
            .forward(&g.tokens, &mut model.new_cache())
            .expect("forward"),
    );
    for (p, row) in g.logits.iter().enumerate() {
        let d = worst(&all[p * vocab..(p + 1) * vocab], row);
        assert!(d <= TOL, "{what} position {p}: max |diff| {d}");
    }
    let mut cache = model.new_cache();
    model.forward(&g.tokens[..5], &mut cache).expect("prefill");
    for p in 5..g.tokens.len() {
        let step = model
            .forward_last(&g.tokens[p..p + 1], &mut cache)
            .expect("decode");
        let d = worst(&step, &g.logits[p]);
        assert!(d <= TOL, "{what} cached position {p}: max |diff| {d}");
    }
}

#[test]
fn golden_logits_on_wgpu() {
    let Some(dev) = wgpu() else { return };
    for (dir, file) in [
        ("tiny-smollm3", "tiny-smollm3/logits.json"),
        ("tiny-llama", "tiny-llama/logits.json"),
    ] {
        let model = Model::load(&testdata(dir), &dev).expect("load");
        check(&model, &golden(file), dir);
    }
}

/// b1.58 on wgpu against transformers' BitLinear (testdata/make_bitnet_fixtures.py), with the
/// GPU ternary kernel for decode steps and the transient dense product for a 20-token prefill
/// (checked against the CPU reference path there: the golden sequence is shorter).
#[test]
fn ternary_checkpoints_on_wgpu() {
    let Some(dev) = wgpu() else { return };
    let cpu = device("cpu").expect("cpu");
    let tmp = tempfile::tempdir().expect("tempdir");
    let f32_dir = tmp.path().join("f32");
    let copts = smolbit_weights::ConvertOptions {
        dtype: Some(smolbit_weights::safetensors::Dtype::F32),
        overwrite: false,
    };
    smolbit_weights::convert(&testdata("tiny-llama"), &f32_dir, &copts).expect("convert");
    for (scheme, packing) in [
        ("b158", smolbit_ternary::pack::Packing::Base3),
        ("planes2:g32", smolbit_ternary::pack::Packing::TwoBit),
    ] {
        let q = tmp.path().join(scheme.replace(':', "-"));
        common::quantize(&f32_dir, &q, scheme, packing);
        let opts = LoadOptions {
            reference_linears: false,
            head: HeadPolicy::F32,
            ..Default::default()
        };
        let model = Model::load_with(&q, &dev, opts).expect("load on wgpu");
        // The GPU model really holds packed weights.
        let reference = Model::load_with(
            &q,
            &cpu,
            LoadOptions {
                reference_linears: true,
                head: HeadPolicy::F32,
                ..Default::default()
            },
        )
        .expect("load reference");
        assert!(
            model.linear_bytes() * 2 < reference.linear_bytes(),
            "{scheme}: {} vs {} bytes",
            model.linear_bytes(),
            reference.linear_bytes()
        );
        if scheme == "b158" {
            check(
                &model,
                &golden("tiny-llama-bitnet-logits.json"),
                "b158 on wgpu",
            );
        }
        // 20 tokens: the dense prefill path; then one decode step (the matrix-vector kernel).
        // int8 schemes stay on 8 tokens (see golden.rs: longer inputs flip int8 roundings).
        let n = if scheme == "b158" { 8 } else { 20 };
        let tokens: Vec<u32> = (0..n).map(|i| (i * 7 + 1) % 50).collect();
        let (mut ca, mut cb) = (model.new_cache(), reference.new_cache());
        let a = tensor_to_vec(model.forward(&tokens, &mut ca).expect("forward"));
        let b = tensor_to_vec(reference.forward(&tokens, &mut cb).expect("forward"));
        let d = worst(&a, &b);
        assert!(d <= TOL, "{scheme} prefill vs reference: max |diff| {d}");
        let a1 = tensor_to_vec(model.forward(&[3], &mut ca).expect("step"));
        let b1 = tensor_to_vec(reference.forward(&[3], &mut cb).expect("step"));
        let d = worst(&a1, &b1);
        assert!(
            d <= TOL,
            "{scheme} decode step vs reference: max |diff| {d}"
        );
    }
}

/// Natively ternary checkpoints on wgpu against transformers (testdata/native): BitNet's
/// architecture (relu², sub-norms, untied head, `autobitlinear` scales) and the Llama
/// architecture with `use_rms_norm` BitLinears, on the GPU ternary kernel (decode) and the
/// transient dense product (prefill), at the tolerance of the CPU golden tests.
#[test]
fn native_ternary_checkpoints_on_wgpu() {
    let Some(dev) = wgpu() else { return };
    for dir in ["bitnet-auto", "falcon3-rmsnorm"] {
        let opts = LoadOptions {
            head: HeadPolicy::F32,
            ..Default::default()
        };
        let model =
            Model::load_with(&testdata(&format!("native/{dir}")), &dev, opts).expect("load");
        check(
            &model,
            &golden(&format!("native/{dir}/logits.json")),
            &format!("{dir} on wgpu"),
        );
    }
}

/// The model on wgpu with decode steps on burn's ops (the path before the fused step).
fn burn_decode(dir: &std::path::Path, dev: &burn::prelude::Device) -> Model {
    let opts = LoadOptions {
        head: HeadPolicy::F32,
        burn_decode: true,
        ..Default::default()
    };
    Model::load_with(dir, dev, opts).expect("load with burn decode")
}

/// The fused decode step (`smolbit_model::fused`) against burn's ops on the same device and
/// against transformers' logits, at every cached position of the golden sequences, for f32,
/// b1.58, BitNet's architecture (sub-norms, relu², untied head) and linears with their own norm.
/// It launches what its plan says, and reads back one buffer a step: the logits, or with the
/// argmax on the device only the id, which equals the host argmax of burn's logits.
#[test]
fn fused_decode_equals_burn_decode() {
    let Some(dev) = wgpu() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let b158 = tmp.path().join("b158");
    let f32_dir = tmp.path().join("f32");
    smolbit_weights::convert(
        &testdata("tiny-llama"),
        &f32_dir,
        &smolbit_weights::ConvertOptions {
            dtype: Some(smolbit_weights::safetensors::Dtype::F32),
            overwrite: false,
        },
    )
    .expect("convert");
    common::quantize(
        &f32_dir,
        &b158,
        "b158",
        smolbit_ternary::pack::Packing::Base3,
    );
    // (directory, golden logits, launches per layer by the design)
    let cases = [
        (
            testdata("tiny-smollm3"),
            "tiny-smollm3/logits.json",
            Some(8),
        ),
        (testdata("tiny-llama"), "tiny-llama/logits.json", Some(8)),
        (b158, "tiny-llama-bitnet-logits.json", Some(8)),
        // Two sub-norms: one more norm launch each.
        (
            testdata("native/bitnet-auto"),
            "native/bitnet-auto/logits.json",
            Some(10),
        ),
        // Every linear normalizes its own input: q, k, v, gate and up run apart.
        (
            testdata("native/falcon3-rmsnorm"),
            "native/falcon3-rmsnorm/logits.json",
            None,
        ),
    ];
    for (dir, file, per_layer) in cases {
        let what = dir.display().to_string();
        let g = golden(file);
        let fused = Model::load_with(
            &dir,
            &dev,
            LoadOptions {
                head: HeadPolicy::F32,
                ..Default::default()
            },
        )
        .expect("load");
        let burn = burn_decode(&dir, &dev);
        assert_eq!(burn.decode_launches(), None, "{what}: burn decode");
        let launches = fused.decode_launches().expect("the fused step is built");
        let layers = fused.config().num_layers;
        if let Some(per) = per_layer {
            assert_eq!(launches, per * layers + 4, "{what}: launches by design");
        }
        let (mut cf, mut cb) = (fused.new_cache(), burn.new_cache());
        fused.forward(&g.tokens[..3], &mut cf).expect("prefill");
        burn.forward(&g.tokens[..3], &mut cb).expect("prefill");
        for p in 3..g.tokens.len() {
            let before = fused.gpu_counters().expect("counters");
            let a = fused
                .forward_last(&g.tokens[p..p + 1], &mut cf)
                .expect("fused");
            let after = fused.gpu_counters().expect("counters");
            // The logits step launches everything but the argmax, and reads once.
            assert_eq!(
                (after.0 - before.0, after.1 - before.1),
                (launches as u64 - 1, 1),
                "{what}: launches and reads of a step"
            );
            let b = burn
                .forward_last(&g.tokens[p..p + 1], &mut cb)
                .expect("burn");
            let d = worst(&a, &b);
            assert!(
                d <= TOL,
                "{what} position {p}: fused vs burn max |diff| {d}"
            );
            let d = worst(&a, &g.logits[p]);
            assert!(
                d <= TOL,
                "{what} position {p}: fused vs golden max |diff| {d}"
            );
        }
        // Greedy on the device: the id alone comes back.
        let next = *g.tokens.last().expect("tokens");
        let before = fused.gpu_counters().expect("counters");
        let id = fused.forward_argmax(&[next], &mut cf).expect("argmax");
        let after = fused.gpu_counters().expect("counters");
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (launches as u64, 1)
        );
        let logits = burn.forward_last(&[next], &mut cb).expect("burn");
        assert_eq!(
            id as usize,
            smolbit_model::argmax(&logits),
            "{what}: argmax"
        );
    }
}

/// Greedy decoding of the default model (SmolLM2-135M-Instruct) through the fused step gives
/// the CPU path's 64 tokens. Needs the model as `real_model.rs` does.
#[test]
fn fused_greedy_tokens_equal_the_cpu_path_on_the_default_model() {
    let Some(dev) = wgpu() else { return };
    let Some(gguf) = smolbit_weights::cache::default_model_for_tests() else {
        return;
    };
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("smollm2-model-wgpu");
    let options = smolbit_weights::ConvertOptions {
        overwrite: true,
        ..Default::default()
    };
    smolbit_weights::convert(&gguf, &dir, &options).expect("convert default model");
    let cpu = Model::load(&dir, &device("cpu").expect("cpu")).expect("load on the cpu");
    let gpu = Model::load(&dir, &dev).expect("load on wgpu");
    assert!(gpu.decode_launches().is_some(), "the fused step is built");
    // Fixed ids within the vocabulary: comparing two paths needs no particular text.
    let prompt: Vec<u32> = vec![1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 30, 2];
    let greedy = |m: &Model| -> Vec<u32> {
        let mut cache = m.new_cache();
        let mut next = m.forward_argmax(&prompt, &mut cache).expect("prompt");
        let mut out = vec![next];
        while out.len() < 64 {
            next = m.forward_argmax(&[next], &mut cache).expect("step");
            out.push(next);
        }
        out
    };
    assert_eq!(greedy(&gpu), greedy(&cpu), "64 greedy tokens, wgpu vs cpu");
}

//! `cargo bench -p smolbit-ternary`: packed ternary products per implementation, medians of
//! repeated runs, with the weight bandwidth they reach (packed bytes read per second).

use std::time::Instant;

use smolbit_ternary::kernels::{Isa, PackedTernary, Q4Matrix, Q8Matrix, QuantizedTable};
use smolbit_ternary::{Granularity, TernaryMatrix};

fn matrix(rows: usize, cols: usize, planes: usize, gran: Granularity) -> TernaryMatrix {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    TernaryMatrix {
        rows,
        cols,
        planes,
        granularity: gran,
        trits: (0..planes * rows * cols)
            .map(|_| (next() % 3) as i8 - 1)
            .collect(),
        scales: vec![0.02; planes * gran.scales_per_plane(rows, cols)],
    }
}

fn median_secs(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    println!("threads: {}", rayon::current_num_threads());
    // SMOLBIT_BENCH_ONLY=<substring> keeps the matching figures (and skips the stream one);
    // SMOLBIT_BENCH_REPS=<n> sets the repeats of every figure (for steadier medians, or fixed
    // work under `perf stat`).
    let only = std::env::var("SMOLBIT_BENCH_ONLY").unwrap_or_default();
    let reps_env: Option<usize> = std::env::var("SMOLBIT_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok());
    // `cargo bench -p smolbit-ternary -- stream`: only the decode streaming figure.
    if only.is_empty() {
        stream();
    }
    if std::env::args().any(|a| a == "stream") {
        return;
    }
    let shapes = [
        ("smollm2 ffn up 1536x576", 1536, 576),
        ("smollm2 ffn down 576x1536", 576, 1536),
        ("3b ffn up 11008x2048", 11008, 2048),
        ("3b ffn down 2048x11008", 2048, 11008),
        ("bitnet-2b ffn up 6912x2560", 6912, 2560),
        ("bitnet-2b ffn down 2560x6912", 2560, 6912),
    ];
    // A figure runs when its label, "<shape> <scheme> <a8|af> <isa> T=<tokens>", contains `only`.
    let want = |name: &str, label: &str, act: &str, isa: Isa, tokens: usize| {
        format!("{name} {label} {act} {} T={tokens}", isa.name()).contains(&only)
    };
    for (name, rows, cols) in shapes {
        for (label, gran, planes) in [
            ("b158", Granularity::Tensor, 1),
            ("planes3:g64", Granularity::Group(64), 3),
        ] {
            let p = PackedTernary::from_matrix(&matrix(rows, cols, planes, gran)).expect("packs");
            // T=4: sequences decoded together (`smolbit serve --parallel 4`).
            for tokens in [1usize, 4, 128] {
                let x: Vec<f32> = (0..tokens * cols)
                    .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                    .collect();
                let reps = reps_env.unwrap_or(if tokens <= 4 { 50 } else { 5 });
                for isa in Isa::available() {
                    if !want(name, label, "a8", isa, tokens) {
                        continue;
                    }
                    let t = median_secs(
                        || {
                            std::hint::black_box(p.matmul_i8_with(isa, &x, tokens));
                        },
                        reps,
                    );
                    println!(
                        "{name:28} {label:12} a8 {:10} T={tokens:<4} {:9.3} ms  {:7.2} GB/s weights  {:8.1} GMAC/s",
                        isa.name(),
                        t * 1e3,
                        p.bytes() as f64 / t / 1e9,
                        (rows * cols * tokens * planes) as f64 / t / 1e9
                    );
                }
                if !want(name, label, "af", Isa::detect(), tokens) {
                    continue;
                }
                let t = median_secs(
                    || {
                        std::hint::black_box(p.matmul_f32(&x, tokens));
                    },
                    reps,
                );
                println!(
                    "{name:28} {label:12} af {:10} T={tokens:<4} {:9.3} ms  {:7.2} GB/s weights  {:8.1} GMAC/s",
                    Isa::detect().name(),
                    t * 1e3,
                    p.bytes() as f64 / t / 1e9,
                    (rows * cols * tokens * planes) as f64 / t / 1e9
                );
            }
        }
    }
    // The 8-bit output head of a 135M model (tied embedding, 28 MB): decode's largest table.
    let (name, rows, cols) = ("smollm2 head 49152x576", 49152, 576);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 53) % 97) as f32 / 48.0 - 1.0)
        .collect();
    let head = Q8Matrix::from_f32(&w, rows, cols);
    for tokens in [1usize, 4] {
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        for isa in Isa::available() {
            if !want(name, "q8", "a8", isa, tokens) {
                continue;
            }
            let t = median_secs(
                || {
                    std::hint::black_box(head.matmul_with(isa, &x, tokens));
                },
                reps_env.unwrap_or(20),
            );
            println!(
                "{name:28} {:12} a8 {:10} T={tokens:<4} {:9.3} ms  {:7.2} GB/s weights  {:8.1} GMAC/s",
                "q8",
                isa.name(),
                t * 1e3,
                head.bytes() as f64 / t / 1e9,
                (rows * cols * tokens) as f64 / t / 1e9
            );
        }
    }
}

/// Decode as the model runs it: one token through the seven projections of eight 3B-shaped
/// layers (b158, ~180 MB packed, far beyond the last-level cache), so the weights stream from
/// memory; against a plain parallel read of the same bytes in the same run.
/// A plain read of `bytes` as fast as this machine reads: four interleaved streams (its four
/// quarters, read in lockstep; a single sequential stream reached 0.70-0.84 of this here),
/// eight 64-bit sums each, vectorized by the compiler.
fn read4(bytes: &[u8]) -> u64 {
    let q = bytes.len() / 4 / 64 * 64;
    let part = |k: usize| bytes[k * q..(k + 1) * q].chunks_exact(64);
    let mut acc = [0u64; 8];
    for (((a, b), c), d) in part(0).zip(part(1)).zip(part(2)).zip(part(3)) {
        for i in 0..8 {
            let w = |s: &[u8]| u64::from_le_bytes(s[8 * i..8 * i + 8].try_into().expect("8"));
            acc[i] = acc[i]
                .wrapping_add(w(a))
                .wrapping_add(w(b))
                .wrapping_add(w(c))
                .wrapping_add(w(d));
        }
    }
    acc.iter().fold(0, |a, &v| a.wrapping_add(v))
}

fn stream() {
    let shapes = [
        (2048, 2048),
        (512, 2048),
        (512, 2048),
        (2048, 2048),
        (11008, 2048),
        (11008, 2048),
        (2048, 11008),
    ];
    let mats: Vec<PackedTernary> = (0..8)
        .flat_map(|_| shapes)
        .map(|(r, c)| {
            PackedTernary::from_matrix(&matrix(r, c, 1, Granularity::Tensor)).expect("packs")
        })
        .collect();
    let bytes: usize = mats.iter().map(PackedTernary::bytes).sum();
    // Four tokens' activations per shape (T=4: sequences decoded together use all four).
    let xs: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(_, c)| {
            (0..4 * c)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect()
        })
        .collect();
    let read = median_secs(
        || {
            use rayon::prelude::*;
            let s: u64 = mats
                .par_iter()
                .map(|m| read4(&m.codes))
                .reduce(|| 0, u64::wrapping_add);
            std::hint::black_box(s);
        },
        9,
    );
    for tokens in [1, 4] {
        let t = median_secs(
            || {
                for (i, m) in mats.iter().enumerate() {
                    let x = &xs[i % shapes.len()][..tokens * m.cols];
                    std::hint::black_box(m.matmul_i8(x, tokens));
                }
            },
            9,
        );
        println!(
            "stream: 8 3B-shaped layers b158 a8 T={tokens} ({:.0} MB): {:.2} ms, {:.2} GB/s; plain read {:.2} GB/s; ratio {:.2}",
            bytes as f64 / 1e6,
            t * 1e3,
            bytes as f64 / t / 1e9,
            bytes as f64 / read / 1e9,
            read / t
        );
    }
    // The 3B-shaped output head (128256 x 2048), 8- and 4-bit.
    let (rows, cols) = (128_256, 2048);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919) % 2003) as f32 / 1001.0 - 1.0)
        .collect();
    let x = &xs[0][..cols];
    let q8 = Q8Matrix::from_f32(&w, rows, cols);
    let q4 = Q4Matrix::from_f32(&w, rows, cols);
    drop(w);
    for (name, bytes, t) in [
        (
            "q8",
            q8.bytes(),
            median_secs(|| drop(std::hint::black_box(q8.matmul(x, 1))), 9),
        ),
        (
            "q4",
            q4.bytes(),
            median_secs(|| drop(std::hint::black_box(q4.matmul(x, 1))), 9),
        ),
    ] {
        println!(
            "stream: 3B head {name} T=1 ({:.0} MB): {:.2} ms, {:.2} GB/s",
            bytes as f64 / 1e6,
            t * 1e3,
            bytes as f64 / t / 1e9
        );
    }
}

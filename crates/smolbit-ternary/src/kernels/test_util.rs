//! Random matrices and activations for the kernel tests (no RNG crate).

use crate::{Granularity, TernaryMatrix};

/// A SplitMix64 stream, so tests need no RNG crate.
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

pub(crate) fn random_matrix(
    rows: usize,
    cols: usize,
    planes: usize,
    gran: Granularity,
    seed: u64,
) -> TernaryMatrix {
    let mut r = rng(seed);
    let n = rows * cols;
    let trits = (0..planes * n).map(|_| (r() % 3) as i8 - 1).collect();
    let per = gran.scales_per_plane(rows, cols);
    let scales = (0..planes * per)
        .map(|_| 0.01 + (r() % 1000) as f32 / 1000.0)
        .collect();
    TernaryMatrix {
        rows,
        cols,
        planes,
        granularity: gran,
        trits,
        scales,
    }
}

pub(crate) fn random_x(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n)
        .map(|_| ((r() % 20001) as f32 - 10000.0) / 2500.0)
        .collect()
}

pub(crate) const SHAPES: [(usize, usize); 6] = [
    (1, 32),
    (7, 100),
    (33, 576),
    (65, 1000),
    (130, 2048),
    (3, 300),
];

/// A table with a binary16 step per 32-column group (`Q4Matrix`, `Q8BlockMatrix`) on awkward
/// shapes: every ISA equals the scalar path bit for bit; products are within the rounding bound
/// of the f64 product of the unquantized matrix (weights within half a step of their group's
/// max|w|/`levels`, activations within half a step of their group's max|x|/127, at most the
/// token's: (|w|max·|x|max)·(1/(2·levels) + 1/254)·cols, f32 rounding far smaller); each looked-up
/// value within half its group's step (`step(m, r, c)`); stacked rows keep their order.
pub(crate) fn check_blocked_table<T: super::QuantizedTable + Clone>(
    levels: f32,
    seed: u64,
    step: impl Fn(&T, usize, usize) -> f32,
) {
    use super::Isa;
    for (i, (rows, cols)) in SHAPES.into_iter().chain([(5, 2048), (3, 700)]).enumerate() {
        let w = random_x(rows * cols, seed + i as u64);
        let m = T::quantize(&w, rows, cols);
        for tokens in [1, 2] {
            let x = random_x(tokens * cols, seed + 100);
            let want = m.matmul_with(Isa::Scalar, &x, tokens);
            for isa in Isa::available() {
                assert!(
                    m.matmul_with(isa, &x, tokens) == want,
                    "{isa:?} {rows}x{cols}"
                );
            }
            for t in 0..tokens {
                let xt = &x[t * cols..][..cols];
                let xm = xt.iter().fold(0f32, |a, v| a.max(v.abs()));
                for r in 0..rows {
                    let wr = &w[r * cols..][..cols];
                    let wm = wr.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let dense: f64 = wr.iter().zip(xt).map(|(a, b)| f64::from(a * b)).sum();
                    let rel = 1.0 / (2.0 * f64::from(levels)) + 1.0 / 254.0;
                    let bound = f64::from(wm * xm) * rel * cols as f64;
                    let got = f64::from(want[t * rows + r]);
                    assert!(
                        (got - dense).abs() <= bound,
                        "{rows}x{cols}: {got} vs {dense}"
                    );
                }
            }
        }
        for r in 0..rows {
            for (c, v) in m.row(r).into_iter().enumerate() {
                let d = step(&m, r, c);
                assert!((v - w[r * cols + c]).abs() <= 0.5 * d * 1.0001 + 1e-6);
            }
        }
        let mut stacked = m.clone();
        stacked.append(m.clone());
        assert_eq!(stacked.row(rows), m.row(0));
    }
}

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

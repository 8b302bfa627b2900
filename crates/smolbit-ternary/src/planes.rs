//! Multi-plane ternary: `W ≈ Σ_k s_k ⊙ T_k`, trits in {-1, 0, 1}, one scale per plane and group.
//!
//! Fitting alternates two exact steps, so the (weighted) error never increases:
//! 1. trits given scales: each element independently takes the combination of `K` trits whose
//!    value `Σ_k s_k t_k` is nearest (the `3^K` candidate values are sorted once per group);
//! 2. scales given trits: weighted least squares per group (a `K x K` system).
//!
//! Initialization is greedy on the residual (absmean trits, then a least-squares scale). With
//! `importance = Some(d)` (the mean square of each input channel over calibration activations) the
//! least squares minimize `Σ_j d_j (w_j - ŵ_j)^2`, the expected output error under a diagonal
//! input covariance; step 1 is unchanged because each element's error is scaled by its own `d_j`.

use crate::absmean::{absmean_scale, trit};
use crate::{Granularity, TernaryMatrix};

/// Fitting settings.
#[derive(Debug, Clone, Copy)]
pub struct PlaneOptions {
    /// Trit planes, 1 to 3.
    pub planes: usize,
    /// Scale sharing.
    pub granularity: Granularity,
    /// Alternating iterations (stops early when no trit changes).
    pub iters: usize,
}

/// Solve `a x = b` for a small symmetric system (Gaussian elimination with partial pivoting and a
/// relative ridge so that planes that are all zero in a group get scale 0).
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, k: usize) -> Vec<f64> {
    let trace: f64 = (0..k).map(|i| a[i * k + i]).sum();
    for i in 0..k {
        a[i * k + i] += 1e-12 * trace.max(1e-30);
    }
    for col in 0..k {
        let piv = (col..k)
            .max_by(|&x, &y| a[x * k + col].abs().total_cmp(&a[y * k + col].abs()))
            .unwrap_or(col);
        if a[piv * k + col].abs() < 1e-300 {
            continue;
        }
        for j in 0..k {
            a.swap(col * k + j, piv * k + j);
        }
        b.swap(col, piv);
        for row in 0..k {
            if row != col {
                let f = a[row * k + col] / a[col * k + col];
                for j in 0..k {
                    a[row * k + j] -= f * a[col * k + j];
                }
                b[row] -= f * b[col];
            }
        }
    }
    (0..k)
        .map(|i| {
            if a[i * k + i].abs() < 1e-300 {
                0.0
            } else {
                b[i] / a[i * k + i]
            }
        })
        .collect()
}

/// Weighted least-squares scales for fixed trits `t` (`k` planes of `n` values).
fn fit_scales(w: &[f32], d: &[f32], t: &[i8], k: usize) -> Vec<f32> {
    let n = w.len();
    let mut a = vec![0f64; k * k];
    let mut b = vec![0f64; k];
    for j in 0..n {
        let dj = f64::from(d[j]);
        for p in 0..k {
            let tp = f64::from(t[p * n + j]);
            if tp == 0.0 {
                continue;
            }
            b[p] += dj * f64::from(w[j]) * tp;
            for q in 0..k {
                a[p * k + q] += dj * tp * f64::from(t[q * n + j]);
            }
        }
    }
    solve(a, b, k).into_iter().map(|s| s as f32).collect()
}

/// Nearest-combination trits for fixed scales; returns whether any trit changed.
fn assign_trits(w: &[f32], scales: &[f32], t: &mut [i8], k: usize) -> bool {
    let n = w.len();
    let combos = 3usize.pow(k as u32);
    let mut cand: Vec<(f32, usize)> = (0..combos)
        .map(|m| {
            let mut v = 0f32;
            let mut x = m;
            for s in scales.iter().take(k) {
                v += ((x % 3) as f32 - 1.0) * s;
                x /= 3;
            }
            (v, m)
        })
        .collect();
    cand.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut changed = false;
    for j in 0..n {
        let x = w[j];
        let pos = cand.partition_point(|c| c.0 < x);
        let best = match (pos.checked_sub(1), cand.get(pos)) {
            (Some(lo), Some(hi)) => {
                if (x - cand[lo].0).abs() <= (hi.0 - x).abs() {
                    cand[lo].1
                } else {
                    hi.1
                }
            }
            (Some(lo), None) => cand[lo].1,
            (None, Some(hi)) => hi.1,
            (None, None) => 0,
        };
        let mut m = best;
        for p in 0..k {
            let tv = (m % 3) as i8 - 1;
            m /= 3;
            if t[p * n + j] != tv {
                t[p * n + j] = tv;
                changed = true;
            }
        }
    }
    changed
}

/// Fit `k` planes to one group of values with per-value weights `d`.
pub fn fit_group(w: &[f32], d: &[f32], k: usize, iters: usize) -> (Vec<i8>, Vec<f32>) {
    let n = w.len();
    let mut t = vec![0i8; k * n];
    let mut scales = vec![0f32; k];
    let mut residual = w.to_vec();
    for p in 0..k {
        let inv = 1.0 / absmean_scale(residual.iter());
        for j in 0..n {
            t[p * n + j] = trit(residual[j], inv);
        }
        let s = fit_scales(&residual, d, &t[p * n..(p + 1) * n], 1)[0];
        scales[p] = s;
        for j in 0..n {
            residual[j] -= s * f32::from(t[p * n + j]);
        }
    }
    for _ in 0..iters {
        scales = fit_scales(w, d, &t, k);
        if !assign_trits(w, &scales, &mut t, k) {
            break;
        }
    }
    scales = fit_scales(w, d, &t, k);
    (t, scales)
}

/// One fitted row: its index and, per scale group, (scale index, columns, trits, scales).
type FittedRow = (
    usize,
    Vec<(usize, std::ops::Range<usize>, Vec<i8>, Vec<f32>)>,
);

/// Quantize a `[rows, cols]` matrix into `opts.planes` trit planes. `importance`, when given, has
/// one weight per input column.
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    opts: PlaneOptions,
    importance: Option<&[f32]>,
) -> TernaryMatrix {
    assert_eq!(
        w.len(),
        rows * cols,
        "planes::quantize: {} values for {rows}x{cols}",
        w.len()
    );
    assert!((1..=3).contains(&opts.planes), "1 to 3 planes");
    if let Some(d) = importance {
        assert_eq!(d.len(), cols, "one importance weight per input column");
    }
    let k = opts.planes;
    let n = rows * cols;
    let per_plane = opts.granularity.scales_per_plane(rows, cols);
    let mut trits = vec![0i8; k * n];
    let mut scales = vec![0f32; k * per_plane];
    let ones = vec![1f32; cols];
    let d_row = importance.unwrap_or(&ones);
    if opts.granularity == Granularity::Tensor {
        let d: Vec<f32> = (0..rows).flat_map(|_| d_row.iter().copied()).collect();
        let (t, s) = fit_group(w, &d, k, opts.iters);
        trits.copy_from_slice(&t);
        scales.copy_from_slice(&s);
    } else {
        // Rows are independent: split them over the available cores.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(rows.max(1));
        let chunk = rows.div_ceil(threads);
        let results: Vec<Vec<FittedRow>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|ti| {
                    let gran = opts.granularity;
                    scope.spawn(move || {
                        (ti * chunk..((ti + 1) * chunk).min(rows))
                            .map(|r| {
                                let row = &w[r * cols..(r + 1) * cols];
                                let segs = gran
                                    .segments(r, cols)
                                    .into_iter()
                                    .map(|(idx, range)| {
                                        let (t, s) = fit_group(
                                            &row[range.clone()],
                                            &d_row[range.clone()],
                                            k,
                                            opts.iters,
                                        );
                                        (idx, range, t, s)
                                    })
                                    .collect();
                                (r, segs)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("quantizer thread panicked"))
                .collect()
        });
        for (r, segs) in results.into_iter().flatten() {
            for (idx, range, t, s) in segs {
                let len = range.len();
                for p in 0..k {
                    scales[p * per_plane + idx] = s[p];
                    trits[p * n + r * cols + range.start..p * n + r * cols + range.end]
                        .copy_from_slice(&t[p * len..(p + 1) * len]);
                }
            }
        }
    }
    TernaryMatrix {
        rows,
        cols,
        planes: k,
        granularity: opts.granularity,
        trits,
        scales,
    }
}

/// Round group scales to 8 bits: per plane and row, `s = code * row_scale / 127` with
/// `code ∈ [-127, 127]` and `row_scale = max |s|` over the row's groups; then re-assign the trits
/// to the rounded scales (the trit step of the alternation), so the matrix stays consistent.
/// Returns the per-(plane, row) `row_scale`s; `m.scales` then holds the rounded scales.
pub fn round_scales_8bit(m: &mut TernaryMatrix, w: &[f32]) -> Vec<f32> {
    let Granularity::Group(g) = m.granularity else {
        return Vec::new();
    };
    let (rows, cols, k) = (m.rows, m.cols, m.planes);
    let groups = cols.div_ceil(g);
    let per_plane = rows * groups;
    let mut row_scales = vec![0f32; k * rows];
    for p in 0..k {
        for r in 0..rows {
            let s = &mut m.scales[p * per_plane + r * groups..p * per_plane + (r + 1) * groups];
            let max = s.iter().fold(0f32, |a, v| a.max(v.abs()));
            row_scales[p * rows + r] = max;
            for v in s.iter_mut() {
                *v = if max > 0.0 {
                    (*v / max * 127.0).round_ties_even().clamp(-127.0, 127.0) * max / 127.0
                } else {
                    0.0
                };
            }
        }
    }
    let n = rows * cols;
    for r in 0..rows {
        for gi in 0..groups {
            let range = gi * g..((gi + 1) * g).min(cols);
            let len = range.len();
            let seg = &w[r * cols + range.start..r * cols + range.end];
            let scales: Vec<f32> = (0..k)
                .map(|p| m.scales[p * per_plane + r * groups + gi])
                .collect();
            let mut t = vec![0i8; k * len];
            assign_trits(seg, &scales, &mut t, k);
            for p in 0..k {
                m.trits[p * n + r * cols + range.start..p * n + r * cols + range.end]
                    .copy_from_slice(&t[p * len..(p + 1) * len]);
            }
        }
    }
    row_scales
}

/// The 8-bit code of each scale given its row scale (inverse of [`round_scales_8bit`]'s rounding).
pub fn scale_codes(m: &TernaryMatrix, row_scales: &[f32]) -> Vec<i8> {
    let per_plane = m.scales_per_plane();
    let per_row = per_plane / m.rows.max(1);
    m.scales
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let (p, r) = (i / per_plane, i % per_plane / per_row.max(1));
            let max = row_scales[p * m.rows + r];
            if max > 0.0 {
                (s / max * 127.0).round_ties_even().clamp(-127.0, 127.0) as i8
            } else {
                0
            }
        })
        .collect()
}

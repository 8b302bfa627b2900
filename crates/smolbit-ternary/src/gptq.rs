//! GPTQ-style error feedback for multi-plane ternary (Frantar et al. 2022, "GPTQ"; OBQ before it).
//!
//! Columns are quantized left to right; the error each column makes is pushed onto the columns
//! not yet quantized through the inverse Hessian `H = XᵀX` of the layer's calibration inputs, so
//! later columns compensate for earlier rounding. Per row and group, the plane scales are fitted
//! (by the least squares of [`crate::planes`], weighted by `diag(H)`) on the already-updated weights
//! when the sweep reaches the group's first column; each element then takes the nearest
//! combination of trits. Rows are independent given `H`, so they are split over threads.

use crate::planes::fit_group;
use crate::{Granularity, TernaryMatrix};

/// Why the Hessian could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GptqError {
    /// `H` is not `cols x cols`.
    #[error("hessian has {got} entries, expected {cols}x{cols}")]
    Shape {
        /// Entries given.
        got: usize,
        /// Columns.
        cols: usize,
    },
    /// Cholesky failed even after damping.
    #[error("hessian is not positive definite after damping")]
    NotPositiveDefinite,
}

/// In-place lower Cholesky factor of a symmetric `n x n` matrix (row-major); `false` if not
/// positive definite.
fn cholesky(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
        for k in j + 1..n {
            a[j * n + k] = 0.0;
        }
    }
    true
}

/// `H^{-1}` from its lower Cholesky factor `L` (`H = L Lᵀ`).
fn inverse_from_cholesky(l: &[f64], n: usize) -> Vec<f64> {
    // Linv = L^{-1} (lower), column by column by forward substitution.
    let mut linv = vec![0f64; n * n];
    for c in 0..n {
        linv[c * n + c] = 1.0 / l[c * n + c];
        for i in c + 1..n {
            let mut s = 0.0;
            for k in c..i {
                s -= l[i * n + k] * linv[k * n + c];
            }
            linv[i * n + c] = s / l[i * n + i];
        }
    }
    // H^{-1} = Linvᵀ Linv
    let mut inv = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = 0.0;
            for k in i.max(j)..n {
                s += linv[k * n + i] * linv[k * n + j];
            }
            inv[i * n + j] = s;
            inv[j * n + i] = s;
        }
    }
    inv
}

/// The upper factor `U` with `H^{-1} = Uᵀ U`, as GPTQ uses it (`cholesky(cholesky_inverse(L), upper=True)`).
fn inverse_upper_factor(h: &[f32], n: usize, damp: f64) -> Result<Vec<f64>, GptqError> {
    let mut a: Vec<f64> = h.iter().map(|&x| f64::from(x)).collect();
    let mean_diag = (0..n).map(|i| a[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n {
        if a[i * n + i] <= 0.0 {
            a[i * n + i] = 1.0;
        }
        a[i * n + i] += damp * mean_diag.max(1e-12);
    }
    if !cholesky(&mut a, n) {
        return Err(GptqError::NotPositiveDefinite);
    }
    let mut inv = inverse_from_cholesky(&a, n);
    if !cholesky(&mut inv, n) {
        return Err(GptqError::NotPositiveDefinite);
    }
    // inv now holds lower L2 with H^{-1} = L2 L2ᵀ; U = L2ᵀ.
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = inv[i * n + j];
        }
    }
    Ok(u)
}

/// Quantize `w: [rows, cols]` into `planes` trit planes with group scales of `group` columns,
/// using the calibration Hessian `h = XᵀX` (`cols x cols`, any positive scale).
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    planes: usize,
    group: usize,
    h: &[f32],
    iters: usize,
) -> Result<TernaryMatrix, GptqError> {
    if h.len() != cols * cols {
        return Err(GptqError::Shape { got: h.len(), cols });
    }
    let u = inverse_upper_factor(h, cols, 0.01)?;
    let diag: Vec<f32> = (0..cols)
        .map(|i| h[i * cols + i].max(0.0) + 1e-12)
        .collect();
    let n_groups = cols.div_ceil(group);
    let n = rows * cols;
    let mut trits = vec![0i8; planes * n];
    let mut scales = vec![0f32; planes * rows * n_groups];

    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(rows.max(1));
    let chunk = rows.div_ceil(threads);
    let results: Vec<Vec<RowResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|ti| {
                let (u, diag) = (&u, &diag);
                scope.spawn(move || {
                    (ti * chunk..((ti + 1) * chunk).min(rows))
                        .map(|r| {
                            quantize_row(
                                &w[r * cols..(r + 1) * cols],
                                planes,
                                group,
                                u,
                                diag,
                                iters,
                            )
                        })
                        .enumerate()
                        .map(|(i, (t, s))| (ti * chunk + i, t, s))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("gptq thread panicked"))
            .collect()
    });
    for (r, t, s) in results.into_iter().flatten() {
        for p in 0..planes {
            trits[p * n + r * cols..p * n + (r + 1) * cols]
                .copy_from_slice(&t[p * cols..(p + 1) * cols]);
            for g in 0..n_groups {
                scales[p * rows * n_groups + r * n_groups + g] = s[g * planes + p];
            }
        }
    }
    Ok(TernaryMatrix {
        rows,
        cols,
        planes,
        granularity: Granularity::Group(group),
        trits,
        scales,
    })
}

/// A quantized row: its index, trits `[planes, cols]`, scales `[groups, planes]`.
type RowResult = (usize, Vec<i8>, Vec<f32>);

/// One row's sweep: returns trits `[planes, cols]` and scales `[groups, planes]`.
fn quantize_row(
    row: &[f32],
    planes: usize,
    group: usize,
    u: &[f64],
    diag: &[f32],
    iters: usize,
) -> (Vec<i8>, Vec<f32>) {
    let cols = row.len();
    let mut w: Vec<f64> = row.iter().map(|&x| f64::from(x)).collect();
    let mut t = vec![0i8; planes * cols];
    let mut all_scales = Vec::new();
    let mut cand: Vec<(f64, usize)> = Vec::new();
    for i in 0..cols {
        if i % group == 0 {
            let end = (i + group).min(cols);
            let seg: Vec<f32> = w[i..end].iter().map(|&x| x as f32).collect();
            let (_, s) = fit_group(&seg, &diag[i..end], planes, iters);
            all_scales.extend_from_slice(&s);
            let combos = 3usize.pow(planes as u32);
            cand = (0..combos)
                .map(|m| {
                    let mut v = 0f64;
                    let mut x = m;
                    for sk in &s {
                        v += ((x % 3) as f64 - 1.0) * f64::from(*sk);
                        x /= 3;
                    }
                    (v, m)
                })
                .collect();
            cand.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        let x = w[i];
        let (q, m) = cand
            .iter()
            .min_by(|a, b| (a.0 - x).abs().total_cmp(&(b.0 - x).abs()))
            .copied()
            .unwrap_or((0.0, 0));
        let mut mm = m;
        for p in 0..planes {
            t[p * cols + i] = (mm % 3) as i8 - 1;
            mm /= 3;
        }
        let err = (x - q) / u[i * cols + i];
        for j in i + 1..cols {
            w[j] -= err * u[i * cols + j];
        }
    }
    (t, all_scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_factor_is_exact() {
        // H = [[4, 2], [2, 3]]: H^{-1} = [[3, -2], [-2, 4]] / 8.
        let u = inverse_upper_factor(&[4.0, 2.0, 2.0, 3.0], 2, 0.0).expect("pd");
        let inv = [
            u[0] * u[0],
            u[0] * u[1],
            u[1] * u[0],
            u[1] * u[1] + u[3] * u[3],
        ];
        for (a, b) in inv
            .iter()
            .zip([3.0 / 8.0, -2.0 / 8.0, -2.0 / 8.0, 4.0 / 8.0])
        {
            assert!((a - b).abs() < 1e-12, "{inv:?}");
        }
        assert_eq!(u[2], 0.0, "upper triangular");
    }
}

//! The student's initial state: the post-training fit of the scheme (what `smolbit quantize`
//! writes without calibration), with latent weights that reproduce it.
//!
//! The latent weights start at the teacher's weights, moved only where the fit chose other trits
//! than the nearest ones (alternating least squares ends on a scale update): such a weight is
//! clamped just inside the interval of values whose nearest trit combination is the fitted one.
//! So the first forward pass uses exactly the post-training trits and scales, and training
//! starts from the post-training checkpoint.

use smolbit_ternary::TernaryMatrix;

/// The latent weights of `m`, as close to `w` as possible while every weight's nearest trit
/// combination under `m`'s scales stays `m`'s (margin: 1 % of the interval's half-width).
pub(crate) fn consistent_latent(w: &[f32], m: &TernaryMatrix) -> Vec<f32> {
    let (rows, cols, k) = (m.rows, m.cols, m.planes);
    let n = rows * cols;
    let per_plane = m.scales_per_plane();
    let mut out = w.to_vec();
    let mut cache: Option<(usize, Vec<f32>)> = None;
    for r in 0..rows {
        for c in 0..cols {
            let si = m.granularity.scale_index(r, c, cols);
            if cache.as_ref().is_none_or(|(i, _)| *i != si) {
                let scales: Vec<f32> = (0..k).map(|p| m.scales[p * per_plane + si]).collect();
                let mut vals: Vec<f32> = (0..3usize.pow(k as u32))
                    .map(|combo| value(combo, &scales))
                    .collect();
                vals.sort_by(f32::total_cmp);
                vals.dedup();
                cache = Some((si, vals));
            }
            let Some((_, vals)) = cache.as_ref() else {
                continue;
            };
            let i = r * cols + c;
            let mut combo = 0;
            for p in (0..k).rev() {
                combo = combo * 3 + (m.trits[p * n + i] + 1) as usize;
            }
            let scales: Vec<f32> = (0..k).map(|p| m.scales[p * per_plane + si]).collect();
            let v = value(combo, &scales);
            let pos = vals.partition_point(|&x| x < v);
            let lo = pos.checked_sub(1).map(|j| (vals[j] + v) / 2.0);
            let hi = vals.get(pos + 1).map(|&x| (x + v) / 2.0);
            let x = out[i];
            let margin = |edge: f32| (v - edge).abs() * 0.02;
            if let Some(lo) = lo
                && x <= lo + margin(lo)
            {
                out[i] = lo + margin(lo);
            }
            if let Some(hi) = hi
                && x >= hi - margin(hi)
            {
                out[i] = hi - margin(hi);
            }
        }
    }
    out
}

/// `Σ_p s_p t_p` for the trit combination `combo` (plane `p`'s trit is digit `p` minus one), in
/// the order the training network sums it.
fn value(combo: usize, scales: &[f32]) -> f32 {
    let mut v = 0f32;
    let mut x = combo;
    for s in scales {
        v += ((x % 3) as f32 - 1.0) * s;
        x /= 3;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use smolbit_ternary::Granularity;

    #[test]
    fn latent_moves_only_weights_whose_nearest_combination_differs() {
        // Two planes, one group: scales 1.0 and 0.4. Values: -1.4 -1 -0.6 -0.4 0 0.4 0.6 1 1.4.
        let m = TernaryMatrix {
            rows: 1,
            cols: 3,
            planes: 2,
            granularity: Granularity::Tensor,
            // Element 0 fitted as (1, 0) = 1.0, element 1 as (0, 1) = 0.4, element 2 as
            // (0, 0) = 0 although its weight 0.35 is nearest to 0.4.
            trits: vec![1, 0, 0, 0, 1, 0],
            scales: vec![1.0, 0.4],
        };
        let w = [0.95, 0.45, 0.35];
        let l = consistent_latent(&w, &m);
        assert_eq!(
            &l[..2],
            &w[..2],
            "weights already nearest to their fit stay"
        );
        // The interval of 0 is (-0.2, 0.2): 0.35 is clamped to 0.2 less 2 % of 0.2.
        assert!((l[2] - 0.196).abs() < 1e-6, "{}", l[2]);
    }
}

//! Causal grouped-query attention over a KV cache in host memory, for the CPU decoder path that
//! runs whole blocks next to the packed kernels.
//!
//! Per query: scores `q·k / sqrt(d)` over the positions up to its own, softmax (maximum
//! subtracted, `exp`, normalized by the sum), the weighted sum of values. AVX2 + FMA for head
//! dimensions that are multiples of 8 (picked at run time), a portable path otherwise; the two
//! agree to f32 rounding (tested against an f64 reference).

use rayon::prelude::*;

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (each serves `n_heads / n_kv` query heads, as transformers' `repeat_kv`).
    pub n_kv: usize,
    /// Head dimension.
    pub d: usize,
}

/// Causal attention of `t` new positions (`q: [t, n_heads * d]`, after RoPE) starting at
/// position `past`, against cached keys and values `[past + t, n_kv * d]` (position-major);
/// returns `[t, n_heads * d]`. Per query: scores `q·k / sqrt(d)` over positions up to its own,
/// softmax (max subtracted), the weighted sum of values. Queries run in parallel on rayon's
/// pool when there is enough work to share.
pub fn attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    t: usize,
    past: usize,
    h: Heads,
) -> Vec<f32> {
    let Heads { n_heads, n_kv, d } = h;
    let width = n_heads * d;
    assert_eq!(q.len(), t * width, "queries must be [t, heads * d]");
    let s = past + t;
    assert!(keys.len() >= s * n_kv * d && values.len() >= s * n_kv * d);
    let group = n_heads / n_kv;
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let mut out = vec![0f32; t * width];
    let one = |i: usize, o: &mut [f32], scores: &mut Vec<f32>| {
        let (ti, head) = (i / n_heads, i % n_heads);
        let kv = head / group;
        let n = past + ti + 1;
        let qh = &q[ti * width + head * d..][..d];
        scores.clear();
        scores.resize(n, 0.0);
        attend(qh, keys, values, n_kv * d, kv * d, scale, scores, o);
    };
    // About 2 · s · d multiply-adds per query head: share them out when a task gets a few
    // thousand at least.
    let work = t * n_heads * s * d;
    if work >= 1 << 16 {
        out.par_chunks_mut(d)
            .enumerate()
            .for_each_init(Vec::new, |scores, (i, o)| one(i, o, scores));
    } else {
        let mut scores = Vec::new();
        for (i, o) in out.chunks_mut(d).enumerate() {
            one(i, o, &mut scores);
        }
    }
    out
}

/// One query against the first `scores.len()` positions of the cache (rows of `stride` floats,
/// this head's keys/values at `offset`), into `out` (`d` long).
#[allow(clippy::too_many_arguments)]
fn attend(
    qh: &[f32],
    keys: &[f32],
    values: &[f32],
    stride: usize,
    offset: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (n, d) = (scores.len(), qh.len());
    assert!(out.len() == d && offset + d <= stride);
    assert!(keys.len() >= n * stride && values.len() >= n * stride);
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(8) && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just now); the shapes were checked above.
        unsafe { x86::attend(qh, keys, values, stride, offset, scale, scores, out) };
        return;
    }
    let key = |j: usize| &keys[j * stride + offset..][..d];
    let mut max = f32::NEG_INFINITY;
    for (j, sc) in scores.iter_mut().enumerate() {
        *sc = crate::kernels::dot_f32_portable(qh, key(j)) * scale;
        max = max.max(*sc);
    }
    let sum = exp_shifted(scores, max);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        let v = &values[j * stride + offset..][..d];
        for (o, &vi) in out.iter_mut().zip(v) {
            *o += p * vi;
        }
    }
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// `s ← exp(s − max)` for every score; returns their sum.
fn exp_shifted(scores: &mut [f32], max: f32) -> f32 {
    let mut sum = 0f32;
    for sc in scores.iter_mut() {
        *sc = (*sc - max).exp();
        sum += *sc;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::ops::x86::exp8;

    /// `s ← exp(s − max)` for every score, eight at a time ([`exp8`]), the rest with `f32::exp`;
    /// returns their sum.
    #[target_feature(enable = "avx2,fma")]
    fn exp_shifted(scores: &mut [f32], max: f32) -> f32 {
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut chunks = scores.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: c holds eight floats.
            unsafe {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
        }
        let mut lanes = [0f32; 8];
        // SAFETY: eight floats into an array of eight.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        lanes.iter().sum::<f32>() + super::exp_shifted(chunks.into_remainder(), max)
    }

    /// [`super::attend`] with AVX2 + FMA for `d` a multiple of 8: scores four positions at a
    /// time (four independent FMA chains), the weighted sum of values 64 columns at a time
    /// (eight accumulators held in registers across all positions).
    ///
    /// Safety: AVX2 and FMA present; `d = qh.len()` a multiple of 8, `out.len() == d`, and
    /// `scores.len()` rows of `stride` floats in `keys` and `values` with `offset + d <= stride`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attend(
        qh: &[f32],
        keys: &[f32],
        values: &[f32],
        stride: usize,
        offset: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let (n, d) = (scores.len(), qh.len());
        let (qp, kp, vp) = (qh.as_ptr(), keys.as_ptr(), values.as_ptr());
        let hsum = |v: __m256| {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        };
        let mut max = f32::NEG_INFINITY;
        // Four rows at a time with straight-line code (the accumulators stay in registers),
        // then one at a time.
        let full = n - n % 4;
        for j in (0..full).step_by(4) {
            let mut acc = [_mm256_setzero_ps(); 4];
            for c in (0..d).step_by(8) {
                // SAFETY: c + 8 <= d; rows j..j + 4 <= n are in keys (the caller's contract).
                unsafe {
                    let qv = _mm256_loadu_ps(qp.add(c));
                    let k = kp.add(j * stride + offset + c);
                    acc[0] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k), acc[0]);
                    acc[1] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.add(stride)), acc[1]);
                    acc[2] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.add(2 * stride)), acc[2]);
                    acc[3] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.add(3 * stride)), acc[3]);
                }
            }
            for (r, a) in acc.into_iter().enumerate() {
                let s = hsum(a) * scale;
                scores[j + r] = s;
                max = max.max(s);
            }
        }
        for (j, sc) in scores.iter_mut().enumerate().skip(full) {
            let mut acc = _mm256_setzero_ps();
            for c in (0..d).step_by(8) {
                // SAFETY: as above, row j < n.
                unsafe {
                    let kv = _mm256_loadu_ps(kp.add(j * stride + offset + c));
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), kv, acc);
                }
            }
            *sc = hsum(acc) * scale;
            max = max.max(*sc);
        }
        let inv = _mm256_set1_ps(1.0 / exp_shifted(scores, max));
        // Values: 64 columns at a time in eight accumulators, then 8 at a time.
        let wide = d - d % 64;
        for c0 in (0..wide).step_by(64) {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (j, &p) in scores.iter().enumerate() {
                let pv = _mm256_set1_ps(p);
                // SAFETY: row j < n of values; columns c0 .. c0 + 64 <= d.
                unsafe {
                    let row = vp.add(j * stride + offset + c0);
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(pv, _mm256_loadu_ps(row.add(8 * i)), *a);
                    }
                }
            }
            for (i, a) in acc.into_iter().enumerate() {
                // SAFETY: c0 + 8i + 8 <= d = out.len().
                unsafe {
                    _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * i), _mm256_mul_ps(a, inv))
                };
            }
        }
        for c in (wide..d).step_by(8) {
            let mut acc = _mm256_setzero_ps();
            for (j, &p) in scores.iter().enumerate() {
                // SAFETY: row j < n of values; columns c .. c + 8 <= d.
                unsafe {
                    let v = _mm256_loadu_ps(vp.add(j * stride + offset + c));
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(p), v, acc);
                }
            }
            // SAFETY: c + 8 <= d = out.len().
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c), _mm256_mul_ps(acc, inv)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward f64 attention: the reference.
    fn reference(q: &[f32], k: &[f32], v: &[f32], t: usize, past: usize, h: Heads) -> Vec<f64> {
        let Heads { n_heads, n_kv, d } = h;
        let mut out = vec![0f64; t * n_heads * d];
        for ti in 0..t {
            for head in 0..n_heads {
                let kv = head / (n_heads / n_kv);
                let n = past + ti + 1;
                let qh = &q[(ti * n_heads + head) * d..][..d];
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        let kj = &k[(j * n_kv + kv) * d..][..d];
                        let s: f64 = qh.iter().zip(kj).map(|(&a, &b)| f64::from(a * b)).sum();
                        s / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    let vj = &v[(j * n_kv + kv) * d..][..d];
                    for (i, &x) in vj.iter().enumerate() {
                        out[(ti * n_heads + head) * d + i] += ej / sum * f64::from(x);
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    /// Both paths (AVX2 where the CPU has it, and the portable one through an odd head
    /// dimension) against f64, for prefill (many queries, parallel) and decode (one query) with
    /// a cache of awkward length. Tolerance 1e-5 absolute on outputs of magnitude ~1: f32
    /// rounding of d-term dot products and an S-term weighted sum (~1e-6 observed).
    #[test]
    fn matches_an_f64_reference() {
        for (n_heads, n_kv, d) in [(9, 3, 64), (4, 1, 128), (2, 2, 24), (3, 1, 13)] {
            let h = Heads { n_heads, n_kv, d };
            for (t, past) in [(1, 0), (1, 37), (19, 0), (5, 70)] {
                let s = past + t;
                let q = values(t * n_heads * d, 1);
                let k = values(s * n_kv * d, 2);
                let v = values(s * n_kv * d, 3);
                let got = attention(&q, &k, &v, t, past, h);
                let want = reference(&q, &k, &v, t, past, h);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(&a, &b)| (f64::from(a) - b).abs())
                    .fold(0f64, f64::max);
                assert!(worst < 1e-5, "{h:?} t={t} past={past}: max |diff| {worst}");
            }
        }
    }
}

//! Causal grouped-query attention over a KV cache in host memory, for the CPU decoder path that
//! runs whole blocks next to the packed kernels.
//!
//! Per query: scores `q·k / sqrt(d)` over the positions up to its own, softmax (maximum
//! subtracted, `exp`, normalized by the sum), the weighted sum of values. AVX2 + FMA for head
//! dimensions that are multiples of 8 (picked at run time), a portable path otherwise; the two
//! agree to f32 rounding (tested against an f64 reference).
//!
//! The cache holds f32 or binary16 ([`KvElement`]): f16 halves its memory (a 3B-shaped model's
//! 147 KB a position becomes 74 KB) and the bytes attention reads per token; keys and values
//! are rounded to f16 once, when cached, and widened to f32 as they are read (`vcvtph2ps` with
//! F16C), so all arithmetic stays f32.

use half::f16;
use rayon::prelude::*;

/// An element of the KV cache: `f32`, or `half::f16` (rounded to nearest even when cached).
pub trait KvElement: Copy + Send + Sync + 'static {
    /// Whether this is binary16 (read with `vcvtph2ps`).
    const HALF: bool;
    /// The value as f32.
    fn to_f32(self) -> f32;
    /// `Σ q·k` on the portable path (f32 rows directly, f16 rows widened in pieces on the stack).
    fn dot(q: &[f32], k: &[Self]) -> f32;
    /// Append `src` converted to this type (binary16: eight at a time with `vcvtps2ph` where
    /// the CPU has F16C, through `half`'s slice conversion).
    fn extend_from_f32(dst: &mut Vec<Self>, src: &[f32]);
    /// [`attention`] over a cache of this type. A method of the two concrete types, so that
    /// the kernels are compiled here, with this crate's settings: a generic function is compiled
    /// in the crate that calls it, where debug builds keep `core`'s pointer checks (a stack
    /// round trip on every vector load, the hottest instructions under perf).
    fn attention(
        q: &[f32],
        keys: &[Self],
        values: &[Self],
        t: usize,
        past: usize,
        h: Heads,
    ) -> Vec<f32>;
}

impl KvElement for f32 {
    const HALF: bool = false;
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        crate::kernels::dot_f32_portable(q, k)
    }
    fn extend_from_f32(dst: &mut Vec<f32>, src: &[f32]) {
        dst.extend_from_slice(src);
    }
    fn attention(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        t: usize,
        past: usize,
        h: Heads,
    ) -> Vec<f32> {
        attention_impl(q, keys, values, t, past, h)
    }
}

impl KvElement for f16 {
    const HALF: bool = true;
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn dot(q: &[f32], k: &[f16]) -> f32 {
        use half::slice::HalfFloatSliceExt;
        let mut buf = [0f32; 64];
        q.chunks(64)
            .zip(k.chunks(64))
            .map(|(q, k)| {
                let b = &mut buf[..k.len()];
                k.convert_to_f32_slice(b);
                crate::kernels::dot_f32_portable(q, b)
            })
            .sum()
    }
    fn extend_from_f32(dst: &mut Vec<f16>, src: &[f32]) {
        use half::slice::HalfFloatSliceExt;
        let start = dst.len();
        dst.resize(start + src.len(), f16::ZERO);
        dst[start..].convert_from_f32_slice(src);
    }
    fn attention(
        q: &[f32],
        keys: &[f16],
        values: &[f16],
        t: usize,
        past: usize,
        h: Heads,
    ) -> Vec<f32> {
        attention_impl(q, keys, values, t, past, h)
    }
}

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
pub fn attention<E: KvElement>(
    q: &[f32],
    keys: &[E],
    values: &[E],
    t: usize,
    past: usize,
    h: Heads,
) -> Vec<f32> {
    E::attention(q, keys, values, t, past, h)
}

/// [`attention`], instantiated in this crate by [`KvElement::attention`].
fn attention_impl<E: KvElement>(
    q: &[f32],
    keys: &[E],
    values: &[E],
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
    // The query heads that share a key/value head run together, up to four at a time, so that
    // each cached row is read once for all of them (a 1,024-token context read the cache once
    // per query head before: three times for SmolLM2, four for SmolLM3).
    let sub = [4, 3, 2, 1]
        .into_iter()
        .find(|g| group.is_multiple_of(*g))
        .unwrap_or(1);
    let mut out = vec![0f32; t * width];
    let one = |i: usize, o: &mut [f32], scores: &mut Vec<f32>| {
        // Unit i: token ti, query heads h0 .. h0 + sub (one key/value head's).
        let per_token = n_heads / sub;
        let (ti, h0) = (i / per_token, (i % per_token) * sub);
        let kv = h0 / group;
        let n = past + ti + 1;
        let qs = &q[ti * width + h0 * d..][..sub * d];
        scores.clear();
        scores.resize(sub * n, 0.0);
        attend_group(qs, keys, values, (n_kv * d, kv * d, d), scale, scores, o);
    };
    // About 2 · s · d multiply-adds per query head: share them out when a task gets a few
    // thousand at least.
    let work = t * n_heads * s * d;
    if work >= 1 << 16 {
        out.par_chunks_mut(sub * d)
            .enumerate()
            .for_each_init(Vec::new, |scores, (i, o)| one(i, o, scores));
    } else {
        let mut scores = Vec::new();
        for (i, o) in out.chunks_mut(sub * d).enumerate() {
            one(i, o, &mut scores);
        }
    }
    out
}

/// `qs.len() / d` query heads (1 to 4) that share one key/value head, against the first
/// `scores.len() / heads` positions of the cache (rows of `stride` elements, this head's at
/// `offset`: `layout = (stride, offset, d)`), into `out` (`[heads, d]`); `scores` holds
/// `[heads, positions]`. AVX2 runs the heads together (each cached row read once); otherwise
/// they run one at a time through the portable [`attend`].
fn attend_group<E: KvElement>(
    qs: &[f32],
    keys: &[E],
    values: &[E],
    layout: (usize, usize, usize),
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (stride, offset, d) = layout;
    let heads = out.len() / d;
    let n = scores.len() / heads;
    assert!((1..=4).contains(&heads) && heads * d == out.len() && qs.len() == out.len());
    assert!(scores.len() == heads * n && offset + d <= stride);
    assert!(keys.len() >= n * stride && values.len() >= n * stride);
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(8)
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just now); the shapes were checked
        // above.
        unsafe {
            let (k, v) = (keys, values);
            match heads {
                1 => x86::attend_heads::<E, 1>(qs, k, v, stride, offset, scale, scores, out),
                2 => x86::attend_heads::<E, 2>(qs, k, v, stride, offset, scale, scores, out),
                3 => x86::attend_heads::<E, 3>(qs, k, v, stride, offset, scale, scores, out),
                _ => x86::attend_heads::<E, 4>(qs, k, v, stride, offset, scale, scores, out),
            }
        }
        return;
    }
    for ((qh, o), sc) in qs
        .chunks_exact(d)
        .zip(out.chunks_exact_mut(d))
        .zip(scores.chunks_exact_mut(n))
    {
        attend(qh, keys, values, stride, offset, scale, sc, o);
    }
}

/// One query against the first `scores.len()` positions of the cache (rows of `stride` elements,
/// this head's keys/values at `offset`), into `out` (`d` long): the portable path.
#[allow(clippy::too_many_arguments)]
fn attend<E: KvElement>(
    qh: &[f32],
    keys: &[E],
    values: &[E],
    stride: usize,
    offset: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (n, d) = (scores.len(), qh.len());
    assert!(out.len() == d && offset + d <= stride);
    assert!(keys.len() >= n * stride && values.len() >= n * stride);
    let mut max = f32::NEG_INFINITY;
    for (j, sc) in scores.iter_mut().enumerate() {
        *sc = E::dot(qh, &keys[j * stride + offset..][..d]) * scale;
        max = max.max(*sc);
    }
    let sum = exp_shifted(scores, max);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        let v = &values[j * stride + offset..][..d];
        for (o, &vi) in out.iter_mut().zip(v) {
            *o += p * vi.to_f32();
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

    use super::KvElement;
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

    /// Eight cached elements at `p` as f32 (binary16 widened with `vcvtph2ps`).
    ///
    /// Safety: AVX2 and F16C present; `p` points at eight elements in bounds.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn load8<E: KvElement>(p: *const E) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe {
            if E::HALF {
                _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>()))
            } else {
                _mm256_loadu_ps(p.cast::<f32>())
            }
        }
    }

    /// [`super::attend_group`] with AVX2 + FMA: `G` query heads that share a key/value head.
    /// Scores two positions at a time (2·G independent FMA chains, each key row loaded once for
    /// all heads), the weighted sum of values 16 columns at a time (each value row loaded once
    /// per 16 columns for all heads). Per head the sums run in the same order whatever `G`, so a
    /// head's result does not depend on the heads it runs with.
    ///
    /// Safety: AVX2, FMA and F16C present; `out.len() == qs.len() == G·d` with `d` a multiple of
    /// 8; `scores.len() == G·n` and `n` rows of `stride` elements in `keys` and `values` with
    /// `offset + d <= stride`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attend_heads<E: KvElement, const G: usize>(
        qs: &[f32],
        keys: &[E],
        values: &[E],
        stride: usize,
        offset: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let d = out.len() / G;
        let n = scores.len() / G;
        let (qp, kp, vp) = (qs.as_ptr(), keys.as_ptr(), values.as_ptr());
        let hsum = |v: __m256| {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        };
        let mut max = [f32::NEG_INFINITY; G];
        let pairs = n - n % 2;
        // This head's part of a cached row is `d` elements: fetched ahead, keys AHEAD rows
        // before they are scored and values while the keys are (read after the softmax). The
        // cache of a layer comes from beyond the last-level cache in decoding (the weights
        // stream through in between), and its rows are strided, so the loads stalled on memory
        // without this (`perf annotate`: two thirds of attention's samples on them). A
        // prefetch never faults.
        const AHEAD: usize = 8;
        let row_bytes = d * std::mem::size_of::<E>();
        let fetch = |base: *const E, row: usize| {
            let p = base.wrapping_add(row * stride + offset).cast::<i8>();
            for line in (0..row_bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line));
            }
        };
        for j in 0..AHEAD.min(n) {
            fetch(kp, j);
        }
        for j in (0..pairs).step_by(2) {
            for r in [j, j + 1] {
                fetch(kp, r + AHEAD);
                fetch(vp, r);
            }
            // Per head, the sums of rows j and j + 1.
            let mut acc = [[_mm256_setzero_ps(); 2]; G];
            for c in (0..d).step_by(8) {
                // SAFETY: c + 8 <= d; rows j, j + 1 < n; head h < G of qs.
                unsafe {
                    let k0 = load8(kp.add(j * stride + offset + c));
                    let k1 = load8(kp.add((j + 1) * stride + offset + c));
                    for (h, a) in acc.iter_mut().enumerate() {
                        let qv = _mm256_loadu_ps(qp.add(h * d + c));
                        a[0] = _mm256_fmadd_ps(qv, k0, a[0]);
                        a[1] = _mm256_fmadd_ps(qv, k1, a[1]);
                    }
                }
            }
            for (h, (a, m)) in acc.iter().zip(max.iter_mut()).enumerate() {
                for (r, &v) in a.iter().enumerate() {
                    let s = hsum(v) * scale;
                    scores[h * n + j + r] = s;
                    *m = m.max(s);
                }
            }
        }
        for j in pairs..n {
            let mut acc = [_mm256_setzero_ps(); G];
            for c in (0..d).step_by(8) {
                // SAFETY: as above, row j < n.
                unsafe {
                    let k = load8(kp.add(j * stride + offset + c));
                    for (h, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(h * d + c)), k, *a);
                    }
                }
            }
            for (h, &a) in acc.iter().enumerate() {
                let s = hsum(a) * scale;
                scores[h * n + j] = s;
                max[h] = max[h].max(s);
            }
        }
        let inv: [__m256; G] = std::array::from_fn(|h| {
            _mm256_set1_ps(1.0 / exp_shifted(&mut scores[h * n..][..n], max[h]))
        });
        // Values: 16 columns at a time (2·G accumulators), then 8.
        let mut c0 = 0;
        while c0 < d {
            let w = if d - c0 >= 16 { 2 } else { 1 };
            let mut acc = [[_mm256_setzero_ps(); 2]; G];
            for j in 0..n {
                // SAFETY: row j < n of values; columns c0 .. c0 + 8w <= d.
                unsafe {
                    let row = vp.add(j * stride + offset + c0);
                    let v0 = load8(row);
                    let v1 = if w == 2 { load8(row.add(8)) } else { v0 };
                    for (h, a) in acc.iter_mut().enumerate() {
                        let p = _mm256_set1_ps(*scores.get_unchecked(h * n + j));
                        a[0] = _mm256_fmadd_ps(p, v0, a[0]);
                        a[1] = _mm256_fmadd_ps(p, v1, a[1]);
                    }
                }
            }
            for (h, a) in acc.iter().enumerate() {
                for (i, &v) in a.iter().take(w).enumerate() {
                    // SAFETY: h·d + c0 + 8i + 8 <= G·d = out.len().
                    unsafe {
                        _mm256_storeu_ps(
                            out.as_mut_ptr().add(h * d + c0 + 8 * i),
                            _mm256_mul_ps(v, inv[h]),
                        )
                    };
                }
            }
            c0 += 8 * w;
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

    /// Largest absolute difference.
    fn max_diff(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .map(|(&a, &b)| (f64::from(a) - b).abs())
            .fold(0f64, f64::max)
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
                let worst = max_diff(&got, &want);
                assert!(worst < 1e-5, "{h:?} t={t} past={past}: max |diff| {worst}");
            }
        }
    }

    /// Running the query heads of a key/value head together gives each exactly what it gets
    /// alone (bit for bit), for groups of 1 to 4 heads, both cache types.
    #[test]
    fn grouped_heads_equal_single_heads_exactly() {
        fn check<E: KvElement>(conv: fn(f32) -> E) {
            for (heads, d) in [(1, 64), (2, 24), (3, 64), (4, 128), (3, 13)] {
                for n in [1, 2, 7, 70] {
                    let stride = 3 * d;
                    let offset = d;
                    let qs = values(heads * d, 1);
                    let k: Vec<E> = values(n * stride, 2).into_iter().map(conv).collect();
                    let v: Vec<E> = values(n * stride, 3).into_iter().map(conv).collect();
                    let mut scores = vec![0f32; heads * n];
                    let mut together = vec![0f32; heads * d];
                    let layout = (stride, offset, d);
                    attend_group(&qs, &k, &v, layout, 0.125, &mut scores, &mut together);
                    for h in 0..heads {
                        let mut sc = vec![0f32; n];
                        let mut alone = vec![0f32; d];
                        let qh = &qs[h * d..][..d];
                        attend_group(qh, &k, &v, layout, 0.125, &mut sc, &mut alone);
                        assert_eq!(
                            &together[h * d..][..d],
                            &alone[..],
                            "heads {heads} d {d} n {n}"
                        );
                    }
                }
            }
        }
        check::<f32>(|x| x);
        check::<f16>(f16::from_f32);
    }

    /// The f16 cache: both paths against the f64 reference computed from the same keys and
    /// values rounded to f16 (so only the kernel's own arithmetic is measured, with the f32
    /// test's tolerance), and against the f32 cache within f16's rounding: keys and values of
    /// magnitude up to 2 carry at most 2^-10 absolute error each, which moves scores and
    /// outputs by a few 1e-3 at most here (1e-2 bound).
    #[test]
    fn f16_cache_matches_the_reference_on_rounded_values() {
        for (n_heads, n_kv, d) in [(9, 3, 64), (4, 1, 128), (3, 1, 13)] {
            let h = Heads { n_heads, n_kv, d };
            for (t, past) in [(1, 0), (1, 37), (19, 0), (5, 70)] {
                let s = past + t;
                let q = values(t * n_heads * d, 1);
                let k = values(s * n_kv * d, 2);
                let v = values(s * n_kv * d, 3);
                let (kh, vh): (Vec<f16>, Vec<f16>) = (
                    k.iter().map(|&x| f16::from_f32(x)).collect(),
                    v.iter().map(|&x| f16::from_f32(x)).collect(),
                );
                let (kr, vr): (Vec<f32>, Vec<f32>) = (
                    kh.iter().map(|x| x.to_f32()).collect(),
                    vh.iter().map(|x| x.to_f32()).collect(),
                );
                let got = attention(&q, &kh, &vh, t, past, h);
                let want = reference(&q, &kr, &vr, t, past, h);
                let worst = max_diff(&got, &want);
                assert!(worst < 1e-5, "{h:?} t={t} past={past}: max |diff| {worst}");
                let full: Vec<f64> = attention(&q, &k, &v, t, past, h)
                    .into_iter()
                    .map(f64::from)
                    .collect();
                let drift = max_diff(&got, &full);
                assert!(
                    drift > 0.0 && drift < 1e-2,
                    "{h:?} t={t} past={past}: f16 vs f32 cache {drift}"
                );
            }
        }
    }
}

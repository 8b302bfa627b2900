//! Elementwise steps of the CPU decoder path, vectorized: SwiGLU (`silu(gate) · up`), and the
//! 8-lane `exp` it shares with [`crate::attention`]; BitNet's `relu(gate)² · up`.
//!
//! AVX2 + FMA where the CPU has it (an `exp` within 2 ulp of `expf`), `f32::exp` otherwise; the
//! formulas are those of burn's CPU ops (`sigmoid` split on the sign so `exp` never overflows).

use rayon::prelude::*;

/// `silu(g) · u = g · sigmoid(g) · u` for rows `[gate (f) | up (f)]` of `gu` (`[t, 2f]`);
/// returns `[t, f]`. Rows in parallel when there are many.
pub fn swiglu(gu: &[f32], f: usize) -> Vec<f32> {
    assert!(
        f > 0 && gu.len().is_multiple_of(2 * f),
        "rows must be [gate | up]"
    );
    let t = gu.len() / (2 * f);
    let mut out = vec![0f32; t * f];
    let row = |(o, r): (&mut [f32], &[f32])| {
        let (g, u) = r.split_at(f);
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just now).
            unsafe { x86::swiglu_row(g, u, o) };
            return;
        }
        swiglu_row(g, u, o);
    };
    if t >= 4 {
        out.par_chunks_mut(f)
            .zip(gu.par_chunks(2 * f))
            .for_each(row);
    } else {
        out.chunks_mut(f).zip(gu.chunks(2 * f)).for_each(row);
    }
    out
}

/// `relu(g)² · u` for rows `[gate (f) | up (f)]` of `gu` (`[t, 2f]`), BitNet b1.58's gated
/// MLP (transformers' `ReLUSquaredActivation` then the product, in f32); returns `[t, f]`.
pub fn relu2_glu(gu: &[f32], f: usize) -> Vec<f32> {
    assert!(
        f > 0 && gu.len().is_multiple_of(2 * f),
        "rows must be [gate | up]"
    );
    let mut out = Vec::with_capacity(gu.len() / 2);
    for r in gu.chunks_exact(2 * f) {
        let (g, u) = r.split_at(f);
        out.extend(g.iter().zip(u).map(|(&g, &u)| {
            let r = g.max(0.0);
            r * r * u
        }));
    }
    out
}

/// burn's CPU `sigmoid` (the same branches).
#[inline]
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn swiglu_row(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g * sigmoid(g) * u;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// [`super::swiglu_row`] eight lanes at a time: `e = exp(−|g|)`, `sigmoid = 1 / (1 + e)`
    /// for `g >= 0` and `e / (1 + e)` otherwise.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn swiglu_row(g: &[f32], u: &[f32], out: &mut [f32]) {
        let n = out.len().min(g.len()).min(u.len());
        let full = n - n % 8;
        let one = _mm256_set1_ps(1.0);
        let sign = _mm256_set1_ps(-0.0);
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= n for all three slices.
            unsafe {
                let gv = _mm256_loadu_ps(g.as_ptr().add(i));
                let uv = _mm256_loadu_ps(u.as_ptr().add(i));
                let e = exp8(_mm256_or_ps(gv, sign));
                let pos = _mm256_div_ps(one, _mm256_add_ps(one, e));
                let neg = _mm256_div_ps(e, _mm256_add_ps(one, e));
                let s = _mm256_blendv_ps(pos, neg, gv);
                _mm256_storeu_ps(
                    out.as_mut_ptr().add(i),
                    _mm256_mul_ps(_mm256_mul_ps(gv, s), uv),
                );
            }
        }
        super::swiglu_row(&g[full..n], &u[full..n], &mut out[full..n]);
    }

    /// `exp(x)` of eight floats `x <= 0` (Cephes' single-precision method: `x = n ln 2 + r`
    /// with `ln 2` split in two, a degree-5 polynomial for `e^r`, `2^n` built in the exponent
    /// bits; within 2 ulp of `expf`). Inputs below -87.3 give about 1e-38 instead of smaller.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.3));
        let n = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(
            _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorized SwiGLU against f64 over inputs from -100 to 100 (both sigmoid branches,
    /// exp underflow), widths that leave scalar tails. Tolerance 4e-7 relative plus 1e-30
    /// absolute: the 2-ulp exp and three f32 roundings.
    #[test]
    fn swiglu_matches_f64() {
        for f in [1, 7, 8, 64, 1536] {
            for t in [1, 5] {
                let gu: Vec<f32> = (0..t * 2 * f)
                    .map(|i| ((i * 7919) % 2001) as f32 / 10.0 - 100.0)
                    .collect();
                let got = swiglu(&gu, f);
                for (r, row) in gu.chunks(2 * f).enumerate() {
                    for i in 0..f {
                        let (g, u) = (f64::from(row[i]), f64::from(row[f + i]));
                        let want = g / (1.0 + (-g).exp()) * u;
                        let have = f64::from(got[r * f + i]);
                        assert!(
                            (have - want).abs() <= 4e-7 * want.abs() + 1e-30,
                            "f={f} g={g} u={u}: {have} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

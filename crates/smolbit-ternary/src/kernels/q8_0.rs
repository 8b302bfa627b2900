//! [`Q8BlockMatrix`]: 8-bit weights with a binary16 step per 32 columns (llama.cpp's Q8_0
//! layout of scales), against int8 activations with a step per 32 columns too.

use super::q4::step_at_or_above;
use super::rows::par_rows;
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{Isa, QuantizedInput, QuantizedTable};

/// Columns per 8-bit scale group.
pub const Q8_GROUP: usize = 32;
/// Groups reduced together (one vector of eight sums).
pub(super) const Q8_LANES: usize = 8;

/// An 8-bit matrix for dense linears (as llama.cpp's Q8_0): per group of 32 columns of a row,
/// `w ≈ q · d` with `d` the binary16 value at or just above `max|w| / 127` and `q` in
/// -127..=127. Columns are padded to a multiple of 32 (whole groups; the kernels take the last
/// up to seven groups of a row as a partial vector). 8.5 bits a weight.
#[derive(Debug, Clone)]
pub struct Q8BlockMatrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `cols` rounded up to a multiple of 32.
    pub padded: usize,
    /// `rows * padded` codes.
    pub data: Vec<i8>,
    /// `rows * padded / 32` group steps `d`, binary16 bit patterns.
    pub scales: Vec<u16>,
}

/// Columns padded to whole groups.
fn q8_padded(cols: usize) -> usize {
    cols.div_ceil(Q8_GROUP) * Q8_GROUP
}

impl Q8BlockMatrix {
    /// The stored form (a `q8` checkpoint's): the codes of the real columns, row-major
    /// `[rows, cols]`, and the `[rows, cols / 32]` steps as binary16 bits. `None` unless the
    /// columns are whole groups of 32.
    pub fn to_blocks(&self) -> Option<(Vec<i8>, Vec<u16>)> {
        if !self.cols.is_multiple_of(Q8_GROUP) {
            return None;
        }
        Some(super::strip_padding(
            &self.data,
            &self.scales,
            self.rows,
            (self.padded, self.cols),
            (self.padded / Q8_GROUP, self.cols / Q8_GROUP),
        ))
    }

    /// The matrix from its stored form ([`Q8BlockMatrix::to_blocks`]), exactly.
    pub fn from_blocks(
        rows: usize,
        cols: usize,
        codes: &[i8],
        steps: &[u16],
    ) -> Result<Self, super::BlocksError> {
        super::check_blocks(rows, cols, codes.len(), steps, Q8_GROUP)?;
        if let Some(i) = codes.iter().position(|&q| q == i8::MIN) {
            return Err(super::BlocksError::Code {
                row: i / cols,
                col: i % cols,
            });
        }
        let padded = q8_padded(cols);
        let (data, scales) = super::add_padding(
            codes,
            steps,
            rows,
            (padded, cols),
            (padded / Q8_GROUP, cols / Q8_GROUP),
            0,
        );
        Ok(Q8BlockMatrix {
            rows,
            cols,
            padded,
            data,
            scales,
        })
    }
}

impl QuantizedTable for Q8BlockMatrix {
    fn quantize(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "w must be [rows, cols]");
        let padded = q8_padded(cols);
        let groups = padded / Q8_GROUP;
        let mut data = vec![0i8; rows * padded];
        let mut scales = vec![0u16; rows * groups];
        for r in 0..rows {
            let row = &w[r * cols..][..cols];
            for g in 0..cols.div_ceil(Q8_GROUP) {
                let vals = &row[g * Q8_GROUP..((g + 1) * Q8_GROUP).min(cols)];
                let max = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = step_at_or_above(max, 127.0);
                scales[r * groups + g] = step.to_bits();
                let d = step.to_f32();
                let codes = &mut data[r * padded + g * Q8_GROUP..][..vals.len()];
                for (q, &v) in codes.iter_mut().zip(vals) {
                    *q = if d > 0.0 {
                        crate::act::round_half_even(v / d).clamp(-127.0, 127.0) as i8
                    } else {
                        0
                    };
                }
            }
        }
        Q8BlockMatrix {
            rows,
            cols,
            padded,
            data,
            scales,
        }
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn append(&mut self, other: Self) {
        assert_eq!(
            other.padded, self.padded,
            "appended rows must have the same columns"
        );
        self.rows += other.rows;
        self.data.extend_from_slice(&other.data);
        self.scales.extend_from_slice(&other.scales);
    }

    fn row(&self, r: usize) -> Vec<f32> {
        let groups = self.padded / Q8_GROUP;
        (0..self.cols)
            .map(|c| {
                let d = half::f16::from_bits(self.scales[r * groups + c / Q8_GROUP]).to_f32();
                f32::from(self.data[r * self.padded + c]) * d
            })
            .collect()
    }

    fn bytes(&self) -> usize {
        self.data.len() + self.scales.len() * 2
    }

    /// Activations quantized per group of 32 (as the weights). Per group the exact integer
    /// `Σ q·x` times the product of the weight step and the activation step (a multiply, then
    /// another) is added to partial sum `g mod 8`, and the eight partial sums are added in order
    /// at the end, in every implementation alike, so all give identical results.
    fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
        assert_eq!(x.len(), tokens * self.cols, "x must be [tokens, cols]");
        let q = QuantizedInput::per_group(x, tokens, self.cols, self.padded, Q8_GROUP);
        let groups = self.padded / Q8_GROUP;
        #[cfg(target_arch = "x86_64")]
        let isa = match isa {
            // The AVX2 kernel widens the steps with F16C.
            Isa::Avx2 | Isa::Avx512Vnni if !is_x86_feature_detected!("f16c") => Isa::Scalar,
            other => other,
        };
        par_rows(self.rows, tokens, |r, out| {
            let codes = &self.data[r * self.padded..][..self.padded];
            let scales = &self.scales[r * groups..][..groups];
            for (t, o) in out.iter_mut().enumerate() {
                let xt = &q.values[t * self.padded..][..self.padded];
                let st = &q.steps[t * groups..][..groups];
                *o = q8_block_row_dot(isa, codes, scales, xt, st);
            }
        })
    }
}

fn q8_block_row_dot(isa: Isa, codes: &[i8], scales: &[u16], x: &[i8], steps: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
        // SAFETY: AVX2 is present whenever Isa is not Scalar, and F16C was checked by the
        // caller (`Q8BlockMatrix::matmul_with`).
        return unsafe { x86::q8_block_row_dot_avx2(codes, scales, x, steps) };
    }
    let _ = isa;
    q8_block_row_dot_scalar(codes, scales, x, steps)
}

/// The reference for [`Q8BlockMatrix`] products (see [`Q8BlockMatrix::matmul_with`] for the
/// order).
pub fn q8_block_row_dot_scalar(codes: &[i8], scales: &[u16], x: &[i8], steps: &[f32]) -> f32 {
    let mut lanes = [0f32; Q8_LANES];
    for (g, (&d, &s)) in scales.iter().zip(steps).enumerate() {
        let d = half::f16::from_bits(d).to_f32() * s;
        let acc: i32 = codes[g * Q8_GROUP..][..Q8_GROUP]
            .iter()
            .zip(&x[g * Q8_GROUP..][..Q8_GROUP])
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
        lanes[g % Q8_LANES] += d * acc as f32;
    }
    lanes.iter().fold(0f32, |a, &v| a + v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_blocks_match_scalar_and_dense() {
        crate::kernels::test_util::check_blocked_table::<Q8BlockMatrix>(127.0, 31, |m, r, c| {
            let groups = m.padded / Q8_GROUP;
            half::f16::from_bits(m.scales[r * groups + c / Q8_GROUP]).to_f32()
        });
    }

    #[test]
    fn stored_blocks_round_trip_exactly() {
        use crate::kernels::BlocksError;
        use crate::kernels::test_util::random_x;
        // Widths below, at and above one 256-column padding unit, not multiples of it.
        for (rows, cols) in [(3, 32), (5, 96), (4, 288), (2, 576)] {
            let w = random_x(rows * cols, (rows * cols) as u64);
            let m = Q8BlockMatrix::quantize(&w, rows, cols);
            let (codes, steps) = m.to_blocks().expect("whole groups");
            assert_eq!((codes.len(), steps.len()), (rows * cols, rows * cols / 32));
            let back = Q8BlockMatrix::from_blocks(rows, cols, &codes, &steps).expect("valid");
            assert_eq!(
                (back.padded, &back.data, &back.scales),
                (m.padded, &m.data, &m.scales)
            );
            let x = random_x(2 * cols, 7);
            assert_eq!(back.matmul(&x, 2), m.matmul(&x, 2));
        }
        let m = Q8BlockMatrix::quantize(&random_x(40, 1), 1, 40);
        assert!(m.to_blocks().is_none(), "40 columns are not whole groups");
        let (codes, mut steps) = (vec![0i8; 64], vec![0u16; 2]);
        assert_eq!(
            Q8BlockMatrix::from_blocks(1, 48, &codes, &steps).err(),
            Some(BlocksError::Columns(48))
        );
        assert!(matches!(
            Q8BlockMatrix::from_blocks(1, 64, &codes[..63], &steps),
            Err(BlocksError::Length { what: "codes", .. })
        ));
        steps[1] = half::f16::INFINITY.to_bits();
        assert_eq!(
            Q8BlockMatrix::from_blocks(1, 64, &codes, &steps).err(),
            Some(BlocksError::Step { row: 0, group: 1 })
        );
        steps[1] = 0;
        let mut bad = codes.clone();
        bad[33] = i8::MIN;
        assert_eq!(
            Q8BlockMatrix::from_blocks(1, 64, &bad, &steps).err(),
            Some(BlocksError::Code { row: 0, col: 33 })
        );
    }
}

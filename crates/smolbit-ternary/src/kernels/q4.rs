//! [`Q4Matrix`]: 4-bit weights with a binary16 step per 32 columns, against int8 activations.

#[cfg(target_arch = "aarch64")]
use super::arm;
use super::rows::par_rows;
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{Isa, QuantizedInput, QuantizedTable};

/// Columns per 4-bit scale group.
pub const Q4_GROUP: usize = 32;
/// Groups reduced together (one vector of eight sums).
pub(super) const Q4_LANES: usize = 8;

/// A 4-bit matrix for the output head and the embedding (as llama.cpp's Q4_0): per group of 32
/// columns of a row, `w ≈ q · d` with `d` the binary16 value at or just above `max|w| / 7` and
/// `q` in -7..=7, stored as `q + 8`. Columns are padded to a multiple of 64 (pairs of groups:
/// the AVX2 kernel loads two groups' codes at once; SmolLM2's 576 columns need none). Per
/// group, 16 bytes: byte `j` holds column `j` in its
/// low nibble and column `16 + j` in its high nibble. 4.5 bits a weight: a 3B-shaped tied head
/// and embedding take 148 MB instead of 263 MB at 8 bits.
#[derive(Debug, Clone)]
pub struct Q4Matrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `cols` rounded up to a multiple of 64.
    pub padded: usize,
    /// `rows * padded / 2` bytes.
    pub data: Vec<u8>,
    /// `rows * padded / 32` group steps `d`, binary16 bit patterns.
    pub scales: Vec<u16>,
}

/// The binary16 step for a group whose largest magnitude is `max`: `max / 7` rounded up, so
/// that `max / d <= 7` (no code is clamped), finite.
fn q4_step(max: f32) -> half::f16 {
    step_at_or_above(max, 7.0)
}

/// The binary16 step `d` at or just above `max / top`, so that `max / d <= top` (no code is
/// clamped), finite.
pub(super) fn step_at_or_above(max: f32, top: f32) -> half::f16 {
    let want = (max / top).min(half::f16::MAX.to_f32());
    let d = half::f16::from_f32(want);
    if d.to_f32() < want {
        half::f16::from_bits(d.to_bits() + 1)
    } else {
        d
    }
}

/// Columns padded to whole pairs of groups.
fn q4_padded(cols: usize) -> usize {
    cols.div_ceil(2 * Q4_GROUP) * 2 * Q4_GROUP
}

impl Q4Matrix {
    /// Quantize a row-major `[rows, cols]` f32 matrix.
    pub fn from_f32(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "w must be [rows, cols]");
        let padded = q4_padded(cols);
        let groups = padded / Q4_GROUP;
        let mut data = vec![0x88u8; rows * padded / 2];
        let mut scales = vec![0u16; rows * groups];
        for r in 0..rows {
            let row = &w[r * cols..][..cols];
            for g in 0..cols.div_ceil(Q4_GROUP) {
                let vals = &row[g * Q4_GROUP..((g + 1) * Q4_GROUP).min(cols)];
                let max = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = q4_step(max);
                scales[r * groups + g] = step.to_bits();
                let d = step.to_f32();
                let bytes = &mut data[(r * groups + g) * Q4_GROUP / 2..][..Q4_GROUP / 2];
                for (j, &v) in vals.iter().enumerate() {
                    let q = if d > 0.0 {
                        crate::act::round_half_even(v / d).clamp(-7.0, 7.0) as i8
                    } else {
                        0
                    };
                    let code = (q + 8) as u8;
                    let (byte, shift) = (j % 16, 4 * (j / 16));
                    bytes[byte] = bytes[byte] & !(0xF << shift) | code << shift;
                }
            }
        }
        Q4Matrix {
            rows,
            cols,
            padded,
            data,
            scales,
        }
    }

    /// The stored form (a `q4` checkpoint's): per row, the 16-byte groups of the real columns
    /// in the layout above (`[rows, cols / 2]` bytes), and the `[rows, cols / 32]` steps as
    /// binary16 bits. `None` unless the columns are whole groups of 32.
    pub fn to_blocks(&self) -> Option<(Vec<u8>, Vec<u16>)> {
        if !self.cols.is_multiple_of(Q4_GROUP) {
            return None;
        }
        Some(super::strip_padding(
            &self.data,
            &self.scales,
            self.rows,
            (self.padded / 2, self.cols / 2),
            (self.padded / Q4_GROUP, self.cols / Q4_GROUP),
        ))
    }

    /// The matrix from its stored form ([`Q4Matrix::to_blocks`]), exactly. Every nibble is a
    /// valid code (`q + 8`; 0 is q = -8, which the quantizer does not produce but the kernels
    /// take, as llama.cpp's Q4_0 does).
    pub fn from_blocks(
        rows: usize,
        cols: usize,
        codes: &[u8],
        steps: &[u16],
    ) -> Result<Self, super::BlocksError> {
        super::check_blocks(rows, cols, codes.len(), steps, Q4_GROUP / 2)?;
        let padded = q4_padded(cols);
        let (data, scales) = super::add_padding(
            codes,
            steps,
            rows,
            (padded / 2, cols / 2),
            (padded / Q4_GROUP, cols / Q4_GROUP),
            0x88,
        );
        Ok(Q4Matrix {
            rows,
            cols,
            padded,
            data,
            scales,
        })
    }

    /// The code (`q + 8`) of column `c` in row `r`.
    fn code(&self, r: usize, c: usize) -> u8 {
        let (g, j) = (c / Q4_GROUP, c % Q4_GROUP);
        let byte = self.data[r * self.padded / 2 + g * Q4_GROUP / 2 + j % 16];
        (byte >> (4 * (j / 16))) & 0xF
    }
}

impl QuantizedTable for Q4Matrix {
    fn quantize(w: &[f32], rows: usize, cols: usize) -> Self {
        Q4Matrix::from_f32(w, rows, cols)
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

    /// Row `r` dequantized (an embedding lookup).
    fn row(&self, r: usize) -> Vec<f32> {
        let groups = self.padded / Q4_GROUP;
        (0..self.cols)
            .map(|c| {
                let q = i32::from(self.code(r, c)) - 8;
                q as f32 * half::f16::from_bits(self.scales[r * groups + c / Q4_GROUP]).to_f32()
            })
            .collect()
    }

    /// Bytes held.
    fn bytes(&self) -> usize {
        self.data.len() + self.scales.len() * 2
    }

    /// Activations quantized per group of 32 (as the weights). Per group the exact integer
    /// `Σ q·x` times the product of the weight step and the activation step (a multiply, then
    /// another) is added to partial sum `g mod 8`, and the eight partial sums are added in order
    /// at the end, in every implementation alike, so all give identical results.
    fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
        assert_eq!(x.len(), tokens * self.cols, "x must be [tokens, cols]");
        let q = QuantizedInput::per_group(x, tokens, self.cols, self.padded, Q4_GROUP);
        let groups = self.padded / Q4_GROUP;
        // 8 · Σx per group: the offset of the stored codes, removed per group.
        let off: Vec<i32> = q.group_sums.iter().map(|&s| 8 * s).collect();
        #[cfg(target_arch = "x86_64")]
        let isa = match isa {
            // The AVX2 kernel widens the steps with F16C.
            Isa::Avx2 | Isa::Avx512Vnni if !is_x86_feature_detected!("f16c") => Isa::Scalar,
            other => other,
        };
        par_rows(self.rows, tokens, |r, out| {
            let codes = &self.data[r * self.padded / 2..][..self.padded / 2];
            let scales = &self.scales[r * groups..][..groups];
            for (t, o) in out.iter_mut().enumerate() {
                let xt = &q.values[t * self.padded..][..self.padded];
                let ot = &off[t * groups..][..groups];
                let st = &q.steps[t * groups..][..groups];
                *o = q4_row_dot(isa, codes, scales, xt, ot, st);
            }
        })
    }
}

fn q4_row_dot(isa: Isa, codes: &[u8], scales: &[u16], x: &[i8], off: &[i32], steps: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
        // SAFETY: AVX2 is present whenever Isa is not Scalar, and F16C was checked by the
        // caller (`Q4Matrix::matmul_with`).
        return unsafe { x86::q4_row_dot_avx2(codes, scales, x, off, steps) };
    }
    #[cfg(target_arch = "aarch64")]
    match isa {
        // SAFETY: Isa::Neon/NeonDot are only produced on aarch64, NeonDot only with dotprod.
        Isa::Neon => return unsafe { arm::q4_row_dot_neon(codes, scales, x, off, steps) },
        // SAFETY: as above.
        Isa::NeonDot => return unsafe { arm::q4_row_dot_dot(codes, scales, x, off, steps) },
        _ => {}
    }
    let _ = isa;
    q4_row_dot_scalar(codes, scales, x, off, steps)
}

/// The reference for [`Q4Matrix`] products (see [`Q4Matrix::matmul_with`] for the order).
pub fn q4_row_dot_scalar(
    codes: &[u8],
    scales: &[u16],
    x: &[i8],
    off: &[i32],
    steps: &[f32],
) -> f32 {
    let mut lanes = [0f32; Q4_LANES];
    for (g, ((&d, &o), &s)) in scales.iter().zip(off).zip(steps).enumerate() {
        let d = half::f16::from_bits(d).to_f32() * s;
        let bytes = &codes[g * Q4_GROUP / 2..][..Q4_GROUP / 2];
        let xs = &x[g * Q4_GROUP..][..Q4_GROUP];
        let mut acc = 0i32;
        for j in 0..16 {
            acc += i32::from(bytes[j] & 0xF) * i32::from(xs[j]);
            acc += i32::from(bytes[j] >> 4) * i32::from(xs[16 + j]);
        }
        lanes[g % Q4_LANES] += d * (acc - o) as f32;
    }
    lanes.iter().fold(0f32, |a, &v| a + v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_blocks_round_trip_exactly() {
        use crate::kernels::BlocksError;
        use crate::kernels::test_util::random_x;
        for (rows, cols) in [(3, 32), (5, 96), (4, 288), (2, 576)] {
            let w = random_x(rows * cols, (rows * cols) as u64 + 1);
            let m = Q4Matrix::from_f32(&w, rows, cols);
            let (codes, steps) = m.to_blocks().expect("whole groups");
            assert_eq!(
                (codes.len(), steps.len()),
                (rows * cols / 2, rows * cols / 32)
            );
            let back = Q4Matrix::from_blocks(rows, cols, &codes, &steps).expect("valid");
            assert_eq!(
                (back.padded, &back.data, &back.scales),
                (m.padded, &m.data, &m.scales)
            );
            let x = random_x(2 * cols, 9);
            assert_eq!(back.matmul(&x, 2), m.matmul(&x, 2));
        }
        assert!(
            Q4Matrix::from_f32(&random_x(40, 1), 1, 40)
                .to_blocks()
                .is_none()
        );
        assert!(matches!(
            Q4Matrix::from_blocks(2, 64, &[0x88; 63], &[0; 4]),
            Err(BlocksError::Length {
                what: "codes",
                want: 64,
                ..
            })
        ));
        // Nibble 0 (q = -8) is a valid code; the product follows the dequantized row.
        let steps = [half::f16::from_f32(0.5).to_bits(); 2];
        let m = Q4Matrix::from_blocks(1, 64, &[0u8; 32], &steps).expect("valid");
        assert_eq!(m.row(0), vec![-4.0; 64]);
    }

    #[test]
    fn q4_matches_scalar_and_dense() {
        crate::kernels::test_util::check_blocked_table::<Q4Matrix>(7.0, 21, |m, r, c| {
            let groups = m.padded / Q4_GROUP;
            half::f16::from_bits(m.scales[r * groups + c / Q4_GROUP]).to_f32()
        });
    }
}

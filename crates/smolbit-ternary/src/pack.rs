//! Trit packings, each with an exact round trip.
//!
//! - [`Packing::TwoBit`]: 4 trits per byte. Row-major; each row padded to a multiple of 4 trits.
//!   Trit `t` of column `c` is stored as code `t + 1` in bits `2 * (c % 4)` of byte `c / 4`.
//! - [`Packing::Base3`]: 5 trits per byte (1.6 bits). Row-major; each row padded to a multiple of
//!   5 trits. Byte `b` of a row holds columns `5b .. 5b + 5` as `Σ_i (t_i + 1) · 3^i` (≤ 242).
//! - [`pack_hf_bitnet`]: transformers' BitNet `pack_weights` layout: `[ceil(rows / 4), cols]`
//!   bytes, where bits `2i` of byte `(j, c)` hold trit `(i · ceil(rows / 4) + j, c)` plus one.
//!
//! Padding trits are 0. Unpacking rejects codes no packer writes (2-bit code 3, base-3 bytes above
//! 242), so corrupt checkpoints are detected.

use std::fmt;

/// Trits per byte in the 2-bit packing.
pub const TRITS_PER_BYTE_2BIT: usize = 4;
/// Trits per byte in the base-3 packing.
pub const TRITS_PER_BYTE_BASE3: usize = 5;
const _: () = assert!(TRITS_PER_BYTE_2BIT * 2 == 8);
const _: () = assert!(3usize.pow(TRITS_PER_BYTE_BASE3 as u32) <= 256);
const _: () = assert!(3usize.pow(TRITS_PER_BYTE_BASE3 as u32 + 1) > 256);

/// A byte layout for trits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// 4 trits per byte.
    TwoBit,
    /// 5 trits per byte.
    Base3,
}

impl Packing {
    /// Bytes one row of `cols` trits takes.
    pub fn bytes_per_row(self, cols: usize) -> usize {
        match self {
            Packing::TwoBit => cols.div_ceil(TRITS_PER_BYTE_2BIT),
            Packing::Base3 => cols.div_ceil(TRITS_PER_BYTE_BASE3),
        }
    }

    /// The name used in checkpoints: `2bit` or `base3`.
    pub fn name(self) -> &'static str {
        match self {
            Packing::TwoBit => "2bit",
            Packing::Base3 => "base3",
        }
    }

    /// Parse a checkpoint name.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "2bit" => Some(Packing::TwoBit),
            "base3" => Some(Packing::Base3),
            _ => None,
        }
    }
}

impl fmt::Display for Packing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Packed bytes that no packer writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    /// Wrong byte count for the shape.
    #[error("{got} packed bytes for {rows}x{cols} trits in {packing}, expected {expected}")]
    Length {
        /// Bytes given.
        got: usize,
        /// Bytes expected.
        expected: usize,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Packing.
        packing: Packing,
    },
    /// A code outside {0, 1, 2} (2-bit) or a byte above 242 (base-3).
    #[error("invalid packed byte {byte:#04x} at offset {offset}")]
    Code {
        /// The byte.
        byte: u8,
        /// Its offset.
        offset: usize,
    },
}

/// Pack `rows * cols` trits (values in {-1, 0, 1}).
pub fn pack(trits: &[i8], rows: usize, cols: usize, packing: Packing) -> Vec<u8> {
    assert_eq!(
        trits.len(),
        rows * cols,
        "pack: {} trits for {rows}x{cols}",
        trits.len()
    );
    let bpr = packing.bytes_per_row(cols);
    let mut out = vec![0u8; rows * bpr];
    for (r, row) in trits.chunks_exact(cols.max(1)).take(rows).enumerate() {
        let dst = &mut out[r * bpr..(r + 1) * bpr];
        match packing {
            Packing::TwoBit => {
                for (b, byte) in dst.iter_mut().enumerate() {
                    let mut v = 0u8;
                    for i in 0..TRITS_PER_BYTE_2BIT {
                        let t = row.get(b * TRITS_PER_BYTE_2BIT + i).copied().unwrap_or(0);
                        v |= ((t + 1) as u8) << (2 * i);
                    }
                    *byte = v;
                }
            }
            Packing::Base3 => {
                for (b, byte) in dst.iter_mut().enumerate() {
                    let mut v = 0u8;
                    for i in (0..TRITS_PER_BYTE_BASE3).rev() {
                        let t = row.get(b * TRITS_PER_BYTE_BASE3 + i).copied().unwrap_or(0);
                        v = v * 3 + (t + 1) as u8;
                    }
                    *byte = v;
                }
            }
        }
    }
    out
}

/// Unpack what [`pack`] wrote.
pub fn unpack(
    bytes: &[u8],
    rows: usize,
    cols: usize,
    packing: Packing,
) -> Result<Vec<i8>, UnpackError> {
    let bpr = packing.bytes_per_row(cols);
    if bytes.len() != rows * bpr {
        return Err(UnpackError::Length {
            got: bytes.len(),
            expected: rows * bpr,
            rows,
            cols,
            packing,
        });
    }
    let mut out = Vec::with_capacity(rows * cols);
    for (r, row) in bytes.chunks_exact(bpr.max(1)).take(rows).enumerate() {
        let mut c = 0;
        for (b, &byte) in row.iter().enumerate() {
            let bad = || UnpackError::Code {
                byte,
                offset: r * bpr + b,
            };
            match packing {
                Packing::TwoBit => {
                    for i in 0..TRITS_PER_BYTE_2BIT {
                        let code = (byte >> (2 * i)) & 3;
                        if code == 3 {
                            return Err(bad());
                        }
                        if c < cols {
                            out.push(code as i8 - 1);
                            c += 1;
                        }
                    }
                }
                Packing::Base3 => {
                    if byte > 242 {
                        return Err(bad());
                    }
                    let mut v = byte;
                    for _ in 0..TRITS_PER_BYTE_BASE3 {
                        if c < cols {
                            out.push((v % 3) as i8 - 1);
                            c += 1;
                        }
                        v /= 3;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// transformers' BitNet `pack_weights` layout; `rows` must be a multiple of 4 (BitLinear
/// allocates `out_features / 4` packed rows).
pub fn pack_hf_bitnet(trits: &[i8], rows: usize, cols: usize) -> Option<Vec<u8>> {
    if !rows.is_multiple_of(4) || trits.len() != rows * cols {
        return None;
    }
    let row_dim = rows / 4;
    let mut out = vec![0u8; row_dim * cols];
    for i in 0..4 {
        for j in 0..row_dim {
            let src = &trits[(i * row_dim + j) * cols..(i * row_dim + j + 1) * cols];
            for (o, &t) in out[j * cols..(j + 1) * cols].iter_mut().zip(src) {
                *o |= ((t + 1) as u8) << (2 * i);
            }
        }
    }
    Some(out)
}

/// Inverse of [`pack_hf_bitnet`]; `None` for a length that does not fit or a code 3.
pub fn unpack_hf_bitnet(bytes: &[u8], rows: usize, cols: usize) -> Option<Vec<i8>> {
    if !rows.is_multiple_of(4) || bytes.len() != rows / 4 * cols {
        return None;
    }
    // A code 3 has both bits of its pair set.
    if bytes.iter().any(|&b| b & (b >> 1) & 0x55 != 0) {
        return None;
    }
    let row_dim = rows / 4;
    let mut out = vec![0i8; rows * cols];
    for (r, dst) in out.chunks_exact_mut(cols.max(1)).enumerate() {
        let (i, j) = (r / row_dim.max(1), r % row_dim.max(1));
        for (o, &b) in dst.iter_mut().zip(&bytes[j * cols..(j + 1) * cols]) {
            *o = ((b >> (2 * i)) & 3) as i8 - 1;
        }
    }
    Some(out)
}

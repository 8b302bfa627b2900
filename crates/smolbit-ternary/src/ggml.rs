//! The ternary tensor types of GGUF files: llama.cpp's `TQ1_0` and `TQ2_0` and bitnet.cpp's
//! `I2_S`, decoded to trits and scales exactly (and encoded, for tests and for writing files the
//! peer engines read).
//!
//! - `TQ2_0` (ggml type 35): blocks of 256 values in 66 bytes, `qs[64]` then an f16 scale `d`.
//!   Each 32-byte half holds 128 values: byte `m` of half `h` holds values `128h + m + 32l` at bits
//!   `2l..2l+2` (low bits first), as code `trit + 1` (ggml-common.h `block_tq2_0`,
//!   `dequantize_row_tq2_0`). This is the kernels' own block layout
//!   ([`crate::kernels::PackedTernary`]).
//! - `TQ1_0` (ggml type 34): blocks of 256 values in 54 bytes, `qs[48]`, `qh[4]`, f16 `d`. Bytes
//!   hold 5 (or, in `qh`, 4) trits in base 3, scaled to a byte: `v = Σ (t_n + 1) 3^(4-n)`,
//!   byte = `ceil(v · 256 / 243)`; digit `n` is `((byte · 3^n mod 256) · 3) >> 8`. `qs[0..32]`
//!   hold values `32n + m`, `qs[32..48]` values `160 + 16n + m`, `qh` values `240 + 4n + m`.
//! - `I2_S` (bitnet.cpp's type 36): the whole tensor flattened, blocks of 128 values in 32 bytes,
//!   byte `m` holding values `m, m + 32, m + 64, m + 96` at bits 7-6, 5-4, 3-2, 1-0 (high bits
//!   first), codes 0, 1, 2 for -1, 0, +1; then one f32 scale for the whole tensor at byte
//!   `n / 4`, and 28 bytes of padding (`src/ggml-bitnet-mad.cpp` `quantize_i2_s`).
//!
//! Code 3 never comes out of any of these quantizers; decoding rejects it (ggml's TQ2_0 would
//! read it as +2, bitnet.cpp's I2_S as 0).

use half::f16;

/// Values per TQ1_0 / TQ2_0 block.
pub const QK_K: usize = 256;
/// Bytes per TQ2_0 block.
pub const TQ2_0_BYTES: usize = QK_K / 4 + 2;
/// Bytes per TQ1_0 block.
pub const TQ1_0_BYTES: usize = (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2;
/// Values per I2_S block.
pub const I2S_BLOCK: usize = 128;
/// Bytes after the I2_S codes: the f32 scale and padding to 32.
pub const I2S_TAIL: usize = 32;
const _: () = assert!(TQ2_0_BYTES == 66);
const _: () = assert!(TQ1_0_BYTES == 54);

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// A ggml ternary type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum TernaryType {
    /// llama.cpp's 1.69-bit type: base-3 bytes, an f16 scale per 256 values.
    TQ1_0,
    /// llama.cpp's 2.06-bit type: 2-bit codes, an f16 scale per 256 values.
    TQ2_0,
    /// bitnet.cpp's 2-bit type: 2-bit codes, one f32 scale per tensor.
    I2_S,
}

impl TernaryType {
    /// Bytes a tensor of `n` values takes.
    pub fn bytes(self, n: usize) -> usize {
        match self {
            TernaryType::TQ1_0 => n / QK_K * TQ1_0_BYTES,
            TernaryType::TQ2_0 => n / QK_K * TQ2_0_BYTES,
            TernaryType::I2_S => n / 4 + I2S_TAIL,
        }
    }

    /// Values that must divide a tensor (and, for the kernels, a row).
    pub fn block(self) -> usize {
        match self {
            TernaryType::TQ1_0 | TernaryType::TQ2_0 => QK_K,
            TernaryType::I2_S => I2S_BLOCK,
        }
    }

    /// ggml's name.
    pub fn name(self) -> &'static str {
        match self {
            TernaryType::TQ1_0 => "TQ1_0",
            TernaryType::TQ2_0 => "TQ2_0",
            TernaryType::I2_S => "I2_S",
        }
    }
}

/// A ternary tensor that cannot be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgmlTernaryError {
    /// The byte count does not match the number of values.
    #[error("{got} bytes for {n} values of {}, expected {expected}", ty.name())]
    Length {
        /// The type.
        ty: TernaryType,
        /// Values.
        n: usize,
        /// Bytes given.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// The number of values is not a multiple of the block.
    #[error("{n} values is not a multiple of the {} block of {}", ty.name(), ty.block())]
    Block {
        /// The type.
        ty: TernaryType,
        /// Values.
        n: usize,
    },
    /// A 2-bit code 3, which no quantizer writes.
    #[error("code 3 (not a trit) at byte {offset}")]
    Code {
        /// Byte offset in the tensor data.
        offset: usize,
    },
    /// A scale that is not finite.
    #[error("scale {scale} of block {block} is not finite")]
    Scale {
        /// Block index (0 for I2_S's one scale).
        block: usize,
        /// The value.
        scale: f32,
    },
}

/// Decoded trits (`n`, in the tensor's row-major order) and scales: one per 256 values for
/// TQ1_0/TQ2_0, one for the tensor for I2_S.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Values in {-1, 0, 1}.
    pub trits: Vec<i8>,
    /// Scales.
    pub scales: Vec<f32>,
}

fn check(ty: TernaryType, bytes: &[u8], n: usize) -> Result<(), GgmlTernaryError> {
    if !n.is_multiple_of(ty.block()) {
        return Err(GgmlTernaryError::Block { ty, n });
    }
    let expected = ty.bytes(n);
    if bytes.len() != expected {
        return Err(GgmlTernaryError::Length {
            ty,
            n,
            got: bytes.len(),
            expected,
        });
    }
    Ok(())
}

fn finite(block: usize, scale: f32) -> Result<f32, GgmlTernaryError> {
    if scale.is_finite() {
        Ok(scale)
    } else {
        Err(GgmlTernaryError::Scale { block, scale })
    }
}

/// Decode `n` values of `ty` from `bytes`.
pub fn decode(ty: TernaryType, bytes: &[u8], n: usize) -> Result<Decoded, GgmlTernaryError> {
    check(ty, bytes, n)?;
    let mut trits = vec![0i8; n];
    let mut scales = Vec::new();
    match ty {
        TernaryType::TQ2_0 => {
            for (b, (block, out)) in bytes
                .chunks_exact(TQ2_0_BYTES)
                .zip(trits.chunks_exact_mut(QK_K))
                .enumerate()
            {
                for (i, &byte) in block[..QK_K / 4].iter().enumerate() {
                    let (half, m) = (i / 32, i % 32);
                    for l in 0..4 {
                        let code = (byte >> (2 * l)) & 3;
                        if code == 3 {
                            return Err(GgmlTernaryError::Code {
                                offset: b * TQ2_0_BYTES + i,
                            });
                        }
                        out[128 * half + 32 * l + m] = code as i8 - 1;
                    }
                }
                let d = f16::from_le_bytes([block[QK_K / 4], block[QK_K / 4 + 1]]).to_f32();
                scales.push(finite(b, d)?);
            }
        }
        TernaryType::TQ1_0 => {
            for (b, (block, out)) in bytes
                .chunks_exact(TQ1_0_BYTES)
                .zip(trits.chunks_exact_mut(QK_K))
                .enumerate()
            {
                let digit = |byte: u8, n: usize| -> i8 {
                    let q = byte.wrapping_mul(POW3[n]);
                    ((u16::from(q) * 3) >> 8) as i8 - 1
                };
                for (m, &byte) in block[..32].iter().enumerate() {
                    for n in 0..5 {
                        out[32 * n + m] = digit(byte, n);
                    }
                }
                for (m, &byte) in block[32..48].iter().enumerate() {
                    for n in 0..5 {
                        out[160 + 16 * n + m] = digit(byte, n);
                    }
                }
                for (m, &byte) in block[48..52].iter().enumerate() {
                    for n in 0..4 {
                        out[240 + 4 * n + m] = digit(byte, n);
                    }
                }
                let d = f16::from_le_bytes([block[52], block[53]]).to_f32();
                scales.push(finite(b, d)?);
            }
        }
        TernaryType::I2_S => {
            let codes = &bytes[..n / 4];
            for (i, &byte) in codes.iter().enumerate() {
                let (block, m) = (i / 32, i % 32);
                for g in 0..4 {
                    let code = (byte >> (6 - 2 * g)) & 3;
                    if code == 3 {
                        return Err(GgmlTernaryError::Code { offset: i });
                    }
                    trits[block * I2S_BLOCK + 32 * g + m] = code as i8 - 1;
                }
            }
            let s = f32::from_le_bytes([
                bytes[n / 4],
                bytes[n / 4 + 1],
                bytes[n / 4 + 2],
                bytes[n / 4 + 3],
            ]);
            scales.push(finite(0, s)?);
        }
    }
    Ok(Decoded { trits, scales })
}

/// Encode trits and scales as `ty` (scales as [`decode`] returns them: one per 256 values for
/// TQ1_0/TQ2_0, rounded to f16; one for I2_S).
///
/// # Panics
/// If the lengths do not fit `ty` or a value is not a trit.
pub fn encode(ty: TernaryType, trits: &[i8], scales: &[f32]) -> Vec<u8> {
    let n = trits.len();
    assert!(n.is_multiple_of(ty.block()), "{n} values for {}", ty.name());
    assert!(trits.iter().all(|t| (-1..=1).contains(t)), "not trits");
    let code = |t: i8| (t + 1) as u8;
    let mut out = Vec::with_capacity(ty.bytes(n));
    match ty {
        TernaryType::TQ2_0 => {
            assert_eq!(scales.len(), n / QK_K, "one scale per block");
            for (block, &d) in trits.chunks_exact(QK_K).zip(scales) {
                for i in 0..QK_K / 4 {
                    let (half, m) = (i / 32, i % 32);
                    let mut byte = 0u8;
                    for l in 0..4 {
                        byte |= code(block[128 * half + 32 * l + m]) << (2 * l);
                    }
                    out.push(byte);
                }
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            }
        }
        TernaryType::TQ1_0 => {
            assert_eq!(scales.len(), n / QK_K, "one scale per block");
            // Σ (t_n + 1) 3^(4-n) over the digits, scaled to a byte (gguf-py's quantize_blocks).
            let pack = |digits: &mut dyn Iterator<Item = i8>| -> u8 {
                let mut v = 0u16;
                let mut k = 0;
                for t in digits {
                    v = v * 3 + u16::from(code(t));
                    k += 1;
                }
                for _ in k..5 {
                    v *= 3;
                }
                (v * 256).div_ceil(243) as u8
            };
            for (block, &d) in trits.chunks_exact(QK_K).zip(scales) {
                for m in 0..32 {
                    out.push(pack(&mut (0..5).map(|n| block[32 * n + m])));
                }
                for m in 0..16 {
                    out.push(pack(&mut (0..5).map(|n| block[160 + 16 * n + m])));
                }
                for m in 0..4 {
                    out.push(pack(&mut (0..4).map(|n| block[240 + 4 * n + m])));
                }
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            }
        }
        TernaryType::I2_S => {
            assert_eq!(scales.len(), 1, "one scale per tensor");
            out.resize(n / 4, 0);
            for (i, &t) in trits.iter().enumerate() {
                let (block, j) = (i / I2S_BLOCK, i % I2S_BLOCK);
                out[block * 32 + j % 32] |= code(t) << (6 - 2 * (j / 32));
            }
            out.extend_from_slice(&scales[0].to_le_bytes());
            out.resize(n / 4 + I2S_TAIL, 0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trits(n: usize, seed: u64) -> Vec<i8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % 3) as i8 - 1
            })
            .collect()
    }

    #[test]
    fn round_trips() {
        let t = trits(3 * QK_K, 7);
        for ty in [TernaryType::TQ1_0, TernaryType::TQ2_0, TernaryType::I2_S] {
            let scales: Vec<f32> = match ty {
                TernaryType::I2_S => vec![0.031_25],
                _ => vec![0.5, 0.25, 0.125],
            };
            let bytes = encode(ty, &t, &scales);
            assert_eq!(bytes.len(), ty.bytes(t.len()), "{ty:?}");
            let d = decode(ty, &bytes, t.len()).expect("decode");
            assert_eq!(d.trits, t, "{ty:?}");
            assert_eq!(d.scales, scales, "{ty:?}");
        }
    }

    #[test]
    fn i2_s_is_the_kernel_layout_with_bit_pairs_reversed() {
        // Value j of a 128-block: byte j % 32, bits 7-6 for j < 32 (I2_S); bits 1-0 in TQ2_0.
        let mut t = vec![0i8; 256];
        t[0] = 1;
        t[33] = -1;
        let i2 = encode(TernaryType::I2_S, &t, &[1.0]);
        assert_eq!(i2[0], 0b1001_0101); // +1 at bits 7-6, the rest 0 (code 1)
        assert_eq!(i2[1], 0b0100_0101); // value 33: group 1 (bits 5-4) = -1 (code 0)
        let tq = encode(TernaryType::TQ2_0, &t, &[1.0]);
        assert_eq!(tq[0], 0b0101_0110);
        assert_eq!(tq[1], 0b0101_0001);
    }

    #[test]
    fn rejects_code_3_and_bad_lengths() {
        let t = vec![0i8; QK_K];
        for ty in [TernaryType::TQ2_0, TernaryType::I2_S] {
            let mut b = encode(ty, &t, &[1.0]);
            b[5] |= 0b11;
            assert_eq!(
                decode(ty, &b, QK_K),
                Err(GgmlTernaryError::Code { offset: 5 })
            );
            assert!(matches!(
                decode(ty, &b[1..], QK_K),
                Err(GgmlTernaryError::Length { .. })
            ));
        }
        assert!(matches!(
            decode(TernaryType::TQ2_0, &[], 100),
            Err(GgmlTernaryError::Block { .. })
        ));
        let mut b = encode(TernaryType::TQ2_0, &t, &[1.0]);
        b[64..66].copy_from_slice(&f16::NAN.to_le_bytes());
        assert!(matches!(
            decode(TernaryType::TQ2_0, &b, QK_K),
            Err(GgmlTernaryError::Scale { .. })
        ));
    }
}

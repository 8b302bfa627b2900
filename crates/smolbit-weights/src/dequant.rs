//! Dequantization of ggml block formats to f32.
//!
//! Block layouts follow llama.cpp's `ggml-common.h` (`block_q4_0`, `block_q4_K`, ...) and the
//! reference `dequantize_row_*` routines of `ggml-quants.c`; the tests compare against gguf-py's
//! independent numpy implementation (`gguf.quants.dequantize`) on random blocks.

use half::{bf16, f16};
use smolbit_ternary::ggml::{self, TernaryType};

/// Elements per super-block of the k-quants.
pub const QK_K: usize = 256;

/// The ggml storage types this crate decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 32 weights: f16 scale, 4-bit values offset by 8.
    Q4_0,
    /// 32 weights: f16 scale and min, 4-bit values.
    Q4_1,
    /// 32 weights: f16 scale, 5-bit values offset by 16.
    Q5_0,
    /// 32 weights: f16 scale and min, 5-bit values.
    Q5_1,
    /// 32 weights: f16 scale, 8-bit values.
    Q8_0,
    /// 256 weights: 8 sub-blocks of 32 with 6-bit scales and mins, 4-bit values.
    Q4_K,
    /// 256 weights: like Q4_K with a fifth bit per value.
    Q5_K,
    /// 256 weights: 16 sub-blocks of 16 with 8-bit scales, 6-bit values.
    Q6_K,
    /// 256 ternary weights in base-3 bytes, f16 scale (llama.cpp).
    TQ1_0,
    /// 256 ternary weights as 2-bit codes, f16 scale (llama.cpp).
    TQ2_0,
    /// bitnet.cpp's ternary type: 2-bit codes in blocks of 128, one f32 scale per tensor after
    /// the data (see `smolbit_ternary::ggml`).
    I2_S,
}

impl GgmlType {
    /// The type for a ggml type id, if decoded here.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            34 => Self::TQ1_0,
            35 => Self::TQ2_0,
            36 => Self::I2_S,
            _ => return None,
        })
    }

    /// ggml's numeric id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::BF16 => 30,
            Self::TQ1_0 => 34,
            Self::TQ2_0 => 35,
            Self::I2_S => 36,
        }
    }

    /// The ternary types, as `smolbit_ternary::ggml` decodes them.
    pub fn ternary(self) -> Option<TernaryType> {
        match self {
            Self::TQ1_0 => Some(TernaryType::TQ1_0),
            Self::TQ2_0 => Some(TernaryType::TQ2_0),
            Self::I2_S => Some(TernaryType::I2_S),
            _ => None,
        }
    }

    /// Bytes a tensor of `n` elements takes (`n` a multiple of [`GgmlType::block_size`]);
    /// I2_S adds its per-tensor scale and padding (32 bytes) after the codes.
    pub fn bytes_for(self, n: u64) -> u64 {
        match self {
            Self::I2_S => n / 4 + ggml::I2S_TAIL as u64,
            _ => n / self.block_size() as u64 * self.type_size() as u64,
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4_K | Self::Q5_K | Self::Q6_K | Self::TQ1_0 | Self::TQ2_0 => QK_K,
            Self::I2_S => ggml::I2S_BLOCK,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => Q4_0_BYTES,
            Self::Q4_1 => Q4_1_BYTES,
            Self::Q5_0 => Q5_0_BYTES,
            Self::Q5_1 => Q5_1_BYTES,
            Self::Q8_0 => Q8_0_BYTES,
            Self::Q4_K => Q4_K_BYTES,
            Self::Q5_K => Q5_K_BYTES,
            Self::Q6_K => Q6_K_BYTES,
            Self::TQ1_0 => ggml::TQ1_0_BYTES,
            Self::TQ2_0 => ggml::TQ2_0_BYTES,
            // The codes of one block; the tensor's scale follows all blocks (`bytes_for`).
            Self::I2_S => ggml::I2S_BLOCK / 4,
        }
    }
}

/// ggml's name for a type id, for error messages about types this crate does not decode.
pub fn ggml_type_name(id: u32) -> &'static str {
    const NAMES: &[(u32, &str)] = &[
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (6, "Q5_0"),
        (7, "Q5_1"),
        (8, "Q8_0"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (12, "Q4_K"),
        (13, "Q5_K"),
        (14, "Q6_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (30, "BF16"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (36, "I2_S (bitnet.cpp)"),
        (39, "MXFP4"),
    ];
    NAMES
        .iter()
        .find(|(i, _)| *i == id)
        .map_or("unknown", |(_, n)| n)
}

// Block sizes in bytes, from the `block_*` structs of ggml-common.h.
const Q4_0_BYTES: usize = 2 + 16;
const Q4_1_BYTES: usize = 2 + 2 + 16;
const Q5_0_BYTES: usize = 2 + 4 + 16;
const Q5_1_BYTES: usize = 2 + 2 + 4 + 16;
const Q8_0_BYTES: usize = 2 + 32;
const K_SCALE_SIZE: usize = 12;
const Q4_K_BYTES: usize = 2 + 2 + K_SCALE_SIZE + QK_K / 2;
const Q5_K_BYTES: usize = 2 + 2 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2;
const Q6_K_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
const _: () = assert!(Q4_0_BYTES == 18);
const _: () = assert!(Q4_1_BYTES == 20);
const _: () = assert!(Q5_0_BYTES == 22);
const _: () = assert!(Q5_1_BYTES == 24);
const _: () = assert!(Q8_0_BYTES == 34);
const _: () = assert!(Q4_K_BYTES == 144);
const _: () = assert!(Q5_K_BYTES == 176);
const _: () = assert!(Q6_K_BYTES == 210);

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantize `bytes` of type `ty` into `out`.
///
/// # Panics
/// If `bytes` does not hold exactly `out.len()` elements of `ty` (callers get both from a
/// validated [`crate::gguf::TensorInfo`]).
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let bs = ty.block_size();
    assert!(
        out.len().is_multiple_of(bs) && bytes.len() as u64 == ty.bytes_for(out.len() as u64),
        "dequantize: {} bytes do not hold {} {ty:?} elements",
        bytes.len(),
        out.len()
    );
    if ty == GgmlType::I2_S {
        return i2_s(bytes, out);
    }
    let blocks = bytes
        .chunks_exact(ty.type_size())
        .zip(out.chunks_exact_mut(bs));
    match ty {
        GgmlType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (b, y) in blocks {
                y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| q6_k(b, y)),
        GgmlType::TQ1_0 => blocks.for_each(|(b, y)| tq1_0(b, y)),
        GgmlType::TQ2_0 => blocks.for_each(|(b, y)| tq2_0(b, y)),
        GgmlType::I2_S => unreachable!("handled above"),
    }
}

/// `block_tq2_0 { uint8_t qs[64]; half d; }` as `dequantize_row_tq2_0`: `(code - 1) * d`
/// (a code 3, which no quantizer writes, reads as +2 there and here).
fn tq2_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 64);
    for (i, &q) in b[..64].iter().enumerate() {
        let (half, m) = (i / 32, i % 32);
        for l in 0..4 {
            y[128 * half + 32 * l + m] = (((q >> (2 * l)) & 3) as i32 - 1) as f32 * d;
        }
    }
}

/// `block_tq1_0 { uint8_t qs[48]; uint8_t qh[4]; half d; }` as `dequantize_row_tq1_0`.
fn tq1_0(b: &[u8], y: &mut [f32]) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let d = f16_at(b, 52);
    let digit =
        |q: u8, n: usize| (((u16::from(q.wrapping_mul(POW3[n])) * 3) >> 8) as i32 - 1) as f32;
    for m in 0..32 {
        for n in 0..5 {
            y[32 * n + m] = digit(b[m], n) * d;
        }
    }
    for m in 0..16 {
        for n in 0..5 {
            y[160 + 16 * n + m] = digit(b[32 + m], n) * d;
        }
    }
    for m in 0..4 {
        for n in 0..4 {
            y[240 + 4 * n + m] = digit(b[48 + m], n) * d;
        }
    }
}

/// bitnet.cpp's I2_S over a whole tensor: codes 0, 1, 2 (and 3) read as -1, 0, +1 (and 0)
/// times the scale stored after the codes.
fn i2_s(b: &[u8], y: &mut [f32]) {
    let n = y.len();
    let s = f32::from_le_bytes([b[n / 4], b[n / 4 + 1], b[n / 4 + 2], b[n / 4 + 3]]);
    const MAP: [f32; 4] = [-1.0, 0.0, 1.0, 0.0];
    for (i, &q) in b[..n / 4].iter().enumerate() {
        let (block, m) = (i / 32, i % 32);
        for g in 0..4 {
            y[block * 128 + 32 * g + m] = MAP[usize::from((q >> (6 - 2 * g)) & 3)] * s;
        }
    }
}

/// `block_q4_0 { half d; uint8_t qs[16]; }`: low nibbles are elements 0..16, high 16..32.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// `block_q4_1 { half d; half m; uint8_t qs[16]; }`
fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0f) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// `block_q5_0 { half d; uint8_t qh[4]; uint8_t qs[16]; }`: bit j of qh is the fifth bit of
/// element j.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = (((qs[j] & 0x0f) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// `block_q5_1 { half d; half m; uint8_t qh[4]; uint8_t qs[16]; }`
fn q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = ((qs[j] & 0x0f) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// `block_q8_0 { half d; int8_t qs[32]; }`
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = b[2 + j] as i8 as f32 * d;
    }
}

/// The j-th 6-bit scale and min packed in the 12 `scales` bytes of Q4_K / Q5_K
/// (`get_scale_min_k4` in ggml-quants.c).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K { half d; half dmin; uint8_t scales[12]; uint8_t qs[128]; }`
fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0x0f) as f32 - m1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `block_q5_K { half d; half dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; }`
fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (chunk, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * ((q[l] & 0x0f) + h1) as f32 - m1;
            y[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// `block_q6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; half d; }`
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half_block in 0..2 {
        let ql = &b[64 * half_block..64 * half_block + 64];
        let qh = &b[128 + 32 * half_block..128 + 32 * half_block + 32];
        let sc = &b[192 + 8 * half_block..192 + 8 * half_block + 8];
        let y = &mut y[128 * half_block..128 * half_block + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

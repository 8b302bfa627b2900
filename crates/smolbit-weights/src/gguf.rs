//! GGUF reader (versions 2 and 3, little-endian), following the format definition in
//! llama.cpp's `ggml/include/gguf.h` and gguf-py's `gguf_reader.py`.
//!
//! The file is memory-mapped; tensor data are borrowed slices of the map. Every count, length and
//! offset read from the file is checked against the bytes that remain before anything is allocated,
//! so a truncated or hostile file gives a [`GgufError`], never a panic or a huge allocation.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::dequant::{self, GgmlType};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("{path}: not a GGUF file (magic {found:02x?}, expected \"GGUF\")")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// Version 1, a big-endian file, or a future version.
    #[error("{path}: unsupported GGUF version {version} (supported: 2 and 3, little-endian)")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version field as read little-endian.
        version: u32,
    },
    /// The file ended before a structure it announces.
    #[error("{path}: truncated: {what} needs {needed} bytes at offset {offset}, file has {len}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Byte offset of the read.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// File length.
        len: u64,
    },
    /// A count or size that cannot be right (more entries than bytes left, too many dims...).
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the offending key or tensor named.
        what: String,
    },
    /// A tensor uses a ggml type this reader does not decode.
    #[error("{path}: tensor '{tensor}' has unsupported ggml type {type_id} ({name})")]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        tensor: String,
        /// Numeric type id.
        type_id: u32,
        /// ggml's name for it, or "unknown".
        name: &'static str,
    },
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `GGUF_TYPE_UINT8`
    U8(u8),
    /// `GGUF_TYPE_INT8`
    I8(i8),
    /// `GGUF_TYPE_UINT16`
    U16(u16),
    /// `GGUF_TYPE_INT16`
    I16(i16),
    /// `GGUF_TYPE_UINT32`
    U32(u32),
    /// `GGUF_TYPE_INT32`
    I32(i32),
    /// `GGUF_TYPE_FLOAT32`
    F32(f32),
    /// `GGUF_TYPE_BOOL`
    Bool(bool),
    /// `GGUF_TYPE_STRING`
    String(String),
    /// `GGUF_TYPE_ARRAY` (elements share one type)
    Array(Vec<Value>),
    /// `GGUF_TYPE_UINT64`
    U64(u64),
    /// `GGUF_TYPE_INT64`
    I64(i64),
    /// `GGUF_TYPE_FLOAT64`
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, if it is any number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if the value is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(a) => write!(f, "[{} elements]", a.len()),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// ggml dimensions, innermost (contiguous) first: a PyTorch `[out, in]` weight is `[in, out]`.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in PyTorch / safetensors order (outermost first).
    pub fn torch_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Bytes the data occupies.
    pub fn n_bytes(&self) -> u64 {
        self.ggml_type.bytes_for(self.n_elements())
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor directory in file order.
    pub tensors: Vec<TensorInfo>,
    data_start: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Open, map and parse a GGUF file.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; like every mmap-based model loader we rely on the file not
        // being truncated by another process while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), map)
    }

    fn parse(path: PathBuf, map: Mmap) -> Result<Self, GgufError> {
        let mut r = Reader {
            path: &path,
            bytes: &map,
            pos: 0,
        };
        let magic = r.take(4, "magic")?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic {
                path: path.clone(),
                found: magic.to_vec(),
            });
        }
        let version = r.u32("version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion {
                path: path.clone(),
                version,
            });
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor
        // entry at least 8 + 4 + 4 + 8 bytes: reject counts the file cannot possibly hold.
        r.plausible_count(n_kv, 13, "metadata count")?;
        r.plausible_count(n_tensors, 24, "tensor count")?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32(&format!("type of '{key}'"))?;
            let value = r.value(ty, &key, 0)?;
            metadata.push((key, value));
        }

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("name of tensor {i}"))?;
            let n_dims = r.u32(&format!("rank of tensor '{name}'"))? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.invalid(format!(
                    "tensor '{name}' has {n_dims} dimensions (expected 1..={MAX_DIMS})"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64(&format!("dimensions of tensor '{name}'"))?);
            }
            let type_id = r.u32(&format!("type of tensor '{name}'"))?;
            let offset = r.u64(&format!("offset of tensor '{name}'"))?;
            let ggml_type =
                GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnsupportedType {
                    path: path.clone(),
                    tensor: name.clone(),
                    type_id,
                    name: dequant::ggml_type_name(type_id),
                })?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }

        let alignment = match metadata
            .iter()
            .find(|(k, _)| k == crate::keys::GENERAL_ALIGNMENT)
        {
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(
                        r.invalid(format!("general.alignment is {v}, expected a power of two"))
                    );
                }
            },
            None => DEFAULT_ALIGNMENT,
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;

        let mut names = std::collections::HashSet::new();
        for t in &tensors {
            if !names.insert(t.name.as_str()) {
                return Err(r.invalid(format!("tensor '{}' appears twice", t.name)));
            }
            let mut n: u64 = 1;
            for &d in &t.dims {
                n = match n.checked_mul(d) {
                    Some(n) if d > 0 && n <= 1 << 40 => n,
                    _ => {
                        return Err(r.invalid(format!(
                            "tensor '{}' has absurd dimensions {:?}",
                            t.name, t.dims
                        )));
                    }
                };
            }
            let bs = t.ggml_type.block_size() as u64;
            if t.dims[0] % bs != 0 {
                return Err(r.invalid(format!(
                    "tensor '{}' has row length {} which is not a multiple of the {:?} block size {bs}",
                    t.name, t.dims[0], t.ggml_type
                )));
            }
            if t.offset % alignment != 0 {
                return Err(r.invalid(format!(
                    "tensor '{}' offset {} is not aligned to {alignment}",
                    t.name, t.offset
                )));
            }
            let end = data_start
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.n_bytes()));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(GgufError::Truncated {
                        path: path.clone(),
                        what: format!("data of tensor '{}'", t.name),
                        offset: data_start.saturating_add(t.offset),
                        needed: t.n_bytes(),
                        len: file_len,
                    });
                }
            }
        }

        Ok(GgufFile {
            path,
            map,
            version,
            metadata,
            tensors,
            data_start,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A tensor's directory entry by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw (possibly quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        // Bounds were checked in `parse`.
        let start = (self.data_start + info.offset) as usize;
        &self.map[start..start + info.n_bytes() as usize]
    }

    /// A tensor dequantized to f32, in ggml element order (innermost dimension contiguous).
    pub fn tensor_f32(&self, info: &TensorInfo) -> Vec<f32> {
        let mut out = vec![0f32; info.n_elements() as usize];
        dequant::dequantize(info.ggml_type, self.tensor_bytes(info), &mut out);
        out
    }

    /// A required metadata value, with an error that names the key.
    pub fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::Invalid {
            path: self.path.clone(),
            what: format!("missing metadata key '{key}'"),
        })
    }

    /// A required unsigned integer value.
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, v, "an unsigned integer"))
    }

    /// A required float value.
    pub fn require_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64()
            .ok_or_else(|| self.wrong_type(key, v, "a number"))
    }

    /// A required string value.
    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, v, "a string"))
    }

    /// An error for a value of the wrong type.
    pub fn wrong_type(&self, key: &str, v: &Value, expected: &str) -> GgufError {
        GgufError::Invalid {
            path: self.path.clone(),
            what: format!(
                "metadata key '{key}' is {} {v}, expected {expected}",
                v.type_name()
            ),
        }
    }
}

/// Nested arrays deeper than this are refused (llama.cpp never writes nested arrays).
const MAX_ARRAY_NESTING: u32 = 4;

struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n,
                len: self.bytes.len() as u64,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn invalid(&self, what: String) -> GgufError {
        GgufError::Invalid {
            path: self.path.to_path_buf(),
            what,
        }
    }

    fn plausible_count(&self, n: u64, min_size: u64, what: &str) -> Result<(), GgufError> {
        if n.saturating_mul(min_size) > self.remaining() {
            return Err(self.invalid(format!(
                "{what} {n} is impossible: only {} bytes follow at offset {}",
                self.remaining(),
                self.pos
            )));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let at = self.pos;
        let s = self.take(len, what)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| self.invalid(format!("{what} at offset {at} is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        let what = format!("value of '{key}'");
        Ok(match ty {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.invalid(format!("'{key}' has bool byte {b}"))),
            },
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(self.invalid(format!("'{key}' nests arrays too deeply")));
                }
                let elem_ty = self.u32(&what)?;
                let n = self.u64(&what)?;
                let min_size = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    _ => 1,
                };
                self.plausible_count(n, min_size, &format!("array length of '{key}'"))?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(self.invalid(format!(
                    "metadata key '{key}' has unknown value type {other}"
                )));
            }
        })
    }
}

// ------------------------------------------------------------------------------------- writing

/// One tensor of a GGUF file to be written.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape in PyTorch order (outermost first); written innermost first, as ggml stores it.
    pub shape: Vec<usize>,
    /// Storage type.
    pub ggml_type: GgmlType,
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.push(*v as u8),
            Value::U16(v) => out.extend(v.to_le_bytes()),
            Value::I16(v) => out.extend(v.to_le_bytes()),
            Value::U32(v) => out.extend(v.to_le_bytes()),
            Value::I32(v) => out.extend(v.to_le_bytes()),
            Value::F32(v) => out.extend(v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(s) => {
                out.extend((s.len() as u64).to_le_bytes());
                out.extend(s.as_bytes());
            }
            Value::Array(items) => {
                // An empty array's element type is never read; gguf-py writes 0 (u8) too.
                out.extend(items.first().map_or(0, Value::type_id).to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for v in items {
                    v.write_to(out);
                }
            }
            Value::U64(v) => out.extend(v.to_le_bytes()),
            Value::I64(v) => out.extend(v.to_le_bytes()),
            Value::F64(v) => out.extend(v.to_le_bytes()),
        }
    }
}

/// Write a GGUF v3 file (little-endian, 32-byte alignment, as gguf-py's `GGUFWriter`): the
/// metadata, the tensor directory from `tensors`, then each tensor's bytes as `data(i)` returns
/// them, one tensor in memory at a time. Arrays must hold one value type.
pub fn write_streaming<E>(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[TensorSpec],
    mut data: impl FnMut(usize) -> Result<Vec<u8>, E>,
) -> Result<(), E>
where
    E: From<GgufError>,
{
    use std::io::Write;
    let io = |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::new();
    head.extend(GGUF_MAGIC);
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        Value::String(k.clone()).write_to(&mut head);
        head.extend(v.type_id().to_le_bytes());
        v.write_to(&mut head);
    }
    let align = DEFAULT_ALIGNMENT;
    let mut offset = 0u64;
    let mut sizes = Vec::with_capacity(tensors.len());
    for t in tensors {
        Value::String(t.name.clone()).write_to(&mut head);
        head.extend((t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            head.extend((d as u64).to_le_bytes());
        }
        head.extend(t.ggml_type.id().to_le_bytes());
        head.extend(offset.to_le_bytes());
        let n = t
            .ggml_type
            .bytes_for(t.shape.iter().product::<usize>() as u64);
        sizes.push(n);
        offset += n.div_ceil(align) * align;
    }
    head.resize(
        (head.len() as u64).div_ceil(align) as usize * align as usize,
        0,
    );
    let file = File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    w.write_all(&head).map_err(io)?;
    for (i, (t, &n)) in tensors.iter().zip(&sizes).enumerate() {
        let bytes = data(i)?;
        if bytes.len() as u64 != n {
            return Err(GgufError::Invalid {
                path: path.to_path_buf(),
                what: format!(
                    "tensor '{}': {} bytes given, {:?} {:?} takes {n}",
                    t.name,
                    bytes.len(),
                    t.shape,
                    t.ggml_type
                ),
            }
            .into());
        }
        w.write_all(&bytes).map_err(io)?;
        let pad = n.div_ceil(align) * align - n;
        w.write_all(&vec![0u8; pad as usize]).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

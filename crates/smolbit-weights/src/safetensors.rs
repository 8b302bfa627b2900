//! safetensors reading (memory-mapped, single file or sharded with `model.safetensors.index.json`)
//! and streaming writing (one tensor in memory at a time).
//!
//! Format: an 8-byte little-endian header length, a JSON header mapping each tensor name to
//! `{"dtype", "shape", "data_offsets": [begin, end]}` relative to the end of the header, then the
//! data. See <https://github.com/huggingface/safetensors>.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use serde::Deserialize;

/// Header sizes past this are refused (real headers are a few hundred KB).
const MAX_HEADER: u64 = 100 << 20;

/// Element types smolbit reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// `F32`
    F32,
    /// `F16`
    F16,
    /// `BF16`
    BF16,
    /// `U8` (packed trits)
    U8,
    /// `I8` (8-bit scale codes)
    I8,
}

impl Dtype {
    /// The safetensors spelling.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U8 | Dtype::I8 => 1,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            _ => return None,
        })
    }

    /// The `torch_dtype` / `dtype` spelling used in config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            Dtype::U8 => "uint8",
            Dtype::I8 => "int8",
        }
    }
}

/// Why safetensors data could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// OS error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A malformed header, index or data layout.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A tensor that is not there.
    #[error("{path}: no tensor named '{name}'")]
    Missing {
        /// The model file or directory.
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// One tensor's place in a file.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    file: usize,
    begin: usize,
    end: usize,
}

struct Mapped {
    path: PathBuf,
    map: Mmap,
}

/// A memory-mapped safetensors checkpoint, one file or several shards.
pub struct SafeTensors {
    root: PathBuf,
    files: Vec<Mapped>,
    entries: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensors")
            .field("root", &self.root)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SafetensorsError + '_ {
    move |source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, what: impl Into<String>) -> SafetensorsError {
    SafetensorsError::Invalid {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

impl SafeTensors {
    /// Open the weights of a model directory: `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self, SafetensorsError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            return Self::open_files(dir, &[single]);
        }
        if !index.is_file() {
            return Err(invalid(
                dir,
                "no model.safetensors or model.safetensors.index.json in this directory",
            ));
        }
        #[derive(Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
        let parsed: Index = serde_json::from_str(&text)
            .map_err(|e| invalid(&index, format!("not a safetensors index: {e}")))?;
        let mut shards: Vec<&String> = parsed.weight_map.values().collect();
        shards.sort();
        shards.dedup();
        for s in &shards {
            if s.contains('/') || s.contains('\\') || s.starts_with('.') {
                return Err(invalid(
                    &index,
                    format!("shard name '{s}' is not a plain file name"),
                ));
            }
        }
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        let st = Self::open_files(dir, &paths)?;
        for (name, shard) in &parsed.weight_map {
            let Some(e) = st.entries.get(name) else {
                return Err(invalid(
                    &index,
                    format!("lists tensor '{name}' in {shard}, which does not contain it"),
                ));
            };
            if st.files[e.file].path != dir.join(shard) {
                return Err(invalid(
                    &index,
                    format!("lists tensor '{name}' in {shard}, but it is in another shard"),
                ));
            }
        }
        Ok(st)
    }

    /// Open one or more safetensors files as one checkpoint.
    pub fn open_files(root: &Path, paths: &[PathBuf]) -> Result<Self, SafetensorsError> {
        let mut st = SafeTensors {
            root: root.to_path_buf(),
            files: Vec::new(),
            entries: BTreeMap::new(),
            metadata: BTreeMap::new(),
        };
        for path in paths {
            let file = File::open(path).map_err(io_err(path))?;
            // SAFETY: read-only map; the file must not be truncated while open (as for every
            // mmap-based checkpoint loader).
            let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
            let idx = st.files.len();
            st.parse_header(path, &map, idx)?;
            st.files.push(Mapped {
                path: path.clone(),
                map,
            });
        }
        Ok(st)
    }

    fn parse_header(
        &mut self,
        path: &Path,
        map: &[u8],
        file: usize,
    ) -> Result<(), SafetensorsError> {
        if map.len() < 8 {
            return Err(invalid(
                path,
                format!("truncated: {} bytes, header needs 8", map.len()),
            ));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&map[..8]);
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER || 8 + n > map.len() as u64 {
            return Err(invalid(
                path,
                format!(
                    "header length {n} does not fit in the file's {} bytes",
                    map.len()
                ),
            ));
        }
        let data_start = 8 + n as usize;
        let header: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&map[8..data_start])
                .map_err(|e| invalid(path, format!("bad JSON header: {e}")))?;
        let data_len = (map.len() - data_start) as u64;
        for (name, v) in header {
            if name == "__metadata__" {
                if let Ok(m) = serde_json::from_value::<BTreeMap<String, String>>(v) {
                    self.metadata.extend(m);
                }
                continue;
            }
            let raw: RawEntry = serde_json::from_value(v)
                .map_err(|e| invalid(path, format!("tensor '{name}': bad header entry: {e}")))?;
            let dtype = Dtype::parse(&raw.dtype).ok_or_else(|| {
                invalid(
                    path,
                    format!("tensor '{name}' has unsupported dtype {}", raw.dtype),
                )
            })?;
            let n_el = raw
                .shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
                .ok_or_else(|| {
                    invalid(
                        path,
                        format!("tensor '{name}' has absurd shape {:?}", raw.shape),
                    )
                })?;
            let [b, e] = raw.data_offsets;
            if b > e || e > data_len || n_el.checked_mul(dtype.size() as u64) != Some(e - b) {
                return Err(invalid(
                    path,
                    format!(
                        "tensor '{name}': data_offsets [{b}, {e}] do not match shape {:?} {} within {data_len} data bytes",
                        raw.shape, raw.dtype
                    ),
                ));
            }
            if self.entries.contains_key(&name) {
                return Err(invalid(
                    path,
                    format!("tensor '{name}' appears in two shards"),
                ));
            }
            self.entries.insert(
                name,
                Entry {
                    dtype,
                    shape: raw.shape,
                    file,
                    begin: data_start + b as usize,
                    end: data_start + e as usize,
                },
            );
        }
        Ok(())
    }

    /// The directory or file this checkpoint was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The `__metadata__` strings of all shards.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// A tensor's entry, or a [`SafetensorsError::Missing`].
    pub fn entry(&self, name: &str) -> Result<&Entry, SafetensorsError> {
        self.entries
            .get(name)
            .ok_or_else(|| SafetensorsError::Missing {
                path: self.root.clone(),
                name: name.to_string(),
            })
    }

    /// The file holding `name` (its shard), for error messages; the checkpoint's directory
    /// when there is no such tensor.
    pub fn file_of(&self, name: &str) -> &Path {
        self.entries
            .get(name)
            .map_or(self.root.as_path(), |e| self.files[e.file].path.as_path())
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, name: &str) -> Result<&[u8], SafetensorsError> {
        let e = self.entry(name)?;
        Ok(&self.files[e.file].map[e.begin..e.end])
    }

    /// A float tensor converted to f32, row-major.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, SafetensorsError> {
        let e = self.entry(name)?;
        self.decode_f32(name, e, &self.files[e.file].map[e.begin..e.end])
    }

    /// Rows `start .. start + count` of a float matrix whose rows are `cols` wide, as f32 (for
    /// reading a large table in pieces).
    pub fn rows_f32(
        &self,
        name: &str,
        cols: usize,
        start: usize,
        count: usize,
    ) -> Result<Vec<f32>, SafetensorsError> {
        let e = self.entry(name)?;
        let width = cols * e.dtype.size();
        let (from, to) = (e.begin + start * width, e.begin + (start + count) * width);
        if to > e.end {
            return Err(invalid(
                &self.files[e.file].path,
                format!(
                    "tensor '{name}': rows {start}..{} out of range",
                    start + count
                ),
            ));
        }
        self.decode_f32(name, e, &self.files[e.file].map[from..to])
    }

    /// Drop this process's mapped pages of every file (they stay in the page cache): weights
    /// read into memory would otherwise be counted twice in the resident set while a model
    /// loads, once as the checkpoint's mapped pages and once as the loaded copy.
    pub fn release(&self) {
        #[cfg(unix)]
        for f in &self.files {
            // SAFETY: the mapping is read-only and file-backed, so dropped pages read back
            // unchanged from the file on the next access; no reference into the dropped range is
            // invalidated (the memory stays mapped).
            let _ = unsafe { f.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    fn decode_f32(&self, name: &str, e: &Entry, b: &[u8]) -> Result<Vec<f32>, SafetensorsError> {
        Ok(match e.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::I8 => b.iter().map(|&v| f32::from(v as i8)).collect(),
            Dtype::U8 => {
                return Err(invalid(
                    &self.files[e.file].path,
                    format!("tensor '{name}' is U8, expected a float dtype"),
                ));
            }
        })
    }
}

/// f32 values encoded as little-endian bytes of `dtype` (rounding to nearest for f16/bf16).
pub fn encode_f32(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::U8 => values.iter().map(|v| *v as u8).collect(),
        Dtype::I8 => values.iter().map(|v| *v as i8 as u8).collect(),
    }
}

/// What one tensor of a file to be written looks like.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    /// Name in the header.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    fn n_bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Write a safetensors file, asking `data` for each tensor's bytes in `specs` order so that only
/// one tensor is in memory at a time. The header is written first from the specs.
pub fn write_streaming<E>(
    path: &Path,
    specs: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
    mut data: impl FnMut(usize, &TensorSpec) -> Result<Vec<u8>, E>,
) -> Result<(), E>
where
    E: From<SafetensorsError>,
{
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).map_err(|e| invalid(path, e.to_string()))?,
        );
    }
    let mut offset = 0usize;
    for s in specs {
        let n = s.n_bytes();
        header.insert(
            s.name.clone(),
            serde_json::json!({"dtype": s.dtype.name(), "shape": s.shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| invalid(path, e.to_string()))?;
    // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    while (8 + json.len()) % 8 != 0 {
        json.push(b' ');
    }
    let file = File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let io = |e| -> E {
        SafetensorsError::Io {
            path: path.to_path_buf(),
            source: e,
        }
        .into()
    };
    w.write_all(&(json.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&json).map_err(io)?;
    for (i, s) in specs.iter().enumerate() {
        let bytes = data(i, s)?;
        if bytes.len() != s.n_bytes() {
            return Err(invalid(
                path,
                format!(
                    "tensor '{}': got {} bytes, shape {:?} {} needs {}",
                    s.name,
                    bytes.len(),
                    s.shape,
                    s.dtype.name(),
                    s.n_bytes()
                ),
            )
            .into());
        }
        w.write_all(&bytes).map_err(io)?;
    }
    w.flush().map_err(io)?;
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok(())
}

//! Reading and writing safetensors files, checked before any tensor is
//! materialised: a header that lies about its data gives a typed error with
//! the reason, never a panic or an unbounded allocation.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// Largest header accepted, the limit of the `safetensors` library (100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type as the header names it (`F32`, `BF16`, `I64`, ...).
    pub dtype_name: String,
    /// The float type weights may have (F32, F16, BF16, F64); `None` for
    /// other types, which only tensors the model does not use may have.
    pub dtype: Option<DType>,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub start: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
}

/// A memory-mapped, validated safetensors file.
pub struct SafetensorsFile {
    name: String,
    mmap: Mmap,
    data_start: usize,
    /// The tensors, in header order of their offsets.
    pub tensors: Vec<TensorInfo>,
    /// `__metadata__` of the header.
    pub metadata: serde_json::Map<String, Value>,
}

/// Element size of every safetensors dtype, and the candle type of the float ones.
fn dtype_of(s: &str) -> Option<(Option<DType>, usize)> {
    Some(match s {
        "F32" => (Some(DType::F32), 4),
        "F16" => (Some(DType::F16), 2),
        "BF16" => (Some(DType::BF16), 2),
        "F64" => (Some(DType::F64), 8),
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => (None, 1),
        "I16" | "U16" => (None, 2),
        "I32" | "U32" => (None, 4),
        "I64" | "U64" => (None, 8),
        _ => return None,
    })
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        _ => "F32",
    }
}

/// A parsed and validated safetensors header.
pub(crate) struct Header {
    /// Offset of the data section in the file.
    pub(crate) data_start: usize,
    /// The tensors, sorted by offset, tiling the data section exactly.
    pub(crate) tensors: Vec<TensorInfo>,
    /// `__metadata__`.
    pub(crate) metadata: serde_json::Map<String, Value>,
}

/// Parses and checks the header of a whole safetensors file's bytes.
pub(crate) fn parse_header(name: &str, mmap: &[u8]) -> Result<Header> {
    let err = |r: String| ModelError::st(name, r);
    let len = mmap.len() as u64;
    if len < 8 {
        return Err(err(format!(
            "file of {len} bytes is shorter than the 8-byte header length"
        )));
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&mmap[..8]);
    let n = u64::from_le_bytes(n8);
    if n > MAX_HEADER_BYTES {
        return Err(err(format!(
            "header of {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit"
        )));
    }
    if 8 + n > len {
        return Err(err(format!(
            "header of {n} bytes runs past the end of the {len}-byte file"
        )));
    }
    let data_start = 8 + n as usize;
    let data_len = mmap.len() - data_start;
    let header: Value = serde_json::from_slice(&mmap[8..data_start])
        .map_err(|e| err(format!("header is not valid JSON: {e}")))?;
    let Value::Object(map) = header else {
        return Err(err("header is not a JSON object".into()));
    };
    let mut metadata = serde_json::Map::new();
    let mut tensors = Vec::with_capacity(map.len());
    for (key, v) in map {
        if key == "__metadata__" {
            match v {
                Value::Object(m) if m.values().all(Value::is_string) => metadata = m,
                _ => return Err(err("__metadata__ must map strings to strings".into())),
            }
            continue;
        }
        let bad = |what: &str| err(format!("tensor {key}: {what}"));
        let o = v.as_object().ok_or_else(|| bad("entry is not an object"))?;
        let ds = o
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no dtype"))?;
        let (dtype, size) = dtype_of(ds).ok_or_else(|| bad(&format!("unknown dtype {ds}")))?;
        let shape: Vec<usize> = o
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("shape is not a list of non-negative integers"))?;
        let offs: Vec<usize> = o
            .get("data_offsets")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no data_offsets"))?
            .iter()
            .map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("data_offsets are not non-negative integers"))?;
        let [start, end] = offs[..] else {
            return Err(bad("data_offsets must hold two numbers"));
        };
        if start > end {
            return Err(bad(&format!("data_offsets [{start}, {end}] are reversed")));
        }
        if end > data_len {
            return Err(bad(&format!(
                "data_offsets [{start}, {end}] lie outside the {data_len}-byte data section"
            )));
        }
        let bytes = shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("shape overflows"))?;
        if bytes != end - start {
            return Err(bad(&format!(
                "{ds} x {shape:?} needs {bytes} bytes but data_offsets [{start}, {end}] hold {}",
                end - start
            )));
        }
        tensors.push(TensorInfo {
            name: key,
            dtype_name: ds.to_string(),
            dtype,
            shape,
            start,
            end,
        });
    }
    tensors.sort_by_key(|t| (t.start, t.end));
    // As the safetensors library: tensors tile the data section exactly.
    let mut pos = 0usize;
    for t in &tensors {
        if t.start < pos {
            return Err(err(format!(
                "tensor {} overlaps the previous tensor (starts at {} < {pos})",
                t.name, t.start
            )));
        }
        if t.start > pos {
            return Err(err(format!(
                "gap in the data section before tensor {} ({pos}..{})",
                t.name, t.start
            )));
        }
        pos = t.end;
    }
    if pos != data_len {
        return Err(err(format!(
            "data section has {data_len} bytes but the tensors cover {pos}"
        )));
    }
    Ok(Header {
        data_start,
        tensors,
        metadata,
    })
}

impl SafetensorsFile {
    /// Opens, maps and validates `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Regular files only: a FIFO would block the open, a device would map forever.
        let (file, _) = pretrain_core::bounded::open_regular(path, u64::MAX)
            .map_err(|e| ModelError::io(path, e))?;
        // Safety: the file is only read; a file changed underneath us while
        // mapped is outside the contract (the validator owns its snapshots).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        Self::from_mmap(name, mmap)
    }

    fn from_mmap(name: String, mmap: Mmap) -> Result<Self> {
        let Header {
            data_start,
            tensors,
            metadata,
        } = parse_header(&name, &mmap)?;
        Ok(Self {
            name,
            mmap,
            data_start,
            tensors,
            metadata,
        })
    }

    /// The file's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw bytes of a tensor.
    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.mmap[self.data_start + t.start..self.data_start + t.end]
    }

    /// Materialises a tensor as f32 on `device`.
    pub fn load(&self, t: &TensorInfo, device: &Device) -> Result<Tensor> {
        let dtype = t.dtype.ok_or_else(|| {
            ModelError::st(
                &self.name,
                format!(
                    "tensor {} has dtype {}; weights must be F32, F16, BF16 or F64",
                    t.name, t.dtype_name
                ),
            )
        })?;
        let raw = Tensor::from_raw_buffer(self.bytes(t), dtype, &t.shape, &Device::Cpu)?;
        let raw = if dtype == DType::F32 {
            raw
        } else {
            raw.to_dtype(DType::F32)?
        };
        Ok(raw.to_device(device)?)
    }
}

/// Writes `tensors` (sorted by name, all f32) as a safetensors file byte for
/// byte as the Python `safetensors` library does, with `metadata`.
pub fn write(path: &Path, tensors: &[(String, Tensor)], metadata: &[(&str, &str)]) -> Result<()> {
    write_as(path, tensors, metadata, DType::F32)
}

/// [`write`] with every tensor stored as `dtype` (F32, F16 or BF16; torch's
/// round-to-nearest-even cast).
pub fn write_as(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &[(&str, &str)],
    dtype: DType,
) -> Result<()> {
    let size = match dtype {
        DType::F32 => 4,
        DType::F16 | DType::BF16 => 2,
        other => {
            return Err(ModelError::st(
                &path.display().to_string(),
                format!("cannot write tensors as {other:?}"),
            ))
        }
    };
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = String::from("{");
    if !metadata.is_empty() {
        let m: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        header.push_str(&format!("\"__metadata__\":{}", Value::Object(m)));
    }
    let mut offset = 0usize;
    for (i, (name, t)) in sorted.iter().enumerate() {
        if i > 0 || !metadata.is_empty() {
            header.push(',');
        }
        let bytes = t.elem_count() * size;
        let shape: Vec<String> = t.dims().iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            Value::String(name.clone()),
            dtype_name(dtype),
            shape.join(","),
            offset,
            offset + bytes
        ));
        offset += bytes;
    }
    header.push('}');
    while header.len() & 7 != 0 {
        header.push(' ');
    }
    let file = File::create(path).map_err(|e| ModelError::io(path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let io = |e| ModelError::io(path, e);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(header.as_bytes()).map_err(io)?;
    for (_, t) in sorted {
        t.to_dtype(dtype)?.write_bytes(&mut out)?;
    }
    let file = out
        .into_inner()
        .map_err(|e| ModelError::io(path, e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(())
}

//! Hugging Face `save_pretrained` directories: [`config`] (`config.json`
//! read and written as `transformers` does), [`safetensors`] (the file
//! format, checked, memory-mapped, written byte for byte), and the weights of
//! a directory (single file or shards) matched against a config.

pub mod config;
pub mod safetensors;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;

use self::safetensors::{SafetensorsFile, TensorInfo};
use crate::arch::{Architecture, ModelConfig};
use crate::error::{ModelError, Result};

/// File name of single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the index of sharded weights.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// Opens the safetensors weights of `dir` (single file or shards); rejects
/// pickle-only directories.
pub fn open_weights(dir: &Path) -> Result<Vec<SafetensorsFile>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![SafetensorsFile::open(&single)?]);
    }
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if index.is_file() {
        let text =
            pretrain_core::bounded::read_regular(&index, pretrain_core::bounded::SMALL_FILE_LIMIT)
                .map_err(|e| ModelError::io(&index, e))?;
        let json: Value = serde_json::from_slice(&text)
            .map_err(|e| ModelError::st(WEIGHTS_INDEX_FILE, format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::st(WEIGHTS_INDEX_FILE, "no weight_map object"))?;
        let mut shards: Vec<&str> = Vec::new();
        for v in map.values() {
            let f = v.as_str().ok_or_else(|| {
                ModelError::st(WEIGHTS_INDEX_FILE, "weight_map values must be file names")
            })?;
            // Only plain file names inside the directory: no path escapes.
            if f.contains('/')
                || f.contains('\\')
                || f.starts_with('.')
                || !f.ends_with(".safetensors")
            {
                return Err(ModelError::st(
                    WEIGHTS_INDEX_FILE,
                    format!("bad shard file name {f:?}"),
                ));
            }
            if !shards.contains(&f) {
                shards.push(f);
            }
        }
        shards.sort_unstable();
        return shards
            .iter()
            .map(|f| SafetensorsFile::open(&dir.join(f)))
            .collect();
    }
    let mut pickles = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if [".bin", ".pt", ".pth", ".ckpt", ".pkl"]
                .iter()
                .any(|s| n.ends_with(s))
            {
                pickles.push(n);
            }
        }
    }
    if !pickles.is_empty() {
        pickles.sort();
        return Err(ModelError::PickleWeights(pickles.join(", ")));
    }
    Err(ModelError::NoWeights(dir.to_path_buf()))
}

/// Maps every tensor the config needs to its file entry, checking shapes.
/// GPT-2 files saved from the bare `GPT2Model` (no `transformer.` prefix) are accepted.
pub fn match_tensors<'a>(
    cfg: &ModelConfig,
    files: &'a [SafetensorsFile],
) -> Result<Vec<(String, &'a SafetensorsFile, &'a TensorInfo)>> {
    let mut found: BTreeMap<&str, (&SafetensorsFile, &TensorInfo)> = BTreeMap::new();
    for f in files {
        for t in &f.tensors {
            if found.insert(t.name.as_str(), (f, t)).is_some() {
                return Err(ModelError::st(
                    f.name(),
                    format!("tensor {} appears twice", t.name),
                ));
            }
        }
    }
    let mut out = Vec::new();
    for (name, shape) in cfg.tensor_shapes() {
        let hit = found
            .get(name.as_str())
            .or_else(|| name.strip_prefix("transformer.").and_then(|n| found.get(n)))
            .filter(|_| {
                cfg.architecture() == Architecture::Gpt2 || !name.starts_with("transformer.")
            });
        let Some(&(f, t)) = hit else {
            return Err(ModelError::MissingTensor(name));
        };
        if t.dtype.is_none() {
            return Err(ModelError::st(
                f.name(),
                format!(
                    "tensor {name} has dtype {}; weights must be F32, F16, BF16 or F64",
                    t.dtype_name
                ),
            ));
        }
        if t.shape != shape {
            return Err(ModelError::WrongShape {
                name,
                found: t.shape.clone(),
                expected: shape,
            });
        }
        out.push((name, f, t));
    }
    Ok(out)
}

//! The validator's model checks: architecture allowed, weights in
//! safetensors and honest, tensors as the config says, parameter and size
//! limits. Nothing here materialises a tensor: only headers and the config
//! are read, so a hostile file costs at most its header (capped at 100 MB).

use std::fs;
use std::path::Path;

use pretrain_core::constants::{MAX_MODEL_BYTES, MAX_MODEL_PARAMETERS};
use serde::Serialize;

use crate::arch::Architecture;
use crate::error::{ModelError, Result};
use crate::hf::config::read_config;
use crate::hf::{match_tensors, open_weights};

/// Limits a model must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most parameters allowed.
    pub max_params: u64,
    /// Most bytes of files allowed in the directory.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_params: MAX_MODEL_PARAMETERS,
            max_bytes: MAX_MODEL_BYTES,
        }
    }
}

/// What a successful check learned about a model directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    /// The architecture.
    pub architecture: Architecture,
    /// Parameter count (each distinct tensor once).
    pub params: u64,
    /// Total size of the directory's files.
    pub size_bytes: u64,
}

/// Total size in bytes of the files under `dir`: regular files, and the
/// targets of symlinks to files (they are hashed, loaded and uploaded as
/// their targets, so they count as such); links to directories are not
/// descended into, as the hash does not.
pub fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| ModelError::io(&d, e))? {
            let e = e.map_err(|e| ModelError::io(&d, e))?;
            let ft = e.file_type().map_err(|err| ModelError::io(e.path(), err))?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                total = total.saturating_add(
                    e.metadata()
                        .map_err(|err| ModelError::io(e.path(), err))?
                        .len(),
                );
            } else if ft.is_symlink() {
                // A broken link counts nothing here; reading it fails later with its name.
                if let Ok(m) = fs::metadata(e.path()) {
                    if m.is_file() {
                        total = total.saturating_add(m.len());
                    } else if !m.is_dir() {
                        return Err(special(&e.path(), &m));
                    }
                }
            } else {
                // A FIFO, socket or device: it cannot be hashed or uploaded, so no model has one.
                let m = e.metadata().map_err(|err| ModelError::io(e.path(), err))?;
                return Err(special(&e.path(), &m));
            }
        }
    }
    Ok(total)
}

fn special(path: &Path, m: &fs::Metadata) -> ModelError {
    let kind = pretrain_core::bounded::kind_of(m);
    ModelError::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a {kind}, not a regular file"),
        ),
    )
}

/// Checks a `save_pretrained` directory; the error's message is the reason.
pub fn check_model_dir(dir: &Path, limits: Limits) -> Result<ModelInfo> {
    let size_bytes = dir_size(dir)?;
    if size_bytes > limits.max_bytes {
        return Err(ModelError::TooLarge {
            size: size_bytes,
            limit: limits.max_bytes,
        });
    }
    let (_, config) = read_config(dir)?;
    // From the config alone, before reading any weights.
    let params = config.param_count();
    if params > limits.max_params {
        return Err(ModelError::TooManyParameters {
            count: params,
            limit: limits.max_params,
        });
    }
    let files = open_weights(dir)?;
    match_tensors(&config, &files)?;
    Ok(ModelInfo {
        architecture: config.architecture(),
        params,
        size_bytes,
    })
}

/// [`check_model_dir`] as a reason string: `None` when the model passes.
pub fn check_reason(dir: &Path, limits: Limits) -> Option<String> {
    check_model_dir(dir, limits).err().map(|e| e.to_string())
}

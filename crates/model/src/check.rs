//! The validator's model checks: architecture allowed, weights in
//! safetensors and honest, tensors as the config says, parameter and size
//! limits. Nothing here materialises a tensor: [`check_model_dir`] reads only
//! headers and the config, so a hostile file costs at most its header (capped
//! at 100 MB); [`check_finite_weights`] reads the mapped weights in place.

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

/// The validator's check after loading, made before: every weight the model
/// uses is finite once read as the f32 it computes in (a NaN, an infinity, or
/// an F64 beyond f32's range). The error names the first tensor that is not.
/// Unlike [`check_model_dir`] this reads every weight (mapped, not copied).
pub fn check_finite_weights(dir: &Path) -> Result<()> {
    let (_, config) = read_config(dir)?;
    let files = open_weights(dir)?;
    for (name, file, info) in match_tensors(&config, &files)? {
        if !all_finite(&info.dtype_name, file.bytes(info)) {
            return Err(non_finite(&name));
        }
    }
    Ok(())
}

/// The refusal of a weight that is not finite, as the validator words it.
pub(crate) fn non_finite(name: &str) -> ModelError {
    ModelError::NonFinite(name.to_string())
}

// Whether every element of a little-endian float tensor is finite as f32; a
// float's exponent bits all set is NaN or ±inf in every IEEE format.
fn all_finite(dtype: &str, bytes: &[u8]) -> bool {
    match dtype {
        "F32" => bytes
            .chunks_exact(4)
            .all(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 != 0x7f80_0000),
        "BF16" => bytes
            .chunks_exact(2)
            .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 != 0x7f80),
        "F16" => bytes
            .chunks_exact(2)
            .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 != 0x7c00),
        "F64" => bytes.chunks_exact(8).all(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            (f64::from_le_bytes(b) as f32).is_finite()
        }),
        // Not a float: match_tensors refuses it as a weight before this.
        _ => true,
    }
}

/// [`check_model_dir`] as a reason string: `None` when the model passes.
pub fn check_reason(dir: &Path, limits: Limits) -> Option<String> {
    check_model_dir(dir, limits).err().map(|e| e.to_string())
}

#[cfg(test)]
mod finite_tests {
    use super::*;

    fn bits_f32(x: f32) -> Vec<u8> {
        x.to_le_bytes().to_vec()
    }

    #[test]
    fn every_float_format_tells_nan_and_inf_from_its_largest_finite_value() {
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("F32", bits_f32(f32::MAX), true),
            ("F32", bits_f32(-0.0), true),
            ("F32", bits_f32(f32::MIN_POSITIVE / 2.0), true), // subnormal
            ("F32", bits_f32(f32::NAN), false),
            ("F32", bits_f32(f32::NEG_INFINITY), false),
            ("F16", 0x7bffu16.to_le_bytes().to_vec(), true), // 65504
            ("F16", 0x7c00u16.to_le_bytes().to_vec(), false), // inf
            ("F16", 0xfe00u16.to_le_bytes().to_vec(), false), // NaN
            ("BF16", 0x7f7fu16.to_le_bytes().to_vec(), true), // bf16 max
            ("BF16", 0xff80u16.to_le_bytes().to_vec(), false), // -inf
            ("BF16", 0x7fc1u16.to_le_bytes().to_vec(), false), // NaN
            ("F64", 1e38f64.to_le_bytes().to_vec(), true),
            ("F64", 1e39f64.to_le_bytes().to_vec(), false), // inf once f32
            ("F64", f64::NAN.to_le_bytes().to_vec(), false),
        ];
        for (dtype, mut bytes, want) in cases {
            assert_eq!(all_finite(dtype, &bytes), want, "{dtype} {bytes:?}");
            // The bad element anywhere in a tensor is found.
            let mut padded = vec![0u8; bytes.len() * 3];
            padded.append(&mut bytes);
            assert_eq!(all_finite(dtype, &padded), want, "{dtype} padded");
        }
    }
}

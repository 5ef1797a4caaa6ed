//! Key files on disk: bounded reads of regular files only, atomic writes
//! with mode 0600 that never replace a key unless asked, directory listings.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::crypto::encryption;
use super::{KeyPair, WalletError};

pub(super) fn sorted_dir_names(
    dir: &Path,
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<String>, WalletError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(WalletError::Io {
                action: "cannot list",
                path: dir.to_path_buf(),
                cause: source,
            })
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| keep(&e.path()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

// The SS58 address stored in a public key file (or any unencrypted keyfile).
pub(super) fn public_ss58(path: &Path) -> Result<String, WalletError> {
    let data = read_key_file(path)?;
    if encryption(&data).is_some() {
        return Err(WalletError::Encrypted {
            path: path.to_path_buf(),
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(&data).map_err(|e| WalletError::Malformed {
            path: path.to_path_buf(),
            reason: format!("not JSON ({e})"),
        })?;
    if let Some(ss58) = value.get("ss58Address").and_then(|v| v.as_str()) {
        if bittensor_wallet::utils::is_valid_ss58_address(ss58) {
            return Ok(ss58.to_string());
        }
        return Err(WalletError::Malformed {
            path: path.to_path_buf(),
            reason: format!("ss58Address {ss58:?} is not a valid SS58 address"),
        });
    }
    // Older public files may carry only the public key.
    Ok(KeyPair::from_keyfile_json(path, &data)?.ss58())
}

// Key files are a few hundred bytes; anything far larger, or not a regular file, is not one.
const MAX_KEY_FILE_BYTES: u64 = 64 << 10;

pub(super) fn read_key_file(path: &Path) -> Result<Vec<u8>, WalletError> {
    pretrain_core::bounded::read_regular(path, MAX_KEY_FILE_BYTES).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            WalletError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            WalletError::Io {
                action: "cannot read",
                path: path.to_path_buf(),
                cause: source,
            }
        }
    })
}
pub(super) fn refuse_existing(paths: &[&Path], overwrite: bool) -> Result<(), WalletError> {
    if overwrite {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(WalletError::AlreadyExists {
            path: p.to_path_buf(),
        }),
        None => Ok(()),
    }
}

// Writes atomically with mode 0600 (as bittensor does for every key file).
pub(super) fn write_key_file(path: &Path, data: &[u8], overwrite: bool) -> Result<(), WalletError> {
    let io = |action: &'static str, cause: std::io::Error| WalletError::Io {
        action,
        path: path.to_path_buf(),
        cause,
    };
    let dir = path
        .parent()
        .ok_or_else(|| io("no directory for", std::io::ErrorKind::InvalidInput.into()))?;
    fs::create_dir_all(dir).map_err(|e| io("cannot create the directory of", e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-key")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| io("cannot create a temporary file for", e))?;
    tmp.write_all(data).map_err(|e| io("cannot write", e))?;
    tmp.as_file().sync_all().map_err(|e| io("cannot sync", e))?;
    let persisted = if overwrite {
        tmp.persist(path)
    } else {
        tmp.persist_noclobber(path)
    };
    persisted.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            WalletError::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            io("cannot write", e.error)
        }
    })?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| io("cannot chmod", e))?;
    Ok(())
}

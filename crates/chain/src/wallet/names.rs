//! Wallet and hotkey names that are one plain path component, so a key
//! file can never be written outside the wallets root.

use std::path::{Path, PathBuf};

use super::WalletError;

/// Longest wallet or hotkey name, in bytes (file names are at most 255 and a
/// hotkey also gets `pub.txt` appended).
pub const MAX_NAME_BYTES: usize = 128;

/// A wallet or hotkey name that is one plain path component, so that
/// `<root>/<name>` (and `<root>/<wallet>/hotkeys/<hotkey>`) can never leave
/// its root: not empty, not `.`/`..`, no `/`, `\\`, NUL or control
/// characters, no leading `.` (hidden names are temporary files, and `list`
/// skips them), at most [`MAX_NAME_BYTES`]; a hotkey name may not end in
/// `pub.txt` (it would be another hotkey's public file).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SafeName(String);

impl SafeName {
    /// Checks `name` as a wallet name.
    pub fn wallet(name: &str) -> Result<Self, WalletError> {
        Self::check("wallet", name)
    }

    /// Checks `name` as a hotkey name.
    pub fn hotkey(name: &str) -> Result<Self, WalletError> {
        let safe = Self::check("hotkey", name)?;
        if name.ends_with("pub.txt") {
            return Err(bad_name(
                "hotkey",
                name,
                "it ends in pub.txt, the suffix of public key files",
            ));
        }
        Ok(safe)
    }

    fn check(kind: &'static str, name: &str) -> Result<Self, WalletError> {
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name == "." || name == ".." {
            Some("it names a directory, not a file in it")
        } else if name.contains('/') || name.contains('\\') {
            Some("it contains a path separator")
        } else if name.chars().any(char::is_control) {
            Some("it contains a control character")
        } else if name.starts_with('.') {
            Some("it starts with '.' (hidden names are reserved)")
        } else if name.len() > MAX_NAME_BYTES {
            Some("it is longer than 128 bytes")
        } else {
            None
        };
        match reason {
            Some(r) => Err(bad_name(kind, name, r)),
            None => Ok(Self(name.to_string())),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SafeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad_name(kind: &'static str, name: &str, reason: &'static str) -> WalletError {
    WalletError::BadName {
        kind,
        name: name.to_string(),
        reason,
    }
}

/// Expands a leading `~/` to `$HOME`.
pub fn expand_home(path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    path.to_path_buf()
}

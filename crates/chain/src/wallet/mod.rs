//! Bittensor wallets in bittensor's on-disk format:
//! `<path>/<name>/coldkey` (JSON keyfile, usually `$NACL`-encrypted),
//! `<path>/<name>/coldkeypub.txt`, `<path>/<name>/hotkeys/<hotkey>` and
//! `<path>/<name>/hotkeys/<hotkey>pub.txt`.
//!
//! Keys, the keyfile JSON and SS58 come from opentensor's own Rust wallet
//! crate (`btwallet`, lib `bittensor_wallet`), so what we write is what
//! `bittensor` writes. Two parts are done here with RustCrypto crates
//! instead, because btwallet's versions print to stdout (which carries our
//! JSON), prompt on stdin, and panic on some malformed files:
//! - the `$NACL` coldkey encryption: Argon2i v1.3 (opslimit 8, memlimit 512
//!   MiB, bittensor's fixed salt) + XSalsa20-Poly1305 (`argon2`,
//!   `crypto_secretbox`), byte-for-byte libsodium's `pwhash` + `secretbox`;
//! - file writes: atomic (temp file + rename), mode 0600, never replacing an
//!   existing key unless asked.
//!
//! The coldkey password comes from [`PASSWORD_ENV`] or a prompt on the
//! terminal ([`coldkey_password`]).
//!
//! Split by concern: `names` (names that cannot leave the wallets root),
//! `keys` (key pairs and keyfile JSON), `files` (bounded reads, atomic
//! writes) and `crypto` (the `$NACL` encryption, the password).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::info;

use crate::Hotkey;

mod crypto;
mod files;
mod keys;
mod names;
#[cfg(test)]
mod tests;

pub use crypto::coldkey_password;
pub use keys::KeyPair;
pub use names::{expand_home, SafeName, MAX_NAME_BYTES};

use crypto::{encryption, nacl_decrypt, nacl_encrypt};
use files::{public_ss58, read_key_file, refuse_existing, sorted_dir_names, write_key_file};

/// Wallets root used when `--wallet.path` is not given.
pub const DEFAULT_WALLET_PATH: &str = "~/.bittensor/wallets";
/// Wallet name used when `--wallet.name` is not given.
pub const DEFAULT_WALLET_NAME: &str = "default";
/// Hotkey name used when `--wallet.hotkey` is not given.
pub const DEFAULT_HOTKEY_NAME: &str = "default";
/// Environment variable holding the coldkey password for non-interactive use.
pub const PASSWORD_ENV: &str = "PRETRAIN_COLDKEY_PASSWORD";
/// Words in a new mnemonic (bittensor's default).
pub const DEFAULT_MNEMONIC_WORDS: usize = 12;
/// Errors of wallet operations.
#[derive(Debug, Error)]
pub enum WalletError {
    /// A key file is not there.
    #[error("key file {path} does not exist")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The wallet directory is not there.
    #[error("wallet {path} does not exist")]
    NoWallet {
        /// The wallet directory.
        path: PathBuf,
    },
    /// A file could not be read or written.
    // The cause is printed, not exposed as `source()` (one convention: never both), and
    // kept typed for callers that branch on its kind.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause (its kind, e.g. `NotFound`, is what callers branch on).
        cause: std::io::Error,
    },
    /// A file is not a bittensor key file.
    #[error("{path} is not a valid bittensor key file: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The password does not open the coldkey.
    #[error("wrong password for coldkey {path}")]
    WrongPassword {
        /// The coldkey file.
        path: PathBuf,
    },
    /// The file is encrypted and no password was given.
    #[error("{path} is encrypted: a password is needed")]
    Encrypted {
        /// The file.
        path: PathBuf,
    },
    /// An encryption bittensor no longer writes.
    #[error("{path} uses the legacy {method} encryption, which is not supported; re-encrypt it with `btcli wallet update`")]
    UnsupportedEncryption {
        /// The file.
        path: PathBuf,
        /// The encryption found.
        method: &'static str,
    },
    /// Refused to replace an existing key.
    #[error("{path} already exists (not overwriting an existing key unless asked)")]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// The key file has only an address, nothing to sign with.
    #[error("{path} holds no secret key (no secretSeed or secretPhrase): it cannot sign")]
    NoSecret {
        /// The file.
        path: PathBuf,
    },
    /// No password could be had.
    #[error("no coldkey password: {0}")]
    NoPassword(String),
    /// A key could not be generated or derived.
    #[error("key error: {0}")]
    Key(String),
    /// Encryption failed (not a wrong password).
    #[error("encryption failed: {0}")]
    Crypto(String),
    /// A wallet or hotkey name that is not one plain file name (it would leave the wallets root).
    #[error("{kind} name {name:?} is not allowed: {reason}")]
    BadName {
        /// "wallet" or "hotkey".
        kind: &'static str,
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
}
/// A wallet: `<path>/<name>` with the hotkey `hotkey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wallet {
    /// Wallets root (`~` expanded).
    pub path: PathBuf,
    /// Wallet (coldkey) name.
    pub name: String,
    /// Hotkey name.
    pub hotkey: String,
}

/// A key made by [`Wallet::create_coldkey`] / [`Wallet::create_hotkey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewKey {
    /// SS58 address.
    pub ss58: String,
    /// The mnemonic: the only way back to the key; show it to the user once.
    pub mnemonic: String,
    /// The secret key file written.
    pub path: PathBuf,
}

/// What `list`/`show` print about a wallet (addresses only, nothing decrypted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletInfo {
    /// Wallet name.
    pub name: String,
    /// Directory of the wallet.
    pub path: PathBuf,
    /// Coldkey SS58 address from `coldkeypub.txt`, if readable.
    pub coldkeypub: Option<String>,
    /// Whether the coldkey file is encrypted (`None` when it is missing).
    pub coldkey_encrypted: Option<bool>,
    /// Hotkeys, by name.
    pub hotkeys: Vec<HotkeyInfo>,
    /// Key files that exist but cannot be read or are not valid key files (one message each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// A hotkey of a wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotkeyInfo {
    /// Hotkey name.
    pub name: String,
    /// SS58 address, if readable.
    pub ss58: Option<String>,
}

impl Wallet {
    /// A wallet handle; nothing is read until a key is asked for.
    pub fn new(path: impl AsRef<Path>, name: impl Into<String>, hotkey: impl Into<String>) -> Self {
        Self {
            path: expand_home(path.as_ref()),
            name: name.into(),
            hotkey: hotkey.into(),
        }
    }

    /// A wallet handle whose names are checked ([`SafeName`]) now rather than at the first file access.
    pub fn try_new(
        path: impl AsRef<Path>,
        name: impl Into<String>,
        hotkey: impl Into<String>,
    ) -> Result<Self, WalletError> {
        let w = Self::new(path, name, hotkey);
        w.check_wallet_name()?;
        w.check_hotkey_name()?;
        Ok(w)
    }

    // Every file access checks the names first: the path getters below are plain joins.
    fn check_wallet_name(&self) -> Result<SafeName, WalletError> {
        SafeName::wallet(&self.name)
    }

    fn check_hotkey_name(&self) -> Result<SafeName, WalletError> {
        self.check_wallet_name()?;
        SafeName::hotkey(&self.hotkey)
    }

    /// `~/.bittensor/wallets`, expanded.
    pub fn default_path() -> PathBuf {
        expand_home(Path::new(DEFAULT_WALLET_PATH))
    }

    /// `<path>/<name>`.
    pub fn dir(&self) -> PathBuf {
        self.path.join(&self.name)
    }

    /// `<path>/<name>/coldkey`.
    pub fn coldkey_path(&self) -> PathBuf {
        self.dir().join("coldkey")
    }

    /// `<path>/<name>/coldkeypub.txt`.
    pub fn coldkeypub_path(&self) -> PathBuf {
        self.dir().join("coldkeypub.txt")
    }

    /// `<path>/<name>/hotkeys/<hotkey>`.
    pub fn hotkey_path(&self) -> PathBuf {
        self.dir().join("hotkeys").join(&self.hotkey)
    }

    /// `<path>/<name>/hotkeys/<hotkey>pub.txt`.
    pub fn hotkeypub_path(&self) -> PathBuf {
        self.dir()
            .join("hotkeys")
            .join(format!("{}pub.txt", self.hotkey))
    }

    /// The hotkey's key pair (hotkeys are plaintext in bittensor's default setup).
    pub fn hotkey_keypair(&self) -> Result<KeyPair, WalletError> {
        self.check_hotkey_name()?;
        let path = self.hotkey_path();
        let data = read_key_file(&path)?;
        if let Some(method) = encryption(&data) {
            return Err(match method {
                "NaCl" => WalletError::Encrypted { path },
                other => WalletError::UnsupportedEncryption {
                    path,
                    method: other,
                },
            });
        }
        KeyPair::from_keyfile_json(&path, &data)
    }

    /// The hotkey, able to sign chain calls.
    pub fn hotkey(&self) -> Result<Hotkey, WalletError> {
        let pair = self.hotkey_keypair()?;
        pair.to_hotkey().ok_or(WalletError::NoSecret {
            path: self.hotkey_path(),
        })
    }

    /// The hotkey's SS58 address, from `<hotkey>pub.txt` when present, else from the hotkey file.
    pub fn hotkey_ss58(&self) -> Result<String, WalletError> {
        self.check_hotkey_name()?;
        let pubpath = self.hotkeypub_path();
        if pubpath.exists() {
            return public_ss58(&pubpath);
        }
        Ok(self.hotkey_keypair()?.ss58())
    }

    /// The coldkey's SS58 address, from `coldkeypub.txt` (no password needed).
    pub fn coldkeypub(&self) -> Result<String, WalletError> {
        self.check_wallet_name()?;
        public_ss58(&self.coldkeypub_path())
    }

    /// Whether the coldkey file is encrypted.
    pub fn coldkey_is_encrypted(&self) -> Result<bool, WalletError> {
        self.check_wallet_name()?;
        Ok(encryption(&read_key_file(&self.coldkey_path())?).is_some())
    }

    /// The coldkey, decrypted with `password` (ignored for an unencrypted coldkey).
    /// Takes a few seconds: the key derivation is deliberately slow.
    pub fn coldkey(&self, password: &str) -> Result<KeyPair, WalletError> {
        self.check_wallet_name()?;
        let path = self.coldkey_path();
        let data = read_key_file(&path)?;
        let plain = match encryption(&data) {
            None => data,
            Some("NaCl") => nacl_decrypt(&path, &data, password)?,
            Some(method) => return Err(WalletError::UnsupportedEncryption { path, method }),
        };
        KeyPair::from_keyfile_json(&path, &plain)
    }

    /// The coldkey, with the password from [`PASSWORD_ENV`] or a terminal prompt when encrypted.
    pub fn coldkey_interactive(&self) -> Result<KeyPair, WalletError> {
        if !self.coldkey_is_encrypted()? {
            return self.coldkey("");
        }
        let prompt = format!("Password for coldkey {}: ", self.coldkey_path().display());
        let password = coldkey_password(&prompt, false)?;
        self.coldkey(&password)
    }

    /// Writes a new coldkey and hotkey from fresh mnemonics (see [`Wallet::create_coldkey`]);
    /// nothing is written when any of the four files exists and `overwrite` is false.
    pub fn create(
        &self,
        password: Option<&str>,
        overwrite: bool,
    ) -> Result<(NewKey, NewKey), WalletError> {
        self.check_hotkey_name()?;
        refuse_existing(
            &[
                &self.coldkey_path(),
                &self.coldkeypub_path(),
                &self.hotkey_path(),
                &self.hotkeypub_path(),
            ],
            overwrite,
        )?;
        let coldkey = self.create_coldkey(None, password, overwrite)?;
        let hotkey = self.create_hotkey(None, overwrite)?;
        Ok((coldkey, hotkey))
    }

    /// Writes a new coldkey (`coldkey`, encrypted when `password` is given, and
    /// `coldkeypub.txt`); `mnemonic` regenerates a known key instead of a fresh one.
    pub fn create_coldkey(
        &self,
        mnemonic: Option<&str>,
        password: Option<&str>,
        overwrite: bool,
    ) -> Result<NewKey, WalletError> {
        self.check_wallet_name()?;
        let (secret, public) = (self.coldkey_path(), self.coldkeypub_path());
        refuse_existing(&[&secret, &public], overwrite)?;
        let (pair, phrase) = make_pair(mnemonic)?;
        let json = pair.to_keyfile_json()?;
        let data = match password {
            Some(pw) => nacl_encrypt(&json, pw)?,
            None => json,
        };
        write_key_file(&secret, &data, overwrite)?;
        write_key_file(&public, &pair.to_public_json()?, overwrite)?;
        info!(wallet = %self.name, ss58 = %pair.ss58(), encrypted = password.is_some(), "coldkey written");
        Ok(NewKey {
            ss58: pair.ss58(),
            mnemonic: phrase,
            path: secret,
        })
    }

    /// Writes a new (plaintext) hotkey and its `<hotkey>pub.txt`; `mnemonic` regenerates a known key.
    pub fn create_hotkey(
        &self,
        mnemonic: Option<&str>,
        overwrite: bool,
    ) -> Result<NewKey, WalletError> {
        self.check_hotkey_name()?;
        let (secret, public) = (self.hotkey_path(), self.hotkeypub_path());
        refuse_existing(&[&secret, &public], overwrite)?;
        let (pair, phrase) = make_pair(mnemonic)?;
        write_key_file(&secret, &pair.to_keyfile_json()?, overwrite)?;
        write_key_file(&public, &pair.to_public_json()?, overwrite)?;
        info!(wallet = %self.name, hotkey = %self.hotkey, ss58 = %pair.ss58(), "hotkey written");
        Ok(NewKey {
            ss58: pair.ss58(),
            mnemonic: phrase,
            path: secret,
        })
    }

    /// Addresses and hotkeys of this wallet.
    pub fn info(&self) -> Result<WalletInfo, WalletError> {
        self.check_wallet_name()?;
        let dir = self.dir();
        if !dir.is_dir() {
            return Err(WalletError::NoWallet { path: dir });
        }
        Ok(wallet_info(&self.path, &self.name))
    }

    /// Every wallet under `path` (sorted by name); an absent root has none.
    pub fn list(path: impl AsRef<Path>) -> Result<Vec<WalletInfo>, WalletError> {
        let root = expand_home(path.as_ref());
        let mut names = sorted_dir_names(&root, |p| p.is_dir())?;
        names.retain(|n| !n.starts_with('.'));
        Ok(names.iter().map(|n| wallet_info(&root, n)).collect())
    }
}

fn make_pair(mnemonic: Option<&str>) -> Result<(KeyPair, String), WalletError> {
    match mnemonic {
        Some(m) => Ok((KeyPair::from_mnemonic(m)?, m.trim().to_string())),
        None => KeyPair::generate(DEFAULT_MNEMONIC_WORDS),
    }
}

fn wallet_info(root: &Path, name: &str) -> WalletInfo {
    let w = Wallet::new(root, name, DEFAULT_HOTKEY_NAME);
    let mut problems = Vec::new();
    // A missing file is a normal state (a hotkey-only wallet); an unreadable or corrupt one is not.
    let mut note = |e: WalletError| {
        if !matches!(e, WalletError::Missing { .. }) {
            problems.push(e.to_string());
        }
    };
    let coldkey_encrypted = match read_key_file(&w.coldkey_path()) {
        Ok(d) => Some(encryption(&d).is_some()),
        Err(e) => {
            note(e);
            None
        }
    };
    let hotkey_dir = w.dir().join("hotkeys");
    let names = sorted_dir_names(&hotkey_dir, |p| !p.is_dir()).unwrap_or_default();
    let mut hotkeys = Vec::new();
    for n in names
        .iter()
        .filter(|n| !n.ends_with("pub.txt") && !n.starts_with('.'))
    {
        let hw = Wallet::new(root, name, n.as_str());
        let ss58 = match hw.hotkey_ss58() {
            Ok(s) => Some(s),
            Err(e) => {
                note(e);
                None
            }
        };
        hotkeys.push(HotkeyInfo {
            name: n.clone(),
            ss58,
        });
    }
    let coldkeypub = match w.coldkeypub() {
        Ok(s) => Some(s),
        Err(e) => {
            note(e);
            None
        }
    };
    WalletInfo {
        name: name.to_string(),
        path: w.dir(),
        coldkeypub,
        coldkey_encrypted,
        hotkeys,
        problems,
    }
}

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

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use bittensor_wallet::keyfile::{
    deserialize_keypair_from_keyfile_data, serialized_keypair_to_keyfile_data,
};
use bittensor_wallet::Keypair as BtKeypair;
use crypto_secretbox::aead::{Aead, AeadCore, KeyInit, OsRng};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, info};

use crate::Hotkey;

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

// bittensor's fixed NaCl parameters (libsodium's *_SENSITIVE limits).
const NACL_PREFIX: &[u8] = b"$NACL";
const NACL_SALT: &[u8; 16] = b"\x13q\x83\xdf\xf1Z\t\xbc\x9c\x90\xb5Q\x879\xe9\xb1";
const NACL_OPSLIMIT: u32 = 8;
const NACL_MEMLIMIT_KIB: u32 = 536_870_912 / 1024;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const SS58_FORMAT: u8 = 42;
const CRYPTO_SR25519: u8 = 1;

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
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
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

/// An sr25519 key pair (or an address only) as bittensor stores it.
#[derive(Clone)]
pub struct KeyPair {
    inner: BtKeypair,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("ss58", &self.ss58())
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A new key from a fresh BIP39 mnemonic of `n_words` words (12, 15, 18, 21 or 24).
    pub fn generate(n_words: usize) -> Result<(Self, String), WalletError> {
        let phrase = BtKeypair::generate_mnemonic(n_words).map_err(WalletError::Key)?;
        let pair = Self::from_mnemonic(&phrase)?;
        Ok((pair, phrase))
    }

    /// The key of a BIP39 mnemonic (substrate derivation, no password), as bittensor makes it.
    pub fn from_mnemonic(phrase: &str) -> Result<Self, WalletError> {
        let inner = BtKeypair::create_from_mnemonic(phrase.trim(), CRYPTO_SR25519)
            .map_err(|e| WalletError::Key(format!("invalid mnemonic: {e}")))?;
        Ok(Self { inner })
    }

    /// The key of a 32-byte sr25519 mini secret (`secretSeed`).
    pub fn from_secret_seed(seed: [u8; 32]) -> Result<Self, WalletError> {
        let inner =
            BtKeypair::create_from_seed(seed.to_vec(), CRYPTO_SR25519).map_err(WalletError::Key)?;
        Ok(Self { inner })
    }

    /// SS58 address (prefix 42).
    pub fn ss58(&self) -> String {
        self.inner.ss58_address().unwrap_or_default()
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> Option<[u8; 32]> {
        self.inner
            .public_key()
            .ok()
            .flatten()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
    }

    /// The 32-byte mini secret, when the key can sign.
    pub fn secret_seed(&self) -> Option<[u8; 32]> {
        self.inner
            .seed_hex()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
    }

    /// The mnemonic, when known.
    pub fn mnemonic(&self) -> Option<String> {
        self.inner.mnemonic()
    }

    /// A signing [`Hotkey`] for chain calls; `None` for an address-only key.
    pub fn to_hotkey(&self) -> Option<Hotkey> {
        self.secret_seed()
            .map(|seed| Hotkey::from_secret_seed(self.ss58(), seed))
    }

    /// The keyfile JSON bittensor writes for this key (with secrets when it has them).
    pub fn to_keyfile_json(&self) -> Result<Vec<u8>, WalletError> {
        serialized_keypair_to_keyfile_data(&self.inner).map_err(|e| WalletError::Key(e.to_string()))
    }

    /// The public keyfile JSON (`coldkeypub.txt`, `<hotkey>pub.txt`).
    pub fn to_public_json(&self) -> Result<Vec<u8>, WalletError> {
        let public = BtKeypair::new(
            Some(self.ss58()),
            None,
            None,
            SS58_FORMAT,
            None,
            CRYPTO_SR25519,
        )
        .map_err(WalletError::Key)?;
        serialized_keypair_to_keyfile_data(&public).map_err(|e| WalletError::Key(e.to_string()))
    }

    // Parses keyfile JSON, checking that the stored address matches the key it derives.
    fn from_keyfile_json(path: &Path, data: &[u8]) -> Result<Self, WalletError> {
        let malformed = |reason: String| WalletError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| malformed(format!("not JSON ({e})")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| malformed("not a JSON object".into()))?;
        let field = |k: &str| obj.get(k).and_then(|v| v.as_str());
        if let Some(t) = obj.get("cryptoType") {
            if t.as_u64() != Some(u64::from(CRYPTO_SR25519)) {
                return Err(malformed(format!("cryptoType {t} is not sr25519 (1)")));
            }
        }
        if [
            "secretPhrase",
            "secretSeed",
            "privateKey",
            "ss58Address",
            "publicKey",
        ]
        .iter()
        .all(|k| field(k).is_none())
        {
            return Err(malformed("no key fields".into()));
        }
        let inner =
            deserialize_keypair_from_keyfile_data(data).map_err(|e| malformed(e.to_string()))?;
        let pair = Self { inner };
        let derived = pair.ss58();
        if let Some(stored) = field("ss58Address") {
            if stored != derived {
                return Err(malformed(format!(
                    "ss58Address {stored} does not match its key ({derived})"
                )));
            }
        }
        if let (Some(stored), Some(pk)) = (field("publicKey"), pair.public_key()) {
            if !stored
                .trim_start_matches("0x")
                .eq_ignore_ascii_case(&hex::encode(pk))
            {
                return Err(malformed(format!(
                    "publicKey {stored} does not match its key"
                )));
            }
        }
        Ok(pair)
    }
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

fn sorted_dir_names(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<String>, WalletError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(WalletError::Io {
                action: "cannot list",
                path: dir.to_path_buf(),
                source,
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
fn public_ss58(path: &Path) -> Result<String, WalletError> {
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

fn read_key_file(path: &Path) -> Result<Vec<u8>, WalletError> {
    pretrain_core::bounded::read_regular(path, MAX_KEY_FILE_BYTES).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            WalletError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            WalletError::Io {
                action: "cannot read",
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

// The encryption of keyfile data, as bittensor detects it.
fn encryption(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(NACL_PREFIX) {
        Some("NaCl")
    } else if data.starts_with(b"$ANSIBLE_VAULT") {
        Some("ansible-vault")
    } else if data.starts_with(b"gAAAAA") {
        Some("fernet")
    } else {
        None
    }
}

fn nacl_key(password: &str) -> Result<[u8; 32], WalletError> {
    let params = Params::new(NACL_MEMLIMIT_KIB, NACL_OPSLIMIT, 1, Some(32))
        .map_err(|e| WalletError::Crypto(e.to_string()))?;
    let mut key = [0u8; 32];
    Argon2::new(Algorithm::Argon2i, Version::V0x13, params)
        .hash_password_into(password.as_bytes(), NACL_SALT, &mut key)
        .map_err(|e| WalletError::Crypto(e.to_string()))?;
    Ok(key)
}

fn nacl_encrypt(plain: &[u8], password: &str) -> Result<Vec<u8>, WalletError> {
    let key = nacl_key(password)?;
    let cipher = XSalsa20Poly1305::new(&key.into());
    let nonce = XSalsa20Poly1305::generate_nonce(&mut OsRng);
    let sealed = cipher
        .encrypt(&nonce, plain)
        .map_err(|e| WalletError::Crypto(e.to_string()))?;
    let mut out = NACL_PREFIX.to_vec();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn nacl_decrypt(path: &Path, data: &[u8], password: &str) -> Result<Vec<u8>, WalletError> {
    let body = &data[NACL_PREFIX.len()..];
    if body.len() < NONCE_LEN + TAG_LEN {
        return Err(WalletError::Malformed {
            path: path.to_path_buf(),
            reason: format!("encrypted data is only {} bytes", data.len()),
        });
    }
    let (nonce, sealed) = body.split_at(NONCE_LEN);
    let key = nacl_key(password)?;
    debug!(path = %path.display(), "decrypting coldkey");
    XSalsa20Poly1305::new(&key.into())
        .decrypt(Nonce::from_slice(nonce), sealed)
        .map_err(|_| WalletError::WrongPassword {
            path: path.to_path_buf(),
        })
}

fn refuse_existing(paths: &[&Path], overwrite: bool) -> Result<(), WalletError> {
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
fn write_key_file(path: &Path, data: &[u8], overwrite: bool) -> Result<(), WalletError> {
    let io = |action: &'static str, source: std::io::Error| WalletError::Io {
        action,
        path: path.to_path_buf(),
        source,
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

/// The coldkey password: [`PASSWORD_ENV`] if set, else asked on the terminal
/// (twice when `confirm`, for a new key).
pub fn coldkey_password(prompt: &str, confirm: bool) -> Result<String, WalletError> {
    if let Ok(pw) = std::env::var(PASSWORD_ENV) {
        if pw.is_empty() {
            return Err(WalletError::NoPassword(format!(
                "{PASSWORD_ENV} is set but empty"
            )));
        }
        return Ok(pw);
    }
    let no_tty = |e: std::io::Error| {
        WalletError::NoPassword(format!(
            "cannot prompt ({e}); set {PASSWORD_ENV} for non-interactive use"
        ))
    };
    let pw = rpassword::prompt_password(prompt).map_err(no_tty)?;
    if pw.is_empty() {
        return Err(WalletError::NoPassword("empty password".into()));
    }
    if confirm {
        let again = rpassword::prompt_password("Retype the password: ").map_err(no_tty)?;
        if again != pw {
            return Err(WalletError::NoPassword("the passwords do not match".into()));
        }
    }
    Ok(pw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the name, an accepted one is exactly one plain component
        /// directly under the root: no name can leave it.
        #[test]
        fn accepted_names_stay_directly_under_the_root(name in "\\PC{0,12}|[./\\\\a-z]{0,8}") {
            let root = Path::new("/wallets/root");
            for (kind, checked) in [("wallet", SafeName::wallet(&name)), ("hotkey", SafeName::hotkey(&name))] {
                match checked {
                    Ok(safe) => {
                        let p = root.join(safe.as_str());
                        prop_assert_eq!(p.parent(), Some(root), "{} {:?}", kind, name);
                        let comps: Vec<_> = Path::new(safe.as_str()).components().collect();
                        prop_assert_eq!(comps.len(), 1);
                        let normal = matches!(comps[0], std::path::Component::Normal(_));
                        prop_assert!(normal, "{:?}", comps);
                        prop_assert!(!name.starts_with('.'));
                    }
                    Err(e) => {
                        let is_bad_name = matches!(e, WalletError::BadName { .. });
                        prop_assert!(is_bad_name, "{}", e);
                    }
                }
            }
        }
    }

    #[test]
    fn truncated_nacl_data_is_malformed_not_a_panic() {
        // Checked before the (slow) key derivation; the tests/ cover real encryption.
        let p = Path::new("x");
        for data in [
            &b"$NACL"[..],
            b"$NACLshort",
            &[b'$', b'N', b'A', b'C', b'L', 0, 0, 0],
        ] {
            assert!(matches!(
                nacl_decrypt(p, data, "pw"),
                Err(WalletError::Malformed { .. })
            ));
        }
        assert_eq!(encryption(b"$NACL..."), Some("NaCl"));
        assert_eq!(encryption(b"{\"a\": 1}"), None);
    }
}

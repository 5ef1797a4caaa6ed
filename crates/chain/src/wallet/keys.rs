//! sr25519 key pairs and the keyfile JSON bittensor writes (through
//! opentensor's `btwallet`), checked when read.

use std::path::Path;

use bittensor_wallet::keyfile::{
    deserialize_keypair_from_keyfile_data, serialized_keypair_to_keyfile_data,
};
use bittensor_wallet::Keypair as BtKeypair;

use super::WalletError;
use crate::Hotkey;

const SS58_FORMAT: u8 = 42;
const CRYPTO_SR25519: u8 = 1;
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
    pub(super) fn from_keyfile_json(path: &Path, data: &[u8]) -> Result<Self, WalletError> {
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

//! bittensor's `$NACL` coldkey encryption (Argon2i + XSalsa20-Poly1305,
//! byte-for-byte libsodium's) and the coldkey password.

use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use crypto_secretbox::aead::{Aead, AeadCore, KeyInit, OsRng};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use tracing::debug;

use super::{WalletError, PASSWORD_ENV};

// bittensor's fixed NaCl parameters (libsodium's *_SENSITIVE limits).
const NACL_PREFIX: &[u8] = b"$NACL";
const NACL_SALT: &[u8; 16] = b"\x13q\x83\xdf\xf1Z\t\xbc\x9c\x90\xb5Q\x879\xe9\xb1";
const NACL_OPSLIMIT: u32 = 8;
const NACL_MEMLIMIT_KIB: u32 = 536_870_912 / 1024;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

// The encryption of keyfile data, as bittensor detects it.
pub(super) fn encryption(data: &[u8]) -> Option<&'static str> {
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

pub(super) fn nacl_encrypt(plain: &[u8], password: &str) -> Result<Vec<u8>, WalletError> {
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

pub(super) fn nacl_decrypt(
    path: &Path,
    data: &[u8],
    password: &str,
) -> Result<Vec<u8>, WalletError> {
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

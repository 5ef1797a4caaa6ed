//! Commit-reveal weights, version 4: the `WeightsTlockPayload` subtensor
//! decrypts in `coinbase/reveal_commits.rs`, timelock-encrypted to a drand
//! round (`tle::<TinyBLS381, AESGCMStreamCipherProvider>` to the identity
//! `sha256(round.to_be_bytes())`, serialized compressed), and decrypted with
//! that round's signature. The code is ideal-lab5's `timelock` 0.0.1, the
//! same `tle` subtensor and bittensor-drand build, so a commit made here is
//! one the runtime opens.
//!
//! Every input from outside (ciphertext, signature, public key) is checked
//! before the library sees it: `tle`'s IBE decryption indexes by the lengths
//! the ciphertext claims and would panic on a header field longer than 32
//! bytes, so such a ciphertext is refused here with a reason.
//!
//! [`Beacon`] is a drand-like beacon for the embedded chain: a BLS key that
//! signs round numbers exactly as quicknet does (G1 signatures, G2 public
//! key, the same hash to curve), so its pulses open commits with the same
//! `tld` code.

use ark_ec::Group;
use ark_ff::PrimeField;
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use codec::{Decode, Encode};
use rand::{CryptoRng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use timelock::curves::drand::TinyBLS381;
use timelock::ibe::fullident::Identity;
use timelock::stream_ciphers::AESGCMStreamCipherProvider;
use timelock::tlock::{tld, tle, EngineBLS, TLECiphertext};

/// Drand quicknet's public key (G2, compressed), as in subtensor's `pallets/drand`.
pub const QUICKNET_PUBLIC_KEY: &str = "83cf0f2896adee7eb8b5f01fcad3912212c437e0073e911fb90022d3e760183c8c4b450b6a0a6c3ac6a5776a2d1064510d1fec758c921cc22b0e17e63aaf4bcb5ed66304de9cf809bd274ca73bab4af5a6e9c76a4bc09e76eae8991ef5ece45a";
/// Drand quicknet's chain hash.
pub const QUICKNET_CHAIN_HASH: &str =
    "52db9ba70e0cc0f6eaf7803dd07447a1f5477735fd3f661792ba94600c84e971";
/// Unix time of quicknet's round 1.
pub const QUICKNET_GENESIS_TIME: u64 = 1_692_803_367;
/// Seconds between two quicknet rounds.
pub const QUICKNET_PERIOD: u64 = 3;
/// Largest commit `commit_timelocked_weights` takes (`BoundedVec<u8, 5000>`).
pub const MAX_COMMIT_BYTES: usize = 5000;
/// The commit-reveal version this code speaks (`CommitRevealWeightsVersion` today).
pub const COMMIT_REVEAL_VERSION: u16 = 4;
/// The commit-reveal version before it (`commit_crv3_weights`; runtimes of 2025).
pub const COMMIT_REVEAL_VERSION_V3: u16 = 3;
/// Bytes of a compressed signature (G1).
pub const SIGNATURE_BYTES: usize = 48;
/// Bytes of a compressed public key (G2).
pub const PUBLIC_KEY_BYTES: usize = 96;
// Blocks after the first block of the reveal epoch at which the SDK aims the pulse
// (bittensor-drand's SECURITY_BLOCK_OFFSET): the chain must have ingested it by then.
const SECURITY_BLOCK_OFFSET: u64 = 3;
// The IBE header's `v` and `w` are one 32-byte key each.
const IBE_FIELD_BYTES: usize = 32;

/// Why a timelock operation failed; each says what was wrong with which input.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TimelockError {
    /// The public key is not a compressed G2 point.
    #[error("the beacon public key is not a compressed BLS12-381 G2 point of {PUBLIC_KEY_BYTES} bytes ({0})")]
    PublicKey(String),
    /// The ciphertext is not a serialized `TLECiphertext`.
    #[error("malformed ciphertext: {0}")]
    Ciphertext(String),
    /// The signature is not a compressed G1 point.
    #[error("malformed signature: {0}")]
    Signature(String),
    /// The signature is a valid point but not the one this ciphertext was made for.
    #[error("the signature does not open this ciphertext (another round's, or not the beacon's)")]
    WrongSignature,
    /// The plaintext is not a `WeightsTlockPayload`.
    #[error("the decrypted bytes are not a WeightsTlockPayload: {0}")]
    Payload(String),
    /// The payload is over the chain's limit once encrypted, or the library failed.
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
}

/// What a v4 commit carries (subtensor's `WeightsTlockPayload`, SCALE-encoded).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct WeightsTlockPayload {
    /// The committing hotkey's 32 public-key bytes (the runtime checks it is the signer).
    pub hotkey: Vec<u8>,
    /// Target uids.
    pub uids: Vec<u16>,
    /// Weights, as `u16` like `set_weights`.
    pub values: Vec<u16>,
    /// The validator's version key (checked against `WeightsVersionKey` at the reveal).
    pub version_key: u64,
}

impl WeightsTlockPayload {
    /// SCALE bytes (what is encrypted).
    pub fn to_scale(&self) -> Vec<u8> {
        self.encode()
    }

    /// Decodes SCALE bytes as the runtime does (`Decode::decode`, trailing bytes ignored).
    pub fn from_scale(bytes: &[u8]) -> Result<Self, TimelockError> {
        let mut reader = bytes;
        Self::decode(&mut reader).map_err(|e| TimelockError::Payload(e.to_string()))
    }
}

/// The drand identity of `round`: `sha256(round.to_be_bytes())`.
pub fn round_message(round: u64) -> [u8; 32] {
    Sha256::digest(round.to_be_bytes()).into()
}

fn identity(round: u64) -> Identity {
    Identity::new(b"", vec![round_message(round).to_vec()])
}

type PublicKey = <TinyBLS381 as EngineBLS>::PublicKeyGroup;
type Signature = <TinyBLS381 as EngineBLS>::SignatureGroup;
type Scalar = <TinyBLS381 as EngineBLS>::Scalar;

fn public_key_of(bytes: &[u8]) -> Result<PublicKey, TimelockError> {
    if bytes.len() != PUBLIC_KEY_BYTES {
        return Err(TimelockError::PublicKey(format!(
            "got {} bytes",
            bytes.len()
        )));
    }
    PublicKey::deserialize_compressed(bytes).map_err(|e| TimelockError::PublicKey(e.to_string()))
}

/// Quicknet's public key bytes.
pub fn quicknet_public_key() -> Vec<u8> {
    // A constant of this module: decoding it cannot fail (a test checks it).
    hex::decode(QUICKNET_PUBLIC_KEY).unwrap_or_default()
}

/// Encrypts `plaintext` to `round` of the beacon with `public_key` (compressed G2), with
/// fresh randomness from the OS.
pub fn encrypt(public_key: &[u8], round: u64, plaintext: &[u8]) -> Result<Vec<u8>, TimelockError> {
    encrypt_with_rng(public_key, round, plaintext, rand::rngs::OsRng)
}

/// [`encrypt`] with the randomness of `seed` (the same seed gives the same ciphertext: for tests).
pub fn encrypt_seeded(
    public_key: &[u8],
    round: u64,
    plaintext: &[u8],
    seed: u64,
) -> Result<Vec<u8>, TimelockError> {
    encrypt_with_rng(
        public_key,
        round,
        plaintext,
        rand_chacha::ChaCha20Rng::seed_from_u64(seed),
    )
}

fn encrypt_with_rng<R: RngCore + CryptoRng>(
    public_key: &[u8],
    round: u64,
    plaintext: &[u8],
    mut rng: R,
) -> Result<Vec<u8>, TimelockError> {
    let pk = public_key_of(public_key)?;
    let mut esk = [0u8; 32];
    rng.fill_bytes(&mut esk);
    let ct =
        tle::<TinyBLS381, AESGCMStreamCipherProvider, R>(pk, esk, plaintext, identity(round), rng)
            .map_err(|e| TimelockError::Encrypt(format!("{e:?}")))?;
    let mut out = Vec::new();
    ct.serialize_compressed(&mut out)
        .map_err(|e| TimelockError::Encrypt(e.to_string()))?;
    Ok(out)
}

/// Parses a compressed signature (48 bytes, a point of G1's prime-order subgroup).
fn signature_of(bytes: &[u8]) -> Result<Signature, TimelockError> {
    if bytes.len() != SIGNATURE_BYTES {
        return Err(TimelockError::Signature(format!(
            "expected {SIGNATURE_BYTES} bytes (a compressed BLS12-381 G1 point), got {}",
            bytes.len()
        )));
    }
    Signature::deserialize_compressed(bytes)
        .map_err(|e| TimelockError::Signature(format!("not a compressed BLS12-381 G1 point ({e})")))
}

/// Parses a ciphertext, refusing what `tld` cannot safely take.
fn ciphertext_of(bytes: &[u8]) -> Result<TLECiphertext<TinyBLS381>, TimelockError> {
    let mut reader = bytes;
    let ct = TLECiphertext::<TinyBLS381>::deserialize_compressed(&mut reader)
        .map_err(|e| TimelockError::Ciphertext(format!("not a timelock ciphertext ({e})")))?;
    if ct.header.v.len() != IBE_FIELD_BYTES || ct.header.w.len() != IBE_FIELD_BYTES {
        return Err(TimelockError::Ciphertext(format!(
            "the IBE header holds {} and {} key bytes, not {IBE_FIELD_BYTES} and {IBE_FIELD_BYTES}",
            ct.header.v.len(),
            ct.header.w.len()
        )));
    }
    if ct.cipher_suite != b"AES_GCM_" {
        return Err(TimelockError::Ciphertext(format!(
            "cipher suite {:?} is not AES_GCM_",
            String::from_utf8_lossy(&ct.cipher_suite)
        )));
    }
    Ok(ct)
}

/// Decrypts a ciphertext with the signature of the round it was made for.
pub fn decrypt(ciphertext: &[u8], signature: &[u8]) -> Result<Vec<u8>, TimelockError> {
    let ct = ciphertext_of(ciphertext)?;
    let sig = signature_of(signature)?;
    tld::<TinyBLS381, AESGCMStreamCipherProvider>(ct, sig).map_err(|e| match e {
        timelock::tlock::Error::InvalidSignature => TimelockError::WrongSignature,
        other => TimelockError::Ciphertext(format!("the body does not decrypt ({other:?})")),
    })
}

/// Checks that `signature` is the beacon's signature of `round` (drand's check:
/// `e(signature, G2) == e(H(round), public_key)`).
pub fn verify_signature(
    public_key: &[u8],
    round: u64,
    signature: &[u8],
) -> Result<(), TimelockError> {
    let pk = public_key_of(public_key)?;
    let sig = signature_of(signature)?;
    let lhs = TinyBLS381::pairing(PublicKey::generator(), sig);
    let rhs = TinyBLS381::pairing(pk, identity(round).public::<TinyBLS381>());
    if lhs == rhs {
        Ok(())
    } else {
        Err(TimelockError::WrongSignature)
    }
}

/// A v4 commit: `payload` SCALE-encoded and encrypted to `round` under `public_key`.
pub fn commit_payload(
    payload: &WeightsTlockPayload,
    public_key: &[u8],
    round: u64,
) -> Result<Vec<u8>, TimelockError> {
    let ct = encrypt(public_key, round, &payload.to_scale())?;
    within_commit_limit(ct, payload.uids.len())
}

/// Refuses a ciphertext over the chain's `BoundedVec` limit.
fn within_commit_limit(ct: Vec<u8>, n_uids: usize) -> Result<Vec<u8>, TimelockError> {
    if ct.len() > MAX_COMMIT_BYTES {
        return Err(TimelockError::Encrypt(format!(
            "the commit is {} bytes; the chain takes at most {MAX_COMMIT_BYTES} ({n_uids} uids)",
            ct.len()
        )));
    }
    Ok(ct)
}

/// A v3 commit (`commit_crv3_weights`): the payload without the hotkey (v3's
/// `WeightsTlockPayload` is `{uids, values, version_key}`; the signer is the hotkey),
/// SCALE-encoded and encrypted to `round` under `public_key`.
pub fn commit_payload_v3(
    payload: &WeightsTlockPayload,
    public_key: &[u8],
    round: u64,
) -> Result<Vec<u8>, TimelockError> {
    let plain = (&payload.uids, &payload.values, payload.version_key).encode();
    let ct = encrypt(public_key, round, &plain)?;
    within_commit_limit(ct, payload.uids.len())
}

/// Opens a v4 commit with its round's signature and decodes the payload.
pub fn reveal_payload(
    commit: &[u8],
    signature: &[u8],
) -> Result<WeightsTlockPayload, TimelockError> {
    WeightsTlockPayload::from_scale(&decrypt(commit, signature)?)
}

/// The quicknet round published at unix time `secs` (at least 1), rounded down so the
/// pulse exists by then.
pub fn quicknet_round_at(secs: f64) -> u64 {
    let r = ((secs - QUICKNET_GENESIS_TIME as f64) / QUICKNET_PERIOD as f64).floor();
    if r.is_finite() && r >= 1.0 {
        r as u64
    } else {
        1
    }
}

/// The round a commit made now at `current_block` should be encrypted to, given the first
/// block of its reveal epoch: the pulse of the time of `first_reveal_block + 3` blocks
/// (bittensor-drand's `generate_commit`), with `now` the unix time of `current_block`.
pub fn reveal_round_for(
    first_reveal_block: u64,
    current_block: u64,
    block_time: f64,
    now: f64,
) -> u64 {
    let target = first_reveal_block.saturating_add(SECURITY_BLOCK_OFFSET);
    let secs = target.saturating_sub(current_block) as f64 * block_time;
    quicknet_round_at(now + secs)
}

/// First block of the reveal epoch on a runtime whose epochs end at
/// `(block + netuid + 1) % (tempo + 1) == 0` (before `SubnetEpochIndex`): the SDK's formula.
pub fn first_reveal_block_legacy(
    current_block: u64,
    netuid: u16,
    tempo: u64,
    reveal_period: u64,
) -> u64 {
    let tempo_plus_one = tempo.saturating_add(1);
    let netuid_plus_one = u64::from(netuid) + 1;
    let current_epoch = (current_block + netuid_plus_one) / tempo_plus_one;
    (current_epoch + reveal_period)
        .saturating_mul(tempo_plus_one)
        .saturating_sub(netuid_plus_one)
}

/// First block of the reveal epoch on a runtime that runs epochs at `LastEpochBlock +
/// tempo`: `next_epoch_start` (the runtime API's answer) starts the epoch after the
/// commit's, and each later epoch is `tempo` blocks on.
pub fn first_reveal_block_indexed(next_epoch_start: u64, tempo: u64, reveal_period: u64) -> u64 {
    next_epoch_start.saturating_add(reveal_period.saturating_sub(1).saturating_mul(tempo))
}

/// A drand-format pulse: `randomness = sha256(signature)`, both hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pulse {
    /// Round number.
    pub round: u64,
    /// `sha256(signature)`, hex.
    pub randomness: String,
    /// The compressed G1 signature of the round, hex.
    pub signature: String,
}

/// A beacon that signs rounds as drand quicknet does, under its own key (the embedded chain's).
#[derive(Clone)]
pub struct Beacon {
    secret: Scalar,
}

impl std::fmt::Debug for Beacon {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Beacon")
            .field("public_key", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

impl Beacon {
    /// The beacon whose secret scalar is `seed` (little endian, reduced); a zero scalar
    /// (which would sign everything to the identity point) is refused.
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, TimelockError> {
        let secret = Scalar::from_le_bytes_mod_order(&seed);
        if secret == Scalar::from(0u64) {
            return Err(TimelockError::PublicKey("the beacon secret is zero".into()));
        }
        Ok(Self { secret })
    }

    /// A fresh beacon and its 32-byte seed (to keep).
    pub fn generate() -> Result<(Self, [u8; 32]), TimelockError> {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        Ok((Self::from_seed(seed)?, seed))
    }

    /// The public key (compressed G2, 96 bytes): what commits are encrypted under.
    pub fn public_key(&self) -> Vec<u8> {
        let pk = PublicKey::generator() * self.secret;
        let mut out = Vec::new();
        // Serializing a group element into a Vec cannot fail.
        let _ = pk.serialize_compressed(&mut out);
        out
    }

    /// The signature of `round` (compressed G1, 48 bytes): the key that opens its commits.
    pub fn sign(&self, round: u64) -> Vec<u8> {
        let sig = identity(round).extract::<TinyBLS381>(self.secret).0;
        let mut out = Vec::new();
        let _ = sig.serialize_compressed(&mut out);
        out
    }

    /// The pulse of `round`, as drand publishes it.
    pub fn pulse(&self, round: u64) -> Pulse {
        let signature = self.sign(round);
        Pulse {
            round,
            randomness: hex::encode(Sha256::digest(&signature)),
            signature: hex::encode(signature),
        }
    }
}

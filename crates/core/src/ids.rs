//! Typed identities checked once where they enter the program (a flag, a
//! chain commitment, a hub's answer): a hub repo ([`RepoId`]), a hub commit
//! ([`CommitId`]), a model's hash ([`ModelHash`]) and a hotkey address
//! ([`HotkeyAddress`]). Each one but the hash is safe to use as a path
//! component, so code holding one never re-checks it.
//!
//! A model id read from the chain holds whatever text a miner committed, so
//! its parts are [`Unchecked`]: the text kept as committed (what is written
//! back and compared), typed only where it is used.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::ops::Deref;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::constants::MAX_REPO_ID_LENGTH;

/// Why a repo id, commit id or hotkey is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// The repo id is not `namespace/name` with safe parts.
    #[error("invalid repo id {repo_id:?}: {reason}")]
    RepoId {
        /// What was given.
        repo_id: String,
        /// Why it is refused.
        reason: String,
    },
    /// The commit id is not 40 lowercase hex digits.
    #[error("invalid commit id {0:?}: expected 40 lowercase hex digits")]
    Commit(String),
    /// The hotkey is not an SS58 address.
    #[error("invalid hotkey {0:?}: an SS58 address is 1 to 64 ASCII letters or digits")]
    Hotkey(String),
    /// The model hash is not the base64 of a sha256 digest.
    #[error("invalid model hash {0:?}: expected the base64 of a sha256 digest (44 characters)")]
    Hash(String),
    /// The model id has no commit, so it names no fixed content.
    #[error("model id {0} has no commit")]
    NoCommit(String),
}

/// A hub repo `namespace/name`, both parts checked safe as path components.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoId {
    namespace: String,
    name: String,
}

impl RepoId {
    /// Builds a repo id from its two parts, with the rules of [`RepoId::from_str`].
    pub fn new(namespace: &str, name: &str) -> Result<Self, IdError> {
        format!("{namespace}/{name}").parse()
    }

    /// User or organisation.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Repo name inside the namespace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folder `huggingface_hub` keeps this model repo in: `models--<ns>--<name>`.
    pub fn folder_name(&self) -> String {
        format!("models--{}--{}", self.namespace, self.name)
    }
}

impl FromStr for RepoId {
    type Err = IdError;

    /// Parses `namespace/name`: the original's `validate_hf_repo_id` plus
    /// both parts non-empty, only `A-Z a-z 0-9 - _ .` and not `.`/`..`,
    /// which is also what the Hugging Face Hub accepts.
    fn from_str(repo_id: &str) -> Result<Self, IdError> {
        let refuse = |reason: String| IdError::RepoId {
            repo_id: repo_id.to_string(),
            reason,
        };
        let (namespace, name) = validate_hf_repo_id(repo_id).map_err(|e| refuse(e.to_string()))?;
        for (what, part) in [("namespace", &namespace), ("name", &name)] {
            if part.is_empty() {
                return Err(refuse(format!("{what} is empty")));
            }
            if part == "." || part == ".." {
                return Err(refuse(format!("{what} {part:?} would leave the directory")));
            }
            if !part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(refuse(format!(
                    "{what} may only contain letters, digits, '-', '_' and '.'"
                )));
            }
        }
        Ok(Self { namespace, name })
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl TryFrom<String> for RepoId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<RepoId> for String {
    fn from(r: RepoId) -> String {
        r.to_string()
    }
}

/// A hub commit: exactly 40 lowercase hex digits (a git sha).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommitId(String);

impl CommitId {
    /// The 40 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CommitId {
    type Err = IdError;
    fn from_str(commit: &str) -> Result<Self, IdError> {
        if commit.len() == 40
            && commit
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(commit.to_string()))
        } else {
            Err(IdError::Commit(commit.to_string()))
        }
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CommitId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Safe as a single path component, which is what it is checked for.
impl AsRef<std::path::Path> for CommitId {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl PartialEq<str> for CommitId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl TryFrom<String> for CommitId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<CommitId> for String {
    fn from(c: CommitId) -> String {
        c.0
    }
}

/// A hotkey's SS58 address as used in names on disk: 1 to 64 base58-range
/// characters, so only ASCII letters and digits (the checksum is the chain
/// crate's business; this type only guarantees a safe, plausible name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HotkeyAddress(String);

/// The SS58 hotkey type under its chain name.
pub type Ss58 = HotkeyAddress;

impl HotkeyAddress {
    /// The address text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HotkeyAddress {
    type Err = IdError;
    fn from_str(hotkey: &str) -> Result<Self, IdError> {
        if !hotkey.is_empty()
            && hotkey.len() <= 64
            && hotkey.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            Ok(Self(hotkey.to_string()))
        } else {
            Err(IdError::Hotkey(hotkey.to_string()))
        }
    }
}

impl fmt::Display for HotkeyAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for HotkeyAddress {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Safe as a single path component, which is what it is checked for.
impl AsRef<std::path::Path> for HotkeyAddress {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl PartialEq<str> for HotkeyAddress {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl TryFrom<String> for HotkeyAddress {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<HotkeyAddress> for String {
    fn from(h: HotkeyAddress) -> String {
        h.0
    }
}

/// A model's hash as the protocols commit it: the padded standard base64
/// of a sha256 digest, either `hash_of_directory` of the model files or the
/// `secure_hash` binding it to a hotkey. Not a path component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelHash(String);

impl ModelHash {
    /// The 44 base64 characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ModelHash {
    type Err = IdError;
    fn from_str(hash: &str) -> Result<Self, IdError> {
        let digest = base64::engine::general_purpose::STANDARD.decode(hash);
        if hash.len() == 44 && digest.is_ok_and(|d| d.len() == 32) {
            Ok(Self(hash.to_string()))
        } else {
            Err(IdError::Hash(hash.to_string()))
        }
    }
}

impl fmt::Display for ModelHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ModelHash {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ModelHash {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl TryFrom<String> for ModelHash {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<ModelHash> for String {
    fn from(h: ModelHash) -> String {
        h.0
    }
}

/// The namespace or the name of a committed model id: each is only a
/// [`RepoId`] together with the other ([`crate::ModelId::repo`]), so an
/// `Unchecked<RepoIdPart>` has no check of its own.
#[derive(Debug)]
pub enum RepoIdPart {}

/// One part of a model id as committed: any text (the chain holds what a
/// miner wrote, and the original reads any), kept byte for byte so that the
/// id is written back, compared and stored exactly as read. `T` is what the
/// part should be; [`Unchecked::checked`] gives it, or why not. Serialized
/// as the plain string.
pub struct Unchecked<T> {
    text: String,
    of: PhantomData<fn() -> T>,
}

impl<T> Unchecked<T> {
    /// The part committed as `text`, unchecked.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            of: PhantomData,
        }
    }

    /// The text as committed.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The text as committed, owned.
    pub fn into_string(self) -> String {
        self.text
    }
}

impl<T: FromStr<Err = IdError>> Unchecked<T> {
    /// The part as a `T`, refused with the reason `T`'s parser gives.
    pub fn checked(&self) -> Result<T, IdError> {
        self.text.parse()
    }
}

// The impls below are written out so that they hold for any `T` (a derive
// would ask `T` for each trait, and `RepoIdPart` has none): an unchecked
// part behaves as its text.

impl<T> Clone for Unchecked<T> {
    fn clone(&self) -> Self {
        Self::new(self.text.clone())
    }
}

impl<T> PartialEq for Unchecked<T> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<T> Eq for Unchecked<T> {}

impl<T> Hash for Unchecked<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl<T> PartialOrd for Unchecked<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Unchecked<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

/// As the text's, so that a model id reads in logs as it did with strings.
impl<T> fmt::Debug for Unchecked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl<T> fmt::Display for Unchecked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<T> Deref for Unchecked<T> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl<T> AsRef<str> for Unchecked<T> {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl<T> PartialEq<str> for Unchecked<T> {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl<T> PartialEq<&str> for Unchecked<T> {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl<T> PartialEq<String> for Unchecked<T> {
    fn eq(&self, other: &String) -> bool {
        &self.text == other
    }
}

impl<T> From<String> for Unchecked<T> {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl<T> From<&str> for Unchecked<T> {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<CommitId> for Unchecked<CommitId> {
    fn from(commit: CommitId) -> Self {
        Self::new(commit.0)
    }
}

impl From<&CommitId> for Unchecked<CommitId> {
    fn from(commit: &CommitId) -> Self {
        Self::new(commit.as_str())
    }
}

impl From<ModelHash> for Unchecked<ModelHash> {
    fn from(hash: ModelHash) -> Self {
        Self::new(hash.0)
    }
}

impl<T> From<Unchecked<T>> for String {
    fn from(part: Unchecked<T>) -> String {
        part.text
    }
}

impl<T> Serialize for Unchecked<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.text.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Unchecked<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// Why a Hugging Face repo id is not acceptable (messages as the original).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RepoIdError {
    /// Empty repo id.
    #[error("Hugging Face repo id cannot be empty.")]
    Empty,
    /// Too short or too long.
    #[error("Hugging Face repo id must be between 3 and 41 characters.")]
    BadLength,
    /// Not exactly one `/`.
    #[error("Hugging Face repo id must be in the format <org or user name>/<repo_name>.")]
    BadFormat,
}

/// Validates a Hugging Face repo id as the original does and splits it
/// into `(namespace, name)`. Lengths are counted in characters.
pub fn validate_hf_repo_id(repo_id: &str) -> Result<(String, String), RepoIdError> {
    if repo_id.is_empty() {
        return Err(RepoIdError::Empty);
    }
    let len = repo_id.chars().count();
    if !(3 < len && len <= MAX_REPO_ID_LENGTH) {
        return Err(RepoIdError::BadLength);
    }
    let mut parts = repo_id.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(name), None) => Ok((ns.to_string(), name.to_string())),
        _ => Err(RepoIdError::BadFormat),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelId;
    use proptest::prelude::*;

    #[test]
    fn repo_ids() {
        let r: RepoId = "alice/tiny-gpt2".parse().unwrap();
        assert_eq!(r.folder_name(), "models--alice--tiny-gpt2");
        assert_eq!(r.to_string(), "alice/tiny-gpt2");
        assert_eq!((r.namespace(), r.name()), ("alice", "tiny-gpt2"));
        for bad in [
            "../x", "a/..", "./abc", "/abc", "abc/", "a b/c", "a\\b/c", "ab", "a/b/c", "a/b\0c",
        ] {
            let err = bad.parse::<RepoId>().unwrap_err();
            assert!(matches!(err, IdError::RepoId { .. }), "{bad}: {err}");
        }
        let err = "../x".parse::<RepoId>().unwrap_err().to_string();
        assert!(err.contains("would leave the directory"), "{err}");
        // The original's length rule: 3 < len <= 41 characters.
        assert!(format!("a/{}", "b".repeat(39)).parse::<RepoId>().is_ok());
        assert!(format!("a/{}", "b".repeat(40)).parse::<RepoId>().is_err());
    }

    #[test]
    fn commits_and_hotkeys() {
        let c: CommitId = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
        assert_eq!(c.as_str(), "0123456789abcdef0123456789abcdef01234567");
        for bad in [
            "",
            "main",
            "0123456789ABCDEF0123456789abcdef01234567",
            "0123456789abcdef0123456789abcdef0123456",
            "../../../../../../../../../../../../../a",
        ] {
            assert_eq!(bad.parse::<CommitId>(), Err(IdError::Commit(bad.into())));
        }
        let h: HotkeyAddress = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
            .parse()
            .unwrap();
        assert_eq!(
            h.to_string(),
            "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
        );
        for bad in ["", "..", "a/b", "/abs", "x".repeat(65).as_str(), "é"] {
            assert!(bad.parse::<HotkeyAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_as_strings_and_checked() {
        let r: RepoId = serde_json::from_str("\"alice/m1\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"alice/m1\"");
        assert!(serde_json::from_str::<RepoId>("\"../m1\"").is_err());
        let map: std::collections::BTreeMap<HotkeyAddress, u32> =
            serde_json::from_str(r#"{"5Abc": 1}"#).unwrap();
        assert_eq!(serde_json::to_string(&map).unwrap(), r#"{"5Abc":1}"#);
        assert!(
            serde_json::from_str::<std::collections::BTreeMap<HotkeyAddress, u32>>(r#"{"a/b": 1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<CommitId>("\"main\"").is_err());
    }

    #[test]
    fn model_id_location() {
        let id =
            ModelId::from_compressed_str("alice:m1:0123456789abcdef0123456789abcdef01234567:h")
                .unwrap();
        let (repo, commit) = id.hub_location().unwrap();
        assert_eq!(repo.to_string(), "alice/m1");
        assert_eq!(ModelId::at(&repo, &commit, "h"), id);
        let none = ModelId::from_compressed_str("alice:m1:None:h").unwrap();
        assert!(matches!(none.hub_location(), Err(IdError::NoCommit(_))));
        let evil = ModelId::from_compressed_str("..:m1:0123456789abcdef0123456789abcdef01234567:h")
            .unwrap();
        assert!(matches!(evil.hub_location(), Err(IdError::RepoId { .. })));
    }

    #[test]
    fn model_hashes() {
        let h = crate::hash::hash_of_bytes(b"model");
        assert_eq!(h.parse::<ModelHash>().unwrap().as_str(), h);
        let secure = crate::secure_hash(&h, "5Abc");
        assert!(secure.parse::<ModelHash>().is_ok());
        for bad in [
            "",
            "h",
            &h[..43],
            &"A".repeat(44),
            &format!("{}!", &h[..43]),
        ] {
            assert_eq!(bad.parse::<ModelHash>(), Err(IdError::Hash(bad.into())));
        }
    }

    /// Parts that are no repo, commit or hash are kept as committed, in
    /// JSON and `Debug` as the strings they were, and refused when checked.
    #[test]
    fn unchecked_parts_keep_the_committed_text() {
        let id = ModelId::from_compressed_str("a b:..:main:not a hash").unwrap();
        let json = r#"{"namespace":"a b","name":"..","commit":"main","hash":"not a hash"}"#;
        assert_eq!(serde_json::to_string(&id).unwrap(), json);
        assert_eq!(serde_json::from_str::<ModelId>(json).unwrap(), id);
        assert_eq!(
            format!("{id:?}"),
            r#"ModelId { namespace: "a b", name: "..", commit: Some("main"), hash: Some("not a hash") }"#
        );
        assert!(matches!(id.repo(), Err(IdError::RepoId { .. })));
        let commit = id.commit.as_ref().unwrap();
        assert_eq!(commit.checked(), Err(IdError::Commit("main".into())));
        assert_eq!(commit.as_str(), "main");
        assert_eq!(
            id.hash.as_ref().unwrap().checked(),
            Err(IdError::Hash("not a hash".into()))
        );
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let good = ModelId::from_compressed_str(&format!("alice:m1:{sha}:None")).unwrap();
        assert_eq!(good.repo().unwrap().to_string(), "alice/m1");
        assert_eq!(good.commit.unwrap().checked().unwrap().as_str(), sha);
        assert!(serde_json::from_str::<Unchecked<CommitId>>("1").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn repo_id_parse_never_panics_and_round_trips(s in "\\PC{0,48}") {
            match s.parse::<RepoId>() {
                Ok(r) => {
                    prop_assert_eq!(r.to_string(), s.clone());
                    prop_assert_eq!(r.to_string().parse::<RepoId>().unwrap(), r);
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn valid_repo_ids_round_trip(ns in "[A-Za-z0-9_-][A-Za-z0-9._-]{0,15}",
                                     name in "[A-Za-z0-9_-][A-Za-z0-9._-]{1,15}") {
            let r = RepoId::new(&ns, &name).unwrap();
            prop_assert_eq!(r.to_string().parse::<RepoId>().unwrap(), r.clone());
            prop_assert_eq!(r.folder_name(), format!("models--{ns}--{name}"));
        }

        #[test]
        fn commit_parse_never_panics_and_round_trips(s in "[0-9a-fA-F./]{0,42}|\\PC{0,42}") {
            match s.parse::<CommitId>() {
                Ok(c) => {
                    prop_assert_eq!(c.as_str().len(), 40);
                    prop_assert_eq!(c.to_string().parse::<CommitId>().unwrap(), c);
                }
                Err(e) => prop_assert_eq!(e, IdError::Commit(s.clone())),
            }
        }

        #[test]
        fn hotkey_parse_never_panics_and_round_trips(s in "[1-9A-HJ-NP-Za-km-z]{0,66}|\\PC{0,66}") {
            match s.parse::<HotkeyAddress>() {
                Ok(h) => {
                    prop_assert!(!s.contains(['/', '.', '\\']));
                    prop_assert_eq!(h.to_string().parse::<HotkeyAddress>().unwrap(), h);
                }
                Err(e) => prop_assert_eq!(e, IdError::Hotkey(s.clone())),
            }
        }
    }
}

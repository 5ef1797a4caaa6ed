//! Model identity as stored on chain, and Hugging Face repo id validation.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::constants::MAX_METADATA_BYTES;
use crate::ids::{CommitId, IdError, ModelHash, RepoId, RepoIdPart, Unchecked};
// Repo id validation lives beside RepoId; kept reachable at its old path.
pub use crate::ids::{validate_hf_repo_id, RepoIdError};

/// Why a compressed model id string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModelIdError {
    /// Fewer than four `:`-separated parts (Python's `IndexError`).
    #[error("model id {0:?} has fewer than 4 ':'-separated parts")]
    TooFewParts(String),
    /// The compressed form is longer than the chain accepts.
    #[error("compressed model id is {len} bytes, more than the {max} the chain accepts")]
    TooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Identity of a model: where it lives on the hub and what its content hash is.
///
/// Each part is kept as committed ([`Unchecked`]): a commitment whose parts
/// are no repo, commit or hash still parses, as in the original, and is
/// refused where it is used ([`ModelId::hub_location`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelId {
    /// Hub namespace (user or organisation).
    pub namespace: Unchecked<RepoIdPart>,
    /// Repo name inside the namespace.
    pub name: Unchecked<RepoIdPart>,
    /// Hub commit sha; `None` before upload.
    pub commit: Option<Unchecked<CommitId>>,
    /// `hash_of_directory` of the model files; `None` when unknown.
    pub hash: Option<Unchecked<ModelHash>>,
}

impl ModelId {
    /// The exact string stored on chain: `ns:name:commit:hash`, `None` for a missing part.
    pub fn to_compressed_str(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.namespace,
            self.name,
            self.commit.as_deref().unwrap_or("None"),
            self.hash.as_deref().unwrap_or("None")
        )
    }

    /// Parses the on-chain form as the original does: split on every `:`,
    /// parts past the fourth ignored, `None` (exactly) means missing for
    /// commit and hash only. Never panics.
    pub fn from_compressed_str(s: &str) -> Result<Self, ModelIdError> {
        let mut parts = s.split(':');
        let mut next = || parts.next();
        match (next(), next(), next(), next()) {
            (Some(ns), Some(name), Some(commit), Some(hash)) => Ok(Self {
                namespace: Unchecked::new(ns),
                name: Unchecked::new(name),
                commit: optional_part(commit),
                hash: optional_part(hash),
            }),
            _ => Err(ModelIdError::TooFewParts(s.to_string())),
        }
    }

    /// The compressed form, checked against the chain's 128-byte limit.
    pub fn to_chain_bytes(&self) -> Result<Vec<u8>, ModelIdError> {
        let s = self.to_compressed_str();
        if s.len() > MAX_METADATA_BYTES {
            return Err(ModelIdError::TooLong {
                len: s.len(),
                max: MAX_METADATA_BYTES,
            });
        }
        Ok(s.into_bytes())
    }

    /// Parses bytes read from chain; invalid UTF-8 or a bad form is an error
    /// (the validator treats it as "no valid metadata").
    pub fn from_chain_bytes(bytes: &[u8]) -> Result<Self, ModelIdError> {
        let s = String::from_utf8_lossy(bytes);
        Self::from_compressed_str(&s)
    }

    /// `namespace/name`.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_compressed_str())
    }
}

/// Longest `namespace/name` in a competition model id (taoverse's
/// `MAX_REPO_ID_LENGTH`): what is left of the chain's 128 bytes after the
/// commit (40), the secure hash (44), a 2-digit competition id and 4 separators.
pub const MAX_COMPETITION_REPO_ID_LENGTH: usize = MAX_METADATA_BYTES - 40 - 44 - 2 - 4;

/// A repo id too long for a competition model id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{repo} is {len} bytes; under the later protocol a repo id is at most \
     {MAX_COMPETITION_REPO_ID_LENGTH} bytes (namespace/name), so that \
     namespace:name:commit:secure_hash:competition_id fits in the chain's {MAX_METADATA_BYTES} bytes"
)]
pub struct RepoIdTooLong {
    /// The repo id.
    pub repo: String,
    /// Its length in bytes.
    pub len: usize,
}

/// Refuses a repo id too long for the 5-field competition model id.
pub fn check_competition_repo_id(repo: &crate::RepoId) -> Result<(), RepoIdTooLong> {
    let repo = repo.to_string();
    let len = repo.len();
    if len > MAX_COMPETITION_REPO_ID_LENGTH {
        return Err(RepoIdTooLong { repo, len });
    }
    Ok(())
}

/// Competition id of the competition rules (upstream's `CompetitionId`, a Python int).
pub type CompetitionId = i64;

/// Why a competition (5-field) compressed model id could not be parsed; upstream's
/// chain store turns each into "no valid metadata".
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CompetitionModelIdError {
    /// Fewer than four `:`-separated parts (Python's `IndexError`).
    #[error("model id {0:?} has fewer than 4 ':'-separated parts")]
    TooFewParts(String),
    /// The fifth part is not a decimal integer (Python's `ValueError` from `int()`).
    #[error("competition id {0:?} is not an integer")]
    BadCompetitionId(String),
    /// The fifth part is an integer beyond 64 bits (Python would accept it,
    /// then find no such competition: the model is not evaluated either way).
    #[error("competition id {0:?} is out of range")]
    CompetitionIdOutOfRange(String),
    /// The compressed form is longer than the chain accepts.
    #[error("compressed model id is {len} bytes, more than the {max} the chain accepts")]
    TooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// The competition rules' model identity (taoverse `ModelId`), committed as
/// `namespace:name:commit:secure_hash:competition_id`.
///
/// The seed's 4-field [`ModelId`] is unchanged; this type is its successor
/// for schedules whose competitions bind the hash to the hotkey. Its text
/// parts are kept as committed, as [`ModelId`]'s.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CompetitionModelId {
    /// Hub namespace (user or organisation).
    pub namespace: Unchecked<RepoIdPart>,
    /// Repo name inside the namespace.
    pub name: Unchecked<RepoIdPart>,
    /// Hub commit sha; `None` before upload.
    pub commit: Option<Unchecked<CommitId>>,
    /// The raw directory hash: only a legacy 4-field id carries one (as its 4th part).
    pub hash: Option<Unchecked<ModelHash>>,
    /// `secure_hash(hash, hotkey)`, the 4th part of the wire form.
    pub secure_hash: Option<Unchecked<ModelHash>>,
    /// The competition the model enters.
    pub competition_id: CompetitionId,
}

impl CompetitionModelId {
    /// The exact string committed: `ns:name:commit:secure_hash:competition_id`,
    /// `None` for a missing part.
    pub fn to_compressed_str(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            self.namespace,
            self.name,
            self.commit.as_deref().unwrap_or("None"),
            self.secure_hash.as_deref().unwrap_or("None"),
            self.competition_id
        )
    }

    /// Parses as upstream's `from_compressed_str` with its default competition 0.
    pub fn from_compressed_str(s: &str) -> Result<Self, CompetitionModelIdError> {
        Self::from_compressed_str_with_default(s, 0)
    }

    /// Parses as upstream: split on every `:`; fewer than 4 parts is an error;
    /// a 4-part (legacy) id gets `default_competition_id` and its 4th part as
    /// both `hash` and `secure_hash`; from 5 parts on, the 5th is the
    /// competition id read as Python's `int()` does (`" 2"`, `"+2"`, `"0_2"`
    /// are 2), `hash` is `None` and parts past the 5th are ignored. The
    /// literal `None` means missing for commit and hashes. Never panics.
    pub fn from_compressed_str_with_default(
        s: &str,
        default_competition_id: CompetitionId,
    ) -> Result<Self, CompetitionModelIdError> {
        let tokens: Vec<&str> = s.split(':').collect();
        if tokens.len() < 4 {
            return Err(CompetitionModelIdError::TooFewParts(s.to_string()));
        }
        let (competition_id, hash) = if tokens.len() < 5 {
            (default_competition_id, optional_part(tokens[3]))
        } else {
            (parse_python_int(tokens[4])?, None)
        };
        Ok(Self {
            namespace: Unchecked::new(tokens[0]),
            name: Unchecked::new(tokens[1]),
            commit: optional_part(tokens[2]),
            hash,
            secure_hash: optional_part(tokens[3]),
            competition_id,
        })
    }

    /// The compressed form, checked against the chain's 128-byte limit.
    pub fn to_chain_bytes(&self) -> Result<Vec<u8>, CompetitionModelIdError> {
        let s = self.to_compressed_str();
        if s.len() > MAX_METADATA_BYTES {
            return Err(CompetitionModelIdError::TooLong {
                len: s.len(),
                max: MAX_METADATA_BYTES,
            });
        }
        Ok(s.into_bytes())
    }

    /// Parses bytes read from chain (lossy UTF-8, as [`ModelId::from_chain_bytes`]).
    pub fn from_chain_bytes(bytes: &[u8]) -> Result<Self, CompetitionModelIdError> {
        Self::from_compressed_str(&String::from_utf8_lossy(bytes))
    }

    /// `namespace/name`.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for CompetitionModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_compressed_str())
    }
}

/// A model id as committed on chain: what the two protocols' formats
/// ([`ModelId`], [`CompetitionModelId`]) share.
pub trait ChainId: fmt::Display + Sized {
    /// Why bytes are no id of this format, or an id does not fit on chain.
    type Error: std::error::Error + Send + Sync + 'static;
    /// The bytes committed, checked against the chain's limit.
    fn to_chain_bytes(&self) -> Result<Vec<u8>, Self::Error>;
    /// Reads committed bytes (lossy UTF-8).
    fn from_chain_bytes(bytes: &[u8]) -> Result<Self, Self::Error>;
    /// `namespace/name`.
    fn repo_id(&self) -> String;
}

impl ChainId for ModelId {
    type Error = ModelIdError;
    fn to_chain_bytes(&self) -> Result<Vec<u8>, ModelIdError> {
        ModelId::to_chain_bytes(self)
    }
    fn from_chain_bytes(bytes: &[u8]) -> Result<Self, ModelIdError> {
        ModelId::from_chain_bytes(bytes)
    }
    fn repo_id(&self) -> String {
        ModelId::repo_id(self)
    }
}

impl ChainId for CompetitionModelId {
    type Error = CompetitionModelIdError;
    fn to_chain_bytes(&self) -> Result<Vec<u8>, CompetitionModelIdError> {
        CompetitionModelId::to_chain_bytes(self)
    }
    fn from_chain_bytes(bytes: &[u8]) -> Result<Self, CompetitionModelIdError> {
        CompetitionModelId::from_chain_bytes(bytes)
    }
    fn repo_id(&self) -> String {
        CompetitionModelId::repo_id(self)
    }
}

impl CompetitionModelId {
    /// What a miner with hotkey `hotkey_ss58` commits for the files hashed
    /// `model_hash` at `commit` of `repo`: the secure hash binds the model
    /// to the hotkey.
    pub fn committed(
        repo: &crate::RepoId,
        commit: &str,
        model_hash: &str,
        hotkey_ss58: &str,
        competition_id: CompetitionId,
    ) -> Self {
        Self {
            namespace: Unchecked::new(repo.namespace()),
            name: Unchecked::new(repo.name()),
            commit: Some(Unchecked::new(commit)),
            hash: None,
            secure_hash: Some(Unchecked::new(crate::secure_hash(model_hash, hotkey_ss58))),
            competition_id,
        }
    }
}

/// A commit or hash part: the literal `None` is how the original writes a
/// missing one.
fn optional_part<T>(part: &str) -> Option<Unchecked<T>> {
    (part != "None").then(|| Unchecked::new(part))
}

/// Python's `str.isspace`: Unicode White_Space plus the ASCII separators
/// U+001C..U+001F that Python also strips around an `int()`.
fn python_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `int(text)` (base 10) for ASCII digits: surrounding whitespace,
/// one optional sign, single underscores between digits, leading zeros.
/// Non-ASCII decimal digits (which Python also accepts) are refused.
fn parse_python_int(text: &str) -> Result<CompetitionId, CompetitionModelIdError> {
    let bad = || CompetitionModelIdError::BadCompetitionId(text.to_string());
    let body = text.trim_matches(python_isspace);
    let (negative, digits) = match body.as_bytes().first() {
        Some(b'-') => (true, &body[1..]),
        Some(b'+') => (false, &body[1..]),
        _ => (false, body),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return Err(bad());
    }
    let mut value: i128 = 0;
    let mut overflow = false;
    for b in digits.bytes() {
        match b {
            b'_' => {}
            b'0'..=b'9' => {
                value = value * 10 + i128::from(b - b'0');
                // Keep scanning for a bad character: "9…9x" is a ValueError first.
                if value > i128::from(i64::MAX) + 1 {
                    overflow = true;
                    value = i128::from(i64::MAX) + 1;
                }
            }
            _ => return Err(bad()),
        }
    }
    let value = if negative { -value } else { value };
    match CompetitionId::try_from(value) {
        Ok(v) if !overflow => Ok(v),
        _ => Err(CompetitionModelIdError::CompetitionIdOutOfRange(
            text.to_string(),
        )),
    }
}

/// A model id together with the block at which it was committed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// The committed model.
    pub id: ModelId,
    /// Block number of the commitment.
    pub block: u64,
}

impl ModelId {
    /// A model id for `repo` at `commit` with content hash `hash`.
    pub fn at(repo: &RepoId, commit: &CommitId, hash: impl Into<String>) -> Self {
        Self {
            namespace: Unchecked::new(repo.namespace()),
            name: Unchecked::new(repo.name()),
            commit: Some(commit.into()),
            hash: Some(Unchecked::new(hash)),
        }
    }

    /// The repo this id names, checked.
    pub fn repo(&self) -> Result<RepoId, IdError> {
        RepoId::new(&self.namespace, &self.name)
    }

    /// The repo and commit this id names, checked: what a chain commitment
    /// is parsed into before anything is fetched or named on disk.
    pub fn hub_location(&self) -> Result<(RepoId, CommitId), IdError> {
        let repo = self.repo()?;
        let commit = self
            .commit
            .as_ref()
            .ok_or_else(|| IdError::NoCommit(self.to_compressed_str()))?
            .checked()?;
        Ok((repo, commit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::MAX_REPO_ID_LENGTH;
    use proptest::prelude::*;
    use serde_json::Value;

    #[test]
    fn a_competition_repo_id_fits_beside_commit_secure_hash_and_a_two_digit_id() {
        // taoverse's MAX_REPO_ID_LENGTH: 128 - 40 - 44 - 2 - 4.
        assert_eq!(MAX_COMPETITION_REPO_ID_LENGTH, 38);
        let ok: crate::RepoId = format!("me/{}", "a".repeat(35)).parse().unwrap();
        assert!(check_competition_repo_id(&ok).is_ok());
        let long: crate::RepoId = format!("me/{}", "a".repeat(36)).parse().unwrap();
        let e = check_competition_repo_id(&long).unwrap_err();
        assert_eq!(e.len, 39);
        assert!(e.to_string().contains("at most 38 bytes"), "{e}");
        // The longest that fits, committed whole, is within the chain's limit.
        let full = format!(
            "me:{}:{}:{}:99",
            "a".repeat(35),
            "c".repeat(40),
            "s".repeat(44)
        );
        assert!(full.len() <= MAX_METADATA_BYTES);
    }

    fn cases() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/modelid/cases.json"
        );
        let text = std::fs::read_to_string(path).expect("reference modelid cases");
        serde_json::from_str(&text).expect("valid json")
    }

    fn id_from(v: &Value) -> ModelId {
        let s = |k: &str| v[k].as_str().map(str::to_string);
        ModelId {
            namespace: s("namespace").unwrap().into(),
            name: s("name").unwrap().into(),
            commit: s("commit").map(Into::into),
            hash: s("hash").map(Into::into),
        }
    }

    #[test]
    fn build_cases_match_reference() {
        let c = cases();
        let build = c["build"].as_array().unwrap();
        assert!(!build.is_empty());
        for case in build {
            let id = id_from(&case["input"]);
            let compressed = id.to_compressed_str();
            assert_eq!(compressed, case["compressed"].as_str().unwrap());
            assert_eq!(
                compressed.len() as u64,
                case["compressed_utf8_len"].as_u64().unwrap()
            );
            let back = ModelId::from_compressed_str(&compressed).unwrap();
            assert_eq!(back, id_from(&case["parsed_back"]));
            assert_eq!(back == id, case["roundtrip_equal"].as_bool().unwrap());
        }
    }

    #[test]
    fn parse_cases_match_reference() {
        let c = cases();
        for case in c["parse"].as_array().unwrap() {
            let input = case["input"].as_str().unwrap();
            let got = ModelId::from_compressed_str(input);
            if case["ok"].as_bool().unwrap() {
                assert_eq!(got.unwrap(), id_from(&case["parsed"]), "{input:?}");
            } else {
                assert!(got.is_err(), "{input:?} should fail");
            }
        }
    }

    #[test]
    fn repo_id_cases_match_reference() {
        let c = cases();
        assert_eq!(
            c["max_repo_id_length"].as_u64().unwrap() as usize,
            MAX_REPO_ID_LENGTH
        );
        for case in c["validate_hf_repo_id"].as_array().unwrap() {
            let input = case["input"].as_str().unwrap();
            match validate_hf_repo_id(input) {
                Ok((ns, name)) => {
                    assert!(case["ok"].as_bool().unwrap(), "{input:?} should fail");
                    assert_eq!(ns, case["namespace"].as_str().unwrap());
                    assert_eq!(name, case["name"].as_str().unwrap());
                }
                Err(e) => {
                    assert!(!case["ok"].as_bool().unwrap(), "{input:?} should pass");
                    assert_eq!(e.to_string(), case["error"].as_str().unwrap());
                }
            }
        }
    }

    #[test]
    fn chain_bytes_limit() {
        let id = ModelId {
            namespace: "n".repeat(60).into(),
            name: "m".repeat(30).into(),
            commit: Some("c".repeat(40).into()),
            hash: Some("h".repeat(44).into()),
        };
        assert!(matches!(
            id.to_chain_bytes(),
            Err(ModelIdError::TooLong { len: 177, .. })
        ));
    }

    /// `int()` of Python 3 on each text, as written in its documentation:
    /// whitespace around, one sign, underscores only between digits.
    #[test]
    fn later_competition_id_follows_python_int() {
        for (text, want) in [
            ("2", Some(2)),
            (" 2", Some(2)),
            ("2\n", Some(2)),
            ("\t+2 ", Some(2)),
            ("+2", Some(2)),
            ("-1", Some(-1)),
            ("0_2", Some(2)),
            ("1_000", Some(1000)),
            ("007", Some(7)),
            ("\u{a0}3\u{3000}", Some(3)),
            ("\u{1c}4", Some(4)),
            ("", None),
            (" ", None),
            ("+", None),
            ("_2", None),
            ("2_", None),
            ("2__0", None),
            ("+-2", None),
            ("- 2", None),
            ("0x2", None),
            ("2.0", None),
            ("two", None),
            ("1 2", None),
        ] {
            let id = CompetitionModelId::from_compressed_str(&format!("a:b:None:None:{text}"));
            assert_eq!(
                id.as_ref().ok().map(|i| i.competition_id),
                want,
                "{text:?}: {id:?}"
            );
            if want.is_none() {
                assert!(
                    matches!(id, Err(CompetitionModelIdError::BadCompetitionId(_))),
                    "{text:?}"
                );
            }
        }
        assert!(matches!(
            CompetitionModelId::from_compressed_str("a:b:c:d:99999999999999999999"),
            Err(CompetitionModelIdError::CompetitionIdOutOfRange(_))
        ));
        assert_eq!(
            CompetitionModelId::from_compressed_str("a:b:c:d:-9223372036854775808")
                .unwrap()
                .competition_id,
            i64::MIN
        );
    }

    #[test]
    fn later_id_extra_parts_ignored_and_legacy_default() {
        let id = CompetitionModelId::from_compressed_str("a:b:c:h:3:x:y").unwrap();
        assert_eq!(id.competition_id, 3);
        assert_eq!(id.hash, None);
        assert_eq!(id.secure_hash.as_deref(), Some("h"));
        assert_eq!(id.to_compressed_str(), "a:b:c:h:3");
        let legacy = CompetitionModelId::from_compressed_str_with_default("a:b:c:h", 5).unwrap();
        assert_eq!(legacy.competition_id, 5);
        assert_eq!(legacy.hash.as_deref(), Some("h"));
        assert_eq!(legacy.secure_hash.as_deref(), Some("h"));
        assert!(matches!(
            CompetitionModelId::from_compressed_str("a:b:c"),
            Err(CompetitionModelIdError::TooFewParts(_))
        ));
        let long = CompetitionModelId {
            namespace: "n".repeat(39).into(),
            name: "m".into(),
            commit: Some("c".repeat(40).into()),
            secure_hash: Some("h".repeat(44).into()),
            hash: None,
            competition_id: 2,
        };
        // 39 + 1 + 40 + 44 + 1 + 4 separators = 129 bytes.
        assert!(matches!(
            long.to_chain_bytes(),
            Err(CompetitionModelIdError::TooLong { len: 129, max: 128 })
        ));
    }

    proptest! {
        #[test]
        fn later_parse_never_panics(s in ".*") {
            let _ = CompetitionModelId::from_compressed_str(&s);
        }

        #[test]
        fn later_roundtrip(ns in "[^:]*", name in "[^:]*",
                           commit in proptest::option::of("[0-9a-f]{40}"),
                           secure_hash in proptest::option::of("[A-Za-z0-9+/]{43}="),
                           competition_id in any::<i64>()) {
            let id = CompetitionModelId { namespace: ns.into(), name: name.into(), commit: commit.map(Into::into), hash: None, secure_hash: secure_hash.map(Into::into), competition_id };
            prop_assert_eq!(CompetitionModelId::from_compressed_str(&id.to_compressed_str()).unwrap(), id);
        }

        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = ModelId::from_compressed_str(&s);
            let _ = validate_hf_repo_id(&s);
        }

        #[test]
        fn roundtrip(ns in "[^:]*", name in "[^:]*",
                     commit in proptest::option::of("[0-9a-f]{40}"),
                     hash in proptest::option::of("[A-Za-z0-9+/]{43}=")) {
            let id = ModelId { namespace: ns.into(), name: name.into(), commit: commit.map(Into::into), hash: hash.map(Into::into) };
            prop_assert_eq!(ModelId::from_compressed_str(&id.to_compressed_str()).unwrap(), id);
        }
    }
}

//! Model identity as stored on chain, and Hugging Face repo id validation.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::constants::{MAX_METADATA_BYTES, MAX_REPO_ID_LENGTH};

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

/// Identity of a model: where it lives on the hub and what its content hash is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelId {
    /// Hub namespace (user or organisation).
    pub namespace: String,
    /// Repo name inside the namespace.
    pub name: String,
    /// Hub commit sha; `None` before upload.
    pub commit: Option<String>,
    /// `hash_of_directory` of the model files; `None` when unknown.
    pub hash: Option<String>,
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
            (Some(ns), Some(name), Some(commit), Some(hash)) => {
                let opt = |p: &str| (p != "None").then(|| p.to_string());
                Ok(Self {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    commit: opt(commit),
                    hash: opt(hash),
                })
            }
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

/// A model id together with the block at which it was committed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// The committed model.
    pub id: ModelId,
    /// Block number of the commitment.
    pub block: u64,
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
    use proptest::prelude::*;
    use serde_json::Value;

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
            namespace: s("namespace").unwrap(),
            name: s("name").unwrap(),
            commit: s("commit"),
            hash: s("hash"),
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
            namespace: "n".repeat(60),
            name: "m".repeat(30),
            commit: Some("c".repeat(40)),
            hash: Some("h".repeat(44)),
        };
        assert!(matches!(
            id.to_chain_bytes(),
            Err(ModelIdError::TooLong { len: 177, .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = ModelId::from_compressed_str(&s);
            let _ = validate_hf_repo_id(&s);
        }

        #[test]
        fn roundtrip(ns in "[^:]*", name in "[^:]*",
                     commit in proptest::option::of("[0-9a-f]{40}"),
                     hash in proptest::option::of("[A-Za-z0-9+/]{43}=")) {
            let id = ModelId { namespace: ns, name, commit, hash };
            prop_assert_eq!(ModelId::from_compressed_str(&id.to_compressed_str()).unwrap(), id);
        }
    }
}

//! What the validator keeps across restarts, in one JSON file written
//! atomically after every step and every model update: a `kill -9` at any
//! moment leaves the previous or the new state, whole, so a restart loses
//! at most the step that was running.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pretrain_core::scoring::Uid;
use pretrain_core::{HotkeyAddress, ModelMetadata};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// File name of the state inside `--model_dir`.
pub const STATE_FILE: &str = "validator_state.json";
/// Format version; a file of another version is set aside, not misread.
pub const STATE_VERSION: u32 = 1;

/// Errors reading or writing the state file.
#[derive(Debug, Error)]
pub enum StateError {
    /// The file could not be read or written.
    #[error("validator state {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state this version understands.
    #[error("validator state {path} is unreadable: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A hotkey's latest commitment that was refused, kept so the refusal is
/// logged once rather than at every pass of the update loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The committed bytes as text (lossy UTF-8).
    pub commitment: String,
    /// Block of the commitment.
    pub block: u64,
    /// Why it was refused.
    pub reason: String,
}

/// The validator's persistent state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidatorState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Subnet the state belongs to.
    pub netuid: u16,
    /// Evaluation steps completed.
    pub step: u64,
    /// The model tracked per hotkey: downloaded, verified and checked.
    pub tracked: BTreeMap<HotkeyAddress, ModelMetadata>,
    /// The refused latest commitment per hotkey.
    pub refused: BTreeMap<HotkeyAddress, Refusal>,
    /// Uids evaluated in the next step.
    pub uids_to_eval: BTreeSet<Uid>,
    /// Uids whose model changed, joining at the next step.
    pub pending_uids: BTreeSet<Uid>,
    /// Moving-average weights over all uids.
    pub weights: Vec<f32>,
    /// Block at which weights were last set (or the validator started).
    pub last_epoch_block: Option<u64>,
}

impl ValidatorState {
    /// An empty state for `netuid`.
    pub fn new(netuid: u16) -> Self {
        Self {
            version: STATE_VERSION,
            netuid,
            step: 0,
            tracked: BTreeMap::new(),
            refused: BTreeMap::new(),
            uids_to_eval: BTreeSet::new(),
            pending_uids: BTreeSet::new(),
            weights: Vec::new(),
            last_epoch_block: None,
        }
    }

    /// Where the state of a validator with `--model_dir` `model_dir` lives.
    pub fn path(model_dir: &Path) -> PathBuf {
        model_dir.join(STATE_FILE)
    }

    /// Reads the state at `path`; `None` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let state: Self = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "format version {} (this validator writes {STATE_VERSION})",
                    state.version
                ),
            });
        }
        if state.weights.iter().any(|w| !w.is_finite()) {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                reason: "non-finite weights".into(),
            });
        }
        Ok(Some(state))
    }

    /// Writes the state atomically.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        pretrain_core::fsio::atomic_write_json(path, self).map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretrain_core::ModelId;

    #[test]
    fn round_trips_and_refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = ValidatorState::path(dir.path());
        assert!(ValidatorState::load(&path).unwrap().is_none());
        let mut s = ValidatorState::new(9);
        s.step = 3;
        s.tracked.insert(
            "hk".parse().unwrap(),
            ModelMetadata {
                id: ModelId::from_compressed_str("a:b:None:None").unwrap(),
                block: 7,
            },
        );
        s.uids_to_eval.insert(2);
        s.pending_uids.insert(5);
        s.weights = vec![0.25, 0.75];
        s.last_epoch_block = Some(11);
        s.save(&path).unwrap();
        assert_eq!(ValidatorState::load(&path).unwrap().unwrap(), s);

        s.version = STATE_VERSION + 1;
        s.save(&path).unwrap();
        let err = ValidatorState::load(&path).unwrap_err().to_string();
        assert!(err.contains("format version"), "{err}");
        // Hotkeys stay plain strings on disk, and one that could name a path
        // elsewhere (the store joins it to its root) is refused on load.
        s.version = STATE_VERSION;
        s.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"hk\""), "{text}");
        std::fs::write(&path, text.replace("\"hk\"", "\"../hk\"")).unwrap();
        let err = ValidatorState::load(&path).unwrap_err().to_string();
        assert!(err.contains("invalid hotkey"), "{err}");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            ValidatorState::load(&path),
            Err(StateError::Corrupt { .. })
        ));
    }
}

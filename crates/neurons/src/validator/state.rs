//! What the validator keeps across restarts, in one JSON file written
//! atomically after every step and every model update: a `kill -9` at any
//! moment leaves the previous or the new state, whole, so a restart loses
//! at most the step that was running.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pretrain_core::model_id::CompetitionId;
pub use pretrain_core::rules::CompetitionState;
use pretrain_core::scoring::Uid;
use pretrain_core::{HotkeyAddress, ModelId, ModelMetadata};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// File name of the state inside `--model_dir`.
pub const STATE_FILE: &str = "validator_state.json";
/// Format version; a file of another version is set aside, not misread.
pub const STATE_VERSION: u32 = 1;
/// Largest state file read (a subnet's worth of models is far less).
const MAX_STATE_BYTES: u64 = 64 << 20;
/// Largest step, turn or block accepted (2^53: exact in JSON, and
/// centuries of blocks away; `u64::MAX` would wrap on the next step).
const MAX_COUNTER: u64 = 1 << 53;
/// Longest commitment or reason kept in a refusal.
const MAX_TEXT: usize = 64 << 10;

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
    #[error("validator state {path} is unreadable: {reason}; restarting will not help: move it aside (`mv {path} {path}.bad`) and the validator starts afresh (it fetches the models again and rebuilds the weights over its next steps)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file belongs to another chain or subnet: its weights are other
    /// uids' and its blocks another clock's.
    #[error("validator state {path} was made for {theirs}, but this validator runs on {ours}: restarting will not help; give this validator its own --model_dir, or move {path} and metrics.jsonl aside to start afresh here")]
    Elsewhere {
        /// The file.
        path: PathBuf,
        /// The chain and subnet it was made for.
        theirs: String,
        /// The chain and subnet this validator runs on.
        ours: String,
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
    /// What was at fault: always `"content"` (the model's own) since only
    /// content refuses for good; absent in files of older versions, whose
    /// refusals are judged by their reason at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl Refusal {
    /// Whether the refusal is for the model's content, so it stands across
    /// restarts; any other is the validator's own failure of an older
    /// version, dropped at load so that the commitment is checked again.
    pub fn is_content(&self) -> bool {
        match &self.kind {
            Some(k) => k == super::failure::CONTENT,
            None => super::failure::is_content_reason(&self.reason),
        }
    }
}

/// A model the validator downloaded, verified and checked.
///
/// On disk it is the seed's `{"id": .., "block": ..}` (a [`ModelMetadata`]),
/// plus `"competition"` under the later protocol only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedModel {
    /// The committed model; under the later protocol `hash` holds the
    /// committed (secure) hash, the 4th field of the commitment.
    pub id: ModelId,
    /// Block of the commitment.
    pub block: u64,
    /// The competition it entered (later protocol; `None` under the seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub competition: Option<CompetitionId>,
}

impl TrackedModel {
    /// A seed-protocol model.
    pub fn seed(metadata: ModelMetadata) -> Self {
        Self {
            id: metadata.id,
            block: metadata.block,
            competition: None,
        }
    }

    /// The commitment as reported: the seed's 4 fields, or the later
    /// protocol's 5 (`ns:name:commit:secure_hash:competition`).
    pub fn model_str(&self) -> String {
        match self.competition {
            None => self.id.to_compressed_str(),
            Some(c) => format!("{}:{c}", self.id.to_compressed_str()),
        }
    }
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
    pub tracked: BTreeMap<HotkeyAddress, TrackedModel>,
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
    /// The chain the state was made on (the chain's id, or a node's
    /// genesis hash); absent in files of older versions and on chains that
    /// cannot say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// The competitions' part (absent under `sn9-2024-01`, so its file is
    /// unchanged; `"later"` on disk, as before).
    #[serde(default, rename = "later", skip_serializing_if = "Option::is_none")]
    pub competitions: Option<CompetitionState>,
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
            chain: None,
            competitions: None,
        }
    }

    /// Where the state of a validator with `--model_dir` `model_dir` lives.
    pub fn path(model_dir: &Path) -> PathBuf {
        model_dir.join(STATE_FILE)
    }

    /// Reads the state at `path`; `None` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>, StateError> {
        let bytes = match pretrain_core::bounded::read_regular(path, MAX_STATE_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let mut state: Self = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        // The validator's own failures (a full disk, its token, the hub)
        // were once kept as refusals; such a commitment is checked again.
        state.refused.retain(|hotkey, r| {
            let keep = r.is_content();
            if !keep {
                tracing::info!(%hotkey, "forgetting a refusal that was the validator's own failure, not the model's: {}", pretrain_core::escape::escape(&r.reason));
            }
            keep
        });
        if state.version != STATE_VERSION {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "format version {} (this validator writes {STATE_VERSION})",
                    state.version
                ),
            });
        }
        let later_weights = state
            .competitions
            .iter()
            .flat_map(|l| l.tracker.all_weights().values().flatten());
        if state
            .weights
            .iter()
            .chain(later_weights)
            .any(|w| !w.is_finite())
        {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                reason: "non-finite weights".into(),
            });
        }
        state.check_bounds().map_err(|reason| StateError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Some(state))
    }

    /// Every field within what a validator can have written: weights are
    /// moving averages of normalised scores (0 to 1) over at most one per
    /// uid, counters and blocks far from wrapping, strings short.
    fn check_bounds(&self) -> Result<(), String> {
        let uids = usize::from(u16::MAX) + 1;
        let lists = std::iter::once(("weights", &self.weights)).chain(
            self.competitions
                .iter()
                .flat_map(|l| l.tracker.all_weights().values())
                .map(|w| ("later.tracker weights", w)),
        );
        for (what, w) in lists {
            if w.len() > uids {
                return Err(format!(
                    "{} {what}, more than the {uids} uids a subnet can have",
                    w.len()
                ));
            }
            if let Some(x) = w.iter().find(|x| !(0.0..=1.0).contains(*x)) {
                return Err(format!("{what} holds {x}, outside 0..=1"));
            }
        }
        let counter = |what: &str, v: u64| {
            if v > MAX_COUNTER {
                Err(format!(
                    "{what} is {v}, beyond any real chain or run (at most {MAX_COUNTER})"
                ))
            } else {
                Ok(())
            }
        };
        counter("step", self.step)?;
        if let Some(b) = self.last_epoch_block {
            counter("last_epoch_block", b)?;
        }
        if let Some(l) = &self.competitions {
            counter("later.turn", l.turn)?;
        }
        for t in self.tracked.values() {
            counter("a tracked model's block", t.block)?;
        }
        for r in self.refused.values() {
            counter("a refusal's block", r.block)?;
            if r.commitment.len() > MAX_TEXT || r.reason.len() > MAX_TEXT {
                return Err(format!("a refusal's text is over {MAX_TEXT} bytes"));
            }
        }
        Ok(())
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

    #[test]
    fn round_trips_and_refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = ValidatorState::path(dir.path());
        assert!(ValidatorState::load(&path).unwrap().is_none());
        let mut s = ValidatorState::new(9);
        s.step = 3;
        s.tracked.insert(
            "hk".parse().unwrap(),
            TrackedModel::seed(ModelMetadata {
                id: ModelId::from_compressed_str("a:b:None:None").unwrap(),
                block: 7,
            }),
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

    /// A state file of the seed protocol as this validator wrote it before
    /// the later protocol existed: it loads, and is written back unchanged
    /// (no `later`, no `competition` keys).
    #[test]
    fn a_seed_state_file_is_read_and_written_unchanged() {
        let text = r#"{
  "version": 1,
  "netuid": 9,
  "step": 4,
  "tracked": {
    "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe": {
      "id": {
        "namespace": "m",
        "name": "best",
        "commit": "0123456789012345678901234567890123456789",
        "hash": "abc="
      },
      "block": 12
    }
  },
  "refused": {
    "5DfhGyQdFobKM8NsWvEeAKk5EQQgYe9AydgJ7rMB6E1EqRzV": {
      "commitment": "junk",
      "block": 3,
      "reason": "commitment is not a model id"
    }
  },
  "uids_to_eval": [
    1
  ],
  "pending_uids": [],
  "weights": [
    0.0,
    1.0
  ],
  "last_epoch_block": 10
}
"#;
        let dir = tempfile::tempdir().unwrap();
        let path = ValidatorState::path(dir.path());
        std::fs::write(&path, text).unwrap();
        let s = ValidatorState::load(&path).unwrap().unwrap();
        assert!(s.competitions.is_none());
        let t = s.tracked.values().next().unwrap();
        assert_eq!((t.block, t.competition), (12, None));
        assert_eq!(
            t.model_str(),
            "m:best:0123456789012345678901234567890123456789:abc="
        );
        s.save(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    /// Refusals an older validator kept for its own failures (a full disk,
    /// its token, a 404 from a misconfigured endpoint, a permission) are
    /// forgotten at load, so the commitment is checked again; content
    /// refusals stay, with or without a kind.
    #[test]
    fn own_failure_refusals_are_dropped_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = ValidatorState::path(dir.path());
        let mut s = ValidatorState::new(9);
        let refusal = |reason: &str, kind: Option<&str>| Refusal {
            commitment: "m:a:c:h".into(),
            block: 3,
            reason: reason.into(),
            kind: kind.map(String::from),
        };
        let own = [
            "cannot write /v/models/hk/.tmp/model.safetensors: No space left on device (os error 28)",
            "not found: repo m/a",
            "unauthorised: 401 from https://hub.example/api/models/m/a",
            "/v/models/hk/models--m--a/snapshots/c/config.json: Permission denied (os error 13)",
        ];
        for (i, reason) in own.iter().enumerate() {
            s.refused
                .insert(format!("own{i}").parse().unwrap(), refusal(reason, None));
        }
        s.refused.insert(
            "legacy".parse().unwrap(),
            refusal(
                "hash mismatch for m:a:c:h: committed h, downloaded x (deleted)",
                None,
            ),
        );
        s.refused.insert(
            "kind".parse().unwrap(),
            refusal("anything", Some(super::super::failure::CONTENT)),
        );
        s.save(&path).unwrap();
        let loaded = ValidatorState::load(&path).unwrap().unwrap();
        let kept: Vec<&str> = loaded.refused.keys().map(|k| k.as_str()).collect();
        assert_eq!(kept, ["kind", "legacy"]);
        assert_eq!(
            loaded.refused[&"kind".parse::<HotkeyAddress>().unwrap()]
                .kind
                .as_deref(),
            Some("content")
        );
    }

    /// The issue's values: each loads no more, with a message saying what
    /// to do; the limits themselves still load.
    #[test]
    fn out_of_bounds_fields_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = ValidatorState::path(dir.path());
        type Edit = fn(&mut ValidatorState);
        let bad: [(&str, Edit); 5] = [
            ("more than the 65536 uids", |s| {
                s.weights = vec![0.0; 100_000]
            }),
            ("outside 0..=1", |s| s.weights = vec![-5.0, 0.5]),
            ("outside 0..=1", |s| s.weights = vec![0.5, 1e30]),
            ("step is 18446744073709551615", |s| s.step = u64::MAX),
            ("last_epoch_block", |s| s.last_epoch_block = Some(u64::MAX)),
        ];
        for (why, f) in bad {
            let mut s = ValidatorState::new(9);
            f(&mut s);
            s.save(&path).unwrap();
            let err = ValidatorState::load(&path).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
            assert!(
                err.contains("move it aside") && err.contains(".bad"),
                "{err}"
            );
        }
        let mut s = ValidatorState::new(9);
        s.weights = vec![0.0; 65_536];
        s.weights[0] = 1.0;
        s.step = 1 << 53;
        s.save(&path).unwrap();
        assert_eq!(ValidatorState::load(&path).unwrap().unwrap(), s);
    }

    #[test]
    fn a_state_of_another_chain_or_subnet_is_refused_naming_the_file() {
        use super::super::failure::check_identity;
        let path = Path::new("/v/validator_state.json");
        let mut s = ValidatorState::new(9);
        s.chain = Some("embedded:aa".into());
        assert!(check_identity(path, &s, 9, Some("embedded:aa")).is_ok());
        let err = check_identity(path, &s, 9, Some("embedded:bb"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("subnet 9 of chain embedded:aa")
                && err.contains("subnet 9 of chain embedded:bb")
                && err.contains("move /v/validator_state.json and metrics.jsonl aside"),
            "{err}"
        );
        let err = check_identity(path, &s, 3, Some("embedded:aa"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("runs on subnet 3 of chain"), "{err}");
        // A file from before chains were recorded, or a chain that cannot
        // say: only the subnet is compared.
        s.chain = None;
        assert!(check_identity(path, &s, 9, Some("embedded:bb")).is_ok());
        assert!(check_identity(path, &s, 8, None).is_err());
    }

    #[test]
    fn the_later_part_round_trips_and_out_of_range_tracker_weights_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = ValidatorState::path(dir.path());
        let mut s = ValidatorState::new(9);
        let mut later = CompetitionState::new(3);
        later.turn = 5;
        later.uids_to_eval.insert(2, [1, 2].into());
        later.pending_uids.insert(1, [0].into());
        later.tracker.record(2, &[0.0, 1.0, 3.0], 0.5);
        s.competitions = Some(later);
        s.tracked.insert(
            "hk".parse().unwrap(),
            TrackedModel {
                id: ModelId::from_compressed_str("a:b:c:sec").unwrap(),
                block: 7,
                competition: Some(2),
            },
        );
        s.save(&path).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["tracked"]["hk"]["competition"], 2);
        assert_eq!(v["later"]["turn"], 5);
        assert_eq!(v["later"]["uids_to_eval"]["2"], serde_json::json!([1, 2]));
        let hk: HotkeyAddress = "hk".parse().unwrap();
        assert_eq!(s.tracked[&hk].model_str(), "a:b:c:sec:2");
        assert_eq!(ValidatorState::load(&path).unwrap().unwrap(), s);

        let text = std::fs::read_to_string(&path).unwrap();
        // 0.75 is the third uid's share of competition 2 (3 of 4).
        assert!(text.contains("0.75"), "{text}");
        // 1e39 is beyond f32: the file is refused, not read as +inf.
        std::fs::write(&path, text.replace("0.75", "1e39")).unwrap();
        assert!(matches!(
            ValidatorState::load(&path),
            Err(StateError::Corrupt { .. })
        ));
    }
}

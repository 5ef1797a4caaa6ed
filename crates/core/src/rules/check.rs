//! The validator's acceptance rules before and after a download (taoverse
//! `model_updater.py` `sync_model`): the competition must exist at the
//! commit block and now, the model must be old enough, and the downloaded
//! files' hash must match the commitment, bound to the miner's hotkey.

use thiserror::Error;

use super::schedule::{CompetitionSpec, Schedule};
use crate::hash::secure_hash;
use crate::ids::{ModelHash, Unchecked};
use crate::model_id::{CompetitionId, CompetitionModelId};

/// A downloaded model whose hash does not match its commitment.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "hash of the downloaded model ({downloaded}) matches neither the committed hash ({chain_hash}) \
     nor, with hotkey {hotkey}, the committed secure hash ({chain_secure}): expected secure hash {expected}"
)]
pub struct HashCheckError {
    /// `hash_of_directory` of the files downloaded.
    pub downloaded: String,
    /// The hotkey that committed.
    pub hotkey: String,
    /// The raw hash on chain (`None` for a 5-field id).
    pub chain_hash: String,
    /// The secure hash on chain.
    pub chain_secure: String,
    /// `secure_hash(downloaded, hotkey)`.
    pub expected: String,
}

/// Upstream's check, exactly: accepted if the committed raw hash equals the
/// downloaded one (only a legacy 4-field id carries one), else if the
/// committed secure hash equals `secure_hash(downloaded, hotkey)`.
pub fn check_download(
    chain_id: &CompetitionModelId,
    downloaded_hash: &str,
    hotkey_ss58: &str,
) -> Result<(), HashCheckError> {
    if chain_id.hash.as_deref() == Some(downloaded_hash) {
        return Ok(());
    }
    let expected = secure_hash(downloaded_hash, hotkey_ss58);
    if chain_id.secure_hash.as_deref() == Some(expected.as_str()) {
        return Ok(());
    }
    let or_none = |v: &Option<Unchecked<ModelHash>>| v.as_deref().unwrap_or("None").to_string();
    Err(HashCheckError {
        downloaded: downloaded_hash.to_string(),
        hotkey: hotkey_ss58.to_string(),
        chain_hash: or_none(&chain_id.hash),
        chain_secure: or_none(&chain_id.secure_hash),
        expected,
    })
}

/// Whether [`check_download`] accepts.
pub fn accepts_download(
    chain_id: &CompetitionModelId,
    downloaded_hash: &str,
    hotkey_ss58: &str,
) -> bool {
    check_download(chain_id, downloaded_hash, hotkey_ss58).is_ok()
}

/// Why a committed model is not (yet) fetched.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// Its competition was not scheduled at its commit block.
    #[error("competition {competition} is not in the schedule at the commit block {block}")]
    NotAtCommitBlock {
        /// The competition committed to.
        competition: CompetitionId,
        /// The commit block.
        block: u64,
    },
    /// Its competition is not scheduled now (retired).
    #[error("competition {competition} is not in the schedule at block {block} (retired)")]
    Retired {
        /// The competition committed to.
        competition: CompetitionId,
        /// The current block.
        block: u64,
    },
    /// Committed less than `eval_block_delay` blocks ago: retried later.
    #[error("committed {age} blocks ago, fewer than the {delay} blocks before evaluation")]
    TooRecent {
        /// Blocks since the commitment.
        age: u64,
        /// The competition's `eval_block_delay`.
        delay: u64,
    },
    /// The schedule has no entry at one of the blocks.
    #[error("{0}")]
    NoEntry(String),
}

impl Refusal {
    /// Whether the same commitment may be accepted later (only [`Refusal::TooRecent`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Refusal::TooRecent { .. })
    }
}

/// The checks before a download, in upstream's order: the competition at
/// the commit block, the competition now, then `eval_block_delay` of the
/// current one. Returns the current competition, whose constraints apply.
pub fn admit(
    schedule: &Schedule,
    competition: CompetitionId,
    commit_block: u64,
    current_block: u64,
) -> Result<&CompetitionSpec, Refusal> {
    let lookup = |block| {
        schedule
            .competition_at(competition, block)
            .map_err(|e| Refusal::NoEntry(e.to_string()))
    };
    if lookup(commit_block)?.is_none() {
        return Err(Refusal::NotAtCommitBlock {
            competition,
            block: commit_block,
        });
    }
    let Some(now) = lookup(current_block)? else {
        return Err(Refusal::Retired {
            competition,
            block: current_block,
        });
    };
    let age = current_block.saturating_sub(commit_block);
    let delay = now.constraints.eval_block_delay;
    // A commitment "from the future" (chain reorg, clock skew) is too recent too.
    if current_block < commit_block || age < delay {
        return Err(Refusal::TooRecent { age, delay });
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> CompetitionModelId {
        CompetitionModelId::from_compressed_str(s).unwrap()
    }

    #[test]
    fn secure_hash_binds_the_hotkey() {
        let hash = "AAAA";
        let good = id(&format!("o:n:c:{}:1", secure_hash(hash, "alice")));
        assert!(accepts_download(&good, hash, "alice"));
        let err = check_download(&good, hash, "bob").unwrap_err();
        assert_eq!(err.expected, secure_hash(hash, "bob"));
        // A 5-field id carrying the raw hash is refused: it must carry the secure one.
        assert!(!accepts_download(&id("o:n:c:AAAA:1"), hash, "alice"));
        // A legacy 4-field id may carry either.
        assert!(accepts_download(&id("o:n:c:AAAA"), hash, "alice"));
        assert!(!accepts_download(&id("o:n:c:None"), hash, "alice"));
    }

    const TWO: &str = r#"
name = "t"
[competitions.A]
id = 1
constraints = { max_parameters = 10, max_bytes = 100, architectures = ["GPT2LMHeadModel"], sequence_length = 8, eval_block_delay = 5, epsilon = { kind = "FixedEpsilon", epsilon = 0.01 } }
scoring = { temperature = 0.01, alpha = 0.5, sample_min = 5, wins = "mean_loss_competitive" }
[competitions.B]
id = 2
constraints = { max_parameters = 10, max_bytes = 100, architectures = ["GPT2LMHeadModel"], sequence_length = 8, epsilon = { kind = "FixedEpsilon", epsilon = 0.01 } }
scoring = { temperature = 0.01, alpha = 0.5, sample_min = 5, wins = "mean_loss_competitive" }
[[entries]]
start_block = 0
competitions = [{ competition = "A", share = 1.0 }]
[[entries]]
start_block = 100
competitions = [{ competition = "A", share = 0.5, eval_block_delay = 7 }, { competition = "B", share = 0.5 }]
[[entries]]
start_block = 200
competitions = [{ competition = "B", share = 1.0 }]
"#;

    #[test]
    fn admit_in_upstream_order() {
        let s = Schedule::from_toml("t", TWO).unwrap();
        // B did not exist at block 50.
        assert_eq!(
            admit(&s, 2, 50, 150),
            Err(Refusal::NotAtCommitBlock {
                competition: 2,
                block: 50
            })
        );
        // A retired at 200.
        assert_eq!(
            admit(&s, 1, 150, 250),
            Err(Refusal::Retired {
                competition: 1,
                block: 250
            })
        );
        // The current competition's delay applies (7 from block 100, not 5).
        let e = admit(&s, 1, 95, 101).unwrap_err();
        assert_eq!(e, Refusal::TooRecent { age: 6, delay: 7 });
        assert!(e.is_retryable());
        assert_eq!(
            admit(&s, 1, 95, 102).unwrap().constraints.eval_block_delay,
            7
        );
        assert!(admit(&s, 1, 10, 14).is_err());
        assert!(admit(&s, 1, 10, 15).is_ok());
        // A commitment after the current block is not evaluated yet either.
        assert!(matches!(
            admit(&s, 2, 160, 150),
            Err(Refusal::TooRecent { .. })
        ));
        assert_eq!(admit(&s, 2, 150, 150).unwrap().id, 2);
    }
}

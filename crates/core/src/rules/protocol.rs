//! What each generation of the protocol ([`Protocol`]) commits: the model
//! id format on chain and the repo ids that fit in it. Callers ask the
//! protocol instead of branching on it.

use crate::model_id::{check_competition_repo_id, CompetitionId, LaterModelId, RepoIdTooLong};
use crate::{ModelId, RepoId};

use super::Protocol;

/// A commitment read by the rules of its protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Hub namespace.
    pub namespace: String,
    /// Repo name.
    pub name: String,
    /// Hub commit (`None`: not given).
    pub commit: Option<String>,
    /// The hash committed: the raw directory hash (`sn9-2024-01`) or the
    /// hotkey-bound secure hash (competitions).
    pub hash: Option<String>,
    /// The competition entered (`None` under `sn9-2024-01`).
    pub competition: Option<CompetitionId>,
}

impl Protocol {
    /// Reads committed chain bytes as this protocol's model id: 4 fields
    /// for `sn9-2024-01`, 5 (competition id last) for the competitions.
    /// The error says why it is no model id.
    pub fn read_commitment(self, bytes: &[u8]) -> Result<Committed, String> {
        match self {
            Protocol::Seed => ModelId::from_chain_bytes(bytes)
                .map(|id| Committed {
                    namespace: id.namespace,
                    name: id.name,
                    commit: id.commit,
                    hash: id.hash,
                    competition: None,
                })
                .map_err(|e| e.to_string()),
            Protocol::Later => LaterModelId::from_chain_bytes(bytes)
                .map(|id| Committed {
                    namespace: id.namespace,
                    name: id.name,
                    commit: id.commit,
                    hash: id.secure_hash,
                    competition: Some(id.competition_id),
                })
                .map_err(|e| e.to_string()),
        }
    }

    /// Refuses a repo id that would not fit this protocol's model id on
    /// chain (the 4-field id has room for any valid repo id).
    pub fn check_repo_id(self, repo: &RepoId) -> Result<(), RepoIdTooLong> {
        match self {
            Protocol::Seed => Ok(()),
            Protocol::Later => check_competition_repo_id(repo),
        }
    }

    /// Whether miners name a competition in their commitment.
    pub fn has_competition_ids(self) -> bool {
        matches!(self, Protocol::Later)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_protocol_reads_its_own_model_id() {
        let four = b"ns:name:abc:hash";
        let seed = Protocol::Seed.read_commitment(four).unwrap();
        assert_eq!(
            (
                seed.commit.as_deref(),
                seed.hash.as_deref(),
                seed.competition
            ),
            (Some("abc"), Some("hash"), None)
        );
        // A legacy 4-field id is competition 0 under the competition rules.
        let legacy = Protocol::Later.read_commitment(four).unwrap();
        assert_eq!(legacy.competition, Some(0));
        let five = Protocol::Later
            .read_commitment(b"ns:name:abc:secure:3")
            .unwrap();
        assert_eq!(
            (five.hash.as_deref(), five.competition),
            (Some("secure"), Some(3))
        );
        assert!(Protocol::Later.read_commitment(b"ns:name:abc:s:x").is_err());
        assert!(Protocol::Seed.read_commitment(b"ns:name").is_err());
    }

    #[test]
    fn only_the_competition_id_format_limits_repo_ids() {
        let long: RepoId = format!("me/{}", "a".repeat(36)).parse().unwrap();
        assert!(Protocol::Seed.check_repo_id(&long).is_ok());
        assert!(Protocol::Later.check_repo_id(&long).is_err());
        assert!(Protocol::Later.has_competition_ids());
        assert!(!Protocol::Seed.has_competition_ids());
    }
}

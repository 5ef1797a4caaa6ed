//! The chain: bittensor wallets, the [`Chain`] trait the miner and
//! validator use (metagraph, commitments, weights, blocks), and its backends
//! `subtensor` (a real node over websocket) and `embedded` (a file-backed
//! chain for one machine).

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod embedded;
pub mod network;
pub mod subtensor;
pub mod timelock;
pub mod wallet;

pub use network::{connect, ChainOptions, Network};
pub use wallet::{Wallet, WalletError};

/// Errors of chain calls; the variants are what callers branch on.
#[derive(Debug, Error)]
pub enum ChainError {
    /// The hotkey has no uid on the subnet.
    #[error("hotkey {hotkey} is not registered on subnet {netuid}")]
    NotRegistered {
        /// SS58 address.
        hotkey: String,
        /// Subnet.
        netuid: u16,
    },
    /// The chain refused the call for now; retry later.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// The call did not complete in time.
    #[error("chain call timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The node could not be reached.
    #[error("network error: {0}")]
    Network(String),
    /// The node answered something we cannot understand.
    #[error("bad response from chain: {0}")]
    BadResponse(String),
    /// The subnet does not exist.
    #[error("subnet {0} does not exist")]
    NoSuchSubnet(u16),
    /// Anything else the chain rejected (with its reason).
    #[error("{0}")]
    Rejected(String),
    /// The embedded chain's file could not be read or written.
    #[error("embedded chain storage: {0}")]
    Storage(String),
}

impl ChainError {
    /// Whether the same call may succeed later (rate limit, network,
    /// timeout); anything else is a refusal that retrying cannot fix.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ChainError::RateLimited(_) | ChainError::Timeout(_) | ChainError::Network(_)
        )
    }
}

/// A hotkey able to sign calls: its SS58 address and sr25519 mini secret.
#[derive(Clone)]
pub struct Hotkey {
    /// SS58 address (prefix 42).
    pub ss58: String,
    secret_seed: Option<[u8; 32]>,
}

impl Hotkey {
    /// A hotkey with its 32-byte sr25519 mini secret (`secretSeed` of a keyfile).
    pub fn from_secret_seed(ss58: impl Into<String>, secret_seed: [u8; 32]) -> Self {
        Self {
            ss58: ss58.into(),
            secret_seed: Some(secret_seed),
        }
    }

    /// An address only: enough for the embedded chain, not for a real node.
    pub fn address_only(ss58: impl Into<String>) -> Self {
        Self {
            ss58: ss58.into(),
            secret_seed: None,
        }
    }

    /// The mini secret, if this hotkey can sign.
    pub fn secret_seed(&self) -> Option<&[u8; 32]> {
        self.secret_seed.as_ref()
    }
}

impl fmt::Debug for Hotkey {
    // Never print the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hotkey")
            .field("ss58", &self.ss58)
            .finish_non_exhaustive()
    }
}

/// One neuron of a subnet's metagraph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neuron {
    /// Position in the subnet.
    pub uid: u16,
    /// Hotkey SS58 address.
    pub hotkey: String,
    /// Coldkey SS58 address.
    pub coldkey: String,
    /// Stake in TAO.
    pub stake: f64,
    /// Incentive, normalised to 0..=1.
    pub incentive: f64,
    /// Whether the neuron may set weights.
    pub validator_permit: bool,
}

/// A subnet's neurons at a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metagraph {
    /// Subnet.
    pub netuid: u16,
    /// Block the metagraph was read at.
    pub block: u64,
    /// Neurons, ordered by uid.
    pub neurons: Vec<Neuron>,
}

/// A hotkey's latest commitment and the block it was made at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitment {
    /// Hotkey SS58 address.
    pub hotkey: String,
    /// Block of the commitment.
    pub block: u64,
    /// The raw committed bytes (a compressed `ModelId` for this subnet).
    pub data: Vec<u8>,
}

/// How a weight vector reached the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightsSubmission {
    /// Set directly (commit-reveal off): the weights count now.
    Set {
        /// Block the call landed in.
        block: u64,
    },
    /// Committed timelocked (commit-reveal on): the weights count from `reveal_block`.
    Committed {
        /// Block the commit landed in.
        block: u64,
        /// The beacon round the commit is encrypted to.
        reveal_round: u64,
        /// The block from which the chain can have revealed it (an estimate on subtensor).
        reveal_block: u64,
    },
}

/// A subnet's weight-setting parameters as the chain reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hyperparameters {
    /// Subnet.
    pub netuid: u16,
    /// `Tempo`.
    pub tempo: u64,
    /// `CommitRevealWeightsEnabled`.
    pub commit_reveal_weights_enabled: bool,
    /// `CommitRevealWeightsVersion` (`None` where the runtime has none).
    pub commit_reveal_version: Option<u16>,
    /// `RevealPeriodEpochs`.
    pub reveal_period_epochs: u64,
    /// `WeightsVersionKey`.
    pub weights_version_key: u64,
    /// `WeightsSetRateLimit`, in blocks.
    pub weights_rate_limit: u64,
    /// Blocks between two commitments of a hotkey, where the chain says.
    pub commit_rate_limit: Option<u64>,
}

/// What the miner and validator need from a chain. Every call has a timeout.
#[async_trait]
pub trait Chain: Send + Sync {
    /// Current block height.
    async fn current_block(&self) -> Result<u64, ChainError>;
    /// What tells this chain from any other (the embedded chain's id; a
    /// node's genesis hash), for state files kept against it; `None` where
    /// the backend cannot say.
    async fn chain_id(&self) -> Result<Option<String>, ChainError> {
        Ok(None)
    }
    /// The subnet's metagraph.
    async fn metagraph(&self, netuid: u16) -> Result<Metagraph, ChainError>;
    /// The hotkey's uid on the subnet, if registered.
    async fn uid_of(&self, netuid: u16, hotkey: &str) -> Result<Option<u16>, ChainError>;
    /// Commits `data` for `hotkey` on `netuid`; returns the block it landed in.
    async fn commit(&self, hotkey: &Hotkey, netuid: u16, data: &[u8]) -> Result<u64, ChainError>;
    /// The hotkey's latest commitment on the subnet.
    async fn commitment(&self, netuid: u16, hotkey: &str)
        -> Result<Option<Commitment>, ChainError>;
    /// Every hotkey's latest commitment on the subnet.
    async fn commitments(&self, netuid: u16) -> Result<Vec<Commitment>, ChainError>;
    /// Sets `hotkey`'s weights on the subnet (`u16` values as bittensor emits them).
    async fn set_weights(
        &self,
        hotkey: &Hotkey,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
    ) -> Result<(), ChainError>;
    /// [`Chain::set_weights`], saying how the weights went in: set directly, or committed
    /// timelocked where the subnet has commit-reveal on (after the checks its reveal makes).
    async fn submit_weights(
        &self,
        hotkey: &Hotkey,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
    ) -> Result<WeightsSubmission, ChainError> {
        self.set_weights(hotkey, netuid, uids, values, version_key)
            .await?;
        Ok(WeightsSubmission::Set {
            block: self.current_block().await?,
        })
    }
    /// The weights `uid` has on the subnet now (`(target uid, value)`; empty when none).
    async fn weights_of(&self, netuid: u16, uid: u16) -> Result<Vec<(u16, u16)>, ChainError> {
        let _ = (netuid, uid);
        Err(ChainError::Rejected(
            "this chain backend cannot read weights back".into(),
        ))
    }
    /// The subnet's weight-setting parameters.
    async fn hyperparameters(&self, netuid: u16) -> Result<Hyperparameters, ChainError> {
        let _ = netuid;
        Err(ChainError::Rejected(
            "this chain backend has no hyperparameters to report".into(),
        ))
    }
}

/// Whether committed weights were applied at their reveal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevealOutcome {
    /// The chain holds the weights committed.
    Applied,
    /// The chain holds no or other weights for the validator; the reason found, if any.
    NotApplied(String),
}

/// After a commit, waits until the chain is past `reveal_block` (plus `grace` blocks for a
/// late pulse), reads the validator's weights back and says whether they are the ones
/// committed (same uids; values equal up to the chain's normalisation, so compared by
/// ratio). Logs the outcome: info when applied, a warning with the reason otherwise.
pub async fn confirm_reveal(
    chain: std::sync::Arc<dyn Chain>,
    netuid: u16,
    hotkey: String,
    sent: Vec<(u16, u16)>,
    reveal_block: u64,
    grace: u64,
    poll: std::time::Duration,
) -> Result<RevealOutcome, ChainError> {
    let until = reveal_block.saturating_add(grace);
    loop {
        if chain.current_block().await? > until {
            break;
        }
        tokio::time::sleep(poll).await;
    }
    let Some(uid) = chain.uid_of(netuid, &hotkey).await? else {
        let why = format!("hotkey {hotkey} is no longer registered on subnet {netuid}");
        tracing::warn!(netuid, reveal_block, "committed weights not applied: {why}");
        return Ok(RevealOutcome::NotApplied(why));
    };
    let got = chain.weights_of(netuid, uid).await?;
    let outcome = if same_weights(&sent, &got) {
        tracing::info!(
            netuid,
            uid,
            reveal_block,
            "committed weights applied at the reveal"
        );
        RevealOutcome::Applied
    } else {
        let h = chain.hyperparameters(netuid).await.ok();
        let why = match h {
            Some(h) if !h.commit_reveal_weights_enabled => {
                "commit-reveal was switched off before the reveal".to_string()
            }
            Some(h) => format!(
                "the chain holds {} weights for uid {uid}, not the {} committed (the runtime drops a \
                 commit it cannot open or whose version key is below {}, or whose sender lost its permit)",
                got.len(),
                sent.len(),
                h.weights_version_key
            ),
            None => format!(
                "the chain holds {} weights for uid {uid}, not the {} committed",
                got.len(),
                sent.len()
            ),
        };
        tracing::warn!(
            netuid,
            uid,
            reveal_block,
            "committed weights not applied: {why}"
        );
        RevealOutcome::NotApplied(why)
    };
    Ok(outcome)
}

/// Whether `got` (as the chain stores them: zero weights dropped, maybe rescaled) are the
/// weights `sent`.
fn same_weights(sent: &[(u16, u16)], got: &[(u16, u16)]) -> bool {
    let mut a: Vec<(u16, u16)> = sent.iter().copied().filter(|p| p.1 > 0).collect();
    let mut b: Vec<(u16, u16)> = got.iter().copied().filter(|p| p.1 > 0).collect();
    a.sort_unstable();
    b.sort_unstable();
    if a.len() != b.len() || a.iter().zip(&b).any(|(x, y)| x.0 != y.0) {
        return false;
    }
    let (sa, sb): (f64, f64) = (
        a.iter().map(|p| f64::from(p.1)).sum(),
        b.iter().map(|p| f64::from(p.1)).sum(),
    );
    // The chain may renormalise to its own max; u16 rounding is within 1/65535 per entry.
    a.iter()
        .zip(&b)
        .all(|(x, y)| (f64::from(x.1) / sa - f64::from(y.1) / sb).abs() <= 2.0 / 65535.0)
}

/// Refuses a weight vector no chain accepts (lengths differ, a uid twice)
/// before anything is sent.
pub(crate) fn check_weights(uids: &[u16], values: &[u16]) -> Result<(), ChainError> {
    if uids.len() != values.len() {
        return Err(ChainError::Rejected(format!(
            "set_weights got {} uids but {} values",
            uids.len(),
            values.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    match uids.iter().find(|u| !seen.insert(**u)) {
        Some(dup) => Err(ChainError::Rejected(format!(
            "set_weights got uid {dup} twice"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::embedded::{EmbeddedChain, EmbeddedOptions, SubnetParams};
    use super::*;

    // A well-known SS58 address (Alice's dev key): valid, and never registered here.
    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

    /// The error convention: walking `source()`, no element's text contains
    /// its source's text (an error prints its cause or exposes it, never both),
    /// and no element's text is empty.
    fn said_once(e: &(dyn Error + 'static)) -> Result<(), String> {
        let mut cur = Some(e);
        while let Some(x) = cur {
            let text = x.to_string();
            if text.trim().is_empty() {
                return Err(format!("{x:?} has an empty message"));
            }
            if let Some(src) = x.source() {
                let s = src.to_string();
                if text.contains(&s) {
                    return Err(format!("{text:?} repeats its source {s:?}"));
                }
            }
            cur = x.source();
        }
        Ok(())
    }

    #[test]
    fn the_check_catches_an_error_that_prints_and_exposes_its_source() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read x: {source}")]
        struct Both {
            source: std::io::Error,
        }
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read x")]
        struct Exposes {
            #[source]
            source: std::io::Error,
        }
        let io = || std::io::Error::other("disk on fire");
        assert!(said_once(&Both { source: io() }).is_err());
        assert!(said_once(&Exposes { source: io() }).is_ok());
    }

    #[tokio::test]
    async fn chain_errors_print_or_expose_their_source_never_both() {
        let tmp = tempfile::tempdir().unwrap();
        let mut errors: Vec<Box<dyn Error + Send + Sync>> = vec![
            Box::new(ChainError::NotRegistered {
                hotkey: ALICE.into(),
                netuid: 9,
            }),
            Box::new(ChainError::RateLimited("wait 3 blocks".into())),
            Box::new(ChainError::Timeout(std::time::Duration::from_secs(60))),
            Box::new(ChainError::Network("connection reset".into())),
            Box::new(ChainError::BadResponse("short key".into())),
            Box::new(ChainError::NoSuchSubnet(9)),
            Box::new(ChainError::Rejected("no".into())),
            Box::new(ChainError::Storage("disk on fire".into())),
        ];

        // Wallet errors from real failures.
        let w = Wallet::new(tmp.path(), "w", "h");
        std::fs::create_dir_all(w.hotkey_path()).unwrap(); // a directory where the key file goes
        let io = w.hotkey().unwrap_err();
        assert!(matches!(io, WalletError::Io { .. }), "{io:?}");
        // The cause is printed (and so not exposed).
        assert!(io.to_string().contains("not a regular file"), "{io}");
        errors.push(Box::new(io));
        let w2 = Wallet::new(tmp.path(), "w2", "h");
        errors.push(Box::new(w2.hotkey().unwrap_err()));
        std::fs::create_dir_all(w2.hotkey_path().parent().unwrap()).unwrap();
        std::fs::write(w2.hotkey_path(), b"{not json").unwrap();
        let malformed = w2.hotkey().unwrap_err();
        assert!(
            matches!(malformed, WalletError::Malformed { .. }),
            "{malformed:?}"
        );
        errors.push(Box::new(malformed));
        errors.push(Box::new(wallet::SafeName::wallet("../up").unwrap_err()));

        // Embedded chain errors from real calls.
        let options = EmbeddedOptions::default();
        errors.push(Box::new(
            EmbeddedChain::open_existing_async(&tmp.path().join("none"), &options)
                .await
                .unwrap_err(),
        ));
        let chain = EmbeddedChain::open_async(&tmp.path().join("chain"), &options)
            .await
            .unwrap();
        let alice = Hotkey::address_only(ALICE);
        let e = chain.commit(&alice, 9, b"x").await.unwrap_err();
        assert!(matches!(e, ChainError::NoSuchSubnet(9)), "{e:?}");
        errors.push(Box::new(e));
        chain
            .create_subnet(9, SubnetParams::default())
            .await
            .unwrap();
        let e = chain.commit(&alice, 9, b"x").await.unwrap_err();
        assert!(matches!(e, ChainError::NotRegistered { .. }), "{e:?}");
        errors.push(Box::new(e));
        let e = chain.commit(&alice, 9, &[b'x'; 129]).await.unwrap_err();
        assert!(matches!(e, ChainError::Rejected(_)), "{e:?}");
        errors.push(Box::new(e));
        errors.push(Box::new(chain.add_stake(ALICE, 1.0).await.unwrap_err()));
        errors.push(Box::new(
            subtensor::load_metadata(b"not metadata").unwrap_err(),
        ));

        for e in &errors {
            if let Err(problem) = said_once(e.as_ref()) {
                panic!("{problem}");
            }
        }
    }
}

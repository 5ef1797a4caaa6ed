//! The miner's push: upload a model directory, then commit its identity to
//! the chain, retrying while the chain refuses for now (rate limit).

use std::path::{Path, PathBuf};
use std::time::Duration;

use pretrain_chain::{Chain, ChainError, Hotkey};
use pretrain_core::{Backoff, CommitId, HashError, ModelId, ModelIdError, ModelMetadata};
use pretrain_store::{list_local_files, HubError, ModelHub, RepoId};
use thiserror::Error;
use tracing::info;

use crate::retry::retry;

/// Settings of [`push`].
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Subnet to commit on.
    pub netuid: u16,
    /// Wait between two commit attempts (the original waited 60 s).
    pub retry_delay: Duration,
    /// Give up after this many commit attempts; `None` retries forever, as
    /// the original did (only while the chain says "later": a permanent
    /// refusal ends at once).
    pub max_attempts: Option<u32>,
    /// Retries of the hub upload while the hub is unreachable or rate-limits.
    pub upload_backoff: Backoff,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            netuid: pretrain_core::constants::SUBNET_UID,
            retry_delay: Duration::from_secs(60),
            max_attempts: None,
            upload_backoff: Backoff::default(),
        }
    }
}

/// Why a push failed.
#[derive(Debug, Error)]
pub enum PushError {
    /// Upload or listing on the hub failed.
    #[error("hub")]
    Hub(#[from] HubError),
    /// The directory could not be hashed.
    #[error("cannot hash {}", path.display())]
    Hash {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: HashError,
    },
    /// The hashing task panicked or was cancelled.
    #[error("the hashing task did not finish")]
    Task(#[source] tokio::task::JoinError),
    /// The model id does not fit on chain.
    #[error("model id")]
    ModelId(#[from] ModelIdError),
    /// The hub holds different files at the new commit than the directory,
    /// so the committed hash would not match what validators download.
    #[error("after upload, {repo}@{commit} differs from the directory: {reason}")]
    Mismatch {
        /// The repo.
        repo: RepoId,
        /// The new commit.
        commit: CommitId,
        /// What differs.
        reason: String,
    },
    /// The chain refused for a reason retrying cannot fix.
    #[error("chain: {0}")]
    Chain(ChainError),
    /// The hotkey has no uid on the subnet: nothing was uploaded.
    #[error("hotkey {hotkey} is not registered on subnet {netuid}: register it first (btcli subnet register, or `pretrain chain register` on the embedded chain)")]
    NotRegistered {
        /// SS58 address.
        hotkey: String,
        /// Subnet.
        netuid: u16,
    },
    /// The chain kept refusing until the attempts ran out.
    #[error("chain refused the commitment {attempts} times, last: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last refusal.
        last: ChainError,
    },
}

/// Pushes the `save_pretrained` directory `dir` to `repo` on `hub` and
/// commits `namespace:name:commit:hash` for `hotkey` on `chain`. The hash
/// is that of the directory, which is exactly what the repo holds at the
/// new commit (checked from the hub's file list). Returns the committed
/// metadata with the block it landed in.
pub async fn push(
    hub: &dyn ModelHub,
    chain: &dyn Chain,
    hotkey: &Hotkey,
    dir: &Path,
    repo: &RepoId,
    options: &PushOptions,
) -> Result<ModelMetadata, PushError> {
    // Nothing is written to the hub for a hotkey the chain would refuse.
    match chain.uid_of(options.netuid, &hotkey.ss58).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(PushError::NotRegistered {
                hotkey: hotkey.ss58.clone(),
                netuid: options.netuid,
            })
        }
        Err(e) => return Err(PushError::Chain(e)),
    }
    let d = dir.to_path_buf();
    let hash = tokio::task::spawn_blocking(move || pretrain_core::hash_of_directory(&d))
        .await
        .map_err(PushError::Task)?
        .map_err(|source| PushError::Hash {
            path: dir.to_path_buf(),
            source,
        })?;
    // Fail before uploading if the id could never fit on chain.
    ModelId {
        namespace: repo.namespace().to_string(),
        name: repo.name().to_string(),
        commit: Some("0".repeat(40)),
        hash: Some(hash.clone()),
    }
    .to_chain_bytes()?;

    info!(repo = %repo, dir = %dir.display(), %hash, "uploading model");
    let commit = retry(
        "uploading to the hub",
        &options.upload_backoff,
        HubError::is_retryable,
        || hub.upload(dir, repo),
    )
    .await
    .map_err(|g| g.error)?;
    check_uploaded(hub, dir, repo, &commit).await?;

    let id = ModelId::at(repo, &commit, hash);
    let data = id.to_chain_bytes()?;
    let schedule = Backoff::constant(options.retry_delay, options.max_attempts);
    let block = retry(
        "committing the model to the chain",
        &schedule,
        ChainError::is_retryable,
        || chain.commit(hotkey, options.netuid, &data),
    )
    .await
    .map_err(|g| match g.error {
        ChainError::NotRegistered { hotkey, netuid } => PushError::NotRegistered { hotkey, netuid },
        e if g.retryable => PushError::GaveUp {
            attempts: g.attempts,
            last: e,
        },
        e => PushError::Chain(e),
    })?;
    info!(model = %id, block, "model committed to the chain");
    Ok(ModelMetadata { id, block })
}

/// Checks that the hub's files at `commit` are exactly the directory's.
async fn check_uploaded(
    hub: &dyn ModelHub,
    dir: &Path,
    repo: &RepoId,
    commit: &CommitId,
) -> Result<(), PushError> {
    let mismatch = |reason: String| PushError::Mismatch {
        repo: repo.clone(),
        commit: commit.clone(),
        reason,
    };
    let mut local: Vec<(String, u64)> = list_local_files(dir)?
        .into_iter()
        .map(|(p, _, s)| (p, s))
        .collect();
    local.sort();
    let mut remote: Vec<(String, u64)> = hub
        .files_at(repo, commit)
        .await?
        .into_iter()
        .map(|f| (f.path, f.size))
        .collect();
    remote.sort();
    if local != remote {
        let extra: Vec<_> = remote
            .iter()
            .filter(|f| !local.contains(f))
            .map(|f| f.0.as_str())
            .collect();
        let missing: Vec<_> = local
            .iter()
            .filter(|f| !remote.contains(f))
            .map(|f| f.0.as_str())
            .collect();
        return Err(mismatch(format!(
            "on the hub only: {extra:?}; in the directory only: {missing:?}"
        )));
    }
    Ok(())
}

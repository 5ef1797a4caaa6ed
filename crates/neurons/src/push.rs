//! The miner's push: upload a model directory, then commit its identity to
//! the chain, retrying while the chain refuses for now (rate limit).
//!
//! [`push_model`] pushes under a protocol: `sn9-2024-01` (public repo,
//! `namespace:name:commit:hash`) or the competitions (private repo,
//! `namespace:name:commit:secure_hash:competition_id`, after which
//! [`publish`] makes the repo public once the commitment has landed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use pretrain_chain::{Chain, ChainError, Hotkey};
use pretrain_core::rules::{ChainModelId, ChainModelIdError, Protocol};
use pretrain_core::{
    Backoff, CommitId, CompetitionId, CompetitionModelIdError, HashError, ModelIdError,
};
use pretrain_store::{list_local_files, HubError, ModelHub, RepoId, Visibility};
use thiserror::Error;
use tracing::info;

use crate::retry::retry;

/// Settings of [`push_model`].
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
    /// Push the weights as bf16 (`--upload_b16`): a copy of the directory
    /// with bf16 weights (half the bytes) is hashed, uploaded and committed.
    pub upload_b16: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            netuid: pretrain_core::constants::SUBNET_UID,
            retry_delay: Duration::from_secs(60),
            max_attempts: None,
            upload_backoff: Backoff::default(),
            upload_b16: false,
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
    /// The competitions' (5-field) model id does not fit on chain.
    #[error("model id")]
    LaterModelId(#[from] CompetitionModelIdError),
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
    /// The directory holds a model the validator refuses once loaded (a
    /// non-finite weight): nothing was uploaded or committed.
    #[error("{} is not a model the validator accepts: {reason}", dir.display())]
    NotAccepted {
        /// The directory that would have been uploaded.
        dir: PathBuf,
        /// The validator's reason, naming the tensor.
        reason: String,
    },
    /// The bf16 copy of `--upload_b16` could not be made.
    #[error("converting the weights to bf16: {0}")]
    Bf16(String),
    /// The chain kept refusing until the attempts ran out.
    #[error("chain refused the commitment {attempts} times, last: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last refusal.
        last: ChainError,
    },
}

/// The bf16 copy of a directory that `--upload_b16` pushes, removed on drop.
struct Staged {
    /// Keeps the copy alive.
    _tmp: tempfile::TempDir,
    /// The copy: `config.json`, `generation_config.json`, bf16 `model.safetensors`.
    dir: PathBuf,
}

/// With `upload_b16`, the model of `dir` saved again with bf16 weights (off
/// the async runtime: it reads and writes every weight); else `None`.
async fn stage_b16(dir: &Path, options: &PushOptions) -> Result<Option<Staged>, PushError> {
    if !options.upload_b16 {
        return Ok(None);
    }
    let src = dir.to_path_buf();
    let bf16 = |e: &dyn std::fmt::Display| PushError::Bf16(e.to_string());
    tokio::task::spawn_blocking(move || {
        let tmp = tempfile::Builder::new()
            .prefix(".upload-b16-")
            .tempdir()
            .map_err(|e| bf16(&e))?;
        let dir = tmp.path().join("model");
        let model = pretrain_model::Model::load(&src, &candle_core::Device::Cpu).map_err(|e| bf16(&e))?;
        model
            .save_as(&dir, candle_core::DType::BF16)
            .map_err(|e| bf16(&e))?;
        info!(from = %src.display(), to = %dir.display(), "weights converted to bf16 for the upload");
        Ok(Some(Staged { _tmp: tmp, dir }))
    })
    .await
    .map_err(PushError::Task)?
}

/// Refuses a directory whose weights the validator would refuse after loading
/// (NaN or inf), off the async runtime: it reads every weight.
async fn check_finite(dir: &Path) -> Result<(), PushError> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || pretrain_model::check_finite_weights(&d))
        .await
        .map_err(PushError::Task)?
        .map_err(|e| PushError::NotAccepted {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })
}

/// What a push committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed<I = ChainModelId> {
    /// The committed id, in its protocol's format.
    pub id: I,
    /// `hash_of_directory` of the uploaded files (under the competitions,
    /// what the secure hash binds to the hotkey).
    pub model_hash: String,
    /// Block the commitment landed in.
    pub block: u64,
}

/// The push of `protocol` (the one the CLI calls): uploads the
/// `save_pretrained` directory `dir` to `repo` and commits the protocol's
/// model id for it, `competition_id` naming the competition where the
/// protocol has them ([`Protocol::model_id`]). Under the competitions the
/// repo is uploaded private (a new repo; an existing one keeps its
/// visibility): call [`publish`] once the commitment has landed.
#[allow(clippy::too_many_arguments)]
pub async fn push_model(
    hub: &dyn ModelHub,
    chain: &dyn Chain,
    hotkey: &Hotkey,
    dir: &Path,
    repo: &RepoId,
    protocol: Protocol,
    competition_id: CompetitionId,
    options: &PushOptions,
) -> Result<Pushed, PushError> {
    let ss58 = hotkey.ss58.clone();
    let id_at =
        |commit: &str, hash: &str| protocol.model_id(repo, commit, hash, &ss58, competition_id);
    let private = protocol.uploads_private();
    // Nothing is written to the hub for a hotkey the chain would refuse.
    ensure_registered(chain, hotkey, options.netuid).await?;
    let staged = stage_b16(dir, options).await?;
    let dir = staged.as_ref().map_or(dir, |s| s.dir.as_path());
    check_finite(dir).await?;
    let model_hash = hash_dir(dir).await?;
    // Fail before uploading if the id could never fit on chain.
    id_at(&"0".repeat(40), &model_hash).to_chain_bytes()?;

    let visibility = if private {
        info!(repo = %repo, dir = %dir.display(), hash = %model_hash,
            "uploading model (private until the commitment lands)");
        Visibility::Private
    } else {
        info!(repo = %repo, dir = %dir.display(), hash = %model_hash, "uploading model");
        Visibility::Public
    };
    let commit = upload(hub, dir, repo, visibility, options).await?;
    check_uploaded(hub, dir, repo, &commit, private).await?;

    let id = id_at(commit.as_str(), &model_hash);
    let data = id.to_chain_bytes()?;
    let block = commit_data(chain, hotkey, &data, options).await?;
    info!(model = %id, block, "model committed to the chain");
    Ok(Pushed {
        id,
        model_hash,
        block,
    })
}

impl From<ChainModelIdError> for PushError {
    fn from(e: ChainModelIdError) -> Self {
        match e {
            ChainModelIdError::Sn9Rules2024(e) => PushError::ModelId(e),
            ChainModelIdError::Competitions(e) => PushError::LaterModelId(e),
        }
    }
}

/// Makes `repo` public (upstream's `--update_repo_visibility`, once the
/// commitment has landed), retrying while the hub is unreachable or
/// rate-limits on the `backoff` schedule.
pub async fn make_public(
    hub: &dyn ModelHub,
    repo: &RepoId,
    backoff: &Backoff,
) -> Result<(), HubError> {
    retry(
        "making the repo public",
        backoff,
        HubError::is_retryable,
        || hub.set_visibility(repo, Visibility::Public),
    )
    .await
    .map_err(|g| g.error)?;
    info!(%repo, "repo is public");
    Ok(())
}

/// The commitment landed, but the repo could not be made public.
#[derive(Debug, Error)]
#[error(
    "the commitment {id} landed in block {block}, but {repo} is still private, so validators \
     cannot download it ({reason}); make it public by hand: {hint}"
)]
pub struct StillPrivate {
    /// The committed model id.
    pub id: String,
    /// The block it landed in.
    pub block: u64,
    /// The repo.
    pub repo: RepoId,
    /// Why the hub refused, on one line.
    pub reason: String,
    /// How to do it by hand.
    pub hint: String,
}

/// Makes `repo` public once the commitment `pushed` has landed (upstream's
/// `--update_repo_visibility`); the error says how to do it by hand (`hint`).
pub async fn publish<I: std::fmt::Display>(
    hub: &dyn ModelHub,
    repo: &RepoId,
    backoff: &Backoff,
    pushed: &Pushed<I>,
    hint: &str,
) -> Result<(), StillPrivate> {
    make_public(hub, repo, backoff)
        .await
        .map_err(|e| StillPrivate {
            id: pushed.id.to_string(),
            block: pushed.block,
            repo: repo.clone(),
            reason: crate::error_chain(&e).replace('\n', " "),
            hint: hint.to_string(),
        })
}

/// Refuses a hotkey without a uid on the subnet.
async fn ensure_registered(
    chain: &dyn Chain,
    hotkey: &Hotkey,
    netuid: u16,
) -> Result<(), PushError> {
    match chain.uid_of(netuid, &hotkey.ss58).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(PushError::NotRegistered {
            hotkey: hotkey.ss58.clone(),
            netuid,
        }),
        Err(e) => Err(PushError::Chain(e)),
    }
}

/// The hash the original's miner commits for `dir`: `hash_of_directory`
/// over the files `from_pretrained` fetches back from the repo (for a
/// `save_pretrained` directory, all of them), off the runtime.
async fn hash_dir(dir: &Path) -> Result<String, PushError> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || pretrain_store::pretrained::hash_of_model_dir(&d))
        .await
        .map_err(PushError::Task)?
        .map_err(|e| match e {
            HubError::List { source, .. } => PushError::Hash {
                path: dir.to_path_buf(),
                source,
            },
            e => PushError::Hub(e),
        })
}

/// Uploads with retries while the hub is unreachable or rate-limits.
async fn upload(
    hub: &dyn ModelHub,
    dir: &Path,
    repo: &RepoId,
    visibility: Visibility,
    options: &PushOptions,
) -> Result<CommitId, PushError> {
    retry(
        "uploading to the hub",
        &options.upload_backoff,
        HubError::is_retryable,
        || hub.upload_as(dir, repo, visibility),
    )
    .await
    .map_err(|g| PushError::Hub(g.error))
}

/// Commits `data` for `hotkey`, retrying while the chain says "later";
/// returns the block it landed in.
async fn commit_data(
    chain: &dyn Chain,
    hotkey: &Hotkey,
    data: &[u8],
    options: &PushOptions,
) -> Result<u64, PushError> {
    let schedule = Backoff::constant(options.retry_delay, options.max_attempts);
    retry(
        "committing the model to the chain",
        &schedule,
        ChainError::is_retryable,
        || chain.commit(hotkey, options.netuid, data),
    )
    .await
    .map_err(|g| match g.error {
        ChainError::NotRegistered { hotkey, netuid } => PushError::NotRegistered { hotkey, netuid },
        e if g.retryable => PushError::GaveUp {
            attempts: g.attempts,
            last: e,
        },
        e => PushError::Chain(e),
    })
}

/// Checks that the hub holds the directory at `commit`: every file of it
/// with its size, and nothing else but the Hub's `.gitattributes`; so the
/// files `from_pretrained` fetches are the directory's (and hash the same).
/// `as_owner`: list as the repo's owner (a private repo is listed too).
async fn check_uploaded(
    hub: &dyn ModelHub,
    dir: &Path,
    repo: &RepoId,
    commit: &CommitId,
    as_owner: bool,
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
    let listed = if as_owner {
        hub.files_at_as_owner(repo, commit).await?
    } else {
        hub.files_at(repo, commit).await?
    };
    let has_own_attributes = local.iter().any(|f| f.0 == ".gitattributes");
    let mut remote: Vec<(String, u64)> = listed
        .into_iter()
        .filter(|f| has_own_attributes || f.path != ".gitattributes")
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

/// Why `pretrain upload` refused or failed to push a directory.
#[derive(Debug, Error)]
pub enum UploadError {
    /// The directory is not a model the validator accepts (nothing uploaded).
    #[error("{} is not a model the validator accepts", dir.display())]
    NotAccepted {
        /// The directory.
        dir: PathBuf,
        /// The validator's reason.
        #[source]
        source: pretrain_model::ModelError,
    },
    /// The model does not fit the competition entered (nothing uploaded).
    #[error("{} does not fit competition {id} ({name}) of --schedule {schedule}", dir.display())]
    Misfit {
        /// The directory.
        dir: PathBuf,
        /// The competition's id.
        id: CompetitionId,
        /// The competition's name.
        name: String,
        /// The schedule's name.
        schedule: String,
        /// Why.
        #[source]
        source: pretrain_core::rules::Unsupported,
    },
    /// The upload or the commitment failed.
    #[error("pushing {} to {repo}", dir.display())]
    Push {
        /// The directory.
        dir: PathBuf,
        /// The repo.
        repo: RepoId,
        /// Why.
        #[source]
        source: Box<PushError>,
    },
    /// The commitment landed but the repo could not be made public.
    #[error(transparent)]
    StillPrivate(Box<StillPrivate>),
}

impl From<StillPrivate> for UploadError {
    fn from(e: StillPrivate) -> Self {
        Self::StillPrivate(Box::new(e))
    }
}

/// A model directory checked as a validator would check it, before any of
/// it is uploaded (`pretrain upload`): what a refusal here spares is the
/// miner's current commitment, which a push would replace.
#[derive(Debug, Clone)]
pub struct CheckedDir {
    dir: PathBuf,
    info: Option<pretrain_model::ModelInfo>,
}

impl CheckedDir {
    /// The checks known without the chain: the protocol's fixed limits
    /// (the seed's; the competitions' come with the block) and, as the
    /// validator checks once it has loaded them, finite weights.
    pub fn check(dir: &Path, protocol: Protocol) -> Result<Self, UploadError> {
        let info = protocol
            .limits_before_chain()
            .map(|(max_params, max_bytes)| check_within(dir, max_params, max_bytes))
            .transpose()?;
        pretrain_model::check_finite_weights(dir).map_err(|source| UploadError::NotAccepted {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            info,
        })
    }

    /// Under the competitions, the checks of the competition entered
    /// (`spec`, of schedule `schedule`): its size limits, parameter range and
    /// architectures. Logs what was checked.
    pub fn check_entered(
        &mut self,
        protocol: Protocol,
        spec: &pretrain_core::rules::CompetitionSpec,
        schedule: &str,
    ) -> Result<(), UploadError> {
        if let Some(spec) = protocol.entered(spec) {
            let c = &spec.constraints;
            let checked = check_within(&self.dir, c.max_parameters, c.max_bytes)?;
            spec.check_model(&pretrain_core::rules::schedule::ModelFacts {
                parameters: checked.params,
                architecture: checked.architecture.class_name(),
            })
            .map_err(|source| UploadError::Misfit {
                dir: self.dir.clone(),
                id: spec.id,
                name: spec.name.clone(),
                schedule: schedule.to_string(),
                source,
            })?;
            self.info = Some(checked);
        }
        info!(info = ?self.info, "model checked");
        Ok(())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the last check measured (`None`: no limits were checked yet).
    pub fn info(&self) -> Option<&pretrain_model::ModelInfo> {
        self.info.as_ref()
    }
}

fn check_within(
    dir: &Path,
    max_params: u64,
    max_bytes: u64,
) -> Result<pretrain_model::ModelInfo, UploadError> {
    let limits = pretrain_model::Limits {
        max_params,
        max_bytes,
    };
    pretrain_model::check_model_dir(dir, limits).map_err(|source| UploadError::NotAccepted {
        dir: dir.to_path_buf(),
        source,
    })
}

/// `pretrain upload`'s push of a [`CheckedDir`]: [`push_model`], then,
/// under the competitions and with `make_public` (the hint for doing it by
/// hand), the private repo made public once the commitment has landed (the
/// seed's repos are public from the start).
#[allow(clippy::too_many_arguments)]
pub async fn push_checked(
    hub: &dyn ModelHub,
    chain: &dyn Chain,
    hotkey: &Hotkey,
    checked: &CheckedDir,
    repo: &RepoId,
    protocol: Protocol,
    competition_id: CompetitionId,
    options: &PushOptions,
    make_public: Option<&str>,
) -> Result<Pushed, UploadError> {
    let dir = checked.dir();
    let pushed = push_model(
        hub,
        chain,
        hotkey,
        dir,
        repo,
        protocol,
        competition_id,
        options,
    )
    .await
    .map_err(|source| UploadError::Push {
        dir: dir.to_path_buf(),
        repo: repo.clone(),
        source: Box::new(source),
    })?;
    if let (true, Some(hint)) = (protocol.uploads_private(), make_public) {
        publish(hub, repo, &options.upload_backoff, &pushed, hint).await?;
    }
    Ok(pushed)
}

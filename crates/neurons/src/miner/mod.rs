//! The miner: what a miner can script, like the original's `pretrain.mining`
//! actions, and the training loop behind `pretrain mine`.
//!
//! - [`load_remote_model`]: the model a uid has committed, fetched at its
//!   commit, hash-checked and checked as the validator does; [`best_uid`]
//!   picks the uid with the highest incentive (`--load_best`).
//! - [`load_local_model`] / [`load_model_file`] / [`save`]: local models.
//! - [`push_best_model`] / [`push_model`](crate::push::push_model): upload
//!   then commit, under either protocol.
//! - [`Training`]: the loop (fresh seeded pages each epoch, AdamW every
//!   `accumulation_steps` batches, best model kept whole on disk, resumable),
//!   reporting [`Event`]s to an [`Observer`].
//! - [`MiningSession`]: `pretrain mine` as a library: start or resume, the
//!   epoch loop, and the pushes its [`PushPolicy`] (`push_policy.rs`: where
//!   to change when the miner pushes) decides.
//!
//! ```no_run
//! # async fn run() -> Result<(), pretrain_neurons::miner::MinerError> {
//! use std::sync::Arc;
//! use candle_core::Device;
//! use pretrain_neurons::miner::{self, MinerConfig, NoObserver, RunDir, Training};
//!
//! let chain = pretrain_chain::connect(&pretrain_chain::ChainOptions::default()).await?;
//! let hub = pretrain_store::open_hub("local:/tmp/hub", Default::default())?;
//! // Start from the model uid 3 committed (downloaded, hash-checked, validated).
//! let remote = miner::load_remote_model(chain.as_ref(), hub.as_ref(), 9, 3, "models".as_ref(), &Device::Cpu).await?;
//! let config = MinerConfig { num_epochs: Some(2), ..MinerConfig::default() };
//! let source = pretrain_data::open_source("falcon")?;
//! let run = RunDir::create(&config.model_dir, &miner::new_run_id())?;
//! let mut training = Training::start(remote.model, config, source, run)?;
//! let summary = training.run(&mut NoObserver).await?;
//! // The best model is a `save_pretrained` directory: push it.
//! let hotkey = pretrain_chain::Wallet::new("~/.bittensor/wallets", "default", "default").hotkey()?;
//! // The repo id is checked where it enters (a flag), once.
//! # let repo: pretrain_core::RepoId = "me/my-model".parse().unwrap();
//! let pushed = pretrain_neurons::push_model(hub.as_ref(), chain.as_ref(), &hotkey, &summary.best_dir,
//!     &repo, pretrain_core::rules::Protocol::Sn9Rules2024, 0, &Default::default()).await?;
//! # let _ = pushed; Ok(()) }
//! ```

mod config;
mod load;
mod push_policy;
mod session;
mod session_error;
mod start;
mod train_loop;

pub use config::{new_run_id, MinerConfig, RunDir};
pub use load::{best_uid, load_local_model, load_model_file, load_remote_model, save, RemoteModel};
pub use push_policy::{FinalPush, PushPolicy};
pub use session::{
    MiningSession, PushHelp, PushTarget, SessionObserver, SessionOutcome, SessionSettings,
};
pub use session_error::SessionError;
pub use start::{Start, StartingModel};
pub use train_loop::{
    push_best_model, EpochSummary, Event, NoObserver, Observer, Progress, StopFlag, Training,
    TrainingSummary,
};

use thiserror::Error;

/// Why a miner action failed.
#[derive(Debug, Error)]
pub enum MinerError {
    /// A model could not be loaded, trained or saved.
    #[error(transparent)]
    Model(#[from] pretrain_model::ModelError),
    /// A model fails the validator's checks.
    #[error("{path} is not a model the validator accepts: {reason}")]
    Rejected {
        /// The directory or file.
        path: String,
        /// The validator's reason.
        reason: String,
    },
    /// The chain could not be read.
    #[error("chain")]
    Chain(#[from] pretrain_chain::ChainError),
    /// The wallet could not be read.
    #[error(transparent)]
    Wallet(#[from] pretrain_chain::wallet::WalletError),
    /// The hub could not be reached or refused.
    #[error("hub")]
    Hub(#[from] pretrain_store::HubError),
    /// The validator's store refused the download.
    #[error(transparent)]
    Store(#[from] pretrain_store::StoreError),
    /// The pages could not be read.
    #[error("data")]
    Data(#[from] pretrain_data::DataError),
    /// Pushing failed.
    #[error(transparent)]
    Push(#[from] crate::push::PushError),
    /// A uid has nothing usable to load.
    #[error("{0}")]
    NoModel(String),
    /// A setting cannot work.
    #[error("{0}")]
    Config(String),
    /// The run directory is in use by another miner.
    #[error(transparent)]
    Lock(#[from] pretrain_core::lock::LockError),
    /// A file of the run could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// A background task died.
    #[error("task failed: {0}")]
    Task(String),
    /// A background task panicked or was cancelled.
    #[error("a background task did not finish")]
    Join(#[source] tokio::task::JoinError),
}

impl MinerError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |error| Self::Io {
            path: path.display().to_string(),
            error,
        }
    }
}

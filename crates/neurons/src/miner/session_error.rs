//! Why a mining session failed: shared by its start (`start.rs`) and its
//! loop and pushes (`session.rs`).

use std::path::PathBuf;

use pretrain_chain::ChainError;
use pretrain_core::rules::Unsupported;
use thiserror::Error;

use super::MinerError;
use crate::push::StillPrivate;

/// Why a mining session failed.
#[derive(Debug, Error)]
pub enum SessionError {
    /// Training, loading or saving failed.
    #[error(transparent)]
    Miner(#[from] MinerError),
    /// The starting model could not be prepared.
    #[error(transparent)]
    Model(#[from] pretrain_model::ModelError),
    /// The run to continue could not be resumed.
    #[error("resuming {}", dir.display())]
    Resume {
        /// The run directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: MinerError,
    },
    /// The metagraph (for `--load_best`) could not be read.
    #[error("reading the metagraph")]
    Metagraph(#[source] ChainError),
    /// `--load_best` on a subnet without neurons.
    #[error("subnet {0} has no neurons")]
    NoNeurons(u16),
    /// The model of a uid could not be loaded.
    #[error("loading the model of uid {uid}")]
    LoadUid {
        /// The uid.
        uid: u16,
        /// Why.
        #[source]
        source: MinerError,
    },
    /// The starting model is not one the competition entered accepts.
    #[error("the starting model does not fit --schedule {schedule}")]
    Misfit {
        /// The schedule's name.
        schedule: String,
        /// The competition's reason.
        #[source]
        source: Unsupported,
    },
    /// A push failed; the model stays on disk.
    #[error(
        "pushing {} failed ({reason}); the model stays there; finish with: {finish}",
        best.display()
    )]
    PushFailed {
        /// The best model's directory.
        best: PathBuf,
        /// Why, on one line.
        reason: String,
        /// The command that finishes the push by hand.
        finish: String,
    },
    /// The commitment landed but the repo could not be made public.
    #[error(transparent)]
    StillPrivate(Box<StillPrivate>),
}

impl From<StillPrivate> for SessionError {
    fn from(e: StillPrivate) -> Self {
        Self::StillPrivate(Box::new(e))
    }
}

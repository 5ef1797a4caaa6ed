//! Core types of the pretraining subnet: model identity ([`ModelId`],
//! [`ModelMetadata`]), the model hash the miner commits and the validator
//! checks, the validator's scoring rules and the competition constants.
//!
//! Pure apart from reading the files being hashed and [`fsio`], the one
//! atomic-write helper every crate uses for files kept for later.

pub mod backoff;
pub mod bounded;
pub mod constants;
pub mod escape;
pub mod fsio;
pub mod hash;
pub mod ids;
pub mod lock;
pub mod metrics;
pub mod model_id;
pub mod rules;
pub mod scoring;

pub use backoff::Backoff;
pub use constants::Tunables;
pub use hash::secure_hash;
pub use hash::{hash_of_directory, hash_of_file, HashError};
pub use ids::{CommitId, HotkeyAddress, IdError, ModelHash, RepoId, RepoIdPart, Ss58, Unchecked};
pub use model_id::{validate_hf_repo_id, ModelId, ModelIdError, ModelMetadata, RepoIdError};
pub use model_id::{ChainId, CompetitionId, CompetitionModelId, CompetitionModelIdError};
pub use rules::{EpsilonFunc, Schedule};
pub use scoring::{iswin, weights_for_emit, StepInput, StepJson, StepOutput, StepOutputJson};

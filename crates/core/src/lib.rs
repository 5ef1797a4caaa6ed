//! Core types of the pretraining subnet: model identity ([`ModelId`],
//! [`ModelMetadata`]), the model hash the miner commits and the validator
//! checks, the validator's scoring rules and the competition constants.
//!
//! Pure: no I/O besides reading the files being hashed.

pub mod constants;
pub mod hash;
pub mod model_id;
pub mod scoring;

pub use constants::Competition;
pub use hash::{hash_of_directory, hash_of_file, HashError};
pub use model_id::{validate_hf_repo_id, ModelId, ModelIdError, ModelMetadata, RepoIdError};
pub use scoring::{iswin, weights_for_emit, StepInput, StepJson, StepOutput, StepOutputJson};

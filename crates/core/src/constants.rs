//! The competition constants, in one place: every crate (and every clap
//! default) uses these rather than its own copy.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Sequence length every model is evaluated on.
pub const SEQUENCE_LENGTH: usize = 1024;
/// Maximum parameter count: exactly that of the default GPT-2 model.
pub const MAX_MODEL_PARAMETERS: u64 = 122_268_040;
/// Maximum total size of a model repo's files at the committed revision.
pub const MAX_MODEL_BYTES: u64 = 1024 * 1024 * 1024;
/// Weights version key sent with `set_weights`.
pub const WEIGHTS_VERSION_KEY: u64 = 2002;
/// Subnet id of the pretraining subnet on finney; the default `--netuid`.
pub const SUBNET_UID: u16 = 9;
/// Most bytes one commitment holds: subtensor's largest `Data::Raw` field (`Raw128`).
pub const MAX_COMMITMENT_BYTES: usize = 128;
/// Maximum length in bytes of the compressed model id stored on chain (one commitment).
pub const MAX_METADATA_BYTES: usize = MAX_COMMITMENT_BYTES;
/// Limit of one chain call unless told otherwise (SPEC: 60 s); the default `--chain_timeout`.
pub const CHAIN_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Maximum length (characters) of a Hugging Face repo id `namespace/name`.
pub const MAX_REPO_ID_LENGTH: usize = 41;
/// End-of-text token of the GPT-2 tokenizer.
pub const EOS_TOKEN_ID: u32 = 50256;
/// Vocabulary size of the GPT-2 tokenizer.
pub const VOCAB_SIZE: usize = 50257;
/// Documents per page of the dataset (rows per request).
pub const ROWS_PER_PAGE: usize = 100;
/// Highest page offset that pages are drawn from (RefinedWeb rows API).
pub const MAX_PAGE: u64 = 968_000_015;
/// Blocks between two accepted commitments of one hotkey on a subnet
/// (subtensor's Commitments rate limit; the embedded chain's default).
pub const COMMIT_RATE_LIMIT_BLOCKS: u64 = 100;

/// The validator's tunables: the `sn9-2024-01` scoring constants and the
/// step and epoch sizes (a competition itself is a
/// [`crate::rules::CompetitionSpec`]). The defaults are the seed-era values
/// (epsilon 0.01, temperature 0.25); v2.1.0 lowered them to 0.005 and 0.04.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tunables {
    /// Loss advantage given to the earlier-committed model.
    pub epsilon: f64,
    /// Softmax temperature over win rates (rounded to `f32` where used, as
    /// the original's float32 tensors do).
    pub temperature: f64,
    /// Moving-average factor of the weights. Kept in `f64` because the
    /// original computes `1 - alpha` in Python floats before rounding.
    pub alpha: f64,
    /// Number of best uids kept in the evaluation set.
    pub sample_min: usize,
    /// Blocks between two `set_weights` calls.
    pub blocks_per_epoch: u64,
    /// Pages of text per evaluation step.
    pub pages_per_eval: usize,
    /// Tokens per evaluated sequence.
    pub sequence_length: usize,
    /// Evaluation batch size.
    pub batch_size: usize,
}

impl Default for Tunables {
    fn default() -> Self {
        Self {
            epsilon: 0.01,
            temperature: 0.25,
            alpha: 0.9,
            sample_min: 30,
            blocks_per_epoch: 50,
            pages_per_eval: 3,
            sequence_length: SEQUENCE_LENGTH,
            batch_size: 1,
        }
    }
}

impl Tunables {
    /// The constants of the original v2.1.0 release.
    pub fn v2_1_0() -> Self {
        Self {
            epsilon: 0.005,
            temperature: 0.04,
            ..Self::default()
        }
    }
}

//! The whole subnet on one machine: an embedded chain, a local hub and a
//! short corpus under one directory, a validator and N miners as child
//! `pretrain` processes, and the leaderboard read back from the chain.
//!
//! The run order is [`run`] (in `session.rs`); the `pretrain localnet`
//! command holds only its flags, the terminal drawing and that one call.

mod leaderboard;
mod provision;
mod session;
mod start;
mod supervise;

use std::path::PathBuf;

use thiserror::Error;

pub use leaderboard::{
    competitions_json, describe_commitment, leaderboard, leaderboard_line, normalized_weights,
    rows_json, short_prefix, validator_view, Row, ValidatorView,
};
pub use provision::{
    assign_competitions, commit_rate_limit, competitions_at, setup_chain, setup_wallets,
    write_short_corpus, SHORT_DOC_CHARS,
};
pub use session::{run, Observer, Outcome, Settings, StopReason, COMMIT_REVEAL, REFRESH};
pub use start::{miner_lr, tiny_gpt2_config, tiny_llama_config, ModelSize, Start};
pub use supervise::{
    common_flags, miner_flags, spawn_miner, spawn_validator, stop_all, validator_flags, MinerSpec,
    Proc, STOP_GRACE,
};

/// Subnet the local network runs (the real one's id, so flags look the same).
pub const NETUID: u16 = pretrain_core::constants::SUBNET_UID;
/// Stake given to the validator so it holds a permit; miners get none.
pub const VALIDATOR_STAKE: f64 = 1000.0;

/// Why a step of the local subnet failed.
#[derive(Debug, Error)]
pub enum LocalnetError {
    /// A file or directory could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A wallet could not be created or read.
    #[error("{what}")]
    Wallet {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: pretrain_chain::WalletError,
    },
    /// The embedded chain refused a call.
    #[error("{what}")]
    Chain {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: pretrain_chain::ChainError,
    },
    /// A starting model could not be made or saved.
    #[error("writing the starting model")]
    Model(#[from] pretrain_model::ModelError),
    /// The sample corpus could not be read.
    #[error("reading the sample corpus")]
    Data(#[from] pretrain_data::DataError),
    /// The schedule has no entry at the block, or a competition cannot run here.
    #[error("{0}")]
    Rules(String),
    /// No starting model fits a competition.
    #[error("{0}")]
    NoStartingModel(String),
    /// A blocking step (writing a model or the corpus) did not finish.
    #[error("{what}")]
    Task {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A child process could not be started.
    #[error("starting {name} (`pretrain {command}`)")]
    Spawn {
        /// The child's name.
        name: String,
        /// The subcommand.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Paths inside the localnet directory.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The directory (absolute).
    pub root: PathBuf,
}

impl Layout {
    /// Wallets of the validator and the miners.
    pub fn wallets(&self) -> PathBuf {
        self.root.join("wallets")
    }
    /// The embedded chain.
    pub fn chain(&self) -> PathBuf {
        self.root.join("chain")
    }
    /// The local model hub.
    pub fn hub(&self) -> PathBuf {
        self.root.join("hub")
    }
    /// One log file per child.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// Where a starting model is written.
    pub fn init_model(&self, start: Start) -> PathBuf {
        self.root.join("init").join(start.dir_name())
    }
    /// Miner `i`'s `--model_dir`.
    pub fn miner_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("miner-{i}"))
    }
    /// The validator's `--model_dir`.
    pub fn validator_dir(&self) -> PathBuf {
        self.root.join("validator")
    }
    /// The short corpus.
    pub fn corpus(&self) -> PathBuf {
        self.root.join("corpus")
    }
    /// The leaderboard log, a JSON line per refresh.
    pub fn leaderboard(&self) -> PathBuf {
        self.root.join("leaderboard.jsonl")
    }
}

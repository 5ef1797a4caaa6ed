//! Which chain a command talks to: `--subtensor.network`,
//! `--subtensor.chain_endpoint`, `--chain_dir` and `--block_time` mapped to a
//! backend.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::embedded::{EmbeddedChain, EmbeddedOptions};
use crate::subtensor::{endpoint_for, SubtensorChain};
use crate::wallet::expand_home;
use crate::{Chain, ChainError};

/// `--subtensor.network` when none is given: the offline chain, so nothing
/// reaches the real network unless asked.
pub const DEFAULT_NETWORK: Network = Network::Embedded;
/// `--chain_dir` when none is given.
pub const DEFAULT_CHAIN_DIR: &str = "~/.bittensor/pretrain-chain";
/// `--netuid` when none is given: the pretraining subnet (the core constant).
pub use pretrain_core::constants::SUBNET_UID as DEFAULT_NETUID;

/// A `--subtensor.network` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Bittensor's main network.
    Finney,
    /// Bittensor's test network.
    Test,
    /// A subtensor node on this machine (ws://127.0.0.1:9944).
    Local,
    /// The file-backed chain under `--chain_dir`.
    Embedded,
}

impl Network {
    /// The name as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Finney => "finney",
            Network::Test => "test",
            Network::Local => "local",
            Network::Embedded => "embedded",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "finney" => Ok(Network::Finney),
            "test" => Ok(Network::Test),
            "local" => Ok(Network::Local),
            "embedded" => Ok(Network::Embedded),
            other => Err(format!(
                "unknown network {other:?}: expected finney, test, local or embedded"
            )),
        }
    }
}

/// Everything needed to pick and open a chain.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    /// `--subtensor.network`.
    pub network: Network,
    /// `--subtensor.chain_endpoint`: a node URL; when set it wins over `network` (as in bittensor).
    pub chain_endpoint: Option<String>,
    /// `--chain_dir`: where the embedded chain lives.
    pub chain_dir: PathBuf,
    /// `--block_time`: seconds per block of a new embedded chain.
    pub block_time: Option<f64>,
    /// Limit for each chain call.
    pub timeout: Duration,
}

impl Default for ChainOptions {
    fn default() -> Self {
        Self {
            network: DEFAULT_NETWORK,
            chain_endpoint: None,
            chain_dir: expand_home(std::path::Path::new(DEFAULT_CHAIN_DIR)),
            block_time: None,
            timeout: pretrain_core::constants::CHAIN_CALL_TIMEOUT,
        }
    }
}

impl ChainOptions {
    /// True when these options select the embedded chain.
    pub fn is_embedded(&self) -> bool {
        self.chain_endpoint.is_none() && self.network == Network::Embedded
    }

    /// The node URL for a real network, `None` for the embedded chain.
    pub fn endpoint(&self) -> Option<String> {
        if let Some(url) = &self.chain_endpoint {
            return Some(url.clone());
        }
        endpoint_for(self.network.as_str()).map(str::to_string)
    }

    /// Opens the embedded chain these options name, creating it if needed (an error for a
    /// real network): for the commands that set a chain up (`chain register`).
    pub async fn open_embedded(&self) -> Result<EmbeddedChain, ChainError> {
        self.open_embedded_with(true).await
    }

    /// Opens the embedded chain these options name only if it exists (nothing is created;
    /// read-only where the user may not write it).
    pub async fn open_embedded_existing(&self) -> Result<EmbeddedChain, ChainError> {
        self.open_embedded_with(false).await
    }

    async fn open_embedded_with(&self, create: bool) -> Result<EmbeddedChain, ChainError> {
        if !self.is_embedded() {
            return Err(ChainError::Rejected(format!(
                "this needs the embedded chain (--subtensor.network embedded), not {}",
                self.endpoint().unwrap_or_else(|| self.network.to_string())
            )));
        }
        let dir = expand_home(&self.chain_dir);
        let options = EmbeddedOptions {
            block_time: self.block_time,
            call_timeout: self.timeout,
        };
        if create {
            EmbeddedChain::open_async(&dir, &options).await
        } else {
            EmbeddedChain::open_existing_async(&dir, &options).await
        }
    }
}

/// Opens the chain the options select: the embedded chain (which must exist: a typo in
/// `--chain_dir` is an error, not a new empty chain), or a subtensor node.
pub async fn connect(opts: &ChainOptions) -> Result<Arc<dyn Chain>, ChainError> {
    match opts.endpoint() {
        None => Ok(Arc::new(opts.open_embedded_existing().await?)),
        Some(url) => Ok(Arc::new(SubtensorChain::connect(&url, opts.timeout).await?)),
    }
}

//! Commit-reveal on the command line: `pretrain chain hyperparameters` (what
//! the chain says about weight setting) and the commit-reveal flags of
//! `pretrain chain register` for the embedded chain.

use clap::Args;
use pretrain_chain::connect;
use pretrain_chain::embedded::EmbeddedChain;

use super::args::ChainArgs;
use super::out::{print_json, print_text};

/// Arguments of `pretrain chain hyperparameters`.
#[derive(Args, Debug)]
pub struct HyperparametersArgs {
    #[command(flatten)]
    chain: ChainArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The commit-reveal flags of `pretrain chain register` (embedded chain).
#[derive(Args, Debug, Clone, Default)]
pub struct CommitRevealArgs {
    /// Commit-reveal weights on the subnet: `true` or `false` (default: unchanged, off for a new subnet).
    #[arg(long = "commit_reveal_weights")]
    pub commit_reveal_weights: Option<bool>,
    /// Epochs between a commit and its reveal (default: unchanged, 1 for a new subnet).
    #[arg(long = "reveal_period_epochs")]
    pub reveal_period_epochs: Option<u64>,
    /// Blocks per epoch minus one (default: unchanged, 360 for a new subnet).
    #[arg(long = "tempo")]
    pub tempo: Option<u64>,
    /// Lowest version key weights may carry (default: unchanged, 0 for a new subnet).
    #[arg(long = "weights_version_key")]
    pub weights_version_key: Option<u64>,
}

impl CommitRevealArgs {
    /// Applies the flags given to subnet `netuid` (nothing when none is given).
    pub async fn apply(&self, chain: &EmbeddedChain, netuid: u16) -> anyhow::Result<()> {
        if self.commit_reveal_weights.is_none()
            && self.reveal_period_epochs.is_none()
            && self.tempo.is_none()
            && self.weights_version_key.is_none()
        {
            return Ok(());
        }
        let mut cr = chain.commit_reveal(netuid).await?;
        if let Some(v) = self.commit_reveal_weights {
            cr.enabled = v;
        }
        if let Some(v) = self.reveal_period_epochs {
            cr.reveal_period_epochs = v;
        }
        if let Some(v) = self.tempo {
            cr.tempo = v;
        }
        if let Some(v) = self.weights_version_key {
            cr.weights_version_key = v;
        }
        chain.set_commit_reveal(netuid, cr).await?;
        Ok(())
    }
}

/// `pretrain chain hyperparameters`.
pub async fn hyperparameters(args: HyperparametersArgs) -> anyhow::Result<()> {
    let chain = connect(&args.chain.options()?).await?;
    let h = chain.hyperparameters(args.chain.netuid).await?;
    if args.json {
        return print_json(&h);
    }
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let rows = [
        ("netuid", h.netuid.to_string()),
        ("tempo", h.tempo.to_string()),
        (
            "commit_reveal_weights_enabled",
            h.commit_reveal_weights_enabled.to_string(),
        ),
        (
            "commit_reveal_version",
            opt(h.commit_reveal_version.map(u64::from)),
        ),
        ("reveal_period_epochs", h.reveal_period_epochs.to_string()),
        ("weights_version_key", h.weights_version_key.to_string()),
        ("weights_rate_limit", h.weights_rate_limit.to_string()),
        ("commit_rate_limit", opt(h.commit_rate_limit)),
    ];
    let mut t = String::new();
    for (k, v) in rows {
        t.push_str(&format!("{k:<30}  {v}\n"));
    }
    print_text(&t)
}

//! `pretrain chain metagraph|commitment|register|stake`: read the chain, and
//! set up a subnet on the embedded chain.

use anyhow::Context;
use clap::{Args, Subcommand};
use pretrain_chain::embedded::SubnetParams;
use pretrain_chain::{connect, Commitment};
use pretrain_core::ModelId;
use serde_json::json;

use super::out::{print_json, print_text};
use super::wallet::WalletArgs;

// The chain flags live with the other shared groups (`chain_cr` uses them
// too); `mine` and `upload` name them from here.
pub use super::args::ChainArgs;

/// `pretrain chain ...`.
#[derive(Subcommand, Debug)]
pub enum ChainCommand {
    /// The subnet's neurons: uid, hotkey, coldkey, stake, incentive, validator permit.
    Metagraph(MetagraphArgs),
    /// Latest commitment(s) on the subnet, with the model id they hold (JSON).
    Commitment(CommitmentArgs),
    /// Register a hotkey on the embedded chain's subnet (creating the subnet if needed).
    Register(RegisterArgs),
    /// Add stake to a hotkey on the embedded chain.
    Stake(StakeArgs),
    /// Weight-setting parameters of the subnet: tempo, commit-reveal, version key, rate limits.
    Hyperparameters(super::chain_cr::HyperparametersArgs),
}

/// Arguments of `pretrain chain metagraph`.
#[derive(Args, Debug)]
pub struct MetagraphArgs {
    #[command(flatten)]
    chain: ChainArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pretrain chain commitment`.
#[derive(Args, Debug)]
pub struct CommitmentArgs {
    #[command(flatten)]
    chain: ChainArgs,
    /// Commitment of this uid.
    #[arg(long, conflicts_with = "hotkey")]
    uid: Option<u16>,
    /// Commitment of this hotkey (SS58). Neither flag: every commitment on the subnet.
    #[arg(long)]
    hotkey: Option<String>,
}

/// The chain, the wallet, and a hotkey address that replaces the wallet's
/// (each command words the `--hotkey` help for itself: `mut_arg`).
#[derive(Args, Debug)]
struct KeyTargetArgs {
    #[command(flatten)]
    chain: ChainArgs,
    #[command(flatten)]
    wallet: WalletArgs,
    /// This hotkey address instead of the wallet's.
    #[arg(long)]
    hotkey: Option<String>,
}

impl KeyTargetArgs {
    /// `--hotkey`, or the wallet's hotkey address.
    fn hotkey_ss58(&self) -> anyhow::Result<String> {
        match &self.hotkey {
            Some(h) => Ok(h.clone()),
            None => Ok(self.wallet.wallet().hotkey_ss58()?),
        }
    }
}

/// Arguments of `pretrain chain register`.
#[derive(Args, Debug)]
#[command(mut_arg("hotkey", |a| a.help("Register this hotkey address instead of the wallet's")))]
pub struct RegisterArgs {
    #[command(flatten)]
    target: KeyTargetArgs,
    /// Owner coldkey address (default: the wallet's coldkeypub, or the hotkey itself with --hotkey).
    #[arg(long)]
    coldkey: Option<String>,
    /// For a subnet created by this call: most neurons.
    #[arg(long = "max_uids", default_value_t = pretrain_chain::embedded::DEFAULT_MAX_UIDS)]
    max_uids: u16,
    /// For a subnet created by this call: most validator permits.
    #[arg(long = "max_validators", default_value_t = pretrain_chain::embedded::DEFAULT_MAX_VALIDATORS)]
    max_validators: u16,
    /// For a subnet created by this call: blocks between two commitments of a hotkey.
    #[arg(long = "commit_rate_limit", default_value_t = pretrain_core::constants::COMMIT_RATE_LIMIT_BLOCKS)]
    commit_rate_limit: u64,
    /// For a subnet created by this call: blocks between two set_weights of a hotkey.
    #[arg(long = "weights_rate_limit", default_value_t = pretrain_chain::embedded::DEFAULT_WEIGHTS_RATE_LIMIT)]
    weights_rate_limit: u64,
    #[command(flatten)]
    commit_reveal: super::chain_cr::CommitRevealArgs,
}

/// Arguments of `pretrain chain stake`.
#[derive(Args, Debug)]
#[command(mut_arg("hotkey", |a| a.help("Stake this hotkey address instead of the wallet's")))]
pub struct StakeArgs {
    #[command(flatten)]
    target: KeyTargetArgs,
    /// TAO to add.
    #[arg(long)]
    amount: f64,
}

/// Runs a `pretrain chain` command.
pub fn run(cmd: ChainCommand, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    rt.block_on(async move {
        match cmd {
            ChainCommand::Metagraph(a) => metagraph(a).await,
            ChainCommand::Commitment(a) => commitment(a).await,
            ChainCommand::Register(a) => register(a).await,
            ChainCommand::Stake(a) => stake(a).await,
            ChainCommand::Hyperparameters(a) => super::chain_cr::hyperparameters(a).await,
        }
    })
}

async fn metagraph(args: MetagraphArgs) -> anyhow::Result<()> {
    let chain = connect(&args.chain.options()?).await?;
    let g = chain.metagraph(args.chain.netuid).await?;
    if args.json {
        return print_json(&g);
    }
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "subnet {} at block {}: {} neurons",
        g.netuid,
        g.block,
        g.neurons.len()
    );
    let _ = writeln!(
        t,
        "{:>5}  {:<48}  {:<48}  {:>14}  {:>9}  VPERMIT",
        "UID", "HOTKEY", "COLDKEY", "STAKE", "INCENTIVE"
    );
    for n in &g.neurons {
        let _ = writeln!(
            t,
            "{:>5}  {:<48}  {:<48}  {:>14.4}  {:>9.6}  {}",
            n.uid,
            n.hotkey,
            n.coldkey,
            n.stake,
            n.incentive,
            if n.validator_permit { "yes" } else { "no" }
        );
    }
    print_text(&t)
}

fn commitment_json(uid: Option<u16>, c: &Commitment) -> serde_json::Value {
    let model = ModelId::from_chain_bytes(&c.data).ok();
    json!({
        "uid": uid,
        "hotkey": c.hotkey,
        "block": c.block,
        "data": String::from_utf8_lossy(&c.data),
        "model_id": model,
    })
}

async fn commitment(args: CommitmentArgs) -> anyhow::Result<()> {
    let netuid = args.chain.netuid;
    let chain = connect(&args.chain.options()?).await?;
    let out = match (args.uid, args.hotkey) {
        (None, None) => {
            let g = chain.metagraph(netuid).await?;
            let all = chain.commitments(netuid).await?;
            let uid_of = |h: &str| g.neurons.iter().find(|n| n.hotkey == h).map(|n| n.uid);
            json!(all
                .iter()
                .map(|c| commitment_json(uid_of(&c.hotkey), c))
                .collect::<Vec<_>>())
        }
        (Some(uid), _) => {
            let g = chain.metagraph(netuid).await?;
            let n = g.neurons.iter().find(|n| n.uid == uid).with_context(|| {
                format!(
                    "uid {uid} does not exist on subnet {netuid} ({} neurons)",
                    g.neurons.len()
                )
            })?;
            let c = chain
                .commitment(netuid, &n.hotkey)
                .await?
                .with_context(|| {
                    format!(
                        "uid {uid} ({}) has no commitment on subnet {netuid}",
                        n.hotkey
                    )
                })?;
            commitment_json(Some(uid), &c)
        }
        (None, Some(hotkey)) => {
            let uid = chain.uid_of(netuid, &hotkey).await?;
            let c = chain
                .commitment(netuid, &hotkey)
                .await?
                .with_context(|| format!("hotkey {hotkey} has no commitment on subnet {netuid}"))?;
            commitment_json(uid, &c)
        }
    };
    print_json(&out)
}

async fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let netuid = target.chain.netuid;
    let hotkey = target.hotkey_ss58()?;
    let coldkey = match (&args.coldkey, &target.hotkey) {
        (Some(c), _) => c.clone(),
        (None, Some(h)) => h.clone(),
        (None, None) => target.wallet.wallet().coldkeypub()?,
    };
    let chain = target.chain.options()?.open_embedded().await?;
    let params = SubnetParams {
        max_uids: args.max_uids,
        max_validators: args.max_validators,
        commit_rate_limit: args.commit_rate_limit,
        weights_rate_limit: args.weights_rate_limit,
    };
    chain.create_subnet(netuid, params).await?;
    args.commit_reveal.apply(&chain, netuid).await?;
    let r = chain.register(netuid, &hotkey, &coldkey).await?;
    print_json(&r)
}

async fn stake(args: StakeArgs) -> anyhow::Result<()> {
    let hotkey = args.target.hotkey_ss58()?;
    // Staking needs a registered hotkey, so it never creates a chain.
    let chain = args
        .target
        .chain
        .options()?
        .open_embedded_existing()
        .await?;
    let total = chain.add_stake(&hotkey, args.amount).await?;
    print_json(&json!({"hotkey": hotkey, "added": args.amount, "stake": total}))
}

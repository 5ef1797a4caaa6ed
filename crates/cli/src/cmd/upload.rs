//! `pretrain upload`: push an existing `save_pretrained` directory (the
//! original's `upload_model` script): check it as a validator would, upload
//! it to the hub, then commit its identity to the chain under the hotkey.
//! The `--schedule`'s protocol decides the rest: under the competitions it
//! is `pretrain mine`'s push:
//! checked against the competition entered, uploaded private, committed
//! with the secure hash and `--competition_id`, and made public with
//! `--update_repo_visibility` once the commitment has landed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pretrain_chain::connect;
use pretrain_neurons::push::{push_checked, CheckedDir};
use pretrain_neurons::{PushOptions, Pushed};
use serde_json::json;

use super::args::HubArgs;
use super::chain::ChainArgs;
use super::wallet::WalletArgs;

/// Arguments of `pretrain upload`.
#[derive(Args, Debug)]
pub struct UploadArgs {
    /// The model directory to push (`config.json`, `model.safetensors`, ...).
    #[arg(long = "load_model_dir")]
    pub load_model_dir: PathBuf,
    /// Hugging Face repo to upload to, `namespace/name`.
    #[arg(long = "hf_repo_id")]
    pub hf_repo_id: pretrain_core::RepoId,
    #[command(flatten)]
    pub hub: HubArgs,
    #[command(flatten)]
    pub push: PushArgs,
    #[command(flatten)]
    pub competition: super::rules::CompetitionArgs,
    #[command(flatten)]
    pub wallet: WalletArgs,
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// How a push commits and what it uploads (`pretrain upload` and `pretrain mine`).
#[derive(Args, Debug)]
pub struct PushArgs {
    /// Seconds between two commit attempts while the chain rate-limits them.
    #[arg(long = "commit_retry_delay", default_value_t = 60.0)]
    pub commit_retry_delay: f64,
    /// Give up after this many commit attempts (default: retry until it lands, as the original).
    #[arg(long = "max_commit_attempts")]
    pub max_commit_attempts: Option<u32>,
    /// Upload the weights as bf16 (half the size; validators upcast them to f32).
    #[arg(long = "upload_b16")]
    pub upload_b16: bool,
}

impl PushArgs {
    /// The push's settings on subnet `netuid`; refuses a retry delay no
    /// `Duration` can hold (1e300 would panic later).
    pub fn options(&self, netuid: u16) -> anyhow::Result<PushOptions> {
        pretrain_core::bounded::seconds("--commit_retry_delay", self.commit_retry_delay, 86_400.0)
            .map_err(anyhow::Error::msg)?;
        Ok(PushOptions {
            netuid,
            retry_delay: Duration::from_secs_f64(self.commit_retry_delay),
            max_attempts: self.max_commit_attempts,
            upload_b16: self.upload_b16,
            ..PushOptions::default()
        })
    }
}

/// Prints `{"repo_id", "commit", "hash", "block", "model_id", "hotkey"}`
/// once the model is on the hub and its id on the chain (plus
/// `competition_id`, `secure_hash` and `public` under the competitions).
pub fn run(args: UploadArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let options = args.push.options(args.chain.netuid)?;
    args.hub.check_reachable_from(&args.chain)?;
    let schedule = args.competition.schedule.load()?;
    let protocol = schedule.protocol();
    protocol
        .check_repo_id(&args.hf_repo_id)
        .map_err(|e| anyhow::anyhow!("--hf_repo_id {e}"))?;
    // A model the validator would reject is refused before anything is
    // uploaded: at once against what is known without the chain, against
    // the competition entered once its block is read.
    let mut checked = CheckedDir::check(&args.load_model_dir, protocol)?;
    let hotkey = args
        .wallet
        .wallet()
        .hotkey()
        .context("loading the hotkey")?;
    let pushed = runtime.block_on(async {
        let chain = connect(&args.chain.options()?)
            .await
            .context("connecting to the chain")?;
        let block = chain
            .current_block()
            .await
            .context("reading the current block")?;
        let active = args.competition.entered(&schedule, Some(block))?;
        checked.check_entered(protocol, &active.spec, &active.schedule)?;
        let hub = args.hub.open(true)?;
        let make_public = args
            .competition
            .update_repo_visibility
            .then(|| args.hub.make_public_hint(&args.hf_repo_id));
        let pushed = push_checked(
            hub.as_ref(),
            chain.as_ref(),
            &hotkey,
            &checked,
            &args.hf_repo_id,
            protocol,
            active.spec.id,
            &options,
            make_public.as_deref(),
        )
        .await?;
        Ok::<_, anyhow::Error>(pushed)
    })?;
    println!("{}", output(&args, &hotkey.ss58, &pushed));
    Ok(())
}

/// The JSON `pretrain upload` prints.
fn output(args: &UploadArgs, hotkey: &str, pushed: &Pushed) -> serde_json::Value {
    let mut out = json!({
        "repo_id": args.hf_repo_id,
        "commit": pushed.id.commit(),
        "hash": pushed.model_hash,
        "block": pushed.block,
        "model_id": pushed.id.to_string(),
        "hotkey": hotkey,
    });
    if let (Some(competition), Some(o)) = (pushed.id.competition(), out.as_object_mut()) {
        o.insert("competition_id".into(), json!(competition));
        o.insert("secure_hash".into(), json!(pushed.id.secure_hash()));
        o.insert(
            "public".into(),
            json!(args.competition.update_repo_visibility),
        );
    }
    out
}

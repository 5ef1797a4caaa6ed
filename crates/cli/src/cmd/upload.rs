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
use pretrain_model::check::{check_model_dir, Limits};
use pretrain_neurons::{push_model, PushOptions};
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
    /// Seconds between two commit attempts while the chain rate-limits them.
    #[arg(long = "commit_retry_delay", default_value_t = 60.0)]
    pub commit_retry_delay: f64,
    /// Give up after this many commit attempts (default: retry until it lands, as the original).
    #[arg(long = "max_commit_attempts")]
    pub max_commit_attempts: Option<u32>,
    /// Upload the weights as bf16 (half the size; validators upcast them to f32).
    #[arg(long = "upload_b16")]
    pub upload_b16: bool,
    #[command(flatten)]
    pub competition: super::rules::CompetitionArgs,
    #[command(flatten)]
    pub wallet: WalletArgs,
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// Prints `{"repo_id", "commit", "hash", "block", "model_id", "hotkey"}`
/// once the model is on the hub and its id on the chain (plus
/// `competition_id`, `secure_hash` and `public` under the competitions).
pub fn run(args: UploadArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    // Bounded here so the `Duration` made from it later cannot panic (1e300).
    pretrain_core::bounded::seconds("--commit_retry_delay", args.commit_retry_delay, 86_400.0)
        .map_err(anyhow::Error::msg)?;
    args.hub.check_reachable_from(&args.chain)?;
    let schedule = args.competition.schedule.load()?;
    let protocol = schedule.protocol();
    protocol
        .check_repo_id(&args.hf_repo_id)
        .map_err(|e| anyhow::anyhow!("--hf_repo_id {e}"))?;
    let dir = &args.load_model_dir;
    // A model the validator would reject is refused before anything is
    // uploaded: at once against the limits known without the chain (the
    // seed's), and against the competition entered once its block is read.
    let limits = |(max_params, max_bytes)| Limits {
        max_params,
        max_bytes,
    };
    let check = |l: Limits| {
        check_model_dir(dir, l)
            .with_context(|| format!("{} is not a model the validator accepts", dir.display()))
    };
    let mut info = protocol
        .limits_before_chain()
        .map(|l| check(limits(l)))
        .transpose()?;
    // What the validator checks once it has loaded the weights: refused here, before
    // anything replaces the miner's current commitment.
    pretrain_model::check_finite_weights(dir)
        .with_context(|| format!("{} is not a model the validator accepts", dir.display()))?;
    let hotkey = args
        .wallet
        .wallet()
        .hotkey()
        .context("loading the hotkey")?;
    let options = PushOptions {
        netuid: args.chain.netuid,
        retry_delay: Duration::from_secs_f64(args.commit_retry_delay),
        max_attempts: args.max_commit_attempts,
        upload_b16: args.upload_b16,
        ..PushOptions::default()
    };
    let pushed = runtime.block_on(async {
        let chain = connect(&args.chain.options()?)
            .await
            .context("connecting to the chain")?;
        let block = chain
            .current_block()
            .await
            .context("reading the current block")?;
        let active = args.competition.entered(&schedule, Some(block))?;
        if let Some(spec) = protocol.entered(&active.spec) {
            let checked = check(limits((
                spec.constraints.max_parameters,
                spec.constraints.max_bytes,
            )))?;
            spec.check_model(&pretrain_core::rules::schedule::ModelFacts {
                parameters: checked.params,
                architecture: checked.architecture.class_name(),
            })
            .with_context(|| {
                format!(
                    "{} does not fit competition {} ({}) of --schedule {}",
                    dir.display(),
                    spec.id,
                    spec.name,
                    active.schedule
                )
            })?;
            info = Some(checked);
        }
        tracing::info!(?info, "model checked");
        let hub = args.hub.open(true)?;
        let pushed = push_model(
            hub.as_ref(),
            chain.as_ref(),
            &hotkey,
            dir,
            &args.hf_repo_id,
            protocol,
            active.spec.id,
            &options,
        )
        .await
        .with_context(|| format!("pushing {} to {}", dir.display(), args.hf_repo_id))?;
        // The step the competitions add: the private repo made public once
        // the commitment has landed (the seed's repos are public from the start).
        if protocol.uploads_private() && args.competition.update_repo_visibility {
            pretrain_neurons::publish(
                hub.as_ref(),
                &args.hf_repo_id,
                &options.upload_backoff,
                &pushed,
                &args.hub.make_public_hint(&args.hf_repo_id),
            )
            .await?;
        }
        Ok::<_, anyhow::Error>(pushed)
    })?;
    let mut out = json!({
        "repo_id": args.hf_repo_id,
        "commit": pushed.id.commit(),
        "hash": pushed.model_hash,
        "block": pushed.block,
        "model_id": pushed.id.to_string(),
        "hotkey": hotkey.ss58,
    });
    if let (Some(competition), Some(o)) = (pushed.id.competition(), out.as_object_mut()) {
        o.insert("competition_id".into(), json!(competition));
        o.insert("secure_hash".into(), json!(pushed.id.secure_hash()));
        o.insert(
            "public".into(),
            json!(args.competition.update_repo_visibility),
        );
    }
    println!("{out}");
    Ok(())
}

//! `pretrain mine`: the miner (the original's `neurons/miner.py`). Checks
//! everything a push will need before training, trains, keeps the best
//! model whole on disk, and pushes it when it beats the threshold.
//!
//! The schedule's protocol decides the rest (`rules::protocol`): under the
//! competitions ([`Protocol::Competitions`]) it enters one competition
//! (`--competition_id`), uploads the repo private, commits
//! `namespace:name:commit:secure_hash:competition_id`, and with
//! `--update_repo_visibility` makes the repo public once the commitment has
//! landed. Under `sn9-2024-01` nothing of this applies.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context};
use clap::Args;
use pretrain_chain::{connect, Chain, Hotkey};
use pretrain_core::rules::CompetitionSpec;
use pretrain_core::RepoId;
use pretrain_neurons::miner::{
    MinerConfig, MiningSession, PushHelp, PushPolicy, PushTarget, SessionOutcome, SessionSettings,
    Start, StartingModel, StopFlag,
};
use pretrain_neurons::Pushed;
use pretrain_store::ModelHub;
use pretrain_telemetry::prometheus::MinerMetrics;
use pretrain_telemetry::wandb::{self, Run};
use serde_json::json;
use tracing::{info, warn};

use crate::cmd::args::{DataArgs, DeviceArgs, HubArgs};
use crate::cmd::chain::ChainArgs;
use crate::cmd::wallet::WalletArgs;

mod watch;
use watch::Watch;

/// Arguments of `pretrain mine` (the original miner's flags and defaults).
#[derive(Args, Debug)]
pub struct MineArgs {
    /// No registration, token or repo checks, no upload.
    #[arg(long)]
    pub offline: bool,
    /// Hugging Face repo to push to, `namespace/name` (needed unless --offline).
    #[arg(long = "hf_repo_id")]
    pub hf_repo_id: Option<RepoId>,
    /// Push only when the best epoch average loss is below this (0: never push).
    #[arg(long = "avg_loss_upload_threshold", default_value_t = 0.0)]
    pub avg_loss_upload_threshold: f64,
    /// Also push after every epoch that improves the best average loss.
    #[arg(long = "push_every_epoch")]
    pub push_every_epoch: bool,
    /// W&B entity: with --wandb_project (and not --offline), each optimizer
    /// step's loss goes to W&B, as the original's miner logs it
    /// (WANDB_API_KEY needed; WANDB_MODE=offline writes files instead).
    #[arg(long = "wandb_entity")]
    pub wandb_entity: Option<String>,
    /// W&B project (see --wandb_entity).
    #[arg(long = "wandb_project")]
    pub wandb_project: Option<String>,
    #[command(flatten)]
    pub metrics: super::args::MetricsArgs,
    /// Start from the model of the uid with the highest incentive.
    #[arg(long = "load_best", group = "start")]
    pub load_best: bool,
    /// Start from the model this uid committed.
    #[arg(long = "load_uid", group = "start")]
    pub load_uid: Option<u16>,
    /// Start from a `save_pretrained` directory.
    #[arg(long = "load_model_dir", group = "start")]
    pub load_model_dir: Option<PathBuf>,
    /// Start from a bare safetensors file of the default GPT-2 config.
    #[arg(long = "load_model", group = "start")]
    pub load_model: Option<PathBuf>,
    /// Continue the run in this directory (`<model_dir>/training/<run_id>`):
    /// weights, optimizer state, counters; its settings come from its run.json.
    #[arg(long, group = "start")]
    pub resume: Option<PathBuf>,
    /// Epochs to train (-1: until Ctrl-C). With --resume: the run's total.
    #[arg(long = "num_epochs", default_value_t = -1, allow_negative_numbers = true)]
    pub num_epochs: i64,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    pub bs: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 1024)]
    pub sl: usize,
    /// Batches per optimizer step.
    #[arg(long = "accumulation_steps", default_value_t = 5)]
    pub accumulation_steps: usize,
    /// Pages drawn for each epoch.
    #[arg(long = "pages_per_epoch", default_value_t = 10)]
    pub pages_per_epoch: usize,
    /// Where runs (`training/<run_id>/`) and downloaded models go.
    #[arg(long = "model_dir", default_value = "./local-models")]
    pub model_dir: PathBuf,
    /// Seed of the page draws, the dropout masks and a new model's weights
    /// (default: random, logged).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub push: super::upload::PushArgs,
    #[command(flatten)]
    pub competition: super::rules::CompetitionArgs,
    #[command(flatten)]
    pub hub: HubArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub wallet: WalletArgs,
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// What a push needs, checked before training.
struct Online {
    hotkey: Hotkey,
    repo_id: RepoId,
    chain: std::sync::Arc<dyn Chain>,
}

/// Runs the miner; prints a JSON summary on stdout at the end.
pub fn run(args: MineArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    runtime.block_on(mine(args))
}

fn num_epochs(n: i64) -> anyhow::Result<Option<u64>> {
    match n {
        -1 => Ok(None),
        n if n >= 0 => Ok(Some(n as u64)),
        _ => bail!("--num_epochs must be -1 (forever) or a count >= 0"),
    }
}

async fn mine(args: MineArgs) -> anyhow::Result<()> {
    if !(args.avg_loss_upload_threshold.is_finite()) {
        bail!("--avg_loss_upload_threshold must be a number");
    }
    let options = args.push.options(args.chain.netuid)?;
    let epochs = num_epochs(args.num_epochs)?;
    let schedule = args.competition.schedule.load()?;
    let protocol = schedule.protocol();
    if let Some(repo) = &args.hf_repo_id {
        protocol
            .check_repo_id(repo)
            .map_err(|e| anyhow::anyhow!("--hf_repo_id {e}"))?;
    }
    let device = args.device.open()?;
    let online = if args.offline {
        None
    } else {
        Some(preflight(&args).await?)
    };
    // Offline there is no block: the schedule's latest entry applies.
    let block = match &online {
        Some(o) => Some(
            o.chain
                .current_block()
                .await
                .context("reading the current block")?,
        ),
        None => None,
    };
    let active = args.competition.entered(&schedule, block)?;
    let wandb = miner_wandb(&args, online.as_ref()).await?;
    let metrics = args.metrics.serve(MinerMetrics::new).await?;
    let source = args.data.open()?;
    let start = start(&args, epochs, online.as_ref()).await?;
    let help = Help { args: &args };
    let push = online.map(|o| PushTarget {
        chain: o.chain,
        hotkey: o.hotkey,
        repo: o.repo_id,
        protocol,
        options,
        update_repo_visibility: args.competition.update_repo_visibility,
        help: &help,
    });
    let session = MiningSession::begin(SessionSettings {
        start,
        device,
        compute: args.device.compute.options(),
        source,
        competition: active.spec,
        schedule: active.schedule,
        policy: PushPolicy::new(args.avg_loss_upload_threshold, args.push_every_epoch),
        push,
    })
    .await?;
    stop_on_ctrl_c(session.stop_flag());
    let outcome = session.run(&mut Watch::new(wandb, metrics)).await?;
    super::out::print_json(&output(&outcome))
}

/// The miner's JSON summary on stdout.
fn output(outcome: &SessionOutcome) -> serde_json::Value {
    let summary = &outcome.summary;
    json!({
            "run_dir": summary.run_dir,
            "best_dir": summary.best_dir,
            "best_avg_loss": summary.best_avg_loss,
            "epochs": summary.epochs,
            "steps": summary.steps,
            "stopped": summary.stopped,
            "epoch_losses": summary.epoch_losses,
            "seed": outcome.seed,
            "pushed": outcome.pushed.as_ref().map(pushed_json),
    })
}

/// Ctrl-C sets the stop flag (the session saves and stops after the
/// current batch); a second Ctrl-C quits at once.
fn stop_on_ctrl_c(stop: StopFlag) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "Ctrl-C: stopping after this batch and saving (Ctrl-C again to quit at once)"
            );
            stop.store(true, Ordering::SeqCst);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
}

/// How the session starts, from the flags: `--resume`, or a new run of the
/// flags' settings from the model the `--load_*` flags name.
async fn start(
    args: &MineArgs,
    epochs: Option<u64>,
    online: Option<&Online>,
) -> anyhow::Result<Start> {
    if let Some(dir) = &args.resume {
        // -1 (the default) keeps the run's own total; anything else replaces it.
        let num_epochs = (args.num_epochs != -1).then_some(epochs);
        return Ok(Start::Resume {
            dir: dir.clone(),
            num_epochs,
        });
    }
    let seed = args.seed.unwrap_or_else(pretrain_data::random_seed);
    info!(seed, "seed (pass --seed {seed} to repeat this run)");
    let config = MinerConfig {
        num_epochs: epochs,
        lr: args.lr,
        bs: args.bs,
        sl: args.sl,
        accumulation_steps: args.accumulation_steps,
        pages_per_epoch: args.pages_per_epoch,
        seed,
        model_dir: args.model_dir.clone(),
    };
    // Refused before anything is connected to or downloaded.
    config.validate()?;
    let model = starting_model(args, online).await?;
    Ok(Start::New { config, model })
}

/// The model a new run starts from, as the `--load_*` flags name it.
async fn starting_model(args: &MineArgs, online: Option<&Online>) -> anyhow::Result<StartingModel> {
    if let Some(dir) = &args.load_model_dir {
        return Ok(StartingModel::Dir(dir.clone()));
    }
    if let Some(file) = &args.load_model {
        return Ok(StartingModel::File(file.clone()));
    }
    if !(args.load_best || args.load_uid.is_some()) {
        return Ok(StartingModel::Scratch);
    }
    let chain = match online {
        Some(o) => o.chain.clone(),
        None => connect(&args.chain.options()?)
            .await
            .context("connecting to the chain")?,
    };
    Ok(StartingModel::Committed {
        chain,
        hub: args.hub.open(true)?,
        netuid: args.chain.netuid,
        uid: args.load_uid,
    })
}

/// Everything a push will need, checked before any training: the repo id,
/// the wallet, the registration, the hub token.
async fn preflight(args: &MineArgs) -> anyhow::Result<Online> {
    let repo_id = args.hf_repo_id.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "--hf_repo_id is required to push (namespace/name of your Hugging Face repo); \
             pass --offline to train without pushing"
        )
    })?;
    args.hub.check_reachable_from(&args.chain)?;
    let wallet = args.wallet.wallet();
    let hotkey = wallet.hotkey().map_err(|e| {
        let e = crate::one_line(&anyhow::Error::new(e));
        anyhow::anyhow!(
            "cannot load hotkey {}/{} under {} ({e}): create it with `pretrain wallet new \
             --wallet.name {} --wallet.hotkey {}` (or btcli), or pass --offline",
            args.wallet.wallet_name,
            args.wallet.wallet_hotkey,
            args.wallet.wallet_path.display(),
            args.wallet.wallet_name,
            args.wallet.wallet_hotkey
        )
    })?;
    let chain = connect(&args.chain.options()?)
        .await
        .context("connecting to the chain")?;
    let netuid = args.chain.netuid;
    match chain
        .uid_of(netuid, &hotkey.ss58)
        .await
        .context("checking the registration")?
    {
        Some(uid) => info!(uid, hotkey = %hotkey.ss58, netuid, "hotkey is registered"),
        None => bail!(
            "hotkey {} is not registered on subnet {netuid}: register it first (btcli subnet \
             register, or `pretrain chain register` on the embedded chain), or pass --offline",
            hotkey.ss58
        ),
    }
    if !args.hub.is_local() {
        let token = pretrain_store::hf_token().ok_or_else(|| {
            anyhow::anyhow!(
                "no Hugging Face token: set HF_ACCESS_TOKEN (environment or .env) to a token \
                 with write access, or pass --offline"
            )
        })?;
        let endpoint = pretrain_store::resolve_endpoint(args.hub.hub_endpoint.as_deref());
        let who = pretrain_store::check_hf_token(&endpoint, &token).await?;
        info!(account = %who, "the hub accepts the token");
    }
    Ok(Online {
        hotkey,
        repo_id,
        chain,
    })
}

/// The `pushed` object of the miner's output.
fn pushed_json(p: &Pushed) -> serde_json::Value {
    json!({
        "model_id": p.id.to_string(),
        "commit": p.id.commit(),
        "hash": p.model_hash,
        "block": p.block,
        "competition_id": p.id.competition(),
        "secure_hash": p.id.secure_hash(),
    })
}

/// What a push needs from the flags: the hub, opened when the push begins,
/// and the commands that finish by hand.
struct Help<'a> {
    args: &'a MineArgs,
}

impl PushHelp for Help<'_> {
    fn open_hub(&self) -> Result<Box<dyn ModelHub>, String> {
        self.args.hub.open(true).map_err(|e| crate::one_line(&e))
    }

    fn finish_command(
        &self,
        best_dir: &Path,
        repo: &RepoId,
        entered: Option<&CompetitionSpec>,
    ) -> String {
        upload_command(self.args, best_dir, repo, entered)
    }

    fn make_public_hint(&self, repo: &RepoId) -> String {
        self.args.hub.make_public_hint(repo)
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:~=+,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The `pretrain upload ...` command that pushes `dir` with this run's settings.
fn upload_command(
    args: &MineArgs,
    dir: &Path,
    repo_id: &RepoId,
    entered: Option<&CompetitionSpec>,
) -> String {
    let mut parts: Vec<String> = vec![
        "pretrain".into(),
        "upload".into(),
        "--load_model_dir".into(),
        dir.display().to_string(),
        "--hf_repo_id".into(),
        repo_id.to_string(),
        "--hub".into(),
        args.hub.hub.clone(),
    ];
    if let Some(e) = &args.hub.hub_endpoint {
        parts.extend(["--hub_endpoint".into(), e.clone()]);
    }
    parts.extend([
        "--wallet.path".into(),
        args.wallet.wallet_path.display().to_string(),
        "--wallet.name".into(),
        args.wallet.wallet_name.clone(),
        "--wallet.hotkey".into(),
        args.wallet.wallet_hotkey.clone(),
        "--subtensor.network".into(),
        args.chain.network.to_string(),
    ]);
    if let Some(e) = &args.chain.chain_endpoint {
        parts.extend(["--subtensor.chain_endpoint".into(), e.clone()]);
    }
    if !args.chain.is_real() {
        parts.extend([
            "--chain_dir".into(),
            args.chain.chain_dir.display().to_string(),
        ]);
    }
    parts.extend(["--netuid".into(), args.chain.netuid.to_string()]);
    if args.push.upload_b16 {
        parts.push("--upload_b16".into());
    }
    if let Some(spec) = entered {
        parts.extend([
            "--schedule".into(),
            args.competition.schedule.schedule.clone(),
            "--competition_id".into(),
            spec.id.to_string(),
        ]);
        if args.competition.update_repo_visibility {
            parts.push("--update_repo_visibility".into());
        }
    }
    parts
        .iter()
        .map(|p| shell_quote(p))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The miner's W&B run, as the original's: only online, and only with both
/// --wandb_entity and --wandb_project; then WANDB_API_KEY is required
/// (unless WANDB_MODE=offline, which writes files under <model_dir>/wandb).
async fn miner_wandb(args: &MineArgs, online: Option<&Online>) -> anyhow::Result<Option<Run>> {
    let (Some(entity), Some(project)) =
        (args.wandb_entity.as_deref(), args.wandb_project.as_deref())
    else {
        if args.wandb_entity.is_some() || args.wandb_project.is_some() {
            warn!(
                "W&B needs both --wandb_entity and --wandb_project: this run is not logged to W&B"
            );
        }
        return Ok(None);
    };
    let Some(online) =
        online.filter(|_| wandb::miner::enabled(args.offline, Some(entity), Some(project)))
    else {
        warn!("--offline: this run is not logged to W&B");
        return Ok(None);
    };
    let mode = wandb::Mode::from_env(false, args.model_dir.join("wandb")).map_err(|e| match e {
        wandb::WandbError::MissingApiKey => anyhow::anyhow!(
            "to use W&B (--wandb_entity/--wandb_project), set WANDB_API_KEY, or WANDB_MODE=offline to write the run to files"
        ),
        e => anyhow::Error::new(e),
    })?;
    let uid = online
        .chain
        .uid_of(args.chain.netuid, &online.hotkey.ss58)
        .await
        .ok()
        .flatten();
    let who = wandb::miner::MinerIdentity {
        uid,
        hotkey: online.hotkey.ss58.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let run = wandb::miner::start(&mode, entity, project, &who).context("starting the W&B run")?;
    info!(
        run = run.id(),
        entity, project, "W&B: logging each optimizer step"
    );
    Ok(Some(run))
}

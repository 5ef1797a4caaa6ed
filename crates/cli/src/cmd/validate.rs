//! `pretrain validate`: the validator (the original's flags), and the hidden
//! `pretrain eval_worker` it starts once per model.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use pretrain_chain::connect;
use pretrain_core::Tunables;
use pretrain_neurons::validator::{self, Shared, ValidatorConfig, WorkerSpec};
use pretrain_telemetry::prometheus::ValidatorMetrics;
use pretrain_telemetry::wandb::validator::{ValidatorIdentity, ValidatorLog};
use pretrain_telemetry::wandb::{Mode, WandbError};

use super::args::{DataArgs, DeviceArgs, HubArgs};
use super::chain::ChainArgs;
use super::wallet::WalletArgs;

/// Arguments of `pretrain validate`.
#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Number of blocks to wait before setting weights.
    #[arg(long = "blocks_per_epoch", default_value_t = 50)]
    pub blocks_per_epoch: u64,
    /// Number of pages used to eval each step.
    #[arg(long = "pages_per_eval", default_value_t = 3)]
    pub pages_per_eval: usize,
    /// Number of uids kept for evaluation after each step.
    #[arg(long = "sample_min", default_value_t = 30)]
    pub sample_min: usize,
    /// Do not set weights on the chain.
    #[arg(long = "dont_set_weights")]
    pub dont_set_weights: bool,
    /// No registration check and no weights on chain.
    #[arg(long)]
    pub offline: bool,
    /// Where models, the state and metrics.jsonl are kept.
    #[arg(long = "model_dir", default_value = "model-store")]
    pub model_dir: PathBuf,
    /// Stop after this many evaluation steps (default: run forever).
    #[arg(long = "max_steps")]
    pub max_steps: Option<u64>,
    /// Models evaluated at once, each in its own process.
    #[arg(long = "eval_workers", default_value_t = 1)]
    pub eval_workers: usize,
    /// Turn off W&B logging (on by default on a real chain, as the original's;
    /// off on the embedded chain unless --wandb_project, --wandb_entity or
    /// --wandb.offline asks for it). Needs WANDB_API_KEY online.
    #[arg(long = "wandb.off")]
    pub wandb_off: bool,
    /// W&B entity of the validator's runs (the original's: opentensor-dev).
    #[arg(long = "wandb_entity")]
    pub wandb_entity: Option<String>,
    /// W&B project of the validator's runs (the original's: pretraining-subnet).
    #[arg(long = "wandb_project")]
    pub wandb_project: Option<String>,
    /// Write the W&B runs as files under <model_dir>/wandb for `wandb sync`
    /// (as WANDB_MODE=offline does).
    #[arg(long = "wandb.offline")]
    pub wandb_offline: bool,
    #[command(flatten)]
    pub metrics: super::args::MetricsArgs,
    /// Address-space limit of each evaluation process, in MiB (0: none).
    #[arg(long = "eval_mem_limit_mb", default_value_t = 16384, hide = true)]
    pub eval_mem_limit_mb: u64,
    /// Seconds a worker has to load its model, and again to evaluate it.
    #[arg(long = "eval_timeout", default_value_t = 600.0, hide = true)]
    pub eval_timeout: f64,
    /// Seconds one step may take.
    #[arg(long = "step_timeout", default_value_t = 1200.0, hide = true)]
    pub step_timeout: f64,
    /// Least seconds between two checks of one uid's commitment.
    #[arg(long = "update_interval", default_value_t = 300.0, hide = true)]
    pub update_interval: f64,
    /// Seconds between two cleanups of the model directory.
    #[arg(long = "clean_interval", default_value_t = 300.0, hide = true)]
    pub clean_interval: f64,
    /// Seconds to wait when there is nothing to evaluate or a step failed.
    #[arg(long = "idle_wait", default_value_t = 60.0, hide = true)]
    pub idle_wait: f64,
    #[command(flatten)]
    pub schedule: super::rules::ScheduleArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub wallet: WalletArgs,
    #[command(flatten)]
    pub chain: ChainArgs,
    #[command(flatten)]
    pub hub: HubArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Arguments of the hidden `pretrain eval_worker`.
#[derive(Args, Debug)]
pub struct EvalWorkerArgs {
    /// Model directory to evaluate.
    #[arg(long)]
    pub model: PathBuf,
    /// Device.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub compute: super::args::ComputeArgs,
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    // At most a week: `Duration::from_secs_f64` panics on values like 1e300.
    pretrain_core::bounded::seconds(&format!("--{name}"), v, 7.0 * 86_400.0)
        .map_err(anyhow::Error::msg)
}

/// Runs the validator until `--max_steps` steps are done (forever without).
pub fn run(args: ValidateArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let schedule = args.schedule.load()?;
    if args.pages_per_eval == 0 {
        bail!("--pages_per_eval must be at least 1");
    }
    if args.eval_workers == 0 {
        bail!("--eval_workers must be at least 1");
    }
    args.hub.check_reachable_from(&args.chain)?;
    // Opened here so a bad device fails at start, not in every child.
    args.device.open().context("opening the device")?;
    let program = std::env::current_exe().context("finding the pretrain executable")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_limit = (args.eval_mem_limit_mb > 0 && args.device.device == "cpu")
        .then(|| args.eval_mem_limit_mb.saturating_mul(1 << 20));
    let worker = WorkerSpec {
        program,
        args: std::iter::once("eval_worker".to_string())
            .chain(args.device.compute.to_args())
            .map(Into::into)
            .collect(),
        device: args.device.device.clone(),
        mem_limit,
        load_timeout: seconds("eval_timeout", args.eval_timeout)?,
        eval_timeout: seconds("eval_timeout", args.eval_timeout)?,
        threads: Some((cores / args.eval_workers).max(1)),
    };
    let mut config = ValidatorConfig::new(args.chain.netuid, args.model_dir.clone(), worker);
    config.competition = Tunables {
        sample_min: args.sample_min,
        blocks_per_epoch: args.blocks_per_epoch,
        pages_per_eval: args.pages_per_eval,
        ..Tunables::default()
    };
    config.set_weights = !args.dont_set_weights && !args.offline;
    config.max_steps = args.max_steps;
    config.eval_workers = args.eval_workers;
    config.update_interval = seconds("update_interval", args.update_interval)?;
    config.clean_interval = seconds("clean_interval", args.clean_interval)?;
    config.idle_wait = seconds("idle_wait", args.idle_wait)?;
    config.step_timeout = seconds("step_timeout", args.step_timeout)?;
    config.call_timeout = seconds("chain_timeout", args.chain.chain_timeout)?;

    let hotkey = if args.offline {
        None
    } else {
        Some(
            args.wallet
                .wallet()
                .hotkey()
                .context("loading the hotkey")?,
        )
    };
    let hub: Arc<dyn pretrain_store::ModelHub> = Arc::from(args.hub.open(false)?);
    let source = args.data.open()?;
    std::fs::create_dir_all(&args.model_dir)
        .with_context(|| format!("creating {}", args.model_dir.display()))?;
    runtime.block_on(async {
        let chain = connect(&args.chain.options()?)
            .await
            .context("connecting to the chain")?;
        let block = tokio::time::timeout(config.call_timeout, chain.current_block())
            .await
            .context("reading the current block: no answer")?
            .context("reading the current block")?;
        // The protocol takes the scoring constants from the competition
        // active now (sn9-2024-01) or leaves them to each competition.
        config.competition = schedule
            .protocol()
            .validator_tunables(&schedule, block, config.competition)
            .with_context(|| format!("schedule {} at block {block}", schedule.name))?;
        let entry = schedule
            .active_entry(block)
            .with_context(|| format!("schedule {} at block {block}", schedule.name))?;
        for c in &entry.competitions {
            match c.support() {
                Ok(()) => tracing::info!(
                    competition = c.id,
                    name = %c.name,
                    share = c.reward_share,
                    max_parameters = c.constraints.max_parameters,
                    max_bytes = c.constraints.max_bytes,
                    "competition active"
                ),
                Err(why) => tracing::warn!(
                    competition = c.id,
                    share = c.reward_share,
                    "its models are refused: {why}"
                ),
            }
        }
        config.schedule = schedule;
        let shared = validator::start(config, chain, hub, source, hotkey)
            .await
            .context("starting the validator")?;
        let metrics = args.metrics.serve(ValidatorMetrics::new).await?;
        shared.observers.install(wandb_log(&args, &shared), metrics);
        validator::run(shared).await;
        anyhow::Ok(())
    })
}

/// The validator's W&B log, as the original decides it: on unless
/// `--offline` or `--wandb.off`; on the embedded chain only when asked for
/// (its runs would otherwise land in the community's project). A missing
/// API key is a warning, never a stopped validator.
fn wandb_log(args: &ValidateArgs, shared: &Shared) -> Option<ValidatorLog> {
    if args.offline || args.wandb_off {
        return None;
    }
    let offline_env =
        std::env::var("WANDB_MODE").is_ok_and(|m| m.trim().eq_ignore_ascii_case("offline"));
    let asked = args.wandb_entity.is_some()
        || args.wandb_project.is_some()
        || args.wandb_offline
        || offline_env;
    if !args.chain.is_real() && !asked {
        tracing::info!(
            "W&B: off on the embedded chain (pass --wandb_project or --wandb.offline to log)"
        );
        return None;
    }
    let hotkey = shared.hotkey.as_ref()?;
    let uid = shared
        .metagraph_snapshot()
        .neurons
        .iter()
        .find(|n| n.hotkey == hotkey.ss58)
        .map(|n| n.uid)?;
    let mode = match Mode::from_env(args.wandb_offline, args.model_dir.join("wandb")) {
        Ok(mode) => mode,
        Err(WandbError::MissingApiKey) => {
            tracing::warn!("W&B logging is on, as the original's, but WANDB_API_KEY is not set: not logging (set it, pass --wandb.off, or WANDB_MODE=offline)");
            return None;
        }
        Err(e) => {
            tracing::warn!("W&B: {e}; not logging");
            return None;
        }
    };
    match &mode {
        Mode::Online { base_url, .. } => tracing::info!(%base_url, "W&B: logging each step online"),
        Mode::Offline { dir } => {
            tracing::info!(dir = %dir.display(), "W&B: writing offline runs (upload with `wandb sync`)")
        }
    }
    let identity = ValidatorIdentity {
        uid,
        hotkey: hotkey.ss58.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    Some(ValidatorLog::new(
        mode,
        args.wandb_entity.clone(),
        args.wandb_project.clone(),
        identity,
    ))
}

/// The child side of the worker protocol (see `validator::worker`).
pub fn run_worker(args: EvalWorkerArgs) -> anyhow::Result<()> {
    let device = super::args::parse_device(&args.device)?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let code = validator::worker::run_worker_with(
        &args.model,
        &device,
        args.compute.options(),
        &mut stdin.lock(),
        &mut stdout.lock(),
    )
    .context("talking to the validator")?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

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

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pretrain_chain::{connect, Chain, Hotkey};
use pretrain_core::rules::Protocol;
use pretrain_core::RepoId;
use pretrain_model::Model;
use pretrain_neurons::miner::{self, new_run_id, Event, MinerConfig, Observer, RunDir, Training};
use pretrain_neurons::{PushOptions, Pushed};
use pretrain_telemetry::prometheus::{MinerMetrics, Outcome};
use pretrain_telemetry::wandb::{self, Run};
use serde_json::json;
use tracing::{info, warn};

use super::args::{DataArgs, DeviceArgs, HubArgs};
use super::chain::ChainArgs;
use super::wallet::WalletArgs;

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
    // Bounded here so the `Duration` made from it later cannot panic (1e300).
    pretrain_core::bounded::seconds("--commit_retry_delay", args.commit_retry_delay, 86_400.0)
        .map_err(anyhow::Error::msg)?;
    let epochs = num_epochs(args.num_epochs)?;
    let schedule = args.competition.schedule.load()?;
    let protocol = schedule.protocol();
    if let Some(repo) = &args.hf_repo_id {
        schedule
            .protocol()
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

    let mut training = if let Some(dir) = &args.resume {
        let run = RunDir::open(dir)?;
        // -1 (the default) keeps the run's own total; anything else replaces it.
        let total = (args.num_epochs != -1).then_some(epochs);
        let compute = args.device.compute.options();
        let training = Training::resume_with(run, source, &device, total, compute)
            .with_context(|| format!("resuming {}", dir.display()))?;
        info!(
            settings = ?training.config(),
            "resuming: the training settings are the run's own (its run.json); --num_epochs sets its total"
        );
        training
    } else {
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
        config.validate()?;
        let model = starting_model(&args, seed, &device, online.as_ref())
            .await?
            .with_options(args.device.compute.options())?;
        active
            .spec
            .check_model(&pretrain_core::rules::schedule::ModelFacts {
                parameters: model.stored_values(),
                architecture: model.config().architecture().class_name(),
            })
            .with_context(|| {
                format!(
                    "the starting model does not fit --schedule {}",
                    active.schedule
                )
            })?;
        let run = RunDir::create(&args.model_dir, &new_run_id())?;
        info!(dir = %run.root().display(), "saving the starting model");
        Training::start(model, config, source, run)?
    };

    let stop = training.stop_flag();
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

    let mut observer = Watch::new(wandb, metrics);
    let mut losses = Vec::new();
    let mut stopped = false;
    let mut pushed = None;
    let mut pushed_loss = f64::INFINITY;
    let threshold = args.avg_loss_upload_threshold;
    while !training.finished() {
        match training.run_epoch(&mut observer).await? {
            None => {
                stopped = true;
                break;
            }
            Some(s) => {
                losses.push(s.avg_loss);
                if args.push_every_epoch && s.improved && s.avg_loss < threshold {
                    if let Some(o) = &online {
                        match push_run(&args, o, training.run_dir(), protocol, &active.spec).await {
                            Ok(meta) => {
                                pushed_loss = s.avg_loss;
                                pushed = Some(meta);
                                observer.pushed(Outcome::Pushed);
                            }
                            Err(e) => {
                                observer.pushed(Outcome::Failed);
                                warn!("{:#}; training goes on", e)
                            }
                        }
                    }
                }
            }
        }
    }
    observer.finish();
    observer.finish_wandb(if stopped { 1 } else { 0 }).await;
    let summary = training.summary(losses, stopped);
    let best = summary.best_avg_loss.unwrap_or(f64::INFINITY);
    info!(best_avg_loss = best, "finished training");
    let run_dir = training.run_dir().root().to_path_buf();
    if stopped {
        info!(
            "stopped; continue with: pretrain mine --resume {}",
            run_dir.display()
        );
    } else if let Some(o) = &online {
        if best < threshold {
            if best < pushed_loss {
                info!("best average loss {best} is below the threshold {threshold}: pushing");
                let result = push_run(&args, o, training.run_dir(), protocol, &active.spec).await;
                observer.pushed(if result.is_ok() {
                    Outcome::Pushed
                } else {
                    Outcome::Failed
                });
                pushed = Some(result?);
            }
        } else {
            info!("best average loss {best} did not meet the threshold {threshold}: not uploading");
        }
    } else {
        info!("not uploading: --offline");
    }
    super::out::print_json(&json!({
            "run_dir": summary.run_dir,
            "best_dir": summary.best_dir,
            "best_avg_loss": summary.best_avg_loss,
            "epochs": summary.epochs,
            "steps": summary.steps,
            "stopped": summary.stopped,
            "epoch_losses": summary.epoch_losses,
            "seed": training.config().seed,
            "pushed": pushed.as_ref().map(pushed_json),
    }))
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

/// The model training starts from.
async fn starting_model(
    args: &MineArgs,
    seed: u64,
    device: &candle_core::Device,
    online: Option<&Online>,
) -> anyhow::Result<Model> {
    if let Some(dir) = &args.load_model_dir {
        info!(dir = %dir.display(), "training the model from disk");
        return Ok(miner::load_local_model(dir, device)?);
    }
    if let Some(file) = &args.load_model {
        info!(file = %file.display(), "training the weights file from disk");
        return Ok(miner::load_model_file(file, device)?);
    }
    if args.load_best || args.load_uid.is_some() {
        let chain = match online {
            Some(o) => o.chain.clone(),
            None => connect(&args.chain.options()?)
                .await
                .context("connecting to the chain")?,
        };
        let netuid = args.chain.netuid;
        let uid = match args.load_uid {
            Some(uid) => uid,
            None => {
                let mg = chain
                    .metagraph(netuid)
                    .await
                    .context("reading the metagraph")?;
                miner::best_uid(&mg)
                    .ok_or_else(|| anyhow::anyhow!("subnet {netuid} has no neurons"))?
            }
        };
        let hub = args.hub.open(true)?;
        let remote = miner::load_remote_model(
            chain.as_ref(),
            hub.as_ref(),
            netuid,
            uid,
            &args.model_dir,
            device,
        )
        .await
        .with_context(|| format!("loading the model of uid {uid}"))?;
        info!(uid, model = %remote.metadata.id, "training the model of uid {uid}");
        return Ok(remote.model);
    }
    info!(seed, "training a new default GPT-2 from scratch");
    Ok(Model::default_gpt2(seed, device)?)
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

/// Pushes the run's best model under `protocol` (into `active`'s
/// competition where the protocol has them); on failure the error carries
/// the command that finishes the job.
async fn push_run(
    args: &MineArgs,
    online: &Online,
    run: &RunDir,
    protocol: Protocol,
    active: &pretrain_core::rules::CompetitionSpec,
) -> anyhow::Result<Pushed> {
    let options = PushOptions {
        netuid: args.chain.netuid,
        retry_delay: Duration::from_secs_f64(args.commit_retry_delay),
        max_attempts: args.max_commit_attempts,
        upload_b16: args.upload_b16,
        ..PushOptions::default()
    };
    let entered = protocol.entered(active);
    let hub = match args.hub.open(true) {
        Ok(hub) => hub,
        Err(e) => return Err(push_failed(args, online, run, entered, &e)),
    };
    let pushed = miner::push_best_model(
        run,
        hub.as_ref(),
        online.chain.as_ref(),
        &online.hotkey,
        &online.repo_id,
        protocol,
        active,
        &options,
    )
    .await
    .map_err(|e| push_failed(args, online, run, entered, &e.into()))?;
    // The step the competitions add: the repo, uploaded private, is made
    // public once the commitment has landed.
    if protocol.uploads_private() {
        if args.competition.update_repo_visibility {
            pretrain_neurons::publish(
                hub.as_ref(),
                &online.repo_id,
                &options.upload_backoff,
                &pushed,
                &args.hub.make_public_hint(&online.repo_id),
            )
            .await?;
        } else {
            info!(
                repo = %online.repo_id,
                "the repo stays private until you make it public (--update_repo_visibility does it \
                 after the commitment lands); validators cannot download it before"
            );
        }
    }
    Ok(pushed)
}

/// A failed push: the model stays on disk; the error says how to finish.
fn push_failed(
    args: &MineArgs,
    online: &Online,
    run: &RunDir,
    entered: Option<&pretrain_core::rules::CompetitionSpec>,
    e: &anyhow::Error,
) -> anyhow::Error {
    anyhow::anyhow!(
        "pushing {} failed ({}); the model stays there; finish with: {}",
        run.best_dir().display(),
        crate::one_line(e),
        upload_command(args, &run.best_dir(), &online.repo_id, entered)
    )
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
    entered: Option<&pretrain_core::rules::CompetitionSpec>,
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
    if args.upload_b16 {
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

/// Draws what a person watches: a bar per epoch on a terminal, one log line
/// per epoch otherwise.
struct Watch {
    bar: Option<ProgressBar>,
    tty: bool,
    /// The opt-in W&B run.
    wandb: Option<Run>,
    /// The Prometheus figures (`--metrics.port`).
    metrics: Option<MinerMetrics>,
    /// Batches of the epoch so far (the original's `n_batches`).
    batches: usize,
    tokens_per_s: f64,
}

impl Watch {
    fn new(wandb: Option<Run>, metrics: Option<MinerMetrics>) -> Self {
        Self {
            bar: None,
            tty: std::io::stderr().is_terminal(),
            wandb,
            metrics,
            batches: 0,
            tokens_per_s: 0.0,
        }
    }

    fn pushed(&self, outcome: Outcome) {
        if let Some(m) = &self.metrics {
            m.pushes.with_label_values(&[outcome.as_str()]).inc();
        }
    }

    async fn finish_wandb(&mut self, exit_code: i32) {
        let Some(run) = self.wandb.take() else { return };
        match tokio::time::timeout(std::time::Duration::from_secs(30), run.finish(exit_code)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("W&B: the run did not finish cleanly: {e}"),
            Err(_) => warn!("W&B: the run's last lines were not sent within 30 s"),
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Observer for Watch {
    fn event(&mut self, event: &Event<'_>) {
        match event {
            Event::EpochStart {
                epoch,
                page_seed,
                pages,
                batches,
                done,
            } => {
                info!(
                    epoch,
                    page_seed,
                    pages = pages.len(),
                    batches,
                    "epoch {epoch}: training"
                );
                if self.tty {
                    let bar = ProgressBar::new(*batches as u64);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "epoch {prefix} [{bar:30}] {pos}/{len} batches {msg} ({elapsed}<{eta})",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(epoch.to_string());
                    bar.set_position(*done as u64);
                    self.bar = Some(bar);
                }
            }
            Event::Batch(p) => {
                self.batches = p.batch;
                self.tokens_per_s = p.tokens_per_s;
                if let Some(b) = &self.bar {
                    b.set_position(p.batch as u64);
                    b.set_message(format!(
                        "loss {:.4} (running {:.4}) {:.0} tok/s",
                        p.loss, p.running_loss, p.tokens_per_s
                    ));
                }
            }
            Event::Step { step, loss, .. } => {
                if let Some(m) = &self.metrics {
                    m.loss.set(f64::from(*loss));
                    m.tokens_per_second.set(self.tokens_per_s);
                }
                if let Some(run) = &mut self.wandb {
                    // The row the original logs: {loss, n_batches} at step n_acc_steps.
                    let row = wandb::miner::step_row(f64::from(*loss), self.batches as u64);
                    if let Err(e) = run.log(*step, row) {
                        warn!("W&B: step {step} not logged: {e}");
                    }
                }
            }
            Event::EpochEnd(s) => {
                if let Some(m) = &self.metrics {
                    m.epochs.inc();
                }
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                info!(
                    "epoch {} average loss {:.6} ({} batches, {} steps, {:.1} tokens/s){}",
                    s.epoch,
                    s.avg_loss,
                    s.batches,
                    s.steps,
                    s.tokens_per_s,
                    if s.improved { ", new best" } else { "" }
                );
            }
            Event::BestSaved { .. } => {}
            Event::Stopped { epoch, batch } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                info!(epoch, batch, "stopped; checkpoint saved");
            }
        }
    }
}

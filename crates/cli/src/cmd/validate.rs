//! `pretrain validate`: the validator (the original's flags), and the hidden
//! `pretrain eval_worker` it starts once per model.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use pretrain_chain::connect;
use pretrain_core::rules::Schedule;
use pretrain_core::Tunables;
use pretrain_neurons::validator::slurm::{SlurmCommands, SlurmSpec};
use pretrain_neurons::validator::{self, Backend, Shared, ValidatorConfig, WorkerSpec};
use pretrain_telemetry::prometheus::ValidatorMetrics;
use pretrain_telemetry::wandb::validator::{ValidatorIdentity, ValidatorLog};
use pretrain_telemetry::wandb::{Mode, WandbError};

use super::args::{ChainArgs, DataArgs, DeviceArgs, HubArgs};
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
    pub backend: BackendArgs,
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

/// Where model jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalBackend {
    /// Child processes of the validator.
    Local,
    /// One Slurm job (`srun`) per model.
    Slurm,
}

/// `--eval_backend` and the Slurm backend's `--slurm.*` flags.
#[derive(Args, Debug)]
pub struct BackendArgs {
    /// Where each model is evaluated: `local` (a child process each,
    /// --eval_workers at once) or `slurm` (one srun job each, --eval_workers
    /// jobs in flight; needs srun, squeue and scancel on this host).
    #[arg(long = "eval_backend", value_enum, default_value = "local")]
    pub eval_backend: EvalBackend,
    /// Slurm partition of the jobs (default: the cluster's default).
    #[arg(long = "slurm.partition")]
    pub slurm_partition: Option<String>,
    /// `--gres` of each job (default: `gpu:1` with `--device cuda`, none on
    /// cpu; `none` for none).
    #[arg(long = "slurm.gres")]
    pub slurm_gres: Option<String>,
    /// `--mem` of each job, in Slurm's units (`4096`, `16G`; default: the
    /// validator's per-worker memory limit, 16G; `0`: none).
    #[arg(long = "slurm.mem")]
    pub slurm_mem: Option<String>,
    /// `--time` of each job, in Slurm's formats (`30`, `0:30:00`; default: the
    /// worker's load and evaluation limits in whole minutes, plus one).
    #[arg(long = "slurm.time")]
    pub slurm_time: Option<String>,
    /// More srun arguments, split at spaces (e.g. `--account=sn9 --qos=high`).
    #[arg(long = "slurm.extra_args", allow_hyphen_values = true)]
    pub slurm_extra_args: Option<String>,
    /// The path at which the compute nodes see --model_dir (a shared
    /// filesystem; default: the same path). Workers check each model's
    /// hash there before loading it.
    #[arg(long = "slurm.model_dir")]
    pub slurm_model_dir: Option<PathBuf>,
    /// The `pretrain` executable as the compute nodes see it (default: this one's path).
    #[arg(long = "slurm.worker_program")]
    pub slurm_worker_program: Option<PathBuf>,
}

/// Slurm's `--mem` value (default unit MiB; K, M, G, T suffixes) in MiB.
fn slurm_mem_mb(v: &str) -> anyhow::Result<u64> {
    let t = v.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: f64 = match c.to_ascii_uppercase() {
                'K' => 1.0 / 1024.0,
                'M' => 1.0,
                'G' => 1024.0,
                'T' => 1024.0 * 1024.0,
                _ => bail!("--slurm.mem {v:?}: unknown unit {c:?} (use K, M, G or T)"),
            };
            (&t[..i], mult)
        }
        _ => (t, 1.0),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0 && *n < 1e12)
        .with_context(|| format!("--slurm.mem {v:?}: not a size (e.g. 4096 or 16G)"))?;
    Ok((n * mult).ceil() as u64)
}

impl BackendArgs {
    /// The backend these flags ask for; `worker` gives the time limits and
    /// the program, `mem_mb` the validator's per-worker memory limit.
    fn backend(
        &self,
        worker: &WorkerSpec,
        device: &str,
        mem_mb: u64,
        model_dir: &std::path::Path,
    ) -> anyhow::Result<Backend> {
        if self.eval_backend == EvalBackend::Local {
            return Ok(Backend::Local);
        }
        let gres = match self.slurm_gres.as_deref() {
            Some("none") | Some("") => None,
            Some(g) => Some(g.to_string()),
            None => (device != "cpu").then(|| "gpu:1".to_string()),
        };
        let mem_mb = match &self.slurm_mem {
            Some(m) => slurm_mem_mb(m)?,
            None => mem_mb,
        };
        let time = match &self.slurm_time {
            Some(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => validator::slurm::time_for(worker.load_timeout + worker.eval_timeout),
        };
        let local_dir = std::path::absolute(model_dir)
            .with_context(|| format!("resolving --model_dir {}", model_dir.display()))?;
        let spec = SlurmSpec {
            partition: self.slurm_partition.clone().filter(|p| !p.is_empty()),
            gres,
            mem_mb: (mem_mb > 0).then_some(mem_mb),
            time,
            extra_args: self
                .slurm_extra_args
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .map(String::from)
                .collect(),
            program: self
                .slurm_worker_program
                .clone()
                .unwrap_or_else(|| worker.program.clone()),
            model_dir: self
                .slurm_model_dir
                .clone()
                .map(|remote| (local_dir, remote)),
            job_prefix: validator::slurm::job_prefix_for(model_dir),
            commands: SlurmCommands::default(),
        };
        tracing::info!(
            prefix = %spec.job_prefix,
            partition = ?spec.partition,
            gres = ?spec.gres,
            mem_mb = ?spec.mem_mb,
            time = %spec.time,
            "Slurm backend: one srun job per model, named {}-s<step>-u<uid>",
            spec.job_prefix
        );
        Ok(Backend::Slurm(Arc::new(spec)))
    }
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
    /// The committed hash the model directory must have before it is loaded.
    #[arg(long)]
    pub hash: Option<String>,
    /// The miner's hotkey, for a secure (hotkey-bound) `--hash`.
    #[arg(long)]
    pub hotkey: Option<String>,
    /// `--kernels auto`'s GEMM engine, `ours` or `onednn`, as the
    /// validator's own race chose it: every worker of a step runs one path.
    #[arg(long = "gemm_engine", value_parser = parse_gemm_engine)]
    pub gemm_engine: Option<pretrain_model::GemmEngine>,
}

fn parse_gemm_engine(s: &str) -> Result<pretrain_model::GemmEngine, String> {
    pretrain_model::GemmEngine::parse(s).ok_or_else(|| format!("{s:?}: ours or onednn"))
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    // At most a week: `Duration::from_secs_f64` panics on values like 1e300.
    pretrain_core::bounded::seconds(&format!("--{name}"), v, 7.0 * 86_400.0)
        .map_err(anyhow::Error::msg)
}

/// Runs the validator until `--max_steps` steps are done (forever without).
pub fn run(args: ValidateArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let schedule = args.schedule.load()?;
    check_flags(&args)?;
    log_fd_limit();
    // Opened here so a bad device fails at start, not in every child; on
    // Slurm the device is the compute nodes', not this host's.
    if args.backend.eval_backend == EvalBackend::Local {
        args.device.open().context("opening the device")?;
    }
    let config = config_from_flags(&args)?;
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
        let config = with_schedule(config, schedule, block)?;
        if let Backend::Slurm(spec) = &config.backend {
            // A killed run's jobs first: they may end during the preflight's seconds,
            // and the operator should read that they were cancelled.
            config.backend.clean_up_earlier_runs().await;
            slurm_preflight(spec, &args.model_dir).await?;
        }
        let shared = validator::start(config, chain, hub, source, hotkey)
            .await
            .context("starting the validator")?;
        let metrics = args.metrics.serve(ValidatorMetrics::new).await?;
        shared.observers.install(wandb_log(&args, &shared), metrics);
        run_until_stopped(shared).await
    })
}

/// Refuses flags no validator can run with.
fn check_flags(args: &ValidateArgs) -> anyhow::Result<()> {
    if args.pages_per_eval == 0 {
        bail!("--pages_per_eval must be at least 1");
    }
    if args.eval_workers == 0 {
        bail!("--eval_workers must be at least 1");
    }
    args.hub.check_reachable_from(&args.chain)
}

/// Raises the open-file limit to the hard limit, and says so.
fn log_fd_limit() {
    match validator::raise_fd_limit() {
        Some((before, after)) if after > before => {
            tracing::info!("open-file limit raised from {before} to {after} (the hard limit)")
        }
        Some((n, _)) => tracing::info!("open-file limit: {n}"),
        None => {}
    }
}

/// How each model is evaluated: this executable's `eval_worker`, its limits and threads.
fn worker_spec(args: &ValidateArgs) -> anyhow::Result<WorkerSpec> {
    let program = std::env::current_exe().context("finding the pretrain executable")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_limit = (args.eval_mem_limit_mb > 0 && args.device.device == "cpu")
        .then(|| args.eval_mem_limit_mb.saturating_mul(1 << 20));
    let mut worker_args: Vec<String> = std::iter::once("eval_worker".to_string())
        .chain(args.device.compute.to_args())
        .collect();
    if let Some(engine) = pinned_gemm_engine(args) {
        worker_args.extend(["--gemm_engine".to_string(), engine.name().to_string()]);
    }
    Ok(WorkerSpec {
        program,
        args: worker_args.into_iter().map(Into::into).collect(),
        device: args.device.device.clone(),
        mem_limit,
        load_timeout: seconds("eval_timeout", args.eval_timeout)?,
        eval_timeout: seconds("eval_timeout", args.eval_timeout)?,
        threads: Some((cores / args.eval_workers).max(1)),
    })
}

/// The GEMM engine the local CPU workers are pinned to: `--kernels auto`'s
/// race, run once here, so that every model of a step is evaluated on the
/// same path (two workers racing each on a loaded machine could differ, and
/// their losses with them). Slurm's nodes may be other CPUs: they race.
fn pinned_gemm_engine(args: &ValidateArgs) -> Option<pretrain_model::GemmEngine> {
    let compute = args.device.compute.options();
    let local_cpu = args.backend.eval_backend == EvalBackend::Local && args.device.device == "cpu";
    if !local_cpu || compute.kernels != pretrain_model::Kernels::Auto {
        return None;
    }
    let race = pretrain_model::gemm_race(compute.dtype == pretrain_model::ComputeDtype::Bf16);
    let engine = race.winner();
    tracing::info!(
        "GEMM engine for every worker: {} ({})",
        engine.name(),
        race.describe()
    );
    Some(engine)
}

/// The validator's settings from its flags (the schedule's part comes once
/// the chain's block is known: [`with_schedule`]).
fn config_from_flags(args: &ValidateArgs) -> anyhow::Result<ValidatorConfig> {
    let worker = worker_spec(args)?;
    let backend = args.backend.backend(
        &worker,
        &args.device.device,
        args.eval_mem_limit_mb,
        &args.model_dir,
    )?;
    let mut config = ValidatorConfig::new(args.chain.netuid, args.model_dir.clone(), worker);
    config.backend = backend;
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
    Ok(config)
}

/// `config` under `schedule` at `block`: the protocol takes the scoring
/// constants from the competition active now (sn9-2024-01) or leaves them
/// to each competition; each active competition is logged, refused or not.
fn with_schedule(
    mut config: ValidatorConfig,
    schedule: Schedule,
    block: u64,
) -> anyhow::Result<ValidatorConfig> {
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
    Ok(config)
}

/// Runs the started validator to its end; a Slurm validator also stops at
/// SIGINT or SIGTERM, cancelling its jobs first (they outlive a killed srun).
async fn run_until_stopped(shared: Arc<Shared>) -> anyhow::Result<()> {
    if matches!(shared.config.backend, Backend::Local) {
        validator::run(shared).await;
        return Ok(());
    }
    let backend = shared.config.backend.clone();
    tokio::select! {
        _ = validator::run(shared) => Ok(()),
        sig = stop_signal() => {
            tracing::warn!("{sig}: cancelling this validator's Slurm jobs");
            backend.cancel_all().await;
            bail!("stopped by {sig}")
        }
    }
}

/// Refuses to start a Slurm validator whose jobs could never run (see
/// `SlurmSpec::preflight`); the probe it writes under --model_dir also
/// shows that directory writable here.
async fn slurm_preflight(spec: &SlurmSpec, model_dir: &std::path::Path) -> anyhow::Result<()> {
    let probe = std::path::absolute(model_dir)
        .with_context(|| format!("resolving --model_dir {}", model_dir.display()))?
        .join(".slurm-preflight");
    std::fs::write(
        &probe,
        b"pretrain validate: can the Slurm nodes read this?\n",
    )
    .with_context(|| format!("--model_dir {} is not writable", model_dir.display()))?;
    let checked = spec.preflight(&probe).await;
    let _ = std::fs::remove_file(&probe);
    checked.map_err(anyhow::Error::msg)
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

/// The first of SIGINT (Ctrl-C) and SIGTERM.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
        }
    }
    ctrl_c().await;
    "SIGINT"
}

/// Ctrl-C; never, when its handler cannot be installed.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The child side of the worker protocol (see `validator::worker`).
pub fn run_worker(args: EvalWorkerArgs) -> anyhow::Result<()> {
    let device = super::args::parse_device(&args.device)?;
    if let Some(engine) = args.gemm_engine {
        pretrain_model::pin_gemm_engine(engine);
    }
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let check = args.hash.map(|hash| validator::worker::HashCheck {
        hash,
        hotkey: args.hotkey,
    });
    let code = validator::worker::run_worker_checked(
        &args.model,
        &device,
        args.compute.options(),
        check.as_ref(),
        &mut stdin.lock(),
        &mut stdout.lock(),
    )
    .context("talking to the validator")?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_mem_in_mib_as_slurm_reads_it() {
        // Slurm's --mem: MiB unless a K, M, G or T suffix says otherwise.
        assert_eq!(slurm_mem_mb("4096").unwrap(), 4096);
        assert_eq!(slurm_mem_mb("300M").unwrap(), 300);
        assert_eq!(slurm_mem_mb("16G").unwrap(), 16 * 1024);
        assert_eq!(slurm_mem_mb("1t").unwrap(), 1024 * 1024);
        assert_eq!(slurm_mem_mb("2048K").unwrap(), 2);
        assert!(slurm_mem_mb("lots").is_err());
        assert!(slurm_mem_mb("4X").is_err());
        assert!(slurm_mem_mb("-1").is_err());
    }
}

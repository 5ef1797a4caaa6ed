//! `pretrain localnet`: the whole subnet on this machine. An embedded chain,
//! a local hub and the sample corpus under one directory; a validator and N
//! miners, each its own `pretrain mine` / `pretrain validate` process; a
//! live leaderboard; a JSON summary at the end.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use pretrain_chain::embedded::{EmbeddedChain, EmbeddedOptions, SubnetParams};
use pretrain_chain::{Chain, Wallet};
use pretrain_core::rules::{CompetitionSpec, Protocol, Schedule};
use pretrain_core::{LaterModelId, ModelId};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// Subnet the local network runs (the real one's id, so flags look the same).
const NETUID: u16 = pretrain_core::constants::SUBNET_UID;
/// Stake given to the validator so it holds a permit; miners get none.
const VALIDATOR_STAKE: f64 = 1000.0;
/// How often the leaderboard is read and drawn.
const REFRESH: Duration = Duration::from_secs(2);
/// How long children get to stop after SIGINT before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Which starting model the miners train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelKind {
    /// A 2-layer, 32-wide GPT-2 (1.6M parameters): a full round in a couple of minutes on 2 cores.
    Tiny,
    /// The subnet's default GPT-2 (122M parameters): what miners really train; slow on a CPU.
    Default,
}

/// Arguments of `pretrain localnet`.
#[derive(Args, Debug)]
pub struct LocalnetArgs {
    /// Number of miners (each a `pretrain mine` process).
    #[arg(long, default_value_t = 2)]
    pub miners: usize,
    /// Stop everything after this many minutes (default: run until Ctrl-C).
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Directory holding the chain, the hub, the wallets, the logs and every
    /// model (reused if it exists: wallets and registrations are kept).
    #[arg(long, default_value = "localnet")]
    pub dir: PathBuf,
    /// Starting model of the miners.
    #[arg(long, value_enum, default_value_t = ModelKind::Tiny)]
    pub model: ModelKind,
    /// Seconds per block of the embedded chain (a fresh chain only).
    #[arg(long = "block_time", default_value_t = 1.0)]
    pub block_time: f64,
    /// Where pages come from: `local:DIR` or `falcon`; default: the sample corpus.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Base seed of the miners' page sampling and dropout (miner i uses seed + 1 + i).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Passed on to the validator and every miner.
    #[command(flatten)]
    pub schedule: super::rules::ScheduleArgs,
    /// Commit-reveal weights on the subnet (tempo 9, reveal after 1 epoch): the validator's
    /// weights are timelocked to the chain's beacon and count only after the reveal.
    #[arg(long = "commit_reveal")]
    pub commit_reveal: bool,
}

/// One child process and what it is.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Everything one leaderboard row shows.
#[derive(Debug, Clone)]
struct Row {
    uid: u16,
    hotkey: String,
    role: String,
    model: Option<String>,
    competition: Option<i64>,
    loss: Option<f64>,
    win_rate: Option<f64>,
    weight: f64,
    incentive: f64,
}

impl Row {
    fn json(&self) -> Value {
        json!({
            "uid": self.uid,
            "hotkey": self.hotkey,
            "role": self.role,
            "model": self.model,
            "competition": self.competition,
            "loss": self.loss.filter(|l| l.is_finite()),
            "win_rate": self.win_rate,
            "weight": self.weight,
            "incentive": self.incentive,
        })
    }
}

/// Paths inside the localnet directory.
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn wallets(&self) -> PathBuf {
        self.root.join("wallets")
    }
    fn chain(&self) -> PathBuf {
        self.root.join("chain")
    }
    fn hub(&self) -> PathBuf {
        self.root.join("hub")
    }
    fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    fn init_model(&self, start: Start) -> PathBuf {
        self.root.join("init").join(match start {
            Start::Gpt2(ModelKind::Tiny) => "tiny-gpt2",
            Start::Gpt2(ModelKind::Default) => "default-gpt2",
            Start::TinyLlama => "tiny-llama",
        })
    }
    fn miner_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("miner-{i}"))
    }
    fn validator_dir(&self) -> PathBuf {
        self.root.join("validator")
    }
    fn corpus(&self) -> PathBuf {
        self.root.join("corpus")
    }
    fn leaderboard(&self) -> PathBuf {
        self.root.join("leaderboard.jsonl")
    }
}

/// The config of the tiny model: the reference tiny GPT-2's shape (2 layers,
/// 32 wide, 4 heads) with the dropout of the default model, so miners train
/// as they would for real.
fn tiny_config() -> Value {
    let mut c = pretrain_model::config::default_gpt2_config_json();
    if let Some(m) = c.as_object_mut() {
        m.insert("n_embd".into(), json!(32));
        m.insert("n_head".into(), json!(4));
        m.insert("n_layer".into(), json!(2));
    }
    c
}

/// The config of the tiny LLaMA: the reference tiny LLaMA's shape (2
/// layers, 32 wide, 4 heads, 2 key-value heads; 3.3M parameters, most of
/// them the untied embedding and output matrices).
fn tiny_llama_config() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 1024,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "vocab_size": 50257
    })
}

/// The starting model of a miner: a GPT-2 of the chosen size, or the tiny
/// LLaMA for a competition that only admits LLaMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Gpt2(ModelKind),
    TinyLlama,
}

impl Start {
    /// What a miner of `competition` (`None`: the seed's single one) starts from.
    fn for_competition(
        kind: ModelKind,
        competition: Option<&CompetitionSpec>,
    ) -> anyhow::Result<Self> {
        let Some(c) = competition else {
            return Ok(Start::Gpt2(kind));
        };
        let allows = |a: &str| c.constraints.architectures.iter().any(|x| x == a);
        if allows("GPT2LMHeadModel") {
            return Ok(Start::Gpt2(kind));
        }
        if allows("LlamaForCausalLM") {
            if kind == ModelKind::Default {
                bail!(
                    "competition {} ({}) admits only LLaMA models, and localnet has only a tiny \
                     LLaMA: run it with --model tiny",
                    c.id,
                    c.name
                );
            }
            return Ok(Start::TinyLlama);
        }
        bail!(
            "competition {} ({}) admits none of the architectures localnet can start from \
             (GPT2LMHeadModel, LlamaForCausalLM): [{}]",
            c.id,
            c.name,
            c.constraints.architectures.join(", ")
        )
    }

    fn write(self, dir: &Path) -> anyhow::Result<()> {
        let device = candle_core::Device::Cpu;
        let model = match self {
            Start::Gpt2(ModelKind::Tiny) => {
                pretrain_model::Model::random(tiny_config(), 0, &device)?
            }
            Start::Gpt2(ModelKind::Default) => pretrain_model::Model::default_gpt2(0, &device)?,
            Start::TinyLlama => pretrain_model::Model::random(tiny_llama_config(), 0, &device)?,
        };
        model.save(dir)?;
        Ok(())
    }
}

/// The competitions of the entry active at `block` under the later
/// protocol, each checked runnable here (`None`: the seed's protocol, one
/// competition, no competition ids).
fn later_competitions(
    schedule: &Schedule,
    block: u64,
) -> anyhow::Result<Option<Vec<CompetitionSpec>>> {
    if schedule.protocol() != Protocol::Later {
        return Ok(None);
    }
    let entry = schedule.active_entry(block)?;
    for c in &entry.competitions {
        c.support()
            .with_context(|| format!("schedule {} at block {block}", schedule.name))?;
    }
    Ok(Some(entry.competitions.clone()))
}

/// Learning rate of miner `i`: miner 0 learns fast, each next one a hundred
/// times slower (miner 1 at the original's default of 1e-5 barely moves in
/// minutes), so miner 0 is clearly the best after its first epoch.
fn miner_lr(kind: ModelKind, i: usize) -> f64 {
    let base = match kind {
        ModelKind::Tiny => 1e-3,
        ModelKind::Default => 1e-4,
    };
    base * 0.01f64.powi(i32::try_from(i.min(8)).unwrap_or(8))
}

/// Runs the local subnet; prints the final leaderboard as JSON.
pub fn run(args: LocalnetArgs, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    if args.miners == 0 || args.miners > 16 {
        bail!("--miners must be between 1 and 16");
    }
    if let Some(m) = args.minutes {
        if !(m.is_finite() && m > 0.0 && m <= 7.0 * 24.0 * 60.0) {
            bail!("--minutes must be a positive number of minutes (at most a week)");
        }
    }
    if !(args.block_time.is_finite() && (0.05..=60.0).contains(&args.block_time)) {
        bail!("--block_time must be between 0.05 and 60 seconds");
    }
    // Checked here, before any child starts; a file is passed on as an absolute path.
    args.schedule.load()?;
    let mut args = args;
    let builtin = pretrain_core::rules::schedule::BUILTIN
        .iter()
        .any(|(name, _)| *name == args.schedule.schedule);
    if !builtin {
        let path = std::path::Path::new(&args.schedule.schedule);
        args.schedule.schedule = path
            .canonicalize()
            .with_context(|| format!("resolving --schedule {}", path.display()))?
            .display()
            .to_string();
    }
    rt.block_on(run_async(args))
}

async fn run_async(args: LocalnetArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let root = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let layout = Layout { root };
    let started = Instant::now();

    let (validator, miners) = setup_wallets(&layout, args.miners)?;
    let schedule = args.schedule.load()?;
    // A commitment younger than eval_block_delay is not evaluated, and each
    // new one replaces the last: miners that commit every few blocks would
    // never be evaluated, so commits are spaced by more than the delay.
    let delay = schedule
        .entries
        .iter()
        .flat_map(|e| &e.competitions)
        .map(|c| c.constraints.eval_block_delay)
        .max()
        .unwrap_or(0);
    let commit_rate_limit = if delay > 0 { delay + 10 } else { 5 };
    let chain = setup_chain(
        &layout,
        args.block_time,
        commit_rate_limit,
        &validator,
        &miners,
    )
    .await?;
    if args.commit_reveal {
        chain
            .set_commit_reveal(
                NETUID,
                pretrain_chain::embedded::CommitReveal {
                    enabled: true,
                    reveal_period_epochs: 1,
                    tempo: 9,
                    weights_version_key: 0,
                },
            )
            .await
            .context("switching commit-reveal on")?;
    }
    let block = chain
        .current_block()
        .await
        .context("reading the current block")?;
    let competitions = later_competitions(&schedule, block)?;
    // Miner i joins competition i mod n: with two competitions and two
    // miners, each competition has one.
    let assigned: Vec<Option<CompetitionSpec>> = (0..miners.len())
        .map(|i| competitions.as_ref().map(|cs| cs[i % cs.len()].clone()))
        .collect();
    if let Some(cs) = &competitions {
        if miners.len() < cs.len() {
            tracing::warn!(
                "{} competitions and {} miners: some competitions have no miner",
                cs.len(),
                miners.len()
            );
        }
    }
    let mut starts = Vec::with_capacity(assigned.len());
    for c in &assigned {
        starts.push(Start::for_competition(args.model, c.as_ref())?);
    }
    let mut distinct: Vec<Start> = Vec::new();
    for s in &starts {
        if !distinct.contains(s) {
            distinct.push(*s);
        }
    }
    for start in distinct {
        let init = layout.init_model(start);
        if init.join("model.safetensors").is_file() {
            continue;
        }
        tracing::info!(dir = %init.display(), model = ?start, "writing a starting model");
        tokio::task::spawn_blocking(move || start.write(&init))
            .await
            .context("writing the starting model")??;
    }
    std::fs::create_dir_all(layout.logs()).context("creating the logs directory")?;

    let dataset = match &args.dataset {
        Some(d) => d.clone(),
        None => {
            let dir = layout.corpus();
            tokio::task::spawn_blocking(move || write_short_corpus(&dir))
                .await
                .context("writing the local corpus")??;
            format!("local:{}", layout.corpus().display())
        }
    };
    let mut procs = Vec::new();
    let schedule_arg = args.schedule.schedule.as_str();
    procs.push(spawn_validator(&layout, &dataset, schedule_arg).await?);
    for (i, _) in miners.iter().enumerate() {
        let miner = MinerSpec {
            index: i,
            kind: args.model,
            start: starts[i],
            competition: assigned[i].as_ref().map(|c| c.id),
            seed: args.seed,
        };
        procs.push(spawn_miner(&layout, &dataset, schedule_arg, &miner).await?);
    }
    tracing::info!(
        dir = %layout.root.display(),
        "local subnet running: 1 validator, {} miners; logs in {}",
        miners.len(),
        layout.logs().display()
    );

    let deadline = args
        .minutes
        .map(|m| started + Duration::from_secs_f64(m * 60.0));
    let tty = std::io::stderr().is_terminal();
    let mut last_logged = Instant::now() - Duration::from_secs(3600);
    let mut rows = Vec::new();
    let stop_reason = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break "interrupted",
            _ = tokio::time::sleep(REFRESH) => {}
        }
        match leaderboard(&chain, &layout, &validator, &miners, competitions.is_some()).await {
            Ok(r) => {
                rows = r;
                let line = json!({
                    "elapsed_s": started.elapsed().as_secs_f64(),
                    "block": chain.current_block().await.ok(),
                    "leaderboard": rows.iter().map(Row::json).collect::<Vec<_>>(),
                });
                if let Err(e) =
                    pretrain_core::fsio::append_line(&layout.leaderboard(), &line.to_string())
                {
                    tracing::warn!("cannot append to {}: {e}", layout.leaderboard().display());
                }
                if tty {
                    draw(&rows, started.elapsed(), args.minutes);
                } else if last_logged.elapsed() >= Duration::from_secs(15) {
                    log_rows(&rows);
                    last_logged = Instant::now();
                }
            }
            Err(e) => tracing::warn!("reading the leaderboard: {e:#}"),
        }
        procs.retain_mut(|p| match p.child.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!("{} exited ({status}); see {}", p.name, p.log.display());
                false
            }
            _ => true,
        });
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break "time is up";
        }
        if procs.is_empty() {
            break "every process exited";
        }
    };
    tracing::info!("stopping the local subnet ({stop_reason})");
    stop_all(procs).await;
    if let Ok(r) = leaderboard(&chain, &layout, &validator, &miners, competitions.is_some()).await {
        rows = r;
    }
    if tty {
        draw(&rows, started.elapsed(), args.minutes);
    }
    let mut summary = json!({
        "dir": layout.root.display().to_string(),
        "leaderboard": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    if let (Some(cs), Some(m)) = (&competitions, summary.as_object_mut()) {
        m.insert("competitions".into(), competitions_json(cs, &rows));
    }
    super::out::print_json(&summary)?;
    Ok(())
}

/// Characters kept of each document of the local corpus.
const SHORT_DOC_CHARS: usize = 400;

/// The sample corpus with each document cut to its first
/// [`SHORT_DOC_CHARS`] characters, as JSON Lines: a page (100 documents)
/// is then ~10k tokens instead of ~65k, so a tiny model's epoch takes
/// seconds on a shared CPU and a full round fits in a couple of minutes.
fn write_short_corpus(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("short-docs.jsonl");
    if path.is_file() {
        return Ok(());
    }
    let sample = pretrain_data::sample_corpus_dir();
    let source = pretrain_data::LocalSource::open(&sample)
        .with_context(|| format!("opening the sample corpus {}", sample.display()))?;
    let docs = pretrain_data::read_all_documents(&source).context("reading the sample corpus")?;
    let mut text = String::new();
    for d in docs {
        let cut: String = d.chars().take(SHORT_DOC_CHARS).collect();
        text.push_str(&serde_json::to_string(&json!({ "content": cut }))?);
        text.push('\n');
    }
    pretrain_core::fsio::atomic_write(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Creates (or reuses) the validator's and the miners' wallets, unencrypted:
/// keys of a throwaway local network.
fn setup_wallets(layout: &Layout, n: usize) -> anyhow::Result<(Wallet, Vec<Wallet>)> {
    let make = |name: &str| -> anyhow::Result<Wallet> {
        let w = Wallet::new(layout.wallets(), name, "default");
        if !w.hotkey_path().is_file() {
            w.create(None, false).with_context(|| {
                format!("creating wallet {name} in {}", layout.wallets().display())
            })?;
        }
        Ok(w)
    };
    let validator = make("validator")?;
    let miners = (0..n)
        .map(|i| make(&format!("miner-{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((validator, miners))
}

/// A fresh (or the existing) chain with the subnet, every hotkey registered
/// and the validator staked. Rate limits are a few blocks so a round fits in minutes.
async fn setup_chain(
    layout: &Layout,
    block_time: f64,
    commit_rate_limit: u64,
    validator: &Wallet,
    miners: &[Wallet],
) -> anyhow::Result<EmbeddedChain> {
    let chain = EmbeddedChain::open_async(
        &layout.chain(),
        &EmbeddedOptions {
            block_time: Some(block_time),
            ..EmbeddedOptions::default()
        },
    )
    .await
    .with_context(|| format!("opening the chain in {}", layout.chain().display()))?;
    chain
        .create_subnet(
            NETUID,
            SubnetParams {
                commit_rate_limit,
                weights_rate_limit: 5,
                ..SubnetParams::default()
            },
        )
        .await
        .context("creating the subnet")?;
    for w in std::iter::once(validator).chain(miners) {
        let hot = w.hotkey_ss58().context("reading a hotkey")?;
        let cold = w.coldkeypub().context("reading a coldkey")?;
        chain
            .register(NETUID, &hot, &cold)
            .await
            .with_context(|| format!("registering {hot}"))?;
    }
    let vhot = validator.hotkey_ss58()?;
    let g = chain
        .metagraph(NETUID)
        .await
        .context("reading the metagraph")?;
    let staked = g.neurons.iter().any(|n| n.hotkey == vhot && n.stake > 0.0);
    if !staked {
        chain
            .add_stake(&vhot, VALIDATOR_STAKE)
            .await
            .context("staking the validator")?;
    }
    Ok(chain)
}

/// Common flags of every child: the wallet, the embedded chain, the local hub, the dataset, the schedule.
fn common_flags(layout: &Layout, wallet_name: &str, dataset: &str, schedule: &str) -> Vec<String> {
    [
        "--wallet.path",
        &layout.wallets().display().to_string(),
        "--wallet.name",
        wallet_name,
        "--wallet.hotkey",
        "default",
        "--subtensor.network",
        "embedded",
        "--chain_dir",
        &layout.chain().display().to_string(),
        "--netuid",
        &NETUID.to_string(),
        "--hub",
        &format!("local:{}", layout.hub().display()),
        "--dataset",
        dataset,
        "--schedule",
        schedule,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn spawn_validator(layout: &Layout, dataset: &str, schedule: &str) -> anyhow::Result<Proc> {
    let mut a = common_flags(layout, "validator", dataset, schedule);
    a.extend(
        [
            "--model_dir",
            &layout.validator_dir().display().to_string(),
            "--blocks_per_epoch",
            "10",
            "--pages_per_eval",
            "1",
            "--update_interval",
            "5",
            "--idle_wait",
            "5",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    spawn(layout, "validator", "validate", &a).await
}

/// What one miner process is given.
struct MinerSpec {
    index: usize,
    kind: ModelKind,
    start: Start,
    /// Its competition under the later protocol.
    competition: Option<i64>,
    seed: u64,
}

async fn spawn_miner(
    layout: &Layout,
    dataset: &str,
    schedule: &str,
    m: &MinerSpec,
) -> anyhow::Result<Proc> {
    let (i, kind, seed) = (m.index, m.kind, m.seed);
    let name = format!("miner-{i}");
    let mut a = common_flags(layout, &name, dataset, schedule);
    if let Some(c) = m.competition {
        // Uploaded private, made public once the commitment landed (upstream's miner flags).
        a.extend(["--competition_id".to_string(), c.to_string()]);
        a.push("--update_repo_visibility".into());
    }
    let (sl, pages) = match kind {
        ModelKind::Tiny => ("128", "1"),
        ModelKind::Default => ("1024", "1"),
    };
    a.extend(
        [
            "--model_dir",
            &layout.miner_dir(i).display().to_string(),
            "--load_model_dir",
            &layout.init_model(m.start).display().to_string(),
            "--hf_repo_id",
            &format!("localnet/{name}"),
            "--lr",
            &miner_lr(kind, i).to_string(),
            "--bs",
            "1",
            "--sl",
            sl,
            "--accumulation_steps",
            "1",
            "--pages_per_epoch",
            pages,
            "--num_epochs",
            "-1",
            "--push_every_epoch",
            "--avg_loss_upload_threshold",
            "1000",
            "--seed",
            &(seed + 1 + i as u64).to_string(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    spawn(layout, &name, "mine", &a).await
}

async fn spawn(
    layout: &Layout,
    name: &str,
    command: &str,
    args: &[String],
) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe().context("finding the pretrain executable")?;
    let log = layout.logs().join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = file
        .try_clone()
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg(command)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        // One core's worth of threads each: the processes share the machine.
        .env("RAYON_NUM_THREADS", "1")
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    unsafe {
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to
        // signal this child when its parent dies, so no child outlives a
        // killed localnet.
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {name} (`pretrain {command}`)"))?;
    tracing::info!(pid = child.id(), log = %log.display(), "started {name}");
    Ok(Proc {
        name: name.to_string(),
        child,
        log,
    })
}

/// SIGINT to every child (they save and stop), then SIGKILL to whoever is
/// still running after the grace period.
async fn stop_all(mut procs: Vec<Proc>) {
    for p in &procs {
        if let Some(pid) = p.child.id().and_then(|id| i32::try_from(id).ok()) {
            // SAFETY: sending a signal to our own child's pid.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        }
    }
    let until = Instant::now() + STOP_GRACE;
    for p in &mut procs {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, p.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("{} did not stop in {STOP_GRACE:?}: killing it", p.name);
                let _ = p.child.kill().await;
            }
        }
    }
}

/// The validator's latest per-uid loss and win rate, from its metrics file.
fn validator_view(dir: &Path) -> BTreeMap<u16, (f64, Option<f64>)> {
    let Ok(data) = pretrain_report::parse::collect(dir) else {
        return BTreeMap::new();
    };
    let Some(run) = data.validators.first() else {
        return BTreeMap::new();
    };
    // The latest step of each competition (the seed's validator has one:
    // `None`); a later validator evaluates one competition per step.
    let mut latest: BTreeMap<Option<i64>, &pretrain_report::parse::ValidatorStep> = BTreeMap::new();
    for step in &run.steps {
        latest.insert(step.competition, step);
    }
    latest
        .values()
        .flat_map(|s| s.uids.iter())
        .map(|(uid, p)| (*uid, (p.mean_loss, p.win_rate)))
        .collect()
}

/// `namespace/name@commit8` of a commitment and, under the later protocol,
/// its competition; the raw text when it is no model id.
fn describe_commitment(data: &[u8], later: bool) -> (Option<String>, Option<i64>) {
    let short = |ns: &str, name: &str, commit: Option<&str>| {
        format!(
            "{ns}/{name}@{}",
            commit.map(|c| &c[..c.len().min(8)]).unwrap_or("?")
        )
    };
    let raw = || Some(String::from_utf8_lossy(data).into_owned());
    if later {
        match LaterModelId::from_chain_bytes(data) {
            Ok(id) => (
                Some(short(&id.namespace, &id.name, id.commit.as_deref())),
                Some(id.competition_id),
            ),
            Err(_) => (raw(), None),
        }
    } else {
        match ModelId::from_chain_bytes(data) {
            Ok(id) => (
                Some(short(&id.namespace, &id.name, id.commit.as_deref())),
                None,
            ),
            Err(_) => (raw(), None),
        }
    }
}

/// Per competition of the summary: its share, the uids committed to it,
/// and its winner (the one holding the most incentive).
fn competitions_json(competitions: &[CompetitionSpec], rows: &[Row]) -> Value {
    let list: Vec<Value> = competitions
        .iter()
        .map(|c| {
            let members: Vec<&Row> = rows
                .iter()
                .filter(|r| r.competition == Some(c.id))
                .collect();
            let winner = members
                .iter()
                .max_by(|a, b| a.incentive.total_cmp(&b.incentive))
                .filter(|r| r.incentive > 0.0);
            json!({
                "id": c.id,
                "name": c.name,
                "share": c.reward_share,
                "uids": members.iter().map(|r| r.uid).collect::<Vec<_>>(),
                "winner": winner.map(|r| r.uid),
                "winner_incentive": winner.map(|r| r.incentive),
            })
        })
        .collect();
    Value::Array(list)
}

async fn leaderboard(
    chain: &EmbeddedChain,
    layout: &Layout,
    validator: &Wallet,
    miners: &[Wallet],
    later: bool,
) -> anyhow::Result<Vec<Row>> {
    let g = chain.metagraph(NETUID).await?;
    let commits = chain.commitments(NETUID).await?;
    let weights = chain.weights(NETUID).await?;
    let vhot = validator.hotkey_ss58()?;
    let vuid = g.neurons.iter().find(|n| n.hotkey == vhot).map(|n| n.uid);
    let mut wmap: BTreeMap<u16, f64> = BTreeMap::new();
    if let Some((_, row)) = weights.iter().find(|(uid, _)| Some(*uid) == vuid) {
        let total: f64 = row.iter().map(|(_, v)| f64::from(*v)).sum();
        for (uid, v) in row {
            if total > 0.0 {
                wmap.insert(*uid, f64::from(*v) / total);
            }
        }
    }
    let view = validator_view(&layout.validator_dir());
    let miner_hotkeys: Vec<String> = miners.iter().filter_map(|w| w.hotkey_ss58().ok()).collect();
    let mut rows = Vec::new();
    for n in &g.neurons {
        let role = if n.hotkey == vhot {
            "validator".to_string()
        } else if let Some(i) = miner_hotkeys.iter().position(|h| *h == n.hotkey) {
            format!("miner-{i}")
        } else {
            "other".to_string()
        };
        let commitment = commits.iter().find(|c| c.hotkey == n.hotkey);
        let (model, competition) = match commitment {
            None => (None, None),
            Some(c) => describe_commitment(&c.data, later),
        };
        let (loss, win_rate) = match view.get(&n.uid) {
            Some((l, w)) => (Some(*l), *w),
            None => (None, None),
        };
        rows.push(Row {
            uid: n.uid,
            hotkey: n.hotkey.clone(),
            role,
            model,
            competition,
            loss,
            win_rate,
            weight: wmap.get(&n.uid).copied().unwrap_or(0.0),
            incentive: n.incentive,
        });
    }
    Ok(rows)
}

fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        Some(_) => "inf".into(),
        None => "-".into(),
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:>4}  {:<10}  {:<12}  {:>4}  {:<26}  {:>8}  {:>8}  {:>7}  {:>9}\n",
        "UID", "ROLE", "HOTKEY", "COMP", "MODEL", "LOSS", "WIN RATE", "WEIGHT", "INCENTIVE"
    );
    for r in rows {
        s.push_str(&format!(
            "{:>4}  {:<10}  {:<12}  {:>4}  {:<26}  {:>8}  {:>8}  {:>7.4}  {:>9.4}\n",
            r.uid,
            r.role,
            format!("{}…", &r.hotkey[..r.hotkey.len().min(10)]),
            r.competition
                .map_or_else(|| "-".to_string(), |c| c.to_string()),
            r.model.as_deref().unwrap_or("-"),
            fmt_opt(r.loss, 4),
            fmt_opt(r.win_rate, 3),
            r.weight,
            r.incentive
        ));
    }
    s
}

/// Redraws the leaderboard in place on a terminal.
fn draw(rows: &[Row], elapsed: Duration, minutes: Option<f64>) {
    let limit = minutes
        .map(|m| format!(" of {:.0}s", m * 60.0))
        .unwrap_or_else(|| " (Ctrl-C to stop)".into());
    eprint!(
        "\x1b[H\x1b[2Jpretrain localnet: {:.0}s{limit}\n\n{}",
        elapsed.as_secs_f64(),
        table(rows)
    );
}

fn log_rows(rows: &[Row]) {
    for r in rows.iter().filter(|r| r.role != "validator") {
        tracing::info!(
            uid = r.uid,
            role = %r.role,
            model = r.model.as_deref().unwrap_or("-"),
            competition = ?r.competition,
            loss = %fmt_opt(r.loss, 4),
            win_rate = %fmt_opt(r.win_rate, 3),
            weight = format_args!("{:.4}", r.weight),
            incentive = format_args!("{:.4}", r.incentive),
            "leaderboard"
        );
    }
}

//! The run order of a local subnet: the directory, the wallets and the
//! chain, the miners' competitions and starting models, the children, the
//! supervision loop and the summary. The `pretrain localnet` command builds
//! [`Settings`] from its flags, draws what an [`Observer`] is shown, and
//! calls [`run`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pretrain_chain::embedded::{CommitReveal, EmbeddedChain};
use pretrain_chain::{Chain, Wallet};
use pretrain_core::rules::{CompetitionSpec, Protocol, Schedule};
use serde_json::{json, Value};

use super::{
    assign_competitions, commit_rate_limit, competitions_at, competitions_json, leaderboard,
    leaderboard_line, rows_json, setup_chain, setup_wallets, spawn_miner, spawn_validator,
    stop_all, validator_view, write_short_corpus, Layout, LocalnetError, MinerSpec, ModelSize,
    Proc, Row, Start, NETUID, STOP_GRACE,
};

/// How often the leaderboard is read and shown.
pub const REFRESH: Duration = Duration::from_secs(2);

/// Commit-reveal as `Settings::commit_reveal` switches it on: tempo 9, the
/// reveal one epoch after the commit.
pub const COMMIT_REVEAL: CommitReveal = CommitReveal {
    enabled: true,
    reveal_period_epochs: 1,
    tempo: 9,
    weights_version_key: 0,
};

/// Everything a local subnet run is told (the `pretrain localnet` flags, checked).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The directory holding everything (created if missing, reused if not).
    pub dir: PathBuf,
    /// Number of miners.
    pub miners: usize,
    /// Stop after this many minutes (`None`: until `stop`).
    pub minutes: Option<f64>,
    /// The size of the miners' starting GPT-2.
    pub size: ModelSize,
    /// Seconds per block of a fresh chain.
    pub block_time: f64,
    /// The children's `--dataset` (`None`: the short sample corpus, written under `dir`).
    pub dataset: Option<String>,
    /// Base seed of the miners (miner i uses seed + 1 + i).
    pub seed: u64,
    /// The schedule, loaded.
    pub schedule: Schedule,
    /// The children's `--schedule`: a built-in name or an absolute path.
    pub schedule_arg: String,
    /// Commit-reveal weights on the subnet ([`COMMIT_REVEAL`]).
    pub commit_reveal: bool,
    /// The `pretrain` executable the children run.
    pub exe: PathBuf,
}

/// What the caller is shown while the subnet runs.
pub trait Observer {
    /// The leaderboard after each refresh that could read it.
    fn refreshed(&mut self, rows: &[Row], elapsed: Duration);
    /// The final leaderboard, once every child has stopped.
    fn finished(&mut self, rows: &[Row], elapsed: Duration);
}

/// Why the supervision loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The caller's stop future completed (Ctrl-C).
    Interrupted,
    /// `Settings::minutes` passed.
    TimeUp,
    /// No child was left running.
    AllExited,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::Interrupted => "interrupted",
            StopReason::TimeUp => "time is up",
            StopReason::AllExited => "every process exited",
        })
    }
}

/// How a run ended: its directory, the final leaderboard and the competitions.
#[derive(Debug)]
pub struct Outcome {
    /// The directory's paths (absolute).
    pub layout: Layout,
    /// The final leaderboard.
    pub rows: Vec<Row>,
    /// The competitions the miners were dealt (`None` under the `sn9-2024-01` rules).
    pub competitions: Option<Vec<CompetitionSpec>>,
    /// Why it stopped.
    pub stopped: StopReason,
}

impl Outcome {
    /// The JSON summary `pretrain localnet` prints: the directory, the
    /// leaderboard and, where the rules have them, the competitions.
    pub fn summary_json(&self) -> Value {
        let mut summary = json!({
            "dir": self.layout.root.display().to_string(),
            "leaderboard": rows_json(&self.rows),
        });
        if let (Some(cs), Some(m)) = (&self.competitions, summary.as_object_mut()) {
            m.insert("competitions".into(), competitions_json(cs, &self.rows));
        }
        summary
    }
}

/// Runs the local subnet until `stop` completes, `Settings::minutes` pass
/// or every child has exited; then stops the children and returns the
/// final leaderboard.
pub async fn run(
    settings: Settings,
    observer: &mut dyn Observer,
    stop: impl Future<Output = ()>,
) -> Result<Outcome, LocalnetError> {
    let layout = open_layout(&settings.dir)?;
    let started = Instant::now();
    let subnet = provision(&layout, &settings).await?;
    let plan = plan_miners(&subnet.chain, &settings).await?;
    write_starting_models(&layout, &plan.starts).await?;
    let dataset = dataset_spec(&layout, settings.dataset.as_deref()).await?;
    let mut procs = spawn_children(&settings, &layout, &dataset, &plan).await?;
    tracing::info!(
        dir = %layout.root.display(),
        "local subnet running: 1 validator, {} miners; logs in {}",
        subnet.miners.len(),
        layout.logs().display()
    );
    let deadline = settings
        .minutes
        .map(|m| started + Duration::from_secs_f64(m * 60.0));
    let board = Board {
        subnet: &subnet,
        layout: &layout,
        protocol: settings.schedule.protocol(),
        started,
    };
    let (stopped, rows) = board.supervise(&mut procs, deadline, observer, stop).await;
    tracing::info!("stopping the local subnet ({stopped})");
    stop_all(procs, STOP_GRACE).await;
    let rows = board.read().await.unwrap_or(rows);
    observer.finished(&rows, started.elapsed());
    Ok(Outcome {
        layout,
        rows,
        competitions: plan.competitions,
        stopped,
    })
}

/// The directory, created if missing, as an absolute path (the children run elsewhere).
fn open_layout(dir: &Path) -> Result<Layout, LocalnetError> {
    let io = |what, source| LocalnetError::Io {
        what,
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("creating", e))?;
    let root = dir.canonicalize().map_err(|e| io("resolving", e))?;
    Ok(Layout { root })
}

/// The chain and the wallets registered on it.
struct Subnet {
    chain: EmbeddedChain,
    validator: Wallet,
    miners: Vec<Wallet>,
}

/// Wallets, the chain with every hotkey registered and the validator
/// staked, and commit-reveal switched on where asked.
async fn provision(layout: &Layout, settings: &Settings) -> Result<Subnet, LocalnetError> {
    let (validator, miners) = setup_wallets(layout, settings.miners)?;
    let chain = setup_chain(
        layout,
        settings.block_time,
        commit_rate_limit(&settings.schedule),
        &validator,
        &miners,
    )
    .await?;
    if settings.commit_reveal {
        chain
            .set_commit_reveal(NETUID, COMMIT_REVEAL)
            .await
            .map_err(|source| LocalnetError::Chain {
                what: "switching commit-reveal on".into(),
                source,
            })?;
    }
    Ok(Subnet {
        chain,
        validator,
        miners,
    })
}

/// Each miner's competition and starting model.
struct Plan {
    competitions: Option<Vec<CompetitionSpec>>,
    assigned: Vec<Option<CompetitionSpec>>,
    starts: Vec<Start>,
}

/// Deals the miners over the competitions active now (round robin) and
/// picks each one's starting model.
async fn plan_miners(chain: &EmbeddedChain, settings: &Settings) -> Result<Plan, LocalnetError> {
    let block = chain
        .current_block()
        .await
        .map_err(|source| LocalnetError::Chain {
            what: "reading the current block".into(),
            source,
        })?;
    let competitions = competitions_at(&settings.schedule, block)?;
    let assigned = assign_competitions(competitions.as_deref(), settings.miners);
    if let Some(cs) = &competitions {
        if settings.miners < cs.len() {
            tracing::warn!(
                "{} competitions and {} miners: some competitions have no miner",
                cs.len(),
                settings.miners
            );
        }
    }
    let starts = assigned
        .iter()
        .map(|c| Start::for_competition(settings.size, c.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        competitions,
        assigned,
        starts,
    })
}

/// Writes each distinct starting model once (kept if already there), and the logs directory.
async fn write_starting_models(layout: &Layout, starts: &[Start]) -> Result<(), LocalnetError> {
    let mut distinct: Vec<Start> = Vec::new();
    for s in starts {
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
            .map_err(|source| LocalnetError::Task {
                what: "writing the starting model",
                source,
            })??;
    }
    let logs = layout.logs();
    std::fs::create_dir_all(&logs).map_err(|source| LocalnetError::Io {
        what: "creating",
        path: logs,
        source,
    })
}

/// The children's `--dataset`: the one given, or the short corpus written under the directory.
async fn dataset_spec(layout: &Layout, given: Option<&str>) -> Result<String, LocalnetError> {
    if let Some(d) = given {
        return Ok(d.to_string());
    }
    let dir = layout.corpus();
    tokio::task::spawn_blocking(move || write_short_corpus(&dir))
        .await
        .map_err(|source| LocalnetError::Task {
            what: "writing the local corpus",
            source,
        })??;
    Ok(format!("local:{}", layout.corpus().display()))
}

/// Starts the validator, then each miner.
async fn spawn_children(
    settings: &Settings,
    layout: &Layout,
    dataset: &str,
    plan: &Plan,
) -> Result<Vec<Proc>, LocalnetError> {
    let exe = settings.exe.as_path();
    let schedule = settings.schedule_arg.as_str();
    let mut procs = vec![spawn_validator(exe, layout, dataset, schedule).await?];
    for (i, (start, competition)) in plan.starts.iter().zip(&plan.assigned).enumerate() {
        let miner = MinerSpec {
            index: i,
            size: settings.size,
            start: *start,
            competition: competition.as_ref().map(|c| c.id),
            seed: settings.seed,
        };
        procs.push(spawn_miner(exe, layout, dataset, schedule, &miner).await?);
    }
    Ok(procs)
}

/// What the leaderboard is read from.
struct Board<'a> {
    subnet: &'a Subnet,
    layout: &'a Layout,
    protocol: Protocol,
    started: Instant,
}

impl Board<'_> {
    /// The leaderboard now: the chain, and the validator's latest losses.
    async fn read(&self) -> Result<Vec<Row>, LocalnetError> {
        let s = self.subnet;
        let view = validator_view(&self.layout.validator_dir());
        leaderboard(&s.chain, &s.validator, &s.miners, self.protocol, &view).await
    }

    /// Every [`REFRESH`]: the leaderboard read, logged to
    /// `leaderboard.jsonl` and shown; exited children dropped. Returns why
    /// it stopped and the last leaderboard read.
    async fn supervise(
        &self,
        procs: &mut Vec<Proc>,
        deadline: Option<Instant>,
        observer: &mut dyn Observer,
        stop: impl Future<Output = ()>,
    ) -> (StopReason, Vec<Row>) {
        let mut stop = std::pin::pin!(stop);
        let mut rows = Vec::new();
        let reason = loop {
            tokio::select! {
                () = &mut stop => break StopReason::Interrupted,
                () = tokio::time::sleep(REFRESH) => {}
            }
            match self.read().await {
                Ok(r) => {
                    rows = r;
                    self.append_line(&rows).await;
                    observer.refreshed(&rows, self.started.elapsed());
                }
                Err(e) => tracing::warn!("reading the leaderboard: {e:#}"),
            }
            drop_exited(procs);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break StopReason::TimeUp;
            }
            if procs.is_empty() {
                break StopReason::AllExited;
            }
        };
        (reason, rows)
    }

    /// One line of `leaderboard.jsonl`; a failed write is a warning.
    async fn append_line(&self, rows: &[Row]) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let block = self.subnet.chain.current_block().await.ok();
        let line = leaderboard_line(elapsed, block, rows);
        let path = self.layout.leaderboard();
        if let Err(e) = pretrain_core::fsio::append_line(&path, &line) {
            tracing::warn!("cannot append to {}: {e}", path.display());
        }
    }
}

/// Drops the children that have exited, each with a warning naming its log.
fn drop_exited(procs: &mut Vec<Proc>) {
    procs.retain_mut(|p| match p.exited() {
        Some(status) => {
            tracing::warn!("{} exited ({status}); see {}", p.name, p.log.display());
            false
        }
        None => true,
    });
}

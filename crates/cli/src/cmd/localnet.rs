//! `pretrain localnet`: the whole subnet on this machine. An embedded chain,
//! a local hub and the sample corpus under one directory; a validator and N
//! miners, each its own `pretrain mine` / `pretrain validate` process; a
//! live leaderboard; a JSON summary at the end.
//!
//! The parts (provisioning, starting models, children, leaderboard) are
//! `pretrain_neurons::localnet`; here: the flags, their wiring and the
//! terminal drawing.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use pretrain_chain::Chain;
use pretrain_neurons::localnet::{
    self, competitions_json, short_prefix, Layout, MinerSpec, ModelSize, Row, Start, STOP_GRACE,
};
use serde_json::json;

/// How often the leaderboard is read and drawn.
const REFRESH: Duration = Duration::from_secs(2);

/// Which starting model the miners train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelKind {
    /// A 2-layer, 32-wide GPT-2 (1.6M parameters): a full round in a couple of minutes on 2 cores.
    Tiny,
    /// The subnet's default GPT-2 (122M parameters): what miners really train; slow on a CPU.
    Default,
}

impl From<ModelKind> for ModelSize {
    fn from(k: ModelKind) -> Self {
        match k {
            ModelKind::Tiny => ModelSize::Tiny,
            ModelKind::Default => ModelSize::Default,
        }
    }
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

    let (validator, miners) = localnet::setup_wallets(&layout, args.miners)?;
    let schedule = args.schedule.load()?;
    let protocol = schedule.protocol();
    let chain = localnet::setup_chain(
        &layout,
        args.block_time,
        localnet::commit_rate_limit(&schedule),
        &validator,
        &miners,
    )
    .await?;
    if args.commit_reveal {
        chain
            .set_commit_reveal(
                localnet::NETUID,
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
    let competitions = localnet::competitions_at(&schedule, block)?;
    let assigned = localnet::assign_competitions(competitions.as_deref(), miners.len());
    if let Some(cs) = &competitions {
        if miners.len() < cs.len() {
            tracing::warn!(
                "{} competitions and {} miners: some competitions have no miner",
                cs.len(),
                miners.len()
            );
        }
    }
    let size = ModelSize::from(args.model);
    let starts = assigned
        .iter()
        .map(|c| Start::for_competition(size, c.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
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
            tokio::task::spawn_blocking(move || localnet::write_short_corpus(&dir))
                .await
                .context("writing the local corpus")??;
            format!("local:{}", layout.corpus().display())
        }
    };
    let exe = std::env::current_exe().context("finding the pretrain executable")?;
    let mut procs = Vec::new();
    let schedule_arg = args.schedule.schedule.as_str();
    procs.push(localnet::spawn_validator(&exe, &layout, &dataset, schedule_arg).await?);
    for (i, (start, competition)) in starts.iter().zip(&assigned).enumerate() {
        let miner = MinerSpec {
            index: i,
            size,
            start: *start,
            competition: competition.as_ref().map(|c| c.id),
            seed: args.seed,
        };
        procs.push(localnet::spawn_miner(&exe, &layout, &dataset, schedule_arg, &miner).await?);
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
        let view = localnet::validator_view(&layout.validator_dir());
        match localnet::leaderboard(&chain, &validator, &miners, protocol, &view).await {
            Ok(r) => {
                rows = r;
                let line = localnet::leaderboard_line(
                    started.elapsed().as_secs_f64(),
                    chain.current_block().await.ok(),
                    &rows,
                );
                if let Err(e) = pretrain_core::fsio::append_line(&layout.leaderboard(), &line) {
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
        procs.retain_mut(|p| match p.exited() {
            Some(status) => {
                tracing::warn!("{} exited ({status}); see {}", p.name, p.log.display());
                false
            }
            None => true,
        });
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break "time is up";
        }
        if procs.is_empty() {
            break "every process exited";
        }
    };
    tracing::info!("stopping the local subnet ({stop_reason})");
    localnet::stop_all(procs, STOP_GRACE).await;
    let view = localnet::validator_view(&layout.validator_dir());
    if let Ok(r) = localnet::leaderboard(&chain, &validator, &miners, protocol, &view).await {
        rows = r;
    }
    if tty {
        draw(&rows, started.elapsed(), args.minutes);
    }
    let mut summary = json!({
        "dir": layout.root.display().to_string(),
        "leaderboard": localnet::rows_json(&rows),
    });
    if let (Some(cs), Some(m)) = (&competitions, summary.as_object_mut()) {
        m.insert("competitions".into(), competitions_json(cs, &rows));
    }
    super::out::print_json(&summary)?;
    Ok(())
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
            format!("{}…", short_prefix(&r.hotkey, 10)),
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

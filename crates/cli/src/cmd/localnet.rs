//! `pretrain localnet`: the whole subnet on this machine. An embedded chain,
//! a local hub and the sample corpus under one directory; a validator and N
//! miners, each its own `pretrain mine` / `pretrain validate` process; a
//! live leaderboard; a JSON summary at the end.
//!
//! The run order and its parts (provisioning, starting models, children,
//! leaderboard) are `pretrain_neurons::localnet`; here: the flags, the
//! terminal drawing and one call to `localnet::run`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use pretrain_neurons::localnet::{self, short_prefix, ModelSize, Observer, Row, Settings};

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
    check_flags(&args)?;
    let settings = settings(args)?;
    let mut terminal = Terminal {
        tty: std::io::stderr().is_terminal(),
        minutes: settings.minutes,
        last_logged: None,
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let outcome = rt.block_on(localnet::run(settings, &mut terminal, stop))?;
    super::out::print_json(&outcome.summary_json())
}

/// Refuses flags out of range before anything is written.
fn check_flags(args: &LocalnetArgs) -> anyhow::Result<()> {
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
    Ok(())
}

/// The run's settings: the schedule loaded (checked here, before any child
/// starts; a file is passed on as an absolute path) and this executable for the children.
fn settings(args: LocalnetArgs) -> anyhow::Result<Settings> {
    let schedule = args.schedule.load()?;
    let builtin = pretrain_core::rules::schedule::BUILTIN
        .iter()
        .any(|(name, _)| *name == args.schedule.schedule);
    let schedule_arg = if builtin {
        args.schedule.schedule.clone()
    } else {
        let path = std::path::Path::new(&args.schedule.schedule);
        path.canonicalize()
            .with_context(|| format!("resolving --schedule {}", path.display()))?
            .display()
            .to_string()
    };
    Ok(Settings {
        dir: args.dir,
        miners: args.miners,
        minutes: args.minutes,
        size: ModelSize::from(args.model),
        block_time: args.block_time,
        dataset: args.dataset,
        seed: args.seed,
        schedule,
        schedule_arg,
        commit_reveal: args.commit_reveal,
        exe: std::env::current_exe().context("finding the pretrain executable")?,
    })
}

/// The leaderboard on stderr: redrawn in place on a terminal, logged every
/// 15 seconds otherwise.
struct Terminal {
    tty: bool,
    minutes: Option<f64>,
    last_logged: Option<Instant>,
}

impl Observer for Terminal {
    fn refreshed(&mut self, rows: &[Row], elapsed: Duration) {
        if self.tty {
            draw(rows, elapsed, self.minutes);
        } else if self
            .last_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(15))
        {
            log_rows(rows);
            self.last_logged = Some(Instant::now());
        }
    }

    fn finished(&mut self, rows: &[Row], elapsed: Duration) {
        if self.tty {
            draw(rows, elapsed, self.minutes);
        }
    }
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

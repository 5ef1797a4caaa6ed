//! `pretrain`: the miner, the validator and the tools of the pretraining
//! subnet. Argument parsing and wiring only; the work lives in the library
//! crates. JSON goes to stdout, logs and progress to stderr.

mod cmd;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Bittensor pretraining subnet (subnet 9): miner, validator and tools.
#[derive(Parser, Debug)]
#[command(name = "pretrain", version, about, long_about = None)]
struct Cli {
    /// Log at debug level.
    #[arg(long = "logging.debug", global = true)]
    logging_debug: bool,
    /// Log at trace level.
    #[arg(long = "logging.trace", global = true)]
    logging_trace: bool,
    #[command(subcommand)]
    command: Command,
}

// Each area of the project adds its commands here and in `cmd/`; only
// commands that work are listed.
#[derive(Subcommand, Debug)]
enum Command {
    /// Print the hash of a model directory (what a miner commits).
    Hash(cmd::hash::HashArgs),
    /// Loss of a model directory on a batch of token rows, or on N pages as the validator measures it.
    Eval(cmd::model::EvalArgs),
    /// Architecture, parameters, size, hash and validity of a model directory.
    Inspect(cmd::model::InspectArgs),
    /// Throughput benchmarks (JSON: tokens_per_s, peak_rss_bytes).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Replay one validator scoring step from a JSON file.
    Score(cmd::score::ScoreArgs),
    /// Token ids of JSON Lines text from stdin (GPT-2 tokenizer), a JSON array per line.
    Tokenize(cmd::data::TokenizeArgs),
    /// Bittensor wallets: create, list, show.
    #[command(subcommand)]
    Wallet(cmd::wallet::WalletCommand),
    /// Read the chain (metagraph, commitments); register and stake on the embedded chain.
    #[command(subcommand)]
    Chain(cmd::chain::ChainCommand),
    /// Push a model directory: check it, upload it to the hub, commit its id to the chain.
    Upload(Box<cmd::upload::UploadArgs>),
    /// Mine: train a model (new, a uid's, or from disk), keep the best, push it.
    Mine(Box<cmd::mine::MineArgs>),
    /// The validator: fetch every miner's committed model, evaluate, score, set weights.
    Validate(Box<cmd::validate::ValidateArgs>),
    /// The whole subnet on this machine: a validator and miners on an embedded chain, a live leaderboard.
    Localnet(cmd::localnet::LocalnetArgs),
    /// PNG charts and an HTML page for a miner run, a validator or a localnet directory.
    Report(cmd::report::ReportArgs),
    /// Replay one case of the later rules (secure hash, model id, hash check, epsilon, wins, weights, schedule).
    Rules(cmd::rules::RulesArgs),
    /// Internal: evaluates one model for the validator (JSON lines on stdin/stdout).
    #[command(name = "eval_worker", hide = true)]
    EvalWorker(cmd::validate::EvalWorkerArgs),
}

fn init_logging(cli: &Cli) {
    let default = if cli.logging_trace {
        "trace"
    } else if cli.logging_debug {
        "debug"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a log file or pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() {
    cmd::out::install_broken_pipe_hook();
    let cli = Cli::parse();
    init_logging(&cli);
    let result = match cli.command {
        Command::Hash(args) => cmd::hash::run(args),
        Command::Eval(args) => with_runtime(|rt| cmd::model::run_eval(args, rt)),
        Command::Inspect(args) => cmd::model::run_inspect(args),
        Command::Bench(bench) => cmd::bench::run(bench),
        Command::Score(args) => cmd::score::run(args),
        Command::Tokenize(args) => cmd::data::run_tokenize(args),
        Command::Wallet(c) => cmd::wallet::run(c),
        Command::Chain(c) => with_runtime(|rt| cmd::chain::run(c, rt)),
        Command::Upload(args) => with_runtime(|rt| cmd::upload::run(*args, rt)),
        Command::Mine(args) => with_runtime(|rt| cmd::mine::run(*args, rt)),
        Command::Validate(args) => with_runtime(|rt| cmd::validate::run(*args, rt)),
        Command::Localnet(args) => with_runtime(|rt| cmd::localnet::run(args, rt)),
        Command::Report(args) => cmd::report::run(args),
        Command::Rules(args) => cmd::rules::run(args),
        Command::EvalWorker(args) => cmd::validate::run_worker(args),
    };
    if let Err(err) = result {
        if cmd::out::is_stdout_closed(&err) {
            // The reader went away (`| head`): nothing to report, as for any Unix filter.
            std::process::exit(cmd::out::BROKEN_PIPE_EXIT);
        }
        eprintln!("error: {}", one_line(&err));
        std::process::exit(1);
    }
}

/// Runs a command that talks to a network on the process's one async
/// runtime, built here and only for such commands. Two workers are enough
/// for I/O; heavy compute runs on blocking threads or its own threads.
fn with_runtime(
    command: impl FnOnce(&tokio::runtime::Runtime) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| anyhow::Error::new(e).context("starting the async runtime"))?;
    command(&runtime)
}

/// The error and its causes on one line, joined with ": ". Every error of
/// the project either prints its cause or exposes it as `source()`, never
/// both, so nothing is said twice.
fn one_line(err: &anyhow::Error) -> String {
    err.chain()
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn causes_are_joined_on_one_line() {
        let inner = std::io::Error::other("disk on fire");
        let err = anyhow::Error::new(inner)
            .context("reading x")
            .context("loading\nthe model");
        assert_eq!(one_line(&err), "loading the model: reading x: disk on fire");
    }
}

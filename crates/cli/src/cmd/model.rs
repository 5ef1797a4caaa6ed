//! `pretrain eval`, `pretrain inspect` and the model benchmarks of `pretrain bench`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use pretrain_core::bounded::{check_size, read_regular, SMALL_FILE_LIMIT};
use pretrain_model::bench::{bench_eval, bench_train, BenchConfig};
use pretrain_model::check::{check_model_dir, dir_size, Limits};
use pretrain_model::model::read_config;
use pretrain_model::CausalLm;
use serde_json::{json, Value};

use super::out::print_json;

/// Largest `--tokens` file read.
pub const MAX_TOKENS_FILE_BYTES: u64 = 256 << 20;
/// Most token ids in one `--tokens` batch.
pub const MAX_BATCH_TOKENS: u64 = 1 << 22;
/// Most pages `eval --pages` evaluates (the validator uses a few per step).
pub const MAX_PAGES: u64 = 10_000;
/// Most rows per batch in `bench`.
pub const MAX_BENCH_BATCH: u64 = 1024;
/// Most tokens per row in `bench`.
pub const MAX_BENCH_SEQ_LEN: u64 = 1 << 16;
/// Most timed iterations in `bench`.
pub const MAX_BENCH_ITERS: u64 = 100_000;
/// Most worker threads.
pub const MAX_THREADS: u64 = 1024;

/// Arguments of `pretrain eval`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["tokens", "pages"])))]
pub struct EvalArgs {
    /// Model directory (`save_pretrained` layout).
    #[arg(long)]
    pub model: PathBuf,
    /// One batch of equal-length token rows: a JSON file `[[id, ...], ...]`,
    /// or JSON Lines of `[id, ...]` (what `pretrain tokenize` prints).
    #[arg(long, conflicts_with = "pages")]
    pub tokens: Option<PathBuf>,
    /// Instead of `--tokens`: evaluate on N random pages as the validator
    /// does (batch size 1, 1024 tokens; a failing batch counts as +inf).
    #[arg(long)]
    pub pages: Option<usize>,
    /// Where pages come from with `--pages`: `falcon` (the RefinedWeb rows
    /// API) or `local:DIR`; default: the sample corpus shipped in the repository.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Seed of the page sampling with `--pages` (default: random; it is
    /// printed, so a run can be replayed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Device: `cpu`, or `cuda` / `cuda:N` (needs the `cuda` build feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub compute: super::args::ComputeArgs,
}

/// Arguments of `pretrain inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model directory to inspect.
    pub dir: PathBuf,
}

/// Arguments of `pretrain bench eval|train`.
#[derive(Args, Debug)]
pub struct ModelBenchArgs {
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed iterations after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Rows per batch.
    #[arg(long = "batch_size", alias = "batch-size", default_value_t = 1)]
    pub batch_size: usize,
    /// Tokens per row.
    #[arg(long = "seq_len", alias = "seq-len", default_value_t = 1024)]
    pub seq_len: usize,
    /// Use this model's `config.json` instead of the default GPT-2 (random weights either way).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub device: super::args::DeviceArgs,
}

/// Reads the token batch of `eval --tokens` (see [`parse_tokens`]).
pub fn read_tokens(path: &Path) -> anyhow::Result<Vec<Vec<u32>>> {
    let text = read_regular(path, MAX_TOKENS_FILE_BYTES)
        .with_context(|| format!("reading {}", path.display()))?;
    parse_tokens(&text).with_context(|| path.display().to_string())
}

/// Parses a token batch: one JSON document `[[id, ...], ...]`, or JSON
/// Lines of `[id, ...]` as `tokenize` prints them (blank lines skipped, one
/// line is one row). Ids are non-negative 32-bit integers and the total
/// number of ids is bounded before the model sees them.
pub fn parse_tokens(text: &[u8]) -> anyhow::Result<Vec<Vec<u32>>> {
    const EXPECTED: &str =
        "expected JSON [[id, ...], ...] or JSON Lines of [id, ...], with non-negative 32-bit integers";
    let rows: Vec<Vec<u32>> = match serde_json::from_slice(text) {
        Ok(rows) => rows,
        Err(whole) => {
            let lines: Vec<(usize, &[u8])> = text
                .split(|&b| b == b'\n')
                .enumerate()
                .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
                .collect();
            if lines.is_empty() {
                return Err(anyhow::Error::new(whole).context(EXPECTED));
            }
            let mut rows = Vec::with_capacity(lines.len());
            for (i, line) in lines {
                let row: Vec<u32> = match serde_json::from_slice(line) {
                    Ok(row) => row,
                    // A single document that is not a batch: its own error is the useful one.
                    Err(_) if i == 0 && !text.contains(&b'\n') => {
                        return Err(anyhow::Error::new(whole).context(EXPECTED))
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("line {}", i + 1))
                            .context(EXPECTED))
                    }
                };
                rows.push(row);
            }
            rows
        }
    };
    let total: u64 = rows.iter().map(|r| r.len() as u64).sum();
    check_size("the number of tokens in --tokens", total, MAX_BATCH_TOKENS)
        .map_err(anyhow::Error::msg)?;
    Ok(rows)
}

/// Non-finite floats as the reference's JSON convention writes them.
fn json_f64(x: f64) -> Value {
    if x.is_nan() {
        json!("nan")
    } else if x == f64::INFINITY {
        json!("inf")
    } else if x == f64::NEG_INFINITY {
        json!("-inf")
    } else {
        json!(x)
    }
}

/// Prints `{"loss": f}` for one batch, or, with `--pages`, the mean loss
/// over the validator's batches with each batch's loss, the pages and the seed.
pub fn run_eval(args: EvalArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    if let Some(n) = args.pages {
        check_size("--pages", n as u64, MAX_PAGES).map_err(anyhow::Error::msg)?;
    }
    let device = super::args::parse_device(&args.device)?;
    args.compute.options().check(&device)?;
    // The validator's own load: its checks (size, parameters, architecture, tensors)
    // before any weight is read, then finite weights. What it refuses, it scores +inf.
    let model =
        pretrain_model::evaluate::load_for_eval_with(&args.model, &device, args.compute.options())
            .with_context(|| {
                format!(
                    "{} is not a model the validator accepts: it would score +inf on every batch",
                    args.model.display()
                )
            })?;
    let Some(n_pages) = args.pages else {
        let Some(tokens) = &args.tokens else {
            bail!("give --tokens FILE or --pages N");
        };
        let batch = read_tokens(tokens)?;
        let loss = model.loss(&batch).context("computing the loss")?;
        return print_json(
            &json!({ "loss": json_f64(pretrain_model::evaluate::as_scored(loss) as f64) }),
        );
    };
    eval_pages(&args, &model, n_pages, runtime)
}

/// `eval --pages N`: N random pages of the dataset cut into the validator's
/// batches, each one's loss as the validator scores it, and their mean.
fn eval_pages(
    args: &EvalArgs,
    model: &pretrain_model::Model,
    n_pages: usize,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    if n_pages == 0 {
        bail!("--pages must be at least 1");
    }
    let dataset = args
        .dataset
        .clone()
        .unwrap_or_else(|| format!("local:{}", pretrain_data::sample_corpus_dir().display()));
    let seed = args.seed.unwrap_or_else(pretrain_data::random_seed);
    let source = pretrain_data::open_source(&dataset)
        .with_context(|| format!("opening dataset {dataset}"))?;
    let pages = pretrain_data::sample_pages(seed, source.page_range(), n_pages);
    tracing::info!(%dataset, seed, ?pages, "loading pages");
    let tokenizer = pretrain_data::Tokenizer::gpt2().context("loading the GPT-2 tokenizer")?;
    let batches = runtime
        .block_on(pretrain_data::load_batches(
            source.as_ref(),
            &tokenizer,
            &pages,
            1,
            pretrain_core::constants::SEQUENCE_LENGTH,
        ))
        .with_context(|| format!("loading pages {pages:?} of {dataset}"))?;
    if batches.is_empty() {
        bail!("pages {pages:?} of {dataset} hold fewer than one batch of tokens");
    }
    let losses = batch_losses(model, &batches);
    let mean = losses.iter().sum::<f64>() / losses.len() as f64;
    print_json(&json!({
        "loss": json_f64(mean),
        "losses": losses.iter().map(|&l| json_f64(l)).collect::<Vec<_>>(),
        "pages": pages,
        "seed": seed,
        "dataset": dataset,
    }))
}

/// Each batch's loss as the validator scores it (a failing batch is +inf),
/// with a progress bar on a terminal and a log line per batch elsewhere.
fn batch_losses(model: &pretrain_model::Model, batches: &[pretrain_data::Batch]) -> Vec<f64> {
    let bar = indicatif::ProgressBar::new(batches.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} batches ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("evaluating");
    // The bar draws only on a terminal; a log file gets one line per batch instead.
    let log_progress = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut losses = Vec::with_capacity(batches.len());
    for (i, batch) in batches.iter().enumerate() {
        losses.push(
            pretrain_model::evaluate::as_scored(pretrain_model::loss_or_inf(model, batch)) as f64,
        );
        bar.inc(1);
        if log_progress {
            tracing::info!(
                batch = i + 1,
                of = batches.len(),
                loss = losses[i],
                "evaluated"
            );
        }
    }
    bar.finish_and_clear();
    losses
}

/// Prints `{"architecture", "params", "size_bytes", "hash", "valid", "reason"}`:
/// `valid` is every check the validator makes, finite weights included.
pub fn run_inspect(args: InspectArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let size = dir_size(dir).with_context(|| format!("reading {}", dir.display()))?;
    let hash = pretrain_core::hash_of_directory(dir)
        .with_context(|| format!("hashing {}", dir.display()))?;
    let config = read_config(dir).ok().map(|(_, c)| c);
    // The checks before download, then the one after load (finite weights).
    let checked = check_model_dir(dir, Limits::default())
        .and_then(|_| pretrain_model::check_finite_weights(dir));
    let (valid, reason) = match checked {
        Ok(()) => (true, Value::Null),
        Err(e) => (false, json!(e.to_string())),
    };
    let out = json!({
        "architecture": config.as_ref().map(|c| c.architecture().class_name()),
        "params": config.as_ref().map(|c| c.param_count()),
        "size_bytes": size,
        "hash": hash,
        "valid": valid,
        "reason": reason,
    });
    print_json(&out)
}

/// Runs the evaluation (`train == false`) or training benchmark and prints its JSON.
pub fn run_bench(args: ModelBenchArgs, train: bool) -> anyhow::Result<()> {
    // Every size from the command line is bounded before anything is allocated from it.
    let bound = |flag: &str, v: usize, max: u64| {
        check_size(flag, v as u64, max).map_err(anyhow::Error::msg)
    };
    bound("--batch_size", args.batch_size, MAX_BENCH_BATCH)?;
    bound("--seq_len", args.seq_len, MAX_BENCH_SEQ_LEN)?;
    bound("--iters", args.iters, MAX_BENCH_ITERS)?;
    if args.batch_size == 0 || args.seq_len < 2 {
        bail!("--batch_size must be at least 1 and --seq_len at least 2");
    }
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        bound("--threads", n, MAX_THREADS)?;
        // candle's matmul reads RAYON_NUM_THREADS; the global pool serves the rest.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting the thread count")?;
    }
    let mut cfg = BenchConfig {
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        iters: args.iters.max(1),
        device: args.device.open()?,
        options: args.device.compute.options(),
        ..BenchConfig::default()
    };
    if let Some(p) = &args.config {
        let text = read_regular(p, SMALL_FILE_LIMIT)
            .with_context(|| format!("reading {}", p.display()))?;
        cfg.config_json =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", p.display()))?;
        // Random weights of the config are allocated: bounded as a model to evaluate would be.
        let parsed = pretrain_model::config::ModelConfig::from_json(&cfg.config_json)
            .with_context(|| format!("{} is not a supported config", p.display()))?;
        let limit = Limits::default().max_params;
        if parsed.param_count() > limit {
            bail!(
                "{} declares {} parameters, over the limit of {limit}",
                p.display(),
                parsed.param_count()
            );
        }
    }
    let r = if train {
        bench_train(&cfg)
    } else {
        bench_eval(&cfg)
    }
    .context("running the benchmark")?;
    print_json(&r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn token_batches_in_both_forms() {
        assert_eq!(
            parse_tokens(b"[[1, 2], [3]]").unwrap(),
            vec![vec![1, 2], vec![3]]
        );
        // `tokenize`'s output, one line included, blank lines skipped.
        assert_eq!(parse_tokens(b"[5, 6]\n").unwrap(), vec![vec![5, 6]]);
        assert_eq!(
            parse_tokens(b"[5]\n\n[]\n[7]").unwrap(),
            vec![vec![5], vec![], vec![7]]
        );
        for (bad, why) in [
            (&b""[..], "expected JSON"),
            (b"[[-1]]", "expected JSON"),
            (b"[[4294967296]]", "expected JSON"),
            (b"[1, 2]\n[x]", "line 2"),
            (b"{\"a\": 1}", "expected JSON"),
        ] {
            let err = format!("{:#}", parse_tokens(bad).unwrap_err());
            assert!(
                err.contains(why),
                "{:?}: {err}",
                String::from_utf8_lossy(bad)
            );
        }
        let over = format!(
            "[[{}]]",
            vec!["0"; (MAX_BATCH_TOKENS + 1) as usize].join(",")
        );
        let err = format!("{:#}", parse_tokens(over.as_bytes()).unwrap_err());
        assert!(err.contains("number of tokens"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_bytes_parse_or_are_refused_with_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            match parse_tokens(&bytes) {
                Ok(rows) => prop_assert!(rows.iter().map(Vec::len).sum::<usize>() as u64 <= MAX_BATCH_TOKENS),
                Err(e) => {
                    let text = format!("{e:#}");
                    prop_assert!(text.contains("expected JSON"), "{}", text);
                }
            }
        }

        #[test]
        fn json_shaped_text_parses_or_is_refused(text in "[\\[\\], 0-9\n-]{0,64}") {
            if let Err(e) = parse_tokens(text.as_bytes()) {
                let text = format!("{e:#}");
                prop_assert!(text.contains("expected JSON"), "{}", text);
            }
        }

        #[test]
        fn both_forms_round_trip(rows in proptest::collection::vec(proptest::collection::vec(any::<u32>(), 0..8), 1..6)) {
            let whole = serde_json::to_string(&rows).unwrap();
            prop_assert_eq!(parse_tokens(whole.as_bytes()).unwrap(), rows.clone());
            let lines: String = rows
                .iter()
                .map(|r| format!("{}\n", serde_json::to_string(r).unwrap()))
                .collect();
            // One empty row as a line, `[]`, is also the empty batch: the one ambiguous text.
            if rows != vec![Vec::<u32>::new()] {
                prop_assert_eq!(parse_tokens(lines.as_bytes()).unwrap(), rows);
            }
        }
    }
}

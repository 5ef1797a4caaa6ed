//! `pretrain tokenize` and `pretrain bench tokenize`.

use std::io::{BufRead, BufWriter, Write};

use anyhow::{bail, Context};
use clap::Args;
use pretrain_data::{
    bench_tokenize, read_all_documents, sample_corpus_dir, LocalSource, Tokenizer,
};

/// Arguments of `pretrain tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Apply the dataset rule: keep the first 1024 ids, then append eos (50256).
    #[arg(long)]
    pub document: bool,
}

/// Arguments of `pretrain bench tokenize`.
#[derive(Args, Debug)]
pub struct BenchTokenizeArgs {
    /// Threads tokenizing each page of 100 documents.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Dataset to tokenize, `local:DIR` (default: the sample corpus shipped with pretrain-data).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Passes over the documents.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

/// The text of one input line: a JSON string, or an object with a string `text`.
fn line_text(line: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(line).ok()? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Object(mut map) => match map.remove("text")? {
            serde_json::Value::String(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// Reads JSON Lines from stdin and prints one JSON array of ids per line
/// (blank lines are skipped).
pub fn run_tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::gpt2().context("loading the tokenizer")?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for (index, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let Some(text) = line_text(&line) else {
            bail!(
                "line {}: expected a JSON string or an object with a string \"text\"",
                index + 1
            );
        };
        let ids = if args.document {
            tokenizer.encode_document(&text)
        } else {
            tokenizer.encode(&text)
        }
        .with_context(|| format!("line {}", index + 1))?;
        serde_json::to_writer(&mut out, &ids)?;
        out.write_all(b"\n")?;
    }
    out.flush().context("writing stdout")?;
    Ok(())
}

/// Tokenizer throughput; prints `{"mb_per_s", "tokens_per_s", "peak_rss_bytes", ...}`.
pub fn run_bench_tokenize(args: BenchTokenizeArgs) -> anyhow::Result<()> {
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let dir = match args.dataset.as_deref() {
        None => sample_corpus_dir(),
        Some(spec) => match spec.strip_prefix("local:") {
            Some(dir) if !dir.is_empty() => dir.into(),
            _ => bail!("--dataset must be local:DIR for the benchmark (got {spec:?})"),
        },
    };
    let source = LocalSource::open(&dir).context("opening the dataset")?;
    let documents = read_all_documents(&source).context("reading the dataset")?;
    let tokenizer = Tokenizer::gpt2().context("loading the tokenizer")?;
    tracing::info!(
        documents = documents.len(),
        threads = args.threads,
        dir = %dir.display(),
        "tokenizing"
    );
    let result = bench_tokenize(&tokenizer, &documents, args.threads, args.repeat)
        .context("running the benchmark")?;
    let mut json = serde_json::to_value(&result)?;
    json["peak_rss_bytes"] = pretrain_model::bench::peak_rss_bytes().into();
    println!("{json}");
    Ok(())
}

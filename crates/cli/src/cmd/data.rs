//! `pretrain tokenize` and `pretrain bench tokenize`.

use std::io::{BufRead, BufWriter, Read, Write};

use anyhow::{bail, Context};
use clap::Args;
use pretrain_core::bounded::check_size;
use pretrain_data::{
    bench_tokenize, read_all_documents, sample_corpus_dir, LocalSource, Tokenizer,
};

use super::out::{print_json, stdout_error};

/// Longest input line of `pretrain tokenize`.
pub const MAX_LINE_BYTES: u64 = 64 << 20;

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

/// Reads JSON Lines from stdin and prints one JSON array of ids per input
/// line, so output line N belongs to input line N (a blank line prints `[]`).
pub fn run_tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::gpt2().context("loading the tokenizer")?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut input = stdin.lock();
    let mut buf = Vec::new();
    for index in 0u64.. {
        buf.clear();
        // One line at most MAX_LINE_BYTES: a newline-free stream must not fill the memory.
        let n = (&mut input)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .context("reading stdin")?;
        if n == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if n as u64 > MAX_LINE_BYTES {
            bail!("line {}: longer than {MAX_LINE_BYTES} bytes", index + 1);
        }
        let line =
            std::str::from_utf8(&buf).with_context(|| format!("line {}: not UTF-8", index + 1))?;
        if line.trim().is_empty() {
            out.write_all(b"[]\n").map_err(stdout_error)?;
            continue;
        }
        let Some(text) = line_text(line) else {
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
        let mut row = serde_json::to_vec(&ids)?;
        row.push(b'\n');
        out.write_all(&row).map_err(stdout_error)?;
    }
    out.flush().map_err(stdout_error)?;
    Ok(())
}

/// Tokenizer throughput; prints `{"mb_per_s", "tokens_per_s", "peak_rss_bytes", ...}`.
pub fn run_bench_tokenize(args: BenchTokenizeArgs) -> anyhow::Result<()> {
    if args.threads == 0 || args.repeat == 0 {
        bail!("--threads and --repeat must be at least 1");
    }
    check_size("--threads", args.threads as u64, 1024).map_err(anyhow::Error::msg)?;
    check_size("--repeat", args.repeat as u64, 100_000).map_err(anyhow::Error::msg)?;
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
        repeat = args.repeat,
        threads = args.threads,
        dir = %dir.display(),
        "tokenizing"
    );
    let result = bench_tokenize(&tokenizer, &documents, args.threads, args.repeat)
        .context("running the benchmark")?;
    let mut json = serde_json::to_value(&result)?;
    json["peak_rss_bytes"] = pretrain_model::bench::peak_rss_bytes().into();
    print_json(&json)
}

//! Tokenizer throughput, for `pretrain bench tokenize`.

use std::time::Instant;

use serde::Serialize;

use crate::error::DataError;
use crate::source::ROWS_PER_PAGE;
use crate::tokenizer::Tokenizer;

/// What one tokenizer benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct TokenizeBench {
    /// Megabytes (10^6 bytes) of UTF-8 text tokenized per second.
    pub mb_per_s: f64,
    /// Token ids produced per second.
    pub tokens_per_s: f64,
    /// Threads used.
    pub threads: usize,
    /// Documents in the dataset (each tokenized `repeat` times), as the
    /// Hugging Face side (`hf_tokenize_bench.py`) counts them.
    pub documents: usize,
    /// Passes over the dataset.
    pub repeat: usize,
    /// Bytes of text tokenized (all passes).
    pub bytes: u64,
    /// Ids produced over all passes (the document rule: truncation and eos included).
    pub tokens: u64,
    /// Wall time of the tokenizing, in seconds.
    pub seconds: f64,
}

/// Tokenizes `documents` with the dataset rule, a page (100 documents) at a
/// time as the validator does, on `threads` threads (at least 1), `repeat`
/// times over.
pub fn bench_tokenize(
    tokenizer: &Tokenizer,
    documents: &[String],
    threads: usize,
    repeat: usize,
) -> Result<TokenizeBench, DataError> {
    let threads = threads.max(1);
    let repeat = repeat.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| DataError::Task(e.to_string()))?;
    // Every thread builds its own encoder on first use (~30 ms, see
    // `tokenizer`): a warm-up pass keeps that out of the timing.
    pool.install(|| {
        rayon::broadcast(|_| tokenizer.encode("warm up").map(|_| ()))
            .into_iter()
            .collect::<Result<(), _>>()
    })?;
    let started = Instant::now();
    let mut tokens = 0u64;
    for _ in 0..repeat {
        for page in documents.chunks(ROWS_PER_PAGE) {
            // One code path for every thread count, one thread included.
            let ids = pool.install(|| tokenizer.encode_documents(page))?;
            tokens += ids.len() as u64;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let bytes = repeat as u64 * documents.iter().map(|d| d.len() as u64).sum::<u64>();
    Ok(TokenizeBench {
        mb_per_s: bytes as f64 / 1e6 / seconds,
        tokens_per_s: tokens as f64 / seconds,
        threads,
        documents: documents.len(),
        repeat,
        bytes,
        tokens,
        seconds,
    })
}

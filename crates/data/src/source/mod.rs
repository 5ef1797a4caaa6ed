//! Page sources: where the documents come from. A page is the (at most) 100
//! documents starting at a row offset, as the datasets-server rows API
//! returns them.

mod falcon;
mod local;

use std::ops::RangeInclusive;
use std::sync::Arc;

use futures_util::future::try_join_all;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::batch::{make_batches, Batch};
use crate::error::DataError;
use crate::tokenizer::Tokenizer;

pub use falcon::{FalconConfig, FalconSource, FALCON_BASE_URL, FALCON_DATASET};
pub use local::{read_all_documents, LocalSource};
pub use pretrain_core::constants::{MAX_PAGE, ROWS_PER_PAGE};

/// A source of pages of documents (the rows API, or local files).
#[async_trait::async_trait]
pub trait PageSource: Send + Sync + std::fmt::Debug {
    /// A short name for logs, e.g. `falcon` or `local:/data/refinedweb`.
    fn name(&self) -> String;

    /// The page offsets that sampling draws from.
    fn page_range(&self) -> RangeInclusive<u64>;

    /// The document texts of the page starting at row `page`, in row order
    /// (at most [`ROWS_PER_PAGE`]; fewer near the end of the data).
    async fn fetch_page(&self, page: u64) -> Result<Vec<String>, DataError>;
}

/// Opens the source named by a `--dataset` value: `falcon` (the rows API
/// with default settings) or `local:DIR` (Parquet/JSONL files under DIR).
/// Opening a local directory reads the file footers/lines to count rows.
pub fn open_source(spec: &str) -> Result<Arc<dyn PageSource>, DataError> {
    if spec == "falcon" {
        return Ok(Arc::new(FalconSource::new(FalconConfig::default())?));
    }
    match spec.strip_prefix("local:") {
        Some(dir) if !dir.is_empty() => Ok(Arc::new(LocalSource::open(dir)?)),
        _ => Err(DataError::UnknownDataset(spec.to_string())),
    }
}

/// A fresh random seed for [`sample_pages`] (log it so the step can be replayed).
pub fn random_seed() -> u64 {
    rand::thread_rng().gen()
}

/// `n` page offsets drawn uniformly (with replacement, as the original's
/// `random.randint`) from `range`. The same seed always gives the same pages.
pub fn sample_pages(seed: u64, range: RangeInclusive<u64>, n: usize) -> Vec<u64> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    if range.is_empty() {
        return Vec::new();
    }
    (0..n).map(|_| rng.gen_range(range.clone())).collect()
}

/// The documents of `pages`, fetched concurrently, in the order of `pages`.
pub async fn fetch_pages(
    source: &dyn PageSource,
    pages: &[u64],
) -> Result<Vec<Vec<String>>, DataError> {
    try_join_all(pages.iter().map(|&page| source.fetch_page(page))).await
}

/// The token buffer of `pages` as the original builds it: for each page in
/// order, for each document in order, its first 1024 ids and eos. Pages are
/// fetched concurrently and each is tokenized, on all cores, off the async
/// runtime as soon as it arrives.
pub async fn load_tokens(
    source: &dyn PageSource,
    tokenizer: &Tokenizer,
    pages: &[u64],
) -> Result<Vec<u32>, DataError> {
    let parts = try_join_all(pages.iter().map(|&page| async move {
        let documents = source.fetch_page(page).await?;
        let tokenizer = tokenizer.clone();
        tokio::task::spawn_blocking(move || tokenizer.encode_documents(&documents))
            .await
            .map_err(|e| DataError::Task(e.to_string()))?
    }))
    .await?;
    Ok(parts.concat())
}

/// The batches of `pages` (see [`load_tokens`] and [`make_batches`]).
pub async fn load_batches(
    source: &dyn PageSource,
    tokenizer: &Tokenizer,
    pages: &[u64],
    batch_size: usize,
    sequence_length: usize,
) -> Result<Vec<Batch>, DataError> {
    let buffer = load_tokens(source, tokenizer, pages).await?;
    make_batches(&buffer, batch_size, sequence_length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_seeded_and_in_range() {
        let a = sample_pages(7, 1..=MAX_PAGE, 50);
        assert_eq!(a, sample_pages(7, 1..=MAX_PAGE, 50));
        assert_ne!(a, sample_pages(8, 1..=MAX_PAGE, 50));
        assert!(a.iter().all(|p| (1..=MAX_PAGE).contains(p)));
        assert_eq!(sample_pages(1, 5..=5, 3), vec![5, 5, 5]);
    }

    #[test]
    fn unknown_dataset_names_are_errors() {
        for spec in ["", "falcon2", "local:", "s3://x"] {
            let err = open_source(spec).unwrap_err();
            assert!(matches!(err, DataError::UnknownDataset(_)), "{spec}: {err}");
        }
    }
}

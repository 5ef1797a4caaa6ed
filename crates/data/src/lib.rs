//! Text data for the pretraining subnet: the GPT-2 tokenizer, page sources
//! (the Falcon RefinedWeb rows API and local Parquet/JSONL directories),
//! seeded page sampling and batching — all as the original subnet does it.
//!
//! # How the miner and the validator use it
//!
//! ```no_run
//! # async fn step() -> Result<(), pretrain_data::DataError> {
//! use pretrain_data::{load_batches, open_source, random_seed, sample_pages, Tokenizer};
//!
//! let source = open_source("local:/data/refinedweb")?; // or "falcon"
//! let tokenizer = Tokenizer::gpt2()?;
//! let seed = random_seed(); // log it: the same seed gives the same pages
//! let pages = sample_pages(seed, source.page_range(), 3);
//! let batches = load_batches(source.as_ref(), &tokenizer, &pages, 1, 1024).await?;
//! for batch in &batches {
//!     // batch: Vec<Vec<u32>>, 1 row of 1024 ids
//! #   let _ = batch;
//! }
//! # Ok(()) }
//! ```
//!
//! - [`Tokenizer`]: `encode` (as `tokenizer(text).input_ids`, with
//!   `<|endoftext|>` as the special id 50256), `encode_document` (the dataset
//!   rule: first 1024 ids, then eos), `encode_documents` (a page on all
//!   cores), `decode`.
//! - [`PageSource`]: `fetch_page(offset)` gives the (at most) 100 documents of
//!   a page; `page_range()` the offsets to draw from. Backends:
//!   [`FalconSource`] (the rows API, retries and timeouts from
//!   [`FalconConfig`]) and [`LocalSource`]; [`open_source`] builds one from a
//!   `--dataset` value.
//! - [`sample_pages`]: uniform, seeded; [`fetch_pages`], [`load_tokens`] (the
//!   token buffer of pages) and [`load_batches`]; [`make_batches`] for a buffer
//!   already in hand.
//! - [`write_refinedweb_parquet`]: documents as a RefinedWeb-schema Parquet file.
//! - [`sample_corpus_dir`]: the small corpus shipped in the repository, for
//!   `--dataset local:...` without any download.

mod batch;
mod bench;
mod error;
mod parquet_out;
mod source;
mod tokenizer;

pub use batch::{make_batches, remainder_len, Batch};
pub use bench::{bench_tokenize, TokenizeBench};
pub use error::DataError;
pub use parquet_out::{write_refinedweb_parquet, RefinedWebRow};
pub use source::{
    fetch_pages, load_batches, load_tokens, open_source, random_seed, read_all_documents,
    sample_pages, FalconConfig, FalconSource, LocalSource, PageSource, FALCON_BASE_URL,
    FALCON_DATASET, MAX_PAGE, ROWS_PER_PAGE,
};
pub use tokenizer::{Tokenizer, EOS_TOKEN, EOS_TOKEN_ID, MAX_DOCUMENT_TOKENS, VOCAB_SIZE};

/// The directory of the sample corpus shipped with this crate (RefinedWeb's
/// Parquet schema; see `corpus/README.md`). A build-time path: valid where
/// the repository was built.
pub fn sample_corpus_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))
}

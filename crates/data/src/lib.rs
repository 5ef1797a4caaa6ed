//! Text data: the GPT-2 tokenizer, page sources (the Falcon RefinedWeb rows
//! API and local Parquet/JSONL directories), page sampling and batching.

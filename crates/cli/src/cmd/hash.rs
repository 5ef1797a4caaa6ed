//! `pretrain hash DIR`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::out::print_line;

/// Arguments of `pretrain hash`.
#[derive(Args, Debug)]
pub struct HashArgs {
    /// Model directory to hash.
    pub dir: PathBuf,
}

/// Prints the directory hash and nothing else.
pub fn run(args: HashArgs) -> anyhow::Result<()> {
    let hash = pretrain_core::hash_of_directory(&args.dir)
        .with_context(|| format!("hashing {}", args.dir.display()))?;
    print_line(&hash)
}

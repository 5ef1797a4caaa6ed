//! `pretrain hash DIR`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::out::print_line;

/// Arguments of `pretrain hash`.
#[derive(Args, Debug)]
pub struct HashArgs {
    /// Model directory to hash. By default only the files `from_pretrained`
    /// fetches are hashed (config, weights, generation config): the hash a
    /// miner commits for it and a validator recomputes after its download,
    /// so a cloned Hub repo's `.gitattributes`, README or `.git` do not count.
    pub dir: PathBuf,
    /// Hash every file under DIR instead (SPEC's `hash_of_directory` of the
    /// whole tree), as the original hashes a `save_pretrained` directory.
    #[arg(long = "all_files")]
    pub all_files: bool,
}

/// Prints the directory hash and nothing else.
pub fn run(args: HashArgs) -> anyhow::Result<()> {
    let hash = if args.all_files {
        pretrain_core::hash_of_directory(&args.dir)
            .with_context(|| format!("hashing every file of {}", args.dir.display()))?
    } else {
        pretrain_store::pretrained::hash_of_fetched_files(&args.dir).with_context(|| {
            format!(
                "hashing the model files of {} (--all_files hashes every file)",
                args.dir.display()
            )
        })?
    };
    print_line(&hash)
}

//! `pretrain score FILE`: replays one validator scoring step.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use pretrain_core::bounded::{read_limited, read_regular};
use pretrain_core::{StepJson, StepOutputJson};

use super::out::print_json;

/// Largest scoring step file (or stdin) read.
pub const MAX_STEP_BYTES: u64 = 256 << 20;

/// Arguments of `pretrain score`.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// JSON file with one step's inputs, in the format of
    /// `reference/scoring/cases.json` (`-` reads stdin).
    pub file: PathBuf,
}

/// Runs the validator's scoring on the file's inputs and prints the result.
pub fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let bytes = if args.file.as_os_str() == "-" {
        read_limited(std::io::stdin().lock(), MAX_STEP_BYTES, "stdin").context("reading stdin")?
    } else {
        read_regular(&args.file, MAX_STEP_BYTES)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let invalid = || format!("{} is not a valid scoring step", args.file.display());
    let step: StepJson = serde_json::from_slice(&bytes).with_context(invalid)?;
    // Sizes are bounded in there, before anything is allocated from them.
    let input = step.to_input().with_context(invalid)?;
    let out = input.run().context("scoring")?;
    print_json(&StepOutputJson::new(&input.uids, &out))
}

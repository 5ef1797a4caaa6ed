//! `pretrain score FILE`: replays one validator scoring step.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use pretrain_core::{StepJson, StepOutputJson};

/// Arguments of `pretrain score`.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// JSON file with one step's inputs, in the format of
    /// `reference/scoring/cases.json` (`-` reads stdin).
    pub file: PathBuf,
}

/// Runs the validator's scoring on the file's inputs and prints the result.
pub fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let step: StepJson = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid scoring step", args.file.display()))?;
    let input = step
        .to_input()
        .with_context(|| format!("{} is not a valid scoring step", args.file.display()))?;
    let out = input.run().context("scoring")?;
    let json = serde_json::to_string(&StepOutputJson::new(&input.uids, &out))?;
    println!("{json}");
    Ok(())
}

//! `pretrain score FILE`: replays one validator scoring step.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use pretrain_core::bounded::{check_size, read_limited, read_regular};
use pretrain_core::{StepJson, StepOutputJson};

use super::out::print_json;

/// Largest scoring step file (or stdin) read.
pub const MAX_STEP_BYTES: u64 = 256 << 20;
/// Most uids a subnet can have (uids are 16-bit on chain).
pub const MAX_UIDS: u64 = 1 << 16;
/// Most batches per uid in one step.
pub const MAX_BATCHES: u64 = 1 << 20;
/// Most (uid, batch) losses one step may hold or make.
pub const MAX_LOSSES: u64 = 1 << 26;

/// Arguments of `pretrain score`.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// JSON file with one step's inputs, in the format of
    /// `reference/scoring/cases.json` (`-` reads stdin).
    pub file: PathBuf,
}

/// Bounds every size of the step before the scoring allocates from it: a
/// small file must not ask for a huge vector (`n_total_uids` = 2^64-1).
pub fn check_step_sizes(step: &StepJson) -> Result<(), String> {
    check_size("n_total_uids", step.n_total_uids as u64, MAX_UIDS)?;
    check_size(
        "the number of uids",
        step.uids.len() as u64,
        step.n_total_uids as u64,
    )?;
    check_size("n_batches", step.n_batches as u64, MAX_BATCHES)?;
    check_size(
        "uids x n_batches",
        (step.uids.len() as u64).saturating_mul(step.n_batches as u64),
        MAX_LOSSES,
    )?;
    check_size("sample_min", step.sample_min as u64, MAX_UIDS)?;
    check_size(
        "the length of prev_weights",
        step.prev_weights.len() as u64,
        MAX_UIDS,
    )?;
    if let Some(bad) = step
        .uids
        .iter()
        .find(|&&u| u as u64 >= step.n_total_uids as u64)
    {
        return Err(format!(
            "uid {bad} is not below n_total_uids ({})",
            step.n_total_uids
        ));
    }
    Ok(())
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
    check_step_sizes(&step)
        .map_err(anyhow::Error::msg)
        .with_context(invalid)?;
    let input = step.to_input().with_context(invalid)?;
    let out = input.run().context("scoring")?;
    print_json(&StepOutputJson::new(&input.uids, &out))
}

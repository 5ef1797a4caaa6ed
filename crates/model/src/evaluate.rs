//! The validator's evaluation of one model: load once (after the same
//! checks as the update loop, plus finite weights), then a loss per batch,
//! `+inf` for any batch that fails.
//!
//! A NaN loss is scored `+inf` here, where the original kept NaN (which then
//! lost and won nothing): both leave the model without a win, but `+inf`
//! makes "this model could not be evaluated" one value everywhere.

use std::path::Path;

use candle_core::Device;

use crate::check::{check_model_dir, Limits};
use crate::error::Result;
use crate::model::{loss_or_inf, Model};
use crate::options::ComputeOptions;

/// Loads `dir` for evaluation: the validator's checks, the weights, and a
/// check that every weight is finite (a NaN model is refused with a reason
/// rather than scored on NaN losses).
pub fn load_for_eval(dir: &Path, device: &Device) -> Result<Model> {
    load_for_eval_with(dir, device, ComputeOptions::default())
}

/// [`load_for_eval`] computing as `options` say (`--kernels`, `--dtype`).
pub fn load_for_eval_with(dir: &Path, device: &Device, options: ComputeOptions) -> Result<Model> {
    options.check(device)?;
    check_model_dir(dir, Limits::default())?;
    let model = Model::load_with(dir, device, options)?;
    for (name, t) in model.weights() {
        // x - x is 0 for finite x and NaN for NaN or ±inf; one pass per tensor,
        // without the overflow a sum of squares could give.
        let s = t.sub(t)?.sum_all()?.to_scalar::<f32>()?;
        if !s.is_finite() {
            return Err(crate::check::non_finite(name));
        }
    }
    // Evaluation only from here: one copy of the projections, not two.
    model.sealed_for_eval()
}

/// A loss per batch of a loaded model: `+inf` for a batch that fails or
/// gives a non-finite loss.
pub fn losses(model: &Model, batches: &[Vec<Vec<u32>>]) -> Vec<f32> {
    batches
        .iter()
        .map(|b| as_scored(loss_or_inf(model, b)))
        .collect()
}

/// A batch's loss as the validator scores it: a NaN or infinite loss is +inf.
pub fn as_scored(loss: f32) -> f32 {
    if loss.is_finite() {
        loss
    } else {
        f32::INFINITY
    }
}

/// One load, a loss per batch; every batch `+inf` when the model cannot be
/// loaded (the reason is logged).
pub fn evaluate(dir: &Path, batches: &[Vec<Vec<u32>>], device: &Device) -> Vec<f32> {
    evaluate_with(dir, batches, device, ComputeOptions::default())
}

/// [`evaluate`] computing as `options` say (`--kernels`, `--dtype`).
pub fn evaluate_with(
    dir: &Path,
    batches: &[Vec<Vec<u32>>],
    device: &Device,
    options: ComputeOptions,
) -> Vec<f32> {
    match load_for_eval_with(dir, device, options) {
        Ok(model) => losses(&model, batches),
        Err(e) => {
            tracing::warn!("cannot evaluate {}: {e}; scoring +inf", dir.display());
            vec![f32::INFINITY; batches.len()]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> std::path::PathBuf {
        std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/models/tiny-gpt2/model"
        ))
    }

    #[test]
    fn losses_match_the_reference_and_failures_are_inf() {
        // expected.json holds the loss transformers computed on its batch.
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tiny().join("../expected.json")).unwrap())
                .unwrap();
        let case = &expected["batches"][0];
        let batch: Vec<Vec<u32>> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let want = case["loss"].as_f64().unwrap() as f32;
        // A row with an id outside the vocabulary fails: +inf for that batch only.
        let bad = vec![vec![60_000u32; batch[0].len()]];
        let got = evaluate(&tiny(), &[batch.clone(), bad, batch], &Device::Cpu);
        assert_eq!(got.len(), 3);
        assert!((got[0] - want).abs() < 1e-4, "{} vs {want}", got[0]);
        assert_eq!(got[1], f32::INFINITY);
        assert_eq!(got[0], got[2]);
    }

    #[test]
    fn a_missing_model_is_inf_for_every_batch() {
        let got = evaluate(
            Path::new("/nonexistent/model"),
            &vec![vec![vec![1, 2]]; 2],
            &Device::Cpu,
        );
        assert_eq!(got, vec![f32::INFINITY; 2]);
    }
}

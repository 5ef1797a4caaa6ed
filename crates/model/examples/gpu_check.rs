//! GPU against CPU on the reference models, for `scripts/gpu_check.sh`: the
//! loss of every reference batch and three AdamW steps, on the CPU (fast
//! kernels, f32) and on `cuda:0` in f32 and bf16 (candle's ops), each
//! against the other and against `transformers`' values in `expected.json`.
//! Prints one JSON line per model and dtype; exits 1 if any is off by more
//! than the tolerance (f32 1e-4, bf16 2e-2).
//!
//! ```text
//! cargo run --release -p pretrain-model --features cuda --example gpu_check -- testdata/models
//! ```
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use pretrain_model::{
    CausalLm, ComputeDtype, ComputeOptions, Kernels, Model, TrainConfig, Trainer,
};
use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn rows(v: &Value) -> Res<Vec<Vec<u32>>> {
    Ok(serde_json::from_value(v.clone())?)
}

/// Losses of every reference batch, then the losses before each of three
/// AdamW steps and the eval loss after them.
fn run(
    dir: &Path,
    exp: &Value,
    device: &Device,
    options: ComputeOptions,
) -> Res<(Vec<f64>, Vec<f64>)> {
    let model = Model::load_with(dir, device, options)?;
    let mut eval = Vec::new();
    for b in exp["batches"].as_array().ok_or("no batches")? {
        eval.push(model.loss(&rows(&b["input_ids"])?)? as f64);
    }
    let tr = &exp["training"];
    let i = tr["batch_index"].as_u64().ok_or("no batch_index")? as usize;
    let batch = rows(&exp["batches"][i]["input_ids"])?;
    let cfg = TrainConfig {
        lr: tr["lr"].as_f64().ok_or("no lr")?,
        weight_decay: tr["weight_decay"].as_f64().ok_or("no weight_decay")?,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, cfg)?;
    let mut train = Vec::new();
    for _ in 0..3 {
        train.push(trainer.micro_step(&batch)? as f64);
    }
    train.push(trainer.eval_loss(&batch)? as f64);
    Ok((eval, train))
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn main() -> Res<()> {
    let models: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("testdata/models"));
    let cuda = Device::new_cuda(0)?;
    let mut all_ok = true;
    for name in ["tiny-gpt2", "tiny-llama"] {
        let exp: Value =
            serde_json::from_slice(&std::fs::read(models.join(name).join("expected.json"))?)?;
        let dir = models.join(name).join("model");
        let reference: Vec<f64> = exp["batches"]
            .as_array()
            .ok_or("no batches")?
            .iter()
            .map(|b| b["loss"].as_f64().unwrap_or(f64::NAN))
            .collect();
        let tr = &exp["training"];
        let mut reference_train: Vec<f64> = tr["loss_before_each_step"]
            .as_array()
            .ok_or("no training losses")?
            .iter()
            .map(|x| x.as_f64().unwrap_or(f64::NAN))
            .collect();
        reference_train.push(tr["loss_after_last_step"].as_f64().unwrap_or(f64::NAN));
        let (cpu_eval, cpu_train) = run(&dir, &exp, &Device::Cpu, ComputeOptions::default())?;
        for (dtype, tol) in [(ComputeDtype::F32, 1e-4), (ComputeDtype::Bf16, 2e-2)] {
            let options = ComputeOptions {
                kernels: Kernels::Auto,
                dtype,
            };
            let (eval, train) = run(&dir, &exp, &cuda, options)?;
            let d = [
                max_diff(&eval, &cpu_eval),
                max_diff(&eval, &reference),
                max_diff(&train, &cpu_train),
                max_diff(&train, &reference_train),
            ];
            let ok = d.iter().all(|x| *x <= tol);
            all_ok &= ok;
            println!(
                "{}",
                json!({
                    "check": "parity", "model": name, "dtype": dtype.to_string(), "tolerance": tol,
                    "eval_vs_cpu": d[0], "eval_vs_transformers": d[1],
                    "adamw_vs_cpu": d[2], "adamw_vs_torch": d[3],
                    "eval_losses": eval, "adamw_losses": train, "ok": ok,
                })
            );
        }
    }
    if !all_ok {
        std::process::exit(1);
    }
    Ok(())
}

//! AdamW training parity with `torch.optim.AdamW` on the reference models.

use candle_core::Device;
use pretrain_model::{Model, TrainConfig, Trainer};
use serde_json::Value;

mod common;
use common::{expected, models_dir, rows};

fn close(a: f32, b: &Value, what: &str) {
    let b = b.as_f64().unwrap();
    assert!((a as f64 - b).abs() < 1e-4, "{what}: {a} vs {b}");
}

fn three_steps(name: &str) {
    let exp = expected(name);
    let tr = &exp["training"];
    let batch = rows(&exp["batches"][tr["batch_index"].as_u64().unwrap() as usize]["input_ids"]);
    let model = Model::load(&models_dir().join(name).join("model"), &Device::Cpu).unwrap();
    let cfg = TrainConfig {
        lr: tr["lr"].as_f64().unwrap(),
        weight_decay: tr["weight_decay"].as_f64().unwrap(),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, cfg).unwrap();
    for (i, want) in tr["loss_before_each_step"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let loss = trainer.micro_step(&batch).unwrap();
        close(loss, want, &format!("{name} loss before step {i}"));
    }
    assert_eq!(trainer.steps(), 3);
    close(
        trainer.eval_loss(&batch).unwrap(),
        &tr["loss_after_last_step"],
        &format!("{name} after"),
    );
}

fn accumulation(name: &str) {
    let exp = expected(name);
    let tr = &exp["training_accum"];
    let model = Model::load(&models_dir().join(name).join("model"), &Device::Cpu).unwrap();
    let cfg = TrainConfig {
        lr: tr["lr"].as_f64().unwrap(),
        weight_decay: tr["weight_decay"].as_f64().unwrap(),
        accumulation_steps: tr["accumulation_steps"].as_u64().unwrap() as usize,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, cfg).unwrap();
    let micro: Vec<Vec<Vec<u32>>> = tr["micro_batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(rows)
        .collect();
    for (i, (b, want)) in micro
        .iter()
        .zip(tr["micro_batch_losses"].as_array().unwrap())
        .enumerate()
    {
        close(
            trainer.micro_step(b).unwrap(),
            want,
            &format!("{name} micro-batch {i}"),
        );
    }
    assert_eq!(trainer.steps(), tr["optimizer_steps"].as_u64().unwrap());
    for (i, (b, want)) in micro
        .iter()
        .zip(tr["final_losses_per_micro_batch"].as_array().unwrap())
        .enumerate()
    {
        close(
            trainer.eval_loss(b).unwrap(),
            want,
            &format!("{name} final {i}"),
        );
    }
}

#[test]
fn tiny_gpt2_three_adamw_steps_match_torch() {
    three_steps("tiny-gpt2");
}

#[test]
fn tiny_llama_three_adamw_steps_match_torch() {
    three_steps("tiny-llama");
}

#[test]
fn tiny_gpt2_gradient_accumulation_matches_torch() {
    accumulation("tiny-gpt2");
}

#[test]
fn tiny_llama_gradient_accumulation_matches_torch() {
    accumulation("tiny-llama");
}

#[test]
fn dropout_is_active_in_training_only() {
    let exp = expected("tiny-gpt2");
    let src = Model::load(&models_dir().join("tiny-gpt2/model"), &Device::Cpu).unwrap();
    let mut cfg = src.config_json().clone();
    for k in ["attn_pdrop", "embd_pdrop", "resid_pdrop"] {
        cfg[k] = serde_json::json!(0.1);
    }
    let model = Model::from_parts(cfg, src.weights().clone(), &Device::Cpu).unwrap();
    let batch = rows(&exp["batches"][1]["input_ids"]);
    let want = exp["batches"][1]["loss"].as_f64().unwrap();
    // lr 0 and no decay: the weights never change, only dropout moves the loss.
    let tc = TrainConfig {
        lr: 0.0,
        weight_decay: 0.0,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, tc).unwrap();
    // Each step draws a fresh mask, so the losses differ from each other and
    // from the eval loss; any single one may land near it by chance, so look
    // at several.
    let losses: Vec<f64> = (0..6)
        .map(|_| trainer.micro_step(&batch).unwrap() as f64)
        .collect();
    let distinct = losses
        .iter()
        .enumerate()
        .all(|(i, a)| losses[i + 1..].iter().all(|b| a != b));
    let far = losses.iter().filter(|l| (*l - want).abs() > 1e-3).count();
    assert!(distinct && far >= 3, "{losses:?} vs eval {want}");
    close(
        trainer.eval_loss(&batch).unwrap(),
        &exp["batches"][1]["loss"],
        "eval mode has no dropout",
    );
}

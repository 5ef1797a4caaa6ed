//! AdamW training parity with `torch.optim.AdamW` on the reference models.
#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use candle_core::Device;
use pretrain_model::{Kernels, Model, TrainConfig, Trainer};
use serde_json::Value;

mod common;
use common::{expected, load_on, models_dir, rows};

fn close(a: f32, b: &Value, what: &str) {
    let b = b.as_f64().unwrap();
    assert!((a as f64 - b).abs() < 1e-4, "{what}: {a} vs {b}");
}

fn three_steps(name: &str, kernels: Kernels) {
    let exp = expected(name);
    let tr = &exp["training"];
    let batch = rows(&exp["batches"][tr["batch_index"].as_u64().unwrap() as usize]["input_ids"]);
    let model = load_on(&models_dir().join(name).join("model"), kernels);
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

fn accumulation(name: &str, kernels: Kernels) {
    let exp = expected(name);
    let tr = &exp["training_accum"];
    let model = load_on(&models_dir().join(name).join("model"), kernels);
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

on_both_paths! {
    tiny_gpt2_three_adamw_steps_match_torch => |k| three_steps("tiny-gpt2", k);
    tiny_llama_three_adamw_steps_match_torch => |k| three_steps("tiny-llama", k);
    tiny_gpt2_gradient_accumulation_matches_torch => |k| accumulation("tiny-gpt2", k);
    tiny_llama_gradient_accumulation_matches_torch => |k| accumulation("tiny-llama", k);
}

/// The portable path's optimizer state (moments on the device) saves and
/// loads: a trainer stopped after one step and continued from its saved
/// weights and state gives the uninterrupted run's losses (no dropout in
/// the reference model, so both runs are deterministic).
#[test]
fn portable_saved_state_continues_where_it_stopped() {
    let exp = expected("tiny-gpt2");
    let batch: Vec<Vec<u32>> = rows(&exp["batches"][0]["input_ids"]);
    let dir = models_dir().join("tiny-gpt2/model");
    let mut full = Trainer::new(load_on(&dir, Kernels::Portable), adam(1)).unwrap();
    let want: Vec<f32> = (0..3).map(|_| full.micro_step(&batch).unwrap()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(load_on(&dir, Kernels::Portable), adam(1)).unwrap();
    assert_eq!(first.micro_step(&batch).unwrap(), want[0]);
    first.save(&tmp.path().join("model")).unwrap();
    first.save_state(&tmp.path().join("state")).unwrap();
    let model = load_on(&tmp.path().join("model"), Kernels::Portable);
    let mut second = Trainer::new(model, adam(1)).unwrap();
    second.load_state(&tmp.path().join("state")).unwrap();
    let got: Vec<f32> = (0..2).map(|_| second.micro_step(&batch).unwrap()).collect();
    assert_eq!(got, want[1..].to_vec());
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

/// The tiny GPT-2 with the default config's dropout (0.1 everywhere).
fn tiny_gpt2_with_dropout() -> Model {
    let src = Model::load(&models_dir().join("tiny-gpt2/model"), &Device::Cpu).unwrap();
    let mut cfg = src.config_json().clone();
    for k in ["attn_pdrop", "embd_pdrop", "resid_pdrop"] {
        cfg[k] = serde_json::json!(0.1);
    }
    Model::from_parts(cfg, src.weights().clone(), &Device::Cpu).unwrap()
}

fn adam(accumulation_steps: usize) -> TrainConfig {
    TrainConfig {
        lr: 1e-3,
        accumulation_steps,
        ..TrainConfig::default()
    }
}

#[test]
fn seeded_dropout_repeats_and_each_micro_step_draws_new_masks() {
    let exp = expected("tiny-gpt2");
    let batch = rows(&exp["batches"][1]["input_ids"]);
    // lr 0: only the masks move the loss.
    let frozen = TrainConfig {
        lr: 0.0,
        weight_decay: 0.0,
        ..TrainConfig::default()
    };
    let losses = |seed: u64| -> Vec<f32> {
        let mut t = Trainer::new(tiny_gpt2_with_dropout(), frozen)
            .unwrap()
            .with_seed(seed);
        (0..4).map(|_| t.micro_step(&batch).unwrap()).collect()
    };
    let a = losses(3);
    assert_eq!(a, losses(3), "same seed, same masks");
    let b = losses(4);
    assert!(a.iter().zip(&b).all(|(x, y)| x != y), "{a:?} vs {b:?}");
    assert!(
        a.windows(2).all(|w| w[0] != w[1]),
        "fresh masks per micro-step: {a:?}"
    );
}

#[test]
fn saved_state_continues_exactly_where_it_stopped() {
    let exp = expected("tiny-gpt2");
    // Short rows keep the test quick in unoptimised builds.
    let batches: Vec<Vec<Vec<u32>>> = (0..exp["batches"].as_array().unwrap().len())
        .map(|i| {
            rows(&exp["batches"][i]["input_ids"])
                .into_iter()
                .map(|r| r[..64.min(r.len())].to_vec())
                .collect()
        })
        .collect();
    let seq: Vec<&Vec<Vec<u32>>> = batches.iter().cycle().take(7).collect();
    // Uninterrupted: 7 micro-steps, a step every 2.
    let mut full = Trainer::new(tiny_gpt2_with_dropout(), adam(2))
        .unwrap()
        .with_seed(9);
    let want: Vec<f32> = seq.iter().map(|b| full.micro_step(b).unwrap()).collect();

    // Stopped after 5 micro-steps (2 steps and one pending gradient), saved,
    // and continued by a new trainer from the saved weights and state.
    let tmp = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(tiny_gpt2_with_dropout(), adam(2))
        .unwrap()
        .with_seed(9);
    for b in &seq[..5] {
        first.micro_step(b).unwrap();
    }
    assert_eq!((first.steps(), first.pending_micro_steps()), (2, 1));
    first.save(&tmp.path().join("model")).unwrap();
    first.save_state(&tmp.path().join("state")).unwrap();
    drop(first);
    let model = Model::load(&tmp.path().join("model"), &Device::Cpu).unwrap();
    let mut second = Trainer::new(model, adam(2)).unwrap();
    let counters = second.load_state(&tmp.path().join("state")).unwrap();
    assert_eq!(
        (
            counters.steps,
            counters.micro,
            counters.micro_total,
            counters.seed
        ),
        (2, 1, 5, 9)
    );
    let got: Vec<f32> = seq[5..]
        .iter()
        .map(|b| second.micro_step(b).unwrap())
        .collect();
    assert_eq!(got, want[5..].to_vec());
    assert_eq!(second.steps(), full.steps());
    assert_eq!(
        second.eval_loss(&batches[0]).unwrap(),
        full.eval_loss(&batches[0]).unwrap()
    );

    // A state for another model is refused with its reason.
    let llama = Model::load(&models_dir().join("tiny-llama/model"), &Device::Cpu).unwrap();
    let err = Trainer::new(llama, adam(2))
        .unwrap()
        .load_state(&tmp.path().join("state"))
        .unwrap_err();
    assert!(err.to_string().contains("names no parameter"), "{err}");
}

#[test]
fn a_save_interrupted_between_its_renames_leaves_the_old_model_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("best");
    let model = Model::load(&models_dir().join("tiny-gpt2/model"), &Device::Cpu).unwrap();
    model.save(&dir).unwrap();
    let first = std::fs::read(dir.join("model.safetensors")).unwrap();
    // The moment inside `replace_dir` where the old copy is aside and the
    // new one not yet in place (a crash there leaves exactly this).
    std::fs::rename(&dir, tmp.path().join("best.old")).unwrap();
    let back = Model::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), first);
    assert!(!tmp.path().join("best.old").exists());
    // Saving over an existing model leaves one whole directory and no leftovers.
    back.save(&dir).unwrap();
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["best".to_string()]);
}

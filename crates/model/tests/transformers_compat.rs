//! A directory we save after training loads in Python `transformers` with
//! no missing or unexpected keys and the same loss, saved in f32 and in bf16
//! (`--upload_b16`; both sides upcast the bf16 weights to f32). Skips with a notice when
//! Python, torch or transformers are missing (`PRETRAIN_PYTHON` picks the
//! interpreter, default `python3`).
#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::process::Command;

use candle_core::{DType, Device};
use pretrain_model::{CausalLm, Model, TrainConfig, Trainer};

mod common;
use common::models_dir;

fn check(name: &str) {
    check_as(name, DType::F32);
}

fn check_as(name: &str, dtype: DType) {
    let model = Model::load(&models_dir().join(name).join("model"), &Device::Cpu).unwrap();
    let batch: Vec<Vec<u32>> = vec![
        (0..48u32).map(|i| (i * 977) % 50257).collect(),
        (0..48u32).map(|i| (i * 31 + 5) % 50257).collect(),
    ];
    let mut trainer = Trainer::new(
        model,
        TrainConfig {
            lr: 1e-3,
            ..TrainConfig::default()
        },
    )
    .unwrap();
    trainer.micro_step(&batch).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("trained");
    trainer.save_as(&dir, dtype).unwrap();
    let loss = Model::load(&dir, &Device::Cpu)
        .unwrap()
        .loss(&batch)
        .unwrap();
    let tokens = tmp.path().join("tokens.json");
    std::fs::write(&tokens, serde_json::to_string(&batch).unwrap()).unwrap();
    let python = std::env::var("PRETRAIN_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/check_transformers_load.py"
    );
    let out = match Command::new(&python)
        .arg(script)
        .arg(&dir)
        .arg(&tokens)
        .arg(loss.to_string())
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("cannot run {python} (set PRETRAIN_PYTHON): {e}"),
    };
    assert_ne!(
        out.status.code(),
        Some(3),
        "{python} lacks torch or transformers: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(
        out.status.success(),
        "{name}: transformers check failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs Python with torch and transformers 4.34 (PRETRAIN_PYTHON); run with --ignored"]
fn trained_tiny_gpt2_loads_in_transformers() {
    check("tiny-gpt2");
}

#[test]
#[ignore = "needs Python with torch and transformers 4.34 (PRETRAIN_PYTHON); run with --ignored"]
fn trained_tiny_llama_loads_in_transformers() {
    check("tiny-llama");
}

#[test]
#[ignore = "needs Python with torch and transformers 4.34 (PRETRAIN_PYTHON); run with --ignored"]
fn trained_tiny_gpt2_saved_as_bf16_loads_in_transformers() {
    check_as("tiny-gpt2", DType::BF16);
}

#[test]
#[ignore = "needs Python with torch and transformers 4.34 (PRETRAIN_PYTHON); run with --ignored"]
fn trained_tiny_llama_saved_as_bf16_loads_in_transformers() {
    check_as("tiny-llama", DType::BF16);
}

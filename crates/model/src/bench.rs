//! Throughput benchmarks of evaluation and training (`pretrain bench eval|train`).

use std::time::Instant;

use candle_core::Device;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

use crate::error::Result;
use crate::hf::config::default_gpt2_config_json;
use crate::model::{CausalLm, Model};
use crate::options::ComputeOptions;
use crate::train::{TrainConfig, Trainer};

/// What a benchmark measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BenchResult {
    /// Tokens processed per second (batch_size * seq_len per iteration).
    pub tokens_per_s: f64,
    /// Peak resident set size of the process so far (Linux `VmHWM`), 0 if unknown.
    pub peak_rss_bytes: u64,
}

/// Settings of a benchmark run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// `config.json` of the model to build with random weights.
    pub config_json: Value,
    /// Rows per batch.
    pub batch_size: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Timed iterations (after one warm-up).
    pub iters: usize,
    /// Where the model runs.
    pub device: Device,
    /// Kernels and compute dtype.
    pub options: ComputeOptions,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            config_json: default_gpt2_config_json(),
            batch_size: 1,
            seq_len: 1024,
            iters: 3,
            device: Device::Cpu,
            options: ComputeOptions::default(),
        }
    }
}

/// Peak resident set size of this process in bytes (`VmHWM`), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn random_batch(cfg: &BenchConfig, vocab: usize) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..cfg.batch_size)
        .map(|_| {
            (0..cfg.seq_len)
                .map(|_| rng.gen_range(0..vocab as u32))
                .collect()
        })
        .collect()
}

/// Evaluation throughput: forward + loss, no gradients.
pub fn bench_eval(cfg: &BenchConfig) -> Result<BenchResult> {
    // Sealed as the validator's evaluation is (`load_for_eval`).
    let model = Model::random_with(cfg.config_json.clone(), 0, &cfg.device, cfg.options)?
        .sealed_for_eval()?;
    let batch = random_batch(cfg, model.config().vocab_size());
    let loss = model.loss(&batch)?;
    tracing::info!("warm-up loss {loss}");
    let start = Instant::now();
    for _ in 0..cfg.iters {
        let loss = model.loss(&batch)?;
        tracing::info!("loss {loss} after {:.2}s", start.elapsed().as_secs_f64());
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(BenchResult {
        tokens_per_s: (cfg.iters * cfg.batch_size * cfg.seq_len) as f64 / secs,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Training throughput: forward + backward + AdamW step per batch.
pub fn bench_train(cfg: &BenchConfig) -> Result<BenchResult> {
    let model = Model::random_with(cfg.config_json.clone(), 0, &cfg.device, cfg.options)?;
    let batch = random_batch(cfg, model.config().vocab_size());
    let mut trainer = Trainer::new(model, TrainConfig::default())?;
    let loss = trainer.micro_step(&batch)?;
    tracing::info!("warm-up loss {loss}");
    let start = Instant::now();
    for _ in 0..cfg.iters {
        let loss = trainer.micro_step(&batch)?;
        tracing::info!("loss {loss} after {:.2}s", start.elapsed().as_secs_f64());
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(BenchResult {
        tokens_per_s: (cfg.iters * cfg.batch_size * cfg.seq_len) as f64 / secs,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

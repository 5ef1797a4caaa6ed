//! The supported model architectures (GPT-2, LLaMA) on candle: reading and
//! writing Hugging Face `save_pretrained` directories, parameter counting,
//! the causal-LM loss, AdamW training and the validator's model checks.
//!
//! # For the validator
//! ```no_run
//! use candle_core::Device;
//! use pretrain_model::{check_model_dir, loss_or_inf, CausalLm, Limits, Model};
//! # fn main() -> Result<(), pretrain_model::ModelError> {
//! let dir = std::path::Path::new("snapshot-dir");
//! // Architecture, pickle-only weights, lying safetensors headers, missing or
//! // misshapen tensors, parameter and size limits: headers only, no weights read.
//! let info = check_model_dir(dir, Limits::default())?; // Err(e): e.to_string() is the reason
//! let model = Model::load(dir, &Device::Cpu)?; // memory-maps model.safetensors
//! let batch: Vec<Vec<u32>> = vec![vec![50256; 1024]];
//! let loss: f32 = loss_or_inf(&model, &batch); // any error -> +inf, as the original
//! # let _ = (info, loss); Ok(()) }
//! ```
//! [`CausalLm::loss`] is the Hugging Face causal-LM loss with `labels = inputs`
//! (mean cross-entropy over all `B*(T-1)` predictions, f32, eval mode); it
//! returns NaN/inf for non-finite weights as torch does (the caller decides).
//! Heavy: run it in `tokio::task::spawn_blocking`.
//!
//! # For the miner
//! ```no_run
//! use candle_core::Device;
//! use pretrain_model::{Model, TrainConfig, Trainer};
//! # fn main() -> Result<(), pretrain_model::ModelError> {
//! let model = Model::default_gpt2(42, &Device::Cpu)?; // or Model::load(dir, ..)
//! let cfg = TrainConfig { lr: 1e-5, weight_decay: 0.01, accumulation_steps: 5, ..TrainConfig::default() };
//! let mut trainer = Trainer::new(model, cfg)?;
//! let batch: Vec<Vec<u32>> = vec![vec![50256; 1024]];
//! let loss = trainer.micro_step(&batch)?; // loss/accum, backward; AdamW step every 5th call
//! trainer.save(std::path::Path::new("best"))?; // atomic, loads in transformers
//! # let _ = loss; Ok(()) }
//! ```
//! A bare safetensors file of the default config (`--load_model FILE`): copy it
//! into a directory as `model.safetensors` beside `config::default_gpt2_config_json()`
//! written with `config::to_hf_json`, then [`Model::load`].
//!
//! Files: [`Model::save`] writes `config.json`, `generation_config.json` and
//! `model.safetensors` byte for byte as `transformers` 4.34 does (tied
//! embeddings stored once, `{"format": "pt"}` metadata), into a temporary
//! directory renamed into place. Loading accepts f32/f16/bf16 and sharded
//! `model-0000x-of-0000y.safetensors` with their index; compute is f32.

#![warn(missing_docs)]

//!
//! # Layout
//! Layers from the bottom, each importing only from those below it:
//! `error`; `kernels/` (SIMD helpers, the seed mixer, GEMM, Conv1D,
//! attention, norms, activations, loss, embedding, AdamW; each with its
//! portable candle-ops twin); `mode` (train/eval, dropout seeds) and
//! `options` (`--kernels`, `--dtype`); `layers` (VarBuilder, Conv1D, Linear,
//! norms); `arch/` (one file per architecture plus the registry); `hf/`
//! (`config.json`, safetensors, a directory's weights); `model`; `train`;
//! `check`, `evaluate`, `bench`. `config` re-exports the config names.

pub mod arch;
pub mod bench;
pub mod check;
pub mod config;
pub mod error;
pub mod evaluate;
pub mod hf;
mod kernels;
mod layers;
pub mod mode;
pub mod model;
pub mod options;
#[cfg(test)]
mod proptests;
pub mod train;

pub use check::{check_finite_weights, check_model_dir, check_reason, Limits, ModelInfo};
pub use config::{Architecture, Gpt2Config, LlamaConfig, ModelConfig};
pub use error::{ModelError, Result};
pub use evaluate::{evaluate, load_for_eval};
pub use hf::safetensors::{write as write_safetensors, SafetensorsFile, TensorInfo};
pub use kernels::gemm::{
    gemm_race, pin_gemm_engine, GemmEngine, GemmRace, RaceOperand, ENGINE_ENV, ONEDNN_MARGIN,
    RACE_SHAPES,
};
/// The bf16 GEMM (AVX512-BF16), for `--dtype bf16` on CPU.
pub use kernels::gemm_bf16;
pub use kernels::onednn;
pub use mode::{mix_seed, Mode};
pub use model::{loss_or_inf, CausalLm, Model, Weights};
pub use options::{ComputeDtype, ComputeOptions, Kernels};
pub use train::{TrainConfig, Trainer, TrainerCounters};

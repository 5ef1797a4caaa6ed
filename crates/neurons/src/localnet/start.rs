//! The models the miners of a local subnet start from.

use std::path::Path;

use pretrain_core::rules::schedule::CompetitionSpec;
use serde_json::{json, Value};

use super::LocalnetError;

/// GPT-2's architecture name in `config.json`.
const GPT2: &str = "GPT2LMHeadModel";
/// LLaMA's architecture name in `config.json`.
const LLAMA: &str = "LlamaForCausalLM";

/// How big a starting GPT-2 is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSize {
    /// A 2-layer, 32-wide GPT-2 (1.6M parameters).
    Tiny,
    /// The subnet's default GPT-2 (122M parameters).
    Default,
}

/// The config of the tiny model: the reference tiny GPT-2's shape (2 layers,
/// 32 wide, 4 heads) with the dropout of the default model, so miners train
/// as they would for real.
pub fn tiny_gpt2_config() -> Value {
    let mut c = pretrain_model::config::default_gpt2_config_json();
    if let Some(m) = c.as_object_mut() {
        m.insert("n_embd".into(), json!(32));
        m.insert("n_head".into(), json!(4));
        m.insert("n_layer".into(), json!(2));
    }
    c
}

/// The config of the tiny LLaMA: the reference tiny LLaMA's shape (2
/// layers, 32 wide, 4 heads, 2 key-value heads; 3.3M parameters, most of
/// them the untied embedding and output matrices).
pub fn tiny_llama_config() -> Value {
    json!({
        "architectures": [LLAMA],
        "attention_bias": false,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 1024,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "vocab_size": 50257
    })
}

/// The starting model of a miner: a GPT-2 of the chosen size, or the tiny
/// LLaMA for a competition that only admits LLaMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A GPT-2 of that size.
    Gpt2(ModelSize),
    /// The tiny LLaMA.
    TinyLlama,
}

impl Start {
    /// What a miner of `competition` (`None`: the single competition of the
    /// `sn9-2024-01` rules) starts from.
    pub fn for_competition(
        size: ModelSize,
        competition: Option<&CompetitionSpec>,
    ) -> Result<Self, LocalnetError> {
        let Some(c) = competition else {
            return Ok(Start::Gpt2(size));
        };
        let allows = |a: &str| c.constraints.architectures.iter().any(|x| x == a);
        if allows(GPT2) {
            return Ok(Start::Gpt2(size));
        }
        if allows(LLAMA) {
            if size == ModelSize::Default {
                return Err(LocalnetError::NoStartingModel(format!(
                    "competition {} ({}) admits only LLaMA models, and localnet has only a tiny \
                     LLaMA: run it with --model tiny",
                    c.id, c.name
                )));
            }
            return Ok(Start::TinyLlama);
        }
        Err(LocalnetError::NoStartingModel(format!(
            "competition {} ({}) admits none of the architectures localnet can start from \
             ({GPT2}, {LLAMA}): [{}]",
            c.id,
            c.name,
            c.constraints.architectures.join(", ")
        )))
    }

    /// The folder name of this model under `init/`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Start::Gpt2(ModelSize::Tiny) => "tiny-gpt2",
            Start::Gpt2(ModelSize::Default) => "default-gpt2",
            Start::TinyLlama => "tiny-llama",
        }
    }

    /// Writes the model (random weights, seed 0) as a `save_pretrained` directory.
    pub fn write(self, dir: &Path) -> Result<(), LocalnetError> {
        let device = candle_core::Device::Cpu;
        let model = match self {
            Start::Gpt2(ModelSize::Tiny) => {
                pretrain_model::Model::random(tiny_gpt2_config(), 0, &device)?
            }
            Start::Gpt2(ModelSize::Default) => pretrain_model::Model::default_gpt2(0, &device)?,
            Start::TinyLlama => pretrain_model::Model::random(tiny_llama_config(), 0, &device)?,
        };
        model.save(dir)?;
        Ok(())
    }
}

/// Learning rate of miner `i`: miner 0 learns fast, each next one a hundred
/// times slower (miner 1 at the original's default of 1e-5 barely moves in
/// minutes), so miner 0 is clearly the best after its first epoch.
pub fn miner_lr(size: ModelSize, i: usize) -> f64 {
    let base = match size {
        ModelSize::Tiny => 1e-3,
        ModelSize::Default => 1e-4,
    };
    base * 0.01f64.powi(i32::try_from(i.min(8)).unwrap_or(8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretrain_core::rules::Schedule;

    fn competition_allowing(architectures: &[&str]) -> CompetitionSpec {
        let mut c = Schedule::default_schedule().entries[0].competitions[0].clone();
        c.constraints.architectures = architectures.iter().map(|a| a.to_string()).collect();
        c
    }

    #[test]
    fn miners_start_from_a_gpt2_unless_only_llama_is_admitted() {
        assert_eq!(
            Start::for_competition(ModelSize::Default, None).unwrap(),
            Start::Gpt2(ModelSize::Default)
        );
        let both = competition_allowing(&[LLAMA, GPT2]);
        assert_eq!(
            Start::for_competition(ModelSize::Tiny, Some(&both)).unwrap(),
            Start::Gpt2(ModelSize::Tiny)
        );
        let llama = competition_allowing(&[LLAMA]);
        assert_eq!(
            Start::for_competition(ModelSize::Tiny, Some(&llama)).unwrap(),
            Start::TinyLlama
        );
        let e = Start::for_competition(ModelSize::Default, Some(&llama)).unwrap_err();
        assert!(e.to_string().contains("--model tiny"), "{e}");
        let other = competition_allowing(&["MistralForCausalLM"]);
        let e = Start::for_competition(ModelSize::Tiny, Some(&other)).unwrap_err();
        assert!(e.to_string().contains("[MistralForCausalLM]"), "{e}");
    }

    #[test]
    fn each_next_miner_learns_a_hundred_times_slower() {
        assert_eq!(miner_lr(ModelSize::Tiny, 0), 1e-3);
        assert!((miner_lr(ModelSize::Tiny, 1) - 1e-5).abs() < 1e-20);
        assert!((miner_lr(ModelSize::Default, 1) - 1e-6).abs() < 1e-20);
        // Past the eighth miner the rate stops falling.
        assert_eq!(miner_lr(ModelSize::Tiny, 9), miner_lr(ModelSize::Tiny, 8));
    }

    #[test]
    fn the_tiny_configs_have_the_reference_shapes() {
        let g = tiny_gpt2_config();
        assert_eq!(
            (g["n_embd"].as_u64(), g["n_layer"].as_u64()),
            (Some(32), Some(2))
        );
        assert_eq!(g["n_head"], 4);
        let l = tiny_llama_config();
        assert_eq!(l["architectures"][0], LLAMA);
        assert_eq!(l["num_key_value_heads"], 2);
    }

    #[test]
    fn starting_models_have_their_own_folders() {
        let names = [
            Start::Gpt2(ModelSize::Tiny).dir_name(),
            Start::Gpt2(ModelSize::Default).dir_name(),
            Start::TinyLlama.dir_name(),
        ];
        assert_eq!(names, ["tiny-gpt2", "default-gpt2", "tiny-llama"]);
    }
}

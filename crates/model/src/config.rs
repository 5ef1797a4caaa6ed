//! `config.json`: the architectures' configs ([`crate::arch`]) and the files
//! as `transformers` writes them ([`crate::hf::config`]), under the names
//! this module has always had.

pub use crate::arch::gpt2::Config as Gpt2Config;
pub use crate::arch::llama::Config as LlamaConfig;
pub use crate::arch::{Architecture, ModelConfig, MAX_LAYERS};
pub use crate::hf::config::{
    default_gpt2_config_json, generation_config_json, python_float, to_hf_json,
    TRANSFORMERS_VERSION,
};

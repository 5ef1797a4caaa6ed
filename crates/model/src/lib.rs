//! The supported model architectures (GPT-2, LLaMA) on candle: reading and
//! writing Hugging Face `save_pretrained` directories, parameter counting,
//! the causal-LM loss, AdamW training and the validator's model checks.

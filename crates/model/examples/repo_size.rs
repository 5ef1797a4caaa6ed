//! The repo size of the default GPT-2 as the miner uploads it, with and
//! without `--upload_b16` (bf16 weights): prints `{"f32_bytes", "bf16_bytes"}`.
//!
//! ```text
//! cargo run --release -p pretrain-model --example repo_size
//! ```

use candle_core::{DType, Device};
use pretrain_model::check::dir_size;
use pretrain_model::Model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = Model::default_gpt2(0, &Device::Cpu)?;
    let tmp = tempfile::tempdir()?;
    model.save(&tmp.path().join("f32"))?;
    model.save_as(&tmp.path().join("bf16"), DType::BF16)?;
    let f32_bytes = dir_size(&tmp.path().join("f32"))?;
    let bf16_bytes = dir_size(&tmp.path().join("bf16"))?;
    println!(
        "{}",
        serde_json::json!({ "f32_bytes": f32_bytes, "bf16_bytes": bf16_bytes })
    );
    Ok(())
}

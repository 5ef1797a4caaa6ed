//! Saves a random default GPT-2 to DIR and times loading it back (development aid).
use candle_core::Device;
use pretrain_model::{CausalLm, Model};
use std::time::Instant;
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/default-gpt2".into()),
    );
    if !dir.exists() {
        let t = Instant::now();
        Model::default_gpt2(1, &Device::Cpu)?.save(&dir)?;
        println!("init+save {:?}", t.elapsed());
    }
    for _ in 0..3 {
        let t = Instant::now();
        let m = Model::load(&dir, &Device::Cpu)?;
        println!("load {:?} params {}", t.elapsed(), m.param_count());
    }
    let t = Instant::now();
    let info = pretrain_model::check_model_dir(&dir, Default::default())?;
    println!("check {:?} {info:?}", t.elapsed());
    Ok(())
}

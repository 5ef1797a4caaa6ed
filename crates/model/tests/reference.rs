//! Losses, logits, parameter counts and files against the reference models
//! made with `transformers` (`testdata/models`).

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use pretrain_model::{CausalLm, Kernels};
use serde_json::Value;

mod common;
use common::{expected, load_on, models_dir, rows};

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

fn check_losses_and_logits(name: &str, kernels: Kernels) {
    let exp = expected(name);
    let model = load_on(&models_dir().join(name).join("model"), kernels);
    assert_eq!(model.param_count(), exp["param_count"].as_u64().unwrap());
    for b in exp["batches"].as_array().unwrap() {
        let ids = rows(&b["input_ids"]);
        let loss = model.loss(&ids).unwrap() as f64;
        assert!(
            (loss - f(&b["loss"])).abs() < 1e-4,
            "{name} {:?}: loss {loss} vs {}",
            b["shape"],
            b["loss"]
        );
        let logits = model.logits(&ids).unwrap();
        let v = logits.dim(2).unwrap();
        for l in b["logits"].as_array().unwrap() {
            let (r, p) = (
                l["row"].as_u64().unwrap() as usize,
                l["pos"].as_u64().unwrap() as usize,
            );
            let row: Vec<f32> = logits.get(r).unwrap().get(p).unwrap().to_vec1().unwrap();
            for (i, e) in l["first8"].as_array().unwrap().iter().enumerate() {
                assert!(
                    (row[i] as f64 - f(e)).abs() < 1e-4,
                    "{name} first8[{i}] at ({r},{p})"
                );
            }
            for (i, e) in l["last2"].as_array().unwrap().iter().enumerate() {
                assert!(
                    (row[v - 2 + i] as f64 - f(e)).abs() < 1e-4,
                    "{name} last2[{i}] at ({r},{p})"
                );
            }
            let max = row.iter().cloned().fold(f64::MIN, |m, x| m.max(x as f64));
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            assert!(
                (lse - f(&l["logsumexp"])).abs() < 1e-4,
                "{name} logsumexp at ({r},{p})"
            );
        }
    }
}

on_both_paths! {
    tiny_gpt2_losses_and_logits_match_transformers => |k| check_losses_and_logits("tiny-gpt2", k);
    tiny_llama_losses_and_logits_match_transformers => |k| check_losses_and_logits("tiny-llama", k);
}

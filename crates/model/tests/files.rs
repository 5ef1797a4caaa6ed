//! Hugging Face files: what we save equals what `transformers` saves, byte
//! for byte, and round trips are exact.
#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use pretrain_model::config::{default_gpt2_config_json, to_hf_json};
use pretrain_model::SafetensorsFile;
use pretrain_model::Weights;
use pretrain_model::{CausalLm, Model, ModelConfig};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod common;
use common::{models_dir, rows};

fn json(p: PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn sha256_hex(p: &std::path::Path) -> String {
    let d = Sha256::digest(std::fs::read(p).unwrap());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loading a directory `transformers` wrote and saving it again reproduces
/// every file byte for byte, so the directory hash a miner commits is the same.
fn resave_is_byte_identical(name: &str) {
    let exp = json(models_dir().join(name).join("expected.json"));
    let model = Model::load(&models_dir().join(name).join("model"), &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("saved");
    model.save(&out).unwrap();
    for f in exp["files"].as_array().unwrap() {
        let p = out.join(f["path"].as_str().unwrap());
        assert_eq!(
            sha256_hex(&p),
            f["sha256_hex"].as_str().unwrap(),
            "{name}: {}",
            f["path"]
        );
    }
    assert_eq!(
        pretrain_core::hash_of_directory(&out).unwrap(),
        exp["hash_of_directory"].as_str().unwrap()
    );
    // Saving over an existing directory replaces it and keeps the hash.
    model.save(&out).unwrap();
    assert_eq!(
        pretrain_core::hash_of_directory(&out).unwrap(),
        exp["hash_of_directory"].as_str().unwrap()
    );
    let back = Model::load(&out, &Device::Cpu).unwrap();
    assert_eq!(back.weights().len(), model.weights().len());
    for (k, t) in model.weights() {
        let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = back.weights()[k].flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{k} differs"
        );
    }
}

#[test]
fn tiny_gpt2_resave_is_byte_identical_to_transformers() {
    resave_is_byte_identical("tiny-gpt2");
}

#[test]
fn tiny_llama_resave_is_byte_identical_to_transformers() {
    resave_is_byte_identical("tiny-llama");
}

#[test]
fn reference_headers_parse_as_expected() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let exp = json(models_dir().join(name).join("expected.json"));
        let f = SafetensorsFile::open(&models_dir().join(name).join("model/model.safetensors"))
            .unwrap();
        assert_eq!(f.metadata.get("format").and_then(Value::as_str), Some("pt"));
        let mut got: Vec<_> = f
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone(), t.start, t.end))
            .collect();
        got.sort();
        let want: Vec<_> = exp["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let shape = t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect::<Vec<_>>();
                let o = t["data_offsets"].as_array().unwrap();
                (
                    t["name"].as_str().unwrap().to_string(),
                    shape,
                    o[0].as_u64().unwrap() as usize,
                    o[1].as_u64().unwrap() as usize,
                )
            })
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn default_gpt2_config_and_tensors_match_reference() {
    let dir = models_dir().join("default-gpt2");
    let cfg_json = default_gpt2_config_json();
    assert_eq!(
        to_hf_json(&cfg_json),
        std::fs::read_to_string(dir.join("config.json")).unwrap()
    );
    let cfg = ModelConfig::from_json(&cfg_json).unwrap();
    let tensors = json(dir.join("tensors.json"));
    assert_eq!(cfg.param_count(), 122_268_040);
    assert_eq!(cfg.param_count(), tensors["param_count"].as_u64().unwrap());

    // Zero weights (cheap to make) through the real save path.
    let weights: Weights = cfg
        .tensor_shapes()
        .into_iter()
        .map(|(n, s)| (n, Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap()))
        .collect();
    let model = Model::from_parts(cfg_json, weights, &Device::Cpu).unwrap();
    assert_eq!(model.param_count(), 122_268_040);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("default");
    model.save(&out).unwrap();
    for f in ["config.json", "generation_config.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(dir.join(f)).unwrap(),
            "{f}"
        );
    }
    for f in tensors["files"].as_array().unwrap() {
        let len = std::fs::metadata(out.join(f["path"].as_str().unwrap()))
            .unwrap()
            .len();
        assert_eq!(len, f["size"].as_u64().unwrap(), "{}", f["path"]);
    }
    let st = SafetensorsFile::open(&out.join("model.safetensors")).unwrap();
    let raw = std::fs::read(out.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(raw[..8].try_into().unwrap());
    assert_eq!(
        header_len,
        tensors["safetensors_header_len"].as_u64().unwrap()
    );
    let mut got: Vec<_> = st
        .tensors
        .iter()
        .map(|t| (t.name.clone(), "F32", t.shape.clone(), t.start, t.end))
        .collect();
    got.sort();
    let want: Vec<_> = tensors["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect::<Vec<_>>();
            let o = t["data_offsets"].as_array().unwrap();
            assert_eq!(t["dtype"], "F32");
            (
                t["name"].as_str().unwrap().to_string(),
                "F32",
                shape,
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        st.metadata,
        tensors["metadata"].as_object().unwrap().clone()
    );
}

#[test]
fn half_precision_weights_load_as_f32() {
    // Rewrite the tiny GPT-2 in f16 and bf16 by hand; losses stay close.
    let src = models_dir().join("tiny-gpt2/model");
    let model = Model::load(&src, &Device::Cpu).unwrap();
    let exp = json(models_dir().join("tiny-gpt2/expected.json"));
    let batch = rows(&exp["batches"][2]["input_ids"]);
    let want = exp["batches"][2]["loss"].as_f64().unwrap();
    for (dt, name) in [(DType::F16, "F16"), (DType::BF16, "BF16")] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (k, t) in model.weights() {
            let h = t.to_dtype(dt).unwrap();
            let start = data.len();
            h.write_bytes(&mut data).unwrap();
            header.insert(k.clone(), serde_json::json!({"dtype": name, "shape": t.dims(), "data_offsets": [start, data.len()]}));
        }
        let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
        while h.len() & 7 != 0 {
            h.push(b' ');
        }
        let mut file = (h.len() as u64).to_le_bytes().to_vec();
        file.extend(h);
        file.extend(data);
        std::fs::write(tmp.path().join("model.safetensors"), file).unwrap();
        let half = Model::load(tmp.path(), &Device::Cpu).unwrap();
        let loss = half.loss(&batch).unwrap() as f64;
        let tol = if dt == DType::F16 { 0.05 } else { 0.2 };
        assert!((loss - want).abs() < tol, "{name}: {loss} vs {want}");
        assert!(half.weights().values().all(|t| t.dtype() == DType::F32));
    }
}

#[test]
fn sharded_weights_load_like_a_single_file() {
    let src = models_dir().join("tiny-llama/model");
    let model = Model::load(&src, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let all: Vec<(String, Tensor)> = model
        .weights()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (a, b) = all.split_at(all.len() / 2);
    let mut map = serde_json::Map::new();
    for (part, name) in [
        (a, "model-00001-of-00002.safetensors"),
        (b, "model-00002-of-00002.safetensors"),
    ] {
        pretrain_model::write_safetensors(&tmp.path().join(name), part, &[("format", "pt")])
            .unwrap();
        for (k, _) in part {
            map.insert(k.clone(), Value::String(name.into()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 12940160}, "weight_map": map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let sharded = Model::load(tmp.path(), &Device::Cpu).unwrap();
    let batch = vec![vec![1u32, 500, 42, 7, 9000]];
    assert_eq!(sharded.loss(&batch).unwrap(), model.loss(&batch).unwrap());
    // A shard name that escapes the directory is refused.
    let bad = serde_json::json!({"weight_map": {"lm_head.weight": "../x.safetensors"}});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        bad.to_string(),
    )
    .unwrap();
    let err = Model::load(tmp.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad shard file name"), "{err}");
}

#[test]
fn bare_weights_file_loads_with_a_given_config() {
    let src = models_dir().join("tiny-gpt2/model");
    let exp = json(models_dir().join("tiny-gpt2/expected.json"));
    let config = json(src.join("config.json"));
    let m = Model::load_weights_file(&src.join("model.safetensors"), config, &Device::Cpu).unwrap();
    let b = &exp["batches"][2];
    let batch: Vec<Vec<u32>> = serde_json::from_value(b["input_ids"].clone()).unwrap();
    let loss = m.loss(&batch).unwrap() as f64;
    assert!((loss - b["loss"].as_f64().unwrap()).abs() < 1e-4);
    // The wrong config for the file is a shape error, not a panic.
    let err = Model::load_weights_file(
        &src.join("model.safetensors"),
        default_gpt2_config_json(),
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "tensor transformer.h.0.attn.c_attn.bias has shape [96], the config needs [2280]"
    );
}

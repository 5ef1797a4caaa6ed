//! Every bad input of the validator's model checks fails with its own reason.
#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::path::{Path, PathBuf};

use candle_core::Device;
use pretrain_model::{check_model_dir, check_reason, CausalLm, Limits, Model, ModelError};
use serde_json::{json, Value};

mod common;

fn tiny(name: &str) -> PathBuf {
    common::models_dir().join(name).join("model")
}

/// A copy of a reference model directory to tamper with.
fn copy_of(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(tiny(name)).unwrap() {
        let f = f.unwrap();
        let dst = tmp.path().join(f.file_name());
        std::fs::copy(f.path(), &dst).unwrap();
        let mut perm = std::fs::metadata(&dst).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(&dst, perm).unwrap();
    }
    tmp
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(p, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// Writes `model.safetensors` with a raw header and raw data.
fn write_st(dir: &Path, header: &str, data: &[u8]) {
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(data);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
}

fn reason(dir: &Path) -> String {
    check_reason(dir, Limits::default()).expect("the check should fail")
}

#[test]
fn reference_models_pass_with_their_counts() {
    let g = check_model_dir(&tiny("tiny-gpt2"), Limits::default()).unwrap();
    assert_eq!(g.params, 1_666_464);
    assert_eq!(g.size_bytes, 748 + 119 + 6_668_456);
    let l = check_model_dir(&tiny("tiny-llama"), Limits::default()).unwrap();
    assert_eq!(l.params, 3_235_040);
}

#[test]
fn unsupported_architecture() {
    let d = copy_of("tiny-gpt2");
    edit_config(d.path(), |m| {
        m.insert("model_type".into(), json!("bert"));
    });
    assert_eq!(
        reason(d.path()),
        "architecture not supported: model_type \"bert\" (supported: gpt2, llama)"
    );
    let d = copy_of("tiny-gpt2");
    edit_config(d.path(), |m| {
        m.insert(
            "architectures".into(),
            json!(["GPT2ForSequenceClassification"]),
        );
    });
    assert!(reason(d.path()).starts_with("architecture not supported: architectures lists"));
}

#[test]
fn too_many_parameters() {
    let r = check_reason(
        &tiny("tiny-gpt2"),
        Limits {
            max_params: 1_000_000,
            ..Limits::default()
        },
    )
    .unwrap();
    assert_eq!(r, "too many parameters: 1666464 > limit 1000000");
    // A config that claims a huge model is refused before any weight is read.
    let d = copy_of("tiny-llama");
    edit_config(d.path(), |m| {
        m.insert("intermediate_size".into(), json!(1_000_000));
    });
    assert!(reason(d.path()).starts_with("too many parameters: "));
}

#[test]
fn too_large_on_disk() {
    let r = check_reason(
        &tiny("tiny-gpt2"),
        Limits {
            max_bytes: 1_000_000,
            ..Limits::default()
        },
    )
    .unwrap();
    assert_eq!(r, "model files too large: 6669323 bytes > limit 1000000");
}

#[test]
fn pickle_without_safetensors() {
    let d = copy_of("tiny-gpt2");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    std::fs::write(d.path().join("pytorch_model.bin"), b"\x80\x02pickle").unwrap();
    assert_eq!(
        reason(d.path()),
        "pickle weights are not accepted (found pytorch_model.bin); only safetensors"
    );
    std::fs::remove_file(d.path().join("pytorch_model.bin")).unwrap();
    assert!(reason(d.path()).starts_with("no model.safetensors"));
}

#[test]
fn lying_headers() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,64]}}"#,
            vec![0; 16],
            "bad safetensors file model.safetensors: tensor b: data_offsets [8, 64] lie outside the 16-byte data section",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            vec![0; 12],
            "bad safetensors file model.safetensors: tensor b overlaps the previous tensor (starts at 4 < 8)",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            vec![0; 8],
            "bad safetensors file model.safetensors: tensor a: F32 x [3] needs 12 bytes but data_offsets [0, 8] hold 8",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}"#,
            vec![0; 8],
            "bad safetensors file model.safetensors: tensor a: shape overflows",
        ),
        (
            r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,8]}}"#,
            vec![0; 8],
            "bad safetensors file model.safetensors: tensor a: unknown dtype Q4",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            vec![0; 12],
            "bad safetensors file model.safetensors: data section has 12 bytes but the tensors cover 4",
        ),
        (r#"{"a":"#, vec![], "bad safetensors file model.safetensors: header is not valid JSON"),
    ];
    for (header, data, want) in cases {
        let d = copy_of("tiny-gpt2");
        write_st(d.path(), header, &data);
        let r = reason(d.path());
        assert!(r.starts_with(want), "{r:?} should start with {want:?}");
        // Loading gives the same typed error, never a panic.
        assert!(matches!(
            Model::load(d.path(), &Device::Cpu),
            Err(ModelError::Safetensors { .. })
        ));
    }
}

#[test]
fn oversized_or_truncated_header() {
    let d = copy_of("tiny-gpt2");
    let mut file = (200_000_000u64).to_le_bytes().to_vec();
    file.extend_from_slice(b"{}");
    std::fs::write(d.path().join("model.safetensors"), &file).unwrap();
    assert_eq!(
        reason(d.path()),
        "bad safetensors file model.safetensors: header of 200000000 bytes exceeds the 100000000-byte limit"
    );
    let mut file = (1000u64).to_le_bytes().to_vec();
    file.extend_from_slice(b"{}");
    std::fs::write(d.path().join("model.safetensors"), &file).unwrap();
    assert_eq!(
        reason(d.path()),
        "bad safetensors file model.safetensors: header of 1000 bytes runs past the end of the 10-byte file"
    );
    std::fs::write(d.path().join("model.safetensors"), b"abc").unwrap();
    assert_eq!(
        reason(d.path()),
        "bad safetensors file model.safetensors: file of 3 bytes is shorter than the 8-byte header length"
    );
}

#[test]
fn missing_tensor_and_wrong_shape() {
    let src = Model::load(&tiny("tiny-gpt2"), &Device::Cpu).unwrap();
    // Drop one tensor by rewriting the file without it.
    let d = copy_of("tiny-gpt2");
    let kept: Vec<(String, candle_core::Tensor)> = src
        .weights()
        .iter()
        .filter(|(k, _)| k.as_str() != "transformer.h.1.ln_2.bias")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    pretrain_model::write_safetensors(
        &d.path().join("model.safetensors"),
        &kept,
        &[("format", "pt")],
    )
    .unwrap();
    assert_eq!(reason(d.path()), "missing tensor transformer.h.1.ln_2.bias");

    let d = copy_of("tiny-gpt2");
    edit_config(d.path(), |m| {
        m.insert("vocab_size".into(), json!(50000));
    });
    assert_eq!(
        reason(d.path()),
        "tensor transformer.wte.weight has shape [50257, 32], the config needs [50000, 32]"
    );
}

#[test]
fn non_finite_weights_are_allowed_and_give_a_non_finite_loss() {
    let src = Model::load(&tiny("tiny-gpt2"), &Device::Cpu).unwrap();
    let d = copy_of("tiny-gpt2");
    let tensors: Vec<(String, candle_core::Tensor)> = src
        .weights()
        .iter()
        .map(|(k, v)| {
            if k == "transformer.ln_f.bias" {
                let mut x: Vec<f32> = v.to_vec1().unwrap();
                x[0] = f32::NAN;
                x[1] = f32::INFINITY;
                (
                    k.clone(),
                    candle_core::Tensor::new(x, &Device::Cpu).unwrap(),
                )
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    pretrain_model::write_safetensors(
        &d.path().join("model.safetensors"),
        &tensors,
        &[("format", "pt")],
    )
    .unwrap();
    assert!(check_reason(d.path(), Limits::default()).is_none());
    let m = Model::load(d.path(), &Device::Cpu).unwrap();
    let loss = m.loss(&[vec![1, 2, 3, 4]]).unwrap();
    assert!(!loss.is_finite(), "{loss}");
}

#[test]
fn bad_token_rows_are_errors_and_inf_for_the_validator() {
    let m = Model::load(&tiny("tiny-gpt2"), &Device::Cpu).unwrap();
    for (batch, want) in [
        (
            vec![vec![1, 50257]],
            "bad input: token id 50257 is outside the vocabulary of 50257",
        ),
        (
            vec![vec![1, 2], vec![3]],
            "bad input: rows must have equal length: row 0 has 2 tokens, row 1 has 1",
        ),
        (
            vec![vec![5]],
            "bad input: rows need at least 2 tokens for a next-token loss, got 1",
        ),
        (
            vec![vec![0; 1025]],
            "bad input: rows of 1025 tokens exceed the model's 1024 positions",
        ),
    ] {
        assert_eq!(m.loss(&batch).unwrap_err().to_string(), want);
        assert_eq!(pretrain_model::loss_or_inf(&m, &batch), f32::INFINITY);
    }
    assert_eq!(
        m.loss(&[]).unwrap_err().to_string(),
        "bad input: empty batch"
    );
}

/// Rewrites the tiny GPT-2 with extra tensors and one tensor's dtype replaced.
fn tiny_with(extra_i64: bool, ln_f_bias_as_i64: bool) -> tempfile::TempDir {
    let src = Model::load(&tiny("tiny-gpt2"), &Device::Cpu).unwrap();
    let d = copy_of("tiny-gpt2");
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (k, t) in src.weights() {
        let start = data.len();
        if k == "transformer.ln_f.bias" && ln_f_bias_as_i64 {
            data.extend(std::iter::repeat_n(0u8, 8 * t.elem_count()));
            header.insert(
                k.clone(),
                json!({"dtype": "I64", "shape": t.dims(), "data_offsets": [start, data.len()]}),
            );
        } else {
            t.write_bytes(&mut data).unwrap();
            header.insert(
                k.clone(),
                json!({"dtype": "F32", "shape": t.dims(), "data_offsets": [start, data.len()]}),
            );
        }
    }
    if extra_i64 {
        let start = data.len();
        data.extend_from_slice(&[1u8; 16]);
        header.insert(
            "transformer.h.0.attn.step".into(),
            json!({"dtype": "I64", "shape": [2], "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_string(&Value::Object(header)).unwrap();
    while h.len() & 7 != 0 {
        h.push(' ');
    }
    write_st(d.path(), &h, &data);
    d
}

#[test]
fn non_float_tensors_are_refused_only_where_the_model_uses_them() {
    // An unused integer buffer (old checkpoints carry some) is ignored, as transformers does.
    let d = tiny_with(true, false);
    assert!(check_reason(d.path(), Limits::default()).is_none());
    assert!(Model::load(d.path(), &Device::Cpu).is_ok());
    let d = tiny_with(false, true);
    assert_eq!(
        reason(d.path()),
        "bad safetensors file model.safetensors: tensor transformer.ln_f.bias has dtype I64; weights must be F32, F16, BF16 or F64"
    );
}

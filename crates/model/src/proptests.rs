//! Property tests of the two parsers that read untrusted bytes: `config.json`
//! and the safetensors header. Whatever the input, they never panic; they
//! accept it or refuse it with a reason.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::arch::ModelConfig;
use crate::error::ModelError;
use crate::hf::safetensors::parse_header;

/// Cases per property (the brief's bound: at most 256).
const CASES: u32 = 256;

/// JSON scalars that stress the numeric fields: zero, huge, negative,
/// fractional, strings, null, booleans.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0u64..40).prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e3f64..1e3).prop_map(|x| json!(x)),
        prop_oneof![Just(f64::MAX), Just(f64::MIN_POSITIVE), Just(-0.0)].prop_map(|x| json!(x)),
        "[a-z_]{0,12}".prop_map(Value::String),
        Just(json!("gpt2")),
        Just(json!("llama")),
        Just(json!("silu")),
        Just(json!(["GPT2LMHeadModel"])),
        Just(json!(["LlamaForCausalLM", 3])),
        Just(json!({})),
    ]
}

/// Keys the parser reads, and a few it does not.
const KEYS: &[&str] = &[
    "model_type",
    "architectures",
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "layer_norm_epsilon",
    "embd_pdrop",
    "attn_pdrop",
    "resid_pdrop",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "tie_word_embeddings",
    "activation_function",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "hidden_act",
    "attention_bias",
    "unknown",
];

fn config_object() -> impl Strategy<Value = Value> {
    let entry = (0..KEYS.len(), scalar());
    (
        prop_oneof![Just("gpt2"), Just("llama"), Just("bert")],
        prop::collection::vec(entry, 0..16),
    )
        .prop_map(|(ty, entries)| {
            let mut m = Map::new();
            m.insert("model_type".into(), json!(ty));
            for (k, v) in entries {
                m.insert(KEYS[k].into(), v);
            }
            Value::Object(m)
        })
}

fn refusal_has_reason(e: &ModelError) -> bool {
    matches!(
        e,
        ModelError::Config(_) | ModelError::UnsupportedArchitecture(_)
    ) && !e.to_string().trim().is_empty()
}

/// A safetensors file: header JSON of tensor entries (valid or not) and a data section.
fn safetensors_bytes() -> impl Strategy<Value = Vec<u8>> {
    let dtype = prop_oneof![
        Just("F32"),
        Just("F16"),
        Just("BF16"),
        Just("I64"),
        Just("U8"),
        Just("Q4"),
        Just("")
    ];
    let shape = prop::collection::vec(prop_oneof![0u64..5, any::<u64>()], 0..4);
    let offsets = prop::collection::vec(prop_oneof![0u64..64, any::<u64>()], 0..4);
    let tensor = ("[a-z.]{0,6}", dtype, shape, offsets, any::<bool>());
    let header_len_lie = prop_oneof![
        Just(None),
        any::<u64>().prop_map(Some),
        (0u64..300).prop_map(Some)
    ];
    (
        prop::collection::vec(tensor, 0..5),
        0usize..128,
        header_len_lie,
        any::<bool>(),
    )
        .prop_map(|(tensors, data_len, lie, metadata)| {
            let mut m = Map::new();
            if metadata {
                m.insert("__metadata__".into(), json!({"format": "pt"}));
            }
            for (name, dtype, shape, offs, as_object) in tensors {
                let entry = json!({"dtype": dtype, "shape": shape, "data_offsets": offs});
                m.insert(name, if as_object { entry } else { json!(shape) });
            }
            let header = serde_json::to_vec(&Value::Object(m)).unwrap_or_default();
            let n = lie.unwrap_or(header.len() as u64);
            let mut bytes = n.to_le_bytes().to_vec();
            bytes.extend_from_slice(&header);
            bytes.resize(bytes.len() + data_len, 0);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn config_json_values_are_accepted_or_refused_with_a_reason(v in config_object()) {
        match ModelConfig::from_json(&v) {
            Ok(cfg) => {
                // Accepted configs can be counted without overflow or panics.
                let _ = cfg.param_count();
                prop_assert!(cfg.vocab_size() > 0);
            }
            Err(e) => prop_assert!(refusal_has_reason(&e), "{e:?}"),
        }
    }

    #[test]
    fn config_json_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            if let Err(e) = ModelConfig::from_json(&v) {
                prop_assert!(refusal_has_reason(&e), "{e:?}");
            }
        }
    }

    #[test]
    fn safetensors_headers_are_accepted_or_refused_with_a_reason(bytes in safetensors_bytes()) {
        match parse_header("t.safetensors", &bytes) {
            Ok(h) => {
                // Accepted: the tensors tile the data section exactly.
                let data = bytes.len() - h.data_start;
                let mut pos = 0;
                for t in &h.tensors {
                    prop_assert_eq!(t.start, pos);
                    prop_assert!(t.end >= t.start && t.end <= data);
                    pos = t.end;
                }
                prop_assert_eq!(pos, data);
            }
            Err(ModelError::Safetensors { file, reason }) => {
                prop_assert_eq!(file, "t.safetensors");
                prop_assert!(!reason.trim().is_empty());
            }
            Err(e) => prop_assert!(false, "unexpected error kind {e:?}"),
        }
    }

    #[test]
    fn arbitrary_bytes_as_safetensors_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = parse_header("t.safetensors", &bytes) {
            prop_assert!(matches!(e, ModelError::Safetensors { .. }), "{e:?}");
        }
    }
}

//! `config.json` and `generation_config.json` as `transformers` writes them
//! (`json.dumps(indent=2, sort_keys=True)` + newline), the subnet's default
//! config, and reading a directory's `config.json`.

use std::path::Path;

use serde_json::{Map, Value};

use crate::arch::ModelConfig;
use crate::error::{ModelError, Result};

/// File name of the config.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the generation config.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// Reads and parses `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<(Value, ModelConfig)> {
    let path = dir.join(CONFIG_FILE);
    // A regular file of bounded size: a link to /dev/zero must not be read until memory runs out.
    let text =
        pretrain_core::bounded::read_regular(&path, pretrain_core::bounded::SMALL_FILE_LIMIT)
            .map_err(|e| ModelError::io(&path, e))?;
    let json: Value = serde_json::from_slice(&text)
        .map_err(|e| ModelError::Config(format!("config.json is not valid JSON: {e}")))?;
    let cfg = ModelConfig::from_json(&json)?;
    Ok((json, cfg))
}

/// `transformers_version` written into configs we create, the original's pin.
pub const TRANSFORMERS_VERSION: &str = "4.34.1";

/// The subnet's default model config (`GPT2Config(n_head=10, n_layer=12,
/// n_embd=760)`) as `config.json` writes it, byte for byte.
pub fn default_gpt2_config_json() -> Value {
    serde_json::json!({
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 50256,
        "embd_pdrop": 0.1,
        "eos_token_id": 50256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_embd": 760,
        "n_head": 10,
        "n_inner": null,
        "n_layer": 12,
        "n_positions": 1024,
        "reorder_and_upcast_attn": false,
        "resid_pdrop": 0.1,
        "scale_attn_by_inverse_layer_idx": false,
        "scale_attn_weights": true,
        "summary_activation": null,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": true,
        "summary_type": "cls_index",
        "summary_use_proj": true,
        "torch_dtype": "float32",
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": true,
        "vocab_size": 50257
    })
}

/// `generation_config.json` as `save_pretrained` derives it from a config.
pub fn generation_config_json(config: &Value) -> Value {
    let mut m = Map::new();
    m.insert("_from_model_config".into(), Value::Bool(true));
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
            m.insert(key.into(), v.clone());
        }
    }
    m.insert(
        "transformers_version".into(),
        Value::String(TRANSFORMERS_VERSION.into()),
    );
    Value::Object(m)
}

/// Formats a float as Python's `repr` does (what `json.dumps` writes).
pub fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..16).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else if x.fract() == 0.0 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                // ensure_ascii: non-ASCII as \uXXXX, astral chars as surrogate pairs.
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.is_f64() {
                out.push_str(&python_float(n.as_f64().unwrap_or(f64::NAN)));
            } else {
                out.push_str(&n.to_string());
            }
        }
        Value::String(s) => write_json_string(out, s),
        Value::Array(a) => {
            if a.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push_str("[\n");
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                out.push_str(&" ".repeat(indent + 2));
                write_json(out, x, indent + 2);
            }
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            out.push(']');
        }
        Value::Object(m) => {
            if m.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push_str("{\n");
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                out.push_str(&" ".repeat(indent + 2));
                write_json_string(out, k);
                out.push_str(": ");
                write_json(out, &m[*k], indent + 2);
            }
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            out.push('}');
        }
    }
}

/// Serialises JSON as `transformers` writes config files:
/// `json.dumps(value, indent=2, sort_keys=True) + "\n"`.
pub fn to_hf_json(v: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, v, 0);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default model has the subnet's limit, 122,268,040 (SPEC.md).
    #[test]
    fn default_config_has_the_subnet_parameter_count() {
        let default = ModelConfig::from_json(&default_gpt2_config_json()).unwrap();
        assert_eq!(default.param_count(), 122_268_040);
    }

    #[test]
    fn python_float_matches_repr() {
        for (x, s) in [
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (1e-6, "1e-06"),
            (10000.0, "10000.0"),
            (0.0, "0.0"),
            (0.02, "0.02"),
            (0.0001, "0.0001"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (123456.789, "123456.789"),
        ] {
            assert_eq!(python_float(x), s, "{x}");
        }
    }
}

//! `config.json` of the two architectures: parsing what the forward pass needs,
//! the tensors each config implies, and writing JSON exactly as
//! `transformers` does (`json.dumps(indent=2, sort_keys=True)` + newline).

use serde_json::{Map, Value};

use crate::error::{ModelError, Result};

/// `transformers_version` written into configs we create, the original's pin.
pub const TRANSFORMERS_VERSION: &str = "4.34.1";

/// A supported architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Architecture {
    /// `GPT2LMHeadModel` (`model_type` `gpt2`).
    Gpt2,
    /// `LlamaForCausalLM` (`model_type` `llama`).
    Llama,
}

impl Architecture {
    /// The Hugging Face class name.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Gpt2 => "GPT2LMHeadModel",
            Self::Llama => "LlamaForCausalLM",
        }
    }
}

/// What a GPT-2 forward pass needs from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Maximum sequence length (position embeddings).
    pub n_positions: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// MLP inner size (`n_inner`, default 4 * n_embd).
    pub n_inner: usize,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// Dropout after the embeddings (training only).
    pub embd_pdrop: f32,
    /// Dropout on the attention probabilities (training only).
    pub attn_pdrop: f32,
    /// Dropout on each residual branch (training only).
    pub resid_pdrop: f32,
    /// Divide attention scores by sqrt(head_dim).
    pub scale_attn_weights: bool,
    /// Also divide attention scores by (layer index + 1).
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Output projection shares the token embedding.
    pub tie_word_embeddings: bool,
}

/// What a LLaMA forward pass needs from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Maximum sequence length.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Output projection shares the token embedding.
    pub tie_word_embeddings: bool,
    /// q/k/v/o projections have biases.
    pub attention_bias: bool,
}

/// The config of a supported model.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// GPT-2.
    Gpt2(Gpt2Config),
    /// LLaMA.
    Llama(LlamaConfig),
}

fn get<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

/// Most layers a config may declare: far above any model within the subnet's parameter
/// limit, and low enough that the per-layer tensor list stays small.
pub const MAX_LAYERS: usize = 1024;

// A layer count: bounded before anything is built per layer.
fn layers_field(m: &Map<String, Value>, key: &str, default: usize) -> Result<usize> {
    let n = usize_field(m, key, Some(default))?;
    if n > MAX_LAYERS {
        return Err(ModelError::Config(format!(
            "{key} = {n} is out of range 1..={MAX_LAYERS}"
        )));
    }
    Ok(n)
}

fn usize_field(m: &Map<String, Value>, key: &str, default: Option<usize>) -> Result<usize> {
    match get(m, key) {
        None => default.ok_or_else(|| ModelError::Config(format!("missing field {key}"))),
        Some(v) => {
            let n = v.as_u64().ok_or_else(|| {
                ModelError::Config(format!("{key} must be a non-negative integer, got {v}"))
            })?;
            // Bounded so that products of a few fields cannot overflow u64.
            if n == 0 || n > (1 << 24) {
                return Err(ModelError::Config(format!(
                    "{key} = {n} is out of range 1..=16777216"
                )));
            }
            Ok(n as usize)
        }
    }
}

fn f64_field(m: &Map<String, Value>, key: &str, default: f64) -> Result<f64> {
    match get(m, key) {
        None => Ok(default),
        Some(v) => {
            let x = v
                .as_f64()
                .ok_or_else(|| ModelError::Config(format!("{key} must be a number, got {v}")))?;
            if !x.is_finite() {
                return Err(ModelError::Config(format!("{key} must be finite")));
            }
            Ok(x)
        }
    }
}

fn bool_field(m: &Map<String, Value>, key: &str, default: bool) -> Result<bool> {
    match get(m, key) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| ModelError::Config(format!("{key} must be true or false, got {v}"))),
    }
}

fn prob_field(m: &Map<String, Value>, key: &str, default: f64) -> Result<f32> {
    let p = f64_field(m, key, default)?;
    if !(0.0..1.0).contains(&p) {
        return Err(ModelError::Config(format!("{key} = {p} must be in [0, 1)")));
    }
    Ok(p as f32)
}

impl ModelConfig {
    /// Parses a `config.json` value; unsupported `model_type`s give
    /// [`ModelError::UnsupportedArchitecture`].
    pub fn from_json(value: &Value) -> Result<Self> {
        let m = value
            .as_object()
            .ok_or_else(|| ModelError::Config("config.json is not a JSON object".into()))?;
        let model_type = m
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::Config("missing model_type".into()))?;
        let cfg = match model_type {
            "gpt2" => Self::Gpt2(Self::gpt2_from(m)?),
            "llama" => Self::Llama(Self::llama_from(m)?),
            other => {
                return Err(ModelError::UnsupportedArchitecture(format!(
                    "model_type {other:?} (supported: gpt2, llama)"
                )))
            }
        };
        // `AutoModelForCausalLM` picks the class from model_type; a listed
        // architecture that is not the causal-LM head is a different model.
        if let Some(archs) = get(m, "architectures") {
            let archs = archs
                .as_array()
                .ok_or_else(|| ModelError::Config("architectures must be a list".into()))?;
            let want = cfg.architecture().class_name();
            if let Some(bad) = archs.iter().find(|a| a.as_str() != Some(want)) {
                return Err(ModelError::UnsupportedArchitecture(format!(
                    "architectures lists {bad} (supported: {want} for model_type {model_type})"
                )));
            }
        }
        Ok(cfg)
    }

    fn gpt2_from(m: &Map<String, Value>) -> Result<Gpt2Config> {
        let n_embd = usize_field(m, "n_embd", Some(768))?;
        let n_head = usize_field(m, "n_head", Some(12))?;
        if n_embd % n_head != 0 {
            return Err(ModelError::Config(format!(
                "n_embd {n_embd} is not a multiple of n_head {n_head}"
            )));
        }
        let act = get(m, "activation_function")
            .and_then(Value::as_str)
            .unwrap_or("gelu_new");
        if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
            return Err(ModelError::UnsupportedArchitecture(format!(
                "gpt2 activation_function {act:?} (supported: gelu_new)"
            )));
        }
        Ok(Gpt2Config {
            vocab_size: usize_field(m, "vocab_size", Some(50257))?,
            n_positions: usize_field(m, "n_positions", Some(1024))?,
            n_embd,
            n_layer: layers_field(m, "n_layer", 12)?,
            n_head,
            n_inner: usize_field(m, "n_inner", Some(4 * n_embd))?,
            layer_norm_epsilon: f64_field(m, "layer_norm_epsilon", 1e-5)?,
            embd_pdrop: prob_field(m, "embd_pdrop", 0.1)?,
            attn_pdrop: prob_field(m, "attn_pdrop", 0.1)?,
            resid_pdrop: prob_field(m, "resid_pdrop", 0.1)?,
            scale_attn_weights: bool_field(m, "scale_attn_weights", true)?,
            scale_attn_by_inverse_layer_idx: bool_field(
                m,
                "scale_attn_by_inverse_layer_idx",
                false,
            )?,
            tie_word_embeddings: bool_field(m, "tie_word_embeddings", true)?,
        })
    }

    fn llama_from(m: &Map<String, Value>) -> Result<LlamaConfig> {
        let hidden_size = usize_field(m, "hidden_size", Some(4096))?;
        let heads = usize_field(m, "num_attention_heads", Some(32))?;
        let kv = usize_field(m, "num_key_value_heads", Some(heads))?;
        if hidden_size % heads != 0 || heads % kv != 0 {
            return Err(ModelError::Config(format!(
                "hidden_size {hidden_size}, num_attention_heads {heads} and num_key_value_heads {kv} do not divide"
            )));
        }
        if (hidden_size / heads) % 2 != 0 {
            return Err(ModelError::Config(
                "head dimension must be even for rotary embeddings".into(),
            ));
        }
        if get(m, "rope_scaling").is_some() {
            return Err(ModelError::UnsupportedArchitecture(
                "llama rope_scaling is not supported".into(),
            ));
        }
        let act = get(m, "hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(ModelError::UnsupportedArchitecture(format!(
                "llama hidden_act {act:?} (supported: silu)"
            )));
        }
        let rope_theta = f64_field(m, "rope_theta", 10000.0)?;
        if rope_theta <= 0.0 {
            return Err(ModelError::Config("rope_theta must be positive".into()));
        }
        Ok(LlamaConfig {
            vocab_size: usize_field(m, "vocab_size", Some(32000))?,
            hidden_size,
            intermediate_size: usize_field(m, "intermediate_size", Some(11008))?,
            num_hidden_layers: layers_field(m, "num_hidden_layers", 32)?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            max_position_embeddings: usize_field(m, "max_position_embeddings", Some(2048))?,
            rms_norm_eps: f64_field(m, "rms_norm_eps", 1e-6)?,
            rope_theta,
            tie_word_embeddings: bool_field(m, "tie_word_embeddings", false)?,
            attention_bias: bool_field(m, "attention_bias", false)?,
        })
    }

    /// The architecture of this config.
    pub fn architecture(&self) -> Architecture {
        match self {
            Self::Gpt2(_) => Architecture::Gpt2,
            Self::Llama(_) => Architecture::Llama,
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.vocab_size,
            Self::Llama(c) => c.vocab_size,
        }
    }

    /// Longest sequence the model accepts (GPT-2's learned positions); LLaMA's
    /// rotary positions have no hard limit.
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            Self::Gpt2(c) => Some(c.n_positions),
            Self::Llama(_) => None,
        }
    }

    /// Whether the output projection is the token embedding.
    pub fn tied(&self) -> bool {
        match self {
            Self::Gpt2(c) => c.tie_word_embeddings,
            Self::Llama(c) => c.tie_word_embeddings,
        }
    }

    /// Name of the token embedding tensor.
    pub fn embedding_name(&self) -> &'static str {
        match self {
            Self::Gpt2(_) => "transformer.wte.weight",
            Self::Llama(_) => "model.embed_tokens.weight",
        }
    }

    /// Every saved parameter tensor (HF name, shape), sorted by name. Tied
    /// models have no `lm_head.weight`: it is the embedding.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<(String, Vec<usize>)> = Vec::new();
        match self {
            Self::Gpt2(c) => {
                let d = c.n_embd;
                v.push(("transformer.wte.weight".into(), vec![c.vocab_size, d]));
                v.push(("transformer.wpe.weight".into(), vec![c.n_positions, d]));
                for i in 0..c.n_layer {
                    let p = format!("transformer.h.{i}.");
                    for (n, s) in [
                        ("ln_1.weight", vec![d]),
                        ("ln_1.bias", vec![d]),
                        ("attn.c_attn.weight", vec![d, 3 * d]),
                        ("attn.c_attn.bias", vec![3 * d]),
                        ("attn.c_proj.weight", vec![d, d]),
                        ("attn.c_proj.bias", vec![d]),
                        ("ln_2.weight", vec![d]),
                        ("ln_2.bias", vec![d]),
                        ("mlp.c_fc.weight", vec![d, c.n_inner]),
                        ("mlp.c_fc.bias", vec![c.n_inner]),
                        ("mlp.c_proj.weight", vec![c.n_inner, d]),
                        ("mlp.c_proj.bias", vec![d]),
                    ] {
                        v.push((format!("{p}{n}"), s));
                    }
                }
                v.push(("transformer.ln_f.weight".into(), vec![d]));
                v.push(("transformer.ln_f.bias".into(), vec![d]));
                if !c.tie_word_embeddings {
                    v.push(("lm_head.weight".into(), vec![c.vocab_size, d]));
                }
            }
            Self::Llama(c) => {
                let d = c.hidden_size;
                let hd = d / c.num_attention_heads;
                let kvd = hd * c.num_key_value_heads;
                v.push(("model.embed_tokens.weight".into(), vec![c.vocab_size, d]));
                for i in 0..c.num_hidden_layers {
                    let p = format!("model.layers.{i}.");
                    let mut layer = vec![
                        ("input_layernorm.weight", vec![d]),
                        ("post_attention_layernorm.weight", vec![d]),
                        ("self_attn.q_proj.weight", vec![d, d]),
                        ("self_attn.k_proj.weight", vec![kvd, d]),
                        ("self_attn.v_proj.weight", vec![kvd, d]),
                        ("self_attn.o_proj.weight", vec![d, d]),
                        ("mlp.gate_proj.weight", vec![c.intermediate_size, d]),
                        ("mlp.up_proj.weight", vec![c.intermediate_size, d]),
                        ("mlp.down_proj.weight", vec![d, c.intermediate_size]),
                    ];
                    if c.attention_bias {
                        layer.extend([
                            ("self_attn.q_proj.bias", vec![d]),
                            ("self_attn.k_proj.bias", vec![kvd]),
                            ("self_attn.v_proj.bias", vec![kvd]),
                            ("self_attn.o_proj.bias", vec![d]),
                        ]);
                    }
                    for (n, s) in layer {
                        v.push((format!("{p}{n}"), s));
                    }
                }
                v.push(("model.norm.weight".into(), vec![d]));
                if !c.tie_word_embeddings {
                    v.push(("lm_head.weight".into(), vec![c.vocab_size, d]));
                }
            }
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Parameter count by the original rule: each distinct tensor once.
    /// Computed by formula (the same tensors as [`ModelConfig::tensor_shapes`]),
    /// so a hostile config costs nothing to count; saturates at `u64::MAX`.
    pub fn param_count(&self) -> u64 {
        let n = |x: usize| x as u128;
        let total: u128 = match self {
            Self::Gpt2(c) => {
                let (d, i) = (n(c.n_embd), n(c.n_inner));
                // ln_1, ln_2 (weight + bias), c_attn, c_proj, c_fc, mlp c_proj.
                let layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * i + i) + (i * d + d);
                let head = if c.tie_word_embeddings {
                    0
                } else {
                    n(c.vocab_size) * d
                };
                n(c.vocab_size) * d + n(c.n_positions) * d + n(c.n_layer) * layer + 2 * d + head
            }
            Self::Llama(c) => {
                let d = n(c.hidden_size);
                let kvd = d / n(c.num_attention_heads) * n(c.num_key_value_heads);
                let m = n(c.intermediate_size);
                let bias = if c.attention_bias { 2 * d + 2 * kvd } else { 0 };
                let layer = 2 * d + 2 * d * d + 2 * kvd * d + 3 * m * d + bias;
                let head = if c.tie_word_embeddings {
                    0
                } else {
                    n(c.vocab_size) * d
                };
                n(c.vocab_size) * d + n(c.num_hidden_layers) * layer + d + head
            }
        };
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    /// Training dropout probabilities (embedding, attention, residual).
    pub fn dropouts(&self) -> (f32, f32, f32) {
        match self {
            Self::Gpt2(c) => (c.embd_pdrop, c.attn_pdrop, c.resid_pdrop),
            Self::Llama(_) => (0.0, 0.0, 0.0),
        }
    }
}

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

    fn shapes_sum(c: &ModelConfig) -> u64 {
        c.tensor_shapes()
            .iter()
            .map(|(_, s)| s.iter().map(|&x| x as u64).product::<u64>())
            .sum()
    }

    /// The formula counts exactly the tensors the config implies, and the
    /// default model has the subnet's limit, 122,268,040 (SPEC.md).
    #[test]
    fn param_count_formula_matches_the_tensor_list() {
        let default = ModelConfig::from_json(&default_gpt2_config_json()).unwrap();
        assert_eq!(default.param_count(), 122_268_040);
        let configs = [
            serde_json::json!({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 3, "vocab_size": 100, "n_positions": 32}),
            serde_json::json!({"model_type": "gpt2", "n_embd": 48, "n_head": 3, "n_layer": 2, "n_inner": 10, "tie_word_embeddings": false}),
            serde_json::json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 2, "num_hidden_layers": 3, "intermediate_size": 100, "vocab_size": 300}),
            serde_json::json!({"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 1, "intermediate_size": 7, "vocab_size": 11, "tie_word_embeddings": true, "attention_bias": true}),
        ];
        for j in configs {
            let c = ModelConfig::from_json(&j).unwrap();
            assert_eq!(c.param_count(), shapes_sum(&c), "{j}");
        }
    }

    /// Issue 14, class 3: a tiny config.json asking for a huge model is
    /// refused (layer counts) or counted without building anything (the
    /// other fields), fast and without overflow.
    #[test]
    fn huge_configs_are_refused_or_counted_without_allocating() {
        let t = std::time::Instant::now();
        for j in [
            serde_json::json!({"model_type": "gpt2", "n_layer": 16_000_000}),
            serde_json::json!({"model_type": "gpt2", "n_layer": 1025}),
            serde_json::json!({"model_type": "llama", "num_hidden_layers": 16_777_216}),
            serde_json::json!({"model_type": "gpt2", "n_embd": 1u64 << 40}),
            serde_json::json!({"model_type": "gpt2", "vocab_size": -1}),
        ] {
            assert!(ModelConfig::from_json(&j).is_err(), "{j}");
        }
        // Every field at its bound: a count far over any limit, not a wrap-around.
        let big = ModelConfig::from_json(&serde_json::json!({
            "model_type": "gpt2", "n_layer": 1024, "n_embd": 16_777_216, "n_head": 1,
            "n_inner": 16_777_216, "vocab_size": 16_777_216, "n_positions": 16_777_216
        }))
        .unwrap();
        assert!(big.param_count() > 1u64 << 60);
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
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

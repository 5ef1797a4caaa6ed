//! The architectures and their registry. Each architecture is one file
//! owning its serde `Config` with its bounds, its tensor table (names,
//! shapes, init), its parameter count and its network; [`registry!`] below
//! turns the list of them into [`Architecture`], [`ModelConfig`] and the
//! dispatch over networks, so a new architecture is one file plus one line.

pub mod gpt2;
pub mod llama;

use candle_core::Tensor;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{ModelError, Result};
use crate::kernels::embedding::GradSink;
use crate::layers::VarBuilder;
use crate::mode::Mode;

/// Most layers a config may declare: far above any model within the subnet's parameter
/// limit, and low enough that the per-layer tensor list stays small.
pub const MAX_LAYERS: usize = 1024;

/// Largest value of any size field: products of a few fields cannot overflow u64.
const MAX_DIM: u64 = 1 << 24;

/// How a tensor of a fresh model starts (as `transformers` initialises it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Init {
    /// All zeros (biases).
    Zeros,
    /// All ones (norm weights).
    Ones,
    /// Normal(0, `initializer_range` divided by this).
    Normal(f32),
}

/// One saved parameter tensor of a config: Hugging Face name, shape, init.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorSpec {
    /// Hugging Face name.
    pub(crate) name: String,
    /// Shape.
    pub(crate) shape: Vec<usize>,
    /// Initial values of a fresh model.
    pub(crate) init: Init,
}

impl TensorSpec {
    /// A tensor `name` of `shape` starting as `init`.
    pub(crate) fn new(name: impl Into<String>, shape: impl Into<Vec<usize>>, init: Init) -> Self {
        Self {
            name: name.into(),
            shape: shape.into(),
            init,
        }
    }
}

/// What the registry needs of an architecture's `Config`.
pub(crate) trait Arch: ArchInfo + Sized {
    /// `model_type` in `config.json`.
    const MODEL_TYPE: &'static str;
    /// The Hugging Face causal-LM class (`architectures` in `config.json`).
    const CLASS_NAME: &'static str;
    /// The network built from this config.
    type Net: Net;
    /// Parses (and bounds) the fields of a `config.json` object.
    fn from_hf(m: &Map<String, Value>) -> Result<Self>;
    /// The network over the tensors of `vb`.
    fn build(&self, vb: VarBuilder) -> Result<Self::Net>;
}

/// What a parsed config says about its model (object safe: the registry
/// answers through `&dyn ArchInfo`).
pub(crate) trait ArchInfo {
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
    /// Longest sequence the model accepts, if it has a hard limit.
    fn max_positions(&self) -> Option<usize>;
    /// Whether the output projection is the token embedding.
    fn tied(&self) -> bool;
    /// Name of the token embedding tensor.
    fn embedding_name(&self) -> &'static str;
    /// Every saved parameter tensor (unsorted); tied models have no `lm_head.weight`.
    fn tensors(&self) -> Vec<TensorSpec>;
    /// Parameter count by formula (the same tensors as [`Arch::tensors`]).
    fn param_count(&self) -> u128;
    /// Training dropout probabilities (embedding, attention, residual).
    fn dropouts(&self) -> (f32, f32, f32);
}

/// What the model runs on an architecture's network.
pub(crate) trait Net: Clone + Send + Sync {
    /// Final hidden states `[B*T, d]` for `ids` `[B, T]` (u32); `seed` fixes
    /// every dropout mask in training; with `head_sink` a tied embedding adds
    /// its weight gradient there.
    fn forward(
        &self,
        ids: &Tensor,
        mode: Mode,
        seed: u64,
        head_sink: Option<&GradSink>,
    ) -> Result<Tensor>;
    /// The output projection `[V, d]`.
    fn lm_head(&self) -> &Tensor;
}

/// Deserialises the fields of `T` from `m`; a field of the wrong type is
/// named in the reason (serde's own message does not say which).
pub(crate) fn parse_fields<T: DeserializeOwned>(m: &Map<String, Value>) -> Result<T> {
    serde_json::from_value(Value::Object(m.clone())).map_err(|e| {
        let bad = m.iter().find(|(k, v)| {
            let one: Map<String, Value> = [((*k).clone(), (*v).clone())].into_iter().collect();
            serde_json::from_value::<T>(Value::Object(one)).is_err()
        });
        match bad {
            Some((k, _)) => ModelError::Config(format!("{k}: {e}")),
            None => ModelError::Config(e.to_string()),
        }
    })
}

/// A size field: `default` when absent, else within `1..=2^24`.
pub(crate) fn bounded(key: &str, v: Option<u64>, default: usize) -> Result<usize> {
    match v {
        None => Ok(default),
        Some(n) if n == 0 || n > MAX_DIM => Err(ModelError::Config(format!(
            "{key} = {n} is out of range 1..={MAX_DIM}"
        ))),
        Some(n) => Ok(n as usize),
    }
}

/// A layer count: bounded before anything is built per layer.
pub(crate) fn bounded_layers(key: &str, v: Option<u64>, default: usize) -> Result<usize> {
    let n = bounded(key, v, default)?;
    if n > MAX_LAYERS {
        return Err(ModelError::Config(format!(
            "{key} = {n} is out of range 1..={MAX_LAYERS}"
        )));
    }
    Ok(n)
}

/// A float field: `default` when absent, finite.
pub(crate) fn finite(key: &str, v: Option<f64>, default: f64) -> Result<f64> {
    let x = v.unwrap_or(default);
    if !x.is_finite() {
        return Err(ModelError::Config(format!("{key} must be finite")));
    }
    Ok(x)
}

/// A dropout probability: `default` when absent, in `[0, 1)`.
pub(crate) fn prob(key: &str, v: Option<f64>, default: f64) -> Result<f32> {
    let p = finite(key, v, default)?;
    if !(0.0..1.0).contains(&p) {
        return Err(ModelError::Config(format!("{key} = {p} must be in [0, 1)")));
    }
    Ok(p as f32)
}

/// Generates [`Architecture`], [`ModelConfig`] and the network dispatch from
/// `Variant => module` lines.
macro_rules! registry {
    ($($(#[$doc:meta])* $variant:ident => $module:ident),+ $(,)?) => {
        /// A supported architecture.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        pub enum Architecture {
            $($(#[$doc])* $variant),+
        }

        impl Architecture {
            /// Every supported architecture, in registry order.
            pub const ALL: &'static [Architecture] = &[$(Self::$variant),+];

            /// The Hugging Face class name.
            pub fn class_name(self) -> &'static str {
                match self {
                    $(Self::$variant => <$module::Config as Arch>::CLASS_NAME),+
                }
            }

            /// `model_type` in `config.json`.
            pub fn model_type(self) -> &'static str {
                match self {
                    $(Self::$variant => <$module::Config as Arch>::MODEL_TYPE),+
                }
            }
        }

        /// The config of a supported model.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ModelConfig {
            $($(#[$doc])* $variant($module::Config)),+
        }

        impl ModelConfig {
            /// The config of `model_type`, `None` if no architecture has it.
            fn parse(model_type: &str, m: &Map<String, Value>) -> Option<Result<Self>> {
                $(
                    if model_type == <$module::Config as Arch>::MODEL_TYPE {
                        return Some(<$module::Config as Arch>::from_hf(m).map(Self::$variant));
                    }
                )+
                None
            }

            /// The architecture of this config.
            pub fn architecture(&self) -> Architecture {
                match self {
                    $(Self::$variant(_) => Architecture::$variant),+
                }
            }

            /// The network over `vb`'s tensors.
            pub(crate) fn build(&self, vb: VarBuilder) -> Result<AnyNet> {
                Ok(match self {
                    $(Self::$variant(c) => AnyNet::$variant(c.build(vb)?)),+
                })
            }
        }

        impl ModelConfig {
            /// The architecture's answers about this config.
            fn info(&self) -> &dyn ArchInfo {
                match self {
                    $(Self::$variant(c) => c),+
                }
            }
        }

        /// The network of one architecture.
        #[derive(Clone)]
        pub(crate) enum AnyNet {
            $($variant(<$module::Config as Arch>::Net)),+
        }

        impl AnyNet {
            /// See [`Net::forward`].
            pub(crate) fn forward(
                &self,
                ids: &Tensor,
                mode: Mode,
                seed: u64,
                head_sink: Option<&GradSink>,
            ) -> Result<Tensor> {
                match self {
                    $(Self::$variant(n) => n.forward(ids, mode, seed, head_sink)),+
                }
            }

            /// See [`Net::lm_head`].
            pub(crate) fn lm_head(&self) -> &Tensor {
                match self {
                    $(Self::$variant(n) => n.lm_head()),+
                }
            }
        }
    };
}

registry! {
    /// GPT-2 (`GPT2LMHeadModel`, `model_type` `gpt2`).
    Gpt2 => gpt2,
    /// LLaMA (`LlamaForCausalLM`, `model_type` `llama`).
    Llama => llama,
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
        let cfg = match Self::parse(model_type, m) {
            Some(cfg) => cfg?,
            None => {
                let supported: Vec<&str> =
                    Architecture::ALL.iter().map(|a| a.model_type()).collect();
                return Err(ModelError::UnsupportedArchitecture(format!(
                    "model_type {model_type:?} (supported: {})",
                    supported.join(", ")
                )));
            }
        };
        // `AutoModelForCausalLM` picks the class from model_type; a listed
        // architecture that is not the causal-LM head is a different model.
        if let Some(archs) = m.get("architectures").filter(|v| !v.is_null()) {
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

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.info().vocab_size()
    }

    /// Longest sequence the model accepts (GPT-2's learned positions); LLaMA's
    /// rotary positions have no hard limit.
    pub fn max_positions(&self) -> Option<usize> {
        self.info().max_positions()
    }

    /// Whether the output projection is the token embedding.
    pub fn tied(&self) -> bool {
        self.info().tied()
    }

    /// Name of the token embedding tensor.
    pub fn embedding_name(&self) -> &'static str {
        self.info().embedding_name()
    }

    /// Every saved parameter tensor with its init, sorted by name.
    pub(crate) fn tensor_specs(&self) -> Vec<TensorSpec> {
        let mut v = self.info().tensors();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every saved parameter tensor (HF name, shape), sorted by name. Tied
    /// models have no `lm_head.weight`: it is the embedding.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.tensor_specs()
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect()
    }

    /// Parameter count by the original rule: each distinct tensor once.
    /// Computed by formula (the same tensors as [`ModelConfig::tensor_shapes`]),
    /// so a hostile config costs nothing to count; saturates at `u64::MAX`.
    pub fn param_count(&self) -> u64 {
        u64::try_from(self.info().param_count()).unwrap_or(u64::MAX)
    }

    /// Training dropout probabilities (embedding, attention, residual).
    pub fn dropouts(&self) -> (f32, f32, f32) {
        self.info().dropouts()
    }
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

    /// The formula counts exactly the tensors the config implies.
    #[test]
    fn param_count_formula_matches_the_tensor_list() {
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

    /// A tiny config.json asking for a huge model is
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

    /// A field of the wrong type is refused with its name; `null` is absent.
    #[test]
    fn wrong_types_name_the_field_and_null_is_the_default() {
        let e = ModelConfig::from_json(&serde_json::json!({"model_type": "gpt2", "n_head": "x"}))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bad config: n_head: invalid type"), "{e}");
        let c = ModelConfig::from_json(&serde_json::json!({"model_type": "gpt2", "n_inner": null}))
            .unwrap();
        let ModelConfig::Gpt2(c) = c else {
            panic!("not gpt2")
        };
        assert_eq!(c.n_inner, 4 * 768);
    }
}

//! LLaMA (`LlamaForCausalLM`), laid out as candle-transformers' model files:
//! the serde [`Config`] with its bounds, the tensor table (names, shapes,
//! init) and parameter count, then `Attention -> Mlp -> Block -> Model`,
//! every struct holding its tensors under the Hugging Face names
//! (`model.layers.{i}.self_attn.q_proj`).

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{bounded, bounded_layers, finite, parse_fields, Arch, ArchInfo, Init, Net, TensorSpec};
use crate::error::{ModelError, Result};
use crate::kernels::attention;
use crate::kernels::embedding::GradSink;
use crate::kernels::KernelPath;
use crate::layers::{Linear, RmsNorm, VarBuilder};
use crate::mode::{DropSeeds, Mode};

/// What a LLaMA forward pass needs from `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
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

/// The `config.json` fields as written (absent or `null`: `None`), before
/// defaults and bounds.
#[derive(Deserialize)]
struct Raw {
    vocab_size: Option<u64>,
    hidden_size: Option<u64>,
    intermediate_size: Option<u64>,
    num_hidden_layers: Option<u64>,
    num_attention_heads: Option<u64>,
    num_key_value_heads: Option<u64>,
    max_position_embeddings: Option<u64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    hidden_act: Option<String>,
    rope_scaling: Option<Value>,
}

impl Arch for Config {
    const MODEL_TYPE: &'static str = "llama";
    const CLASS_NAME: &'static str = "LlamaForCausalLM";
    type Net = Model;

    fn from_hf(m: &Map<String, Value>) -> Result<Self> {
        let r: Raw = parse_fields(m)?;
        let hidden_size = bounded("hidden_size", r.hidden_size, 4096)?;
        let heads = bounded("num_attention_heads", r.num_attention_heads, 32)?;
        let kv = bounded("num_key_value_heads", r.num_key_value_heads, heads)?;
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
        if r.rope_scaling.is_some_and(|v| !v.is_null()) {
            return Err(ModelError::UnsupportedArchitecture(
                "llama rope_scaling is not supported".into(),
            ));
        }
        let act = r.hidden_act.as_deref().unwrap_or("silu");
        if act != "silu" {
            return Err(ModelError::UnsupportedArchitecture(format!(
                "llama hidden_act {act:?} (supported: silu)"
            )));
        }
        let rope_theta = finite("rope_theta", r.rope_theta, 10000.0)?;
        if rope_theta <= 0.0 {
            return Err(ModelError::Config("rope_theta must be positive".into()));
        }
        Ok(Self {
            vocab_size: bounded("vocab_size", r.vocab_size, 32000)?,
            hidden_size,
            intermediate_size: bounded("intermediate_size", r.intermediate_size, 11008)?,
            num_hidden_layers: bounded_layers("num_hidden_layers", r.num_hidden_layers, 32)?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            max_position_embeddings: bounded(
                "max_position_embeddings",
                r.max_position_embeddings,
                2048,
            )?,
            rms_norm_eps: finite("rms_norm_eps", r.rms_norm_eps, 1e-6)?,
            rope_theta,
            tie_word_embeddings: r.tie_word_embeddings.unwrap_or(false),
            attention_bias: r.attention_bias.unwrap_or(false),
        })
    }

    fn build(&self, vb: VarBuilder) -> Result<Model> {
        Model::new(self, vb)
    }
}

impl ArchInfo for Config {
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Rotary positions have no hard limit.
    fn max_positions(&self) -> Option<usize> {
        None
    }

    fn tied(&self) -> bool {
        self.tie_word_embeddings
    }

    fn embedding_name(&self) -> &'static str {
        "model.embed_tokens.weight"
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let d = self.hidden_size;
        let kvd = d / self.num_attention_heads * self.num_key_value_heads;
        let m = self.intermediate_size;
        let normal = Init::Normal(1.0);
        let mut v = vec![TensorSpec::new(
            "model.embed_tokens.weight",
            [self.vocab_size, d],
            normal,
        )];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}.");
            let mut layer = vec![
                ("input_layernorm.weight", vec![d], Init::Ones),
                ("post_attention_layernorm.weight", vec![d], Init::Ones),
                ("self_attn.q_proj.weight", vec![d, d], normal),
                ("self_attn.k_proj.weight", vec![kvd, d], normal),
                ("self_attn.v_proj.weight", vec![kvd, d], normal),
                ("self_attn.o_proj.weight", vec![d, d], normal),
                ("mlp.gate_proj.weight", vec![m, d], normal),
                ("mlp.up_proj.weight", vec![m, d], normal),
                ("mlp.down_proj.weight", vec![d, m], normal),
            ];
            if self.attention_bias {
                layer.extend([
                    ("self_attn.q_proj.bias", vec![d], Init::Zeros),
                    ("self_attn.k_proj.bias", vec![kvd], Init::Zeros),
                    ("self_attn.v_proj.bias", vec![kvd], Init::Zeros),
                    ("self_attn.o_proj.bias", vec![d], Init::Zeros),
                ]);
            }
            for (n, s, init) in layer {
                v.push(TensorSpec::new(format!("{p}{n}"), s, init));
            }
        }
        v.push(TensorSpec::new("model.norm.weight", [d], Init::Ones));
        if !self.tie_word_embeddings {
            v.push(TensorSpec::new(
                "lm_head.weight",
                [self.vocab_size, d],
                normal,
            ));
        }
        v
    }

    fn param_count(&self) -> u128 {
        let n = |x: usize| x as u128;
        let d = n(self.hidden_size);
        let kvd = d / n(self.num_attention_heads) * n(self.num_key_value_heads);
        let m = n(self.intermediate_size);
        let bias = if self.attention_bias {
            2 * d + 2 * kvd
        } else {
            0
        };
        let layer = 2 * d + 2 * d * d + 2 * kvd * d + 3 * m * d + bias;
        let head = if self.tie_word_embeddings {
            0
        } else {
            n(self.vocab_size) * d
        };
        n(self.vocab_size) * d + n(self.num_hidden_layers) * layer + d + head
    }

    /// LLaMA has no dropout.
    fn dropouts(&self) -> (f32, f32, f32) {
        (0.0, 0.0, 0.0)
    }
}

/// Rotary tables `cos`, `sin` of shape `[T, hd]`, computed in f32 in the
/// same order as `transformers`' `LlamaRotaryEmbedding` so angles round alike.
fn rope_tables(
    hd: usize,
    t: usize,
    theta: f64,
    (device, dtype): (&Device, candle_core::DType),
) -> Result<(Tensor, Tensor)> {
    let half = hd / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / hd as f32))
        .collect();
    let mut cos = Vec::with_capacity(t * hd);
    let mut sin = Vec::with_capacity(t * hd);
    for pos in 0..t {
        for _half in 0..2 {
            for f in &inv {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (t, hd), device)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, (t, hd), device)?.to_dtype(dtype)?,
    ))
}

/// `x * cos + rotate_half(x) * sin` on `[B, H, T, hd]` (HF's non-interleaved layout).
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(3)?;
    let x1 = x.narrow(3, 0, hd / 2)?;
    let x2 = x.narrow(3, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Repeats each key/value head `n` times along the head axis (HF `repeat_kv`).
fn repeat_kv(x: Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x);
    }
    let (b, kvh, t, hd) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, kvh, n, t, hd))?
        .contiguous()?
        .reshape((b, kvh * n, t, hd))?)
}

/// `LlamaAttention`: q/k/v projections, rotary positions, grouped-query
/// causal attention, output projection.
#[derive(Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_head: usize,
    n_kv_head: usize,
    path: KernelPath,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: Linear::new(vb.pp("q_proj"), bias)?,
            k_proj: Linear::new(vb.pp("k_proj"), bias)?,
            v_proj: Linear::new(vb.pp("v_proj"), bias)?,
            o_proj: Linear::new(vb.pp("o_proj"), bias)?,
            n_head: cfg.num_attention_heads,
            n_kv_head: cfg.num_key_value_heads,
            path: vb.kernels(),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        (b, t): (usize, usize),
        (cos, sin): (&Tensor, &Tensor),
        mode: Mode,
        seeds: &mut DropSeeds,
    ) -> Result<Tensor> {
        let hd = x.dim(1)? / self.n_head;
        let split = |x: Tensor, heads: usize| -> Result<Tensor> {
            Ok(x.reshape((b, t, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.q_proj.forward(x)?, self.n_head)?;
        let k = split(self.k_proj.forward(x)?, self.n_kv_head)?;
        let v = split(self.v_proj.forward(x)?, self.n_kv_head)?;
        let groups = self.n_head / self.n_kv_head;
        let q = apply_rope(&q, cos, sin)?;
        let k = repeat_kv(apply_rope(&k, cos, sin)?, groups)?;
        let v = repeat_kv(v, groups)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let seed = seeds.next();
        let y =
            attention::causal_attention(self.path, &q, &k, &v, scale, 0.0, mode.is_train(), seed)?;
        self.o_proj.forward(&y)
    }
}

/// `LlamaMLP`: `down(silu(gate(x)) * up(x))`.
#[derive(Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            gate_proj: Linear::new(vb.pp("gate_proj"), false)?,
            up_proj: Linear::new(vb.pp("up_proj"), false)?,
            down_proj: Linear::new(vb.pp("down_proj"), false)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?;
        let up = self.up_proj.forward(x)?;
        self.down_proj.forward(&(gate * up)?)
    }
}

/// `LlamaDecoderLayer`.
#[derive(Clone)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.rms_norm_eps;
        Ok(Self {
            input_layernorm: RmsNorm::new(vb.pp("input_layernorm"), eps)?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(vb.pp("post_attention_layernorm"), eps)?,
            mlp: Mlp::new(vb.pp("mlp"))?,
        })
    }

    fn forward(
        &self,
        x: Tensor,
        bt: (usize, usize),
        rope: (&Tensor, &Tensor),
        mode: Mode,
        seeds: &mut DropSeeds,
    ) -> Result<Tensor> {
        let a = self.input_layernorm.forward(&x, mode)?;
        let x = (x + self.self_attn.forward(&a, bt, rope, mode, seeds)?)?;
        let m = self.post_attention_layernorm.forward(&x, mode)?;
        Ok((&x + self.mlp.forward(&m)?)?)
    }
}

/// `LlamaForCausalLM`: embedding, layers, final norm and the head.
#[derive(Clone)]
pub(crate) struct Model {
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    head_dim: usize,
    rope_theta: f64,
}

impl Model {
    /// Resolves every tensor once; `vb` is the root (names start `model.`).
    pub(crate) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        let embed_tokens = m.pp("embed_tokens").get("weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            vb.pp("lm_head").get("weight")?
        };
        let layers = m.pp("layers");
        Ok(Self {
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Block::new(cfg, layers.pp(i)))
                .collect::<Result<_>>()?,
            norm: RmsNorm::new(m.pp("norm"), cfg.rms_norm_eps)?,
            embed_tokens,
            lm_head,
            head_dim: cfg.hidden_size / cfg.num_attention_heads,
            rope_theta: cfg.rope_theta,
        })
    }
}

impl Net for Model {
    /// Final hidden states `[B*T, d]` for `ids` `[B, T]` (u32). LLaMA has no
    /// dropout; `seed` keeps the signature of GPT-2's.
    fn forward(
        &self,
        ids: &Tensor,
        mode: Mode,
        seed: u64,
        _head_sink: Option<&GradSink>,
    ) -> Result<Tensor> {
        let seeds = &mut DropSeeds::new(seed);
        let (b, t) = ids.dims2()?;
        let dt = (ids.device(), self.embed_tokens.dtype());
        let (cos, sin) = rope_tables(self.head_dim, t, self.rope_theta, dt)?;
        let mut h = self.embed_tokens.embedding(&ids.flatten_all()?)?;
        for layer in &self.layers {
            h = layer.forward(h, (b, t), (&cos, &sin), mode, seeds)?;
        }
        self.norm.forward(&h, mode)
    }

    /// The output projection `[V, d]`.
    fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }
}

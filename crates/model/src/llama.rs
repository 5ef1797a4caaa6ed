//! LLaMA (`LlamaForCausalLM`), laid out as candle-transformers' model files:
//! `Config -> Attention -> Mlp -> Block -> Model`, every struct holding its
//! tensors under the Hugging Face names (`model.layers.{i}.self_attn.q_proj`).

use candle_core::{Device, Tensor};

use crate::config::LlamaConfig as Config;
use crate::error::Result;
use crate::kernels::attention;
use crate::nn::{DropSeeds, Linear, Mode, RmsNorm, VarBuilder};

/// Rotary tables `cos`, `sin` of shape `[T, hd]`, computed in f32 in the
/// same order as `transformers`' `LlamaRotaryEmbedding` so angles round alike.
fn rope_tables(hd: usize, t: usize, theta: f64, device: &Device) -> Result<(Tensor, Tensor)> {
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
        Tensor::from_vec(cos, (t, hd), device)?,
        Tensor::from_vec(sin, (t, hd), device)?,
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
        let y = attention::causal_attention(&q, &k, &v, scale, 0.0, mode, seeds)?;
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

    /// Final hidden states `[B*T, d]` for `ids` `[B, T]` (u32). LLaMA has no
    /// dropout; `seed` keeps the signature of GPT-2's.
    pub(crate) fn forward(&self, ids: &Tensor, mode: Mode, seed: u64) -> Result<Tensor> {
        let seeds = &mut DropSeeds::new(seed);
        let (b, t) = ids.dims2()?;
        let (cos, sin) = rope_tables(self.head_dim, t, self.rope_theta, ids.device())?;
        let mut h = self.embed_tokens.embedding(&ids.flatten_all()?)?;
        for layer in &self.layers {
            h = layer.forward(h, (b, t), (&cos, &sin), mode, seeds)?;
        }
        self.norm.forward(&h, mode)
    }

    /// The output projection `[V, d]`.
    pub(crate) fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }
}

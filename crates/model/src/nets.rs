//! The forward passes of GPT-2 and LLaMA, written against Hugging Face tensor
//! names so that weights map one to one onto `model.safetensors`.
//!
//! Evaluation uses candle's fused kernels (layer norm, softmax); training
//! uses the composed, differentiable forms of the same formulas.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::config::{Gpt2Config, LlamaConfig, ModelConfig};
use crate::error::{ModelError, Result};

/// Named weights, HF names to tensors (f32).
pub type Weights = BTreeMap<String, Tensor>;

/// Whether the pass trains (dropout on, differentiable ops) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Evaluation: no dropout, fused kernels.
    Eval,
    /// Training: dropout active, ops with backward.
    Train,
}

pub(crate) fn w<'a>(weights: &'a Weights, name: &str) -> Result<&'a Tensor> {
    weights
        .get(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

/// The dropout seeds of one forward pass: every dropout site draws its own
/// from the pass's seed, in the order the sites run, so one seed fixes every
/// mask of the pass (and backward regenerates them).
struct DropSeeds {
    base: u64,
    site: u64,
}

impl DropSeeds {
    fn new(base: u64) -> Self {
        Self { base, site: 0 }
    }

    fn next(&mut self) -> u64 {
        self.site += 1;
        mix_seed(self.base, self.site)
    }
}

/// A well-spread seed from `(a, b)` (splitmix64 finaliser): nearby inputs
/// give unrelated outputs.
pub fn mix_seed(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn dropout(x: Tensor, p: f32, mode: Mode, seeds: &mut DropSeeds) -> Result<Tensor> {
    let seed = seeds.next();
    if mode == Mode::Train && p > 0.0 {
        Ok(crate::fused::dropout(&x, p, seed)?)
    } else {
        Ok(x)
    }
}

fn layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64, mode: Mode) -> Result<Tensor> {
    Ok(match mode {
        Mode::Eval => candle_nn::ops::layer_norm(x, g, b, eps as f32)?,
        Mode::Train => crate::fused::layer_norm_train(x, g, b, eps as f32)?,
    })
}

fn rms_norm(x: &Tensor, g: &Tensor, eps: f64, mode: Mode) -> Result<Tensor> {
    Ok(match mode {
        Mode::Eval => candle_nn::ops::rms_norm(x, g, eps as f32)?,
        Mode::Train => candle_nn::ops::rms_norm_slow(x, g, eps as f32)?,
    })
}

/// Scaled-dot-product causal attention on `[B, H, T, hd]` tensors, heads
/// merged back into `[B * T, H * hd]`.
fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    p: f32,
    mode: Mode,
    seeds: &mut DropSeeds,
) -> Result<Tensor> {
    let seed = seeds.next();
    match mode {
        Mode::Eval => Ok(crate::fused::attention_merged(q, k, v, scale)?),
        Mode::Train => Ok(crate::fused::attention_train(q, k, v, scale, p, seed)?),
    }
}

/// `x @ W + b` with a Conv1D weight `[in, out]` on `[N, in]` rows.
fn conv1d(x: &Tensor, weight: &Tensor, bias: &Tensor, mode: Mode) -> Result<Tensor> {
    Ok(match mode {
        Mode::Eval => crate::fused::conv1d_eval(x, weight, bias)?,
        Mode::Train => x.matmul(weight)?.broadcast_add(bias)?,
    })
}

/// `x @ W^T (+ b)` with a `Linear` weight `[out, in]` on `[N, in]` rows.
fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&weight.t()?)?;
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Final hidden states `[B*T, d]` of GPT-2 for `ids` `[B, T]` (u32); in
/// training, `seed` fixes every dropout mask of the pass.
pub fn gpt2_hidden(
    c: &Gpt2Config,
    ws: &Weights,
    ids: &Tensor,
    mode: Mode,
    seed: u64,
) -> Result<Tensor> {
    let seeds = &mut DropSeeds::new(seed);
    let (b, t) = ids.dims2()?;
    let d = c.n_embd;
    let nh = c.n_head;
    let hd = d / nh;
    let wte = w(ws, "transformer.wte.weight")?;
    let wpe = w(ws, "transformer.wpe.weight")?;
    let tok = wte.embedding(&ids.flatten_all()?)?.reshape((b, t, d))?;
    let pos = wpe.narrow(0, 0, t)?;
    let mut h = dropout(
        tok.broadcast_add(&pos)?.reshape((b * t, d))?,
        c.embd_pdrop,
        mode,
        seeds,
    )?;
    for i in 0..c.n_layer {
        let p = |n: &str| format!("transformer.h.{i}.{n}");
        let get = |n: &str| w(ws, &p(n));
        let a = layer_norm(
            &h,
            get("ln_1.weight")?,
            get("ln_1.bias")?,
            c.layer_norm_epsilon,
            mode,
        )?;
        let qkv = conv1d(
            &a,
            get("attn.c_attn.weight")?,
            get("attn.c_attn.bias")?,
            mode,
        )?;
        let heads = |j: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(1, j * d, d)?
                .reshape((b, t, nh, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let mut scale = if c.scale_attn_weights {
            1.0 / (hd as f64).sqrt()
        } else {
            1.0
        };
        if c.scale_attn_by_inverse_layer_idx {
            scale /= (i + 1) as f64;
        }
        let y = attention(&q, &k, &v, scale, c.attn_pdrop, mode, seeds)?;
        let y = conv1d(
            &y,
            get("attn.c_proj.weight")?,
            get("attn.c_proj.bias")?,
            mode,
        )?;
        h = (h + dropout(y, c.resid_pdrop, mode, seeds)?)?;
        let m = layer_norm(
            &h,
            get("ln_2.weight")?,
            get("ln_2.bias")?,
            c.layer_norm_epsilon,
            mode,
        )?;
        // candle's `gelu` is the tanh form, HF's `gelu_new`.
        let m = conv1d(&m, get("mlp.c_fc.weight")?, get("mlp.c_fc.bias")?, mode)?;
        let m = match mode {
            Mode::Eval => crate::fused::gelu_new(&m)?,
            Mode::Train => crate::fused::gelu_new_train(&m)?,
        };
        let m = conv1d(&m, get("mlp.c_proj.weight")?, get("mlp.c_proj.bias")?, mode)?;
        h = (h + dropout(m, c.resid_pdrop, mode, seeds)?)?;
    }
    layer_norm(
        &h,
        w(ws, "transformer.ln_f.weight")?,
        w(ws, "transformer.ln_f.bias")?,
        c.layer_norm_epsilon,
        mode,
    )
}

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

/// Final hidden states `[B*T, d]` of LLaMA for `ids` `[B, T]` (u32); LLaMA
/// has no dropout, `seed` only keeps the signature of [`gpt2_hidden`].
pub fn llama_hidden(
    c: &LlamaConfig,
    ws: &Weights,
    ids: &Tensor,
    mode: Mode,
    seed: u64,
) -> Result<Tensor> {
    let seeds = &mut DropSeeds::new(seed);
    let (b, t) = ids.dims2()?;
    let d = c.hidden_size;
    let nh = c.num_attention_heads;
    let kvh = c.num_key_value_heads;
    let hd = d / nh;
    let (cos, sin) = rope_tables(hd, t, c.rope_theta, ids.device())?;
    let emb = w(ws, "model.embed_tokens.weight")?;
    let mut h = emb.embedding(&ids.flatten_all()?)?;
    for i in 0..c.num_hidden_layers {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        let get = |n: &str| w(ws, &p(n));
        let bias = |n: &str| -> Result<Option<&Tensor>> {
            if c.attention_bias {
                Ok(Some(get(n)?))
            } else {
                Ok(None)
            }
        };
        let a = rms_norm(&h, get("input_layernorm.weight")?, c.rms_norm_eps, mode)?;
        let split = |x: Tensor, heads: usize| -> Result<Tensor> {
            Ok(x.reshape((b, t, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(
            linear(
                &a,
                get("self_attn.q_proj.weight")?,
                bias("self_attn.q_proj.bias")?,
            )?,
            nh,
        )?;
        let k = split(
            linear(
                &a,
                get("self_attn.k_proj.weight")?,
                bias("self_attn.k_proj.bias")?,
            )?,
            kvh,
        )?;
        let v = split(
            linear(
                &a,
                get("self_attn.v_proj.weight")?,
                bias("self_attn.v_proj.bias")?,
            )?,
            kvh,
        )?;
        let q = apply_rope(&q, &cos, &sin)?;
        let k = repeat_kv(apply_rope(&k, &cos, &sin)?, nh / kvh)?;
        let v = repeat_kv(v, nh / kvh)?;
        let y = attention(&q, &k, &v, 1.0 / (hd as f64).sqrt(), 0.0, mode, seeds)?;
        let y = linear(
            &y,
            get("self_attn.o_proj.weight")?,
            bias("self_attn.o_proj.bias")?,
        )?;
        h = (h + y)?;
        let m = rms_norm(
            &h,
            get("post_attention_layernorm.weight")?,
            c.rms_norm_eps,
            mode,
        )?;
        let gate = candle_nn::ops::silu(&linear(&m, get("mlp.gate_proj.weight")?, None)?)?;
        let up = linear(&m, get("mlp.up_proj.weight")?, None)?;
        let m = linear(&(gate * up)?, get("mlp.down_proj.weight")?, None)?;
        h = (h + m)?;
    }
    rms_norm(&h, w(ws, "model.norm.weight")?, c.rms_norm_eps, mode)
}

/// Final hidden states `[B*T, d]` for either architecture; training masks
/// are drawn at random (see [`hidden_seeded`] for repeatable ones).
pub fn hidden(cfg: &ModelConfig, ws: &Weights, ids: &Tensor, mode: Mode) -> Result<Tensor> {
    let seed = match mode {
        Mode::Train => rand::random(),
        Mode::Eval => 0,
    };
    hidden_seeded(cfg, ws, ids, mode, seed)
}

/// Final hidden states `[B*T, d]`; in training, `seed` fixes every dropout
/// mask of the pass (same seed, same masks).
pub fn hidden_seeded(
    cfg: &ModelConfig,
    ws: &Weights,
    ids: &Tensor,
    mode: Mode,
    seed: u64,
) -> Result<Tensor> {
    match cfg {
        ModelConfig::Gpt2(c) => gpt2_hidden(c, ws, ids, mode, seed),
        ModelConfig::Llama(c) => llama_hidden(c, ws, ids, mode, seed),
    }
}

/// The output projection `[V, d]`: `lm_head.weight`, or the embedding when tied.
pub fn output_weight<'a>(cfg: &ModelConfig, ws: &'a Weights) -> Result<&'a Tensor> {
    if cfg.tied() {
        w(ws, cfg.embedding_name())
    } else {
        w(ws, "lm_head.weight")
    }
}

/// Checks a batch of token rows against the model and makes the `[B, T]` u32 tensor.
pub fn ids_tensor(cfg: &ModelConfig, batch: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let b = batch.len();
    if b == 0 {
        return Err(ModelError::Input("empty batch".into()));
    }
    let t = batch[0].len();
    if t < 2 {
        return Err(ModelError::Input(format!(
            "rows need at least 2 tokens for a next-token loss, got {t}"
        )));
    }
    if let Some((i, r)) = batch.iter().enumerate().find(|(_, r)| r.len() != t) {
        return Err(ModelError::Input(format!(
            "rows must have equal length: row 0 has {t} tokens, row {i} has {}",
            r.len()
        )));
    }
    if let Some(max) = cfg.max_positions() {
        if t > max {
            return Err(ModelError::Input(format!(
                "rows of {t} tokens exceed the model's {max} positions"
            )));
        }
    }
    let vocab = cfg.vocab_size();
    if let Some(bad) = batch.iter().flatten().find(|&&x| x as usize >= vocab) {
        return Err(ModelError::Input(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let flat: Vec<u32> = batch.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (b, t), device)?.to_dtype(DType::U32)?)
}

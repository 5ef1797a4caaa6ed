//! GPT-2 (`GPT2LMHeadModel`), laid out as candle-transformers' model files:
//! the serde [`Config`] with its bounds, the tensor table (names, shapes,
//! init) and parameter count, then `Attention -> Mlp -> Block -> Model`,
//! every struct holding its tensors under the Hugging Face names
//! (`transformer.h.{i}.attn.c_attn`).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    bounded, bounded_layers, finite, parse_fields, prob, Arch, ArchInfo, Init, Net, TensorSpec,
};
use crate::error::{ModelError, Result};
use crate::kernels::attention;
use crate::kernels::embedding::{token_embedding, GradSink};
use crate::kernels::KernelPath;
use crate::layers::{dropout, Conv1D, LayerNorm, VarBuilder};
use crate::mode::{DropSeeds, Mode};

/// What a GPT-2 forward pass needs from `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
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

/// The `config.json` fields as written (absent or `null`: `None`), before
/// defaults and bounds.
#[derive(Deserialize)]
struct Raw {
    vocab_size: Option<u64>,
    n_positions: Option<u64>,
    n_embd: Option<u64>,
    n_layer: Option<u64>,
    n_head: Option<u64>,
    n_inner: Option<u64>,
    layer_norm_epsilon: Option<f64>,
    embd_pdrop: Option<f64>,
    attn_pdrop: Option<f64>,
    resid_pdrop: Option<f64>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    tie_word_embeddings: Option<bool>,
    activation_function: Option<String>,
}

impl Arch for Config {
    const MODEL_TYPE: &'static str = "gpt2";
    const CLASS_NAME: &'static str = "GPT2LMHeadModel";
    type Net = Model;

    fn from_hf(m: &Map<String, Value>) -> Result<Self> {
        let r: Raw = parse_fields(m)?;
        let n_embd = bounded("n_embd", r.n_embd, 768)?;
        let n_head = bounded("n_head", r.n_head, 12)?;
        if n_embd % n_head != 0 {
            return Err(ModelError::Config(format!(
                "n_embd {n_embd} is not a multiple of n_head {n_head}"
            )));
        }
        let act = r.activation_function.as_deref().unwrap_or("gelu_new");
        if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
            return Err(ModelError::UnsupportedArchitecture(format!(
                "gpt2 activation_function {act:?} (supported: gelu_new)"
            )));
        }
        Ok(Self {
            vocab_size: bounded("vocab_size", r.vocab_size, 50257)?,
            n_positions: bounded("n_positions", r.n_positions, 1024)?,
            n_embd,
            n_layer: bounded_layers("n_layer", r.n_layer, 12)?,
            n_head,
            n_inner: bounded("n_inner", r.n_inner, 4 * n_embd)?,
            layer_norm_epsilon: finite("layer_norm_epsilon", r.layer_norm_epsilon, 1e-5)?,
            embd_pdrop: prob("embd_pdrop", r.embd_pdrop, 0.1)?,
            attn_pdrop: prob("attn_pdrop", r.attn_pdrop, 0.1)?,
            resid_pdrop: prob("resid_pdrop", r.resid_pdrop, 0.1)?,
            scale_attn_weights: r.scale_attn_weights.unwrap_or(true),
            scale_attn_by_inverse_layer_idx: r.scale_attn_by_inverse_layer_idx.unwrap_or(false),
            tie_word_embeddings: r.tie_word_embeddings.unwrap_or(true),
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

    fn max_positions(&self) -> Option<usize> {
        Some(self.n_positions)
    }

    fn tied(&self) -> bool {
        self.tie_word_embeddings
    }

    fn embedding_name(&self) -> &'static str {
        "transformer.wte.weight"
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let d = self.n_embd;
        // transformers scales the residual projections by 1/sqrt(2 n_layer).
        let resid = Init::Normal(((2 * self.n_layer) as f32).sqrt());
        let mut v = vec![
            TensorSpec::new(
                "transformer.wte.weight",
                [self.vocab_size, d],
                Init::Normal(1.0),
            ),
            TensorSpec::new(
                "transformer.wpe.weight",
                [self.n_positions, d],
                Init::Normal(1.0),
            ),
        ];
        for i in 0..self.n_layer {
            let p = format!("transformer.h.{i}.");
            for (n, s, init) in [
                ("ln_1.weight", vec![d], Init::Ones),
                ("ln_1.bias", vec![d], Init::Zeros),
                ("attn.c_attn.weight", vec![d, 3 * d], Init::Normal(1.0)),
                ("attn.c_attn.bias", vec![3 * d], Init::Zeros),
                ("attn.c_proj.weight", vec![d, d], resid),
                ("attn.c_proj.bias", vec![d], Init::Zeros),
                ("ln_2.weight", vec![d], Init::Ones),
                ("ln_2.bias", vec![d], Init::Zeros),
                ("mlp.c_fc.weight", vec![d, self.n_inner], Init::Normal(1.0)),
                ("mlp.c_fc.bias", vec![self.n_inner], Init::Zeros),
                ("mlp.c_proj.weight", vec![self.n_inner, d], resid),
                ("mlp.c_proj.bias", vec![d], Init::Zeros),
            ] {
                v.push(TensorSpec::new(format!("{p}{n}"), s, init));
            }
        }
        v.push(TensorSpec::new("transformer.ln_f.weight", [d], Init::Ones));
        v.push(TensorSpec::new("transformer.ln_f.bias", [d], Init::Zeros));
        if !self.tie_word_embeddings {
            v.push(TensorSpec::new(
                "lm_head.weight",
                [self.vocab_size, d],
                Init::Normal(1.0),
            ));
        }
        v
    }

    fn param_count(&self) -> u128 {
        let n = |x: usize| x as u128;
        let (d, i) = (n(self.n_embd), n(self.n_inner));
        // ln_1, ln_2 (weight + bias), c_attn, c_proj, c_fc, mlp c_proj.
        let layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * i + i) + (i * d + d);
        let head = if self.tie_word_embeddings {
            0
        } else {
            n(self.vocab_size) * d
        };
        n(self.vocab_size) * d + n(self.n_positions) * d + n(self.n_layer) * layer + 2 * d + head
    }

    fn dropouts(&self) -> (f32, f32, f32) {
        (self.embd_pdrop, self.attn_pdrop, self.resid_pdrop)
    }
}

/// `GPT2Attention`: fused q/k/v projection, causal attention, output projection.
#[derive(Clone)]
struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: usize,
    scale: f64,
    attn_pdrop: f32,
    resid_pdrop: f32,
    path: KernelPath,
}

impl Attention {
    fn new(cfg: &Config, layer: usize, vb: VarBuilder) -> Result<Self> {
        let hd = cfg.n_embd / cfg.n_head;
        let mut scale = if cfg.scale_attn_weights {
            1.0 / (hd as f64).sqrt()
        } else {
            1.0
        };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        Ok(Self {
            c_attn: Conv1D::new(vb.pp("c_attn"))?,
            c_proj: Conv1D::new(vb.pp("c_proj"))?,
            n_head: cfg.n_head,
            scale,
            attn_pdrop: cfg.attn_pdrop,
            resid_pdrop: cfg.resid_pdrop,
            path: vb.kernels(),
        })
    }

    /// `[B*T, d]` to `[B*T, d]`.
    fn forward(
        &self,
        x: &Tensor,
        (b, t): (usize, usize),
        mode: Mode,
        seeds: &mut DropSeeds,
    ) -> Result<Tensor> {
        let d = x.dim(1)?;
        let (nh, hd) = (self.n_head, d / self.n_head);
        let qkv = self.c_attn.forward(x, mode)?;
        let seed = seeds.next();
        if self.path.is_fast() {
            // Straight from `qkv`: no per-head copies (kept for backward, in training).
            let y = attention::causal_attention_qkv(
                self.path,
                &qkv,
                (b, t, nh),
                self.scale,
                self.attn_pdrop,
                mode.is_train(),
                seed,
            )?;
            return self
                .c_proj
                .forward_dropout(&y, false, self.resid_pdrop, mode, seeds);
        }
        let heads = |j: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(1, j * d, d)?
                .reshape((b, t, nh, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let y = attention::causal_attention(
            self.path,
            &q,
            &k,
            &v,
            self.scale,
            self.attn_pdrop,
            mode.is_train(),
            seed,
        )?;
        self.c_proj
            .forward_dropout(&y, false, self.resid_pdrop, mode, seeds)
    }
}

/// `GPT2MLP`: `c_fc`, `gelu_new`, `c_proj`.
#[derive(Clone)]
struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    resid_pdrop: f32,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            c_fc: Conv1D::new(vb.pp("c_fc"))?,
            c_proj: Conv1D::new(vb.pp("c_proj"))?,
            resid_pdrop: cfg.resid_pdrop,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode, seeds: &mut DropSeeds) -> Result<Tensor> {
        if mode == Mode::Eval {
            let h = self.c_fc.forward_gelu_eval(x)?;
            return self
                .c_proj
                .forward_dropout(&h, false, self.resid_pdrop, mode, seeds);
        }
        let h = self.c_fc.forward(x, mode)?;
        // In training the GELU output is recomputed in backward rather than kept.
        self.c_proj
            .forward_dropout(&h, true, self.resid_pdrop, mode, seeds)
    }
}

/// `GPT2Block`: pre-norm attention and MLP, each added to the residual.
#[derive(Clone)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(cfg: &Config, layer: usize, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        Ok(Self {
            ln_1: LayerNorm::new(vb.pp("ln_1"), eps)?,
            attn: Attention::new(cfg, layer, vb.pp("attn"))?,
            ln_2: LayerNorm::new(vb.pp("ln_2"), eps)?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(
        &self,
        x: Tensor,
        bt: (usize, usize),
        mode: Mode,
        seeds: &mut DropSeeds,
    ) -> Result<Tensor> {
        let a = self
            .attn
            .forward(&self.ln_1.forward(&x, mode)?, bt, mode, seeds)?;
        let x = (x + a)?;
        let m = self
            .mlp
            .forward(&self.ln_2.forward(&x, mode)?, mode, seeds)?;
        Ok((x + m)?)
    }
}

/// `GPT2LMHeadModel`: embeddings, blocks, final norm and the (tied) head.
#[derive(Clone)]
pub(crate) struct Model {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Tensor,
    embd_pdrop: f32,
    path: KernelPath,
}

impl Model {
    /// Resolves every tensor once; `vb` is the root (names start `transformer.`).
    pub(crate) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let tr = vb.pp("transformer");
        let wte = tr.pp("wte").get("weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            wte.clone()
        } else {
            vb.pp("lm_head").get("weight")?
        };
        let h = tr.pp("h");
        Ok(Self {
            wpe: tr.pp("wpe").get("weight")?,
            blocks: (0..cfg.n_layer)
                .map(|i| Block::new(cfg, i, h.pp(i)))
                .collect::<Result<_>>()?,
            ln_f: LayerNorm::new(tr.pp("ln_f"), cfg.layer_norm_epsilon)?,
            wte,
            lm_head,
            embd_pdrop: cfg.embd_pdrop,
            path: vb.kernels(),
        })
    }
}

impl Net for Model {
    /// Final hidden states `[B*T, d]` for `ids` `[B, T]` (u32); in training,
    /// `seed` fixes every dropout mask of the pass. With `head_sink` (the
    /// sink of the output head's weight gradient) and tied embeddings, the
    /// token embedding adds its gradient there too.
    fn forward(
        &self,
        ids: &Tensor,
        mode: Mode,
        seed: u64,
        head_sink: Option<&GradSink>,
    ) -> Result<Tensor> {
        let seeds = &mut DropSeeds::new(seed);
        let (b, t) = ids.dims2()?;
        let d = self.wte.dim(1)?;
        let tied = self.lm_head.id() == self.wte.id();
        let sink = head_sink.filter(|_| tied && mode == Mode::Train);
        let tok = token_embedding(self.path, &self.wte, ids, sink)?.reshape((b, t, d))?;
        let pos = self.wpe.narrow(0, 0, t)?;
        let mut h = dropout(
            self.path,
            tok.broadcast_add(&pos)?.reshape((b * t, d))?,
            self.embd_pdrop,
            mode,
            seeds,
        )?;
        for block in &self.blocks {
            h = block.forward(h, (b, t), mode, seeds)?;
        }
        self.ln_f.forward(&h, mode)
    }

    /// The output projection `[V, d]`.
    fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }
}

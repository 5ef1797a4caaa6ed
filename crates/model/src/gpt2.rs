//! GPT-2 (`GPT2LMHeadModel`), laid out as candle-transformers' model files:
//! `Config -> Attention -> Mlp -> Block -> Model`, every struct holding its
//! tensors under the Hugging Face names (`transformer.h.{i}.attn.c_attn`).

use candle_core::Tensor;

use crate::config::Gpt2Config as Config;
use crate::error::Result;
use crate::kernels::embedding::{token_embedding, GradSink};
use crate::kernels::{attention, is_cpu_f32};
use crate::nn::{dropout, Conv1D, DropSeeds, LayerNorm, Mode, VarBuilder};

/// `GPT2Attention`: fused q/k/v projection, causal attention, output projection.
#[derive(Clone)]
struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: usize,
    scale: f64,
    attn_pdrop: f32,
    resid_pdrop: f32,
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
        if is_cpu_f32(&qkv) {
            // Straight from `qkv`: no per-head copies (kept for backward, in training).
            let y = attention::causal_attention_qkv(
                &qkv,
                (b, t, nh),
                self.scale,
                self.attn_pdrop,
                mode,
                seeds,
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
        let y = attention::causal_attention(&q, &k, &v, self.scale, self.attn_pdrop, mode, seeds)?;
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
        })
    }

    /// Final hidden states `[B*T, d]` for `ids` `[B, T]` (u32); in training,
    /// `seed` fixes every dropout mask of the pass. With `head_sink` (the
    /// sink of the output head's weight gradient) and tied embeddings, the
    /// token embedding adds its gradient there too.
    pub(crate) fn forward(
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
        let tok = token_embedding(&self.wte, ids, sink)?.reshape((b, t, d))?;
        let pos = self.wpe.narrow(0, 0, t)?;
        let mut h = dropout(
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
    pub(crate) fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }
}

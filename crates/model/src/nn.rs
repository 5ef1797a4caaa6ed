//! The layers both architectures are built from, each holding its tensors,
//! and [`VarBuilder`]: tensor names resolved once, at load, under
//! Hugging Face prefixes (`transformer.h.3.attn.c_attn.weight`).

use candle_core::Tensor;

use crate::error::{ModelError, Result};
use crate::kernels::{activations, gemm, norms};
use crate::model::Weights;

/// Whether the pass trains (dropout on, differentiable ops) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Evaluation: no dropout, fused kernels.
    Eval,
    /// Training: dropout active, ops with backward.
    Train,
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

/// The dropout seeds of one forward pass: every dropout site draws its own
/// from the pass's seed, in the order the sites run, so one seed fixes every
/// mask of the pass (and backward regenerates them).
pub(crate) struct DropSeeds {
    base: u64,
    site: u64,
}

impl DropSeeds {
    pub(crate) fn new(base: u64) -> Self {
        Self { base, site: 0 }
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.site += 1;
        mix_seed(self.base, self.site)
    }
}

/// Dropout `p` in training (its site always draws a seed, so masks do not
/// shift when `p` is 0 somewhere).
pub(crate) fn dropout(x: Tensor, p: f32, mode: Mode, seeds: &mut DropSeeds) -> Result<Tensor> {
    let seed = seeds.next();
    if mode == Mode::Train && p > 0.0 {
        Ok(activations::dropout(&x, p, seed)?)
    } else {
        Ok(x)
    }
}

/// Looks tensors up by name under a prefix, as candle-nn's `VarBuilder`:
/// `vb.pp("h").pp(3).get("ln_1.weight")` is `h.3.ln_1.weight`.
#[derive(Clone)]
pub(crate) struct VarBuilder<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> VarBuilder<'a> {
    pub(crate) fn new(weights: &'a Weights) -> Self {
        Self {
            weights,
            prefix: String::new(),
        }
    }

    /// The builder one level down: `prefix.name`.
    pub(crate) fn pp(&self, name: impl std::fmt::Display) -> Self {
        Self {
            weights: self.weights,
            prefix: self.path(&name.to_string()),
        }
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The tensor `prefix.name` (shapes were checked against the config at load).
    pub(crate) fn get(&self, name: &str) -> Result<Tensor> {
        let full = self.path(name);
        self.weights
            .get(&full)
            .cloned()
            .ok_or(ModelError::MissingTensor(full))
    }
}

/// GPT-2's `Conv1D`: `x @ W + b` with `W` stored `[in, out]`.
#[derive(Clone)]
pub(crate) struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    pub(crate) fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight")?,
            bias: vb.get("bias")?,
        })
    }

    /// `[N, in]` rows to `[N, out]`, the bias added inside the GEMM.
    pub(crate) fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(match mode {
            Mode::Eval => gemm::conv1d_eval(x, &self.weight, &self.bias, false)?,
            Mode::Train => gemm::conv1d_train(x, &self.weight, &self.bias)?,
        })
    }
}

impl Conv1D {
    /// `gelu_new(x @ W + b)` in evaluation, the GELU applied in place.
    pub(crate) fn forward_gelu_eval(&self, x: &Tensor) -> Result<Tensor> {
        Ok(gemm::conv1d_eval(x, &self.weight, &self.bias, true)?)
    }

    /// `dropout(a @ W + b, p)` with `a = gelu_new(x)` if `gelu`, else `x`.
    /// The dropout site draws its seed as [`dropout`] does; in training one
    /// op does it all and keeps only `x` for backward. `gelu` is for
    /// training: evaluation applies it in place to the previous layer's
    /// output ([`Conv1D::forward_gelu_eval`]) and passes `false`.
    pub(crate) fn forward_dropout(
        &self,
        x: &Tensor,
        gelu: bool,
        p: f32,
        mode: Mode,
        seeds: &mut DropSeeds,
    ) -> Result<Tensor> {
        match mode {
            Mode::Eval if gelu => Err(ModelError::Input(
                "evaluation applies GELU to the previous layer's output".into(),
            )),
            Mode::Eval => dropout(self.forward(x, mode)?, p, mode, seeds),
            Mode::Train => {
                let seed = seeds.next();
                Ok(gemm::conv1d_train_with(
                    x,
                    &self.weight,
                    &self.bias,
                    gelu,
                    Some((p, seed)),
                )?)
            }
        }
    }
}

/// `torch.nn.Linear`: `x @ W^T (+ b)` with `W` stored `[out, in]`.
#[derive(Clone)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn new(vb: VarBuilder, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight")?,
            bias: if bias { Some(vb.get("bias")?) } else { None },
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// `torch.nn.LayerNorm` over the last axis (biased variance).
#[derive(Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub(crate) fn new(vb: VarBuilder, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight")?,
            bias: vb.get("bias")?,
            eps: eps as f32,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(norms::layer_norm(
            x,
            &self.weight,
            &self.bias,
            self.eps,
            mode,
        )?)
    }
}

/// LLaMA's `RMSNorm`.
#[derive(Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn new(vb: VarBuilder, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight")?,
            eps: eps as f32,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(norms::rms_norm(x, &self.weight, self.eps, mode)?)
    }
}

//! The layers both architectures are built from, each holding its tensors
//! and the kernel path chosen at load, and [`VarBuilder`]: tensor names
//! resolved once, at load, under Hugging Face prefixes
//! (`transformer.h.3.attn.c_attn.weight`).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;

use crate::error::{ModelError, Result};
use crate::kernels::gemm::WeightPacks;
use crate::kernels::{activations, conv1d, linear, norms, KernelPath};
use crate::mode::{DropSeeds, Mode};

/// Named weights, Hugging Face names to tensors.
pub type Weights = BTreeMap<String, Tensor>;

/// Dropout `p` in training (its site always draws a seed, so masks do not
/// shift when `p` is 0 somewhere).
pub(crate) fn dropout(
    path: KernelPath,
    x: Tensor,
    p: f32,
    mode: Mode,
    seeds: &mut DropSeeds,
) -> Result<Tensor> {
    let seed = seeds.next();
    if mode == Mode::Train && p > 0.0 {
        Ok(activations::dropout(path, &x, p, seed)?)
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
    path: KernelPath,
}

impl<'a> VarBuilder<'a> {
    /// The root builder; every layer built from it runs the kernels of `path`.
    pub(crate) fn new(weights: &'a Weights, path: KernelPath) -> Self {
        Self {
            weights,
            prefix: String::new(),
            path,
        }
    }

    /// The kernel path of the model being built.
    pub(crate) fn kernels(&self) -> KernelPath {
        self.path
    }

    /// The builder one level down: `prefix.name`.
    pub(crate) fn pp(&self, name: impl std::fmt::Display) -> Self {
        Self {
            weights: self.weights,
            prefix: self.full(&name.to_string()),
            path: self.path,
        }
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The tensor `prefix.name` (shapes were checked against the config at load).
    pub(crate) fn get(&self, name: &str) -> Result<Tensor> {
        let full = self.full(name);
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
    path: KernelPath,
    /// The weight's bf16 packs (bf16 path only; empty otherwise).
    packs: Arc<WeightPacks>,
}

impl Conv1D {
    /// The layer under `vb` (`weight`, `bias`).
    pub(crate) fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight")?,
            bias: vb.get("bias")?,
            path: vb.kernels(),
            packs: Arc::default(),
        })
    }

    /// `[N, in]` rows to `[N, out]`, the bias added inside the GEMM.
    pub(crate) fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (w, b, k) = (&self.weight, &self.bias, self.path);
        Ok(match mode {
            Mode::Eval => conv1d::conv1d_eval(k, x, w, b, false, &self.packs)?,
            Mode::Train => conv1d::conv1d_train_with(k, x, w, b, false, None, &self.packs)?,
        })
    }
}

impl Conv1D {
    /// `gelu_new(x @ W + b)` in evaluation, the GELU applied in place.
    pub(crate) fn forward_gelu_eval(&self, x: &Tensor) -> Result<Tensor> {
        Ok(conv1d::conv1d_eval(
            self.path,
            x,
            &self.weight,
            &self.bias,
            true,
            &self.packs,
        )?)
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
            Mode::Eval => dropout(self.path, self.forward(x, mode)?, p, mode, seeds),
            Mode::Train => {
                let seed = seeds.next();
                Ok(conv1d::conv1d_train_with(
                    self.path,
                    x,
                    &self.weight,
                    &self.bias,
                    gelu,
                    Some((p, seed)),
                    &self.packs,
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
    path: KernelPath,
    /// The weight's bf16 packs (bf16 path only; empty otherwise).
    packs: Arc<WeightPacks>,
}

impl Linear {
    /// The layer under `vb` (`weight`, and `bias` if `bias`).
    pub(crate) fn new(vb: VarBuilder, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight")?,
            bias: if bias { Some(vb.get("bias")?) } else { None },
            path: vb.kernels(),
            packs: Arc::default(),
        })
    }

    /// `[N, in]` rows to `[N, out]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = linear::linear(self.path, x, &self.weight, &self.packs)?;
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
    path: KernelPath,
}

impl LayerNorm {
    /// The layer under `vb` (`weight`, `bias`).
    pub(crate) fn new(vb: VarBuilder, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight")?,
            bias: vb.get("bias")?,
            eps: eps as f32,
            path: vb.kernels(),
        })
    }

    /// Normalises each row of `x`.
    pub(crate) fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(norms::layer_norm(
            x,
            &self.weight,
            &self.bias,
            self.eps,
            (self.path, mode.is_train()),
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
    /// The layer under `vb` (`weight`).
    pub(crate) fn new(vb: VarBuilder, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight")?,
            eps: eps as f32,
        })
    }

    /// Normalises each row of `x`.
    pub(crate) fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(norms::rms_norm(x, &self.weight, self.eps, mode.is_train())?)
    }
}

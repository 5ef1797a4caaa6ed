//! The layers both architectures are built from, each holding its tensors
//! and the kernel path chosen at load, and [`VarBuilder`]: tensor names
//! resolved once, at load, under Hugging Face prefixes
//! (`transformer.h.3.attn.c_attn.weight`).

use std::cell::RefCell;
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
    source: Source<'a>,
    prefix: String,
    path: KernelPath,
}

/// Where a [`VarBuilder`] reads its tensors.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Weights the model keeps.
    Shared(&'a Weights),
    /// A build sealed for evaluation, taking the GEMM-only weights out.
    Sealing(&'a RefCell<Sealing>),
}

/// The weights of a build sealed for evaluation ([`VarBuilder::sealing`]):
/// what is left of them, and how many values were taken out.
pub(crate) struct Sealing {
    /// The weights not taken out (all of them before the build).
    pub(crate) weights: Weights,
    /// Values of the weights taken out so far.
    pub(crate) dropped: u64,
}

/// How a GEMM weight is stored: GPT-2's `Conv1D` `[in, out]`, or
/// `torch.nn.Linear`'s `[out, in]`.
#[derive(Clone, Copy)]
pub(crate) enum Stored {
    /// `[in, out]`.
    InOut,
    /// `[out, in]`.
    OutIn,
}

impl<'a> VarBuilder<'a> {
    /// The root builder; every layer built from it runs the kernels of `path`.
    pub(crate) fn new(weights: &'a Weights, path: KernelPath) -> Self {
        Self {
            source: Source::Shared(weights),
            prefix: String::new(),
            path,
        }
    }

    /// A root builder for evaluation only, on a bf16 CPU `path`: every weight
    /// that only GEMMs read is taken out of `sealing` as its layer is built
    /// and dropped once its bf16 copy is made ([`VarBuilder::gemm_weight`]),
    /// so the f32 values are freed one weight at a time.
    pub(crate) fn sealing(sealing: &'a RefCell<Sealing>, path: KernelPath) -> Self {
        Self {
            source: Source::Sealing(sealing),
            prefix: String::new(),
            path,
        }
    }

    /// The weight `prefix.name` that only the GEMMs of its layer read, and
    /// its packs. On a sealing build with a bf16 CPU path, its forward copy
    /// is made now, the weight is dropped and a placeholder of its shape (one
    /// value broadcast, never read) stands in for it; elsewhere the tensor
    /// itself and empty packs. `bias`: the layer's forward GEMM adds a bias
    /// row.
    pub(crate) fn gemm_weight(
        &self,
        name: &str,
        stored: Stored,
        bias: bool,
    ) -> Result<(Tensor, Arc<WeightPacks>)> {
        let Source::Sealing(sealing) = self.source else {
            return Ok((self.get(name)?, Arc::default()));
        };
        let full = self.full(name);
        let w = sealing
            .borrow_mut()
            .weights
            .remove(&full)
            .ok_or(ModelError::MissingTensor(full))?;
        let (rows, cols) = w.dims2()?;
        let (kn, strides) = match stored {
            Stored::InOut => ((rows, cols), (cols, 1)),
            Stored::OutIn => ((cols, rows), (1, cols)),
        };
        let packs = crate::kernels::with_cpu_f32(&w, |ws| {
            WeightPacks::sealed(self.path, ws, kn, strides, bias)
        })??;
        let Some(packs) = packs else {
            return Err(ModelError::Unsupported(format!(
                "sealing a model on the {} path (it keeps no copy of its weights)",
                self.path.name()
            )));
        };
        let placeholder = Tensor::zeros((), w.dtype(), w.device())?.broadcast_as(w.shape())?;
        sealing.borrow_mut().dropped += w.elem_count() as u64;
        Ok((placeholder, Arc::new(packs)))
    }

    /// The kernel path of the model being built.
    pub(crate) fn kernels(&self) -> KernelPath {
        self.path
    }

    /// The builder one level down: `prefix.name`.
    pub(crate) fn pp(&self, name: impl std::fmt::Display) -> Self {
        Self {
            source: self.source,
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
        let found = match self.source {
            Source::Shared(w) => w.get(&full).cloned(),
            Source::Sealing(s) => s.borrow().weights.get(&full).cloned(),
        };
        found.ok_or(ModelError::MissingTensor(full))
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
        // Its forward GEMM adds the bias.
        let (weight, packs) = vb.gemm_weight("weight", Stored::InOut, true)?;
        Ok(Self {
            weight,
            bias: vb.get("bias")?,
            path: vb.kernels(),
            packs,
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
        let (weight, packs) = vb.gemm_weight("weight", Stored::OutIn, false)?;
        Ok(Self {
            weight,
            bias: if bias { Some(vb.get("bias")?) } else { None },
            path: vb.kernels(),
            packs,
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

//! The bottom layer: kernels by family, as candle custom ops where they need
//! a backward, each with its portable twin in candle's own ops (what CUDA and
//! Metal run). Nothing here imports from the rest of the crate but its error
//! type. [`simd`] (vectorisable exp/tanh/max and the AVX2 dispatch), [`rng`]
//! (the one seed mixer and dropout's keep-decision), [`gemm`] (the checked
//! GEMM call), [`conv1d`] (bias-fused GPT-2 projections), [`attention`] (the
//! one causal softmax, evaluation and training attention), [`norms`],
//! [`activations`] (GELU, dropout), [`loss`], [`embedding`] (training's token
//! embedding and the gradient sink), [`optimizer`] (AdamW), [`onednn`] (the
//! weight GEMMs on oneDNN, loaded at run time).

pub(crate) mod activations;
pub(crate) mod attention;
pub(crate) mod conv1d;
pub(crate) mod embedding;
pub(crate) mod gemm;
pub mod gemm_bf16;
pub(crate) mod linear;
pub(crate) mod loss;
pub(crate) mod norms;
pub mod onednn;
pub(crate) mod optimizer;
pub(crate) mod rng;
pub(crate) mod simd;

use candle_core::{CpuStorage, Layout, Tensor};

/// Which implementation every kernel call of a model runs, chosen once when
/// the model is built: the fused CPU kernels (f32 on the CPU only), the same
/// with their weight GEMMs in bf16, or candle's composed ops (any device and
/// dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KernelPath {
    /// The fused CPU f32 kernels of this module.
    Fast,
    /// The fused CPU kernels, every GEMM against a weight (projections, the
    /// output head, forward and backward) in bf16 with f32 accumulation
    /// ([`gemm_bf16`], AVX512-BF16); activations, norms, softmax, attention
    /// and the loss stay f32.
    FastBf16,
    /// The fused CPU kernels with every weight GEMM, and attention's QK^T
    /// and PV (batched over the heads), on oneDNN in f32.
    Onednn,
    /// The fused CPU kernels with every weight GEMM, and attention's QK^T
    /// and PV, on oneDNN in bf16 (f32 accumulation and out, weights
    /// reordered once per set of weights; the softmax stays f32).
    OnednnBf16,
    /// candle's ops only: what CUDA and Metal run.
    Portable,
}

impl KernelPath {
    /// Whether the fused CPU kernels run.
    pub(crate) fn is_fast(self) -> bool {
        matches!(
            self,
            Self::Fast | Self::FastBf16 | Self::Onednn | Self::OnednnBf16
        )
    }

    /// Whether the weight GEMMs run in bf16 on the CPU.
    pub(crate) fn is_bf16(self) -> bool {
        matches!(self, Self::FastBf16 | Self::OnednnBf16)
    }

    /// Whether the weight GEMMs run on oneDNN.
    pub(crate) fn is_onednn(self) -> bool {
        matches!(self, Self::Onednn | Self::OnednnBf16)
    }

    /// Whether the weight GEMMs run in a custom op of ours (bf16 or oneDNN)
    /// rather than candle's matmul.
    pub(crate) fn custom_gemm(self) -> bool {
        self.is_bf16() || self.is_onednn()
    }

    /// The path's name in logs: `fast`, `fast-bf16`, `onednn`, `onednn-bf16`, `portable`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::FastBf16 => "fast-bf16",
            Self::Onednn => "onednn",
            Self::OnednnBf16 => "onednn-bf16",
            Self::Portable => "portable",
        }
    }
}

/// The f32 values of a contiguous CPU storage under `l`.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused op needs a contiguous tensor".into()))?;
    Ok(&data[a..b])
}

/// Runs `f` on the f32 values of a CPU tensor (made contiguous first).
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor");
    };
    Ok(f(contiguous_f32(cpu, layout)?))
}

#[cfg(test)]
mod bf16_tests;

//! CPU kernels by family, as candle custom ops where they need a backward:
//! [`attention`] (the one causal softmax, evaluation and training attention),
//! [`norms`], [`activations`] (GELU, dropout), [`loss`], [`embedding`]
//! (training's token embedding and the gradient sink), [`optimizer`]
//! (AdamW), and [`gemm`] (the checked GEMM call they share). Other devices
//! run candle's composed ops instead.

/// Defines `pub(crate) fn $name` running `$body` compiled for AVX2 (+FMA)
/// where the CPU has it, else for the build's baseline. Release builds target
/// plain x86-64 (SSE2), so without this the element-wise loops (exp, tanh)
/// run 4 lanes wide. The body uses no `mul_add`, so both versions round
/// alike: same results on every machine.
macro_rules! avx2_dispatch {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use avx2_dispatch;

pub(crate) mod activations;
pub(crate) mod attention;
pub(crate) mod embedding;
pub(crate) mod gemm;
pub mod gemm_bf16;
pub(crate) mod loss;
pub(crate) mod norms;
pub(crate) mod optimizer;

use candle_core::{CpuStorage, DType, Layout, Tensor};

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

/// Whether the fused CPU kernels apply to `t` (f32 on the CPU).
pub(crate) fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

//! `torch.nn.Linear`'s product `x @ Wᵀ` (`W` stored `[out, in]`): candle's
//! matmul, or on the bf16 path one op whose three GEMMs (forward, `dx = g W`,
//! `dW = gᵀ x`) run in bf16 with f32 accumulation.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::gemm::{gemm_weight, WeightPacks};
use super::{contiguous_f32, with_cpu_f32, KernelPath};

/// `x @ Wᵀ` for `[N, in]` rows and `W` `[out, in]`; on the bf16 path `W`
/// is packed into `packs` on first use (and `W` itself for the backward).
pub(crate) fn linear(
    path: KernelPath,
    x: &Tensor,
    w: &Tensor,
    packs: &Arc<WeightPacks>,
) -> candle_core::Result<Tensor> {
    if packs.is_sealed() {
        let dout = w.dim(0)?;
        return x
            .contiguous()?
            .apply_op1(SealedLinear(path, packs.clone(), dout));
    }
    if !path.custom_gemm() {
        return x.matmul(&w.t()?);
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, LinearBf16(path, packs.clone()))
}

/// `x @ Wᵀ` for `[n, din]` rows `x` and `W` `[dout, din]` on `path`'s
/// GEMM, `w` empty where the weight is sealed (its copy in `packs` read).
fn forward(
    path: KernelPath,
    packs: &WeightPacks,
    x: &[f32],
    (n, din, dout): (usize, usize, usize),
    w: &[f32],
) -> candle_core::Result<Vec<f32>> {
    let mut out = vec![0f32; n * dout];
    // B = Wᵀ: element (i, o) is w[o * din + i].
    gemm_weight(
        path,
        (n, dout, din),
        &mut out,
        dout,
        false,
        (x, din, 1),
        (w, 1, din),
        Some(&packs.fwd),
        candle_core::utils::get_num_threads(),
    )?;
    Ok(out)
}

/// [`linear`] in evaluation over a sealed weight (`packs`' copy only, the
/// f32 values dropped): forward only, of `dout` outputs.
struct SealedLinear(KernelPath, Arc<WeightPacks>, usize);

impl CustomOp1 for SealedLinear {
    fn name(&self) -> &'static str {
        "linear-sealed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, din) = l.shape().dims2()?;
        let out = forward(
            self.0,
            &self.1,
            contiguous_f32(s, l)?,
            (n, din, self.2),
            &[],
        )?;
        Ok((CpuStorage::F32(out), Shape::from((n, self.2))))
    }
}

/// See [`linear`]: the GEMMs of `path` (bf16, or oneDNN in f32 or bf16).
struct LinearBf16(KernelPath, Arc<WeightPacks>);

impl CustomOp2 for LinearBf16 {
    fn name(&self) -> &'static str {
        "linear-bf16"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, din) = l1.shape().dims2()?;
        let (dout, win) = l2.shape().dims2()?;
        if win != din {
            candle_core::bail!("linear: [{n}, {din}] rows for a [{dout}, {win}] weight");
        }
        let (x, w) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let out = forward(self.0, &self.1, x, (n, din, dout), w)?;
        Ok((CpuStorage::F32(out), Shape::from((n, dout))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, din) = x.dims2()?;
        let dout = w.dim(0)?;
        let threads = candle_core::utils::get_num_threads();
        let (dx, dw) = with_cpu_f32(x, |xs| {
            with_cpu_f32(w, |ws| {
                with_cpu_f32(grad, |g| {
                    let mut dx = vec![0f32; n * din];
                    gemm_weight(
                        self.0,
                        (n, din, dout),
                        &mut dx,
                        din,
                        false,
                        (g, dout, 1),
                        (ws, din, 1),
                        Some(&self.1.bwd),
                        threads,
                    )?;
                    // dW = gᵀ x: A = gᵀ (element (o, r) is g[r * dout + o]).
                    let mut dw = vec![0f32; dout * din];
                    gemm_weight(
                        self.0,
                        (dout, din, n),
                        &mut dw,
                        din,
                        false,
                        (g, 1, dout),
                        (xs, din, 1),
                        None,
                        threads,
                    )?;
                    Ok::<_, candle_core::Error>((dx, dw))
                })
            })
        })????;
        Ok((
            Some(Tensor::from_vec(dx, (n, din), x.device())?),
            Some(Tensor::from_vec(dw, (dout, din), w.device())?),
        ))
    }
}

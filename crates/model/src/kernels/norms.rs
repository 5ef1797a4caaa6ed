//! Layer norm and RMS norm. Evaluation uses candle's fused kernels; training
//! GPT-2 uses a layer norm op with a hand-written backward (one pass over the
//! rows, per-chunk partial sums for the weight gradients).

use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, with_cpu_f32, KernelPath};

/// Layer norm over the last axis with a fused backward (training).
struct LayerNormTrain {
    eps: f32,
}

fn ln_row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl candle_core::CustomOp3 for LayerNormTrain {
    fn name(&self) -> &'static str {
        "layer-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let d = gamma.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(o, row)| {
                let (mean, rstd) = ln_row_stats(row, self.eps);
                for j in 0..d {
                    o[j] = (row[j] - mean) * rstd * gamma[j] + beta[j];
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = gamma.elem_count();
        let gm = with_cpu_f32(gamma, |g| g.to_vec())?;
        let xs = with_cpu_f32(x, |x| x.to_vec())?;
        let gs = with_cpu_f32(grad, |g| g.to_vec())?;
        let mut dx = vec![0f32; xs.len()];
        // Per-row dx, and per-chunk partial sums of dgamma/dbeta reduced after.
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(d * 16)
            .zip(xs.par_chunks(d * 16))
            .zip(gs.par_chunks(d * 16))
            .map(|((dxc, xc), gc)| {
                let mut dg = vec![0f32; d];
                let mut db = vec![0f32; d];
                for ((dxr, xr), gr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                    let (mean, rstd) = ln_row_stats(xr, self.eps);
                    let mut s1 = 0f32;
                    let mut s2 = 0f32;
                    for j in 0..d {
                        let xhat = (xr[j] - mean) * rstd;
                        let gy = gr[j] * gm[j];
                        s1 += gy;
                        s2 += gy * xhat;
                        dg[j] += gr[j] * xhat;
                        db[j] += gr[j];
                    }
                    let (m1, m2) = (s1 / d as f32, s2 / d as f32);
                    for j in 0..d {
                        let xhat = (xr[j] - mean) * rstd;
                        dxr[j] = rstd * (gr[j] * gm[j] - m1 - xhat * m2);
                    }
                }
                (dg, db)
            })
            .collect();
        let mut dg = vec![0f32; d];
        let mut db = vec![0f32; d];
        for (a, b) in partial {
            for j in 0..d {
                dg[j] += a[j];
                db[j] += b[j];
            }
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dg, d, dev)?),
            Some(Tensor::from_vec(db, d, dev)?),
        ))
    }
}

/// Layer norm over the last axis (torch semantics, biased variance).
pub(crate) fn layer_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    (path, train): (KernelPath, bool),
) -> candle_core::Result<Tensor> {
    match train {
        false => candle_nn::ops::layer_norm(x, gamma, beta, eps),
        true if path.is_fast() => x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            LayerNormTrain { eps },
        ),
        true => candle_nn::ops::layer_norm_slow(x, gamma, beta, eps),
    }
}

/// RMS norm over the last axis (LLaMA's `RMSNorm`).
pub(crate) fn rms_norm(
    x: &Tensor,
    gamma: &Tensor,
    eps: f32,
    train: bool,
) -> candle_core::Result<Tensor> {
    match train {
        false => candle_nn::ops::rms_norm(x, gamma, eps),
        true => candle_nn::ops::rms_norm_slow(x, gamma, eps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn layer_norm_forward_and_gradients_match_candle() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (37, 24), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (37, 24), &dev).unwrap();
        let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.5, 24, &dev).unwrap()).unwrap();
        let beta = Var::from_tensor(&Tensor::randn(0f32, 0.5, 24, &dev).unwrap()).unwrap();
        let ours = layer_norm(
            x.as_tensor(),
            gamma.as_tensor(),
            beta.as_tensor(),
            1e-5,
            (KernelPath::Fast, true),
        )
        .unwrap();
        let slow = candle_nn::ops::layer_norm_slow(
            x.as_tensor(),
            gamma.as_tensor(),
            beta.as_tensor(),
            1e-5,
        )
        .unwrap();
        let gf = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (slow * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [x.as_tensor(), gamma.as_tensor(), beta.as_tensor()] {
            let a: Vec<f32> = gf.get(t).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = gs.get(t).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-4),
                "{a:?} vs {b:?}"
            );
        }
    }
}

//! GELU (`gelu_new`, the tanh form) and dropout, multi-threaded, with fused
//! backwards; dropout masks come from a counter-based hash of a seed, so
//! backward regenerates them instead of storing them.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::rng::keep;
use super::simd::fast_tanh;
use super::{contiguous_f32, with_cpu_f32, KernelPath};

/// Elements per parallel chunk of the element-wise kernels.
const CHUNK: usize = 4096;

/// `sqrt(2 / pi)`.
const GELU_C: f32 = 0.797_884_6;

super::simd::avx2_dispatch! {
    /// `x = gelu_new(x)` element-wise, in place.
    fn gelu_chunk(x: &mut [f32]) -> () {
        for o in x.iter_mut() {
            let v = *o;
            *o = 0.5 * v * (1.0 + fast_tanh(GELU_C * (v + 0.044715 * v * v * v)));
        }
    }
}

super::simd::avx2_dispatch! {
    /// `g *= gelu_new'(x)` element-wise.
    fn gelu_grad_chunk(x: &[f32], g: &mut [f32]) -> () {
        for (g, &v) in g.iter_mut().zip(x) {
            let th = fast_tanh(GELU_C * (v + 0.044715 * v * v * v));
            let d = 0.5 * (1.0 + th)
                + 0.5 * v * (1.0 - th * th) * GELU_C * (1.0 + 3.0 * 0.044715 * v * v);
            *g *= d;
        }
    }
}

/// `gelu_new` of every value, on all threads.
pub(crate) fn gelu_slice(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            o.copy_from_slice(x);
            gelu_chunk(o);
        });
    out
}

/// `gelu_new` of every value in place, on all threads.
pub(crate) fn gelu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK).for_each(gelu_chunk);
}

/// `g *= gelu_new'(x)` element-wise, on all threads.
pub(crate) fn gelu_grad_slice(x: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(g, x)| gelu_grad_chunk(x, g));
}

/// Multiplies `x` in place by the dropout mask of `seed` whose element 0 is
/// mask index `base` (kept values scaled by `1/(1-p)`); single-threaded.
pub(crate) fn mask_in_place(seed: u64, p: f32, base: u64, x: &mut [f32]) {
    if p <= 0.0 {
        return;
    }
    let scale = 1.0 / (1.0 - p);
    for (j, v) in x.iter_mut().enumerate() {
        *v = if keep(seed, base + j as u64, p) {
            *v * scale
        } else {
            0.0
        };
    }
}

/// `x` times the dropout mask of `seed`, on all threads.
pub(crate) fn apply_mask(seed: u64, p: f32, x: &[f32]) -> Vec<f32> {
    let mut out = x.to_vec();
    mask_all_in_place(seed, p, &mut out);
    out
}

/// Multiplies all of `x` in place by the dropout mask of `seed` (the same
/// mask as [`dropout`] applies to a tensor of `x`'s values), on all threads.
pub(crate) fn mask_all_in_place(seed: u64, p: f32, x: &mut [f32]) {
    if p <= 0.0 {
        return;
    }
    x.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, o)| mask_in_place(seed, p, (c * CHUNK) as u64, o));
}

struct Dropout {
    p: f32,
    seed: u64,
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        Ok((
            CpuStorage::F32(apply_mask(self.seed, self.p, x)),
            l.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = with_cpu_f32(grad, |g| apply_mask(self.seed, self.p, g))?;
        Ok(Some(Tensor::from_vec(g, grad.shape(), grad.device())?))
    }
}

/// Training dropout (torch semantics) that stores no mask; `seed` picks the
/// mask (the same seed gives the same mask). The portable path uses
/// candle's dropout (the device's generator, unseeded).
pub(crate) fn dropout(k: KernelPath, x: &Tensor, p: f32, seed: u64) -> candle_core::Result<Tensor> {
    if k.is_fast() {
        x.contiguous()?.apply_op1(Dropout { p, seed })
    } else {
        candle_nn::ops::dropout(x, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fast_tanh_is_accurate() {
        let mut u = -12.0f32;
        while u < 12.0 {
            assert!((fast_tanh(u) - u.tanh()).abs() < 3e-7, "{u}");
            u += 0.001;
        }
        assert!(fast_tanh(f32::NAN).is_nan());
        assert_eq!(fast_tanh(f32::INFINITY), 1.0);
    }

    #[test]
    fn dropout_gradient_is_its_mask() {
        let x = Var::from_tensor(
            &Tensor::ones((64, 100), candle_core::DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let y = dropout(KernelPath::Fast, x.as_tensor(), 0.25, 17).unwrap();
        let kept: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let frac = kept.iter().filter(|&&v| v != 0.0).count() as f64 / kept.len() as f64;
        assert!((frac - 0.75).abs() < 0.03, "kept {frac}");
        assert!(kept
            .iter()
            .all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(g, kept);
    }

    #[test]
    fn gelu_matches_candle() {
        let x = Tensor::randn(0f32, 2.0, (37, 24), &Device::Cpu).unwrap();
        let flat = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let mut a = flat(x.clone());
        gelu_in_place(&mut a);
        let b = flat(x.gelu().unwrap());
        assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}

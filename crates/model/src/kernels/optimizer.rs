//! torch's AdamW (single-tensor form, decoupled weight decay). The fast path
//! updates the parameter's CPU storage in place (no copy of the weights or
//! the gradient) with host moments; the portable path runs the same update in
//! candle's ops with the moments as tensors on the parameter's device.

use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, KernelPath};
use crate::error::Result;

/// AdamW's settings (torch's names and meaning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AdamW {
    /// Learning rate.
    pub(crate) lr: f64,
    /// Decoupled weight decay.
    pub(crate) weight_decay: f64,
    /// First-moment decay.
    pub(crate) beta1: f64,
    /// Second-moment decay.
    pub(crate) beta2: f64,
    /// Denominator epsilon.
    pub(crate) eps: f64,
}

/// The scalars of one AdamW step, from the settings and the step number.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepCoeffs {
    step_size: f32,
    decay: f32,
    b2: f32,
    one_b1: f32,
    one_b2: f32,
    bc2_sqrt: f32,
    eps: f32,
}

impl StepCoeffs {
    /// Step `t` (1-based) under `c`, rounded to f32 as torch does.
    pub(crate) fn new(c: &AdamW, t: u64) -> Self {
        let t = t.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        Self {
            step_size: (c.lr / bc1) as f32,
            decay: (1.0 - c.lr * c.weight_decay) as f32,
            b2: c.beta2 as f32,
            one_b1: (1.0 - c.beta1) as f32,
            one_b2: (1.0 - c.beta2) as f32,
            bc2_sqrt: bc2_sqrt as f32,
            eps: c.eps as f32,
        }
    }
}

/// One AdamW step on slices: parameters `p`, moments `m`, `v`, gradient `g`.
pub(crate) fn adamw_update(c: &StepCoeffs, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    p.par_iter_mut()
        .zip(m.par_iter_mut())
        .zip(v.par_iter_mut())
        .zip(g.par_iter())
        .with_min_len(4096)
        .for_each(|(((p, m), v), &g)| {
            *p *= c.decay;
            // torch's lerp with weight < 0.5: m + w * (g - m).
            *m += c.one_b1 * (g - *m);
            *v = *v * c.b2 + c.one_b2 * g * g;
            let denom = v.sqrt() / c.bc2_sqrt + c.eps;
            *p -= c.step_size * (*m / denom);
        });
}

/// [`adamw_update`] as an in-place op on the parameter's storage.
struct InPlace<'a> {
    coeffs: StepCoeffs,
    moments: Mutex<(&'a mut [f32], &'a mut [f32])>,
}

impl InplaceOp2 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let g = contiguous_f32(s2, l2)?;
        let (a, b) = l1
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("adamw: non-contiguous parameter".into()))?;
        let CpuStorage::F32(p) = s1 else {
            candle_core::bail!("adamw: parameters must be f32");
        };
        let p = &mut p[a..b];
        let mut guard = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("adamw: poisoned moments".into()))?;
        let (m, v) = &mut *guard;
        if p.len() != g.len() || m.len() != g.len() || v.len() != g.len() {
            candle_core::bail!("adamw: parameter, gradient and moments differ in size");
        }
        adamw_update(&self.coeffs, p, m, v, g);
        Ok(())
    }
}

/// AdamW moments of one parameter: host vectors on the fast path, tensors on
/// the parameter's device on the portable path.
pub(crate) enum Moments {
    /// First and second moments in host memory.
    Host {
        /// First moment.
        m: Vec<f32>,
        /// Second moment.
        v: Vec<f32>,
    },
    /// First and second moments on the device (f32, the parameter's shape).
    Device {
        /// First moment.
        m: Tensor,
        /// Second moment.
        v: Tensor,
    },
}

impl Moments {
    /// Zero moments for `param` on `path`.
    pub(crate) fn zeros(path: KernelPath, param: &Tensor) -> Result<Self> {
        Ok(match path {
            KernelPath::Fast
            | KernelPath::FastBf16
            | KernelPath::Onednn
            | KernelPath::OnednnBf16 => {
                let n = param.elem_count();
                Self::Host {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            }
            KernelPath::Portable => Self::Device {
                m: param.zeros_like()?,
                v: param.zeros_like()?,
            },
        })
    }

    /// Moments read back (a saved state), placed as `path` keeps them.
    pub(crate) fn from_host(
        path: KernelPath,
        m: Vec<f32>,
        v: Vec<f32>,
        param: &Tensor,
    ) -> Result<Self> {
        Ok(match path {
            KernelPath::Fast
            | KernelPath::FastBf16
            | KernelPath::Onednn
            | KernelPath::OnednnBf16 => Self::Host { m, v },
            KernelPath::Portable => Self::Device {
                m: Tensor::from_vec(m, param.shape(), param.device())?,
                v: Tensor::from_vec(v, param.shape(), param.device())?,
            },
        })
    }

    /// Both moments as f32 tensors of `shape` on `device` (to save them).
    pub(crate) fn tensors(
        &self,
        shape: &[usize],
        device: &candle_core::Device,
    ) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            Self::Host { m, v } => (
                Tensor::from_slice(m, shape, device)?,
                Tensor::from_slice(v, shape, device)?,
            ),
            Self::Device { m, v } => (m.clone(), v.clone()),
        })
    }
}

/// One AdamW step on `param` (f32) with gradient `grad`; the moments are
/// updated in place. Host moments update the CPU storage in place (other
/// devices copy through host memory); device moments run candle's ops.
pub(crate) fn step(
    coeffs: &StepCoeffs,
    param: &candle_core::Var,
    grad: &Tensor,
    moments: &mut Moments,
) -> Result<()> {
    let grad = grad.contiguous()?;
    let t = param.as_tensor();
    match moments {
        Moments::Host { m, v } if t.device().is_cpu() => {
            let op = InPlace {
                coeffs: *coeffs,
                moments: Mutex::new((m, v)),
            };
            t.inplace_op2(&grad, &op)?;
        }
        Moments::Host { m, v } => {
            let g: Vec<f32> = grad.flatten_all()?.to_vec1()?;
            let mut p: Vec<f32> = t.flatten_all()?.to_vec1()?;
            adamw_update(coeffs, &mut p, m, v, &g);
            param.set(&Tensor::from_vec(p, t.shape(), t.device())?)?;
        }
        Moments::Device { m, v } => {
            let c = coeffs;
            let grad = grad.to_dtype(t.dtype())?;
            // The same update as `adamw_update`, one candle op per line.
            let new_m = (&*m + ((&grad - &*m)? * c.one_b1 as f64)?)?;
            let new_v = ((&*v * c.b2 as f64)? + (grad.sqr()? * c.one_b2 as f64)?)?;
            let denom = ((new_v.sqrt()? / c.bc2_sqrt as f64)? + c.eps as f64)?;
            let p = ((t.detach() * c.decay as f64)? - ((&new_m / denom)? * c.step_size as f64)?)?;
            param.set(&p)?;
            *m = new_m;
            *v = new_v;
        }
    }
    Ok(())
}

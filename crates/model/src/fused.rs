//! Fused CPU kernels for evaluation: causal softmax over attention scores
//! (one pass, upper triangle skipped) and the tanh GELU, both multi-threaded.
//! Training keeps candle's differentiable ops; other devices fall back to them.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::loss::fast_exp;

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused op needs a contiguous tensor".into()))?;
    Ok(&data[a..b])
}

/// Causal softmax of a block of query rows: row `i` of each `[n, L]` slab is
/// position `offset + i` and sees keys `0..=offset + i`.
struct CausalSoftmax {
    offset: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let dims = l.shape().dims();
        let t = dims.last().copied().unwrap_or(1);
        let n = if dims.len() >= 2 {
            dims[dims.len() - 2]
        } else {
            1
        };
        let offset = self.offset;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(t)
            .zip(x.par_chunks(t))
            .enumerate()
            .for_each(|(r, (o, row))| {
                // Query position i sees keys 0..=i; the rest stay exactly 0.
                let i = (offset + r % n).min(t - 1);
                let row = &row[..=i];
                let mut max = f32::NEG_INFINITY;
                for &v in row {
                    max = max.max(v);
                }
                if row.iter().any(|v| v.is_nan()) || !max.is_finite() {
                    // Leave non-finite rows to plain arithmetic (NaN propagates as in torch).
                    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
                    for (o, &v) in o.iter_mut().zip(row) {
                        *o = (v - max).exp() / sum;
                    }
                    return;
                }
                let mut sum = 0f32;
                for (o, &v) in o.iter_mut().zip(row) {
                    let e = fast_exp(v - max);
                    *o = e;
                    sum += e;
                }
                let inv = 1.0 / sum;
                for o in o[..=i].iter_mut() {
                    *o *= inv;
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Softmax over the last axis of `[.., n, L]` scores whose rows are query
/// positions `offset..offset + n`, with a causal mask.
pub fn causal_softmax(scores: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
    if scores.device().is_cpu() && scores.dtype() == candle_core::DType::F32 {
        scores
            .contiguous()?
            .apply_op1_no_bwd(&CausalSoftmax { offset })
    } else {
        let n = scores.dim(D::Minus2)?;
        let t = scores.dim(D::Minus1)?;
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| {
                (0..t).map(move |j| {
                    if j > offset + i {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (n, t), scores.device())?;
        candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)
    }
}

/// `tanh` from [`fast_exp`]: `(1 - e) / (1 + e)` with `e = exp(-2|u|)`
/// (absolute error ~1e-7), vectorisable unlike libm's `tanhf`.
#[inline(always)]
fn fast_tanh(u: f32) -> f32 {
    let e = fast_exp(-2.0 * u.abs());
    let t = (1.0 - e) / (1.0 + e);
    if u.is_nan() {
        u
    } else {
        t.copysign(u)
    }
}

struct GeluNew;

impl CustomOp1 for GeluNew {
    fn name(&self) -> &'static str {
        "gelu-new"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let mut out = vec![0f32; x.len()];
        const C: f32 = 0.797_884_6; // sqrt(2/pi)
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(o, x)| {
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = 0.5 * v * (1.0 + fast_tanh(C * (v + 0.044715 * v * v * v)));
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// HF's `gelu_new` (tanh form).
pub fn gelu_new(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&GeluNew)
    } else {
        x.gelu()
    }
}

/// Causal attention for evaluation on `[B, H, T, hd]`: query rows in blocks,
/// each block only against the keys it can see, so the masked upper triangle
/// is mostly never computed.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let t = q.dim(2)?;
    let blocks = if t >= 512 { 8 } else { 1 };
    let block = t.div_ceil(blocks);
    let q = (q * scale)?;
    let mut outs = Vec::with_capacity(blocks);
    let mut r0 = 0;
    while r0 < t {
        let r1 = (r0 + block).min(t);
        let qb = q.narrow(2, r0, r1 - r0)?.contiguous()?;
        let kb = k.narrow(2, 0, r1)?.contiguous()?;
        let vb = v.narrow(2, 0, r1)?.contiguous()?;
        let p = causal_softmax(&qb.matmul(&kb.t()?)?, r0)?;
        outs.push(p.matmul(&vb)?);
        r0 = r1;
    }
    Tensor::cat(&outs, 2)
}

/// Runs `f` on the f32 values of a CPU tensor (made contiguous first).
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor");
    };
    Ok(f(contiguous_f32(cpu, layout)?))
}

/// Keep-decision of element `i` for dropout `p` under `seed`: a counter-based
/// hash, so backward regenerates the forward mask instead of storing it.
#[inline(always)]
fn keep(seed: u64, i: u64, p: f32) -> bool {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32) * (1.0 / (1u64 << 24) as f32) >= p
}

/// Multiplies by the dropout mask (kept values scaled by `1/(1-p)`).
fn apply_mask(seed: u64, p: f32, x: &[f32]) -> Vec<f32> {
    let scale = 1.0 / (1.0 - p);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .enumerate()
        .for_each(|(c, (o, x))| {
            let base = (c * 4096) as u64;
            for (j, (o, &v)) in o.iter_mut().zip(x).enumerate() {
                *o = if keep(seed, base + j as u64, p) {
                    v * scale
                } else {
                    0.0
                };
            }
        });
    out
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
/// mask (the same seed gives the same mask).
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(Dropout { p, seed })
    } else {
        candle_nn::ops::dropout(x, p)
    }
}

/// Causal softmax over `[.., T, T]` scores followed by dropout `p`, with a
/// backward that recomputes the probabilities from the scores: only the
/// scores and the output are kept for backward.
struct CausalSoftmaxDropout {
    p: f32,
    seed: u64,
}

fn softmax_rows(x: &[f32], t: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(t)
        .zip(x.par_chunks(t))
        .enumerate()
        .for_each(|(r, (o, row))| {
            let i = r % t;
            let row = &row[..=i];
            let max = row.iter().fold(
                f32::NEG_INFINITY,
                |m, &v| if v.is_nan() || v > m { v } else { m },
            );
            let mut sum = 0f32;
            for (o, &v) in o.iter_mut().zip(row) {
                let e = (v - max).exp();
                *o = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            for o in o[..=i].iter_mut() {
                *o *= inv;
            }
        });
    out
}

impl CustomOp1 for CausalSoftmaxDropout {
    fn name(&self) -> &'static str {
        "causal-softmax-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let t = l.shape().dims().last().copied().unwrap_or(1);
        let probs = softmax_rows(x, t);
        let out = if self.p > 0.0 {
            apply_mask(self.seed, self.p, &probs)
        } else {
            probs
        };
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let t = arg.dim(D::Minus1)?;
        let probs = with_cpu_f32(arg, |x| softmax_rows(x, t))?;
        let mut g = with_cpu_f32(grad, |g| {
            if self.p > 0.0 {
                apply_mask(self.seed, self.p, g)
            } else {
                g.to_vec()
            }
        })?;
        g.par_chunks_mut(t)
            .zip(probs.par_chunks(t))
            .enumerate()
            .for_each(|(r, (g, p))| {
                let i = r % t;
                let dot: f32 = g[..=i].iter().zip(&p[..=i]).map(|(a, b)| a * b).sum();
                for (g, &p) in g[..=i].iter_mut().zip(&p[..=i]) {
                    *g = p * (*g - dot);
                }
                for g in g[i + 1..].iter_mut() {
                    *g = 0.0;
                }
            });
        Ok(Some(Tensor::from_vec(g, arg.shape(), arg.device())?))
    }
}

/// Training attention probabilities: causal softmax of `[.., T, T]` scores,
/// then dropout with the mask of `seed`.
pub fn causal_softmax_dropout(scores: &Tensor, p: f32, seed: u64) -> candle_core::Result<Tensor> {
    if scores.device().is_cpu() && scores.dtype() == candle_core::DType::F32 {
        scores
            .contiguous()?
            .apply_op1(CausalSoftmaxDropout { p, seed })
    } else {
        let probs = causal_softmax(scores, 0)?;
        if p > 0.0 {
            candle_nn::ops::dropout(&probs, p)
        } else {
            Ok(probs)
        }
    }
}

/// `gelu_new` with a fused backward (training).
struct GeluNewTrain;

impl CustomOp1 for GeluNewTrain {
    fn name(&self) -> &'static str {
        "gelu-new-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        GeluNew.cpu_fwd(s, l)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        const C: f32 = 0.797_884_6;
        let x = with_cpu_f32(arg, |x| x.to_vec())?;
        let mut g = with_cpu_f32(grad, |g| g.to_vec())?;
        g.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(g, x)| {
                for (g, &v) in g.iter_mut().zip(x) {
                    let th = (C * (v + 0.044715 * v * v * v)).tanh();
                    let d = 0.5 * (1.0 + th)
                        + 0.5 * v * (1.0 - th * th) * C * (1.0 + 3.0 * 0.044715 * v * v);
                    *g *= d;
                }
            });
        Ok(Some(Tensor::from_vec(g, arg.shape(), arg.device())?))
    }
}

/// Training `gelu_new`: one pass forward, one pass backward.
pub fn gelu_new_train(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(GeluNewTrain)
    } else {
        x.gelu()
    }
}

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

/// Training layer norm (torch semantics, biased variance).
pub fn layer_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            LayerNormTrain { eps },
        )
    } else {
        candle_nn::ops::layer_norm_slow(x, gamma, beta, eps)
    }
}

/// `dst[m x n] = (accumulate ? dst : 0) + beta * lhs[m x k] @ rhs[k x n]` on
/// row-major buffers given by (slice, row stride, column stride).
#[allow(clippy::too_many_arguments)]
fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    beta: f32,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last =
        |rs: usize, cs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols.max(1) - 1) * cs;
    // The raw-pointer call below must stay inside the slices.
    assert!(dst.len() > last(dst_rs, 1, m, n));
    if k > 0 {
        assert!(lhs.0.len() > last(lhs.1, lhs.2, m, k));
        assert!(rhs.0.len() > last(rhs.1, rhs.2, k, n));
    }
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // Safety: every index the kernel touches is within the bounds asserted above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            1.0,
            beta,
            false,
            false,
            false,
            par,
        );
    }
}

/// Query rows per block in [`attention_merged`]: a `[BLOCK, T]` score buffer per thread.
const ATTN_BLOCK: usize = 128;

/// One head of causal attention, written into `out` (`[T, hd]`, row stride `hd`).
fn attention_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    let mut s = vec![0f32; ATTN_BLOCK * t];
    let mut r0 = 0;
    while r0 < t {
        let n = ATTN_BLOCK.min(t - r0);
        let r1 = r0 + n;
        let s = &mut s[..n * r1];
        // Scores of rows r0..r1 against the keys 0..r1 they may see.
        gemm_f32(
            n,
            r1,
            hd,
            s,
            r1,
            false,
            (&q[r0 * hd..], hd, 1),
            (k, 1, hd),
            scale,
            1,
        );
        for (i, row) in s.chunks_mut(r1).enumerate() {
            let p = r0 + i;
            let (seen, masked) = row.split_at_mut(p + 1);
            let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for x in seen.iter_mut() {
                *x = fast_exp(*x - max);
                sum += *x;
            }
            let inv = 1.0 / sum;
            for x in seen.iter_mut() {
                *x *= inv;
            }
            masked.fill(0.0);
        }
        gemm_f32(
            n,
            hd,
            r1,
            &mut out[r0 * hd..],
            hd,
            false,
            (s, r1, 1),
            (v, hd, 1),
            1.0,
            1,
        );
        r0 = r1;
    }
}

/// Causal attention for evaluation on `[B, H, T, hd]` q, k, v, returning the
/// heads merged as `[B * T, H * hd]`. On CPU each head runs on one thread in
/// query blocks that only meet the keys they can see (most of the masked
/// triangle is never computed, no `[H, T, T]` tensor is held).
pub fn attention_merged(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    if !(q.device().is_cpu() && q.dtype() == candle_core::DType::F32) {
        return causal_attention(q, k, v, scale)?
            .transpose(1, 2)?
            .reshape((b * t, h * hd));
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let per_head: Vec<Vec<f32>> = with_cpu_f32(&q, |qs| {
        with_cpu_f32(&k, |ks| {
            with_cpu_f32(&v, |vs| {
                (0..b * h)
                    .into_par_iter()
                    .map(|bh| {
                        let r = bh * t * hd..(bh + 1) * t * hd;
                        let mut out = vec![0f32; t * hd];
                        attention_head(
                            &qs[r.clone()],
                            &ks[r.clone()],
                            &vs[r],
                            t,
                            hd,
                            scale as f32,
                            &mut out,
                        );
                        out
                    })
                    .collect()
            })
        })
    })???;
    let mut merged = vec![0f32; b * t * h * hd];
    scatter_heads(&per_head, b, h, t, hd, &mut merged);
    Tensor::from_vec(merged, (b * t, h * hd), q.device())
}

/// `x @ W + bias` for `[N, in]` rows and a Conv1D weight `[in, out]`, the bias
/// added by the GEMM itself (evaluation on CPU).
pub fn conv1d_eval(x: &Tensor, w: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let (n, din) = x.dims2()?;
    let (win, dout) = w.dims2()?;
    if !(x.device().is_cpu() && x.dtype() == candle_core::DType::F32)
        || win != din
        || bias.dims1()? != dout
    {
        return x.matmul(w)?.broadcast_add(bias);
    }
    let mut out = with_cpu_f32(bias, |b| b.repeat(n))?;
    let threads = candle_core::utils::get_num_threads();
    with_cpu_f32(x, |xs| {
        with_cpu_f32(w, |ws| {
            gemm_f32(
                n,
                dout,
                din,
                &mut out,
                dout,
                true,
                (xs, din, 1),
                (ws, dout, 1),
                1.0,
                threads,
            )
        })
    })??;
    Tensor::from_vec(out, (n, dout), x.device())
}

/// Causal attention for training on `[B, H, T, hd]` q, k, v with dropout `p`
/// on the probabilities, heads merged as `[B * T, H * hd]`. Per head on one
/// thread each; backward recomputes scores and probabilities from q and k
/// and regenerates the dropout mask from its seed, so no `[H, T, T]` tensor
/// is kept between forward and backward.
struct AttentionTrain {
    scale: f32,
    p: f32,
    seed: u64,
}

impl AttentionTrain {
    /// Probabilities of one head (`[T, T]`, causal, before dropout).
    fn probs(&self, q: &[f32], k: &[f32], t: usize, hd: usize, out: &mut [f32]) {
        gemm_f32(
            t,
            t,
            hd,
            out,
            t,
            false,
            (q, hd, 1),
            (k, 1, hd),
            self.scale,
            1,
        );
        for (i, row) in out.chunks_mut(t).enumerate() {
            let (seen, masked) = row.split_at_mut(i + 1);
            let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for x in seen.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            for x in seen.iter_mut() {
                *x *= inv;
            }
            masked.fill(0.0);
        }
    }

    /// Applies this head's dropout mask (scaled) in place.
    fn mask(&self, head: usize, t: usize, m: &mut [f32]) {
        if self.p <= 0.0 {
            return;
        }
        let scale = 1.0 / (1.0 - self.p);
        let base = (head * t * t) as u64;
        for (j, x) in m.iter_mut().enumerate() {
            *x = if keep(self.seed, base + j as u64, self.p) {
                *x * scale
            } else {
                0.0
            };
        }
    }
}

fn dims4(l: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

impl candle_core::CustomOp3 for AttentionTrain {
    fn name(&self) -> &'static str {
        "attention-train"
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
        let (b, h, t, hd) = dims4(l1)?;
        if dims4(l2)? != (b, h, t, hd) || dims4(l3)? != (b, h, t, hd) {
            candle_core::bail!("attention: q, k, v shapes differ");
        }
        let (q, k, v) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let heads: Vec<Vec<f32>> = (0..b * h)
            .into_par_iter()
            .map(|bh| {
                let r = bh * t * hd..(bh + 1) * t * hd;
                let mut pm = vec![0f32; t * t];
                self.probs(&q[r.clone()], &k[r.clone()], t, hd, &mut pm);
                self.mask(bh, t, &mut pm);
                let mut o = vec![0f32; t * hd];
                gemm_f32(
                    t,
                    hd,
                    t,
                    &mut o,
                    hd,
                    false,
                    (&pm, t, 1),
                    (&v[r], hd, 1),
                    1.0,
                    1,
                );
                o
            })
            .collect();
        let mut merged = vec![0f32; b * t * h * hd];
        scatter_heads(&heads, b, h, t, hd, &mut merged);
        Ok((CpuStorage::F32(merged), Shape::from((b * t, h * hd))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, t, hd) = q.dims4()?;
        let qs = with_cpu_f32(q, |x| x.to_vec())?;
        let ks = with_cpu_f32(k, |x| x.to_vec())?;
        let vs = with_cpu_f32(v, |x| x.to_vec())?;
        // dO per head, [T, hd], gathered from the merged layout.
        let go = with_cpu_f32(grad, |g| g.to_vec())?;
        let grads: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..b * h)
            .into_par_iter()
            .map(|bh| {
                let (bi, hi) = (bh / h, bh % h);
                let r = bh * t * hd..(bh + 1) * t * hd;
                let (q, k, v) = (&qs[r.clone()], &ks[r.clone()], &vs[r]);
                let mut d_o = vec![0f32; t * hd];
                for i in 0..t {
                    let at = ((bi * t + i) * h + hi) * hd;
                    d_o[i * hd..(i + 1) * hd].copy_from_slice(&go[at..at + hd]);
                }
                let mut probs = vec![0f32; t * t];
                self.probs(q, k, t, hd, &mut probs);
                let mut dropped = probs.clone();
                self.mask(bh, t, &mut dropped);
                // dV = P'^T dO
                let mut dv = vec![0f32; t * hd];
                gemm_f32(
                    t,
                    hd,
                    t,
                    &mut dv,
                    hd,
                    false,
                    (&dropped, 1, t),
                    (&d_o, hd, 1),
                    1.0,
                    1,
                );
                drop(dropped);
                // dP' = dO V^T, then through dropout and softmax into dS.
                let mut ds = vec![0f32; t * t];
                gemm_f32(
                    t,
                    t,
                    hd,
                    &mut ds,
                    t,
                    false,
                    (&d_o, hd, 1),
                    (v, 1, hd),
                    1.0,
                    1,
                );
                self.mask(bh, t, &mut ds);
                for (i, (g, p)) in ds.chunks_mut(t).zip(probs.chunks(t)).enumerate() {
                    let dot: f32 = g[..=i].iter().zip(&p[..=i]).map(|(a, b)| a * b).sum();
                    for (g, &p) in g[..=i].iter_mut().zip(&p[..=i]) {
                        *g = p * (*g - dot);
                    }
                    g[i + 1..].fill(0.0);
                }
                // dQ = scale dS K, dK = scale dS^T Q
                let mut dq = vec![0f32; t * hd];
                gemm_f32(
                    t,
                    hd,
                    t,
                    &mut dq,
                    hd,
                    false,
                    (&ds, t, 1),
                    (k, hd, 1),
                    self.scale,
                    1,
                );
                let mut dk = vec![0f32; t * hd];
                gemm_f32(
                    t,
                    hd,
                    t,
                    &mut dk,
                    hd,
                    false,
                    (&ds, 1, t),
                    (q, hd, 1),
                    self.scale,
                    1,
                );
                (dq, dk, dv)
            })
            .collect();
        let n = b * h * t * hd;
        let (mut dq, mut dk, mut dv) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (a, bb, c) in grads {
            dq.extend(a);
            dk.extend(bb);
            dv.extend(c);
        }
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (b, h, t, hd), dev)?),
            Some(Tensor::from_vec(dk, (b, h, t, hd), dev)?),
            Some(Tensor::from_vec(dv, (b, h, t, hd), dev)?),
        ))
    }
}

/// Writes per-head `[T, hd]` outputs into the merged `[B * T, H * hd]` layout.
fn scatter_heads(heads: &[Vec<f32>], b: usize, h: usize, t: usize, hd: usize, merged: &mut [f32]) {
    debug_assert_eq!(heads.len(), b * h);
    for (bh, head) in heads.iter().enumerate() {
        let (bi, hi) = (bh / h, bh % h);
        for (i, row) in head.chunks(hd).enumerate() {
            let at = ((bi * t + i) * h + hi) * hd;
            merged[at..at + hd].copy_from_slice(row);
        }
    }
}

/// Training attention (see [`AttentionTrain`]) with the dropout mask of
/// `seed`; other devices use candle's ops (whose masks are not seeded).
pub fn attention_train(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    p: f32,
    seed: u64,
) -> candle_core::Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    if q.device().is_cpu() && q.dtype() == candle_core::DType::F32 {
        let op = AttentionTrain {
            scale: scale as f32,
            p,
            seed,
        };
        q.contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
    } else {
        let probs = causal_softmax_dropout(&(q * scale)?.matmul(&k.t()?)?, p, seed)?;
        probs.matmul(v)?.transpose(1, 2)?.reshape((b * t, h * hd))
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
        let y = dropout(x.as_tensor(), 0.25, 17).unwrap();
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
    fn causal_softmax_dropout_gradient_matches_composed_ops() {
        let dev = Device::Cpu;
        let t = 9;
        let s = Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 3, t, t), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2, 3, t, t), &dev).unwrap();
        let y = causal_softmax_dropout(s.as_tensor(), 0.3, 17).unwrap();
        let g_fused = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g_fused: Vec<f32> = g_fused
            .get(s.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // The same computation from candle's differentiable ops, mask read off the output.
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
        let probs =
            candle_nn::ops::softmax(&s.as_tensor().broadcast_add(&mask).unwrap(), D::Minus1)
                .unwrap();
        let keep = (y
            .ne(0f32)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            / 0.7)
            .unwrap();
        let y2 = (probs * keep).unwrap();
        let out1: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let out2: Vec<f32> = y2.flatten_all().unwrap().to_vec1().unwrap();
        assert!(out1.iter().zip(&out2).all(|(a, b)| (a - b).abs() < 1e-5));
        let g2 = (&y2 * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2: Vec<f32> = g2
            .get(s.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in g_fused.iter().zip(&g2) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn per_head_attention_and_fused_bias_match_candle() {
        let dev = Device::Cpu;
        let (b, h, t, hd) = (2, 3, 300, 8);
        let mk = || Tensor::randn(0f32, 1.0, (b, h, t, hd), &dev).unwrap();
        let (q, k, v) = (mk(), mk(), mk());
        let fast: Vec<f32> = attention_merged(&q, &k, &v, 0.35)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * 0.35)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let slow = probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b * t, h * hd))
            .unwrap();
        let slow: Vec<f32> = slow.flatten_all().unwrap().to_vec1().unwrap();
        assert!(fast.iter().zip(&slow).all(|(a, b)| (a - b).abs() < 1e-5));
        let x = Tensor::randn(0f32, 1.0, (70, 24), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (24, 40), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 40, &dev).unwrap();
        let a: Vec<f32> = conv1d_eval(&x, &w, &bias)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let c: Vec<f32> = x
            .matmul(&w)
            .unwrap()
            .broadcast_add(&bias)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(a.iter().zip(&c).all(|(a, b)| (a - b).abs() < 1e-4));
    }

    #[test]
    fn training_attention_matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        let (b, h, t, hd) = (2, 2, 20, 4);
        for p in [0.0f32, 0.3] {
            let mk = || {
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, hd), &dev).unwrap()).unwrap()
            };
            let (q, k, v) = (mk(), mk(), mk());
            let w = Tensor::randn(0f32, 1.0, (b * t, h * hd), &dev).unwrap();
            let seed = 1234u64;
            let op = AttentionTrain {
                scale: 0.5,
                p,
                seed,
            };
            let fused = q
                .as_tensor()
                .apply_op3(k.as_tensor(), v.as_tensor(), op)
                .unwrap();
            // Composed: the same mask built from `keep` as a tensor.
            let mask: Vec<f32> = (0..t)
                .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
            let scores = (q.as_tensor().matmul(&k.as_tensor().t().unwrap()).unwrap() * 0.5)
                .unwrap()
                .broadcast_add(&mask)
                .unwrap();
            let mut probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
            if p > 0.0 {
                let keepm: Vec<f32> = (0..b * h * t * t)
                    .map(|i| {
                        if keep(seed, i as u64, p) {
                            1.0 / (1.0 - p)
                        } else {
                            0.0
                        }
                    })
                    .collect();
                probs = (probs * Tensor::from_vec(keepm, (b, h, t, t), &dev).unwrap()).unwrap();
            }
            let slow = probs
                .matmul(v.as_tensor())
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b * t, h * hd))
                .unwrap();
            let (fv, sv): (Vec<f32>, Vec<f32>) = (
                fused.flatten_all().unwrap().to_vec1().unwrap(),
                slow.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert!(
                fv.iter().zip(&sv).all(|(a, b)| (a - b).abs() < 1e-5),
                "forward p={p}"
            );
            let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gs = (slow * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for x in [&q, &k, &v] {
                let a: Vec<f32> = gf
                    .get(x.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let c: Vec<f32> = gs
                    .get(x.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert!(
                    a.iter().zip(&c).all(|(a, b)| (a - b).abs() < 1e-4),
                    "backward p={p}"
                );
            }
        }
    }

    #[test]
    fn blocked_causal_attention_matches_full_attention() {
        let dev = Device::Cpu;
        let (q, k, v) = (
            Tensor::randn(0f32, 1.0, (1, 2, 600, 8), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (1, 2, 600, 8), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (1, 2, 600, 8), &dev).unwrap(),
        );
        let fast: Vec<f32> = causal_attention(&q, &k, &v, 0.5)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mask: Vec<f32> = (0..600)
            .flat_map(|i| (0..600).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (600, 600), &dev).unwrap();
        let scores = ((q.matmul(&k.t().unwrap()).unwrap()) * 0.5)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let slow: Vec<f32> = probs
            .matmul(&v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    fn grads_of(f: impl Fn(&Tensor) -> Tensor, x: &Var, w: &Tensor) -> Vec<f32> {
        let y = f(x.as_tensor());
        let g = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
        g.get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn fused_gelu_and_layer_norm_gradients_match_candle() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (37, 24), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (37, 24), &dev).unwrap();
        let a = grads_of(|x| gelu_new_train(x).unwrap(), &x, &w);
        let b = grads_of(|x| x.gelu().unwrap(), &x, &w);
        assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-5));
        let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.5, 24, &dev).unwrap()).unwrap();
        let beta = Var::from_tensor(&Tensor::randn(0f32, 0.5, 24, &dev).unwrap()).unwrap();
        let fused =
            layer_norm_train(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5).unwrap();
        let slow = candle_nn::ops::layer_norm_slow(
            x.as_tensor(),
            gamma.as_tensor(),
            beta.as_tensor(),
            1e-5,
        )
        .unwrap();
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
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

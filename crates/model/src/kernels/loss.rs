//! The causal-LM loss as `transformers` computes it with `labels = inputs`:
//! logits at positions `0..T-1` predict tokens `1..T`, mean cross-entropy over
//! all `B*(T-1)` predictions.
//!
//! Evaluation never materialises all logits: the output projection and the
//! log-sum-exp run on chunks of rows. Training fuses the output projection
//! and the cross-entropy into one op whose backward reuses the logits' buffer
//! for their gradient.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::embedding::GradSink;
use super::gemm::{gemm_f32, gemm_weight, packed, Pack, WeightPacks};
use super::gemm_bf16;
use super::simd::{exp8_shifted, fast_exp, row_max};
use super::{contiguous_f32, with_cpu_f32, KernelPath};
use crate::error::{ModelError, Result};

/// Rows of logits computed at a time in evaluation on devices other than
/// the CPU (`ROWS x V` values).
const EVAL_CHUNK_ROWS: usize = 128;

/// Evaluation on the CPU: logits are computed for up to `EVAL_ROWS` rows and
/// `EVAL_VOCAB_BLOCK` vocabulary columns at a time (16 MB at most) and folded
/// into each row's running log-sum-exp. Walking the vocabulary in the inner
/// loop packs the output weight (~150 MB for GPT-2) once per 1024 rows, where
/// chunks of 128 rows against the whole vocabulary packed it eight times a
/// sequence, and keeps the block in cache for the log-sum-exp.
const EVAL_ROWS: usize = 1024;
/// See [`EVAL_ROWS`].
const EVAL_VOCAB_BLOCK: usize = 4096;

super::simd::avx2_dispatch! {
    /// A row's largest value (NaN skipped) and `sum(exp(x - max))` in f64:
    /// NaN if the row holds a NaN, 0 when the largest value is infinite.
    fn max_and_exp_sum(row: &[f32]) -> (f32, f64) {
        let max = row_max(row);
        if max.is_infinite() {
            let nan = row.iter().any(|x| x.is_nan());
            return (max, if nan { f64::NAN } else { 0.0 });
        }
        // Eight independent partial sums vectorise and keep the rounding small.
        let mut acc = [0f32; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            let e = exp8_shifted(c, max);
            for k in 0..8 {
                acc[k] += e[k];
            }
        }
        let mut sum: f64 = acc.iter().map(|&x| x as f64).sum();
        for &x in chunks.remainder() {
            sum += fast_exp(x - max) as f64;
        }
        (max, sum)
    }
}

/// Log-sum-exp of one row; NaN and +inf propagate as in torch.
fn row_logsumexp(row: &[f32]) -> f32 {
    let mut st = RunningLse::EMPTY;
    st.add(max_and_exp_sum(row));
    st.lse() as f32
}

/// One row's log-sum-exp over the blocks of its logits seen so far, and the
/// logit of its target once its block has been seen.
#[derive(Clone, Copy)]
struct RunningLse {
    max: f32,
    /// `sum(exp(x - max))` over the values seen.
    sum: f64,
    nan: bool,
    target: f32,
}

impl RunningLse {
    const EMPTY: Self = Self {
        max: f32::NEG_INFINITY,
        sum: 0.0,
        nan: false,
        target: f32::NAN,
    };

    /// Folds in a block's [`max_and_exp_sum`].
    fn add(&mut self, (bmax, bsum): (f32, f64)) {
        if bsum.is_nan() {
            self.nan = true;
        }
        if bmax.is_infinite() || bsum.is_nan() {
            self.max = self.max.max(bmax);
        } else if bmax <= self.max {
            self.sum += bsum * ((bmax - self.max) as f64).exp();
        } else {
            self.sum = self.sum * ((self.max - bmax) as f64).exp() + bsum;
            self.max = bmax;
        }
    }

    /// The log-sum-exp of the values seen: NaN if one was NaN, else the
    /// largest value if that is infinite, as in torch.
    fn lse(&self) -> f64 {
        if self.nan {
            f64::NAN
        } else if self.max.is_infinite() {
            self.max as f64
        } else {
            self.max as f64 + self.sum.ln()
        }
    }

    /// `logsumexp - logit[target]`.
    fn nll(&self) -> f64 {
        self.lse() - self.target as f64
    }
}

/// Sum of `logsumexp(h W^T) - (h W^T)[target]` over the rows of `h`
/// (`[N, d]`) for the output projection `w` (`[V, d]`); see [`EVAL_ROWS`].
fn nll_sum_cpu(h: &[f32], w: &[f32], d: usize, v: usize, targets: &[u32]) -> f64 {
    let threads = candle_core::utils::get_num_threads();
    let f32_block = |rows: usize, r0: usize, c0: usize, nc: usize, logits: &mut [f32]| {
        gemm_f32(
            rows,
            nc,
            d,
            logits,
            nc,
            false,
            (&h[r0 * d..], d, 1),
            (&w[c0 * d..], 1, d),
            1.0,
            threads,
        );
        Ok(())
    };
    // The f32 block product cannot fail.
    nll_sum_blocks(v, targets, f32_block).unwrap_or(f64::NAN)
}

/// [`nll_sum_cpu`] with the logits in bf16: `w` packed once (as `Wᵀ`) into
/// `slot`, each vocabulary block a range of its panels.
fn nll_sum_cpu_bf16(
    h: &[f32],
    w: &[f32],
    d: usize,
    v: usize,
    targets: &[u32],
    slot: &Pack,
) -> candle_core::Result<f64> {
    let head = packed(&slot.ours, w, (d, v), (1, d))?;
    let parallel = candle_core::utils::get_num_threads() > 1;
    nll_sum_blocks(v, targets, |rows, r0, c0, nc, logits| {
        gemm_bf16::gemm_cols(
            rows,
            &h[r0 * d..],
            d,
            1,
            head,
            c0..c0 + nc,
            logits,
            nc,
            false,
            parallel,
        )
        .map_err(candle_core::Error::wrap)
    })
}

/// [`nll_sum_cpu`] on oneDNN: in bf16 each vocabulary block of `w` is
/// reordered once into `slot`, in f32 read where it lies.
fn nll_sum_cpu_onednn(
    path: KernelPath,
    h: &[f32],
    w: &[f32],
    d: usize,
    v: usize,
    targets: &[u32],
    slot: &Pack,
) -> candle_core::Result<f64> {
    let threads = candle_core::utils::get_num_threads();
    nll_sum_blocks(v, targets, |rows, r0, c0, nc, logits| {
        gemm_weight(
            path,
            (rows, nc, d),
            logits,
            nc,
            false,
            (&h[r0 * d..], d, 1),
            (&w[c0 * d..], 1, d),
            Some(slot),
            threads,
        )
    })
}

/// The blockwise loop of [`nll_sum_cpu`]: `logits(rows, r0, c0, nc, buf)`
/// writes the `rows x nc` logits of rows `r0..` and vocabulary `c0..` into `buf`.
fn nll_sum_blocks(
    v: usize,
    targets: &[u32],
    logits: impl Fn(usize, usize, usize, usize, &mut [f32]) -> candle_core::Result<()>,
) -> candle_core::Result<f64> {
    let n = targets.len();
    let cols = EVAL_VOCAB_BLOCK.min(v);
    let mut buf = vec![0f32; n.min(EVAL_ROWS) * cols];
    let mut total = 0f64;
    for r0 in (0..n).step_by(EVAL_ROWS) {
        let rows = EVAL_ROWS.min(n - r0);
        let targets = &targets[r0..r0 + rows];
        let mut state = vec![RunningLse::EMPTY; rows];
        for c0 in (0..v).step_by(cols) {
            let nc = cols.min(v - c0);
            let block = &mut buf[..rows * nc];
            logits(rows, r0, c0, nc, block)?;
            block
                .par_chunks(nc)
                .zip(state.par_iter_mut())
                .zip(targets.par_iter())
                .for_each(|((row, st), &tg)| {
                    st.add(max_and_exp_sum(row));
                    if let Some(x) = (tg as usize).checked_sub(c0).and_then(|j| row.get(j)) {
                        st.target = *x;
                    }
                });
        }
        total += state.iter().map(RunningLse::nll).sum::<f64>();
    }
    Ok(total)
}

super::simd::avx2_dispatch! {
    /// One row of the cross-entropy gradient, in place over the row's
    /// logits: `scale * softmax(row)` from the row's log-sum-exp (the
    /// target's `-scale` is added by the caller).
    fn softmax_scaled_in_place(row: &mut [f32], lse: f32, scale: f32) -> () {
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            let e = exp8_shifted(c, lse);
            for k in 0..8 {
                c[k] = e[k] * scale;
            }
        }
        for x in chunks.into_remainder() {
            *x = fast_exp(*x - lse) * scale;
        }
    }
}

/// Mean next-token cross-entropy from final hidden states `[B*T, d]` and the
/// output projection `[V, d]`, without holding all logits. On the bf16
/// path the projection is packed into `packs` on first use.
pub(crate) fn eval_loss_from_hidden(
    path: KernelPath,
    hidden: &Tensor,
    out_w: &Tensor,
    batch: &[Vec<u32>],
    packs: &WeightPacks,
) -> Result<f32> {
    let b = batch.len();
    let t = batch.first().map(Vec::len).unwrap_or(0);
    if b == 0 || t < 2 {
        return Err(ModelError::Input(
            "need at least one row of two tokens".into(),
        ));
    }
    let (v, d) = out_w.dims2()?;
    if let Some(bad) = batch.iter().flatten().find(|&&x| x as usize >= v) {
        return Err(ModelError::Input(format!(
            "token id {bad} is outside the vocabulary of {v}"
        )));
    }
    if path.is_fast() {
        if hidden.dims2()? != (b * t, d) {
            return Err(ModelError::Input(format!(
                "hidden states {:?} for {b} rows of {t} tokens and width {d}",
                hidden.dims()
            )));
        }
        let total = with_cpu_f32(hidden, |h| {
            with_cpu_f32(out_w, |w| {
                batch
                    .iter()
                    .enumerate()
                    .map(|(r, row)| {
                        let h = &h[r * t * d..];
                        if path.is_onednn() {
                            nll_sum_cpu_onednn(path, h, w, d, v, &row[1..], &packs.fwd)
                        } else if path.is_bf16() {
                            nll_sum_cpu_bf16(h, w, d, v, &row[1..], &packs.fwd)
                        } else {
                            Ok(nll_sum_cpu(h, w, d, v, &row[1..]))
                        }
                    })
                    .sum::<candle_core::Result<f64>>()
            })
        })???;
        return Ok((total / (b * (t - 1)) as f64) as f32);
    }
    let out_t = out_w.t()?;
    let mut total = 0f64;
    for (r, row) in batch.iter().enumerate() {
        let mut pos = 0;
        while pos < t - 1 {
            let n = EVAL_CHUNK_ROWS.min(t - 1 - pos);
            let h = hidden.narrow(0, r * t + pos, n)?;
            // Low-precision logits are upcast: the log-sum-exp runs in f32.
            let logits = h.matmul(&out_t)?.to_dtype(DType::F32)?;
            let targets = &row[pos + 1..pos + 1 + n];
            total += chunk_nll_sum(&logits, targets)?;
            pos += n;
        }
    }
    Ok((total / (b * (t - 1)) as f64) as f32)
}

/// Sum over rows of `logsumexp(row) - row[target]` for `[n, V]` logits, in
/// candle's ops (devices other than the CPU).
fn chunk_nll_sum(logits: &Tensor, targets: &[u32]) -> Result<f64> {
    let lse = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&lse)?;
    let lse = (shifted.exp()?.sum_keepdim(D::Minus1)?.log()? + lse)?.squeeze(1)?;
    let idx = Tensor::from_slice(targets, targets.len(), logits.device())?;
    let picked = logits.gather(&idx.unsqueeze(1)?, 1)?.squeeze(1)?;
    let nll: Vec<f32> = (lse - picked)?.to_dtype(DType::F32)?.to_vec1()?;
    Ok(nll.iter().map(|&x| x as f64).sum())
}

/// Mean cross-entropy of the logits `h @ W^T` (`h` `[N, d]`, `W` `[V, d]`)
/// against `targets` (length N), as a scalar tensor that backpropagates into
/// `h` and `W`. On the CPU one op does it all: forward keeps the logits,
/// backward turns them into their gradient in place and runs the two GEMMs
/// (`dh = G W`, `dW = G^T h`), so no `[N, V]` gradient is ever allocated.
/// With `sink`, `dW` is added into it instead of being handed to candle
/// (see [`GradSink`]); without, or off the CPU, `W` gets its gradient from
/// candle as usual. On the bf16 path the three GEMMs run in bf16, `W`
/// packed into `packs` (as `Wᵀ` and as itself) on first use.
pub(crate) fn lm_head_cross_entropy(
    path: KernelPath,
    h: &Tensor,
    w: &Tensor,
    targets: &[u32],
    sink: Option<&GradSink>,
    packs: &Arc<WeightPacks>,
) -> Result<Tensor> {
    let (n, d) = h.dims2()?;
    let (v, wd) = w.dims2()?;
    if n != targets.len() || d != wd {
        return Err(ModelError::Input(format!(
            "{n} rows of width {d} for {} targets and a [{v}, {wd}] head",
            targets.len()
        )));
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
        return Err(ModelError::Input(format!(
            "target {bad} is outside the vocabulary of {v}"
        )));
    }
    if path.is_fast() {
        let op = HeadCrossEntropy {
            targets: Arc::new(targets.to_vec()),
            saved: Mutex::new(None),
            sink: sink.cloned(),
            path,
            packs: packs.clone(),
        };
        Ok(h.contiguous()?.apply_op2(&w.contiguous()?, op)?)
    } else {
        // Low-precision logits are upcast: the cross-entropy runs in f32.
        let logits = h.matmul(&w.t()?)?.to_dtype(DType::F32)?;
        let idx = Tensor::from_slice(targets, n, h.device())?;
        Ok(candle_nn::loss::cross_entropy(&logits, &idx)?)
    }
}

/// See [`lm_head_cross_entropy`].
struct HeadCrossEntropy {
    targets: Arc<Vec<u32>>,
    /// The logits and each row's log-sum-exp, from forward to backward.
    saved: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
    /// Where `dW` goes, if not to candle.
    sink: Option<GradSink>,
    /// Where the GEMMs run (fast, bf16 or oneDNN).
    path: KernelPath,
    /// `W`'s bf16 packs (bf16 only).
    packs: Arc<WeightPacks>,
}

impl HeadCrossEntropy {
    /// Logits `[N, V]` and their row log-sum-exps.
    fn logits(
        &self,
        h: &[f32],
        w: &[f32],
        n: usize,
        d: usize,
        v: usize,
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let mut logits = vec![0f32; n * v];
        let threads = candle_core::utils::get_num_threads();
        gemm_weight(
            self.path,
            (n, v, d),
            &mut logits,
            v,
            false,
            (h, d, 1),
            (w, 1, d),
            Some(&self.packs.fwd),
            threads,
        )?;
        let lse = logits.par_chunks(v).map(row_logsumexp).collect();
        Ok((logits, lse))
    }
}

impl CustomOp2 for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "lm-head-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d) = l1.shape().dims2()?;
        let (v, _) = l2.shape().dims2()?;
        let (h, w) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let (logits, lse) = self.logits(h, w, n, d, v)?;
        let sum: f64 = logits
            .par_chunks(v)
            .zip(self.targets.par_iter().zip(lse.par_iter()))
            .map(|(row, (&t, &l))| (l - row[t as usize]) as f64)
            .sum();
        if let Ok(mut saved) = self.saved.lock() {
            *saved = Some((logits, lse));
        }
        Ok((
            CpuStorage::F32(vec![(sum / n as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.to_dtype(DType::F32)?.to_vec0::<f32>()?;
        let (n, d) = h.dims2()?;
        let (v, _) = w.dims2()?;
        let scale = g / n as f32;
        let saved = self.saved.lock().ok().and_then(|mut s| s.take());
        let threads = candle_core::utils::get_num_threads();
        let (dh, dw) = with_cpu_f32(h, |hs| {
            with_cpu_f32(w, |ws| {
                // A second backward of the same graph recomputes the logits.
                let (mut grad, lse) = match saved {
                    Some(s) => s,
                    None => self.logits(hs, ws, n, d, v)?,
                };
                grad.par_chunks_mut(v)
                    .zip(self.targets.par_iter().zip(lse.par_iter()))
                    .for_each(|(row, (&t, &lse))| {
                        softmax_scaled_in_place(row, lse, scale);
                        row[t as usize] -= scale;
                    });
                let mut dh = vec![0f32; n * d];
                gemm_weight(
                    self.path,
                    (n, d, v),
                    &mut dh,
                    d,
                    false,
                    (&grad, v, 1),
                    (ws, d, 1),
                    Some(&self.packs.bwd),
                    threads,
                )?;
                let dw_into = |dw: &mut [f32]| {
                    gemm_weight(
                        self.path,
                        (v, d, n),
                        dw,
                        d,
                        true,
                        (&grad, 1, v),
                        (hs, d, 1),
                        None,
                        threads,
                    )
                };
                let dw = match &self.sink {
                    Some(sink) => {
                        sink.accumulate(v * d, dw_into)??;
                        None
                    }
                    None => {
                        let mut dw = vec![0f32; v * d];
                        dw_into(&mut dw)?;
                        Some(dw)
                    }
                };
                Ok::<_, candle_core::Error>((dh, dw))
            })
        })???;
        let dw = match dw {
            Some(dw) => Some(Tensor::from_vec(dw, (v, d), w.device())?),
            None => None,
        };
        Ok((Some(Tensor::from_vec(dh, (n, d), h.device())?), dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut x = -80.0f32;
        while x <= 0.0 {
            let (a, b) = (fast_exp(x), x.exp());
            assert!(((a - b) / b).abs() < 5e-7, "{x}: {a} vs {b}");
            x += 0.01;
        }
    }

    #[test]
    fn logsumexp_matches_f64() {
        let row: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32) * 0.17 - 8.0)
            .collect();
        let max = row.iter().cloned().fold(f64::MIN, |m, x| m.max(x as f64));
        let exact = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        assert!((row_logsumexp(&row) as f64 - exact).abs() < 1e-5);
        assert!(row_logsumexp(&[1.0, f32::NAN]).is_nan());
    }

    /// `logsumexp(h W^T) - (h W^T)[target]` per row, in f64 from the definition.
    fn nll_f64(h: &[f32], w: &[f32], d: usize, targets: &[u32]) -> Vec<f64> {
        let v = w.len() / d;
        h.chunks(d)
            .zip(targets)
            .map(|(x, &tg)| {
                let logits: Vec<f64> = (0..v)
                    .map(|j| (0..d).map(|k| x[k] as f64 * w[j * d + k] as f64).sum())
                    .collect();
                let max = logits.iter().cloned().fold(f64::MIN, f64::max);
                let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
                lse - logits[tg as usize]
            })
            .collect()
    }

    #[test]
    fn blockwise_nll_matches_the_definition_across_row_and_vocab_blocks() {
        // Rows over two row chunks, a vocabulary over two blocks (the last
        // one partial), targets in both blocks.
        let (n, d, v) = (EVAL_ROWS + 6, 3, EVAL_VOCAB_BLOCK + 37);
        let val = |i: usize, m: usize| ((i * 7919 % m) as f32 / m as f32 - 0.5) * 4.0;
        let h: Vec<f32> = (0..n * d).map(|i| val(i, 1013)).collect();
        let w: Vec<f32> = (0..v * d).map(|i| val(i, 997)).collect();
        let targets: Vec<u32> = (0..n).map(|i| (i * 2654435761 % v) as u32).collect();
        assert!(targets.iter().any(|&t| t as usize >= EVAL_VOCAB_BLOCK));
        let want: f64 = nll_f64(&h, &w, d, &targets).iter().sum();
        let got = nll_sum_cpu(&h, &w, d, v, &targets);
        assert!(
            ((got - want) / want).abs() < 1e-6,
            "blockwise {got} vs {want}"
        );
    }

    #[test]
    fn running_lse_keeps_the_nan_and_inf_rules_of_a_whole_row() {
        let fold = |blocks: &[&[f32]], target: f32| {
            let mut st = RunningLse::EMPTY;
            for b in blocks {
                st.add(max_and_exp_sum(b));
            }
            st.target = target;
            st.nll()
        };
        // Finite: the log-sum-exp of the whole row, from its definition.
        let whole = [0.5f32, -1.0, 2.0, 3.5, -7.0];
        let split = fold(&[&whole[..2], &whole[2..4], &whole[4..]], 2.0);
        let exact = whole.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln() - 2.0;
        assert!((split - exact).abs() < 1e-6, "{split} vs {exact}");
        // A NaN in any block makes the loss NaN, wherever the max is.
        assert!(fold(&[&[1.0, 2.0], &[f32::NAN, 0.0]], 1.0).is_nan());
        assert!(fold(&[&[f32::INFINITY], &[f32::NAN]], 1.0).is_nan());
        // +inf in another block than the target's: +inf loss, as torch.
        assert_eq!(fold(&[&[1.0, 2.0], &[f32::INFINITY]], 1.0), f64::INFINITY);
        // +inf as the target too: inf - inf.
        assert!(fold(&[&[f32::INFINITY]], f32::INFINITY).is_nan());
        // A block of -inf adds nothing.
        let with = fold(&[&[1.0, 2.0], &[f32::NEG_INFINITY]], 1.0);
        let without = fold(&[&[1.0, 2.0]], 1.0);
        assert_eq!(with, without);
    }
}

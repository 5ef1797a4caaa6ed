//! Causal scaled-dot-product attention on `[B, H, T, hd]` q, k, v, heads
//! merged into `[B * T, H * hd]`. On the CPU each head runs on one thread and
//! no `[H, T, T]` tensor outlives it: both evaluation and training work in
//! blocks of query rows that only meet the keys they can see (about half the
//! products of a full `T x T`), and training's backward recomputes the
//! probabilities from q and k and regenerates the dropout mask from its seed.
//! [`causal_softmax_rows`] is the one causal softmax of both.

use candle_core::{CpuStorage, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::activations::mask_in_place;
use super::gemm::gemm_f32;
use super::gemm_bf16::to_bf16;
use super::onednn::{self, Batched, OnednnError};
use super::simd::{exp_shifted_in_place, row_max};
use super::{contiguous_f32, with_cpu_f32, KernelPath};
use crate::error::Result;

/// Query rows per block: a `[BLOCK, T]` score buffer per thread.
const BLOCK: usize = 128;

/// The query blocks `(r0, r1)` of `t` positions.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(BLOCK)
        .map(move |r0| (r0, (r0 + BLOCK).min(t)))
}

super::simd::avx2_dispatch! {
    /// Causal softmax in place on rows of scores `row_len` wide: row `i` is
    /// query position `first + i`, sees keys `0..=first + i`, and the keys after
    /// it become exactly 0. NaN propagates to the whole row, as in torch.
    fn causal_softmax_rows(scores: &mut [f32], row_len: usize, first: usize) -> () {
        for (i, row) in scores.chunks_mut(row_len).enumerate() {
            let (seen, masked) = row.split_at_mut((first + i + 1).min(row_len));
            let max = row_max(seen);
            let inv = 1.0 / exp_shifted_in_place(seen, max);
            for x in seen.iter_mut() {
                *x *= inv;
            }
            masked.fill(0.0);
        }
    }
}

super::simd::avx2_dispatch! {
    /// Softmax backward in place on causal rows `row_len` wide, row `i` being
    /// query position `first + i`: `g = p * (g - <g, p>)` over the keys it
    /// sees, 0 after them.
    fn softmax_grad_rows(grads: &mut [f32], probs: &[f32], row_len: usize, first: usize) -> () {
        for (i, (g, p)) in grads.chunks_mut(row_len).zip(probs.chunks(row_len)).enumerate() {
            let seen = (first + i + 1).min(row_len);
            let p = &p[..seen];
            // Eight partial sums, so that the dot product vectorises.
            let mut acc = [0f32; 8];
            let mut gc = g[..seen].chunks_exact(8);
            let mut pc = p.chunks_exact(8);
            for (a, b) in (&mut gc).zip(&mut pc) {
                for k in 0..8 {
                    acc[k] += a[k] * b[k];
                }
            }
            let tail: f32 = gc.remainder().iter().zip(pc.remainder()).map(|(a, b)| a * b).sum();
            let dot = acc.iter().sum::<f32>() + tail;
            for (g, &p) in g[..seen].iter_mut().zip(p) {
                *g = p * (*g - dot);
            }
            g[seen..].fill(0.0);
        }
    }
}

/// Probabilities of query rows `r0..r1` against the keys `0..r1` they see,
/// into `s` (`[r1 - r0, r1]`), from q and k rows `rs` apart: causal softmax
/// of the scaled scores, before any dropout.
fn block_probs(
    (q, k, rs): (&[f32], &[f32], usize),
    (r0, r1): (usize, usize),
    hd: usize,
    scale: f32,
    s: &mut [f32],
) {
    gemm_f32(
        r1 - r0,
        r1,
        hd,
        s,
        r1,
        false,
        (&q[r0 * rs..], rs, 1),
        (k, 1, rs),
        scale,
        1,
    );
    causal_softmax_rows(s, r1, r0);
}

/// One head of causal attention (`[T, hd]`), its q, k and v rows `rs`
/// apart; `dropout(r0, r1, s)` may change block `(r0, r1)`'s probabilities
/// before they meet v (training's dropout).
fn head_forward(
    (q, k, v, rs): (&[f32], &[f32], &[f32], usize),
    (t, hd): (usize, usize),
    scale: f32,
    dropout: impl Fn(usize, usize, &mut [f32]),
) -> Vec<f32> {
    let mut out = vec![0f32; t * hd];
    let mut buf = vec![0f32; BLOCK.min(t) * t];
    for (r0, r1) in blocks(t) {
        let s = &mut buf[..(r1 - r0) * r1];
        block_probs((q, k, rs), (r0, r1), hd, scale, s);
        dropout(r0, r1, s);
        gemm_f32(
            r1 - r0,
            hd,
            r1,
            &mut out[r0 * hd..],
            hd,
            false,
            (s, r1, 1),
            (v, rs, 1),
            1.0,
            1,
        );
    }
    out
}

/// One head of causal attention for evaluation (`[T, hd]`), its q, k and v
/// rows `rs` apart.
fn eval_head(qkv: (&[f32], &[f32], &[f32], usize), t: usize, hd: usize, scale: f32) -> Vec<f32> {
    head_forward(qkv, (t, hd), scale, |_, _, _| {})
}

/// The `[T, hd]` outputs `head(bh)` of every head, run in parallel, merged
/// into the `[B * T, H * hd]` layout.
fn merged_heads(
    (b, h, t, hd): (usize, usize, usize, usize),
    head: impl Fn(usize) -> Vec<f32> + Send + Sync,
) -> Vec<f32> {
    let heads: Vec<Vec<f32>> = (0..b * h).into_par_iter().map(head).collect();
    let mut merged = vec![0f32; b * t * h * hd];
    for (bh, head) in heads.iter().enumerate() {
        let (bi, hi) = (bh / h, bh % h);
        for (i, row) in head.chunks(hd).enumerate() {
            let at = ((bi * t + i) * h + hi) * hd;
            merged[at..at + hd].copy_from_slice(row);
        }
    }
    merged
}

/// q, k or v of every head, `[B, H, T, hd]` at strides `(batch, head, row, 1)`:
/// contiguous tensors, or views inside GPT-2's fused projection.
#[derive(Clone, Copy)]
struct Heads<'a> {
    data: &'a [f32],
    strides: [usize; 4],
}

impl<'a> Heads<'a> {
    /// Contiguous `[B, H, T, hd]`.
    fn dense(data: &'a [f32], (h, t, hd): (usize, usize, usize)) -> Self {
        Self {
            data,
            strides: [h * t * hd, t * hd, hd, 1],
        }
    }

    /// Part `j` (0 q, 1 k, 2 v) of the fused projection `[B*T, 3*H*hd]`.
    fn fused(qkv: &'a [f32], j: usize, (h, t, hd): (usize, usize, usize)) -> Self {
        let row = 3 * h * hd;
        Self {
            data: &qkv[(j * h * hd).min(qkv.len())..],
            strides: [t * row, hd, row, 1],
        }
    }

    /// A dense `[B, H, T, hd]` bf16 copy (made once per layer call).
    fn to_bf16(self, (b, h, t, hd): (usize, usize, usize, usize)) -> Vec<u16> {
        let mut out = vec![0u16; b * h * t * hd];
        let s = self.strides;
        out.par_chunks_mut((t * hd).max(1))
            .enumerate()
            .for_each(|(bh, head)| {
                let at = (bh / h) * s[0] + (bh % h) * s[1];
                for (i, row) in head.chunks_mut(hd).enumerate() {
                    let src = &self.data[at + i * s[2]..at + i * s[2] + hd];
                    for (d, &x) in row.iter_mut().zip(src) {
                        *d = to_bf16(x);
                    }
                }
            });
        out
    }
}

/// Attention's f32 operands as oneDNN reads them: in place in f32, or
/// converted once to dense bf16 `[B, H, T, hd]` copies (once per layer
/// call, for every block).
struct Operands<'a> {
    f32s: Vec<Heads<'a>>,
    bf16s: Vec<Vec<u16>>,
    dense: [usize; 4],
}

impl<'a> Operands<'a> {
    fn new(
        heads: Vec<Heads<'a>>,
        dims: (usize, usize, usize, usize),
        dtype: onednn::Dtype,
    ) -> Self {
        let (_, h, t, hd) = dims;
        let bf16s = match dtype {
            onednn::Dtype::Bf16 => heads.iter().map(|x| x.to_bf16(dims)).collect(),
            onednn::Dtype::F32 => Vec::new(),
        };
        Self {
            f32s: heads,
            bf16s,
            dense: [h * t * hd, t * hd, hd, 1],
        }
    }

    /// Operand `j` from its row `r0` on, with its strides `(batch, head, row, column)`.
    fn get(&self, j: usize, r0: usize) -> (Batched<'_>, [usize; 4]) {
        match self.bf16s.get(j) {
            Some(c) => {
                let at = (r0 * self.dense[2]).min(c.len());
                (Batched::Bf16(&c[at..]), self.dense)
            }
            None => {
                let x = self.f32s[j];
                let at = (r0 * x.strides[2]).min(x.data.len());
                (Batched::F32(&x.data[at..]), x.strides)
            }
        }
    }

    /// Operand `j` read transposed (`hd x T`, as K in QK^T).
    fn get_t(&self, j: usize) -> (Batched<'_>, [usize; 4]) {
        let (x, s) = self.get(j, 0);
        (x, [s[0], s[1], s[3], s[2]])
    }
}

/// Runs `f(head, block)` on each head's `chunk` of `x` (`[B*H, rows,
/// cols]` f32 blocks) in parallel and gives `x` as oneDNN's operand in
/// `dtype`: in place, or converted into `buf` by the same task while the
/// head's block is still in cache.
fn per_head<'a>(
    x: &'a mut [f32],
    buf: &'a mut [u16],
    dtype: onednn::Dtype,
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) -> Batched<'a> {
    let chunk = chunk.max(1);
    match dtype {
        onednn::Dtype::F32 => {
            x.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c));
            Batched::F32(x)
        }
        onednn::Dtype::Bf16 => {
            let buf = &mut buf[..x.len()];
            x.par_chunks_mut(chunk)
                .zip(buf.par_chunks_mut(chunk))
                .enumerate()
                .for_each(|(i, (c, d))| {
                    f(i, c);
                    d.iter_mut()
                        .zip(c.iter())
                        .for_each(|(d, &x)| *d = to_bf16(x));
                });
            Batched::Bf16(buf)
        }
    }
}

/// Dropout on head `bh`'s probabilities of query block `(r0, r1)` in place
/// (`[r1 - r0, r1]`), as [`TrainOp::mask_block`].
type BlockMask<'a> = dyn Fn(usize, (usize, usize), &mut [f32]) + Sync + 'a;

/// Attention on oneDNN, merged into `[B*T, H*hd]`: per query block
/// `(r0, r1)` one batched matmul over all `B*H` heads of
/// `[r1 - r0, hd] x [hd, r1]` (only the keys the block sees) with the
/// `scale` as oneDNN's output scale, our causal softmax on the rows (f32),
/// `dropout(bh, r0, r1, probs)` on each head's block (training), then one
/// batched `[r1 - r0, r1] x [r1, hd]` written straight into the merged
/// layout. In bf16, q, k and v are converted once for all blocks and the
/// probabilities per block; accumulation and out are f32.
fn forward_onednn(
    [q, k, v]: [Heads<'_>; 3],
    (b, h, t, hd): (usize, usize, usize, usize),
    scale: f32,
    dtype: onednn::Dtype,
    dropout: &BlockMask<'_>,
) -> std::result::Result<Vec<f32>, OnednnError> {
    let threads = candle_core::utils::get_num_threads();
    let ops = Operands::new(vec![q, k, v], (b, h, t, hd), dtype);
    let bh = b * h;
    let mut out = vec![0f32; b * t * h * hd];
    let out_strides = [t * h * hd, hd, h * hd, 1];
    let mut scores = vec![0f32; bh * BLOCK.min(t) * t];
    let bf16 = dtype == onednn::Dtype::Bf16;
    let mut probs16 = vec![0u16; if bf16 { scores.len() } else { 0 }];
    for (r0, r1) in blocks(t) {
        let n = r1 - r0;
        let s = &mut scores[..bh * n * r1];
        let s_strides = [h * n * r1, n * r1, r1, 1];
        onednn::batched_gemm(
            (b, h, n, r1, hd),
            (s, s_strides),
            ops.get(0, r0),
            ops.get_t(1),
            (scale, false),
            threads,
        )?;
        let p = per_head(s, &mut probs16, dtype, n * r1, |i, head| {
            causal_softmax_rows(head, r1, r0);
            dropout(i, (r0, r1), head);
        });
        onednn::batched_gemm(
            (b, h, n, hd, r1),
            (&mut out[r0 * out_strides[2]..], out_strides),
            (p, s_strides),
            ops.get(2, 0),
            (1.0, false),
            threads,
        )?;
    }
    Ok(out)
}

/// Evaluation attention on oneDNN ([`forward_onednn`] without dropout).
fn eval_onednn(
    qkv: [Heads<'_>; 3],
    dims: (usize, usize, usize, usize),
    scale: f32,
    dtype: onednn::Dtype,
) -> std::result::Result<Vec<f32>, OnednnError> {
    forward_onednn(qkv, dims, scale, dtype, &|_, _, _| {})
}

/// Training's backward on oneDNN, batched over all heads per query block
/// as [`forward_onednn`]: the probabilities recomputed, `dP = dO V^T`,
/// back through `mask` (dropout, regenerated from its seed) and the
/// softmax into `dS`, then `dV += P'^T dO`, `dQ = scale dS K`,
/// `dK += scale dS^T Q`. `d_o` is the merged output gradient; `dst` gets
/// dQ, dK and dV at offsets `at`, each strided `dst_strides`.
#[allow(clippy::too_many_arguments)]
fn backward_onednn(
    [q, k, v]: [Heads<'_>; 3],
    d_o: &[f32],
    (b, h, t, hd): (usize, usize, usize, usize),
    scale: f32,
    dtype: onednn::Dtype,
    mask: &BlockMask<'_>,
    (dst, at, dst_strides): (&mut [f32], [usize; 3], [usize; 4]),
) -> std::result::Result<(), OnednnError> {
    let threads = candle_core::utils::get_num_threads();
    let d_o = Heads {
        data: d_o,
        strides: [t * h * hd, hd, h * hd, 1],
    };
    let ops = Operands::new(vec![q, k, v, d_o], (b, h, t, hd), dtype);
    let bh = b * h;
    let len = bh * BLOCK.min(t) * t;
    let (mut pbuf, mut dbuf) = (vec![0f32; len], vec![0f32; len]);
    let bf16 = dtype == onednn::Dtype::Bf16;
    let (mut p16, mut d16) = (
        vec![0u16; if bf16 { len } else { 0 }],
        vec![0u16; if bf16 { len } else { 0 }],
    );
    let grad = |dst: &mut [f32], j: usize, r0: usize| -> std::ops::Range<usize> {
        let from = (at[j] + r0 * dst_strides[2]).min(dst.len());
        from..dst.len()
    };
    for (r0, r1) in blocks(t) {
        let n = r1 - r0;
        let (p, ds) = (&mut pbuf[..bh * n * r1], &mut dbuf[..bh * n * r1]);
        let s_strides = [h * n * r1, n * r1, r1, 1];
        // P^T and dS^T as oneDNN's left operand (`r1 x n`).
        let t_strides = [h * n * r1, n * r1, 1, r1];
        onednn::batched_gemm(
            (b, h, n, r1, hd),
            (p, s_strides),
            ops.get(0, r0),
            ops.get_t(1),
            (scale, false),
            threads,
        )?;
        // dP' = dO V^T.
        onednn::batched_gemm(
            (b, h, n, r1, hd),
            (ds, s_strides),
            ops.get(3, r0),
            ops.get_t(2),
            (1.0, false),
            threads,
        )?;
        p.par_chunks_mut(n * r1)
            .zip(ds.par_chunks_mut(n * r1))
            .enumerate()
            .for_each(|(i, (p, ds))| {
                causal_softmax_rows(p, r1, r0);
                mask(i, (r0, r1), ds);
                softmax_grad_rows(ds, p, r1, r0);
                mask(i, (r0, r1), p);
            });
        let p = per_head(p, &mut p16, dtype, n * r1, |_, _| {});
        let ds = per_head(ds, &mut d16, dtype, n * r1, |_, _| {});
        // dV[..r1] += P'^T dO.
        let r = grad(dst, 2, 0);
        onednn::batched_gemm(
            (b, h, r1, hd, n),
            (&mut dst[r], dst_strides),
            (p, t_strides),
            ops.get(3, r0),
            (1.0, true),
            threads,
        )?;
        // dQ[r0..r1] = scale dS K.
        let r = grad(dst, 0, r0);
        onednn::batched_gemm(
            (b, h, n, hd, r1),
            (&mut dst[r], dst_strides),
            (ds, s_strides),
            ops.get(1, 0),
            (scale, false),
            threads,
        )?;
        // dK[..r1] += scale dS^T Q.
        let r = grad(dst, 1, 0);
        onednn::batched_gemm(
            (b, h, r1, hd, n),
            (&mut dst[r], dst_strides),
            (ds, t_strides),
            ops.get(0, r0),
            (scale, true),
            threads,
        )?;
    }
    Ok(())
}

/// The oneDNN dtype of `path`'s attention, `None` where ours runs.
fn onednn_dtype(path: KernelPath) -> Option<onednn::Dtype> {
    match path {
        KernelPath::Onednn => Some(onednn::Dtype::F32),
        KernelPath::OnednnBf16 => Some(onednn::Dtype::Bf16),
        _ => None,
    }
}

fn eval_cpu(
    path: KernelPath,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
) -> candle_core::Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    let merged = with_cpu_f32(q, |qs| {
        with_cpu_f32(k, |ks| {
            with_cpu_f32(v, |vs| match onednn_dtype(path) {
                Some(dtype) => {
                    let heads = |x| Heads::dense(x, (h, t, hd));
                    eval_onednn(
                        [heads(qs), heads(ks), heads(vs)],
                        (b, h, t, hd),
                        scale,
                        dtype,
                    )
                    .map_err(candle_core::Error::wrap)
                }
                None => Ok(merged_heads((b, h, t, hd), |bh| {
                    let r = bh * t * hd..(bh + 1) * t * hd;
                    eval_head((&qs[r.clone()], &ks[r.clone()], &vs[r], hd), t, hd, scale)
                })),
            })
        })
    })????;
    Tensor::from_vec(merged, (b * t, h * hd), q.device())
}

/// Training attention with dropout `p` on the probabilities (see the module docs).
struct TrainOp {
    scale: f32,
    p: f32,
    seed: u64,
    /// oneDNN's batched matmuls in this dtype (a oneDNN path), else ours.
    onednn: Option<onednn::Dtype>,
}

impl TrainOp {
    /// Applies head `bh`'s dropout mask (scaled) in place to block
    /// `(r0, r1)`'s rows (`[r1 - r0, r1]`) of its `[T, T]` probabilities; the
    /// keys after each query are 0 and stay 0, so only those it sees are drawn.
    fn mask_block(&self, bh: usize, t: usize, (r0, r1): (usize, usize), m: &mut [f32]) {
        if self.p <= 0.0 {
            return;
        }
        for (i, row) in m.chunks_mut(r1).enumerate() {
            let at = (bh * t + r0 + i) * t;
            mask_in_place(self.seed, self.p, at as u64, &mut row[..r0 + i + 1]);
        }
    }

    /// Output (`[T, hd]`) of head `bh` whose q, k, v rows are `rs` apart:
    /// dropped-out probabilities times v.
    fn head_out(
        &self,
        bh: usize,
        (t, hd): (usize, usize),
        qkv: (&[f32], &[f32], &[f32], usize),
    ) -> Vec<f32> {
        head_forward(qkv, (t, hd), self.scale, |r0, r1, s| {
            self.mask_block(bh, t, (r0, r1), s)
        })
    }
}

impl candle_core::CustomOp3 for TrainOp {
    fn name(&self) -> &'static str {
        "causal-attention-train"
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
        let (b, h, t, hd) = l1.shape().dims4()?;
        if l2.shape().dims4()? != (b, h, t, hd) || l3.shape().dims4()? != (b, h, t, hd) {
            candle_core::bail!("attention: q, k, v shapes differ");
        }
        let (q, k, v) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        if let Some(dtype) = self.onednn {
            let heads = |x| Heads::dense(x, (h, t, hd));
            let merged = forward_onednn(
                [heads(q), heads(k), heads(v)],
                (b, h, t, hd),
                self.scale,
                dtype,
                &|bh, rows, s| self.mask_block(bh, t, rows, s),
            )
            .map_err(candle_core::Error::wrap)?;
            return Ok((CpuStorage::F32(merged), Shape::from((b * t, h * hd))));
        }
        let merged = merged_heads((b, h, t, hd), |bh| {
            let r = bh * t * hd..(bh + 1) * t * hd;
            self.head_out(bh, (t, hd), (&q[r.clone()], &k[r.clone()], &v[r], hd))
        });
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
        let n = b * h * t * hd;
        let dev = q.device();
        if let Some(dtype) = self.onednn {
            let mut all = vec![0f32; 3 * n];
            with_cpu_f32(q, |qs| {
                with_cpu_f32(k, |ks| {
                    with_cpu_f32(v, |vs| {
                        with_cpu_f32(grad, |go| {
                            let heads = |x| Heads::dense(x, (h, t, hd));
                            backward_onednn(
                                [heads(qs), heads(ks), heads(vs)],
                                go,
                                (b, h, t, hd),
                                self.scale,
                                dtype,
                                &|bh, rows, s| self.mask_block(bh, t, rows, s),
                                (&mut all, [0, n, 2 * n], [h * t * hd, t * hd, hd, 1]),
                            )
                            .map_err(candle_core::Error::wrap)
                        })
                    })
                })
            })?????;
            let all = Tensor::from_vec(all, (3, b, h, t, hd), dev)?;
            return Ok((Some(all.get(0)?), Some(all.get(1)?), Some(all.get(2)?)));
        }
        let grads: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = with_cpu_f32(q, |qs| {
            with_cpu_f32(k, |ks| {
                with_cpu_f32(v, |vs| {
                    with_cpu_f32(grad, |go| {
                        (0..b * h)
                            .into_par_iter()
                            .map(|bh| self.head_bwd(bh, (b, h, t, hd), qs, ks, vs, go))
                            .collect()
                    })
                })
            })
        })????;
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
        Ok((
            Some(Tensor::from_vec(dq, (b, h, t, hd), dev)?),
            Some(Tensor::from_vec(dk, (b, h, t, hd), dev)?),
            Some(Tensor::from_vec(dv, (b, h, t, hd), dev)?),
        ))
    }
}

impl TrainOp {
    /// dQ, dK, dV of head `bh` from the merged output gradient `go`.
    fn head_bwd(
        &self,
        bh: usize,
        (_b, h, t, hd): (usize, usize, usize, usize),
        qs: &[f32],
        ks: &[f32],
        vs: &[f32],
        go: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let r = bh * t * hd..(bh + 1) * t * hd;
        let (q, k, v) = (&qs[r.clone()], &ks[r.clone()], &vs[r]);
        self.head_grads(bh, (h, t, hd), (q, k, v, hd), go)
    }

    /// dQ, dK, dV (`[T, hd]` each) of head `bh` whose q, k, v rows are `rs`
    /// apart, from the merged output gradient `go`, one query block at a time.
    fn head_grads(
        &self,
        bh: usize,
        (h, t, hd): (usize, usize, usize),
        (q, k, v, rs): (&[f32], &[f32], &[f32], usize),
        go: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (bi, hi) = (bh / h, bh % h);
        // dO of this head: its rows in the merged layout, `h * hd` apart.
        let (d_o, ors) = (&go[(bi * t * h + hi) * hd..], h * hd);
        let (mut dq, mut dk, mut dv) = (vec![0f32; t * hd], vec![0f32; t * hd], vec![0f32; t * hd]);
        let mut pbuf = vec![0f32; BLOCK.min(t) * t];
        let mut dbuf = vec![0f32; BLOCK.min(t) * t];
        for (r0, r1) in blocks(t) {
            let n = r1 - r0;
            let (p, ds) = (&mut pbuf[..n * r1], &mut dbuf[..n * r1]);
            let d_ob = &d_o[r0 * ors..];
            block_probs((q, k, rs), (r0, r1), hd, self.scale, p);
            // dP' = dO V^T, then back through dropout and softmax into dS.
            gemm_f32(n, r1, hd, ds, r1, false, (d_ob, ors, 1), (v, 1, rs), 1.0, 1);
            self.mask_block(bh, t, (r0, r1), ds);
            softmax_grad_rows(ds, p, r1, r0);
            // dV[..r1] += P'^T dO, with P' the dropped-out probabilities.
            self.mask_block(bh, t, (r0, r1), p);
            gemm_f32(
                r1,
                hd,
                n,
                &mut dv,
                hd,
                true,
                (p, 1, r1),
                (d_ob, ors, 1),
                1.0,
                1,
            );
            // dQ[r0..r1] = scale dS K, dK[..r1] += scale dS^T Q
            gemm_f32(
                n,
                hd,
                r1,
                &mut dq[r0 * hd..],
                hd,
                false,
                (ds, r1, 1),
                (k, rs, 1),
                self.scale,
                1,
            );
            gemm_f32(
                r1,
                hd,
                n,
                &mut dk,
                hd,
                true,
                (ds, 1, r1),
                (&q[r0 * rs..], rs, 1),
                self.scale,
                1,
            );
        }
        (dq, dk, dv)
    }
}

/// [`TrainOp`] reading q, k and v in place from the fused projection
/// `qkv` `[B*T, 3*H*hd]` (q, k, v side by side in each row, heads in order):
/// no per-head copies of q, k and v are made, and none is kept for backward
/// (they were 3 x 3 MB a GPT-2 layer at `[1, 1024]`), and the gradient comes
/// back as one `[B*T, 3*H*hd]` tensor.
struct TrainQkvOp {
    op: TrainOp,
    b: usize,
    t: usize,
    h: usize,
}

/// Head `bh`'s q, k and v within the fused projection `qkv` `[B*T, 3*H*hd]`
/// of `t` positions and `h` heads (each starting at its row 0; rows `3*H*hd` apart).
fn qkv_head(qkv: &[f32], (t, h, hd): (usize, usize, usize), bh: usize) -> (&[f32], &[f32], &[f32]) {
    let d = h * hd;
    let (bi, hi) = (bh / h, bh % h);
    let at = bi * t * 3 * d + hi * hd;
    (&qkv[at..], &qkv[at + d..], &qkv[at + 2 * d..])
}

/// The head width of a fused projection `qkv` of shape `shape`, checked to
/// be `[B*T, 3*H*hd]`.
fn qkv_head_dim(shape: &Shape, (b, t, h): (usize, usize, usize)) -> candle_core::Result<usize> {
    let (rows, width) = shape.dims2()?;
    if rows != b * t || width % (3 * h) != 0 {
        candle_core::bail!(
            "attention: qkv is [{rows}, {width}], not [{}, 3 * {h} * hd]",
            b * t
        );
    }
    Ok(width / (3 * h))
}

/// Evaluation attention straight from the fused projection `qkv` (see
/// [`qkv_head`]), merged into `[B*T, H*hd]`: no per-head copies of q, k, v.
/// On a oneDNN `path`, its batched matmuls ([`eval_onednn`]).
fn eval_qkv_cpu(
    path: KernelPath,
    qkv: &Tensor,
    (b, t, h): (usize, usize, usize),
    scale: f32,
) -> Result<Tensor> {
    let hd = qkv_head_dim(qkv.shape(), (b, t, h))?;
    let merged = with_cpu_f32(qkv, |qkv| match onednn_dtype(path) {
        Some(dtype) => {
            let part = |j| Heads::fused(qkv, j, (h, t, hd));
            eval_onednn([part(0), part(1), part(2)], (b, h, t, hd), scale, dtype)
                .map_err(candle_core::Error::wrap)
        }
        None => Ok(merged_heads((b, h, t, hd), |bh| {
            let (q, k, v) = qkv_head(qkv, (t, h, hd), bh);
            eval_head((q, k, v, 3 * h * hd), t, hd, scale)
        })),
    })??;
    Ok(Tensor::from_vec(merged, (b * t, h * hd), qkv.device())?)
}

impl TrainQkvOp {
    /// Head `bh`'s q, k and v within `qkv` (see [`qkv_head`]).
    fn head<'a>(&self, qkv: &'a [f32], bh: usize, hd: usize) -> (&'a [f32], &'a [f32], &'a [f32]) {
        qkv_head(qkv, (self.t, self.h, hd), bh)
    }

    fn dims(&self, l: &Layout) -> candle_core::Result<usize> {
        qkv_head_dim(l.shape(), (self.b, self.t, self.h))
    }
}

impl candle_core::CustomOp1 for TrainQkvOp {
    fn name(&self) -> &'static str {
        "causal-attention-qkv-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let hd = self.dims(l)?;
        let (b, h, t) = (self.b, self.h, self.t);
        let qkv = contiguous_f32(s, l)?;
        if let Some(dtype) = self.op.onednn {
            let part = |j| Heads::fused(qkv, j, (h, t, hd));
            let merged = forward_onednn(
                [part(0), part(1), part(2)],
                (b, h, t, hd),
                self.op.scale,
                dtype,
                &|bh, rows, s| self.op.mask_block(bh, t, rows, s),
            )
            .map_err(candle_core::Error::wrap)?;
            return Ok((CpuStorage::F32(merged), Shape::from((b * t, h * hd))));
        }
        let merged = merged_heads((b, h, t, hd), |bh| {
            let (q, k, v) = self.head(qkv, bh, hd);
            self.op.head_out(bh, (t, hd), (q, k, v, 3 * h * hd))
        });
        Ok((CpuStorage::F32(merged), Shape::from((b * t, h * hd))))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (b, h, t) = (self.b, self.h, self.t);
        let (rows, width) = qkv.dims2()?;
        let hd = width / (3 * h);
        let d = h * hd;
        if let Some(dtype) = self.op.onednn {
            let mut dqkv = vec![0f32; rows * width];
            with_cpu_f32(qkv, |qkv| {
                with_cpu_f32(grad, |go| {
                    let part = |j| Heads::fused(qkv, j, (h, t, hd));
                    backward_onednn(
                        [part(0), part(1), part(2)],
                        go,
                        (b, h, t, hd),
                        self.op.scale,
                        dtype,
                        &|bh, r, s| self.op.mask_block(bh, t, r, s),
                        (&mut dqkv, [0, d, 2 * d], [t * 3 * d, hd, 3 * d, 1]),
                    )
                    .map_err(candle_core::Error::wrap)
                })
            })???;
            return Ok(Some(Tensor::from_vec(dqkv, (rows, width), qkv.device())?));
        }
        let grads: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = with_cpu_f32(qkv, |qkv| {
            with_cpu_f32(grad, |go| {
                (0..b * h)
                    .into_par_iter()
                    .map(|bh| {
                        let (q, k, v) = self.head(qkv, bh, hd);
                        self.op.head_grads(bh, (h, t, hd), (q, k, v, 3 * d), go)
                    })
                    .collect()
            })
        })??;
        let mut dqkv = vec![0f32; rows * width];
        for (bh, parts) in grads.iter().enumerate() {
            let (bi, hi) = (bh / h, bh % h);
            for (j, part) in [&parts.0, &parts.1, &parts.2].into_iter().enumerate() {
                for (i, row) in part.chunks(hd).enumerate() {
                    let at = (bi * t + i) * 3 * d + j * d + hi * hd;
                    dqkv[at..at + hd].copy_from_slice(row);
                }
            }
        }
        Ok(Some(Tensor::from_vec(dqkv, (rows, width), qkv.device())?))
    }
}

/// The attention shape `--kernels auto`'s race times beside the weight
/// GEMMs: GPT-2's evaluation attention of `[T, H, hd]` (B = 1).
pub(crate) const RACE_SHAPE: (usize, usize, usize) = (512, 12, 64);

/// Evaluation attention of [`RACE_SHAPE`] from a fused projection as
/// `path` runs it: its flops (the causal blocks' QK^T and PV) and the best
/// of two timed calls after a first (which creates the primitives).
pub(crate) fn race(path: KernelPath) -> std::result::Result<(f64, f64), String> {
    let (t, h, hd) = RACE_SHAPE;
    let qkv: Vec<f32> = (0..t * 3 * h * hd)
        .map(|i| ((i * 29 % 23) as f32 - 11.0) * 0.02)
        .collect();
    let qkv = Tensor::from_vec(qkv, (t, 3 * h * hd), &candle_core::Device::Cpu)
        .map_err(|e| e.to_string())?;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut best = f64::INFINITY;
    for i in 0..3 {
        let start = std::time::Instant::now();
        eval_qkv_cpu(path, &qkv, (1, t, h), scale).map_err(|e| e.to_string())?;
        if i > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    let flops: usize = blocks(t)
        .map(|(r0, r1)| 2 * 2 * (r1 - r0) * r1 * hd * h)
        .sum();
    Ok((flops as f64, best))
}

/// Attention straight from GPT-2's fused projection `qkv` `[B*T, 3*H*hd]`
/// (see [`TrainQkvOp`] and [`eval_qkv_cpu`]), merged into `[B*T, H*hd]`;
/// in training `seed` picks the dropout mask. Fast path only: the portable
/// path splits the heads and calls [`causal_attention`]. Evaluation on a
/// oneDNN `path` runs oneDNN's batched matmuls, forward and backward.
pub(crate) fn causal_attention_qkv(
    path: KernelPath,
    qkv: &Tensor,
    (b, t, h): (usize, usize, usize),
    scale: f64,
    p: f32,
    train: bool,
    seed: u64,
) -> Result<Tensor> {
    if !train {
        return eval_qkv_cpu(path, qkv, (b, t, h), scale as f32);
    }
    let op = TrainQkvOp {
        op: TrainOp {
            scale: scale as f32,
            p,
            seed,
            onednn: onednn_dtype(path),
        },
        b,
        t,
        h,
    };
    Ok(qkv.contiguous()?.apply_op1(op)?)
}

/// The portable path: candle's ops, the mask added as `-inf` (dropout from
/// the device's generator, unseeded).
fn composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, p: f32, train: bool) -> Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), q.device())?.to_dtype(q.dtype())?;
    let scores = ((q * scale)?.matmul(&k.t()?)?).broadcast_add(&mask)?;
    let mut probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    if train && p > 0.0 {
        probs = candle_nn::ops::dropout(&probs, p)?;
    }
    Ok(probs.matmul(v)?.transpose(1, 2)?.reshape((b * t, h * hd))?)
}

/// Causal attention of `[B, H, T, hd]` q, k, v (contiguous), merged into
/// `[B * T, H * hd]`; dropout `p` on the probabilities in training, its mask
/// picked by `seed` on the fast path.
#[allow(clippy::too_many_arguments)]
pub(crate) fn causal_attention(
    path: KernelPath,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    p: f32,
    train: bool,
    seed: u64,
) -> Result<Tensor> {
    if !path.is_fast() {
        return composed(q, k, v, scale, p, train);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    Ok(match train {
        false => eval_cpu(path, &q, &k, &v, scale as f32)?,
        true => {
            let op = TrainOp {
                scale: scale as f32,
                p,
                seed,
                onednn: onednn_dtype(path),
            };
            q.apply_op3(&k, &v, op)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rng::keep;
    use candle_core::{Device, Var};

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// A deterministic `[rows, cols]` tensor of values in [-1, 1) (the
    /// oneDNN tests: bf16 tolerances hold for every run, not most).
    fn det((rows, cols): (usize, usize), salt: u64) -> Tensor {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let x = (i as u64 + 1)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(salt.wrapping_mul(0xBF58_476D_1CE4_E5B9));
                ((x >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    /// Attention from candle's own ops, with an explicit dropout mask.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
        keep_mask: Option<Tensor>,
    ) -> Tensor {
        let (b, h, t, hd) = q.dims4().unwrap();
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), q.device()).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let mut probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        if let Some(m) = keep_mask {
            probs = (probs * m).unwrap();
        }
        probs
            .matmul(v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b * t, h * hd))
            .unwrap()
    }

    #[test]
    fn eval_attention_in_blocks_matches_candle() {
        let dev = Device::Cpu;
        // 300 positions: three query blocks, the last one partial.
        let (b, h, t, hd) = (2, 3, 300, 8);
        let mk = || Tensor::randn(0f32, 1.0, (b, h, t, hd), &dev).unwrap();
        let (q, k, v) = (mk(), mk(), mk());
        let ours = causal_attention(KernelPath::Fast, &q, &k, &v, 0.35, 0.0, false, 0).unwrap();
        let want = reference(&q, &k, &v, 0.35, None);
        for (a, b) in flat(&ours).iter().zip(&flat(&want)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    /// Part `j` (0 q, 1 k, 2 v) of a fused `[B*T, 3*H*hd]` projection as
    /// contiguous `[B, H, T, hd]` heads, split as GPT-2 did.
    fn split_head(qkv: &Tensor, j: usize, (b, t, h, hd): (usize, usize, usize, usize)) -> Tensor {
        let d = h * hd;
        qkv.narrow(1, j * d, d)
            .unwrap()
            .reshape((b, t, h, hd))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    }

    #[test]
    fn eval_attention_from_fused_qkv_matches_candle() {
        let dev = Device::Cpu;
        // 300 positions: three query blocks, the last one partial.
        let (b, h, t, hd) = (2, 3, 300, 8);
        let d = h * hd;
        let qkv = Tensor::randn(0f32, 1.0, (b * t, 3 * d), &dev).unwrap();
        let heads = |j: usize| split_head(&qkv, j, (b, t, h, hd));
        let ours =
            causal_attention_qkv(KernelPath::Fast, &qkv, (b, t, h), 0.35, 0.0, false, 0).unwrap();
        let want = reference(&heads(0), &heads(1), &heads(2), 0.35, None);
        for (a, b) in flat(&ours).iter().zip(&flat(&want)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    #[cfg_attr(
        not(have_onednn),
        ignore = "needs libdnnl.so.2 (apt-get install libdnnl-dev)"
    )]
    fn onednn_eval_attention_matches_ours() {
        let bf16_ok = crate::onednn::implementation(crate::onednn::Dtype::Bf16).is_ok();
        if !bf16_ok {
            eprintln!("oneDNN has no bf16 kernel on this CPU: f32 only");
        }
        // 300 positions: three query blocks, the last one partial; 130: two.
        for (b, h, t, hd) in [(2, 3, 300, 8), (2, 2, 130, 64), (1, 1, 1, 4)] {
            let d = h * hd;
            let qkv = (det((b * t, 3 * d), 1) * 2.0).unwrap();
            let heads = |j: usize| split_head(&qkv, j, (b, t, h, hd));
            let (q, k, v) = (heads(0), heads(1), heads(2));
            let scale = 1.0 / (hd as f64).sqrt();
            let ours = flat(
                &causal_attention_qkv(KernelPath::Fast, &qkv, (b, t, h), scale, 0.0, false, 0)
                    .unwrap(),
            );
            for (path, tol) in [
                (KernelPath::Onednn, 1e-5f32),
                (KernelPath::OnednnBf16, 2e-2),
            ] {
                if path == KernelPath::OnednnBf16 && !bf16_ok {
                    continue;
                }
                let fused =
                    causal_attention_qkv(path, &qkv, (b, t, h), scale, 0.0, false, 0).unwrap();
                let split = causal_attention(path, &q, &k, &v, scale, 0.0, false, 0).unwrap();
                for (what, got) in [("fused", flat(&fused)), ("split", flat(&split))] {
                    assert_eq!(got.len(), ours.len());
                    for (i, (a, c)) in got.iter().zip(&ours).enumerate() {
                        assert!(
                            (a - c).abs() <= tol,
                            "{path:?} {what} b{b} h{h} t{t} hd{hd} [{i}]: {a} vs {c}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[cfg_attr(
        not(have_onednn),
        ignore = "needs libdnnl.so.2 (apt-get install libdnnl-dev)"
    )]
    fn onednn_training_attention_matches_ours_forward_and_backward() {
        let bf16_ok = crate::onednn::implementation(crate::onednn::Dtype::Bf16).is_ok();
        if !bf16_ok {
            eprintln!("oneDNN has no bf16 kernel on this CPU: f32 only");
        }
        // 300 positions: three query blocks, the last one partial.
        let (b, h, t, hd) = (2, 3, 300, 8);
        let d = h * hd;
        for p in [0.0f32, 0.3] {
            let qkv = Var::from_tensor(&(det((b * t, 3 * d), 2) * 2.0).unwrap()).unwrap();
            let w = det((b * t, d), 3);
            let heads = |j: usize| split_head(qkv.as_tensor(), j, (b, t, h, hd));
            // (output, d qkv) of the fused op and of the split-heads op on `path`.
            let run = |path: KernelPath| {
                let fused = causal_attention_qkv(path, qkv.as_tensor(), (b, t, h), 0.5, p, true, 5)
                    .unwrap();
                let split =
                    causal_attention(path, &heads(0), &heads(1), &heads(2), 0.5, p, true, 5)
                        .unwrap();
                [fused, split].map(|y| {
                    let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                    (flat(&y), flat(g.get(qkv.as_tensor()).unwrap()))
                })
            };
            let ours = run(KernelPath::Fast);
            for (path, fwd_tol, bwd_tol) in [
                (KernelPath::Onednn, 1e-5f32, 1e-4f32),
                (KernelPath::OnednnBf16, 2e-2, 2e-2),
            ] {
                if path == KernelPath::OnednnBf16 && !bf16_ok {
                    continue;
                }
                for (which, ((y, g), (y0, g0))) in run(path).iter().zip(&ours).enumerate() {
                    assert_eq!((y.len(), g.len()), (y0.len(), g0.len()));
                    // Gradients relative to the largest: bf16's rounding of
                    // six operands adds up along backward's chain.
                    let gmax = g0.iter().fold(1f32, |m, x| m.max(x.abs()));
                    for (a, c) in y.iter().zip(y0) {
                        assert!(
                            (a - c).abs() <= fwd_tol,
                            "{path:?} {which} p={p} forward: {a} vs {c}"
                        );
                    }
                    for (a, c) in g.iter().zip(g0) {
                        assert!(
                            (a - c).abs() <= bwd_tol * gmax,
                            "{path:?} {which} p={p} backward: {a} vs {c}"
                        );
                    }
                    assert!(g.iter().any(|&x| x != 0.0));
                }
            }
        }
    }

    #[test]
    fn causal_softmax_masks_the_future_and_propagates_nan() {
        let mut s = vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0];
        causal_softmax_rows(&mut s, 3, 1);
        let e = (1f32.exp(), 2f32.exp());
        assert!((s[0] - e.0 / (e.0 + e.1)).abs() < 1e-6 && s[2] == 0.0);
        assert!((s[3..].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let mut s = vec![f32::NAN, 0.0];
        causal_softmax_rows(&mut s, 2, 1);
        assert!(s.iter().all(|x| x.is_nan()));
    }

    #[test]
    fn attention_from_fused_qkv_matches_split_heads() {
        let dev = Device::Cpu;
        let (b, h, t, hd) = (2, 3, 17, 4);
        let d = h * hd;
        for p in [0.0f32, 0.3] {
            let qkv =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (b * t, 3 * d), &dev).unwrap()).unwrap();
            let w = Tensor::randn(0f32, 1.0, (b * t, d), &dev).unwrap();
            let fused = causal_attention_qkv(
                KernelPath::Fast,
                qkv.as_tensor(),
                (b, t, h),
                0.5,
                p,
                true,
                5,
            )
            .unwrap();
            // The existing path: heads split out of qkv as GPT-2 did, then TrainOp.
            let heads = |j: usize| split_head(qkv.as_tensor(), j, (b, t, h, hd));
            let split = causal_attention(
                KernelPath::Fast,
                &heads(0),
                &heads(1),
                &heads(2),
                0.5,
                p,
                true,
                5,
            )
            .unwrap();
            let close = |a: &[f32], c: &[f32]| {
                a.len() == c.len() && a.iter().zip(c).all(|(a, c)| (a - c).abs() < 1e-5)
            };
            assert!(close(&flat(&fused), &flat(&split)), "forward p={p}");
            let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gs = (split * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, c) = (
                flat(gf.get(qkv.as_tensor()).unwrap()),
                flat(gs.get(qkv.as_tensor()).unwrap()),
            );
            assert!(close(&a, &c), "backward p={p}");
            assert!(a.iter().any(|&x| x != 0.0));
        }
    }

    #[test]
    fn training_attention_matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        // 20 positions: one query block; 300: three, the last one partial.
        for ((b, h, t, hd), p) in [(2, 2, 20, 4), (1, 2, 300, 8)]
            .into_iter()
            .flat_map(|dims| [(dims, 0.0f32), (dims, 0.3)])
        {
            let mk = || {
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, hd), &dev).unwrap()).unwrap()
            };
            let (q, k, v) = (mk(), mk(), mk());
            let w = Tensor::randn(0f32, 1.0, (b * t, h * hd), &dev).unwrap();
            let seed = 99;
            let ours = causal_attention(
                KernelPath::Fast,
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                0.5,
                p,
                true,
                seed,
            )
            .unwrap();
            let keep_mask = (p > 0.0).then(|| {
                let m: Vec<f32> = (0..b * h * t * t)
                    .map(|i| {
                        if keep(seed, i as u64, p) {
                            1.0 / (1.0 - p)
                        } else {
                            0.0
                        }
                    })
                    .collect();
                Tensor::from_vec(m, (b, h, t, t), &dev).unwrap()
            });
            let want = reference(q.as_tensor(), k.as_tensor(), v.as_tensor(), 0.5, keep_mask);
            for (a, c) in flat(&ours).iter().zip(&flat(&want)) {
                assert!((a - c).abs() < 1e-5, "forward t={t} p={p}: {a} vs {c}");
            }
            let gf = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gs = (want * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for x in [&q, &k, &v] {
                let (a, c) = (
                    flat(gf.get(x.as_tensor()).unwrap()),
                    flat(gs.get(x.as_tensor()).unwrap()),
                );
                assert!(
                    a.iter().zip(&c).all(|(a, b)| (a - b).abs() < 1e-4),
                    "backward t={t} p={p}"
                );
            }
        }
    }
}

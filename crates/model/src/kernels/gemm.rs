//! The one call into `gemm` the kernels share, with every invariant the raw
//! pointer call relies on checked first, and the evaluation `Conv1D`.

use candle_core::Tensor;

use super::{activations, is_cpu_f32, with_cpu_f32};

/// `dst[m x n] = (accumulate ? dst : 0) + beta * lhs[m x k] @ rhs[k x n]` on
/// row-major buffers given as (slice, row stride, column stride); `dst` has
/// unit column stride and row stride `dst_rs`.
///
/// Safe to call with any arguments: it panics instead of letting the kernel
/// read or write out of bounds. The invariants `gemm::gemm` relies on, all
/// asserted here:
/// - every element the kernel reads of `lhs` and `rhs`, and writes of `dst`,
///   lies inside its slice (the last index of each operand is in bounds);
/// - distinct `dst` elements do not overlap (`dst_rs >= n` when `m > 1`), so
///   the threads writing different rows never write the same place;
/// - `dst` does not alias `lhs` or `rhs` (guaranteed by `&mut` against `&`);
/// - strides fit in `isize` (they index slices, which never exceed `isize::MAX`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f32(
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
    assert!(m == 1 || dst_rs >= n, "gemm: dst rows overlap");
    assert!(dst.len() > last(dst_rs, 1, m, n), "gemm: dst too short");
    if k > 0 {
        assert!(
            lhs.0.len() > last(lhs.1, lhs.2, m, k),
            "gemm: lhs too short"
        );
        assert!(
            rhs.0.len() > last(rhs.1, rhs.2, k, n),
            "gemm: rhs too short"
        );
    }
    let stride = |s: usize| isize::try_from(s).expect("gemm: stride fits isize");
    let dst_ptr = SendPtr(dst.as_mut_ptr());
    // Columns `c0..c0 + nc` of the product, on `par` threads.
    let part = |c0: usize, nc: usize, par: gemm::Parallelism| {
        // SAFETY: the asserts above are every condition `gemm::gemm` needs
        // for the whole product: each index it forms from (m, n, k) and the
        // strides is inside its slice, `dst` rows do not overlap and `dst` is
        // exclusively borrowed. Columns `c0..c0 + nc` (within `0..n`) of
        // `dst` and of `rhs` are a sub-matrix of those, so they are in bounds
        // too, and distinct column ranges of `dst` never share an element,
        // so parts running at once write disjoint places.
        unsafe {
            gemm::gemm(
                m,
                nc,
                k,
                dst_ptr.get().add(c0),
                1,
                stride(dst_rs),
                accumulate,
                lhs.0.as_ptr(),
                stride(lhs.2),
                stride(lhs.1),
                rhs.0.as_ptr().add(c0 * rhs.2),
                stride(rhs.2),
                stride(rhs.1),
                1.0,
                beta,
                false,
                false,
                false,
                par,
            );
        }
    };
    let width = split_width(m, n, k, threads);
    if width < n {
        // Column blocks handed out by rayon as threads come free: `gemm`'s own
        // split gives each thread an equal share up front, so a core slowed by
        // other load held every GEMM back (10-15% on a shared machine).
        use rayon::prelude::*;
        (0..n.div_ceil(width))
            .into_par_iter()
            .for_each(|j| part(j * width, width.min(n - j * width), gemm::Parallelism::None));
    } else if threads > 1 {
        part(0, n, gemm::Parallelism::Rayon(threads));
    } else {
        part(0, n, gemm::Parallelism::None);
    }
}

/// A raw `dst` pointer that the parts of one GEMM share; see [`gemm_f32`].
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

impl SendPtr {
    /// The pointer (a method, so closures capture the `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the parts of one GEMM write disjoint columns through it (see
// `gemm_f32`), and it does not outlive the `&mut` borrow it came from.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for SendPtr {}

/// Column-block width for splitting a GEMM over `threads`: `n` itself (no
/// split) for one thread or a small product, else about four blocks a
/// thread, a multiple of 16 columns.
fn split_width(m: usize, n: usize, k: usize, threads: usize) -> usize {
    const MIN_FLOPS: usize = 1 << 24;
    if threads <= 1 || n < 64 || m.saturating_mul(n).saturating_mul(k) < MIN_FLOPS {
        return n;
    }
    n.div_ceil(4 * threads).next_multiple_of(16).max(16)
}

/// `x @ W + bias` for `[N, in]` rows and a Conv1D weight `[in, out]`, the bias
/// added by the GEMM itself, then `gelu_new` in place if `gelu` (evaluation
/// on CPU; elsewhere candle's ops).
pub(crate) fn conv1d_eval(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    gelu: bool,
) -> candle_core::Result<Tensor> {
    let (n, din) = x.dims2()?;
    let (win, dout) = w.dims2()?;
    if !is_cpu_f32(x) || win != din || bias.dims1()? != dout {
        let y = x.matmul(w)?.broadcast_add(bias)?;
        // candle's `gelu` is the tanh form, as `gelu_new`.
        return if gelu { y.gelu() } else { Ok(y) };
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
    if gelu {
        activations::gelu_in_place(&mut out);
    }
    Tensor::from_vec(out, (n, dout), x.device())
}

/// `a @ W + b` for training, with its backward (`da = g W^T`, `dW = a^T g`,
/// `db = sum of g's rows`): one output buffer instead of candle's matmul
/// result plus a second one for the bias (~28 MB a GPT-2 layer at `[1, 1024]`).
/// With `gelu`, `a = gelu_new(x)` is computed on the fly from the input `x`
/// and recomputed in backward, so the MLP's `[T, 4d]` GELU output is never
/// kept for backward (12.5 MB a GPT-2 layer at `[1, 1024]`).
/// With `dropout` `(p, seed)`, the output is dropped out in place (the mask
/// [`activations::dropout`] would draw for `seed`) and backward masks the
/// incoming gradient: the output before dropout is never kept (3 MB per
/// residual branch of a GPT-2 layer at `[1, 1024]`).
struct Conv1dTrain {
    gelu: bool,
    dropout: Option<(f32, u64)>,
}

impl Conv1dTrain {
    /// The GEMM's left operand: `x` itself, or `gelu_new(x)` in a new buffer.
    fn input<'a>(&self, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        if self.gelu {
            std::borrow::Cow::Owned(activations::gelu_slice(x))
        } else {
            std::borrow::Cow::Borrowed(x)
        }
    }
}

impl candle_core::CustomOp3 for Conv1dTrain {
    fn name(&self) -> &'static str {
        "conv1d-train"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (n, din) = l1.shape().dims2()?;
        let (win, dout) = l2.shape().dims2()?;
        if win != din || l3.shape().dims1()? != dout {
            candle_core::bail!(
                "conv1d: shapes [{n}, {din}] x [{win}, {dout}] + [{:?}]",
                l3.shape()
            );
        }
        let (x, w, b) = (
            super::contiguous_f32(s1, l1)?,
            super::contiguous_f32(s2, l2)?,
            super::contiguous_f32(s3, l3)?,
        );
        let a = self.input(x);
        let mut out = b.repeat(n);
        let threads = candle_core::utils::get_num_threads();
        gemm_f32(
            n,
            dout,
            din,
            &mut out,
            dout,
            true,
            (&a, din, 1),
            (w, dout, 1),
            1.0,
            threads,
        );
        if let Some((p, seed)) = self.dropout {
            activations::mask_all_in_place(seed, p, &mut out);
        }
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((n, dout)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, din) = x.dims2()?;
        let dout = w.dim(1)?;
        let threads = candle_core::utils::get_num_threads();
        let (dx, dw, db) = with_cpu_f32(x, |xs| {
            with_cpu_f32(w, |ws| {
                with_cpu_f32(grad, |g| {
                    let masked;
                    let g = match self.dropout {
                        Some((p, seed)) => {
                            masked = activations::apply_mask(seed, p, g);
                            &masked[..]
                        }
                        None => g,
                    };
                    let mut dx = vec![0f32; n * din];
                    gemm_f32(
                        n,
                        din,
                        dout,
                        &mut dx,
                        din,
                        false,
                        (g, dout, 1),
                        (ws, 1, dout),
                        1.0,
                        threads,
                    );
                    if self.gelu {
                        activations::gelu_grad_slice(xs, &mut dx);
                    }
                    let a = self.input(xs);
                    let mut dw = vec![0f32; din * dout];
                    gemm_f32(
                        din,
                        dout,
                        n,
                        &mut dw,
                        dout,
                        false,
                        (&a, 1, din),
                        (g, dout, 1),
                        1.0,
                        threads,
                    );
                    let mut db = vec![0f32; dout];
                    for row in g.chunks(dout) {
                        for (d, &v) in db.iter_mut().zip(row) {
                            *d += v;
                        }
                    }
                    (dx, dw, db)
                })
            })
        })???;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (n, din), dev)?),
            Some(Tensor::from_vec(dw, (din, dout), dev)?),
            Some(Tensor::from_vec(db, dout, b.device())?),
        ))
    }
}

/// `x @ W + bias` for training (see [`Conv1dTrain`]); other devices use candle's ops.
pub(crate) fn conv1d_train(x: &Tensor, w: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    conv1d_train_with(x, w, bias, false, None)
}

/// `gelu_new(x) @ W + bias` for training, the GELU output recomputed in
/// backward instead of kept (see [`Conv1dTrain`]); other devices use candle's ops.
#[cfg(test)]
pub(crate) fn gelu_conv1d_train(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
) -> candle_core::Result<Tensor> {
    conv1d_train_with(x, w, bias, true, None)
}

/// `dropout(a @ W + bias)` for training with `a = gelu_new(x)` if `gelu`
/// else `x`, dropout `(p, seed)` if given (see [`Conv1dTrain`]); other
/// devices use candle's ops and [`activations::dropout`].
pub(crate) fn conv1d_train_with(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    gelu: bool,
    dropout: Option<(f32, u64)>,
) -> candle_core::Result<Tensor> {
    let dropout = dropout.filter(|&(p, _)| p > 0.0);
    if !is_cpu_f32(x) {
        let a = if gelu { x.gelu()? } else { x.clone() };
        let y = a.matmul(w)?.broadcast_add(bias)?;
        return match dropout {
            Some((p, seed)) => activations::dropout(&y, p, seed),
            None => Ok(y),
        };
    }
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &bias.contiguous()?,
        Conv1dTrain { gelu, dropout },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn gemm_split_in_column_blocks_matches_the_definition() {
        // Large enough to be split over two threads, with a transposed rhs,
        // a dst wider than n, accumulation and a scale.
        let (m, n, k, dst_rs) = (70, 1000, 300, 1003);
        assert!(split_width(m, n, k, 2) < n);
        let lhs: Vec<f32> = (0..m * k)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.1)
            .collect();
        // rhs[kk][j] stored at j * k + kk (row stride 1, column stride k).
        let rhs: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let mut dst: Vec<f32> = (0..m * dst_rs).map(|i| (i % 5) as f32).collect();
        let before = dst.clone();
        gemm_f32(
            m,
            n,
            k,
            &mut dst,
            dst_rs,
            true,
            (&lhs, k, 1),
            (&rhs, 1, k),
            0.5,
            2,
        );
        for i in 0..m {
            for j in 0..dst_rs {
                let got = dst[i * dst_rs + j];
                if j >= n {
                    assert_eq!(got, before[i * dst_rs + j], "column {j} past n was written");
                    continue;
                }
                let dot: f64 = (0..k)
                    .map(|kk| lhs[i * k + kk] as f64 * rhs[j * k + kk] as f64)
                    .sum();
                let want = before[i * dst_rs + j] as f64 + 0.5 * dot;
                assert!(
                    (got as f64 - want).abs() < 1e-3,
                    "({i}, {j}): {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn split_width_keeps_small_or_single_threaded_products_whole() {
        assert_eq!(split_width(1024, 3040, 760, 1), 3040);
        assert_eq!(split_width(4, 4, 4, 2), 4);
        assert_eq!(split_width(1024, 48, 760, 2), 48);
        let w = split_width(1024, 3040, 760, 2);
        assert!(w.is_multiple_of(16) && 3040usize.div_ceil(w) == 8, "{w}");
    }

    #[test]
    fn conv1d_with_dropout_matches_conv1d_then_dropout() {
        let dev = Device::Cpu;
        let mk = |s: (usize, usize)| {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, s, &dev).unwrap()).unwrap()
        };
        // 37 x 300 outputs span several of the dropout kernel's chunks.
        let (x, w) = (mk((37, 24)), mk((24, 300)));
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 300, &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1.0, (37, 300), &dev).unwrap();
        let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        for gelu in [false, true] {
            let (xs, ws, bs) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
            let fused = conv1d_train_with(xs, ws, bs, gelu, Some((0.3, 11))).unwrap();
            let plain = conv1d_train_with(xs, ws, bs, gelu, None).unwrap();
            let plain = activations::dropout(&plain, 0.3, 11).unwrap();
            let (a, c) = (flat(&fused), flat(&plain));
            assert_eq!(a, c, "forward, gelu {gelu}");
            assert!(a.iter().filter(|&&v| v == 0.0).count() > a.len() / 5);
            let gf = (fused * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gp = (plain * &g).unwrap().sum_all().unwrap().backward().unwrap();
            for t in [xs, ws, bs] {
                let (a, c) = (flat(gf.get(t).unwrap()), flat(gp.get(t).unwrap()));
                assert_eq!(a, c, "backward, gelu {gelu}");
            }
        }
    }

    #[test]
    fn conv1d_forward_and_gradients_match_candle() {
        let dev = Device::Cpu;
        let mk = |s: (usize, usize)| {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, s, &dev).unwrap()).unwrap()
        };
        let (x, w) = (mk((37, 24)), mk((24, 40)));
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 40, &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1.0, (37, 40), &dev).unwrap();
        let ours = conv1d_train(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
        let theirs = x
            .as_tensor()
            .matmul(w.as_tensor())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        let evals = conv1d_eval(x.as_tensor(), w.as_tensor(), b.as_tensor(), false).unwrap();
        let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        for y in [&ours, &evals] {
            assert!(flat(y)
                .iter()
                .zip(&flat(&theirs))
                .all(|(a, b)| (a - b).abs() < 1e-4));
        }
        // GELU fused into the GEMM's input, against candle's gelu then matmul.
        let fused = gelu_conv1d_train(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
        let plain = x
            .as_tensor()
            .gelu()
            .unwrap()
            .matmul(w.as_tensor())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        assert!(flat(&fused)
            .iter()
            .zip(&flat(&plain))
            .all(|(a, b)| (a - b).abs() < 1e-4));
        let gf = (fused * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &g).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [x.as_tensor(), w.as_tensor(), b.as_tensor()] {
            let (a, c) = (flat(gf.get(t).unwrap()), flat(gp.get(t).unwrap()));
            assert!(
                a.iter().zip(&c).all(|(a, b)| (a - b).abs() < 1e-4),
                "gelu: {a:?} vs {c:?}"
            );
        }
        let ga = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (theirs * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for t in [x.as_tensor(), w.as_tensor(), b.as_tensor()] {
            let (a, c) = (flat(ga.get(t).unwrap()), flat(gb.get(t).unwrap()));
            assert!(
                a.iter().zip(&c).all(|(a, b)| (a - b).abs() < 1e-4),
                "{a:?} vs {c:?}"
            );
        }
    }
}

//! GPT-2's `Conv1D` (`x @ W + b`, `W` stored `[in, out]`): the bias added by
//! the GEMM itself, GELU and dropout fused, for evaluation and training.

use std::sync::Arc;

use candle_core::Tensor;

use super::gemm::{gemm_weight, WeightPacks};
use super::{activations, onednn, with_cpu_f32, KernelPath};

/// `x @ W + bias` for `[N, in]` rows and a Conv1D weight `[in, out]`, the bias
/// added by the GEMM itself, then `gelu_new` in place if `gelu` (evaluation
/// on CPU; elsewhere candle's ops). On the bf16 path `W` is packed into
/// `packs` on first use. On a oneDNN path the bias and GELU are the
/// primitive's own epilogue (its bias argument and an eltwise post-op).
pub(crate) fn conv1d_eval(
    path: KernelPath,
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    gelu: bool,
    packs: &WeightPacks,
) -> candle_core::Result<Tensor> {
    let (n, din) = x.dims2()?;
    let (win, dout) = w.dims2()?;
    if !path.is_fast() || win != din || bias.dims1()? != dout {
        if packs.is_sealed() {
            candle_core::bail!("conv1d: [{n}, {din}] rows for a sealed [{win}, {dout}] weight");
        }
        let y = x.matmul(w)?.broadcast_add(bias)?;
        // candle's `gelu` is the tanh form, as `gelu_new`.
        return if gelu { y.gelu() } else { Ok(y) };
    }
    let threads = candle_core::utils::get_num_threads();
    // A sealed weight's f32 values are gone: its GEMM reads the copy.
    let with_w = |f: &mut dyn FnMut(&[f32]) -> candle_core::Result<()>| {
        if packs.is_sealed() {
            f(&[])
        } else {
            with_cpu_f32(w, |ws| f(ws))?
        }
    };
    if path.is_onednn() {
        let out = with_cpu_f32(x, |xs| {
            with_cpu_f32(bias, |bs| {
                let mut out = vec![0f32; n * dout];
                with_w(&mut |ws| {
                    onednn_product(path, (n, din, dout), &mut out, (xs, ws, bs), gelu, packs)
                })?;
                Ok::<_, candle_core::Error>(out)
            })
        })???;
        return Tensor::from_vec(out, (n, dout), x.device());
    }
    let mut out = with_cpu_f32(bias, |b| b.repeat(n))?;
    with_cpu_f32(x, |xs| {
        with_w(&mut |ws| {
            gemm_weight(
                path,
                (n, dout, din),
                &mut out,
                dout,
                true,
                (xs, din, 1),
                (ws, dout, 1),
                Some(&packs.fwd),
                threads,
            )
        })
    })??;
    if gelu {
        activations::gelu_in_place(&mut out);
    }
    Tensor::from_vec(out, (n, dout), x.device())
}

/// [`conv1d_eval`]'s product on a oneDNN `path`: `out = x @ W + b` (then
/// GELU if `gelu`), the bias and GELU in oneDNN's epilogue (no pre-filled
/// bias, no second pass over the output); `ws` empty for a sealed weight.
fn onednn_product(
    path: KernelPath,
    (n, din, dout): (usize, usize, usize),
    out: &mut [f32],
    (xs, ws, bs): (&[f32], &[f32], &[f32]),
    gelu: bool,
    packs: &WeightPacks,
) -> candle_core::Result<()> {
    let dtype = if path.is_bf16() {
        onednn::Dtype::Bf16
    } else {
        onednn::Dtype::F32
    };
    onednn::gemm_fused(
        dtype,
        (n, dout, din),
        out,
        dout,
        onednn::Fused {
            accumulate: false,
            bias: Some(bs),
            gelu,
        },
        (xs, din, 1),
        (ws, dout, 1),
        Some(&packs.fwd.onednn),
        candle_core::utils::get_num_threads(),
    )
    .map_err(candle_core::Error::wrap)
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
/// On a bf16 or oneDNN `path`, all three GEMMs run there: `W` and `Wᵀ`
/// packed (or reordered) into `packs` on first use, the activations per call.
struct Conv1dTrain {
    gelu: bool,
    dropout: Option<(f32, u64)>,
    path: KernelPath,
    packs: Arc<WeightPacks>,
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
        gemm_weight(
            self.path,
            (n, dout, din),
            &mut out,
            dout,
            true,
            (&a, din, 1),
            (w, dout, 1),
            Some(&self.packs.fwd),
            threads,
        )?;
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
                    gemm_weight(
                        self.path,
                        (n, din, dout),
                        &mut dx,
                        din,
                        false,
                        (g, dout, 1),
                        (ws, 1, dout),
                        Some(&self.packs.bwd),
                        threads,
                    )?;
                    if self.gelu {
                        activations::gelu_grad_slice(xs, &mut dx);
                    }
                    let a = self.input(xs);
                    let mut dw = vec![0f32; din * dout];
                    gemm_weight(
                        self.path,
                        (din, dout, n),
                        &mut dw,
                        dout,
                        false,
                        (&a, 1, din),
                        (g, dout, 1),
                        None,
                        threads,
                    )?;
                    let mut db = vec![0f32; dout];
                    for row in g.chunks(dout) {
                        for (d, &v) in db.iter_mut().zip(row) {
                            *d += v;
                        }
                    }
                    Ok::<_, candle_core::Error>((dx, dw, db))
                })
            })
        })????;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (n, din), dev)?),
            Some(Tensor::from_vec(dw, (din, dout), dev)?),
            Some(Tensor::from_vec(db, dout, b.device())?),
        ))
    }
}

/// `x @ W + bias` for training (see [`Conv1dTrain`]); other devices use candle's ops.
#[cfg(test)]
pub(crate) fn conv1d_train(x: &Tensor, w: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    conv1d_train_with(
        KernelPath::Fast,
        x,
        w,
        bias,
        false,
        None,
        &Default::default(),
    )
}

/// `gelu_new(x) @ W + bias` for training, the GELU output recomputed in
/// backward instead of kept (see [`Conv1dTrain`]); other devices use candle's ops.
#[cfg(test)]
pub(crate) fn gelu_conv1d_train(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
) -> candle_core::Result<Tensor> {
    conv1d_train_with(
        KernelPath::Fast,
        x,
        w,
        bias,
        true,
        None,
        &Default::default(),
    )
}

/// `dropout(a @ W + bias)` for training with `a = gelu_new(x)` if `gelu`
/// else `x`, dropout `(p, seed)` if given (see [`Conv1dTrain`]); other
/// devices use candle's ops and [`activations::dropout`]. On the bf16 path
/// `W` and `Wᵀ` are packed into `packs` on first use.
pub(crate) fn conv1d_train_with(
    path: KernelPath,
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    gelu: bool,
    dropout: Option<(f32, u64)>,
    packs: &Arc<WeightPacks>,
) -> candle_core::Result<Tensor> {
    let dropout = dropout.filter(|&(p, _)| p > 0.0);
    if packs.is_sealed() {
        candle_core::bail!("conv1d: a weight sealed for evaluation cannot be trained");
    }
    if !path.is_fast() {
        let a = if gelu { x.gelu()? } else { x.clone() };
        let y = a.matmul(w)?.broadcast_add(bias)?;
        return match dropout {
            Some((p, seed)) => activations::dropout(path, &y, p, seed),
            None => Ok(y),
        };
    }
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &bias.contiguous()?,
        Conv1dTrain {
            gelu,
            dropout,
            path,
            packs: packs.clone(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    #[cfg_attr(
        not(have_onednn),
        ignore = "needs libdnnl.so.2 (apt-get install libdnnl-dev)"
    )]
    fn onednn_fused_bias_and_gelu_match_the_unfused_product() {
        let bf16_ok = onednn::implementation(onednn::Dtype::Bf16).is_ok();
        if !bf16_ok {
            eprintln!("oneDNN has no bf16 kernel on this CPU: f32 only");
        }
        let dev = Device::Cpu;
        let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        for (n, din, dout) in [
            (1, 1, 1),
            (37, 24, 300),
            (5, 67, 33),
            (130, 96, 129),
            (3, 0, 5),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, din), &dev).unwrap();
            let w = (Tensor::randn(0f32, 1.0, (din, dout), &dev).unwrap() * 0.2).unwrap();
            let b = Tensor::randn(0f32, 1.0, dout, &dev).unwrap();
            let (xs, ws, bs) = (flat(&x), flat(&w), flat(&b));
            for (path, dtype, tol) in [
                (KernelPath::Onednn, onednn::Dtype::F32, 1e-5f32),
                (KernelPath::OnednnBf16, onednn::Dtype::Bf16, 2e-2),
            ] {
                if dtype == onednn::Dtype::Bf16 && !bf16_ok {
                    continue;
                }
                for gelu in [false, true] {
                    let packs = WeightPacks::default();
                    let fused = flat(&conv1d_eval(path, &x, &w, &b, gelu, &packs).unwrap());
                    // Unfused, as before: the bias repeated, the product summed
                    // into it, GELU in a second pass.
                    let mut plain = bs.repeat(n);
                    onednn::gemm(
                        dtype,
                        (n, dout, din),
                        &mut plain,
                        dout,
                        true,
                        (&xs, din, 1),
                        (&ws, dout, 1),
                        None,
                        2,
                    )
                    .unwrap();
                    if gelu {
                        activations::gelu_in_place(&mut plain);
                    }
                    assert_eq!(fused.len(), plain.len());
                    for (i, (a, c)) in fused.iter().zip(&plain).enumerate() {
                        assert!(
                            (a - c).abs() <= tol * c.abs().max(1.0),
                            "{path:?} gelu {gelu} [{n}, {din}] x [{din}, {dout}] [{i}]: {a} vs {c}"
                        );
                    }
                    // And against candle's own ops (f32, tanh GELU), relative
                    // to the size of the terms summed (bf16 rounds each).
                    let want = x.matmul(&w).unwrap().broadcast_add(&b).unwrap();
                    let want = flat(&if gelu { want.gelu().unwrap() } else { want });
                    let mag = x.abs().unwrap().matmul(&w.abs().unwrap()).unwrap();
                    let mag = flat(&mag.broadcast_add(&b.abs().unwrap()).unwrap());
                    let tol = if dtype == onednn::Dtype::F32 {
                        1e-5
                    } else {
                        2e-2
                    };
                    for ((a, c), m) in fused.iter().zip(&want).zip(&mag) {
                        assert!(
                            (a - c).abs() <= tol * m.max(1.0),
                            "{path:?} gelu {gelu} vs candle: {a} vs {c}"
                        );
                    }
                }
            }
        }
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
        let none = Arc::default();
        for gelu in [false, true] {
            let (xs, ws, bs) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
            let fused =
                conv1d_train_with(KernelPath::Fast, xs, ws, bs, gelu, Some((0.3, 11)), &none)
                    .unwrap();
            let plain = conv1d_train_with(KernelPath::Fast, xs, ws, bs, gelu, None, &none).unwrap();
            let plain = activations::dropout(KernelPath::Fast, &plain, 0.3, 11).unwrap();
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
        let evals = conv1d_eval(
            KernelPath::Fast,
            x.as_tensor(),
            w.as_tensor(),
            b.as_tensor(),
            false,
            &WeightPacks::default(),
        )
        .unwrap();
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

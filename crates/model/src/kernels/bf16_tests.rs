//! The bf16 path's ops (GPT-2's `Conv1D`, `Linear`, the output head and its
//! loss), forward and every backward GEMM, against f64 definitions over the
//! operands rounded to bf16.

use std::sync::Arc;

use candle_core::{Device, Tensor, Var};

use super::gemm::WeightPacks;
use super::gemm_bf16::{from_bf16, to_bf16};
use super::{conv1d, linear, loss, KernelPath};

/// x rounded to bf16, in f64.
fn r(x: f32) -> f64 {
    from_bf16(to_bf16(x)) as f64
}

/// `sum_p a(i, p) b(p, j)` over bf16-rounded operands for every (i, j) of
/// an `m x n` product, with the sum of the terms' magnitudes (the error scale).
fn product(
    (m, n, k): (usize, usize, usize),
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut abs) = (0f64, 0f64);
            for p in 0..k {
                let t = r(a(i, p)) * r(b(p, j));
                s += t;
                abs += t.abs();
            }
            out.push((s, abs));
        }
    }
    out
}

/// `got` against the definition: f32 accumulation error of `k` terms.
fn assert_close(what: &str, got: &[f32], want: &[(f64, f64)], k: usize, offset: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &(w, scale))) in got.iter().zip(want).enumerate() {
        let w = w + offset.get(i).copied().unwrap_or(0.0);
        let tol = (k as f64 + 2.0) * f32::EPSILON as f64 * (scale + w.abs()) + 1e-30;
        assert!((g as f64 - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

fn values(n: usize, salt: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let x = (i + 1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(salt.wrapping_mul(0xBF58_476D_1CE4_E5B9));
            ((x >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
#[cfg_attr(not(cpu_avx512bf16), ignore = "needs AVX512-BF16")]
fn conv1d_forward_and_its_backward_gemms_match_the_definition() {
    // Odd sizes: partial row blocks, panels and an odd inner dimension.
    let (n, din, dout) = (37, 45, 70);
    let dev = Device::Cpu;
    let (xs, ws, bs, gs) = (
        values(n * din, 1),
        values(din * dout, 2),
        values(dout, 3),
        values(n * dout, 4),
    );
    let x = Var::from_vec(xs.clone(), (n, din), &dev).unwrap();
    let w = Var::from_vec(ws.clone(), (din, dout), &dev).unwrap();
    let b = Var::from_vec(bs.clone(), dout, &dev).unwrap();
    let g = Tensor::from_vec(gs.clone(), (n, dout), &dev).unwrap();
    let bias: Vec<f64> = (0..n * dout).map(|i| bs[i % dout] as f64).collect();
    let y_def = product(
        (n, dout, din),
        |i, p| xs[i * din + p],
        |p, j| ws[p * dout + j],
    );
    let packs = Arc::new(WeightPacks::default());
    let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
    let eval = conv1d::conv1d_eval(KernelPath::FastBf16, xt, wt, bt, false, &packs).unwrap();
    assert_close("eval y", &flat(&eval), &y_def, din, &bias);
    let y =
        conv1d::conv1d_train_with(KernelPath::FastBf16, xt, wt, bt, false, None, &packs).unwrap();
    assert_close("train y", &flat(&y), &y_def, din, &bias);
    assert!(packs.fwd.ours.get().is_some() && packs.bwd.ours.get().is_none());
    let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    // dx = g Wᵀ, dW = xᵀ g, db = the column sums of g.
    let dx = product(
        (n, din, dout),
        |i, p| gs[i * dout + p],
        |p, j| ws[j * dout + p],
    );
    assert_close("dx", &flat(grads.get(xt).unwrap()), &dx, dout, &[]);
    let dw = product(
        (din, dout, n),
        |i, p| xs[p * din + i],
        |p, j| gs[p * dout + j],
    );
    assert_close("dW", &flat(grads.get(wt).unwrap()), &dw, n, &[]);
    let db: Vec<(f64, f64)> = (0..dout)
        .map(|j| {
            let col = (0..n).map(|i| gs[i * dout + j] as f64);
            (col.clone().sum(), col.map(f64::abs).sum())
        })
        .collect();
    assert_close("db", &flat(grads.get(bt).unwrap()), &db, n, &[]);
    assert!(packs.bwd.ours.get().is_some(), "the backward packs Wᵀ");
}

#[test]
#[cfg_attr(not(cpu_avx512bf16), ignore = "needs AVX512-BF16")]
fn linear_forward_and_its_backward_gemms_match_the_definition() {
    let (n, din, dout) = (29, 33, 50);
    let dev = Device::Cpu;
    let (xs, ws, gs) = (
        values(n * din, 5),
        values(dout * din, 6),
        values(n * dout, 7),
    );
    let x = Var::from_vec(xs.clone(), (n, din), &dev).unwrap();
    let w = Var::from_vec(ws.clone(), (dout, din), &dev).unwrap();
    let g = Tensor::from_vec(gs.clone(), (n, dout), &dev).unwrap();
    let packs = Arc::new(WeightPacks::default());
    let (xt, wt) = (x.as_tensor(), w.as_tensor());
    let y = linear::linear(KernelPath::FastBf16, xt, wt, &packs).unwrap();
    let y_def = product(
        (n, dout, din),
        |i, p| xs[i * din + p],
        |p, j| ws[j * din + p],
    );
    assert_close("y", &flat(&y), &y_def, din, &[]);
    let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    // dx = g W, dW = gᵀ x.
    let dx = product(
        (n, din, dout),
        |i, p| gs[i * dout + p],
        |p, j| ws[p * din + j],
    );
    assert_close("dx", &flat(grads.get(xt).unwrap()), &dx, dout, &[]);
    let dw = product(
        (dout, din, n),
        |i, p| gs[p * dout + i],
        |p, j| xs[p * din + j],
    );
    assert_close("dW", &flat(grads.get(wt).unwrap()), &dw, n, &[]);
}

/// Mean cross-entropy of `logits` rows (f64) against `targets`, and its
/// gradient with respect to the logits.
fn cross_entropy(logits: &[f64], v: usize, targets: &[u32]) -> (f64, Vec<f64>) {
    let n = targets.len();
    let mut loss = 0.0;
    let mut grad = vec![0.0; n * v];
    for (i, &t) in targets.iter().enumerate() {
        let row = &logits[i * v..(i + 1) * v];
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = row.iter().map(|&x| (x - max).exp()).sum();
        let lse = max + sum.ln();
        loss += lse - row[t as usize];
        for j in 0..v {
            grad[i * v + j] = (row[j] - lse).exp() / n as f64;
        }
        grad[i * v + t as usize] -= 1.0 / n as f64;
    }
    (loss / n as f64, grad)
}

#[test]
#[cfg_attr(not(cpu_avx512bf16), ignore = "needs AVX512-BF16")]
fn output_head_loss_and_its_backward_gemms_match_the_definition() {
    // A vocabulary over two of evaluation's blocks (4096), the last partial.
    let (n, d, v) = (9, 24, 4096 + 45);
    let dev = Device::Cpu;
    let (hs, ws) = (values(n * d, 8), values(v * d, 9));
    let targets: Vec<u32> = (0..n).map(|i| ((i * 2_654_435_761) % v) as u32).collect();
    let logits: Vec<f64> = product((n, v, d), |i, p| hs[i * d + p], |p, j| ws[j * d + p])
        .into_iter()
        .map(|(x, _)| x)
        .collect();
    let (want, glogits) = cross_entropy(&logits, v, &targets);
    let h = Var::from_vec(hs.clone(), (n, d), &dev).unwrap();
    let w = Var::from_vec(ws.clone(), (v, d), &dev).unwrap();
    let (ht, wt) = (h.as_tensor(), w.as_tensor());
    // Evaluation: one row of n + 1 tokens, whose first n hidden states predict the rest.
    let mut row = vec![0u32];
    row.extend(&targets);
    let h_eval = Tensor::cat(
        &[
            ht,
            &Tensor::zeros((1, d), candle_core::DType::F32, &dev).unwrap(),
        ],
        0,
    )
    .unwrap();
    let packs = Arc::new(WeightPacks::default());
    let eval =
        loss::eval_loss_from_hidden(KernelPath::FastBf16, &h_eval, wt, &[row], &packs).unwrap();
    // The last position (the zero row) predicts nothing; n of n + 1 rows count.
    assert!((eval as f64 - want).abs() < 1e-5, "eval {eval} vs {want}");
    let train =
        loss::lm_head_cross_entropy(KernelPath::FastBf16, ht, wt, &targets, None, &packs).unwrap();
    let got = train.to_vec0::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-5, "train {got} vs {want}");
    let grads = train.backward().unwrap();
    // dh = G W and dW = Gᵀ h with G the logits' gradient (f32 in the op:
    // the definition rounds G to bf16 as the GEMM does, so its f32 error
    // is inside the tolerance below).
    let g32: Vec<f32> = glogits.iter().map(|&x| x as f32).collect();
    let dh = product((n, d, v), |i, p| g32[i * v + p], |p, j| ws[p * d + j]);
    let dw = product((v, d, n), |i, p| g32[p * v + i], |p, j| hs[p * d + j]);
    // The op's G (an f32 softmax with a fast exp) differs from this one by
    // ~1e-7 relative, enough to round a few of its values to the
    // neighbouring bf16 (2^-8 relative): a few terms' worth of 2^-8 on top
    // of the accumulation error. A wrong index or transpose is off by O(1).
    let max_term = |rows: usize, a: &dyn Fn(usize) -> f64| (0..rows).map(a).fold(0f64, f64::max);
    let g_max = max_term(n * v, &|i| glogits[i].abs());
    let close = |what: &str, got: Vec<f32>, want: &[(f64, f64)], b_max: f64, k: usize| {
        for (i, (&g, &(w, scale))) in got.iter().zip(want).enumerate() {
            let tol = 4.0 / 256.0 * g_max * b_max
                + (k as f64 + 2.0) * f32::EPSILON as f64 * scale
                + 1e-12;
            assert!((g as f64 - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
        }
    };
    let w_max = max_term(v * d, &|i| ws[i].abs() as f64);
    let h_max = max_term(n * d, &|i| hs[i].abs() as f64);
    close("dh", flat(grads.get(ht).unwrap()), &dh, w_max, v);
    close("dW", flat(grads.get(wt).unwrap()), &dw, h_max, n);
}

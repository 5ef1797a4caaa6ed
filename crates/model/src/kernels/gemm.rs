//! The one call into `gemm` the kernels share, with every invariant the raw
//! pointer call relies on checked first, and the column-block split; and
//! [`gemm_weight`], the same product in f32 or, on the bf16 path, in bf16
//! with the weight packed once ([`WeightPacks`]).

use std::sync::OnceLock;

use super::gemm_bf16::{self, PackedB};
use super::{onednn, KernelPath};

/// A weight's copies for one GEMM that reads it, each made on first use:
/// our bf16 pack ([`PackedB`]) and oneDNN's reordered copies.
#[derive(Debug, Default)]
pub(crate) struct Pack {
    /// The bf16 path's pack.
    pub(crate) ours: OnceLock<PackedB>,
    /// The oneDNN bf16 path's reordered copies.
    pub(crate) onednn: onednn::WeightSlot,
}

/// A weight's bf16 copies packed for the GEMMs that read it: as the forward
/// product's right operand and as the backward's (its transpose), each made
/// on first use. A network is built again after every optimizer step (and a
/// model for evaluation once at load), so each is packed once per set of
/// weights.
#[derive(Debug, Default)]
pub(crate) struct WeightPacks {
    /// The weight as the forward GEMM's right operand.
    pub(crate) fwd: Pack,
    /// The weight as the backward GEMM's right operand (`dx = g · Wᵀ`).
    pub(crate) bwd: Pack,
}

/// `slot`'s packed B, packing `b` (`k x n` with row and column strides
/// `rs`, `cs`) into it first if empty.
pub(crate) fn packed<'a>(
    slot: &'a OnceLock<PackedB>,
    b: &[f32],
    (k, n): (usize, usize),
    (rs, cs): (usize, usize),
) -> candle_core::Result<&'a PackedB> {
    if let Some(p) = slot.get() {
        if (p.k(), p.n()) == (k, n) {
            return Ok(p);
        }
        candle_core::bail!("bf16 pack of [{}, {}] used for [{k}, {n}]", p.k(), p.n());
    }
    let p = PackedB::pack(b, k, n, rs, cs).map_err(candle_core::Error::wrap)?;
    // Two threads may pack at once; either copy is the same.
    let _ = slot.set(p);
    match slot.get() {
        Some(p) => Ok(p),
        None => candle_core::bail!("bf16 pack slot empty after set"),
    }
}

/// `dst[m x n] = (accumulate ? dst : 0) + lhs[m x k] @ rhs[k x n]` as
/// `path` computes it: [`gemm_f32`] (with `beta` 1) on the fast path; in
/// bf16 with f32 accumulation on the bf16 path (`rhs` then packed into
/// `slot` on first use, a weight, or for this call only without one, an
/// activation); on oneDNN in f32 or bf16 ([`onednn::gemm`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_weight(
    path: KernelPath,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    slot: Option<&Pack>,
    threads: usize,
) -> candle_core::Result<()> {
    if path.is_onednn() {
        let dtype = if path.is_bf16() {
            onednn::Dtype::Bf16
        } else {
            onednn::Dtype::F32
        };
        return onednn::gemm(
            dtype,
            (m, n, k),
            dst,
            dst_rs,
            accumulate,
            lhs,
            rhs,
            slot.map(|s| &s.onednn),
            threads,
        )
        .map_err(candle_core::Error::wrap);
    }
    if !path.is_bf16() {
        gemm_f32(m, n, k, dst, dst_rs, accumulate, lhs, rhs, 1.0, threads);
        return Ok(());
    }
    let once;
    let b = match slot {
        Some(slot) => packed(&slot.ours, rhs.0, (k, n), (rhs.1, rhs.2))?,
        None => {
            once = PackedB::pack(rhs.0, k, n, rhs.1, rhs.2).map_err(candle_core::Error::wrap)?;
            &once
        }
    };
    gemm_bf16::gemm(
        m,
        lhs.0,
        lhs.1,
        lhs.2,
        b,
        dst,
        dst_rs,
        accumulate,
        threads > 1,
    )
    .map_err(candle_core::Error::wrap)
}

/// What `--kernels auto` measured once for a dtype: GFLOP/s of our GEMM and
/// oneDNN's on a model-like weight GEMM (`1024 x 768 x 768`, the weight
/// packed or reordered first, best of three), and oneDNN's implementation.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmRace {
    /// Our GEMM's GFLOP/s (`None`: it cannot run this dtype here).
    pub ours: Option<f64>,
    /// oneDNN's GFLOP/s, or why it cannot run here.
    pub onednn: std::result::Result<f64, String>,
    /// oneDNN's implementation name (empty where it cannot run).
    pub onednn_impl: String,
}

impl GemmRace {
    /// Whether oneDNN runs and beats ours (or ours cannot run at all).
    pub fn onednn_wins(&self) -> bool {
        match (&self.onednn, self.ours) {
            (Ok(_), None) => true,
            (Ok(theirs), Some(ours)) => *theirs > ours,
            (Err(_), _) => false,
        }
    }
}

/// The race for `bf16` or f32, run once a process (a few milliseconds)
/// on candle's thread count.
pub fn gemm_race(bf16: bool) -> GemmRace {
    static RACES: [OnceLock<GemmRace>; 2] = [OnceLock::new(), OnceLock::new()];
    RACES[bf16 as usize].get_or_init(|| run_race(bf16)).clone()
}

/// See [`gemm_race`].
fn run_race(bf16: bool) -> GemmRace {
    let (m, k, n) = (1024, 768, 768);
    let threads = candle_core::utils::get_num_threads();
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.01)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01)
        .collect();
    let mut c = vec![0f32; m * n];
    let flops = 2.0 * (m * n * k) as f64;
    let mut time = |path: KernelPath| -> std::result::Result<f64, String> {
        let pack = Pack::default();
        let mut best = f64::INFINITY;
        // The first call packs (or reorders) the weight and creates the primitive.
        for i in 0..4 {
            let t = std::time::Instant::now();
            gemm_weight(
                path,
                (m, n, k),
                &mut c,
                n,
                false,
                (&a, k, 1),
                (&b, n, 1),
                Some(&pack),
                threads,
            )
            .map_err(|e| e.to_string())?;
            if i > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        Ok(flops / best / 1e9)
    };
    let dtype = if bf16 {
        onednn::Dtype::Bf16
    } else {
        onednn::Dtype::F32
    };
    let onednn_impl = onednn::implementation(dtype).map_err(|e| e.to_string());
    let (ours_path, theirs_path) = if bf16 {
        (KernelPath::FastBf16, KernelPath::OnednnBf16)
    } else {
        (KernelPath::Fast, KernelPath::Onednn)
    };
    let ours = if !bf16 || gemm_bf16::support().is_ok() {
        time(ours_path).ok()
    } else {
        None
    };
    match onednn_impl {
        Ok(name) => GemmRace {
            ours,
            onednn: time(theirs_path),
            onednn_impl: name,
        },
        Err(e) => GemmRace {
            ours,
            onednn: Err(e),
            onednn_impl: String::new(),
        },
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

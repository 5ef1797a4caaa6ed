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
    /// Whether the forward copy was made at build and the f32 weight
    /// dropped ([`WeightPacks::sealed`]): the layer then evaluates only.
    sealed: bool,
}

/// The rows a sealed weight's oneDNN copy is laid out for: a GPT-2
/// evaluation batch (a product of other rows whose primitive prefers
/// another layout reorders the copy once more).
const SEALED_ROWS: usize = 1024;

impl WeightPacks {
    /// The forward copy of the weight `w` (`k x n`, strides `(rs, cs)`) made
    /// now for `path`'s bf16 GEMM, so the caller can drop `w` itself: every
    /// later forward GEMM of the layer passes an empty weight slice.
    /// `bias`: that GEMM adds a bias row (oneDNN's layout may depend on it).
    /// `None` where `path` keeps no copy of its weights (f32 reads them in
    /// place).
    pub(crate) fn sealed(
        path: KernelPath,
        w: &[f32],
        (k, n): (usize, usize),
        (rs, cs): (usize, usize),
        bias: bool,
    ) -> candle_core::Result<Option<Self>> {
        if !path.is_bf16() {
            return Ok(None);
        }
        let packs = Self {
            sealed: true,
            ..Self::default()
        };
        if path.is_onednn() {
            let threads = candle_core::utils::get_num_threads();
            onednn::prepack(
                SEALED_ROWS,
                (k, n),
                (w, rs, cs),
                bias,
                &packs.fwd.onednn,
                threads,
            )
            .map_err(candle_core::Error::wrap)?;
        } else {
            packed(&packs.fwd.ours, w, (k, n), (rs, cs))?;
        }
        Ok(Some(packs))
    }

    /// Whether the f32 weight is gone ([`WeightPacks::sealed`]).
    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed
    }
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

/// The environment variable that pins `--kernels auto`'s GEMM engine
/// (`ours` or `onednn`) instead of racing, for a run that must not depend
/// on a race (a validator pins its workers with [`pin_gemm_engine`]).
pub const ENGINE_ENV: &str = "PRETRAIN_GEMM_ENGINE";

/// How much faster (ratio) oneDNN must be for `auto` to take it: a tie
/// within a loaded machine's noise keeps our kernels, so two processes of
/// one run do not take different paths on a coin flip.
pub const ONEDNN_MARGIN: f64 = 1.05;

/// The GEMMs the race times, `(m, n, k, what)` with `m` rows of tokens:
/// GPT-2's QKV projection forward, the backward's `dx = g · Wᵀ` (weight
/// read transposed) and `dW = xᵀ · g` (activation read transposed), so
/// training's shapes count as well as evaluation's.
pub const RACE_SHAPES: [(usize, usize, usize, RaceOperand); 3] = [
    (512, 2304, 768, RaceOperand::Weight),
    (512, 768, 2304, RaceOperand::WeightTransposed),
    (768, 2304, 512, RaceOperand::ActivationTransposed),
];

/// Which operand layout a race GEMM has (see [`RACE_SHAPES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaceOperand {
    /// `x · W`: the weight as the right operand, packed or reordered once.
    Weight,
    /// `g · Wᵀ`: the weight read transposed, packed or reordered once.
    WeightTransposed,
    /// `xᵀ · g`: both operands activations, the left one read transposed.
    ActivationTransposed,
}

/// Which engine runs `--kernels auto`'s weight GEMMs on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmEngine {
    /// Our GEMMs (`gemm` in f32, our AVX512-BF16 kernel in bf16).
    Ours,
    /// oneDNN's (`libdnnl.so.2`).
    Onednn,
}

impl GemmEngine {
    /// The name [`ENGINE_ENV`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Onednn => "onednn",
        }
    }

    /// Parses [`ENGINE_ENV`]'s value.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "ours" => Some(Self::Ours),
            "onednn" => Some(Self::Onednn),
            _ => None,
        }
    }
}

/// What `--kernels auto` found once for a dtype: the GFLOP/s of our GEMMs
/// and oneDNN's over [`RACE_SHAPES`] (the weight packed or reordered first,
/// best of two after a first call), and oneDNN's implementation; or the
/// engine [`ENGINE_ENV`] pinned, with nothing timed.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmRace {
    /// Our GEMMs' GFLOP/s (`None`: not timed, or they cannot run this dtype here).
    pub ours: Option<f64>,
    /// Whether our GEMMs run this dtype on this CPU.
    pub ours_runs: bool,
    /// oneDNN's GFLOP/s (`Ok(None)`: it loads, not timed), or why it cannot run here.
    pub onednn: std::result::Result<Option<f64>, String>,
    /// oneDNN's implementation name (empty where it cannot run).
    pub onednn_impl: String,
    /// The engine pinned, when one was: it decides, nothing was timed.
    pub pinned: Option<GemmEngine>,
    /// What pinned it: [`ENGINE_ENV`], or `--gemm_engine` (a validator's
    /// worker, through [`pin_gemm_engine`]); empty when nothing did.
    pub pinned_by: &'static str,
}

impl GemmRace {
    /// The engine `auto` takes: the pinned one where it can run; else
    /// oneDNN where it runs and beats ours by [`ONEDNN_MARGIN`], or ours
    /// cannot run at all.
    pub fn winner(&self) -> GemmEngine {
        let onednn_runs = self.onednn.is_ok();
        let won = match (self.pinned, &self.onednn, self.ours) {
            (Some(GemmEngine::Onednn), _, _) => onednn_runs,
            (Some(GemmEngine::Ours), _, _) => !self.ours_runs && onednn_runs,
            (None, Err(_), _) => false,
            (None, Ok(_), _) if !self.ours_runs => true,
            (None, Ok(Some(theirs)), Some(ours)) => *theirs > ours * ONEDNN_MARGIN,
            (None, Ok(_), _) => false,
        };
        if won {
            GemmEngine::Onednn
        } else {
            GemmEngine::Ours
        }
    }

    /// Whether `auto` takes oneDNN ([`GemmRace::winner`]).
    pub fn onednn_wins(&self) -> bool {
        self.winner() == GemmEngine::Onednn
    }

    /// "ours 213 GFLOP/s, oneDNN 2.6.3 brg:avx512_core 218 GFLOP/s" and the
    /// like, for the start-up log line.
    pub fn describe(&self) -> String {
        let version = onednn::available().unwrap_or_default();
        let engine = match &self.onednn {
            Err(e) => format!("oneDNN not used: {e}"),
            Ok(Some(g)) => format!("oneDNN {version} {} {g:.0} GFLOP/s", self.onednn_impl),
            Ok(None) => format!("oneDNN {version} {}", self.onednn_impl),
        };
        if let Some(p) = self.pinned {
            return format!("engine pinned by {}={}; {engine}", self.pinned_by, p.name());
        }
        let ours = match (self.ours, self.ours_runs) {
            (Some(g), _) => format!("ours {g:.0} GFLOP/s"),
            (None, false) => "ours cannot run this dtype here".into(),
            (None, true) => "ours not timed".into(),
        };
        let shapes: Vec<String> = RACE_SHAPES
            .iter()
            .map(|(m, n, k, _)| format!("{m}x{k}x{n}"))
            .collect();
        let (t, h, hd) = super::attention::RACE_SHAPE;
        format!(
            "weight GEMM race over {} and attention {h}x{t}x{hd} (fwd, bwd dx, bwd dW, eval \
             attention; oneDNN needs {:.0}% more): {ours}, {engine}",
            shapes.join(", "),
            (ONEDNN_MARGIN - 1.0) * 100.0
        )
    }
}

/// The engine [`pin_gemm_engine`] set for this process.
static PINNED: OnceLock<GemmEngine> = OnceLock::new();

/// Pins `--kernels auto`'s GEMM engine for this process (a validator's
/// worker takes its validator's race result this way). Call it before the
/// first model is built: a race already run stays, as does an earlier pin.
pub fn pin_gemm_engine(engine: GemmEngine) {
    let _ = PINNED.set(engine);
}

/// The race for `bf16` or f32, run once a process (a few hundred
/// milliseconds on 2 cores) on candle's thread count, unless
/// [`pin_gemm_engine`] or [`ENGINE_ENV`] pinned the engine.
pub fn gemm_race(bf16: bool) -> GemmRace {
    static RACES: [OnceLock<GemmRace>; 2] = [OnceLock::new(), OnceLock::new()];
    RACES[bf16 as usize]
        .get_or_init(|| {
            if let Some(&engine) = PINNED.get() {
                return run_race(bf16, Some((engine, "--gemm_engine")));
            }
            let pinned = std::env::var(ENGINE_ENV).ok().and_then(|v| {
                let e = GemmEngine::parse(&v);
                if e.is_none() {
                    tracing::warn!(
                        "{ENGINE_ENV}={v:?} is neither \"ours\" nor \"onednn\": racing instead"
                    );
                }
                e
            });
            run_race(bf16, pinned.map(|e| (e, ENGINE_ENV)))
        })
        .clone()
}

/// Deterministic operands for the race (values of weights' size).
fn race_operand(len: usize, mul: usize, modulus: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * mul % modulus) as f32 - (modulus / 2) as f32) * 0.01)
        .collect()
}

/// One engine's GFLOP/s over [`RACE_SHAPES`] and evaluation attention of
/// [`super::attention::RACE_SHAPE`] (which runs on oneDNN with its GEMMs,
/// so one decision covers both): each product's best of two timed calls
/// after a first (which packs or reorders the weight and creates the
/// primitive), flops and seconds summed, so the faster total time wins.
fn time_path(path: KernelPath, threads: usize) -> std::result::Result<f64, String> {
    let (mut flops, mut seconds) = (0.0, 0.0);
    for &(m, n, k, operand) in &RACE_SHAPES {
        let a = race_operand(m * k, 31, 17);
        let b = race_operand(k * n, 7, 13);
        let mut c = vec![0f32; m * n];
        // (slice, row stride, column stride) of `m x k` and `k x n`.
        let (lhs, rhs) = match operand {
            RaceOperand::Weight => ((&a[..], k, 1), (&b[..], n, 1)),
            RaceOperand::WeightTransposed => ((&a[..], k, 1), (&b[..], 1, k)),
            RaceOperand::ActivationTransposed => ((&a[..], 1, m), (&b[..], n, 1)),
        };
        let pack = Pack::default();
        let slot = (operand != RaceOperand::ActivationTransposed).then_some(&pack);
        let mut best = f64::INFINITY;
        for i in 0..3 {
            let t = std::time::Instant::now();
            gemm_weight(path, (m, n, k), &mut c, n, false, lhs, rhs, slot, threads)
                .map_err(|e| e.to_string())?;
            if i > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        flops += 2.0 * (m * n * k) as f64;
        seconds += best;
    }
    let (f, s) = super::attention::race(path)?;
    Ok((flops + f) / (seconds + s) / 1e9)
}

/// See [`gemm_race`].
fn run_race(bf16: bool, pinned: Option<(GemmEngine, &'static str)>) -> GemmRace {
    let threads = candle_core::utils::get_num_threads();
    let dtype = if bf16 {
        onednn::Dtype::Bf16
    } else {
        onednn::Dtype::F32
    };
    let (ours_path, theirs_path) = if bf16 {
        (KernelPath::FastBf16, KernelPath::OnednnBf16)
    } else {
        (KernelPath::Fast, KernelPath::Onednn)
    };
    let ours_runs = !bf16 || gemm_bf16::support().is_ok();
    let onednn_impl = onednn::implementation(dtype).map_err(|e| e.to_string());
    if let Some((engine, by)) = pinned {
        let (onednn, onednn_impl) = match onednn_impl {
            Ok(name) => (Ok(None), name),
            Err(e) => (Err(e), String::new()),
        };
        return GemmRace {
            ours: None,
            ours_runs,
            onednn,
            onednn_impl,
            pinned: Some(engine),
            pinned_by: by,
        };
    }
    let ours = if ours_runs {
        time_path(ours_path, threads).ok()
    } else {
        None
    };
    let (onednn, onednn_impl) = match onednn_impl {
        Ok(name) => (time_path(theirs_path, threads).map(Some), name),
        Err(e) => (Err(e), String::new()),
    };
    GemmRace {
        ours,
        ours_runs: ours_runs && ours.is_some(),
        onednn,
        onednn_impl,
        pinned: None,
        pinned_by: "",
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

    fn race(ours: Option<f64>, onednn: std::result::Result<Option<f64>, String>) -> GemmRace {
        GemmRace {
            ours,
            ours_runs: ours.is_some(),
            onednn,
            onednn_impl: "brg:avx512_core".into(),
            pinned: None,
            pinned_by: "",
        }
    }

    #[test]
    fn auto_takes_onednn_only_past_the_margin_or_where_ours_cannot_run() {
        // A tie within the noise keeps ours; 10% faster wins.
        assert_eq!(
            race(Some(213.0), Ok(Some(218.0))).winner(),
            GemmEngine::Ours
        );
        assert_eq!(
            race(Some(200.0), Ok(Some(220.0))).winner(),
            GemmEngine::Onednn
        );
        assert_eq!(
            race(Some(200.0), Ok(Some(150.0))).winner(),
            GemmEngine::Ours
        );
        // oneDNN cannot run: ours whatever the numbers.
        assert_eq!(
            race(Some(1.0), Err("no libdnnl.so.2".into())).winner(),
            GemmEngine::Ours
        );
        // Ours cannot run this dtype (bf16 without AVX512-BF16): oneDNN.
        assert_eq!(race(None, Ok(Some(1.0))).winner(), GemmEngine::Onednn);
    }

    #[test]
    fn a_pinned_engine_decides_where_it_can_run_and_nothing_is_timed() {
        let pinned =
            |engine, ours_runs, onednn: std::result::Result<Option<f64>, String>| GemmRace {
                ours: None,
                ours_runs,
                onednn,
                onednn_impl: String::new(),
                pinned: Some(engine),
                pinned_by: ENGINE_ENV,
            };
        assert_eq!(
            pinned(GemmEngine::Onednn, true, Ok(None)).winner(),
            GemmEngine::Onednn
        );
        assert_eq!(
            pinned(GemmEngine::Ours, true, Ok(None)).winner(),
            GemmEngine::Ours
        );
        // Pinned to what cannot run here: the other engine.
        assert_eq!(
            pinned(GemmEngine::Onednn, true, Err("no libdnnl.so.2".into())).winner(),
            GemmEngine::Ours
        );
        assert_eq!(
            pinned(GemmEngine::Ours, false, Ok(None)).winner(),
            GemmEngine::Onednn
        );
        let d = pinned(GemmEngine::Ours, true, Ok(None)).describe();
        assert!(d.contains("pinned by PRETRAIN_GEMM_ENGINE=ours"), "{d}");
        // run_race with a pin times nothing.
        let r = run_race(false, Some((GemmEngine::Ours, "--gemm_engine")));
        assert_eq!(
            (r.ours, r.pinned, r.winner()),
            (None, Some(GemmEngine::Ours), GemmEngine::Ours)
        );
        assert!(matches!(r.onednn, Ok(None) | Err(_)), "{r:?}");
        assert!(
            r.describe().contains("pinned by --gemm_engine=ours"),
            "{r:?}"
        );
        assert_eq!(GemmEngine::parse(" onednn\n"), Some(GemmEngine::Onednn));
        assert_eq!(GemmEngine::parse("fast"), None);
    }

    #[test]
    fn the_race_times_every_shape_on_both_engines() {
        let r = run_race(false, None);
        let ours = r.ours.expect("our f32 GEMM runs everywhere");
        assert!(ours.is_finite() && ours > 0.0, "{r:?}");
        match (&r.onednn, onednn::available()) {
            (Ok(Some(g)), Ok(_)) => assert!(g.is_finite() && *g > 0.0, "{r:?}"),
            (Err(_), Err(_)) => {}
            other => panic!("oneDNN loads iff it was timed: {other:?}"),
        }
        let d = r.describe();
        assert!(
            d.contains("512x768x2304") && d.contains("768x512x2304"),
            "{d}"
        );
    }

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

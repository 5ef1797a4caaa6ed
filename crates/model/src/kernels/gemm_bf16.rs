//! A bf16 matrix multiply for CPUs with AVX512-BF16: `C (+)= A · B` with f32
//! in and out, both operands rounded to bf16 (round to nearest even) and
//! products summed in f32 by `vdpbf16ps`. B (the weight) is packed once into
//! bf16 pairs in the instruction's layout ([`PackedB`]); A is converted per
//! call. On this kind of CPU it runs about twice the f32 GEMM's speed
//! (`examples/gemm_peak.rs --bf16`); elsewhere [`support`] says why not.
//!
//! Layout: B is split into panels of 32 columns; within a panel, for each
//! pair of rows `(2p, 2p+1)`, 64 bf16 values: columns 0..16 as
//! `(b[2p][j], b[2p+1][j])` pairs, then columns 16..32. The microkernel
//! holds a 12 x 32 block of C in 24 registers and, per row pair, broadcasts
//! one `(a[i][2p], a[i][2p+1])` pair per row against the two B vectors.

use thiserror::Error;

/// Rows of C a microkernel call computes.
const MR: usize = 12;
/// Columns of a B panel (two 16-lane vectors).
const NR: usize = 32;
/// Columns of C one task computes (B's 8 panels stay in L2 meanwhile).
const NC: usize = 256;

/// Why the bf16 GEMM cannot run or was called wrongly.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Bf16Error {
    /// The CPU lacks the instructions.
    #[error(
        "bf16 compute needs AVX512-BF16 (or AMX), which this CPU does not have; use --dtype f32"
    )]
    Unsupported,
    /// A slice is too short for the shape and strides given.
    #[error("bf16 gemm: {0} is too short for the shape and strides given")]
    Shape(&'static str),
}

/// Whether this CPU runs the bf16 GEMM.
pub fn support() -> Result<(), Bf16Error> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16") {
        return Ok(());
    }
    Err(Bf16Error::Unsupported)
}

/// f32 to bf16, rounding to nearest even (as `vcvtne2ps2bf16`); NaN stays NaN.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// bf16 to f32 (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// The last index a `rows x cols` matrix with these strides touches, plus 1.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// B (`k x n`) packed into bf16 pairs for the kernel.
#[derive(Debug, Clone)]
pub struct PackedB {
    k: usize,
    n: usize,
    pairs: usize,
    data: Vec<u16>,
}

impl PackedB {
    /// Packs `b`, whose element `(i, j)` is `b[i * rs + j * cs]` (so a
    /// row-major `k x n` is `rs = n, cs = 1`; its transpose `rs = 1, cs = k`).
    pub fn pack(b: &[f32], k: usize, n: usize, rs: usize, cs: usize) -> Result<Self, Bf16Error> {
        if b.len() < extent(k, n, rs, cs) {
            return Err(Bf16Error::Shape("b"));
        }
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u16; panels * pairs * NR * 2];
        let fill = |(panel, out): (usize, &mut [u16])| {
            for j in 0..NR.min(n - panel * NR) {
                let col = panel * NR + j;
                let lane = (j / 16) * 32 + (j % 16) * 2;
                for p in 0..pairs {
                    let at = p * NR * 2 + lane;
                    out[at] = to_bf16(b[2 * p * rs + col * cs]);
                    if 2 * p + 1 < k {
                        out[at + 1] = to_bf16(b[(2 * p + 1) * rs + col * cs]);
                    }
                }
            }
        };
        if pairs > 0 {
            // Training packs activations (and each weight once a step): in parallel.
            use rayon::prelude::*;
            data.par_chunks_exact_mut(pairs * NR * 2)
                .enumerate()
                .for_each(fill);
        }
        Ok(PackedB { k, n, pairs, data })
    }

    /// Rows of B (the inner dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of B.
    pub fn n(&self) -> usize {
        self.n
    }
}

/// A (`m x k`) as bf16 pairs in blocks of [`MR`] rows: `[block][pair][row]`.
fn pack_a(a: &[f32], m: usize, k: usize, rs: usize, cs: usize) -> Vec<u32> {
    use rayon::prelude::*;
    let pairs = k.div_ceil(2);
    let mut out = vec![0u32; m.div_ceil(MR) * pairs * MR];
    if pairs == 0 {
        return out;
    }
    out.par_chunks_exact_mut(pairs * MR)
        .enumerate()
        .for_each(|(block, out)| {
            for r in 0..MR.min(m - block * MR) {
                let row = (block * MR + r) * rs;
                for p in 0..pairs {
                    let lo = to_bf16(a[row + 2 * p * cs]) as u32;
                    let hi = if 2 * p + 1 < k {
                        to_bf16(a[row + (2 * p + 1) * cs]) as u32
                    } else {
                        0
                    };
                    out[p * MR + r] = lo | (hi << 16);
                }
            }
        });
    out
}

/// `C (+)= A · B`: A's element `(i, p)` is `a[i * a_rs + p * a_cs]`, C is
/// row-major with row stride `c_rs`; `accumulate` adds to C instead of
/// overwriting it. Blocks of C run on rayon's threads when `parallel`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &PackedB,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    parallel: bool,
) -> Result<(), Bf16Error> {
    gemm_cols(m, a, a_rs, a_cs, b, 0..b.n, c, c_rs, accumulate, parallel)
}

/// [`gemm`] with columns `cols` of B only (`cols.start` a multiple of 32,
/// so a range of whole panels): C's column `j` is B's column `cols.start + j`.
/// The evaluation loss walks the vocabulary this way through one packed head.
#[allow(clippy::too_many_arguments)]
pub fn gemm_cols(
    m: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &PackedB,
    cols: std::ops::Range<usize>,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    parallel: bool,
) -> Result<(), Bf16Error> {
    support()?;
    if !cols.start.is_multiple_of(NR) || cols.end > b.n || cols.start > cols.end {
        return Err(Bf16Error::Shape("cols"));
    }
    let n = cols.len();
    if a.len() < extent(m, b.k, a_rs, a_cs) {
        return Err(Bf16Error::Shape("a"));
    }
    if c.len() < extent(m, n, c_rs, 1) || (m > 1 && c_rs < n) {
        return Err(Bf16Error::Shape("c"));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if b.k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * c_rs..i * c_rs + n].fill(0.0);
            }
        }
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    {
        let packed_a = pack_a(a, m, b.k, a_rs, a_cs);
        let c_ptr = SendPtr(c.as_mut_ptr());
        let first = cols.start / NR;
        let panels = cols.end.div_ceil(NR) - first;
        let col_tasks = panels.div_ceil(NC / NR);
        let blocks = m.div_ceil(MR);
        // Row chunks too when there are few column blocks (a 760-wide
        // output is 3 column tasks: 2 threads would idle a third of the time).
        let threads = if parallel {
            rayon::current_num_threads()
        } else {
            1
        };
        let row_tasks = (4 * threads).div_ceil(col_tasks).clamp(1, blocks);
        let per_row_task = blocks.div_ceil(row_tasks);
        let row_tasks = blocks.div_ceil(per_row_task);
        let task = |t: usize| {
            let c_ptr = &c_ptr;
            let (ct, rt) = (t % col_tasks, t / col_tasks);
            let panel_range =
                (first + ct * (NC / NR))..(first + ((ct + 1) * (NC / NR)).min(panels));
            let block_range = (rt * per_row_task)..((rt + 1) * per_row_task).min(blocks);
            for block in block_range {
                let rows = (m - block * MR).min(MR);
                for panel in panel_range.clone() {
                    let col = panel * NR - cols.start;
                    // SAFETY: support() checked the CPU; the packed operands
                    // hold `pairs` row pairs for this block and panel; C's
                    // rows block*MR..+rows and columns col..col+width are
                    // inside `c` (checked above: c_rs >= n, len >= extent),
                    // and each task writes only its own rows and columns.
                    unsafe {
                        microkernel(
                            rows,
                            b.pairs,
                            packed_a.as_ptr().add(block * b.pairs * MR),
                            b.data.as_ptr().add(panel * b.pairs * NR * 2),
                            c_ptr.0.add(block * MR * c_rs + col),
                            c_rs,
                            (n - col).min(NR),
                            accumulate,
                        );
                    }
                }
            }
        };
        let tasks = col_tasks * row_tasks;
        if parallel && tasks > 1 {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    }
    Ok(())
}

/// C's pointer, shared by tasks that write disjoint columns.
struct SendPtr(*mut f32);
// SAFETY: the tasks write disjoint blocks of C (see gemm_cols).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn microkernel(
    rows: usize,
    pairs: usize,
    a: *const u32,
    b: *const u16,
    c: *mut f32,
    c_rs: usize,
    cols: usize,
    accumulate: bool,
) {
    // One monomorphised body per row count keeps the accumulators in registers.
    macro_rules! rows {
        ($($r:literal)*) => {
            match rows {
                $($r => block::<$r>(pairs, a, b, c, c_rs, cols, accumulate),)*
                _ => {}
            }
        };
    }
    rows!(12 11 10 9 8 7 6 5 4 3 2 1);
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block<const R: usize>(
    pairs: usize,
    a: *const u32,
    b: *const u16,
    c: *mut f32,
    c_rs: usize,
    cols: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    for p in 0..pairs {
        let b_lo: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * 64).cast()));
        let b_hi: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * 64 + 32).cast()));
        let ap = a.add(p * MR);
        for r in 0..R {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r) as i32));
            lo[r] = _mm512_dpbf16_ps(lo[r], av, b_lo);
            hi[r] = _mm512_dpbf16_ps(hi[r], av, b_hi);
        }
    }
    let mask = |n: usize| -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as u16
        }
    };
    let (m_lo, m_hi) = (mask(cols), mask(cols.saturating_sub(16)));
    for r in 0..R {
        let row = c.add(r * c_rs);
        let (mut v_lo, mut v_hi) = (lo[r], hi[r]);
        if accumulate {
            v_lo = _mm512_add_ps(v_lo, _mm512_maskz_loadu_ps(m_lo, row));
            v_hi = _mm512_add_ps(v_hi, _mm512_maskz_loadu_ps(m_hi, row.add(16)));
        }
        _mm512_mask_storeu_ps(row, m_lo, v_lo);
        _mm512_mask_storeu_ps(row.add(16), m_hi, v_hi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        // 1 + 2^-8 is halfway between 1 and the next bf16: ties go to even (1).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3F80);
        // 1 + 3 * 2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6: up to even.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    #[cfg_attr(cpu_avx512bf16, ignore = "needs a CPU without AVX512-BF16")]
    fn refused_with_the_reason_without_avx512_bf16() {
        let b = PackedB::pack(&[1.0], 1, 1, 1, 1).unwrap();
        let mut c = [0.0];
        assert_eq!(
            gemm(1, &[1.0], 1, 1, &b, &mut c, 1, false, false),
            Err(Bf16Error::Unsupported)
        );
    }

    /// A deterministic value in [-1, 1).
    fn value(i: usize, salt: usize) -> f32 {
        let x = (i as u64 + 1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(salt as u64 * 0xBF58_476D_1CE4_E5B9);
        ((x >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    /// The definition, in f64 over the bf16-rounded operands.
    fn reference(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        c0: f32,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut c = vec![0f64; m * n];
        let mut scale = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = c0 as f64;
                let mut abs = c0.abs() as f64;
                for p in 0..k {
                    let t = from_bf16(to_bf16(a[i * k + p])) as f64
                        * from_bf16(to_bf16(b[p * n + j])) as f64;
                    s += t;
                    abs += t.abs();
                }
                c[i * n + j] = s;
                scale[i * n + j] = abs;
            }
        }
        (c, scale)
    }

    #[test]
    #[cfg_attr(not(cpu_avx512bf16), ignore = "needs AVX512-BF16")]
    fn matches_the_definition_on_edges_odd_sizes_and_every_transpose() {
        // Sizes that leave partial row blocks (MR = 12), partial panels
        // (NR = 32), several column tasks (NC = 256), an odd inner dimension
        // (a zero-padded last pair), and the model's k = 768.
        for &(m, k, n) in &[
            (1, 1, 1),
            (13, 7, 33),
            (12, 768, 32),
            (25, 64, 300),
            (37, 301, 257),
            (3, 2, 520),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| value(i, 1)).collect();
            let b: Vec<f32> = (0..k * n).map(|i| value(i, 2)).collect();
            let a_t: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let b_t: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            for accumulate in [false, true] {
                let c0 = if accumulate { 0.25 } else { 0.0 };
                let (want, scale) = reference(m, k, n, &a, &b, c0);
                // A as given or transposed (the backward's Xᵀ·dY), B as given
                // or transposed (dY·Wᵀ), threads or not.
                for (a_op, a_rs, a_cs) in [(&a, k, 1), (&a_t, 1, m)] {
                    for (b_op, b_rs, b_cs) in [(&b, n, 1), (&b_t, 1, k)] {
                        for parallel in [false, true] {
                            let packed = PackedB::pack(b_op, k, n, b_rs, b_cs).unwrap();
                            // C wider than n: its row stride is respected.
                            let c_rs = n + 3;
                            let mut c = vec![0.25f32; m * c_rs];
                            gemm(
                                m, a_op, a_rs, a_cs, &packed, &mut c, c_rs, accumulate, parallel,
                            )
                            .unwrap();
                            for i in 0..m {
                                for j in 0..n {
                                    let got = c[i * c_rs + j] as f64;
                                    let tol =
                                        (k as f64 + 1.0) * f32::EPSILON as f64 * scale[i * n + j]
                                            + 1e-30;
                                    assert!(
                                        (got - want[i * n + j]).abs() <= tol,
                                        "m{m} k{k} n{n} acc{accumulate} ({i},{j}): {got} vs {}",
                                        want[i * n + j]
                                    );
                                }
                                // Padding columns of C are untouched.
                                assert!(c[i * c_rs + n..(i + 1) * c_rs].iter().all(|&x| x == 0.25));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[cfg_attr(not(cpu_avx512bf16), ignore = "needs AVX512-BF16")]
    fn column_ranges_match_the_definition() {
        // The evaluation loss's vocabulary blocks: whole-panel starts, a
        // ragged end inside a panel, and the last partial panel of B.
        let (m, k, n) = (29, 40, 201);
        let a: Vec<f32> = (0..m * k).map(|i| value(i, 3)).collect();
        let b: Vec<f32> = (0..k * n).map(|i| value(i, 4)).collect();
        let (want, scale) = reference(m, k, n, &a, &b, 0.0);
        let packed = PackedB::pack(&b, k, n, n, 1).unwrap();
        for cols in [0..33, 64..170, 32..201, 192..201, 96..96] {
            for parallel in [false, true] {
                let w = cols.len();
                let mut c = vec![7.0f32; m * (w + 1)];
                gemm_cols(
                    m,
                    &a,
                    k,
                    1,
                    &packed,
                    cols.clone(),
                    &mut c,
                    w + 1,
                    false,
                    parallel,
                )
                .unwrap();
                for i in 0..m {
                    for j in 0..w {
                        let (got, at) = (c[i * (w + 1) + j] as f64, i * n + cols.start + j);
                        let tol = (k as f64 + 1.0) * f32::EPSILON as f64 * scale[at] + 1e-30;
                        assert!((got - want[at]).abs() <= tol, "{cols:?} ({i},{j})");
                    }
                    assert_eq!(c[i * (w + 1) + w], 7.0, "{cols:?}: column past the range");
                }
            }
        }
        let mut c = vec![0.0; m * 8];
        assert_eq!(
            gemm_cols(m, &a, k, 1, &packed, 8..16, &mut c, 8, false, false),
            Err(Bf16Error::Shape("cols"))
        );
    }

    #[test]
    fn short_operands_are_errors_not_overreads() {
        let b = PackedB::pack(&[0.0; 6], 2, 3, 3, 1).unwrap();
        assert_eq!(
            PackedB::pack(&[0.0; 5], 2, 3, 3, 1).unwrap_err(),
            Bf16Error::Shape("b")
        );
        if support().is_ok() {
            let mut c = [0.0; 6];
            assert_eq!(
                gemm(2, &[0.0; 3], 2, 1, &b, &mut c, 3, false, false),
                Err(Bf16Error::Shape("a"))
            );
            assert_eq!(
                gemm(2, &[0.0; 4], 2, 1, &b, &mut c[..5], 3, false, false),
                Err(Bf16Error::Shape("c"))
            );
        }
    }
}

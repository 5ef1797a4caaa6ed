//! Vectorisable element-wise helpers the kernels share: an exp that LLVM can
//! vectorise, tanh and row maxima from it, and [`avx2_dispatch`], which
//! compiles a loop for AVX2 where the CPU has it.

/// Defines `pub(crate) fn $name` running `$body` compiled for AVX2 (+FMA)
/// where the CPU has it, else for the build's baseline. Release builds target
/// plain x86-64 (SSE2), so without this the element-wise loops (exp, tanh)
/// run 4 lanes wide. The body uses no `mul_add`, so both versions round
/// alike: same results on every machine.
macro_rules! avx2_dispatch {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use avx2_dispatch;

/// The largest value of a row, NaN skipped (a NaN still reaches the sums
/// that follow and propagates); eight lanes, so it vectorises.
#[inline(always)]
pub(crate) fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] = acc[k].max(c[k]);
        }
    }
    let tail = chunks.remainder().iter().copied();
    acc.into_iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, f32::max)
}

/// [`fast_exp`] of eight values, written lane by lane so that it compiles
/// to whole-register vector code (the scalar form inlined into a reduction
/// did not).
#[inline(always)]
fn fast_exp8(x: [f32; 8]) -> [f32; 8] {
    let mut out = [0f32; 8];
    for k in 0..8 {
        out[k] = fast_exp(x[k]);
    }
    out
}

/// `exp(c[k] - shift)` of eight values, as whole-register vector code.
#[inline(always)]
pub(crate) fn exp8_shifted(c: &[f32], shift: f32) -> [f32; 8] {
    let mut x = [0f32; 8];
    for k in 0..8 {
        x[k] = c[k] - shift;
    }
    fast_exp8(x)
}

/// `x = exp(x - shift)` over a row in place, returning the sum: eight
/// partial sums, so that it vectorises (one running sum cannot be reordered).
#[inline(always)]
pub(crate) fn exp_shifted_in_place(row: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        let e = exp8_shifted(c, shift);
        c.copy_from_slice(&e);
        for k in 0..8 {
            acc[k] += e[k];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        *x = fast_exp(*x - shift);
        sum += *x;
    }
    sum
}

/// `exp(x)` for `|x| <= 87` (larger arguments are clamped), written so LLVM can
/// vectorise it: range reduction by powers of two and a degree-6 polynomial
/// (relative error ~2e-7, like libm's expf).
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 87.0);
    // Round to nearest with the 1.5 * 2^23 trick: no libm call, so it vectorises.
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let k = t - MAGIC;
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_452 + r * 0.001_388_896)))));
    // k sits in the low mantissa bits of t: integer ops only, no float->int cast.
    let ki = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let bits = (ki.wrapping_add(127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// `tanh` from [`fast_exp`]: `(1 - e) / (1 + e)` with `e = exp(-2|u|)`
/// (absolute error ~1e-7), vectorisable unlike libm's `tanhf`.
#[inline(always)]
pub(crate) fn fast_tanh(u: f32) -> f32 {
    let e = fast_exp(-2.0 * u.abs());
    let t = (1.0 - e) / (1.0 + e);
    if u.is_nan() {
        u
    } else {
        t.copysign(u)
    }
}

//! The one seed mixer (splitmix64's finaliser) behind every derived seed
//! and dropout's keep-decision.

/// 2^64 / golden ratio: the splitmix64 increment.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finaliser: a bijection under which nearby inputs give
/// unrelated outputs.
#[inline(always)]
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A well-spread seed from `(a, b)`: nearby inputs give unrelated outputs.
pub fn mix_seed(a: u64, b: u64) -> u64 {
    splitmix64((a ^ b.wrapping_mul(GOLDEN)).wrapping_add(GOLDEN))
}

/// Keep-decision of element `i` for dropout `p` under `seed`: a counter-based
/// hash, so backward regenerates the forward mask instead of storing it.
#[inline(always)]
pub(crate) fn keep(seed: u64, i: u64, p: f32) -> bool {
    let z = splitmix64(seed.wrapping_add(i.wrapping_mul(GOLDEN)));
    ((z >> 40) as f32) * (1.0 / (1u64 << 24) as f32) >= p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64's published first outputs for seed 0 (state advanced by
    /// GOLDEN before each finalisation).
    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        let mut state = 0u64;
        let mut next = || {
            state = state.wrapping_add(GOLDEN);
            splitmix64(state)
        };
        assert_eq!(next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(next(), 0x6E78_9E6A_A1B9_65F4);
    }
}

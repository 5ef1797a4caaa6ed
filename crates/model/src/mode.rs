//! Whether a pass trains or evaluates, and the dropout seeds of one pass.

pub use crate::kernels::rng::mix_seed;

/// Whether the pass trains (dropout on, differentiable ops) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Evaluation: no dropout, fused kernels.
    Eval,
    /// Training: dropout active, ops with backward.
    Train,
}

impl Mode {
    /// Whether this is a training pass.
    pub fn is_train(self) -> bool {
        self == Self::Train
    }
}

/// The dropout seeds of one forward pass: every dropout site draws its own
/// from the pass's seed, in the order the sites run, so one seed fixes every
/// mask of the pass (and backward regenerates them).
pub(crate) struct DropSeeds {
    base: u64,
    site: u64,
}

impl DropSeeds {
    /// The seeds of the pass with seed `base`.
    pub(crate) fn new(base: u64) -> Self {
        Self { base, site: 0 }
    }

    /// The next site's seed.
    pub(crate) fn next(&mut self) -> u64 {
        self.site += 1;
        mix_seed(self.base, self.site)
    }
}

//! The loss advantage of the earlier model (taoverse `competition/epsilon.py`).

use serde::{Deserialize, Serialize};

use super::RulesError;

/// How a competition's epsilon depends on a model's age. Serialised with a
/// `kind` tag, as in the reference vectors and schedule files:
/// `{ kind = "LinearDecay", start_epsilon = 0.005, end_epsilon = 0.0005, decay_blocks = 50400 }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum EpsilonFunc {
    /// The same epsilon at every age.
    FixedEpsilon {
        /// The epsilon.
        epsilon: f64,
    },
    /// From `start_epsilon` at the commit block, linearly down to
    /// `end_epsilon` after `decay_blocks` blocks, then constant.
    LinearDecay {
        /// Epsilon of a model committed this block.
        start_epsilon: f64,
        /// Epsilon once fully decayed.
        end_epsilon: f64,
        /// Blocks from start to end.
        decay_blocks: u64,
    },
}

impl EpsilonFunc {
    /// Epsilon of a model committed at `model_block`, seen at `current_block`
    /// (upstream's arithmetic in f64; a block before the commit counts as age 0).
    pub fn compute_epsilon(&self, current_block: u64, model_block: u64) -> f64 {
        match *self {
            Self::FixedEpsilon { epsilon } => epsilon,
            Self::LinearDecay {
                start_epsilon,
                end_epsilon,
                decay_blocks,
            } => {
                let age = current_block.saturating_sub(model_block);
                // Upstream divides by zero here; `validate` refuses such a function.
                let adjustment = if decay_blocks == 0 {
                    1.0
                } else {
                    (age as f64 / decay_blocks as f64).min(1.0)
                };
                start_epsilon - adjustment * (start_epsilon - end_epsilon)
            }
        }
    }

    /// Epsilon once fully decayed: upstream's `compute_epsilon(math.inf, 0)`.
    pub fn fully_decayed(&self) -> f64 {
        match *self {
            Self::FixedEpsilon { epsilon } => epsilon,
            Self::LinearDecay {
                start_epsilon,
                end_epsilon,
                ..
            } => start_epsilon - (start_epsilon - end_epsilon),
        }
    }

    /// Refuses an epsilon outside `[0, 1)` or a decay over zero blocks.
    pub fn validate(&self) -> Result<(), RulesError> {
        let check = |what: &str, v: f64| {
            if v.is_finite() && (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(RulesError::Invalid(format!(
                    "epsilon {what} must be in [0, 1), got {v}"
                )))
            }
        };
        match *self {
            Self::FixedEpsilon { epsilon } => check("", epsilon),
            Self::LinearDecay {
                start_epsilon,
                end_epsilon,
                decay_blocks,
            } => {
                check("start_epsilon", start_epsilon)?;
                check("end_epsilon", end_epsilon)?;
                if decay_blocks == 0 {
                    return Err(RulesError::Invalid(
                        "epsilon decay_blocks must be at least 1".into(),
                    ));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: EpsilonFunc = EpsilonFunc::LinearDecay {
        start_epsilon: 0.005,
        end_epsilon: 0.001,
        decay_blocks: 100,
    };

    /// Hand-computed points of the linear decay.
    #[test]
    fn linear_decay_points() {
        assert_eq!(DECAY.compute_epsilon(1000, 1000), 0.005);
        assert_eq!(DECAY.compute_epsilon(900, 1000), 0.005);
        assert!((DECAY.compute_epsilon(1050, 1000) - 0.003).abs() < 1e-15);
        assert!((DECAY.compute_epsilon(1100, 1000) - 0.001).abs() < 1e-15);
        assert_eq!(
            DECAY.compute_epsilon(u64::MAX, 0),
            DECAY.compute_epsilon(1100, 1000)
        );
        assert_eq!(DECAY.fully_decayed(), DECAY.compute_epsilon(5000, 0));
    }

    #[test]
    fn validation() {
        assert!(DECAY.validate().is_ok());
        assert!(EpsilonFunc::FixedEpsilon { epsilon: 1.0 }
            .validate()
            .is_err());
        assert!(EpsilonFunc::FixedEpsilon { epsilon: f64::NAN }
            .validate()
            .is_err());
        assert!(EpsilonFunc::LinearDecay {
            start_epsilon: 0.005,
            end_epsilon: 0.001,
            decay_blocks: 0
        }
        .validate()
        .is_err());
    }
}

//! Weights across competitions (taoverse `competition_tracker.py` and
//! pretraining's `_compute_and_set_competition_weights`): each competition
//! keeps its own moving average over the metagraph; the subnet's weights are
//! their sum weighted by the competitions' reward shares, renormalised.
//! Float32 throughout, as upstream's torch tensors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model_id::CompetitionId;
use crate::scoring::Uid;

/// Upstream's `nan_to_num(0.0)`: NaN to 0, infinities to the finite extremes.
fn nan_to_num(v: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else if v == f32::INFINITY {
        f32::MAX
    } else if v == f32::NEG_INFINITY {
        f32::MIN
    } else {
        v
    }
}

/// `v /= v.sum(); nan_to_num(0)` in float32 (all zeros stay zeros).
pub fn normalize(v: &mut [f32]) {
    let sum: f32 = v.iter().sum();
    v.iter_mut().for_each(|w| *w = nan_to_num(*w / sum));
}

/// Places each uid's step weight in a zero vector of `num_neurons` (uids
/// outside it are dropped: they are not in the metagraph).
pub fn scatter(num_neurons: usize, step: &[(Uid, f32)]) -> Vec<f32> {
    let mut v = vec![0f32; num_neurons];
    for &(uid, w) in step {
        if let Some(slot) = v.get_mut(usize::from(uid)) {
            *slot = w;
        }
    }
    v
}

/// Per-competition moving averages of the weights over the metagraph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompetitionTracker {
    num_neurons: usize,
    weights: BTreeMap<CompetitionId, Vec<f32>>,
}

impl CompetitionTracker {
    /// An empty tracker for a metagraph of `num_neurons`.
    pub fn new(num_neurons: usize) -> Self {
        Self {
            num_neurons,
            weights: BTreeMap::new(),
        }
    }

    /// Size of the metagraph the weights cover.
    pub fn num_neurons(&self) -> usize {
        self.num_neurons
    }

    /// Records one step's weights of `competition`: normalised, stored as is
    /// the first time, else `alpha * old + (1 - alpha) * new`. A longer
    /// vector grows every competition's weights (zeros for the new uids); a
    /// shorter one is padded with zeros (upstream would fail to broadcast).
    pub fn record(&mut self, competition: CompetitionId, weights: &[f32], alpha: f64) {
        if weights.len() > self.num_neurons {
            self.resize(weights.len());
        }
        let mut w = weights.to_vec();
        w.resize(self.num_neurons, 0.0);
        normalize(&mut w);
        let a = alpha as f32;
        let b = (1.0 - alpha) as f32;
        match self.weights.get_mut(&competition) {
            None => {
                self.weights.insert(competition, w);
            }
            Some(old) => {
                old.resize(self.num_neurons, 0.0);
                for (o, n) in old.iter_mut().zip(&w) {
                    *o = a * *o + b * n;
                }
            }
        }
    }

    /// Grows the metagraph to `num_neurons`, padding every competition with zeros.
    pub fn resize(&mut self, num_neurons: usize) {
        if num_neurons > self.num_neurons {
            for w in self.weights.values_mut() {
                w.resize(num_neurons, 0.0);
            }
        }
        self.num_neurons = num_neurons;
    }

    /// Drops the records of competitions that are no longer scheduled.
    pub fn reset_competitions(&mut self, active: &[CompetitionId]) {
        self.weights.retain(|id, _| active.contains(id));
    }

    /// The moving average of `competition`, if it has been recorded.
    pub fn competition_weights(&self, competition: CompetitionId) -> Option<&[f32]> {
        self.weights.get(&competition).map(Vec::as_slice)
    }

    /// The recorded competitions and their weights.
    pub fn all_weights(&self) -> &BTreeMap<CompetitionId, Vec<f32>> {
        &self.weights
    }

    /// `sum over (id, share) of share * weights[id]` for the competitions
    /// recorded, in the order given, then normalised: a competition not yet
    /// run gives its share to the others.
    pub fn subnet_weights(&self, competitions: &[(CompetitionId, f64)]) -> Vec<f32> {
        let mut out = vec![0f32; self.num_neurons];
        for (id, share) in competitions {
            let Some(w) = self.weights.get(id) else {
                continue;
            };
            let share = *share as f32;
            for (o, &v) in out.iter_mut().zip(w) {
                *o += v * share;
            }
        }
        normalize(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_record_is_stored_normalised_then_averaged() {
        let mut t = CompetitionTracker::new(3);
        t.record(1, &[1.0, 3.0, 0.0], 0.5);
        assert_eq!(t.competition_weights(1).unwrap(), &[0.25, 0.75, 0.0]);
        t.record(1, &[0.0, 0.0, 2.0], 0.5);
        assert_eq!(t.competition_weights(1).unwrap(), &[0.125, 0.375, 0.5]);
    }

    #[test]
    fn all_zero_weights_become_zeros_not_nan() {
        let mut t = CompetitionTracker::new(2);
        t.record(1, &[0.0, 0.0], 0.5);
        assert_eq!(t.competition_weights(1).unwrap(), &[0.0, 0.0]);
        assert_eq!(t.subnet_weights(&[(1, 1.0)]), vec![0.0, 0.0]);
    }

    #[test]
    fn unrun_competition_share_goes_to_the_others() {
        let mut t = CompetitionTracker::new(2);
        t.record(1, &[1.0, 0.0], 0.5);
        assert_eq!(t.subnet_weights(&[(1, 0.25), (2, 0.75)]), vec![1.0, 0.0]);
        t.record(2, &[0.0, 1.0], 0.5);
        assert_eq!(t.subnet_weights(&[(1, 0.25), (2, 0.75)]), vec![0.25, 0.75]);
        t.reset_competitions(&[2]);
        assert!(t.competition_weights(1).is_none());
        assert_eq!(t.subnet_weights(&[(1, 0.25), (2, 0.75)]), vec![0.0, 1.0]);
    }
}

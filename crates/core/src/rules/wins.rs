//! Head-to-head scoring of the later protocol (pretraining
//! `pretrain/validation.py`): one aggregated score per uid, an epsilon that
//! decays with the earlier model's age, and the competitive-uid filter that
//! drops clones and spoilers before the round robin.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::epsilon::EpsilonFunc;
use super::RulesError;
use crate::scoring::{step_weights, Uid};

/// One evaluated model: its uid, its score (mean loss; lower is better) and
/// the block of its commitment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Contender {
    /// The miner's uid.
    pub uid: Uid,
    /// Aggregated loss.
    pub score: f64,
    /// Commit block of its model.
    pub block: u64,
}

/// Whether model `i` beats model `j` on their aggregated scores (upstream's
/// `iswin` of the competitions; the seed's per-batch one is
/// [`crate::scoring::iswin`]): the earlier one (strictly lower block) has
/// its loss multiplied by `1 - epsilon(its age)`, so its advantage depends
/// on how long ago it was committed; equal blocks get no discount, and an
/// exact tie is a loss for both.
pub fn iswin_aged(
    loss_i: f64,
    loss_j: f64,
    block_i: u64,
    block_j: u64,
    epsilon: &EpsilonFunc,
    current_block: u64,
) -> bool {
    let loss_i = if block_i < block_j {
        (1.0 - epsilon.compute_epsilon(current_block, block_i)) * loss_i
    } else {
        loss_i
    };
    let loss_j = if block_j < block_i {
        (1.0 - epsilon.compute_epsilon(current_block, block_j)) * loss_j
    } else {
        loss_j
    };
    loss_i < loss_j
}

/// Refuses a uid given twice (upstream's maps cannot hold one twice).
pub fn check_unique(contenders: &[Contender]) -> Result<(), RulesError> {
    let mut seen = BTreeSet::new();
    for c in contenders {
        if !seen.insert(c.uid) {
            return Err(RulesError::Invalid(format!("uid {} appears twice", c.uid)));
        }
    }
    Ok(())
}

/// The uids that could one day be the top model, in the order given: `u`
/// is kept iff its score is below the fully decayed score of every other
/// uid committed at the same block or earlier. Two equal scores at one
/// block therefore drop each other (upstream's quirk, kept).
pub fn compute_competitive_uids(contenders: &[Contender], epsilon: &EpsilonFunc) -> Vec<Uid> {
    let factor = 1.0 - epsilon.fully_decayed();
    contenders
        .iter()
        .filter(|u| {
            contenders
                .iter()
                .filter(|o| o.uid != u.uid && o.block <= u.block)
                .all(|o| u.score < o.score * factor)
        })
        .map(|u| u.uid)
        .collect()
}

/// Wins and win rates of a round robin, in the order of the contenders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wins {
    /// `(uid, other uids beaten)`.
    pub wins: Vec<(Uid, u64)>,
    /// `(uid, wins / (n - 1))`; 1 when there is no other uid.
    pub win_rate: Vec<(Uid, f64)>,
}

impl Wins {
    /// The win rate of `uid`, 0 for a uid that did not play (upstream's `.get(uid, 0)`).
    pub fn rate_of(&self, uid: Uid) -> f64 {
        self.win_rate
            .iter()
            .find(|(u, _)| *u == uid)
            .map_or(0.0, |&(_, r)| r)
    }
}

/// One comparison per ordered pair of contenders with [`iswin_aged`]
/// (upstream's `compute_wins` of the competitions; the seed's per-batch one
/// is [`crate::scoring::compute_wins`]).
pub fn compute_wins_aged(
    contenders: &[Contender],
    epsilon: &EpsilonFunc,
    current_block: u64,
) -> Wins {
    let mut wins = Vec::with_capacity(contenders.len());
    let mut win_rate = Vec::with_capacity(contenders.len());
    for (i, ci) in contenders.iter().enumerate() {
        let mut won = 0u64;
        let mut matches = 0u64;
        for (j, cj) in contenders.iter().enumerate() {
            if i == j {
                continue;
            }
            if iswin_aged(
                ci.score,
                cj.score,
                ci.block,
                cj.block,
                epsilon,
                current_block,
            ) {
                won += 1;
            }
            matches += 1;
        }
        wins.push((ci.uid, won));
        win_rate.push((
            ci.uid,
            if matches > 0 {
                won as f64 / matches as f64
            } else {
                1.0
            },
        ));
    }
    Wins { wins, win_rate }
}

/// Everything one competition's scoring step computes.
#[derive(Debug, Clone, PartialEq)]
pub struct CompetitionStep {
    /// The uids kept by the competitive filter (`None` when it is off).
    pub competitive_uids: Option<Vec<Uid>>,
    /// Wins among the uids that played.
    pub wins: Wins,
    /// `softmax(win_rate / temperature)` in float32, in the order of the contenders.
    pub step_weights: Vec<(Uid, f32)>,
}

/// The later validator's step for one competition: the competitive filter
/// (when `filter`), the round robin over the uids kept, then the float32
/// softmax of every contender's win rate (0 for a uid filtered out).
pub fn score_competition(
    contenders: &[Contender],
    epsilon: &EpsilonFunc,
    current_block: u64,
    temperature: f64,
    filter: bool,
) -> Result<CompetitionStep, RulesError> {
    check_unique(contenders)?;
    let (competitive_uids, players): (Option<Vec<Uid>>, Vec<Contender>) = if filter {
        let kept = compute_competitive_uids(contenders, epsilon);
        let players = kept
            .iter()
            .filter_map(|u| contenders.iter().find(|c| c.uid == *u).copied())
            .collect();
        (Some(kept), players)
    } else {
        (None, contenders.to_vec())
    };
    let wins = compute_wins_aged(&players, epsilon, current_block);
    let rates: Vec<f64> = contenders.iter().map(|c| wins.rate_of(c.uid)).collect();
    let step = step_weights(&rates, temperature);
    Ok(CompetitionStep {
        competitive_uids,
        wins,
        step_weights: contenders.iter().map(|c| c.uid).zip(step).collect(),
    })
}

/// Upstream's choice of the uids kept for a competition's next step: the
/// `sample_min` best by priority (1 + the competition's moving-average
/// weight when it is at least 0.001, else the win rate; uids filtered out
/// by the competitive filter are not ranked), then, while fewer than
/// `sample_min`, the others by ascending score. Stable: ties keep the
/// contenders' order. Ascending.
pub fn keep_for_next_step(
    contenders: &[Contender],
    wins: &Wins,
    competition_weights: &[f32],
    sample_min: usize,
) -> Vec<Uid> {
    let priority = |uid: Uid, rate: f64| {
        let w = competition_weights
            .get(usize::from(uid))
            .copied()
            .unwrap_or(0.0);
        if w >= 0.001 {
            1.0 + f64::from(w)
        } else {
            rate
        }
    };
    let mut ranked: Vec<(Uid, f64)> = wins
        .win_rate
        .iter()
        .map(|&(uid, rate)| (uid, priority(uid, rate)))
        .collect();
    // Stable and descending, as Python's sorted(..., reverse=True).
    ranked.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    let mut keep: BTreeSet<Uid> = ranked.iter().take(sample_min).map(|r| r.0).collect();
    let mut by_score: Vec<&Contender> = contenders.iter().collect();
    by_score.sort_by(|a, b| {
        a.score
            .partial_cmp(&b.score)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    for c in by_score {
        if keep.len() >= sample_min {
            break;
        }
        keep.insert(c.uid);
    }
    keep.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: EpsilonFunc = EpsilonFunc::FixedEpsilon { epsilon: 0.1 };

    fn c(uid: Uid, score: f64, block: u64) -> Contender {
        Contender { uid, score, block }
    }

    /// With epsilon 0.1 the earlier model's 1.0 counts as 0.9.
    #[test]
    fn earlier_model_gets_the_discount() {
        assert!(iswin_aged(1.0, 0.95, 1, 2, &FIXED, 10));
        assert!(!iswin_aged(0.95, 1.0, 2, 1, &FIXED, 10));
        assert!(iswin_aged(0.89, 1.0, 2, 1, &FIXED, 10));
        // Equal blocks: no discount; an exact tie is a loss both ways.
        assert!(!iswin_aged(1.0, 1.0, 5, 5, &FIXED, 10));
        assert!(iswin_aged(0.99, 1.0, 5, 5, &FIXED, 10));
    }

    #[test]
    fn a_lone_uid_has_win_rate_one() {
        let w = compute_wins_aged(&[c(3, 2.0, 1)], &FIXED, 10);
        assert_eq!(w.wins, vec![(3, 0)]);
        assert_eq!(w.win_rate, vec![(3, 1.0)]);
        assert_eq!(w.rate_of(4), 0.0);
    }

    #[test]
    fn same_block_twins_filter_each_other_out() {
        let kept = compute_competitive_uids(&[c(1, 2.0, 7), c(2, 2.0, 7), c(3, 3.0, 1)], &FIXED);
        assert_eq!(kept, vec![3]);
    }

    #[test]
    fn duplicate_uid_is_refused() {
        assert!(score_competition(&[c(1, 1.0, 1), c(1, 2.0, 2)], &FIXED, 3, 0.01, true).is_err());
    }

    #[test]
    fn kept_uids_rank_by_weight_then_win_rate_then_fill_by_score() {
        let c = |uid, score| Contender {
            uid,
            score,
            block: 1,
        };
        let contenders = [c(1, 3.0), c(2, 2.0), c(3, 1.0), c(4, 5.0)];
        // Only 2 and 3 passed the competitive filter.
        let wins = Wins {
            wins: vec![(2, 0), (3, 1)],
            win_rate: vec![(2, 0.0), (3, 1.0)],
        };
        // Uid 2 holds weight (priority 1.5); uid 3's is below 0.001, so its
        // win rate (1.0) counts.
        let weights = [0.0, 0.0, 0.5, 0.0005, 0.0];
        assert_eq!(keep_for_next_step(&contenders, &wins, &weights, 1), vec![2]);
        // Then the best score among the rest: uid 1 (3.0) before uid 4 (5.0).
        assert_eq!(
            keep_for_next_step(&contenders, &wins, &weights, 3),
            vec![1, 2, 3]
        );
        assert_eq!(
            keep_for_next_step(&contenders, &wins, &weights, 10),
            vec![1, 2, 3, 4]
        );
        // Without weights the win rate decides: uid 3.
        assert_eq!(keep_for_next_step(&contenders, &wins, &[], 1), vec![3]);
    }
}

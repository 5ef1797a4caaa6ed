//! Validator scoring: head-to-head wins, win rates, softmax step weights,
//! the moving average of the weights, selection of the uids kept for the
//! next step, and the `u16` form that `set_weights` puts on chain.
//!
//! Every function reproduces the original's arithmetic (Python floats where
//! it used them, float32 tensors where it used those), so that a validator
//! running this code sets the same weights as one running the original.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A uid of the subnet's metagraph.
pub type Uid = u16;

/// Whether model `i` beats model `j` on one batch.
///
/// The earlier-committed model (lower block; `None` = no metadata = +inf)
/// has its loss multiplied by `1 - epsilon`; `i` wins iff its adjusted loss
/// is strictly lower. Comparisons with NaN are false, as in Python.
pub fn iswin(
    loss_i: f64,
    loss_j: f64,
    block_i: Option<u64>,
    block_j: Option<u64>,
    epsilon: f64,
) -> bool {
    let loss_i = if block_lt(block_i, block_j) {
        (1.0 - epsilon) * loss_i
    } else {
        loss_i
    };
    let loss_j = if block_lt(block_j, block_i) {
        (1.0 - epsilon) * loss_j
    } else {
        loss_j
    };
    loss_i < loss_j
}

/// `a < b` where `None` stands for +inf (missing metadata).
fn block_lt(a: Option<u64>, b: Option<u64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a < b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Wins and win rates of the evaluated uids, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct WinStats {
    /// Number of (other uid, batch) pairs each uid won.
    pub wins: Vec<u64>,
    /// `wins / ((n_uids - 1) * n_batches)`, 0 when there are no pairs.
    pub win_rate: Vec<f64>,
}

/// Errors in the shape of the scoring inputs.
#[derive(Debug, Error, PartialEq)]
pub enum ScoringError {
    /// A per-uid input does not have one entry per evaluated uid.
    #[error("{what}: expected {expected} entries (one per evaluated uid), got {got}")]
    Length {
        /// Which input.
        what: &'static str,
        /// Number of evaluated uids.
        expected: usize,
        /// Number supplied.
        got: usize,
    },
    /// A uid's losses do not cover every batch.
    #[error("uid {uid}: expected {expected} losses (one per batch), got {got}")]
    Batches {
        /// The uid.
        uid: Uid,
        /// Number of batches.
        expected: usize,
        /// Number of losses supplied.
        got: usize,
    },
    /// An evaluated uid is outside the metagraph.
    #[error("uid {uid} is out of range for a metagraph of {n_total_uids} uids")]
    UidOutOfRange {
        /// The uid.
        uid: Uid,
        /// Size of the metagraph.
        n_total_uids: usize,
    },
    /// A uid appears twice in the evaluation set.
    #[error("uid {0} appears more than once")]
    DuplicateUid(Uid),
    /// A size from outside is over its bound (checked before anything is allocated from it).
    #[error("{what} is {value}, over the limit of {max}")]
    TooLarge {
        /// Which size.
        what: &'static str,
        /// The size given.
        value: u64,
        /// Its bound.
        max: u64,
    },
}

/// Most uids a metagraph can have (uids are 16-bit on chain).
pub const MAX_UIDS: usize = 1 << 16;
/// Most batches per uid in one step.
pub const MAX_BATCHES: usize = 1 << 20;
/// Most (uid, batch) losses one step may hold or make.
pub const MAX_LOSSES: usize = 1 << 26;
/// Most head-to-head comparisons (uid x other uid x batch) of one step: a
/// few seconds of work. A tiny file of failed uids could otherwise ask for
/// 2^42 (hours).
pub const MAX_COMPARISONS: usize = 1 << 32;

/// Bounds every size of a step before anything is allocated from it: a small
/// input must not ask for a huge vector (`n_total_uids` = 2^64-1) or a
/// huge amount of work.
fn check_sizes(
    n_total_uids: usize,
    n_uids: usize,
    n_batches: usize,
    sample_min: usize,
    n_prev_weights: usize,
) -> Result<(), ScoringError> {
    let bound = |what: &'static str, value: usize, max: usize| {
        if value > max {
            Err(ScoringError::TooLarge {
                what,
                value: value as u64,
                max: max as u64,
            })
        } else {
            Ok(())
        }
    };
    bound("n_total_uids", n_total_uids, MAX_UIDS)?;
    bound("the number of uids", n_uids, MAX_UIDS)?;
    bound("n_batches", n_batches, MAX_BATCHES)?;
    bound(
        "uids x n_batches",
        n_uids.saturating_mul(n_batches),
        MAX_LOSSES,
    )?;
    bound(
        "uids x uids x n_batches",
        n_uids.saturating_mul(n_uids).saturating_mul(n_batches),
        MAX_COMPARISONS,
    )?;
    bound("sample_min", sample_min, MAX_UIDS)?;
    bound("the length of prev_weights", n_prev_weights, MAX_UIDS)
}

/// Counts, for every uid, the (other uid, batch) pairs it wins (`iswin`).
///
/// `losses[k]` are uid `k`'s losses per batch (`+inf` for a model that could
/// not be evaluated) and `blocks[k]` its commit block (`None` if unknown).
pub fn compute_wins(
    losses: &[Vec<f64>],
    blocks: &[Option<u64>],
    n_batches: usize,
    epsilon: f64,
) -> WinStats {
    let n = losses.len();
    let mut wins = vec![0u64; n];
    let mut win_rate = vec![0f64; n];
    for i in 0..n {
        let mut matches = 0u64;
        for j in 0..n {
            if i == j {
                continue;
            }
            for b in 0..n_batches {
                let li = losses[i].get(b).copied().unwrap_or(f64::INFINITY);
                let lj = losses[j].get(b).copied().unwrap_or(f64::INFINITY);
                if iswin(li, lj, blocks[i], blocks[j], epsilon) {
                    wins[i] += 1;
                }
                matches += 1;
            }
        }
        win_rate[i] = if matches > 0 {
            wins[i] as f64 / matches as f64
        } else {
            0.0
        };
    }
    WinStats { wins, win_rate }
}

/// `softmax(f32(win_rate) / f32(temperature))` in float32, as the original's
/// `torch.softmax` over a float32 tensor.
pub fn step_weights(win_rate: &[f64], temperature: f64) -> Vec<f32> {
    let t = temperature as f32;
    let x: Vec<f32> = win_rate.iter().map(|&w| (w as f32) / t).collect();
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|&v| v / sum).collect()
}

/// Places `step` at `uids` in a zero vector of `n_total_uids` and divides it
/// by its float32 sum (NaN everywhere when the sum is 0, as in torch).
pub fn scatter_normalized(n_total_uids: usize, uids: &[Uid], step: &[f32]) -> Vec<f32> {
    let mut v = vec![0f32; n_total_uids];
    for (&uid, &w) in uids.iter().zip(step) {
        if let Some(slot) = v.get_mut(usize::from(uid)) {
            *slot = w;
        }
    }
    let sum: f32 = v.iter().sum();
    v.iter_mut().for_each(|w| *w /= sum);
    v
}

/// The moving average `f32(alpha) * prev + f32(1 - alpha) * new`, with NaN
/// set to 0 and infinities to the largest finite float32 (`nan_to_num`).
///
/// `prev` is truncated or zero-padded to the length of `new` first, as the
/// original does when the metagraph changes size.
pub fn moving_average(prev: &[f32], new: &[f32], alpha: f64) -> Vec<f32> {
    let a = alpha as f32;
    let b = (1.0 - alpha) as f32;
    new.iter()
        .enumerate()
        .map(|(k, &n)| {
            let p = prev.get(k).copied().unwrap_or(0.0);
            let w = a * p + b * n;
            if w.is_nan() {
                0.0
            } else if w == f32::INFINITY {
                f32::MAX
            } else if w == f32::NEG_INFINITY {
                f32::MIN
            } else {
                w
            }
        })
        .collect()
}

/// The `sample_min` uids with the highest win rate, sorted ascending.
///
/// Ties are broken by the order of `uids` (Python's stable
/// `sorted(..., reverse=True)`), which matters when a tie straddles the cut.
pub fn select_best(uids: &[Uid], win_rate: &[f64], sample_min: usize) -> Vec<Uid> {
    let mut order: Vec<usize> = (0..uids.len()).collect();
    // Stable sort, descending; win rates are never NaN (ratios of counts).
    order.sort_by(|&a, &b| {
        win_rate[b]
            .partial_cmp(&win_rate[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut best: Vec<Uid> = order
        .into_iter()
        .take(sample_min)
        .map(|k| uids[k])
        .collect();
    best.sort_unstable();
    best
}

/// bittensor's `convert_weights_and_uids_for_emit` for uids `0..n`:
/// `w / max(w)` in f64, times 65535, rounded half to even (Python's
/// `round`); uids whose value rounds to 0 are dropped. All-zero weights
/// (or no weights) emit nothing.
pub fn weights_for_emit(weights: &[f32]) -> (Vec<Uid>, Vec<u16>) {
    let max = weights.iter().map(|&w| f64::from(w)).fold(0.0, f64::max);
    let mut uids = Vec::new();
    let mut values = Vec::new();
    if max <= 0.0 || !max.is_finite() {
        return (uids, values);
    }
    for (uid, &w) in weights.iter().enumerate() {
        let v = (f64::from(w) / max * f64::from(u16::MAX)).round_ties_even();
        if v >= 1.0 {
            // uids beyond u16 cannot exist on chain; the metagraph is smaller.
            if let Ok(uid) = Uid::try_from(uid) {
                uids.push(uid);
                values.push(v.min(f64::from(u16::MAX)) as u16);
            }
        }
    }
    (uids, values)
}

/// Inputs of one validator scoring step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInput {
    /// Size of the metagraph.
    pub n_total_uids: usize,
    /// Evaluated uids, in iteration order.
    pub uids: Vec<Uid>,
    /// Number of batches every uid was evaluated on.
    pub n_batches: usize,
    /// Loss advantage of the earlier commit.
    pub epsilon: f64,
    /// Softmax temperature.
    pub temperature: f64,
    /// Moving-average factor.
    pub alpha: f64,
    /// Number of uids kept for the next step.
    pub sample_min: usize,
    /// Commit block per evaluated uid (`None`: no metadata).
    pub blocks: Vec<Option<u64>>,
    /// Losses per batch per evaluated uid (`+inf`: could not evaluate).
    pub losses: Vec<Vec<f64>>,
    /// Weights before the step, over all uids.
    pub prev_weights: Vec<f32>,
}

/// Everything one scoring step computes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// Wins and win rates, in `uids` order.
    pub stats: WinStats,
    /// Softmax of the win rates, in `uids` order.
    pub step_weights: Vec<f32>,
    /// Step weights over all uids, normalised.
    pub new_weights_scattered_normalized: Vec<f32>,
    /// The new moving-average weights over all uids.
    pub weights: Vec<f32>,
    /// The uids kept in the evaluation set, ascending.
    pub uids_to_eval_next: Vec<Uid>,
    /// Uids sent with `set_weights`.
    pub emit_uids: Vec<Uid>,
    /// Values sent with `set_weights`.
    pub emit_u16: Vec<u16>,
}

impl StepInput {
    /// Checks that every size is within its bound and that the per-uid
    /// inputs line up with `uids`.
    pub fn validate(&self) -> Result<(), ScoringError> {
        check_sizes(
            self.n_total_uids,
            self.uids.len(),
            self.n_batches,
            self.sample_min,
            self.prev_weights.len(),
        )?;
        let n = self.uids.len();
        for (what, got) in [("blocks", self.blocks.len()), ("losses", self.losses.len())] {
            if got != n {
                return Err(ScoringError::Length {
                    what,
                    expected: n,
                    got,
                });
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (k, &uid) in self.uids.iter().enumerate() {
            if usize::from(uid) >= self.n_total_uids {
                return Err(ScoringError::UidOutOfRange {
                    uid,
                    n_total_uids: self.n_total_uids,
                });
            }
            if !seen.insert(uid) {
                return Err(ScoringError::DuplicateUid(uid));
            }
            if self.losses[k].len() != self.n_batches {
                return Err(ScoringError::Batches {
                    uid,
                    expected: self.n_batches,
                    got: self.losses[k].len(),
                });
            }
        }
        Ok(())
    }

    /// Runs the step: the validator's scoring, start to end.
    pub fn run(&self) -> Result<StepOutput, ScoringError> {
        self.validate()?;
        let stats = compute_wins(&self.losses, &self.blocks, self.n_batches, self.epsilon);
        let step = step_weights(&stats.win_rate, self.temperature);
        let scattered = scatter_normalized(self.n_total_uids, &self.uids, &step);
        let weights = moving_average(&self.prev_weights, &scattered, self.alpha);
        let next = select_best(&self.uids, &stats.win_rate, self.sample_min);
        let (emit_uids, emit_u16) = weights_for_emit(&weights);
        Ok(StepOutput {
            stats,
            step_weights: step,
            new_weights_scattered_normalized: scattered,
            weights,
            uids_to_eval_next: next,
            emit_uids,
            emit_u16,
        })
    }
}

/// A float that may be written as the strings `"inf"`, `"-inf"` or `"nan"`
/// in JSON (which has no non-finite numbers), as the reference files do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JsonF64(pub f64);

impl<'de> Deserialize<'de> for JsonF64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(v) => Ok(JsonF64(v)),
            Raw::Str(s) => match s.to_ascii_lowercase().as_str() {
                "inf" | "+inf" | "infinity" => Ok(JsonF64(f64::INFINITY)),
                "-inf" | "-infinity" => Ok(JsonF64(f64::NEG_INFINITY)),
                "nan" => Ok(JsonF64(f64::NAN)),
                _ => Err(serde::de::Error::custom(format!(
                    "expected a number, \"inf\" or \"nan\", got {s:?}"
                ))),
            },
        }
    }
}

impl Serialize for JsonF64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_nan() {
            s.serialize_str("nan")
        } else if v == f64::INFINITY {
            s.serialize_str("inf")
        } else if v == f64::NEG_INFINITY {
            s.serialize_str("-inf")
        } else {
            s.serialize_f64(v)
        }
    }
}

/// Status of an evaluated uid in the JSON step format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UidStatus {
    /// Model loaded and evaluated.
    Ok,
    /// Metadata known, model failed to load: all losses +inf.
    LoadFailed,
    /// No metadata: block +inf and all losses +inf.
    NoMetadata,
}

/// One scoring step in the JSON format of `reference/scoring/cases.json`
/// (the input of `pretrain score`). Per-uid maps are keyed by the uid as a
/// string.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepJson {
    /// Optional label of the case.
    #[serde(default)]
    pub name: Option<String>,
    /// Size of the metagraph.
    pub n_total_uids: usize,
    /// Evaluated uids in iteration order.
    pub uids: Vec<Uid>,
    /// Number of batches.
    pub n_batches: usize,
    /// Loss advantage of the earlier commit.
    pub epsilon: f64,
    /// Softmax temperature.
    pub temperature: f64,
    /// Moving-average factor.
    pub alpha: f64,
    /// Number of uids kept for the next step.
    pub sample_min: usize,
    /// Status per uid; a uid missing here is `ok`.
    #[serde(default)]
    pub uid_status: BTreeMap<String, UidStatus>,
    /// Commit block per uid (`null`: no metadata).
    pub blocks: BTreeMap<String, Option<u64>>,
    /// Losses per batch per uid.
    pub losses_per_uid: BTreeMap<String, Vec<JsonF64>>,
    /// Weights before the step, over all uids.
    pub prev_weights: Vec<JsonF64>,
    /// The expected output, when the file is a reference case (ignored).
    #[serde(default)]
    pub expected: Option<serde_json::Value>,
}

/// Errors converting a JSON step into a [`StepInput`].
#[derive(Debug, Error, PartialEq)]
pub enum StepJsonError {
    /// A per-uid map lacks an evaluated uid.
    #[error("`{field}` has no entry for uid {uid}")]
    MissingUid {
        /// Which map.
        field: &'static str,
        /// The uid.
        uid: Uid,
    },
    /// The shapes do not line up.
    #[error(transparent)]
    Shape(#[from] ScoringError),
}

impl StepJson {
    /// The step's inputs, checked ([`StepInput::validate`]); a `no_metadata`
    /// uid gets block +inf and a `load_failed` or `no_metadata` uid losses
    /// +inf, whatever the file says. Sizes are bounded before anything is
    /// allocated from them.
    pub fn to_input(&self) -> Result<StepInput, StepJsonError> {
        check_sizes(
            self.n_total_uids,
            self.uids.len(),
            self.n_batches,
            self.sample_min,
            self.prev_weights.len(),
        )?;
        let mut blocks = Vec::with_capacity(self.uids.len());
        let mut losses = Vec::with_capacity(self.uids.len());
        for &uid in &self.uids {
            let key = uid.to_string();
            let status = self.uid_status.get(&key).copied().unwrap_or(UidStatus::Ok);
            let block = match status {
                UidStatus::NoMetadata => None,
                _ => *self.blocks.get(&key).ok_or(StepJsonError::MissingUid {
                    field: "blocks",
                    uid,
                })?,
            };
            let l: Vec<f64> = match status {
                UidStatus::Ok => self
                    .losses_per_uid
                    .get(&key)
                    .ok_or(StepJsonError::MissingUid {
                        field: "losses_per_uid",
                        uid,
                    })?
                    .iter()
                    .map(|v| v.0)
                    .collect(),
                _ => vec![f64::INFINITY; self.n_batches],
            };
            blocks.push(block);
            losses.push(l);
        }
        let input = StepInput {
            n_total_uids: self.n_total_uids,
            uids: self.uids.clone(),
            n_batches: self.n_batches,
            epsilon: self.epsilon,
            temperature: self.temperature,
            alpha: self.alpha,
            sample_min: self.sample_min,
            blocks,
            losses,
            prev_weights: self.prev_weights.iter().map(|v| v.0 as f32).collect(),
        };
        input.validate()?;
        Ok(input)
    }
}

/// The output of one scoring step in the JSON format of the reference's
/// `expected` (the output of `pretrain score`).
#[derive(Debug, Clone, Serialize)]
pub struct StepOutputJson {
    /// Wins per uid.
    pub wins: BTreeMap<String, u64>,
    /// Win rate per uid.
    pub win_rate: BTreeMap<String, JsonF64>,
    /// Softmax weights in `uids` order.
    pub step_weights: Vec<JsonF64>,
    /// Step weights over all uids, normalised.
    pub new_weights_scattered_normalized: Vec<JsonF64>,
    /// New moving-average weights.
    pub weights: Vec<JsonF64>,
    /// Uids kept for the next step, ascending.
    pub uids_to_eval_next: Vec<Uid>,
    /// Uids sent with `set_weights`.
    pub emit_uids: Vec<Uid>,
    /// Values sent with `set_weights`.
    pub emit_u16: Vec<u16>,
}

impl StepOutputJson {
    /// The JSON form of `out` for the evaluated `uids`.
    pub fn new(uids: &[Uid], out: &StepOutput) -> Self {
        let f = |v: &[f32]| v.iter().map(|&x| JsonF64(f64::from(x))).collect();
        Self {
            wins: uids
                .iter()
                .zip(&out.stats.wins)
                .map(|(u, &w)| (u.to_string(), w))
                .collect(),
            win_rate: uids
                .iter()
                .zip(&out.stats.win_rate)
                .map(|(u, &w)| (u.to_string(), JsonF64(w)))
                .collect(),
            step_weights: f(&out.step_weights),
            new_weights_scattered_normalized: f(&out.new_weights_scattered_normalized),
            weights: f(&out.weights),
            uids_to_eval_next: out.uids_to_eval_next.clone(),
            emit_uids: out.emit_uids.clone(),
            emit_u16: out.emit_u16.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const CASES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/scoring/cases.json"
    );

    fn cases() -> Value {
        let text = std::fs::read_to_string(CASES).expect("reference scoring cases");
        serde_json::from_str(&text).expect("valid json")
    }

    fn num(v: &Value) -> f64 {
        serde_json::from_value::<JsonF64>(v.clone())
            .expect("number")
            .0
    }

    fn block(v: &Value) -> Option<u64> {
        let b = num(v);
        (b.is_finite()).then_some(b as u64)
    }

    fn close(got: &[f32], want: &Value, what: &str, name: &str) {
        let want = want.as_array().expect("array");
        assert_eq!(got.len(), want.len(), "{name}: {what} length");
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            let w = num(w);
            assert!(
                (f64::from(*g) - w).abs() <= 1e-6,
                "{name}: {what}[{k}] = {g}, want {w}"
            );
        }
    }

    #[test]
    fn iswin_matches_reference() {
        let c = cases();
        let list = c["iswin"].as_array().expect("iswin cases");
        assert!(!list.is_empty());
        for case in list {
            let got = iswin(
                num(&case["loss_i"]),
                num(&case["loss_j"]),
                block(&case["block_i"]),
                block(&case["block_j"]),
                num(&case["epsilon"]),
            );
            assert_eq!(got, case["iswin"].as_bool().expect("bool"), "{case}");
        }
    }

    #[test]
    fn emit_matches_reference() {
        let c = cases();
        let list = c["emit"].as_array().expect("emit cases");
        assert!(!list.is_empty());
        for case in list {
            let w: Vec<f32> = case["weights_f32"]
                .as_array()
                .expect("weights")
                .iter()
                .map(|v| num(v) as f32)
                .collect();
            let (uids, values) = weights_for_emit(&w);
            let want_uids: Vec<Uid> = serde_json::from_value(case["emit_uids"].clone()).unwrap();
            let want_vals: Vec<u16> = serde_json::from_value(case["emit_u16"].clone()).unwrap();
            assert_eq!(uids, want_uids, "{case}");
            assert_eq!(values, want_vals, "{case}");
        }
    }

    #[test]
    fn steps_match_reference() {
        let c = cases();
        let steps = c["steps"].as_array().expect("steps");
        assert_eq!(steps.len(), 20);
        for step in steps {
            let parsed: StepJson = serde_json::from_value(step.clone()).expect("step parses");
            let name = parsed.name.clone().unwrap_or_default();
            let out = parsed.to_input().unwrap().run().unwrap();
            let exp = &step["expected"];
            for (k, uid) in parsed.uids.iter().enumerate() {
                let key = uid.to_string();
                assert_eq!(
                    out.stats.wins[k],
                    exp["wins"][&key].as_u64().unwrap(),
                    "{name}: wins of {uid}"
                );
                assert_eq!(
                    out.stats.win_rate[k],
                    num(&exp["win_rate"][&key]),
                    "{name}: win rate of {uid}"
                );
            }
            close(
                &out.step_weights,
                &exp["step_weights"],
                "step_weights",
                &name,
            );
            close(
                &out.new_weights_scattered_normalized,
                &exp["new_weights_scattered_normalized"],
                "scattered",
                &name,
            );
            close(&out.weights, &exp["weights"], "weights", &name);
            let next: Vec<Uid> = serde_json::from_value(exp["uids_to_eval_next"].clone()).unwrap();
            assert_eq!(out.uids_to_eval_next, next, "{name}: uids_to_eval_next");
            let eu: Vec<Uid> = serde_json::from_value(exp["emit_uids"].clone()).unwrap();
            let ev: Vec<u16> = serde_json::from_value(exp["emit_u16"].clone()).unwrap();
            assert_eq!(out.emit_uids, eu, "{name}: emit_uids");
            assert_eq!(out.emit_u16, ev, "{name}: emit_u16");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let input = StepInput {
            n_total_uids: 4,
            uids: vec![1, 5],
            n_batches: 1,
            epsilon: 0.01,
            temperature: 0.25,
            alpha: 0.9,
            sample_min: 2,
            blocks: vec![Some(1), Some(2)],
            losses: vec![vec![1.0], vec![2.0]],
            prev_weights: vec![0.0; 4],
        };
        assert_eq!(
            input.run(),
            Err(ScoringError::UidOutOfRange {
                uid: 5,
                n_total_uids: 4
            })
        );
        let mut dup = input.clone();
        dup.uids = vec![1, 1];
        assert_eq!(dup.run(), Err(ScoringError::DuplicateUid(1)));
        let mut short = input.clone();
        short.uids = vec![1, 2];
        short.losses = vec![vec![1.0], vec![]];
        assert!(matches!(
            short.run(),
            Err(ScoringError::Batches { uid: 2, .. })
        ));
    }

    /// Hostile input: the sizes of a step from outside are refused by
    /// their bounds before anything is allocated from them.
    #[test]
    fn step_sizes_are_bounded_before_allocating() {
        let c = cases();
        let base: StepJson = serde_json::from_value(c["steps"][0].clone()).unwrap();
        let too_large = |step: &StepJson, what: &str| match step.to_input() {
            Err(StepJsonError::Shape(ScoringError::TooLarge { what: w, .. })) => {
                assert_eq!(w, what)
            }
            other => panic!("{what}: expected TooLarge, got {other:?}"),
        };
        let mut s = base.clone();
        s.n_total_uids = usize::MAX;
        too_large(&s, "n_total_uids");
        s.n_total_uids = 1_000_000_000_000;
        too_large(&s, "n_total_uids");
        // Every uid without metadata: its +inf losses would be made from n_batches alone.
        let mut s = base.clone();
        s.uid_status = s
            .uids
            .iter()
            .map(|u| (u.to_string(), UidStatus::NoMetadata))
            .collect();
        s.n_batches = 1_000_000_000_000;
        too_large(&s, "n_batches");
        s.n_batches = MAX_BATCHES;
        s.uids = (0..100).collect();
        s.n_total_uids = 100;
        s.uid_status = s
            .uids
            .iter()
            .map(|u| (u.to_string(), UidStatus::NoMetadata))
            .collect();
        too_large(&s, "uids x n_batches");
        // Few losses, but hours of head-to-head comparisons.
        s.n_batches = 1000;
        s.uids = (0..3000).collect();
        s.n_total_uids = 3000;
        s.uid_status = s
            .uids
            .iter()
            .map(|u| (u.to_string(), UidStatus::NoMetadata))
            .collect();
        too_large(&s, "uids x uids x n_batches");
        let mut s = base.clone();
        s.sample_min = usize::MAX;
        too_large(&s, "sample_min");
        let mut s = base.clone();
        s.prev_weights = vec![JsonF64(0.0); MAX_UIDS + 1];
        too_large(&s, "the length of prev_weights");
        // The message names the field, the value and the bound.
        let mut s = base.clone();
        s.n_total_uids = 65_537;
        assert_eq!(
            s.to_input().unwrap_err().to_string(),
            "n_total_uids is 65537, over the limit of 65536"
        );
        // At the bounds themselves a step is accepted.
        let mut s = base.clone();
        s.n_total_uids = MAX_UIDS;
        s.prev_weights = vec![JsonF64(0.0); MAX_UIDS];
        s.sample_min = MAX_UIDS;
        let input = s.to_input().expect("a step at the bounds");
        assert_eq!(input.run().unwrap().weights.len(), MAX_UIDS);
        // StepInput built in code is held to the same bounds.
        let mut input = base.to_input().unwrap();
        input.n_total_uids = MAX_UIDS + 1;
        assert!(matches!(
            input.run(),
            Err(ScoringError::TooLarge {
                what: "n_total_uids",
                ..
            })
        ));
    }

    fn arb_step() -> impl Strategy<Value = StepInput> {
        (2usize..12, 1usize..4).prop_flat_map(|(n_total, n_batches)| {
            (
                proptest::sample::subsequence((0..n_total as u16).collect::<Vec<_>>(), 1..=n_total),
                proptest::collection::vec(
                    proptest::collection::vec(
                        prop_oneof![4 => 0.5f64..10.0, 1 => Just(f64::INFINITY)],
                        n_batches,
                    ),
                    n_total,
                ),
                proptest::collection::vec(proptest::option::weighted(0.9, 0u64..1000), n_total),
                proptest::collection::vec(0f32..1.0, n_total),
                1usize..40,
                prop_oneof![Just(0.25f64), Just(0.04)],
            )
                .prop_map(
                    move |(uids, losses, blocks, prev, sample_min, temperature)| {
                        let mut uids = uids;
                        uids.reverse();
                        StepInput {
                            n_total_uids: n_total,
                            n_batches,
                            epsilon: 0.01,
                            temperature,
                            alpha: 0.9,
                            sample_min,
                            blocks: uids.iter().map(|&u| blocks[usize::from(u)]).collect(),
                            losses: uids
                                .iter()
                                .map(|&u| losses[usize::from(u)].clone())
                                .collect(),
                            prev_weights: prev,
                            uids,
                        }
                    },
                )
        })
    }

    proptest! {
        #[test]
        fn step_weights_sum_to_one(input in arb_step()) {
            let out = input.run().unwrap();
            let s: f32 = out.step_weights.iter().sum();
            prop_assert!((s - 1.0).abs() < 1e-5, "sum {}", s);
            let s: f32 = out.new_weights_scattered_normalized.iter().sum();
            prop_assert!((s - 1.0).abs() < 1e-5, "sum {}", s);
            // The EMA of two distributions is a distribution (or all zero).
            let prev_sum: f32 = input.prev_weights.iter().sum();
            let mut normalised = input.clone();
            normalised.prev_weights = input.prev_weights.iter().map(|w| w / prev_sum).collect();
            let out = normalised.run().unwrap();
            let s: f32 = out.weights.iter().sum();
            prop_assert!((s - 1.0).abs() < 1e-4 || s == 0.0, "sum {}", s);
        }

        #[test]
        fn strictly_lower_loss_never_loses_weight(input in arb_step(), pick in 0usize..12) {
            let k = pick % input.uids.len();
            let base = input.run().unwrap();
            let mut better = input.clone();
            better.losses[k] = better.losses[k].iter().map(|l| if l.is_finite() { l * 0.5 } else { 1.0 }).collect();
            let improved = better.run().unwrap();
            let uid = usize::from(input.uids[k]);
            prop_assert!(improved.stats.win_rate[k] >= base.stats.win_rate[k]);
            prop_assert!(improved.step_weights[k] >= base.step_weights[k] * (1.0 - 1e-6));
            prop_assert!(improved.weights[uid] >= base.weights[uid] * (1.0 - 1e-6));
        }

        #[test]
        fn emit_keeps_the_largest_at_max(w in proptest::collection::vec(0f32..1.0, 0..20)) {
            let (uids, values) = weights_for_emit(&w);
            prop_assert_eq!(uids.len(), values.len());
            if w.iter().any(|&x| x > 0.0) {
                prop_assert_eq!(values.iter().copied().max(), Some(u16::MAX));
            } else {
                prop_assert!(uids.is_empty());
            }
            prop_assert!(values.iter().all(|&v| v > 0));
        }
    }
}

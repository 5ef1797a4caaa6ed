//! Competitions switched by block, read from TOML (`crates/core/schedules/`).
//!
//! A schedule file defines its competitions once (`[competitions.NAME]`)
//! and lists entries `[[entries]]` with a `start_block` and the competitions
//! that run from it with their reward `share` (and, where it changed between
//! entries, their `epsilon`). The entry active at a block is the last whose
//! start is at or before it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::epsilon::EpsilonFunc;
use super::RulesError;
use crate::model_id::CompetitionId;

/// The seed's rules (January 2024), the default.
pub const SN9_2024_01: &str = "sn9-2024-01";
/// Upstream's table at pretraining 6.0.4.
pub const SN9_LATER: &str = "sn9-later";
/// Two tiny competitions for `pretrain localnet` (later protocol).
pub const LOCALNET_TWO: &str = "localnet-two";
/// The schedules shipped in the binary, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        SN9_2024_01,
        include_str!("../../schedules/sn9-2024-01.toml"),
    ),
    (SN9_LATER, include_str!("../../schedules/sn9-later.toml")),
    (
        LOCALNET_TWO,
        include_str!("../../schedules/localnet-two.toml"),
    ),
];
/// Largest schedule file read.
pub const MAX_SCHEDULE_BYTES: u64 = 1 << 20;
/// The architectures this implementation can load and evaluate.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["GPT2LMHeadModel", "LlamaForCausalLM"];
/// The tokenizers this implementation has (all the GPT-2 BPE).
pub const SUPPORTED_TOKENIZERS: &[&str] = &[
    "gpt2",
    "openai-community/gpt2",
    "distilgpt2",
    "distilbert/distilgpt2",
];

/// How the wins of a competition are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WinsRule {
    /// Every batch compared, fixed epsilon, no filter (January 2024,
    /// [`crate::scoring`]).
    PerBatch,
    /// One mean loss per uid, the competitive-uid filter, then a round robin
    /// ([`super::wins`]).
    MeanLossCompetitive,
}

/// The scoring parameters of a competition.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringParams {
    /// Softmax temperature over win rates.
    pub temperature: f64,
    /// Moving-average factor of the weights.
    pub alpha: f64,
    /// Uids kept in the evaluation set.
    pub sample_min: usize,
    /// How wins are counted.
    pub wins: WinsRule,
}

/// Which rules of the subnet a schedule runs: it decides the model id
/// miners commit, admission and the validator's hash check, how a step is
/// scored and how weights are kept ([`super::protocol`] holds each rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// The January 2024 rules (`sn9-2024-01`): 4-field ids carrying the raw
    /// model hash, one per-batch competition at a time,
    /// [`crate::scoring::StepInput`].
    #[serde(rename = "seed")]
    Sn9Rules2024,
    /// The competition rules (pretraining 4.x-6.x): 5-field ids with the
    /// hotkey-bound secure hash and a competition id, one competition per
    /// validator step, per-competition moving averages summed by reward share.
    #[serde(rename = "later")]
    Competitions,
}

/// What a competition's models must satisfy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Fewest parameters.
    #[serde(default)]
    pub min_parameters: u64,
    /// Most parameters.
    pub max_parameters: u64,
    /// Tokens per evaluated sequence (`None`: not a text model).
    #[serde(default)]
    pub sequence_length: Option<usize>,
    /// Most bytes of the repo's files at the committed revision.
    pub max_bytes: u64,
    /// Allowed `architectures` (Hugging Face class names).
    pub architectures: Vec<String>,
    /// The tokenizer models are evaluated with (`None`: the model's own).
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Blocks between a commitment and its first evaluation.
    #[serde(default)]
    pub eval_block_delay: u64,
    /// The loss advantage of the earlier model.
    pub epsilon: EpsilonFunc,
    /// Dtype models are loaded in upstream (`float32`, `bfloat16`).
    #[serde(default = "default_dtype")]
    pub compute_dtype: String,
}

fn default_dtype() -> String {
    "float32".into()
}

/// One competition as scheduled in an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompetitionSpec {
    /// The id committed in a model id.
    pub id: CompetitionId,
    /// Upstream's name (`B3_MODEL`, …).
    pub name: String,
    /// Share of the subnet's rewards.
    pub reward_share: f64,
    /// What its models must satisfy.
    pub constraints: Constraints,
    /// How it is scored.
    pub scoring: ScoringParams,
}

/// Why this implementation refuses a competition's models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

/// A model's measured properties, checked against [`Constraints`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFacts<'a> {
    /// Parameter count.
    pub parameters: u64,
    /// The model's architecture (class name).
    pub architecture: &'a str,
}

impl CompetitionSpec {
    /// `Ok` if we can evaluate this competition's models, else why not
    /// (architecture, tokenizer or a non-text model).
    pub fn support(&self) -> Result<(), Unsupported> {
        let c = &self.constraints;
        if !c
            .architectures
            .iter()
            .any(|a| SUPPORTED_ARCHITECTURES.contains(&a.as_str()))
        {
            return Err(Unsupported(format!(
                "competition {} ({}): none of its architectures [{}] is supported (we run {})",
                self.id,
                self.name,
                c.architectures.join(", "),
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        if let Some(t) = &c.tokenizer {
            if !SUPPORTED_TOKENIZERS.contains(&t.as_str()) {
                return Err(Unsupported(format!(
                    "competition {} ({}): tokenizer {t} is not supported (we have the GPT-2 tokenizer)",
                    self.id, self.name
                )));
            }
        }
        if c.sequence_length.is_none() {
            return Err(Unsupported(format!(
                "competition {} ({}): no sequence length, not a text model",
                self.id, self.name
            )));
        }
        Ok(())
    }

    /// Checks a loaded model against the constraints (parameter range and architecture).
    pub fn check_model(&self, model: &ModelFacts<'_>) -> Result<(), Unsupported> {
        let c = &self.constraints;
        if !(c.min_parameters..=c.max_parameters).contains(&model.parameters) {
            return Err(Unsupported(format!(
                "{} parameters, outside competition {}'s range {}..={}",
                model.parameters, self.id, c.min_parameters, c.max_parameters
            )));
        }
        if !c.architectures.iter().any(|a| a == model.architecture) {
            return Err(Unsupported(format!(
                "architecture {} is not allowed in competition {} ([{}])",
                model.architecture,
                self.id,
                c.architectures.join(", ")
            )));
        }
        Ok(())
    }

    /// Checks the repo's total size before download.
    pub fn check_bytes(&self, total: u64) -> Result<(), Unsupported> {
        if total > self.constraints.max_bytes {
            return Err(Unsupported(format!(
                "{total} bytes, more than competition {}'s {}",
                self.id, self.constraints.max_bytes
            )));
        }
        Ok(())
    }

    /// The seed's competition parameters ([`crate::Tunables`]) for a
    /// per-batch competition with a fixed epsilon; `None` otherwise.
    pub fn seed_competition(&self) -> Option<crate::Tunables> {
        let EpsilonFunc::FixedEpsilon { epsilon } = self.constraints.epsilon else {
            return None;
        };
        if self.scoring.wins != WinsRule::PerBatch {
            return None;
        }
        Some(crate::Tunables {
            epsilon,
            temperature: self.scoring.temperature,
            alpha: self.scoring.alpha,
            sample_min: self.scoring.sample_min,
            sequence_length: self.constraints.sequence_length?,
            ..crate::Tunables::default()
        })
    }
}

/// The competitions that run from `start_block` on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleEntry {
    /// First block of the entry.
    pub start_block: u64,
    /// Its competitions, shares summing to 1.
    pub competitions: Vec<CompetitionSpec>,
}

impl ScheduleEntry {
    /// `(id, share)` of each competition, in order (what the subnet weights sum over).
    pub fn shares(&self) -> Vec<(CompetitionId, f64)> {
        self.competitions
            .iter()
            .map(|c| (c.id, c.reward_share))
            .collect()
    }

    /// The competition a validator evaluates at its `step`: each in turn
    /// (upstream's `competitions[global_step % len(competitions)]`).
    pub fn competition_for_step(&self, step: u64) -> &CompetitionSpec {
        // validate() guarantees at least one competition per entry.
        let n = self.competitions.len().max(1) as u64;
        &self.competitions[(step % n) as usize]
    }

    /// The competition with `id`, if scheduled.
    pub fn competition(&self, id: CompetitionId) -> Option<&CompetitionSpec> {
        self.competitions.iter().find(|c| c.id == id)
    }
}

/// A schedule of competitions by block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its name (a built-in's name or the file's `name`).
    pub name: String,
    /// What it is, where it comes from.
    pub description: String,
    /// Entries sorted by start block.
    pub entries: Vec<ScheduleEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCompetition {
    id: CompetitionId,
    constraints: Constraints,
    scoring: ScoringParams,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShare {
    competition: String,
    share: f64,
    #[serde(default)]
    epsilon: Option<EpsilonFunc>,
    #[serde(default)]
    eval_block_delay: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    start_block: u64,
    competitions: Vec<FileShare>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchedule {
    name: String,
    #[serde(default)]
    description: String,
    competitions: BTreeMap<String, FileCompetition>,
    entries: Vec<FileEntry>,
}

fn invalid(name: &str, msg: String) -> RulesError {
    RulesError::Invalid(format!("schedule {name}: {msg}"))
}

// The checks of [`Schedule::validate`], each saying what is wrong (the caller
// names the schedule).

// Entries come in strictly increasing start blocks.
fn check_start_blocks(entries: &[ScheduleEntry]) -> Result<(), String> {
    for pair in entries.windows(2) {
        if pair[1].start_block <= pair[0].start_block {
            return Err(format!(
                "entries must be sorted by increasing start_block: {} comes after {}",
                pair[1].start_block, pair[0].start_block
            ));
        }
    }
    Ok(())
}

// One entry: at least one competition, each valid with a distinct id, the
// seed's protocol alone, and shares summing to 1.
fn check_entry(e: &ScheduleEntry) -> Result<(), String> {
    let at = e.start_block;
    if e.competitions.is_empty() {
        return Err(format!("entry at block {at} has no competitions"));
    }
    let mut sum = 0.0;
    for (k, c) in e.competitions.iter().enumerate() {
        let here = format!("entry at block {at}, competition {} ({})", c.id, c.name);
        if e.competitions[..k].iter().any(|o| o.id == c.id) {
            return Err(format!("{here}: id {} appears twice", c.id));
        }
        if !(c.reward_share.is_finite() && (0.0..=1.0).contains(&c.reward_share)) {
            return Err(format!("{here}: share {} is not in [0, 1]", c.reward_share));
        }
        sum += c.reward_share;
        check_constraints(&c.constraints).map_err(|why| format!("{here}: {why}"))?;
        check_scoring(&c.scoring).map_err(|why| format!("{here}: {why}"))?;
    }
    // The seed's validator keeps one moving average over all uids:
    // it cannot split rewards between competitions.
    if e.competitions.len() > 1
        && e.competitions
            .iter()
            .any(|c| c.scoring.wins == WinsRule::PerBatch)
    {
        return Err(format!(
            "entry at block {at} runs {} competitions, and per_batch wins (the seed's \
             protocol) allow one competition per entry",
            e.competitions.len()
        ));
    }
    // math.isclose(sum, 1.0): relative tolerance 1e-9.
    if (sum - 1.0).abs() > 1e-9 {
        let list: Vec<String> = e
            .competitions
            .iter()
            .map(|c| format!("{} {}", c.name, c.reward_share))
            .collect();
        return Err(format!(
            "the shares of the entry at block {at} sum to {sum}, not 1 ({})",
            list.join(" + ")
        ));
    }
    Ok(())
}

// A competition's constraints: a valid epsilon, a parameter range that is
// not empty, and no zero sequence length.
fn check_constraints(k: &Constraints) -> Result<(), String> {
    k.epsilon.validate().map_err(|err| err.to_string())?;
    if k.min_parameters > k.max_parameters {
        return Err(format!(
            "min_parameters {} > max_parameters {}",
            k.min_parameters, k.max_parameters
        ));
    }
    if k.sequence_length == Some(0) {
        return Err("sequence_length 0".into());
    }
    Ok(())
}

// A competition's scoring parameters: a positive temperature, alpha in
// [0, 1], and at least one sample.
fn check_scoring(s: &ScoringParams) -> Result<(), String> {
    if !(s.temperature.is_finite() && s.temperature > 0.0) {
        return Err(format!("temperature {} must be > 0", s.temperature));
    }
    if !(s.alpha.is_finite() && (0.0..=1.0).contains(&s.alpha)) {
        return Err(format!("alpha {} is not in [0, 1]", s.alpha));
    }
    if s.sample_min == 0 {
        return Err("sample_min must be at least 1".into());
    }
    Ok(())
}

// A schedule runs either the seed's protocol (per_batch wins) or the later one.
fn check_one_protocol(entries: &[ScheduleEntry]) -> Result<(), String> {
    let kinds: std::collections::BTreeSet<_> = entries
        .iter()
        .flat_map(|e| &e.competitions)
        .map(|c| c.scoring.wins == WinsRule::PerBatch)
        .collect();
    if kinds.len() > 1 {
        return Err(
            "mixes per_batch and mean_loss_competitive competitions: a schedule runs either \
             the seed's protocol or the later one"
                .into(),
        );
    }
    Ok(())
}

impl Schedule {
    /// A built-in schedule by name, or else the TOML file at that path.
    pub fn by_name_or_file(name_or_path: &str) -> Result<Self, RulesError> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::from_toml(name_or_path, text);
        }
        let path = Path::new(name_or_path);
        let text =
            crate::bounded::read_regular_to_string(path, MAX_SCHEDULE_BYTES).map_err(|source| {
                let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                RulesError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        source.kind(),
                        format!(
                            "{source} (and not a built-in schedule: {})",
                            names.join(", ")
                        ),
                    ),
                }
            })?;
        Self::from_toml(name_or_path, &text)
    }

    /// The default schedule (the seed's rules).
    pub fn default_schedule() -> Self {
        // The built-in text is checked by the tests; failing here is a build defect.
        Self::by_name_or_file(SN9_2024_01).expect("built-in schedule sn9-2024-01 is valid")
    }

    /// Parses and validates a schedule; `origin` names it in errors.
    pub fn from_toml(origin: &str, text: &str) -> Result<Self, RulesError> {
        let file: FileSchedule = toml::from_str(text).map_err(|e| RulesError::Parse {
            name: origin.to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let name = file.name.clone();
        let mut entries = Vec::with_capacity(file.entries.len());
        for e in &file.entries {
            let mut comps = Vec::with_capacity(e.competitions.len());
            for s in &e.competitions {
                let def = file.competitions.get(&s.competition).ok_or_else(|| {
                    invalid(
                        &name,
                        format!(
                            "entry at block {} names competition {:?}, which is not defined in [competitions]",
                            e.start_block, s.competition
                        ),
                    )
                })?;
                let mut constraints = def.constraints.clone();
                if let Some(eps) = s.epsilon {
                    constraints.epsilon = eps;
                }
                if let Some(d) = s.eval_block_delay {
                    constraints.eval_block_delay = d;
                }
                comps.push(CompetitionSpec {
                    id: def.id,
                    name: s.competition.clone(),
                    reward_share: s.share,
                    constraints,
                    scoring: def.scoring,
                });
            }
            entries.push(ScheduleEntry {
                start_block: e.start_block,
                competitions: comps,
            });
        }
        let schedule = Self {
            name,
            description: file.description,
            entries,
        };
        schedule.validate()?;
        Ok(schedule)
    }

    /// Checks every rule: entries sorted by strictly increasing start block;
    /// in each, at least one competition, distinct ids, shares in [0, 1]
    /// summing to 1 (as upstream's `math.isclose`); valid epsilons and
    /// scoring parameters; `min_parameters <= max_parameters`.
    pub fn validate(&self) -> Result<(), RulesError> {
        if self.entries.is_empty() {
            return Err(invalid(&self.name, "no entries".into()));
        }
        check_start_blocks(&self.entries)
            .and_then(|()| self.entries.iter().try_for_each(check_entry))
            .and_then(|()| check_one_protocol(&self.entries))
            .map_err(|why| invalid(&self.name, why))
    }

    /// The protocol of this schedule: [`Protocol::Sn9Rules2024`] when every
    /// competition counts wins per batch, [`Protocol::Competitions`] otherwise
    /// ([`Schedule::validate`] refuses a mix).
    pub fn protocol(&self) -> Protocol {
        let per_batch = self
            .entries
            .iter()
            .flat_map(|e| &e.competitions)
            .all(|c| c.scoring.wins == WinsRule::PerBatch);
        if per_batch {
            Protocol::Sn9Rules2024
        } else {
            Protocol::Competitions
        }
    }

    /// The entry active at `block`: the last whose start is at or before it.
    pub fn active_entry(&self, block: u64) -> Result<&ScheduleEntry, RulesError> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.start_block <= block)
            .ok_or_else(|| RulesError::NoEntry {
                schedule: self.name.clone(),
                block,
                first: self.entries.first().map_or(0, |e| e.start_block),
            })
    }

    /// The entry active at `block`; with no block (offline), the latest entry.
    pub fn entry_at(&self, block: Option<u64>) -> Result<&ScheduleEntry, RulesError> {
        match block {
            Some(b) => self.active_entry(b),
            None => self.entries.last().ok_or_else(|| {
                RulesError::Invalid(format!("schedule {} has no entries", self.name))
            }),
        }
    }

    /// The competitions a commitment names at `block`, each one this build
    /// can run: the active entry's under [`Protocol::Competitions`]; `None`
    /// under [`Protocol::Sn9Rules2024`], whose commitments name none.
    pub fn named_competitions_at(
        &self,
        block: u64,
    ) -> Result<Option<&[CompetitionSpec]>, RulesError> {
        if !self.protocol().has_competition_ids() {
            return Ok(None);
        }
        let entry = self.active_entry(block)?;
        for c in &entry.competitions {
            c.support().map_err(|e| {
                RulesError::Invalid(format!("schedule {} at block {block}: {e}", self.name))
            })?;
        }
        Ok(Some(&entry.competitions))
    }

    /// Competition `id` as scheduled at `block` (`None`: not running then).
    pub fn competition_at(
        &self,
        id: CompetitionId,
        block: u64,
    ) -> Result<Option<&CompetitionSpec>, RulesError> {
        Ok(self.active_entry(block)?.competition(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
name = "two"
[competitions.A]
id = 1
constraints = { max_parameters = 10, max_bytes = 100, architectures = ["GPT2LMHeadModel"], sequence_length = 8, epsilon = { kind = "FixedEpsilon", epsilon = 0.01 } }
scoring = { temperature = 0.01, alpha = 0.5, sample_min = 5, wins = "mean_loss_competitive" }
[competitions.B]
id = 2
constraints = { max_parameters = 10, max_bytes = 100, architectures = ["LlamaForCausalLM"], sequence_length = 8, tokenizer = "Xenova/gpt-4", epsilon = { kind = "FixedEpsilon", epsilon = 0.01 } }
scoring = { temperature = 0.01, alpha = 0.5, sample_min = 5, wins = "mean_loss_competitive" }
[[entries]]
start_block = 10
competitions = [{ competition = "A", share = 1.0 }]
[[entries]]
start_block = 20
competitions = [{ competition = "A", share = 0.25, eval_block_delay = 3 }, { competition = "B", share = SHARE }]
"#;

    fn two(share: &str) -> Result<Schedule, RulesError> {
        Schedule::from_toml("two", &TWO.replace("SHARE", share))
    }

    #[test]
    fn entry_at_a_block_is_the_active_one_and_offline_the_latest() {
        let s = two("0.75").unwrap();
        assert_eq!(s.entry_at(Some(15)).unwrap().start_block, 10);
        assert_eq!(s.entry_at(Some(25)).unwrap().start_block, 20);
        assert_eq!(s.entry_at(None).unwrap().start_block, 20);
        assert!(matches!(
            s.entry_at(Some(5)),
            Err(RulesError::NoEntry {
                block: 5,
                first: 10,
                ..
            })
        ));
    }

    #[test]
    fn active_entry_is_the_last_started() {
        let s = two("0.75").unwrap();
        assert!(matches!(s.active_entry(9), Err(RulesError::NoEntry { .. })));
        assert_eq!(s.active_entry(10).unwrap().start_block, 10);
        assert_eq!(s.active_entry(19).unwrap().start_block, 10);
        assert_eq!(s.active_entry(20).unwrap().start_block, 20);
        assert_eq!(s.active_entry(u64::MAX).unwrap().start_block, 20);
        assert!(s.competition_at(2, 15).unwrap().is_none());
        let e = s.active_entry(20).unwrap();
        let turns: Vec<i64> = (0..5).map(|k| e.competition_for_step(k).id).collect();
        assert_eq!(turns, vec![1, 2, 1, 2, 1]);
        let a = s.competition_at(1, 25).unwrap().unwrap();
        assert_eq!((a.reward_share, a.constraints.eval_block_delay), (0.25, 3));
    }

    #[test]
    fn shares_must_sum_to_one() {
        let err = two("0.7").unwrap_err().to_string();
        assert!(err.contains("sum to 0.95"), "{err}");
        assert!(err.contains("block 20"), "{err}");
    }

    #[test]
    fn unsorted_unknown_and_typo_are_refused() {
        let swapped = TWO
            .replace("SHARE", "0.75")
            .replace("start_block = 10", "start_block = 30");
        assert!(Schedule::from_toml("x", &swapped)
            .unwrap_err()
            .to_string()
            .contains("sorted"));
        let unknown = TWO
            .replace("SHARE", "0.75")
            .replace("\"B\", share", "\"C\", share");
        assert!(Schedule::from_toml("x", &unknown)
            .unwrap_err()
            .to_string()
            .contains("\"C\""));
        let typo = TWO.replace("SHARE", "0.75").replace("alpha =", "alhpa =");
        assert!(matches!(
            Schedule::from_toml("x", &typo),
            Err(RulesError::Parse { .. })
        ));
    }

    #[test]
    fn protocol_follows_the_wins_rule_and_mixes_are_refused() {
        assert_eq!(
            Schedule::default_schedule().protocol(),
            Protocol::Sn9Rules2024
        );
        let later = Schedule::by_name_or_file(SN9_LATER).unwrap();
        assert_eq!(later.protocol(), Protocol::Competitions);
        assert_eq!(two("0.75").unwrap().protocol(), Protocol::Competitions);
        let local = Schedule::by_name_or_file(LOCALNET_TWO).unwrap();
        assert_eq!(local.protocol(), Protocol::Competitions);
        let e = local.active_entry(0).unwrap();
        assert_eq!(e.shares(), vec![(1, 0.6), (2, 0.4)]);
        assert!(e.competitions.iter().all(|c| c.support().is_ok()));
        let mixed = TWO.replace("SHARE", "0.75").replacen(
            "wins = \"mean_loss_competitive\"",
            "wins = \"per_batch\"",
            1,
        );
        let err = Schedule::from_toml("x", &mixed).unwrap_err().to_string();
        assert!(err.contains("per_batch"), "{err}");
    }

    #[test]
    fn only_the_competitions_name_competitions() {
        let seed = Schedule::default_schedule();
        assert!(seed.named_competitions_at(0).unwrap().is_none());
        let two = Schedule::by_name_or_file(LOCALNET_TWO).unwrap();
        let ids: Vec<CompetitionId> = two
            .named_competitions_at(0)
            .unwrap()
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn support_says_why() {
        let s = two("0.75").unwrap();
        let e = s.active_entry(20).unwrap();
        assert!(e.competition(1).unwrap().support().is_ok());
        let why = e.competition(2).unwrap().support().unwrap_err().0;
        assert!(why.contains("Xenova/gpt-4"), "{why}");
    }
}

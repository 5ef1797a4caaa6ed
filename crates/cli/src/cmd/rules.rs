//! `pretrain rules KIND FILE|-`: replays one case of the later protocol's
//! rules (the format of `testdata/later/vectors.json`, one case per file)
//! and prints it with the computed fields filled in: an operator's "why did
//! my model lose?", and how the reference vectors are checked.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use pretrain_core::bounded::{read_limited, read_regular};
use pretrain_core::rules::check::check_download;
use pretrain_core::rules::{
    score_competition, CompetitionTracker, Contender, EpsilonFunc, Schedule,
};
use pretrain_core::scoring::{JsonF64, Uid};
use pretrain_core::{secure_hash, CompetitionId, CompetitionModelId, CompetitionModelIdError};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::out::print_json;

/// Largest case file (or stdin) read.
pub const MAX_CASE_BYTES: u64 = 16 << 20;
/// Largest metagraph a `weights` case may describe (uids are 16-bit).
pub const MAX_NEURONS: usize = 1 << 16;
/// Most weights (competitions x neurons) a `weights` case may make the tracker hold.
pub const MAX_WEIGHT_CELLS: usize = 1 << 24;

/// What a case computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RulesKind {
    /// `{model_hash, hotkey}` -> `secure_hash`.
    SecureHash,
    /// `{input}` -> `parsed`, `roundtrip`, `len_bytes` (or `error`).
    ModelId,
    /// `{chain_str, downloaded_hash, hotkey}` -> `accepted` (and `reason`).
    HashCheck,
    /// `{func, current_block, model_block}` -> `epsilon`.
    Epsilon,
    /// `{uids, uid_to_score, uid_to_block, epsilon_func, current_block, filter}`
    /// -> `competitive_uids`, `wins`, `win_rate`, `softmax_step_weights`.
    Wins,
    /// `{num_neurons, alpha, recorded_steps, reset_to, active_competitions}`
    /// -> `per_competition`, `subnet_weights`.
    Weights,
    /// `{block}` -> the active entry's `competitions`.
    Schedule,
    /// `{hotkey, uids, values, version_key, reveal_round}` -> only `{commit, reveal_round,
    /// payload}`: a commit-reveal v4 commit under drand quicknet's key.
    TimelockCommit,
    /// `{commit, signature}` -> only `{hotkey, uids, values, version_key}`: the commit opened.
    TimelockReveal,
}

/// Arguments of `pretrain rules`.
#[derive(Args, Debug)]
pub struct RulesArgs {
    /// What the case computes.
    #[arg(value_enum)]
    pub kind: RulesKind,
    /// JSON file with one case (`-` reads stdin).
    pub file: PathBuf,
    /// Schedule of `schedule` cases: a built-in name (sn9-2024-01, sn9-later) or a TOML file.
    #[arg(long = "schedule", default_value = "sn9-later")]
    pub schedule: String,
    /// Softmax temperature of `wins` cases that carry none (upstream's since 4.0.0).
    #[arg(long = "temperature", default_value_t = 0.01)]
    pub temperature: f64,
}

#[derive(Deserialize)]
struct SecureHashCase {
    model_hash: String,
    hotkey: String,
}

#[derive(Deserialize)]
struct ModelIdCase {
    input: String,
}

#[derive(Deserialize)]
struct HashCheckCase {
    chain_str: String,
    downloaded_hash: String,
    hotkey: String,
}

#[derive(Deserialize)]
struct EpsilonCase {
    func: EpsilonFunc,
    current_block: u64,
    model_block: u64,
}

#[derive(Deserialize)]
struct WinsCase {
    uids: Vec<Uid>,
    uid_to_score: Vec<(Uid, JsonF64)>,
    uid_to_block: Vec<(Uid, u64)>,
    epsilon_func: EpsilonFunc,
    current_block: u64,
    #[serde(default = "yes")]
    filter: bool,
    #[serde(default)]
    temperature: Option<f64>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct RecordedStep {
    competition_id: CompetitionId,
    weights: Vec<f32>,
}

#[derive(Deserialize)]
struct WeightsCase {
    #[serde(alias = "num_neurons_initial")]
    num_neurons: usize,
    alpha: f64,
    recorded_steps: Vec<RecordedStep>,
    #[serde(default)]
    reset_to: Option<Vec<CompetitionId>>,
    active_competitions: Vec<(CompetitionId, f64)>,
}

#[derive(Deserialize)]
struct ScheduleCase {
    block: u64,
}

/// Runs one case and prints it (one compact JSON line, as every command) with the computed fields set.
pub fn run(args: RulesArgs) -> anyhow::Result<()> {
    let from_stdin = args.file.as_os_str() == "-";
    let bytes = if from_stdin {
        read_limited(std::io::stdin().lock(), MAX_CASE_BYTES, "stdin").context("reading stdin")?
    } else {
        read_regular(&args.file, MAX_CASE_BYTES)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let kind = args
        .kind
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string());
    let source = if from_stdin {
        "stdin".to_string()
    } else {
        args.file.display().to_string()
    };
    let invalid = format!("{source} is not a valid {kind} case");
    let case: Value = serde_json::from_slice(&bytes).context(invalid.clone())?;
    let Value::Object(mut out) = case.clone() else {
        bail!("{invalid}: expected a JSON object");
    };
    let computed = compute(&args, case, &invalid)?;
    if matches!(
        args.kind,
        RulesKind::TimelockCommit | RulesKind::TimelockReveal
    ) {
        // The contract: these print their outputs alone.
        return print_json(&Value::Object(computed));
    }
    for (k, v) in computed {
        out.insert(k, v);
    }
    print_json(&Value::Object(out))
}

/// The case's inputs as `T`; a missing or ill-typed field names the case.
fn inputs<T: serde::de::DeserializeOwned>(case: Value, invalid: &str) -> anyhow::Result<T> {
    serde_json::from_value(case).context(invalid.to_string())
}

/// The fields a case of `args.kind` computes (they replace the case's own).
fn compute(args: &RulesArgs, case: Value, invalid: &str) -> anyhow::Result<Map<String, Value>> {
    match args.kind {
        RulesKind::TimelockCommit => super::timelock::commit(inputs(case, invalid)?),
        RulesKind::TimelockReveal => super::timelock::reveal(inputs(case, invalid)?),
        RulesKind::SecureHash => Ok(secure_hash_fields(inputs(case, invalid)?)),
        RulesKind::ModelId => model_id_fields(inputs(case, invalid)?),
        RulesKind::HashCheck => Ok(hash_check_fields(inputs(case, invalid)?)),
        RulesKind::Epsilon => epsilon_fields(inputs(case, invalid)?, invalid),
        RulesKind::Wins => wins_fields(inputs(case, invalid)?, args.temperature, invalid),
        RulesKind::Weights => weights_fields(inputs(case, invalid)?, invalid),
        RulesKind::Schedule => schedule_fields(inputs(case, invalid)?, &args.schedule),
    }
}

/// `secure_hash` and the preimage it hashes.
fn secure_hash_fields(c: SecureHashCase) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert(
        "preimage_utf8".into(),
        json!(format!("{}{}", c.model_hash, c.hotkey)),
    );
    out.insert(
        "secure_hash".into(),
        json!(secure_hash(&c.model_hash, &c.hotkey)),
    );
    out
}

/// The parsed id and its round trip, or the error upstream's parser raises.
fn model_id_fields(c: ModelIdCase) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    match CompetitionModelId::from_compressed_str(&c.input) {
        Ok(id) => {
            out.insert("parsed".into(), serde_json::to_value(&id)?);
            out.insert("roundtrip".into(), json!(id.to_compressed_str()));
            out.insert("len_bytes".into(), json!(c.input.len()));
            out.insert("error".into(), Value::Null);
        }
        Err(e) => {
            let name = match e {
                CompetitionModelIdError::TooFewParts(_) => "IndexError",
                CompetitionModelIdError::BadCompetitionId(_) => "ValueError",
                _ => "OutOfRange",
            };
            out.insert("error".into(), json!(name));
            out.insert("message".into(), json!(e.to_string()));
            for k in ["parsed", "roundtrip", "len_bytes"] {
                out.insert(k.into(), Value::Null);
            }
        }
    }
    Ok(out)
}

/// Whether a download with this hash matches the chain's id, and why not.
fn hash_check_fields(c: HashCheckCase) -> Map<String, Value> {
    let mut out = Map::new();
    let verdict = CompetitionModelId::from_compressed_str(&c.chain_str)
        .map_err(|e| format!("no valid metadata on the chain: {e}"))
        .and_then(|id| {
            check_download(&id, &c.downloaded_hash, &c.hotkey).map_err(|e| e.to_string())
        });
    out.insert("accepted".into(), json!(verdict.is_ok()));
    out.insert(
        "expected_secure_hash".into(),
        json!(secure_hash(&c.downloaded_hash, &c.hotkey)),
    );
    out.insert(
        "reason".into(),
        verdict.err().map_or(Value::Null, Value::from),
    );
    out
}

/// The epsilon of a model of that age.
fn epsilon_fields(c: EpsilonCase, invalid: &str) -> anyhow::Result<Map<String, Value>> {
    c.func.validate().context(invalid.to_string())?;
    let mut out = Map::new();
    out.insert(
        "epsilon".into(),
        json!(c.func.compute_epsilon(c.current_block, c.model_block)),
    );
    Ok(out)
}

/// One competition's step: the competitive uids, wins, win rates and
/// softmax weights (`default_temperature` where the case gives none).
fn wins_fields(
    c: WinsCase,
    default_temperature: f64,
    invalid: &str,
) -> anyhow::Result<Map<String, Value>> {
    c.epsilon_func.validate().context(invalid.to_string())?;
    let temperature = c.temperature.unwrap_or(default_temperature);
    if !(temperature.is_finite() && temperature > 0.0) {
        bail!("{invalid}: temperature {temperature} must be > 0");
    }
    let contenders = contenders(&c).context(invalid.to_string())?;
    let step = score_competition(
        &contenders,
        &c.epsilon_func,
        c.current_block,
        temperature,
        c.filter,
    )?;
    let mut out = Map::new();
    out.insert("competitive_uids".into(), json!(step.competitive_uids));
    out.insert("wins".into(), json!(step.wins.wins));
    out.insert("win_rate".into(), json!(step.wins.win_rate));
    let sw: Vec<(Uid, f64)> = step
        .step_weights
        .iter()
        .map(|&(u, w)| (u, f64::from(w)))
        .collect();
    out.insert("softmax_step_weights".into(), json!(sw));
    out.insert("temperature".into(), json!(temperature));
    Ok(out)
}

/// The tracker's moving averages per competition and the subnet's weights
/// after the recorded steps (and the reset, if any).
fn weights_fields(c: WeightsCase, invalid: &str) -> anyhow::Result<Map<String, Value>> {
    check_weights_bounds(&c, invalid)?;
    let mut tracker = CompetitionTracker::new(c.num_neurons);
    for s in &c.recorded_steps {
        tracker.record(s.competition_id, &s.weights, c.alpha);
    }
    if let Some(ids) = &c.reset_to {
        tracker.reset_competitions(ids);
    }
    let per: Map<String, Value> = tracker
        .all_weights()
        .iter()
        .map(|(id, w)| (id.to_string(), json!(widen(w))))
        .collect();
    let mut out = Map::new();
    out.insert("per_competition".into(), Value::Object(per));
    out.insert(
        "subnet_weights".into(),
        json!(widen(&tracker.subnet_weights(&c.active_competitions))),
    );
    Ok(out)
}

/// Refuses a `weights` case whose tracker would be out of bounds, before it is built.
fn check_weights_bounds(c: &WeightsCase, invalid: &str) -> anyhow::Result<()> {
    if c.num_neurons > MAX_NEURONS {
        bail!(
            "{invalid}: num_neurons {} is more than {MAX_NEURONS}",
            c.num_neurons
        );
    }
    if !(c.alpha.is_finite() && (0.0..=1.0).contains(&c.alpha)) {
        bail!("{invalid}: alpha {} is not in [0, 1]", c.alpha);
    }
    let widest = c
        .recorded_steps
        .iter()
        .map(|s| s.weights.len())
        .fold(c.num_neurons, usize::max);
    if widest > MAX_NEURONS {
        bail!("{invalid}: a recorded step has {widest} weights, more than {MAX_NEURONS}");
    }
    // Every competition keeps a vector over the whole metagraph: bound the total.
    let ids: BTreeSet<CompetitionId> = c.recorded_steps.iter().map(|s| s.competition_id).collect();
    if ids.len().saturating_mul(widest) > MAX_WEIGHT_CELLS {
        bail!(
            "{invalid}: {} competitions x {widest} neurons is more than {MAX_WEIGHT_CELLS} weights",
            ids.len()
        );
    }
    Ok(())
}

/// The competitions of the schedule's entry active at the case's block.
fn schedule_fields(c: ScheduleCase, schedule: &str) -> anyhow::Result<Map<String, Value>> {
    let schedule = Schedule::by_name_or_file(schedule)
        .with_context(|| format!("loading schedule {schedule}"))?;
    let entry = schedule.active_entry(c.block)?;
    let comps: Vec<Value> = entry
        .competitions
        .iter()
        .map(|comp| {
            json!({
                "id": comp.id,
                "name": comp.name,
                "reward_percentage": comp.reward_share,
                "epsilon": comp.constraints.epsilon,
                "constraints": comp.constraints,
                "scoring": comp.scoring,
                "refused": comp.support().err().map(|e| e.0),
            })
        })
        .collect();
    let mut out = Map::new();
    out.insert("schedule".into(), json!(schedule.name));
    out.insert("start_block".into(), json!(entry.start_block));
    out.insert("competitions".into(), Value::Array(comps));
    Ok(out)
}

/// Float32 weights as the float64 numbers they are (`0.30000001192092896`).
fn widen(w: &[f32]) -> Vec<f64> {
    w.iter().map(|&v| f64::from(v)).collect()
}

/// One contender per uid of `uids`, in that order; both maps must cover
/// exactly those uids, once each.
fn contenders(c: &WinsCase) -> anyhow::Result<Vec<Contender>> {
    let mut seen = BTreeSet::new();
    for u in &c.uids {
        if !seen.insert(*u) {
            bail!("uid {u} appears twice in uids");
        }
    }
    for (what, keys) in [
        (
            "uid_to_score",
            c.uid_to_score.iter().map(|p| p.0).collect::<Vec<_>>(),
        ),
        (
            "uid_to_block",
            c.uid_to_block.iter().map(|p| p.0).collect::<Vec<_>>(),
        ),
    ] {
        let set: BTreeSet<Uid> = keys.iter().copied().collect();
        if set.len() != keys.len() {
            bail!("{what} lists a uid twice");
        }
        if set != seen {
            bail!("{what} must have one entry per uid of uids");
        }
    }
    Ok(c.uids
        .iter()
        .map(|&uid| Contender {
            uid,
            score: c
                .uid_to_score
                .iter()
                .find(|p| p.0 == uid)
                .map_or(f64::NAN, |p| p.1 .0),
            block: c
                .uid_to_block
                .iter()
                .find(|p| p.0 == uid)
                .map_or(0, |p| p.1),
        })
        .collect())
}

// The competition selection of mine, validate, upload and localnet lives in
// `competition.rs`; these names stay reachable from here.
pub use super::competition::{CompetitionArgs, ScheduleArgs};

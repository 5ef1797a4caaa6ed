//! Reading the JSON Lines files the miner, the validator and the local
//! subnet append to. Lines that do not parse (a line cut short by a crash)
//! are skipped, so a report can always be made from what is there.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use pretrain_core::metrics::{StepReport, TrainRow};
use serde_json::Value;

use crate::ReportError;

/// How deep below the given directory metrics files are looked for.
const MAX_DEPTH: usize = 6;
/// Metrics files larger than this are read only up to it (a report is a summary).
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// A miner run: average training loss per epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRun {
    /// The run directory, relative to the report's directory.
    pub label: String,
    /// `(epoch, average loss)`, by epoch.
    pub epochs: Vec<(u64, f64)>,
}

/// One uid at one validator step.
#[derive(Debug, Clone, PartialEq)]
pub struct UidPoint {
    /// Mean loss over the step's batches (+inf for a model that failed).
    pub mean_loss: f64,
    /// Win rate at that step, when recorded.
    pub win_rate: Option<f64>,
    /// Weight after that step.
    pub weight: f64,
}

/// One validator evaluation step.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatorStep {
    /// Step number.
    pub step: u64,
    /// Chain block at the step, when recorded.
    pub block: Option<u64>,
    /// The evaluated uids.
    pub uids: BTreeMap<u16, UidPoint>,
    /// The competition evaluated (later protocol: one per step); `None` for
    /// the seed's validator, which evaluates every model at each step.
    pub competition: Option<i64>,
}

/// A validator's steps.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatorRun {
    /// The validator's directory, relative to the report's directory.
    pub label: String,
    /// Steps in order.
    pub steps: Vec<ValidatorStep>,
}

/// Incentive of each uid over time, from a local subnet's leaderboard log.
#[derive(Debug, Clone, PartialEq)]
pub struct IncentiveRun {
    /// The directory of the log, relative to the report's directory.
    pub label: String,
    /// `(seconds since start, uid -> incentive)`.
    pub points: Vec<(f64, BTreeMap<u16, f64>)>,
    /// The last leaderboard, as logged (for the summary table).
    pub last: Vec<Value>,
}

/// Everything found under a directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    /// Miner runs.
    pub training: Vec<TrainingRun>,
    /// Validators.
    pub validators: Vec<ValidatorRun>,
    /// Local subnet leaderboards.
    pub incentive: Vec<IncentiveRun>,
    /// Lines of the files that were not JSON objects (cut, not UTF-8),
    /// skipped.
    pub skipped_lines: usize,
}

impl Collected {
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.training.is_empty() && self.validators.is_empty() && self.incentive.is_empty()
    }
}

/// Finds and reads every `metrics.jsonl` and `leaderboard.jsonl` under `dir`.
pub fn collect(dir: &Path) -> Result<Collected, ReportError> {
    let meta = fs::metadata(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ReportError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory"),
        });
    }
    let mut files = Vec::new();
    find_files(dir, 0, &mut files);
    files.sort();
    let mut out = Collected::default();
    for file in files {
        let label = file
            .parent()
            .and_then(|p| p.strip_prefix(dir).ok())
            .map(|p| p.display().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| ".".to_string());
        let read = read_lines(&file)?;
        out.skipped_lines += read.skipped;
        let lines = read.values;
        if file.file_name().is_some_and(|n| n == "leaderboard.jsonl") {
            let run = parse_leaderboard(label, &lines);
            if !run.points.is_empty() {
                out.incentive.push(run);
            }
        } else if lines.iter().any(is_validator_line) {
            let run = parse_validator(label, &lines);
            if !run.steps.is_empty() {
                out.validators.push(run);
            }
        } else {
            let run = parse_training(label, &lines);
            if !run.epochs.is_empty() {
                out.training.push(run);
            }
        }
    }
    Ok(out)
}

/// Regular files only (no links followed), so a report never wanders off.
fn find_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            // A validator's downloaded models hold no metrics: skip the big tree.
            if entry.file_name() != "models" {
                find_files(&path, depth + 1, out);
            }
        } else if kind.is_file()
            && matches!(
                entry.file_name().to_str(),
                Some("metrics.jsonl" | "leaderboard.jsonl")
            )
        {
            out.push(path);
        }
    }
}

fn read_lines(path: &Path) -> Result<Lines, ReportError> {
    use std::io::Read;
    let file = fs::File::open(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ReportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(parse_lines(&bytes, MAX_FILE_BYTES))
}

/// The JSON objects of a JSON Lines text, read line by line: a line that
/// is not UTF-8, not JSON or not an object (a line cut by a full disk, a
/// stray byte) is skipped and counted, never failing the whole file. Past
/// `cap` bytes the rest is left out, and the line the cap cuts is dropped
/// whole (never half a character, never half a line).
pub(crate) fn parse_lines(bytes: &[u8], cap: u64) -> Lines {
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let mut text = bytes;
    if text.len() > cap {
        text = &text[..cap];
        // The last, cut line is not a line.
        let end = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        text = &text[..end];
    }
    let mut out = Lines::default();
    for raw in text.split(|&b| b == b'\n') {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match std::str::from_utf8(raw)
            .ok()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
        {
            Some(v) => out.values.push(v),
            None => out.skipped += 1,
        }
    }
    out
}

/// What [`parse_lines`] read.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    /// The JSON objects, in order.
    pub values: Vec<Value>,
    /// Lines that were not one.
    pub skipped: usize,
}

fn is_validator_line(v: &Value) -> bool {
    v.get("weights").is_some() && (v.get("losses").is_some() || v.get("uids").is_some())
}

/// A number, or the strings `inf`/`Infinity`/`NaN` some writers use for non-finite values.
fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "inf" | "+inf" | "infinity" | "+infinity" => Some(f64::INFINITY),
            "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
            "nan" => Some(f64::NAN),
            other => other.parse().ok(),
        },
        // The validator writes a failed model's loss as null (JSON has no inf).
        Value::Null => Some(f64::INFINITY),
        _ => None,
    }
}

fn uint(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

/// Miner lines: `{"epoch", "avg_loss"}` per epoch, or per-step
/// `{"epoch", "loss"}` lines averaged per epoch.
fn parse_training(label: String, lines: &[Value]) -> TrainingRun {
    let mut per_epoch: BTreeMap<u64, (f64, u32)> = BTreeMap::new();
    let mut averages: BTreeMap<u64, f64> = BTreeMap::new();
    for l in lines {
        // The miner's own rows, typed; other shapes (older files, other
        // writers) are read field by field below.
        if let Ok(row) = serde_json::from_value::<TrainRow>(l.clone()) {
            let (epoch, loss) = row.epoch_loss();
            let e = per_epoch.entry(epoch).or_insert((0.0, 0));
            // A null loss counts as +inf, as the untyped reading does.
            e.0 += loss.unwrap_or(f64::INFINITY);
            e.1 += 1;
            continue;
        }
        let Some(epoch) = uint(l.get("epoch")) else {
            continue;
        };
        for key in ["avg_loss", "epoch_loss", "average_loss"] {
            if let Some(x) = l.get(key).and_then(num) {
                averages.insert(epoch, x);
            }
        }
        if let Some(x) = l.get("loss").and_then(num) {
            let e = per_epoch.entry(epoch).or_insert((0.0, 0));
            e.0 += x;
            e.1 += 1;
        }
    }
    let epochs = if averages.is_empty() {
        per_epoch
            .into_iter()
            .map(|(e, (sum, n))| (e, sum / f64::from(n.max(1))))
            .collect()
    } else {
        averages.into_iter().collect()
    };
    TrainingRun { label, epochs }
}

/// A per-uid field: an object keyed by uid, or an array aligned with `uids`,
/// or an array indexed by uid.
fn per_uid(v: Option<&Value>, uids: &[u16]) -> BTreeMap<u16, Value> {
    match v {
        Some(Value::Object(m)) => m
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.clone())))
            .collect(),
        Some(Value::Array(a)) if !uids.is_empty() && a.len() == uids.len() => {
            uids.iter().copied().zip(a.iter().cloned()).collect()
        }
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((u16::try_from(i).ok()?, v.clone())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn mean_of(v: &Value) -> Option<f64> {
    match v {
        Value::Array(a) if !a.is_empty() => {
            let xs: Vec<f64> = a.iter().filter_map(num).collect();
            (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
        }
        other => num(other),
    }
}

/// Validator lines, in either shape: `"uids": [{"uid", "losses"|"mean_loss",
/// "win_rate", "weight"}, ...]`, or parallel fields `"uids": [u, ...]` with
/// `losses`, `win_rates`, `weights` keyed by uid or aligned with `uids`.
fn parse_validator(label: String, lines: &[Value]) -> ValidatorRun {
    let mut steps = Vec::new();
    for (i, l) in lines.iter().filter(|l| is_validator_line(l)).enumerate() {
        // The validator's own rows, typed; the other shapes below.
        if let Ok(r) = serde_json::from_value::<StepReport>(l.clone()) {
            steps.push(typed_step(&r));
            continue;
        }
        let step = uint(l.get("step")).unwrap_or(i as u64);
        let block = uint(l.get("block"));
        let mut uids = BTreeMap::new();
        let rows = l.get("uids").and_then(Value::as_array);
        if let Some(rows) = rows.filter(|r| r.iter().all(Value::is_object)) {
            for r in rows {
                let Some(uid) = uint(r.get("uid")).and_then(|u| u16::try_from(u).ok()) else {
                    continue;
                };
                let mean_loss = r
                    .get("mean_loss")
                    .and_then(num)
                    .or_else(|| r.get("losses").and_then(mean_of))
                    .unwrap_or(f64::INFINITY);
                let weight = r.get("weight").and_then(num).unwrap_or(0.0);
                let win_rate = r.get("win_rate").and_then(num);
                uids.insert(
                    uid,
                    UidPoint {
                        mean_loss,
                        win_rate,
                        weight,
                    },
                );
            }
        } else {
            let list: Vec<u16> = rows
                .map(|r| {
                    r.iter()
                        .filter_map(|u| u.as_u64().and_then(|u| u16::try_from(u).ok()))
                        .collect()
                })
                .unwrap_or_default();
            let losses = per_uid(l.get("losses").or_else(|| l.get("mean_losses")), &list);
            let weights = per_uid(l.get("weights"), &list);
            let wins = per_uid(l.get("win_rates").or_else(|| l.get("win_rate")), &list);
            let keys: Vec<u16> = if list.is_empty() {
                losses.keys().copied().collect()
            } else {
                list.clone()
            };
            for uid in keys {
                let mean_loss = losses.get(&uid).and_then(mean_of).unwrap_or(f64::INFINITY);
                let weight = weights.get(&uid).and_then(num).unwrap_or(0.0);
                let win_rate = wins.get(&uid).and_then(num);
                uids.insert(
                    uid,
                    UidPoint {
                        mean_loss,
                        win_rate,
                        weight,
                    },
                );
            }
        }
        let competition = l.get("competition").and_then(Value::as_i64);
        steps.push(ValidatorStep {
            step,
            block,
            uids,
            competition,
        });
    }
    ValidatorRun { label, steps }
}

/// A typed validator row as a step of the report.
fn typed_step(r: &StepReport) -> ValidatorStep {
    let uids = r
        .uids
        .iter()
        .map(|u| {
            (
                u.uid,
                UidPoint {
                    mean_loss: u.mean_loss.0,
                    win_rate: Some(u.win_rate),
                    // The f32 as written (its shortest decimal), not widened bits.
                    weight: u.weight.to_string().parse().unwrap_or(f64::from(u.weight)),
                },
            )
        })
        .collect();
    ValidatorStep {
        step: r.step,
        block: Some(r.block),
        uids,
        competition: r.competition,
    }
}

/// Local subnet lines: `{"elapsed_s", "block", "leaderboard": [{"uid", "incentive", ...}]}`.
fn parse_leaderboard(label: String, lines: &[Value]) -> IncentiveRun {
    let mut points = Vec::new();
    let mut last = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(rows) = l.get("leaderboard").and_then(Value::as_array) else {
            continue;
        };
        let t = l
            .get("elapsed_s")
            .and_then(num)
            .or_else(|| l.get("block").and_then(num))
            .unwrap_or(i as f64);
        let map: BTreeMap<u16, f64> = rows
            .iter()
            .filter_map(|r| {
                let uid = u16::try_from(uint(r.get("uid"))?).ok()?;
                Some((uid, r.get("incentive").and_then(num).unwrap_or(0.0)))
            })
            .collect();
        points.push((t, map));
        last = rows.clone();
    }
    IncentiveRun {
        label,
        points,
        last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The read cap falls inside a line holding a two-byte character: the
    /// cut line is dropped whole and the lines before it are kept.
    #[test]
    fn the_read_cap_drops_the_line_it_cuts() {
        let text = "{\"a\": 1}\n{\"b\": \"\u{e9}\u{e9}\"}\n{\"c\": 3}\n";
        // Inside the first "é" of the second line.
        let cap = text.find('\u{e9}').unwrap() + 1;
        let read = parse_lines(text.as_bytes(), cap as u64);
        assert_eq!(read.values, vec![json!({"a": 1})]);
        assert_eq!(read.skipped, 0);
        let all = parse_lines(text.as_bytes(), 1 << 20);
        assert_eq!(all.values.len(), 3);
    }

    #[test]
    fn training_prefers_epoch_averages_and_else_averages_steps() {
        let lines = vec![
            json!({"epoch": 0, "step": 1, "loss": 4.0}),
            json!({"epoch": 0, "step": 2, "loss": 2.0}),
            json!({"epoch": 1, "step": 3, "loss": 1.0}),
        ];
        let run = parse_training("r".into(), &lines);
        assert_eq!(run.epochs, vec![(0, 3.0), (1, 1.0)]);
        let mut with_avg = lines.clone();
        with_avg.push(json!({"epoch": 0, "avg_loss": 2.5}));
        assert_eq!(parse_training("r".into(), &with_avg).epochs, vec![(0, 2.5)]);
    }

    #[test]
    fn typed_rows_read_as_the_old_untyped_lines_did() {
        // Lines as the miner writes them (typed) and as older files have them.
        let typed = vec![
            json!({"batch": 1, "epoch": 1, "event": "step", "loss": 4.0, "lr": 0.001,
                   "step": 1, "time": 1.0, "tokens_per_s": 10.0, "wall_s": 0.1}),
            json!({"best": true, "epoch": 1, "event": "epoch", "loss": 2.0, "lr": 0.001,
                   "step": 1, "time": 2.0, "tokens_per_s": 10.0, "wall_s": 0.2}),
        ];
        assert_eq!(parse_training("r".into(), &typed).epochs, vec![(1, 3.0)]);
        let old = vec![
            json!({"epoch": 1, "loss": 4.0}),
            json!({"epoch": 1, "loss": 2.0}),
        ];
        assert_eq!(parse_training("r".into(), &old).epochs, vec![(1, 3.0)]);

        let typed = json!({"step": 2, "block": 40, "competition": 1, "seed": 7, "pages": [3],
            "n_batches": 2, "n_total_uids": 3, "uids": [
                {"uid": 1, "hotkey": "hk", "competition": 1, "model": "a/b@c", "block": 5,
                 "losses": [1.0, 3.0], "mean_loss": 2.0, "wins": 2, "win_rate": 1.0,
                 "weight": 0.7, "error": null},
                {"uid": 2, "hotkey": "hk2", "competition": 1, "model": null, "block": null,
                 "losses": ["inf", "inf"], "mean_loss": "inf", "wins": 0, "win_rate": 0.0,
                 "weight": 0.3, "error": "no valid model committed"}],
            "weights": [0.0, 0.7, 0.3], "uids_to_eval_next": [1], "data_s": 0.1, "eval_s": 0.1,
            "step_s": 0.2, "weights_set": null});
        let run = parse_validator("v".into(), &[typed]);
        let s = &run.steps[0];
        assert_eq!((s.step, s.block, s.competition), (2, Some(40), Some(1)));
        assert_eq!(s.uids[&1].mean_loss, 2.0);
        assert_eq!(s.uids[&1].win_rate, Some(1.0));
        assert_eq!(s.uids[&1].weight, 0.7);
        assert!(s.uids[&2].mean_loss.is_infinite());
        assert_eq!(s.uids[&2].weight, 0.3);
    }

    #[test]
    fn validator_lines_in_both_shapes() {
        let parallel = json!({"step": 3, "block": 70, "uids": [2, 5],
            "losses": {"2": [1.0, 3.0], "5": [null, null]},
            "win_rates": {"2": 1.0, "5": 0.0}, "weights": [0.0, 0.0, 0.9, 0.0, 0.0, 0.1]});
        let rows = json!({"step": 4, "weights": {}, "uids": [
            {"uid": 2, "mean_loss": 2.0, "win_rate": 1.0, "weight": 0.8}]});
        let run = parse_validator("v".into(), &[parallel, rows]);
        let s = &run.steps[0];
        assert_eq!((s.step, s.block), (3, Some(70)));
        assert_eq!(s.uids[&2].mean_loss, 2.0);
        assert!(s.uids[&5].mean_loss.is_infinite());
        assert_eq!((s.uids[&2].weight, s.uids[&5].weight), (0.9, 0.1));
        assert_eq!(run.steps[1].uids[&2].weight, 0.8);
    }
}

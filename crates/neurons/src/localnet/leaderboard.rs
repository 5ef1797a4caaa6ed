//! The local subnet's leaderboard: per uid its role, commitment, the
//! validator's latest loss and win rate, its weight and incentive.

use std::collections::BTreeMap;

use pretrain_chain::embedded::EmbeddedChain;
use pretrain_chain::{Chain, Commitment, Neuron, Wallet};
use pretrain_core::metrics::{LeaderboardLine, StepReport};
use pretrain_core::rules::{CompetitionSpec, Protocol};
use serde_json::{json, Value};
use std::path::Path;

use super::{LocalnetError, NETUID};

/// The validator's latest `(mean loss, win rate)` per uid.
pub type ValidatorView = BTreeMap<u16, (f64, Option<f64>)>;

/// Everything one leaderboard row shows (the typed row of `leaderboard.jsonl`).
pub use pretrain_core::metrics::LeaderboardRow as Row;

/// The rows as printed and logged (a non-finite loss is `null`, keys sorted).
pub fn rows_json(rows: &[Row]) -> Vec<Value> {
    rows.iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect()
}

/// One line of `leaderboard.jsonl`.
pub fn leaderboard_line(elapsed_s: f64, block: Option<u64>, rows: &[Row]) -> String {
    let line = LeaderboardLine {
        elapsed_s,
        block,
        leaderboard: rows.to_vec(),
    };
    serde_json::to_value(&line)
        .unwrap_or(Value::Null)
        .to_string()
}

/// The validator's latest per-uid loss and win rate, from its
/// `metrics.jsonl` in `dir`: the latest step of each competition (one
/// step covers every model under the `sn9-2024-01` rules). Lines that do
/// not parse (cut short by a crash) are skipped.
pub fn validator_view(dir: &Path) -> ValidatorView {
    let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) else {
        return ValidatorView::new();
    };
    let mut latest: BTreeMap<Option<i64>, StepReport> = BTreeMap::new();
    for step in text
        .lines()
        .filter_map(|l| serde_json::from_str::<StepReport>(l).ok())
    {
        latest.insert(step.competition, step);
    }
    latest
        .values()
        .flat_map(|s| s.uids.iter())
        .map(|u| (u.uid, (u.mean_loss.0, Some(u.win_rate))))
        .collect()
}

/// The first `n` characters of `s` (never splits a character: text decoded
/// from chain bytes may hold any).
pub fn short_prefix(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `namespace/name@commit8` of a commitment and, where the rules have
/// competition ids, its competition; the raw text when it is no model id.
pub fn describe_commitment(data: &[u8], protocol: Protocol) -> (Option<String>, Option<i64>) {
    match protocol.read_commitment(data) {
        Ok(c) => (
            Some(format!(
                "{}/{}@{}",
                c.namespace,
                c.name,
                c.commit.as_deref().map_or("?", |c| short_prefix(c, 8))
            )),
            c.competition,
        ),
        Err(_) => (Some(String::from_utf8_lossy(data).into_owned()), None),
    }
}

/// A weight row as fractions of its sum (empty when the sum is not positive).
pub fn normalized_weights(row: &[(u16, u16)]) -> BTreeMap<u16, f64> {
    let total: f64 = row.iter().map(|(_, v)| f64::from(*v)).sum();
    if total <= 0.0 {
        return BTreeMap::new();
    }
    row.iter()
        .map(|(uid, v)| (*uid, f64::from(*v) / total))
        .collect()
}

/// Per competition of the summary: its share, the uids committed to it,
/// and its winner (the one holding the most incentive).
pub fn competitions_json(competitions: &[CompetitionSpec], rows: &[Row]) -> Value {
    let list: Vec<Value> = competitions
        .iter()
        .map(|c| {
            let members: Vec<&Row> = rows
                .iter()
                .filter(|r| r.competition == Some(c.id))
                .collect();
            let winner = members
                .iter()
                .max_by(|a, b| a.incentive.total_cmp(&b.incentive))
                .filter(|r| r.incentive > 0.0);
            json!({
                "id": c.id,
                "name": c.name,
                "share": c.reward_share,
                "uids": members.iter().map(|r| r.uid).collect::<Vec<_>>(),
                "winner": winner.map(|r| r.uid),
                "winner_incentive": winner.map(|r| r.incentive),
            })
        })
        .collect();
    Value::Array(list)
}

/// Reads the leaderboard: the metagraph, the commitments and the
/// validator's weights from `chain`, losses and win rates from `view`.
pub async fn leaderboard(
    chain: &EmbeddedChain,
    validator: &Wallet,
    miners: &[Wallet],
    protocol: Protocol,
    view: &ValidatorView,
) -> Result<Vec<Row>, LocalnetError> {
    let chain_err = |what: &str| {
        let what = what.to_string();
        move |source| LocalnetError::Chain { what, source }
    };
    let g = chain
        .metagraph(NETUID)
        .await
        .map_err(chain_err("reading the metagraph"))?;
    let commits = chain
        .commitments(NETUID)
        .await
        .map_err(chain_err("reading the commitments"))?;
    let weights = chain
        .weights(NETUID)
        .await
        .map_err(chain_err("reading the weights"))?;
    let vhot = validator
        .hotkey_ss58()
        .map_err(|source| LocalnetError::Wallet {
            what: "reading the validator's hotkey".into(),
            source,
        })?;
    let vuid = g.neurons.iter().find(|n| n.hotkey == vhot).map(|n| n.uid);
    let wmap = weights
        .iter()
        .find(|(uid, _)| Some(*uid) == vuid)
        .map(|(_, row)| normalized_weights(row))
        .unwrap_or_default();
    let miner_hotkeys: Vec<String> = miners.iter().filter_map(|w| w.hotkey_ss58().ok()).collect();
    let rows = g
        .neurons
        .iter()
        .map(|n| {
            let commitment = commits.iter().find(|c| c.hotkey == n.hotkey);
            let role = role_of(&n.hotkey, &vhot, &miner_hotkeys);
            let weight = wmap.get(&n.uid).copied().unwrap_or(0.0);
            row(n, role, commitment, protocol, view, weight)
        })
        .collect();
    Ok(rows)
}

/// One uid's row: its commitment described, the validator's view of it, its weight.
fn row(
    n: &Neuron,
    role: String,
    commitment: Option<&Commitment>,
    protocol: Protocol,
    view: &ValidatorView,
    weight: f64,
) -> Row {
    let (model, competition) = match commitment {
        None => (None, None),
        Some(c) => describe_commitment(&c.data, protocol),
    };
    let (loss, win_rate) = match view.get(&n.uid) {
        Some((l, w)) => (Some(*l), *w),
        None => (None, None),
    };
    Row {
        uid: n.uid,
        hotkey: n.hotkey.clone(),
        role,
        model,
        competition,
        loss,
        win_rate,
        weight,
        incentive: n.incentive,
    }
}

/// `validator`, `miner-<i>` (the i-th of `miners`), or `other`.
fn role_of(hotkey: &str, validator: &str, miners: &[String]) -> String {
    if hotkey == validator {
        "validator".to_string()
    } else if let Some(i) = miners.iter().position(|h| h == hotkey) {
        format!("miner-{i}")
    } else {
        "other".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretrain_core::rules::Schedule;

    #[test]
    fn a_non_ascii_commit_is_cut_by_characters_not_bytes() {
        // Eight 2-byte characters: a byte index of 8 falls inside one before.
        let data = "ns:name:ééééééééé:None".as_bytes();
        let (model, competition) = describe_commitment(data, Protocol::Sn9Rules2024);
        assert_eq!(model.as_deref(), Some("ns/name@éééééééé"));
        assert_eq!(competition, None);
        let data = "ns:name:aé€😀xyzwv:None:1".as_bytes();
        let (model, competition) = describe_commitment(data, Protocol::Competitions);
        assert_eq!(model.as_deref(), Some("ns/name@aé€😀xyzw"));
        assert_eq!(competition, Some(1));
        assert_eq!(short_prefix("ab", 8), "ab");
        assert_eq!(short_prefix("", 8), "");
    }

    #[test]
    fn commitments_read_by_the_rules_of_the_schedule() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let four = format!("me:x:{sha}:hash");
        assert_eq!(
            describe_commitment(four.as_bytes(), Protocol::Sn9Rules2024),
            (Some("me/x@01234567".to_string()), None)
        );
        let five = format!("me:x:{sha}:secure:2");
        assert_eq!(
            describe_commitment(five.as_bytes(), Protocol::Competitions),
            (Some("me/x@01234567".to_string()), Some(2))
        );
        // No model id: the raw text, lossily decoded.
        assert_eq!(
            describe_commitment(b"hello\xff", Protocol::Sn9Rules2024),
            (Some("hello\u{fffd}".to_string()), None)
        );
        assert_eq!(
            describe_commitment(b"a:b:c:d:notanumber", Protocol::Competitions),
            (Some("a:b:c:d:notanumber".to_string()), None)
        );
        let no_commit = b"me:x:None:None";
        assert_eq!(
            describe_commitment(no_commit, Protocol::Sn9Rules2024)
                .0
                .as_deref(),
            Some("me/x@?")
        );
    }

    #[test]
    fn weights_are_fractions_of_the_row() {
        let w = normalized_weights(&[(1, 3), (2, 1)]);
        assert_eq!(w.get(&1), Some(&0.75));
        assert_eq!(w.get(&2), Some(&0.25));
        assert!(normalized_weights(&[(1, 0), (2, 0)]).is_empty());
        assert!(normalized_weights(&[]).is_empty());
    }

    fn row(uid: u16, competition: Option<i64>, incentive: f64) -> Row {
        Row {
            uid,
            hotkey: format!("hk{uid}"),
            role: format!("miner-{uid}"),
            model: None,
            competition,
            loss: Some(f64::INFINITY),
            win_rate: None,
            weight: 0.0,
            incentive,
        }
    }

    #[test]
    fn a_competition_is_won_by_its_member_with_the_most_incentive() {
        let mut c = Schedule::default_schedule().entries[0].competitions[0].clone();
        c.id = 1;
        let mut empty = c.clone();
        empty.id = 2;
        let rows = [
            row(1, Some(1), 0.2),
            row(2, Some(1), 0.7),
            row(3, None, 0.9),
        ];
        let v = competitions_json(&[c, empty], &rows);
        assert_eq!(v[0]["id"], 1);
        assert_eq!(v[0]["uids"], json!([1, 2]));
        assert_eq!(v[0]["winner"], 2);
        assert_eq!(v[0]["winner_incentive"], 0.7);
        assert_eq!(v[1]["uids"], json!([]));
        assert!(v[1]["winner"].is_null());
    }

    #[test]
    fn a_non_finite_loss_is_null_in_the_json() {
        let v = &rows_json(&[row(4, None, 0.0)])[0];
        assert!(v["loss"].is_null());
        assert_eq!(v["uid"], 4);
        assert_eq!(v["role"], "miner-4");
        let line: Value =
            serde_json::from_str(&leaderboard_line(1.5, Some(3), &[row(4, None, 0.0)])).unwrap();
        assert_eq!(line["elapsed_s"], 1.5);
        assert_eq!(line["block"], 3);
        assert_eq!(line["leaderboard"][0]["hotkey"], "hk4");
    }

    #[test]
    fn the_view_is_the_latest_step_of_each_competition() {
        let dir = tempfile::tempdir().unwrap();
        let step = |step: u64, competition: Option<i64>, uid: u16, loss: &str, rate: f64| {
            format!(
                r#"{{"step":{step},"block":1,"competition":{c},"seed":1,"pages":[1],"n_batches":1,"n_total_uids":4,"uids":[{{"uid":{uid},"hotkey":"h","competition":{c},"model":null,"block":null,"losses":[{loss}],"mean_loss":{loss},"wins":0,"win_rate":{rate},"weight":0.0,"error":null}}],"weights":[],"uids_to_eval_next":[],"data_s":0.0,"eval_s":0.0,"step_s":0.0,"weights_set":null}}"#,
                c = competition.map_or("null".to_string(), |c| c.to_string()),
            )
        };
        let text = [
            step(1, Some(1), 1, "5.0", 0.0),
            step(2, Some(2), 2, "\"inf\"", 0.0),
            step(3, Some(1), 1, "4.0", 1.0),
            "{\"step\": 4, cut short".to_string(),
        ]
        .join("\n");
        std::fs::write(dir.path().join("metrics.jsonl"), text).unwrap();
        let view = validator_view(dir.path());
        assert_eq!(view.get(&1), Some(&(4.0, Some(1.0))));
        assert!(view[&2].0.is_infinite());
        assert_eq!(view.len(), 2);
        assert!(validator_view(&dir.path().join("missing")).is_empty());
    }
}

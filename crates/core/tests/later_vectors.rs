//! Every case of `testdata/later/vectors.json` (transcribed from upstream
//! taoverse e350d5e / pretraining 42328de) through the library.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use pretrain_core::rules::schedule::SN9_LATER;
use pretrain_core::rules::{
    accepts_download, compute_competitive_uids, compute_wins_aged, score_competition,
    CompetitionTracker, Contender, EpsilonFunc, Schedule,
};
use pretrain_core::{
    secure_hash, CompetitionModelId as LaterModelId, CompetitionModelIdError as LaterModelIdError,
};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/later/vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cases<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    let list = v[key].as_array().unwrap();
    assert!(!list.is_empty(), "{key} has no cases");
    list
}

/// Within `rel` relative; values upstream computed as float32 subnormals
/// (below 1e-30) within 1e-44 absolute (torch 3.78e-44 vs float64 3.72e-44).
fn close(got: f64, want: f64, rel: f64) -> bool {
    if want.abs() < 1e-30 {
        (got - want).abs() <= 1e-44
    } else {
        (got - want).abs() <= rel * want.abs()
    }
}

fn epsilon(v: &Value) -> EpsilonFunc {
    serde_json::from_value(v.clone()).unwrap()
}

fn pairs(v: &Value) -> Vec<(u16, f64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap() as u16, p[1].as_f64().unwrap()))
        .collect()
}

#[test]
fn secure_hash_cases() {
    let v = vectors();
    for case in cases(&v, "secure_hash") {
        let model_hash = case["model_hash"].as_str().unwrap();
        let hotkey = case["hotkey"].as_str().unwrap();
        if let Some(pre) = case["preimage_utf8"].as_str() {
            assert_eq!(format!("{model_hash}{hotkey}"), pre);
        }
        assert_eq!(
            secure_hash(model_hash, hotkey),
            case["secure_hash"].as_str().unwrap(),
            "{case}"
        );
    }
}

#[test]
fn model_id_parse_cases() {
    let v = vectors();
    let section = &v["model_id_parse"];
    assert_eq!(section["MAX_METADATA_BYTES"], 128);
    assert_eq!(pretrain_core::constants::MAX_METADATA_BYTES, 128);
    let list = section["cases"].as_array().unwrap();
    assert!(list.len() >= 4);
    for case in list {
        let input = case["input"].as_str().unwrap();
        let got = LaterModelId::from_compressed_str(input);
        if let Some(err) = case.get("error") {
            assert_eq!(err, "IndexError");
            assert!(
                matches!(got, Err(LaterModelIdError::TooFewParts(_))),
                "{input}"
            );
            continue;
        }
        let id = got.unwrap();
        assert_eq!(
            serde_json::to_value(&id).unwrap(),
            case["parsed"],
            "{input}"
        );
        let back = id.to_compressed_str();
        assert_eq!(back, case["roundtrip"].as_str().unwrap());
        assert_eq!(input.len() as u64, case["len_bytes"].as_u64().unwrap());
        assert!(id.to_chain_bytes().is_ok());
    }
}

#[test]
fn validator_hash_check_cases() {
    let v = vectors();
    for case in cases(&v, "validator_hash_check") {
        let id = LaterModelId::from_compressed_str(case["chain_str"].as_str().unwrap()).unwrap();
        let got = accepts_download(
            &id,
            case["downloaded_hash"].as_str().unwrap(),
            case["hotkey"].as_str().unwrap(),
        );
        assert_eq!(
            got,
            case["accepted"].as_bool().unwrap(),
            "{}",
            case["label"]
        );
    }
}

#[test]
fn epsilon_cases_exactly() {
    let v = vectors();
    for case in cases(&v, "epsilon") {
        let f = epsilon(&case["func"]);
        let got = f.compute_epsilon(
            case["current_block"].as_u64().unwrap(),
            case["model_block"].as_u64().unwrap(),
        );
        assert_eq!(got, case["epsilon"].as_f64().unwrap(), "{case}");
    }
}

#[test]
fn compute_wins_cases() {
    let v = vectors();
    let temperature = v["meta"]["temperature"].as_f64().unwrap();
    let rel = v["meta"]["weights_rel_tolerance"].as_f64().unwrap();
    for case in cases(&v, "compute_wins") {
        let label = case["label"].as_str().unwrap();
        let scores = pairs(&case["uid_to_score"]);
        let blocks = pairs(&case["uid_to_block"]);
        let contenders: Vec<Contender> = scores
            .iter()
            .map(|&(uid, score)| Contender {
                uid,
                score,
                block: blocks.iter().find(|b| b.0 == uid).unwrap().1 as u64,
            })
            .collect();
        let uids: Vec<u16> = case["uids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_u64().unwrap() as u16)
            .collect();
        assert_eq!(uids, contenders.iter().map(|c| c.uid).collect::<Vec<_>>());
        let eps = epsilon(&case["epsilon_func"]);
        let cur = case["current_block"].as_u64().unwrap();
        let filter = case["filter"].as_bool().unwrap();
        let step = score_competition(&contenders, &eps, cur, temperature, filter).unwrap();

        let want_competitive: Option<Vec<u16>> =
            serde_json::from_value(case["competitive_uids"].clone()).unwrap();
        assert_eq!(step.competitive_uids, want_competitive, "{label}");
        if let Some(kept) = &want_competitive {
            assert_eq!(
                &compute_competitive_uids(&contenders, &eps),
                kept,
                "{label}"
            );
        } else {
            assert_eq!(
                compute_wins_aged(&contenders, &eps, cur),
                step.wins,
                "{label}"
            );
        }
        let want_wins: Vec<(u16, u64)> = serde_json::from_value(case["wins"].clone()).unwrap();
        assert_eq!(step.wins.wins, want_wins, "{label}");
        assert_eq!(step.wins.win_rate, pairs(&case["win_rate"]), "{label}");
        if let Some(sw) = case.get("softmax_step_weights") {
            let want = pairs(sw);
            assert_eq!(want.len(), step.step_weights.len(), "{label}");
            for ((wu, w), (gu, g)) in want.iter().zip(&step.step_weights) {
                assert_eq!(wu, gu, "{label}");
                assert!(
                    close(f64::from(*g), *w, rel),
                    "{label} uid {wu}: {g} vs {w}"
                );
            }
        }
    }
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn weight_combination_cases() {
    let v = vectors();
    for case in cases(&v, "weight_combination") {
        let label = case["label"].as_str().unwrap();
        let rel = v["meta"]["weights_rel_tolerance"].as_f64().unwrap();
        let n = case
            .get("num_neurons")
            .or_else(|| case.get("num_neurons_initial"))
            .unwrap()
            .as_u64()
            .unwrap() as usize;
        let alpha = case["alpha"].as_f64().unwrap();
        let mut tracker = CompetitionTracker::new(n);
        for step in case["recorded_steps"].as_array().unwrap() {
            tracker.record(
                step["competition_id"].as_i64().unwrap(),
                &f32s(&step["weights"]),
                alpha,
            );
        }
        if let Some(reset) = case.get("reset_to") {
            let ids: Vec<i64> = serde_json::from_value(reset.clone()).unwrap();
            tracker.reset_competitions(&ids);
        }
        let per = case["per_competition"].as_object().unwrap();
        assert_eq!(per.len(), tracker.all_weights().len(), "{label}");
        for (id, want) in per {
            let got = tracker.competition_weights(id.parse().unwrap()).unwrap();
            let want = f32s(want);
            assert_eq!(got.len(), want.len(), "{label}");
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    close(f64::from(*g), f64::from(*w), rel),
                    "{label} comp {id}: {g} vs {w}"
                );
            }
        }
        let active: Vec<(i64, f64)> =
            serde_json::from_value(case["active_competitions"].clone()).unwrap();
        let got = tracker.subnet_weights(&active);
        let want: Vec<f64> = serde_json::from_value(case["subnet_weights"].clone()).unwrap();
        assert_eq!(got.len(), want.len(), "{label}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                close(f64::from(*g), *w, rel),
                "{label}: {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn schedule_lookup_head_cases() {
    let v = vectors();
    let schedule = Schedule::by_name_or_file(SN9_LATER).unwrap();
    for case in cases(&v, "schedule_lookup_head") {
        let block = case["block"].as_u64().unwrap();
        let entry = schedule.active_entry(block).unwrap();
        let want = case["competitions"].as_array().unwrap();
        assert_eq!(entry.competitions.len(), want.len(), "block {block}");
        for (got, want) in entry.competitions.iter().zip(want) {
            assert_eq!(got.id, want["id"].as_i64().unwrap(), "block {block}");
            assert_eq!(got.name, want["name"].as_str().unwrap(), "block {block}");
            assert_eq!(
                got.reward_share,
                want["reward_percentage"].as_f64().unwrap()
            );
            assert_eq!(
                got.constraints.epsilon,
                epsilon(&want["epsilon"]),
                "block {block}"
            );
        }
    }
}

/// The two shipped schedules parse and say what the issue says of them.
#[test]
fn shipped_schedules() {
    let seed = Schedule::default_schedule();
    assert_eq!(seed.name, "sn9-2024-01");
    let entry = seed.active_entry(0).unwrap();
    assert_eq!(entry.competitions.len(), 1);
    let c = &entry.competitions[0];
    assert!(c.support().is_ok());
    // The seed's own constants, unchanged.
    assert_eq!(
        c.seed_competition(),
        Some(pretrain_core::Tunables::default())
    );
    assert_eq!(
        c.constraints.max_parameters,
        pretrain_core::constants::MAX_MODEL_PARAMETERS
    );
    assert_eq!(
        c.constraints.max_bytes,
        pretrain_core::constants::MAX_MODEL_BYTES
    );

    let later = Schedule::by_name_or_file(SN9_LATER).unwrap();
    assert_eq!(later.entries.len(), 2);
    assert_eq!(later.entries[1].start_block, 5_177_981);
    for e in &later.entries {
        for c in &e.competitions {
            // Xenova/gpt-4 and E2TTS: kept in the table, refused with a reason.
            let why = c.support().unwrap_err().0;
            assert!(
                why.contains("tokenizer") || why.contains("architectures"),
                "{why}"
            );
            assert_eq!(c.constraints.eval_block_delay, 250);
            assert_eq!(c.scoring.temperature, v_meta("temperature"));
            assert_eq!(c.scoring.alpha, v_meta("alpha"));
        }
    }
}

fn v_meta(key: &str) -> f64 {
    vectors()["meta"][key].as_f64().unwrap()
}

/// Two competitions at library level: two competitions with shares 0.4 and
/// 0.6, evaluated in turn; each competition's clear winner (win rate 1 at
/// temperature 0.01 beats win rate 0 by e^100) ends with its share.
#[test]
fn two_competitions_each_winner_holds_its_share() {
    use pretrain_core::rules::weights::scatter;
    let toml = r#"
name = "two"
[competitions.GPT2]
id = 0
constraints = { max_parameters = 1000000, max_bytes = 100000000, architectures = ["GPT2LMHeadModel"], sequence_length = 64, epsilon = { kind = "FixedEpsilon", epsilon = 0.005 } }
scoring = { temperature = 0.01, alpha = 0.5, sample_min = 5, wins = "mean_loss_competitive" }
[competitions.LLAMA]
id = 1
constraints = { max_parameters = 1000000, max_bytes = 100000000, architectures = ["LlamaForCausalLM"], sequence_length = 64, epsilon = { kind = "FixedEpsilon", epsilon = 0.005 } }
scoring = { temperature = 0.01, alpha = 0.5, sample_min = 5, wins = "mean_loss_competitive" }
[[entries]]
start_block = 0
competitions = [{ competition = "GPT2", share = 0.4 }, { competition = "LLAMA", share = 0.6 }]
"#;
    let schedule = Schedule::from_toml("two", toml).unwrap();
    let entry = schedule.active_entry(500).unwrap();
    // uids 1, 2 in GPT2 (2 is better), uids 3, 4 in LLAMA (3 is better).
    let field = |id: i64| -> Vec<Contender> {
        match id {
            0 => vec![
                Contender {
                    uid: 1,
                    score: 3.0,
                    block: 10,
                },
                Contender {
                    uid: 2,
                    score: 2.0,
                    block: 20,
                },
            ],
            _ => vec![
                Contender {
                    uid: 3,
                    score: 2.5,
                    block: 30,
                },
                Contender {
                    uid: 4,
                    score: 2.6,
                    block: 40,
                },
            ],
        }
    };
    let mut tracker = CompetitionTracker::new(5);
    for step in 0..4 {
        let comp = entry.competition_for_step(step);
        let s = score_competition(
            &field(comp.id),
            &comp.constraints.epsilon,
            500,
            comp.scoring.temperature,
            true,
        )
        .unwrap();
        tracker.record(comp.id, &scatter(5, &s.step_weights), comp.scoring.alpha);
    }
    let w = tracker.subnet_weights(&entry.shares());
    let want = [0.0, 0.0, 0.4, 0.6, 0.0];
    for (g, w) in w.iter().zip(want) {
        assert!((f64::from(*g) - w).abs() < 1e-6, "{g} vs {w}");
    }
}

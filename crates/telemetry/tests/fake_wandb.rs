//! A fake W&B server in-process, recording every request: the exact GraphQL
//! variables, history lines and offsets (also after a failed request is
//! resent), run rotation at 100 steps and `complete` at exit; then the
//! community dashboard's own logic (surcyf123/pretraining-frontend, in
//! Python) over what it recorded finds the best miner.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::time::Duration;

use pretrain_telemetry::wandb::online::Options;
use pretrain_telemetry::wandb::validator::{
    UidStep, ValidatorIdentity, ValidatorLog, ValidatorStep,
};
use pretrain_telemetry::wandb::{Mode, Run, RunSpec};
use serde_json::{json, Value};

mod common;
use common::fake_wandb::{history_of, start_fake, Request};

fn quick() -> Options {
    Options {
        flush_interval: Duration::from_millis(50),
        request_timeout: Duration::from_secs(5),
        finish_timeout: Duration::from_secs(10),
        retry_delay: Duration::from_millis(100),
        max_retry_delay: Duration::from_millis(200),
    }
}

#[tokio::test]
async fn a_run_is_created_streamed_resent_after_a_failure_and_completed() {
    let (base, fake) = start_fake().await;
    fake.lock().unwrap().fail_history = 2;
    let mode = Mode::Online {
        base_url: base,
        api_key: "secret-key".into(),
    };
    let mut config = serde_json::Map::new();
    config.insert("uid".into(), json!(4));
    config.insert("type".into(), json!("validator"));
    let spec = RunSpec {
        entity: "team".into(),
        project: "proj".into(),
        display_name: "validator-4-2026-12-01_10-00-00".into(),
        config,
    };
    let mut run = Run::start_with(&mode, spec, quick()).unwrap();
    let id = run.id().to_string();
    for step in 0..5u64 {
        let mut row = serde_json::Map::new();
        row.insert("loss".into(), json!(step as f64 / 2.0));
        run.log(step, row).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    run.finish(0).await.unwrap();

    let requests = fake.lock().unwrap().requests.clone();
    let gql = &requests[0];
    assert_eq!(gql.path, "/graphql");
    // Basic auth "api:<key>", as wandb's SDK sends it.
    assert_eq!(gql.auth, "Basic YXBpOnNlY3JldC1rZXk=");
    let v = &gql.body["variables"];
    assert_eq!(v["name"], json!(id));
    assert_eq!(v["displayName"], json!("validator-4-2026-12-01_10-00-00"));
    assert_eq!(v["project"], json!("proj"));
    assert_eq!(v["entity"], json!("team"));
    let config: Value = serde_json::from_str(v["config"].as_str().unwrap()).unwrap();
    assert_eq!(
        config,
        json!({"uid": {"value": 4}, "type": {"value": "validator"}})
    );
    assert!(gql.body["query"]
        .as_str()
        .unwrap()
        .starts_with("mutation UpsertBucket("));

    // The two failed requests are resent from the same offset; the server's
    // file then holds each step once, in order.
    let failed: Vec<usize> = requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.body.pointer("/files/wandb-history.jsonl").is_some())
        .map(|(i, _)| i)
        .take(2)
        .collect();
    let lines = history_of(&requests, &id, &|i| !failed.contains(&i));
    let steps: Vec<u64> = lines.iter().map(|l| l["_step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 1, 2, 3, 4]);
    assert_eq!(lines[3]["loss"], json!(1.5));
    assert!(lines
        .iter()
        .all(|l| l["_runtime"].is_number() && l["_timestamp"].is_number()));
    let last = requests.last().unwrap();
    assert_eq!(last.path, format!("/files/team/proj/{id}/file_stream"));
    assert_eq!(last.body["complete"], json!(true));
    assert_eq!(last.body["exitcode"], json!(0));
}

fn step(global_step: u64, strong_loss: f64) -> ValidatorStep {
    ValidatorStep {
        global_step,
        block: 100 + global_step,
        timestamp: 1_764_583_200.0 + global_step as f64,
        pages: vec![global_step, global_step + 7],
        uids: vec![1, 2, 3],
        uid_data: vec![
            UidStep {
                uid: 1,
                block: Some(10),
                average_loss: 6.5,
                win_rate: 0.0,
                win_total: 0,
                weight: 0.1,
            },
            UidStep {
                uid: 2,
                block: Some(11),
                average_loss: strong_loss,
                win_rate: 1.0,
                win_total: 8,
                weight: 0.8,
            },
            // A model that failed: +inf, which the dashboards must drop.
            UidStep {
                uid: 3,
                block: Some(12),
                average_loss: f64::INFINITY,
                win_rate: 0.0,
                win_total: 0,
                weight: 0.1,
            },
        ],
        load_model_perf_log: "Load model: 3 samples".into(),
        compute_model_perf_log: "Compute loss: 3 samples".into(),
    }
}

#[tokio::test]
async fn the_validator_rotates_runs_every_100_steps_and_dashboards_find_the_best_miner() {
    let (base, fake) = start_fake().await;
    let mode = Mode::Online {
        base_url: base,
        api_key: "k".into(),
    };
    let who = ValidatorIdentity {
        uid: 7,
        hotkey: "5Fvalidator".into(),
        version: "0.1.0".into(),
    };
    let mut log = ValidatorLog::new(mode, None, None, who).with_options(quick());
    for s in 0..101u64 {
        log.log_step(&step(s, 3.0 + 1.0 / (s as f64 + 1.0)))
            .await
            .unwrap();
    }
    log.finish(0).await.unwrap();

    let requests = fake.lock().unwrap().requests.clone();
    let upserts: Vec<&Request> = requests.iter().filter(|r| r.path == "/graphql").collect();
    assert_eq!(upserts.len(), 2, "a new run after 100 steps");
    let runs: Vec<String> = upserts
        .iter()
        .map(|r| r.body["variables"]["name"].as_str().unwrap().to_string())
        .collect();
    let name_re = |name: &str| {
        // ^validator-(\d+)-(\d+)-(\d+)-(\d+)_.+$, the dashboards' filter.
        let rest = name.strip_prefix("validator-").unwrap();
        let (date, time) = rest.split_once('_').unwrap();
        let parts: Vec<&str> = date.split('-').collect();
        parts.len() == 4
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && !time.is_empty()
    };
    for u in &upserts {
        let v = &u.body["variables"];
        assert!(
            name_re(v["displayName"].as_str().unwrap()),
            "{}",
            v["displayName"]
        );
        assert!(v["displayName"]
            .as_str()
            .unwrap()
            .starts_with("validator-7-"));
        assert_eq!(v["project"], json!("pretraining-subnet"));
        assert_eq!(v["entity"], json!("opentensor-dev"));
        let config: Value = serde_json::from_str(v["config"].as_str().unwrap()).unwrap();
        assert_eq!(config["uid"], json!({"value": 7}));
        assert_eq!(config["hotkey"], json!({"value": "5Fvalidator"}));
        assert_eq!(config["type"], json!({"value": "validator"}));
        assert_eq!(config["version"], json!({"value": "0.1.0"}));
        let run_name = config["run_name"]["value"].as_str().unwrap();
        assert!(v["displayName"].as_str().unwrap().ends_with(run_name));
    }
    let first = history_of(&requests, &runs[0], &|_| true);
    let second = history_of(&requests, &runs[1], &|_| true);
    assert_eq!(first.len(), 100);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["_step"], json!(100));
    // The first run was completed before the second started.
    let complete_first = requests
        .iter()
        .position(|r| r.path.contains(&runs[0]) && r.body["complete"] == json!(true))
        .unwrap();
    let second_created = requests
        .iter()
        .position(|r| r.body["variables"]["name"] == json!(runs[1]))
        .unwrap();
    assert!(complete_first < second_created);
    // Every line is strict JSON (no Infinity/NaN tokens): the +inf model is null.
    assert_eq!(first[0]["uid_data"], json!({"1": 6.5, "2": 4.0, "3": null}));

    // The dashboard's logic, as it runs it: run.history()['original_format_json']
    // -> json.loads -> isValidUIDItem -> min(average_loss) per step.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("runs.json");
    // Keyed by run id: here both runs start within one second, so their
    // display names (second resolution) can be equal.
    let mut by_run = Vec::new();
    for (u, run) in upserts.iter().zip(&runs) {
        let rows: Vec<Value> = history_of(&requests, run, &|_| true)
            .into_iter()
            .map(|l| l["original_format_json"].clone())
            .collect();
        by_run.push(json!({"name": u.body["variables"]["displayName"], "rows": rows}));
    }
    std::fs::write(&input, Value::Array(by_run).to_string()).unwrap();
    let script = r#"
import json, re, sys
from math import isnan, isinf
def isValidUIDItem(item):
    if item["block"] is None or isnan(item["block"]) or isinf(item["block"]):
        return False
    if item["average_loss"] is None or isnan(item["average_loss"]) or isinf(item["average_loss"]):
        return False
    return True
runs = json.load(open(sys.argv[1]))
best = {}
for run in runs:
    name, rows = run["name"], run["rows"]
    assert re.match(r"^validator-(\d+)-(\d+)-(\d+)-(\d+)_.+$", name), name
    for ele in rows:
        item = json.loads(ele)
        for uid in item.get("uids", []):
            d = item["uid_data"].get(str(uid))
            if isValidUIDItem(d):
                if item["timestamp"] not in best or d["average_loss"] < best[item["timestamp"]][1]:
                    best[item["timestamp"]] = (uid, d["average_loss"])
winners = {uid for uid, _ in best.values()}
print(json.dumps({"steps": len(best), "winners": sorted(winners)}))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result, json!({"steps": 101, "winners": [2]}));
}

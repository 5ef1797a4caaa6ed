//! An offline run file we write, read back by wandb's own reader (wandb
//! 0.19.11's `DataStore` and `wandb_internal_pb2.Record`, the Python code
//! `wandb sync` used) with every record intact. Needs a Python with
//! `wandb==0.19.11` in `PRETRAIN_WANDB_PYTHON`; `.ci/run` makes one.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use pretrain_telemetry::wandb::validator::{
    UidStep, ValidatorIdentity, ValidatorLog, ValidatorStep,
};
use pretrain_telemetry::wandb::Mode;
use serde_json::{json, Value};

const READER: &str = r#"
import json, sys
import wandb
wandb._assert_is_internal_process = True
from wandb.sdk.internal.datastore import DataStore
from wandb.proto import wandb_internal_pb2 as pb
ds = DataStore()
ds.open_for_scan(sys.argv[1])
out = []
while True:
    data = ds.scan_data()
    if data is None:
        break
    r = pb.Record()
    r.ParseFromString(data)
    kind = r.WhichOneof("record_type")
    rec = {"kind": kind, "num": r.num}
    if kind == "run":
        rec.update(run_id=r.run.run_id, entity=r.run.entity, project=r.run.project,
                   display_name=r.run.display_name,
                   config={i.key: json.loads(i.value_json) for i in r.run.config.update})
    elif kind == "history":
        rec.update(step=r.history.step.num,
                   items={i.key: json.loads(i.value_json) for i in r.history.item})
    elif kind == "summary":
        rec.update(items={i.key: json.loads(i.value_json) for i in r.summary.update})
    elif kind == "exit":
        rec.update(exit_code=r.exit.exit_code)
    out.append(rec)
print(json.dumps(out))
"#;

#[tokio::test]
#[ignore = "needs PRETRAIN_WANDB_PYTHON: a Python with wandb==0.19.11 (.ci/run makes one)"]
async fn an_offline_run_reads_back_in_wandbs_own_reader() {
    let python = std::env::var("PRETRAIN_WANDB_PYTHON").expect("PRETRAIN_WANDB_PYTHON");
    let dir = tempfile::tempdir().unwrap();
    let mode = Mode::Offline {
        dir: dir.path().to_path_buf(),
    };
    let who = ValidatorIdentity {
        uid: 3,
        hotkey: "5Hotkey".into(),
        version: "0.1.0".into(),
    };
    let mut log = ValidatorLog::new(mode, None, None, who);
    // 100 steps (one run: the 101st would start a new one) of 40 uids: records of ~5 KB, so many cross a 32 KiB block.
    let steps: Vec<ValidatorStep> = (0..100u64)
        .map(|s| {
            let uid_data: Vec<UidStep> = (0..40u16)
                .map(|u| UidStep {
                    uid: u,
                    block: Some(1000 + u as u64),
                    average_loss: if u == 39 {
                        f64::INFINITY
                    } else {
                        3.0 + u as f64 / 7.0 + s as f64 / 1000.0
                    },
                    win_rate: u as f64 / 40.0,
                    win_total: u as u64,
                    weight: 1.0 / 40.0,
                })
                .collect();
            ValidatorStep {
                global_step: s,
                block: 5000 + s,
                timestamp: 1_764_583_200.25 + s as f64,
                pages: vec![s, s + 1, s + 2],
                uids: (0..40).collect(),
                uid_data,
                load_model_perf_log: format!("Load model: {s} samples"),
                compute_model_perf_log: "x".repeat(if s == 77 { 70_000 } else { 10 }),
            }
        })
        .collect();
    for s in &steps {
        log.log_step(s).await.unwrap();
    }
    let path = log.run().unwrap().offline_path().unwrap().to_path_buf();
    log.finish(0).await.unwrap();
    assert!(path
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("offline-run-"));

    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(READER)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();

    let run = &records[0];
    assert_eq!(run["kind"], json!("run"));
    assert!(run["display_name"]
        .as_str()
        .unwrap()
        .starts_with("validator-3-"));
    assert_eq!(run["project"], json!("pretraining-subnet"));
    assert_eq!(run["entity"], json!("opentensor-dev"));
    assert_eq!(run["config"]["type"], json!("validator"));
    assert_eq!(run["config"]["uid"], json!(3));
    assert_eq!(run["config"]["hotkey"], json!("5Hotkey"));

    let history: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == json!("history"))
        .collect();
    assert_eq!(history.len(), steps.len());
    for (h, s) in history.iter().zip(&steps) {
        assert_eq!(h["step"], json!(s.global_step));
        let items = &h["items"];
        assert_eq!(items["_step"], json!(s.global_step));
        assert_eq!(items["block"], json!(s.block));
        assert_eq!(
            items["compute_model_perf_log"],
            json!(s.compute_model_perf_log)
        );
        assert_eq!(items["load_model_perf_log"], json!(s.load_model_perf_log));
        let original: Value =
            serde_json::from_str(items["original_format_json"].as_str().unwrap()).unwrap();
        assert_eq!(original["pages"], json!(s.pages));
        assert_eq!(original["timestamp"], json!(s.timestamp));
        for u in &s.uid_data {
            let key = u.uid.to_string();
            let expect = if u.average_loss.is_finite() {
                json!(u.average_loss)
            } else {
                Value::Null
            };
            assert_eq!(items["uid_data"][&key], expect);
            assert_eq!(original["uid_data"][&key]["average_loss"], expect);
            assert_eq!(original["uid_data"][&key]["win_total"], json!(u.win_total));
            assert_eq!(items["weight_data"][&key], json!(u.weight));
        }
    }
    let nums: Vec<u64> = records.iter().map(|r| r["num"].as_u64().unwrap()).collect();
    assert_eq!(nums, (1..=records.len() as u64).collect::<Vec<_>>());
    let exit = records.last().unwrap();
    assert_eq!(exit["kind"], json!("exit"));
    assert_eq!(exit["exit_code"], json!(0));
}

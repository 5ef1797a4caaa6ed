//! The parent side of the evaluation worker protocol, against stand-in
//! workers written in `sh`: answers are taken as sent, every misbehaviour
//! costs only that model, and the next model loads while one evaluates.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job
#![cfg(unix)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pretrain_neurons::validator::worker::{evaluate_models, ModelJob, WorkerSpec};

// $1..$4 = --model DIR --device cpu. The model path says how to behave.
const WORKER: &str = r#"
dir="$2"
case "$dir" in *slowload*) sleep 1;; esac
case "$dir" in *refuse*) echo '{"error":"architecture not supported: bert"}'; exit 2;; esac
echo '{"loaded":true}'
read line
case "$dir" in
  *die*) kill -9 $$;;
  *garbage*) echo 'not json'; exit 0;;
  *short*) echo '{"losses":[1.0]}'; exit 0;;
  *hang*) sleep 30;;
  *slow*) sleep 1;;
esac
echo '{"losses":[1.5,"inf"]}'
"#;

fn spec(eval_timeout: Duration) -> Arc<WorkerSpec> {
    Arc::new(WorkerSpec {
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".into(), WORKER.into(), "worker".into()],
        device: "cpu".into(),
        mem_limit: Some(1 << 30),
        load_timeout: Duration::from_secs(5),
        eval_timeout,
        threads: Some(1),
    })
}

fn jobs(names: &[&str]) -> Vec<ModelJob> {
    names
        .iter()
        .enumerate()
        .map(|(k, n)| ModelJob {
            uid: k as u16,
            dir: PathBuf::from(format!("/models/{n}")),
            check: None,
        })
        .collect()
}

fn batches() -> Vec<Vec<Vec<u32>>> {
    vec![vec![vec![1, 2, 3]], vec![vec![4, 5, 6]]]
}

#[tokio::test]
async fn each_misbehaving_worker_costs_only_its_model() {
    let names = ["good", "refuse", "die", "garbage", "short", "hang", "good2"];
    let out = evaluate_models(spec(Duration::from_secs(2)), jobs(&names), &batches(), 3).await;
    assert_eq!(out.len(), names.len());
    let err = |uid: u16| out[&uid].as_ref().unwrap_err().clone();
    assert_eq!(out[&0].as_ref().unwrap(), &vec![1.5, f64::INFINITY]);
    assert_eq!(out[&6].as_ref().unwrap(), &vec![1.5, f64::INFINITY]);
    assert_eq!(err(1), "architecture not supported: bert");
    assert!(err(2).contains("signal 9"), "{}", err(2));
    assert!(err(3).contains("not a message"), "{}", err(3));
    assert!(err(4).contains("1 losses for 2 batches"), "{}", err(4));
    assert!(err(5).contains("time limit of 2s"), "{}", err(5));
}

#[tokio::test]
async fn the_next_model_loads_while_one_evaluates() {
    // Each model: 1 s to load, 1 s to evaluate. One evaluation slot.
    // Strictly one after another: 3 x 2 s = 6 s. With the next child
    // loading during the current evaluation: about 1 + 3 x 1 = 4 s.
    let names = ["slowload-slow-a", "slowload-slow-b", "slowload-slow-c"];
    let t = Instant::now();
    let out = evaluate_models(spec(Duration::from_secs(10)), jobs(&names), &batches(), 1).await;
    let one_slot = t.elapsed();
    assert!(out.values().all(|r| r.is_ok()), "{out:?}");
    assert!(one_slot >= Duration::from_millis(3900), "{one_slot:?}");
    assert!(one_slot < Duration::from_millis(5500), "{one_slot:?}");

    // Three slots: all at once, about 2 s.
    let t = Instant::now();
    let out = evaluate_models(spec(Duration::from_secs(10)), jobs(&names), &batches(), 3).await;
    let three_slots = t.elapsed();
    assert!(out.values().all(|r| r.is_ok()), "{out:?}");
    assert!(three_slots < Duration::from_millis(3500), "{three_slots:?}");
}

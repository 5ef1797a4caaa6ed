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
    let err = |uid: u16| out[&uid].failure().unwrap().to_string();
    assert_eq!(out[&0].losses().unwrap(), &[1.5, f64::INFINITY]);
    assert_eq!(out[&6].losses().unwrap(), &[1.5, f64::INFINITY]);
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
    assert!(out.values().all(|r| r.losses().is_some()), "{out:?}");
    assert!(one_slot >= Duration::from_millis(3900), "{one_slot:?}");
    assert!(one_slot < Duration::from_millis(5500), "{one_slot:?}");

    // Three slots: all at once, about 2 s.
    let t = Instant::now();
    let out = evaluate_models(spec(Duration::from_secs(10)), jobs(&names), &batches(), 3).await;
    let three_slots = t.elapsed();
    assert!(out.values().all(|r| r.losses().is_some()), "{out:?}");
    assert!(three_slots < Duration::from_millis(3500), "{three_slots:?}");
}

#[tokio::test]
async fn a_missing_worker_program_is_not_evaluated_not_inf() {
    let spec = Arc::new(WorkerSpec {
        program: PathBuf::from("/nonexistent/pretrain"),
        ..(*spec(Duration::from_secs(2))).clone()
    });
    let out = evaluate_models(spec, jobs(&["good", "good2"]), &batches(), 2).await;
    assert_eq!(out.len(), 2);
    for r in out.values() {
        let why = r.not_evaluated().unwrap_or_else(|| panic!("{r:?}"));
        assert!(why.contains("No such file"), "{why}");
        assert!(r.failure().is_none());
    }
}

/// Runs this test binary again as a helper running only `test` with
/// `HELPER_ENV` set to `mode`, and returns its output (the helper changes
/// process-wide limits, which must not reach the other tests).
fn in_helper(test: &str, mode: &str) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, mode)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helper failed:\n{text}");
    assert!(
        text.contains("HELPER OK"),
        "the helper did not run:\n{text}"
    );
    text
}

const HELPER_ENV: &str = "PRETRAIN_TEST_WORKER_HELPER";

/// In the helper: every descriptor up to the limit taken, so that no pipe
/// for a worker can be made; returns the files to close.
fn exhaust_fds() -> Vec<std::fs::File> {
    let lim = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    // SAFETY: setrlimit only reads `lim`.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                return held;
            }
        }
    }
}

#[test]
fn out_of_file_descriptors_a_worker_is_not_evaluated_then_evaluated_once_they_are_back() {
    let test =
        "out_of_file_descriptors_a_worker_is_not_evaluated_then_evaluated_once_they_are_back";
    if std::env::var_os(HELPER_ENV).is_none() {
        in_helper(test, "fds");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let held = exhaust_fds();
    let out = rt.block_on(evaluate_models(
        spec(Duration::from_secs(5)),
        jobs(&["good", "good2"]),
        &batches(),
        2,
    ));
    // Freed before asserting, so a failure can still be reported.
    drop(held);
    assert_eq!(out.len(), 2);
    for r in out.values() {
        let why = r.not_evaluated().unwrap_or_else(|| panic!("{r:?}"));
        assert!(why.contains("Too many open files"), "{why}");
    }
    // The same models, with descriptors back: evaluated.
    let out = rt.block_on(evaluate_models(
        spec(Duration::from_secs(5)),
        jobs(&["good", "good2"]),
        &batches(),
        2,
    ));
    for r in out.values() {
        assert_eq!(r.losses(), Some(&[1.5, f64::INFINITY][..]), "{r:?}");
    }
    println!("HELPER OK");
}

#[test]
fn out_of_processes_a_worker_is_not_evaluated() {
    let test = "out_of_processes_a_worker_is_not_evaluated";
    if std::env::var_os(HELPER_ENV).is_none() {
        in_helper(test, "nproc");
        return;
    }
    // RLIMIT_NPROC binds only processes without CAP_SYS_RESOURCE: as root,
    // become nobody first (before any thread starts).
    // SAFETY: getuid and setuid take no pointers.
    unsafe {
        if libc::getuid() == 0 {
            assert_eq!(libc::setgid(65534), 0);
            assert_eq!(libc::setuid(65534), 0);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit only reads `lim`.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &lim) }, 0);
    let out = rt.block_on(evaluate_models(
        spec(Duration::from_secs(5)),
        jobs(&["good"]),
        &batches(),
        1,
    ));
    let why = out[&0]
        .not_evaluated()
        .unwrap_or_else(|| panic!("{out:?}"))
        .to_string();
    assert!(why.contains("Resource temporarily unavailable"), "{why}");
    println!("HELPER OK");
}

//! The evaluation worker protocol: each model is evaluated in a child
//! process, so that a model that panics, aborts, hangs or exhausts memory
//! costs that model `+inf` and never the validator.
//!
//! One child per model, JSON lines over its stdin/stdout:
//! 1. parent starts `<program> <args..> --model DIR --device D`, with an
//!    address-space limit (`RLIMIT_AS`) set in the child before `exec`;
//! 2. child checks and loads the model (safetensors and JSON only), then
//!    writes `{"loaded": true}` (or `{"error": "reason"}` and exits);
//! 3. parent writes `{"batches": [[[ids..]..]..]}` (one line);
//! 4. child writes `{"losses": [..]}` (`"inf"` for a failed batch) and exits.
//!
//! Loading is split from evaluating so the next model loads while the
//! current one is evaluated: a child is started ahead and waits, loaded, for
//! its batches. Every read has a time limit; a child that misses one is
//! killed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use pretrain_core::scoring::{JsonF64, Uid};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Environment variable that makes a worker misbehave, for tests only:
/// `NEEDLE=FAULT[,NEEDLE=FAULT..]`; a worker whose model path contains
/// NEEDLE applies FAULT after reading its batches: `abort`, `panic`,
/// `sleep` (hangs), `alloc` (allocates until memory runs out). Read only
/// in builds with the `test-faults` feature (the cli's tests enable it); a
/// release build ignores it.
pub const TEST_FAULT_ENV: &str = "PRETRAIN_TEST_WORKER_FAULT";

/// How to start workers and what they may use.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The executable (the `pretrain` binary).
    pub program: PathBuf,
    /// Arguments before `--model` (the hidden subcommand).
    pub args: Vec<OsString>,
    /// `--device` of the child.
    pub device: String,
    /// Address-space limit of the child in bytes (`None`: unlimited).
    pub mem_limit: Option<u64>,
    /// Time a child has to load its model.
    pub load_timeout: Duration,
    /// Time a child has to evaluate once it has its batches.
    pub eval_timeout: Duration,
    /// Compute threads per child (`RAYON_NUM_THREADS`), unless already set.
    pub threads: Option<usize>,
}

/// A worker's messages to the parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMessage {
    /// The model is loaded; send the batches.
    Loaded(bool),
    /// The model could not be loaded (the reason).
    Error(String),
    /// A loss per batch.
    Losses(Vec<JsonF64>),
}

#[derive(Debug, Serialize, Deserialize)]
struct BatchesMessage {
    batches: Vec<Vec<Vec<u32>>>,
}

/// The `{"batches": ..}` line sent to every child of a step; made once.
pub fn batches_line(batches: &[Vec<Vec<u32>>]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Ref<'a> {
        batches: &'a [Vec<Vec<u32>>],
    }
    // Serialising plain integers cannot fail.
    let mut line = serde_json::to_vec(&Ref { batches }).unwrap_or_default();
    line.push(b'\n');
    line
}

fn send(out: &mut impl Write, msg: &WorkerMessage) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// The child's side: load, signal, read batches, answer. Returns the
/// process exit code (0: losses sent; 2: the model was refused).
pub fn run_worker(
    model: &Path,
    device: &Device,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> std::io::Result<i32> {
    run_worker_with(model, device, Default::default(), input, output)
}

/// [`run_worker`] computing as `options` say (`--kernels`, `--dtype`).
pub fn run_worker_with(
    model: &Path,
    device: &Device,
    options: pretrain_model::ComputeOptions,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> std::io::Result<i32> {
    let loaded = match pretrain_model::evaluate::load_for_eval_with(model, device, options) {
        Ok(m) => m,
        Err(e) => {
            send(output, &WorkerMessage::Error(e.to_string()))?;
            return Ok(2);
        }
    };
    send(output, &WorkerMessage::Loaded(true))?;
    let mut line = String::new();
    input.read_line(&mut line)?;
    let msg: BatchesMessage = serde_json::from_str(&line)
        .map_err(|e| std::io::Error::other(format!("bad batches message: {e}")))?;
    test_fault(model);
    let losses = pretrain_model::evaluate::losses(&loaded, &msg.batches);
    send(
        output,
        &WorkerMessage::Losses(losses.into_iter().map(|l| JsonF64(f64::from(l))).collect()),
    )?;
    Ok(0)
}

// Test-only misbehaviour; see TEST_FAULT_ENV.
#[cfg(not(feature = "test-faults"))]
fn test_fault(_model: &Path) {}

// Test-only misbehaviour; see TEST_FAULT_ENV.
#[cfg(feature = "test-faults")]
fn test_fault(model: &Path) {
    let Ok(spec) = std::env::var(TEST_FAULT_ENV) else {
        return;
    };
    let path = model.to_string_lossy();
    for rule in spec.split(',') {
        let Some((needle, fault)) = rule.split_once('=') else {
            continue;
        };
        if needle.is_empty() || !path.contains(needle) {
            continue;
        }
        match fault {
            "abort" => std::process::abort(),
            "panic" => panic!("test fault: panic"),
            "sleep" => std::thread::sleep(Duration::from_secs(3600)),
            "alloc" => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch the pages so the memory is really used.
                    hog.push(vec![1u8; 64 << 20]);
                }
            }
            _ => {}
        }
    }
}

/// One model to evaluate.
#[derive(Debug, Clone)]
pub struct ModelJob {
    /// Its uid.
    pub uid: Uid,
    /// Its snapshot directory.
    pub dir: PathBuf,
}

/// A model's losses per batch, or why it has none (it then scores `+inf`).
pub type JobResult = Result<Vec<f64>, String>;

struct Child {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: BufReader<tokio::process::ChildStdout>,
}

impl WorkerSpec {
    fn spawn(&self, dir: &Path) -> Result<Child, String> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .arg("--model")
            .arg(dir)
            .arg("--device")
            .arg(&self.device)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(t) = self.threads {
            if std::env::var_os("RAYON_NUM_THREADS").is_none() {
                cmd.env("RAYON_NUM_THREADS", t.to_string());
            }
        }
        #[cfg(unix)]
        {
            let limit = self.mem_limit;
            // SAFETY: only setrlimit and prctl (async-signal-safe) run between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if let Some(limit) = limit {
                        let lim = libc::rlimit {
                            rlim_cur: limit as libc::rlim_t,
                            rlim_max: limit as libc::rlim_t,
                        };
                        if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    // A validator killed with -9 takes its workers with it.
                    #[cfg(target_os = "linux")]
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start worker {}: {e}", self.program.display()))?;
        let stdin = child.stdin.take().ok_or("worker has no stdin")?;
        let stdout = child.stdout.take().ok_or("worker has no stdout")?;
        Ok(Child {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }
}

impl Child {
    async fn read_message(&mut self, limit: Duration, what: &str) -> Result<WorkerMessage, String> {
        let mut line = String::new();
        match tokio::time::timeout(limit, self.stdout.read_line(&mut line)).await {
            Err(_) => {
                let _ = self.child.start_kill();
                Err(format!(
                    "worker exceeded its time limit of {limit:?} while {what} (killed)"
                ))
            }
            Ok(Err(e)) => Err(format!("reading from the worker: {e}")),
            Ok(Ok(0)) => Err(self.death().await),
            Ok(Ok(_)) => serde_json::from_str(&line)
                .map_err(|e| format!("worker sent something that is not a message ({e})")),
        }
    }

    // Why a child closed its output without answering.
    async fn death(&mut self) -> String {
        let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        match status {
            Ok(Ok(s)) => {
                #[cfg(unix)]
                {
                    use std::os::unix::process::ExitStatusExt;
                    if let Some(sig) = s.signal() {
                        let name = match sig {
                            libc::SIGABRT => " (SIGABRT: abort or out of memory)",
                            libc::SIGKILL => " (SIGKILL)",
                            libc::SIGSEGV => " (SIGSEGV)",
                            _ => "",
                        };
                        return format!("worker died from signal {sig}{name}");
                    }
                }
                format!("worker exited with {s} without an answer (panic or crash)")
            }
            Ok(Err(e)) => format!("worker vanished: {e}"),
            Err(_) => {
                let _ = self.child.start_kill();
                "worker closed its output but did not exit (killed)".into()
            }
        }
    }
}

async fn run_job(
    spec: Arc<WorkerSpec>,
    job: ModelJob,
    line: Arc<Vec<u8>>,
    n_batches: usize,
    eval_slots: Arc<Semaphore>,
) -> JobResult {
    let mut child = spec.spawn(&job.dir)?;
    match child.read_message(spec.load_timeout, "loading").await? {
        WorkerMessage::Loaded(_) => {}
        WorkerMessage::Error(reason) => return Err(reason),
        WorkerMessage::Losses(_) => return Err("worker answered before it was asked".into()),
    }
    // Loaded ahead of time; now wait for a slot to evaluate in.
    let _slot = eval_slots
        .acquire_owned()
        .await
        .map_err(|_| "evaluation cancelled".to_string())?;
    debug!(uid = job.uid, "worker loaded, sending batches");
    if let Err(e) = child.stdin.write_all(&line).await {
        let why = child.death().await;
        return Err(format!("cannot send batches to the worker ({e}): {why}"));
    }
    let _ = child.stdin.flush().await;
    match child.read_message(spec.eval_timeout, "evaluating").await? {
        WorkerMessage::Losses(l) if l.len() == n_batches => {
            let _ = tokio::time::timeout(Duration::from_secs(5), child.child.wait()).await;
            Ok(l.into_iter().map(|x| x.0).collect())
        }
        WorkerMessage::Losses(l) => Err(format!(
            "worker returned {} losses for {n_batches} batches",
            l.len()
        )),
        WorkerMessage::Error(reason) => Err(reason),
        WorkerMessage::Loaded(_) => Err("worker said loaded twice".into()),
    }
}

/// Evaluates every job on the same batches, `workers` at a time, with one
/// more child loading ahead; results by uid. Never fails as a whole: a
/// model's failure is its `Err(reason)`.
pub async fn evaluate_models(
    spec: Arc<WorkerSpec>,
    jobs: Vec<ModelJob>,
    batches: &[Vec<Vec<u32>>],
    workers: usize,
) -> BTreeMap<Uid, JobResult> {
    let workers = workers.max(1);
    let line = Arc::new(batches_line(batches));
    let n_batches = batches.len();
    let eval_slots = Arc::new(Semaphore::new(workers));
    // Children alive at once: `workers` evaluating and one loading ahead.
    let alive = Arc::new(Semaphore::new(workers + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for job in jobs {
        let Ok(permit) = alive.clone().acquire_owned().await else {
            break;
        };
        let (spec, line, slots) = (spec.clone(), line.clone(), eval_slots.clone());
        tasks.spawn(async move {
            let uid = job.uid;
            let r = run_job(spec, job, line, n_batches, slots).await;
            drop(permit);
            (uid, r)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((uid, r)) => {
                if let Err(reason) = &r {
                    warn!(uid, "model scored +inf: {reason}");
                }
                out.insert(uid, r);
            }
            Err(e) => warn!("evaluation task failed: {e}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/models/tiny-gpt2/model"
        ))
    }

    #[test]
    fn child_side_signals_loaded_then_answers_a_loss_per_batch() {
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tiny().join("../expected.json")).unwrap())
                .unwrap();
        let case = &expected["batches"][0];
        let batch: Vec<Vec<u32>> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let bad = vec![vec![u32::MAX; 4]];
        let mut input = std::io::Cursor::new(batches_line(&[batch, bad]));
        let mut output = Vec::new();
        let code = run_worker(&tiny(), &Device::Cpu, &mut input, &mut output).unwrap();
        assert_eq!(code, 0);
        let text = String::from_utf8(output).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], r#"{"loaded":true}"#);
        let msg: WorkerMessage = serde_json::from_str(lines[1]).unwrap();
        let WorkerMessage::Losses(l) = msg else {
            panic!("{text}")
        };
        // The loss transformers computed for this batch; the bad batch is +inf.
        assert!((l[0].0 - case["loss"].as_f64().unwrap()).abs() < 1e-4);
        assert_eq!(l[1].0, f64::INFINITY);
        assert!(lines[1].contains(r#""inf""#));
    }

    #[test]
    fn child_side_refuses_a_model_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), br#"{"model_type": "bert"}"#).unwrap();
        let mut output = Vec::new();
        let code =
            run_worker(dir.path(), &Device::Cpu, &mut std::io::empty(), &mut output).unwrap();
        assert_eq!(code, 2);
        let msg: WorkerMessage = serde_json::from_slice(&output).unwrap();
        let WorkerMessage::Error(reason) = msg else {
            panic!()
        };
        assert!(
            reason.contains("bert") || reason.contains("architecture"),
            "{reason}"
        );
    }
}

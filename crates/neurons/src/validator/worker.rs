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
//!
//! Where a child runs is the [`Backend`]: a local process (the default) or
//! a Slurm job ([`super::slurm`]), whose `srun` carries the same pipe. The
//! scheduling here (slots, load-ahead, time limits, `+inf` on any failure)
//! is the same for both.

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
use tracing::{debug, info, warn};

use super::slurm::SlurmSpec;

/// Where model jobs run.
#[derive(Debug, Clone, Default)]
pub enum Backend {
    /// Child processes of the validator (`--eval_workers` evaluating, one
    /// more loading ahead).
    #[default]
    Local,
    /// One Slurm job per model (`--eval_workers` jobs in flight).
    Slurm(Arc<SlurmSpec>),
}

impl Backend {
    /// Jobs alive at once for `workers` evaluating: locally one more loads
    /// ahead; on Slurm every job in flight holds its own resources, so the
    /// count is `workers` and the cluster queues the rest.
    fn alive(&self, workers: usize) -> usize {
        match self {
            Backend::Local => workers + 1,
            Backend::Slurm(_) => workers,
        }
    }

    /// Cancels what an earlier run of this validator left behind (Slurm
    /// jobs of a killed validator keep running); nothing locally, where
    /// children die with their parent.
    pub async fn clean_up_earlier_runs(&self) {
        if let Backend::Slurm(s) = self {
            match s.cancel_all().await {
                Ok(0) => info!(prefix = %s.job_prefix, "Slurm backend: no jobs of an earlier run"),
                Ok(n) => {
                    info!(prefix = %s.job_prefix, "Slurm backend: cancelled {n} job(s) of an earlier run")
                }
                Err(e) => warn!("Slurm backend: cannot look for jobs of an earlier run: {e}"),
            }
        }
    }

    /// Cancels every job still in flight (the validator is stopping).
    pub async fn cancel_all(&self) {
        if let Backend::Slurm(s) = self {
            s.cancel_all_logged("at stop").await;
        }
    }
}

/// Environment variable that makes a worker misbehave, for tests only:
/// `NEEDLE=FAULT[,NEEDLE=FAULT..]`; a worker whose model path contains
/// NEEDLE applies FAULT after reading its batches: `abort`, `panic`,
/// `sleep` (hangs), `alloc` (allocates until memory runs out), `grow`
/// (allocates 16 MiB every 50 ms: slowly enough for a sampling memory
/// limit such as Slurm's to see it before the host runs out). Read only
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
    /// The worker could not do its work for reasons of its own (the
    /// validator's: out of file descriptors or memory, a read error of the
    /// model directory): the model is not evaluated, not refused.
    NotEvaluated(String),
}

/// Exit code of a worker that could not work for its own reasons (it said
/// so with [`WorkerMessage::NotEvaluated`] where it could).
pub const NOT_EVALUATED_EXIT: i32 = 3;

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
    run_worker_checked(model, device, options, None, input, output)
}

/// The hash a model directory must have before a worker loads it (the
/// directory may sit on a shared filesystem the validator did not write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashCheck {
    /// The committed hash: the directory's `hash_of_directory`, or, under
    /// the competition rules, its secure hash with `hotkey`.
    pub hash: String,
    /// The miner's hotkey (SS58), for the secure hash.
    pub hotkey: Option<String>,
}

impl HashCheck {
    /// `Ok` when `dir` hashes to the committed hash (raw or secure).
    pub fn verify(&self, dir: &Path) -> Result<(), HashFailure> {
        let actual = pretrain_core::hash_of_directory(dir).map_err(|e| {
            HashFailure::Unreadable(format!(
                "cannot hash the model directory {}: {e}",
                dir.display()
            ))
        })?;
        if actual == self.hash {
            return Ok(());
        }
        if let Some(hk) = &self.hotkey {
            if pretrain_core::hash::secure_hash(&actual, hk) == self.hash {
                return Ok(());
            }
        }
        Err(HashFailure::Mismatch(format!(
            "the model directory {} hashes to {actual}, not the committed {} (changed or incomplete on this node)",
            dir.display(),
            self.hash
        )))
    }
}

/// Why [`HashCheck::verify`] refused a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashFailure {
    /// It hashes to something else.
    Mismatch(String),
    /// It could not be read (the validator's own failure).
    Unreadable(String),
}

impl std::fmt::Display for HashFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashFailure::Mismatch(r) | HashFailure::Unreadable(r) => f.write_str(r),
        }
    }
}

/// [`run_worker_with`] that first checks the directory's hash (`check`),
/// refusing the model (exit code 2) when it differs.
pub fn run_worker_checked(
    model: &Path,
    device: &Device,
    options: pretrain_model::ComputeOptions,
    check: Option<&HashCheck>,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> std::io::Result<i32> {
    if let Some(check) = check {
        match check.verify(model) {
            Ok(()) => {}
            Err(HashFailure::Mismatch(why)) => {
                send(output, &WorkerMessage::Error(why))?;
                return Ok(2);
            }
            Err(HashFailure::Unreadable(why)) => {
                send(output, &WorkerMessage::NotEvaluated(why))?;
                return Ok(NOT_EVALUATED_EXIT);
            }
        }
    }
    let loaded = match pretrain_model::evaluate::load_for_eval_with(model, device, options) {
        Ok(m) => m,
        Err(e) if !super::failure::model_is_content(&e) => {
            send(
                output,
                &WorkerMessage::NotEvaluated(format!("cannot load the model: {e}")),
            )?;
            return Ok(NOT_EVALUATED_EXIT);
        }
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
            "grow" => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                // Bounded, so that no limit at all still ends the test (8 GiB).
                for _ in 0..512 {
                    hog.push(vec![1u8; 16 << 20]);
                    std::thread::sleep(Duration::from_millis(50));
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
    /// The hash the worker checks before loading (`None`: no check). The
    /// Slurm backend passes it on; locally the validator's own download
    /// check stands.
    pub check: Option<HashCheck>,
}

/// What became of one model job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobResult {
    /// A loss per batch.
    Losses(Vec<f64>),
    /// The model failed on its own content (refused, crashed, too slow,
    /// too large): it scores `+inf`.
    Failed(String),
    /// The validator could not evaluate it (a worker it could not start,
    /// Slurm refusing the job, ...): no score this step, and the model
    /// keeps its earlier standing.
    NotEvaluated(String),
}

impl JobResult {
    /// The losses, if the model was evaluated.
    pub fn losses(&self) -> Option<&[f64]> {
        match self {
            JobResult::Losses(l) => Some(l),
            _ => None,
        }
    }

    /// Why the model failed on its content (`None`: evaluated, or deferred).
    pub fn failure(&self) -> Option<&str> {
        match self {
            JobResult::Failed(r) => Some(r),
            _ => None,
        }
    }

    /// Why the validator could not evaluate it (`None`: it was).
    pub fn not_evaluated(&self) -> Option<&str> {
        match self {
            JobResult::NotEvaluated(r) => Some(r),
            _ => None,
        }
    }
}

/// Why a job gave no losses, and whose fault that is.
#[derive(Debug)]
enum JobError {
    /// The model's.
    Model(String),
    /// The validator's own.
    Ours(String),
}

impl From<String> for JobError {
    fn from(reason: String) -> Self {
        JobError::Model(reason)
    }
}

impl From<&str> for JobError {
    fn from(reason: &str) -> Self {
        JobError::Model(reason.to_string())
    }
}

struct Child {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: BufReader<tokio::process::ChildStdout>,
    /// Set when the child is the `srun` of a Slurm job.
    slurm: Option<SlurmJob>,
}

/// Lines of a Slurm job's stderr kept for its failure reason.
const STDERR_TAIL: usize = 20;

/// The Slurm side of a child: its job name, the tail of its stderr, and
/// whether it answered (a job dropped without answering is cancelled).
struct SlurmJob {
    spec: Arc<SlurmSpec>,
    name: String,
    tail: Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
    answered: bool,
}

impl Drop for SlurmJob {
    fn drop(&mut self) {
        // A killed srun leaves its job running: cancel it by name.
        if !self.answered {
            self.spec.cancel_in_background(&self.name);
        }
    }
}

// Common to both backends: the child's pipes, and the validator's death taking it along.
fn pipe_and_tie(cmd: &mut tokio::process::Command) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
}

#[cfg(unix)]
fn pre_exec_limits(cmd: &mut tokio::process::Command, limit: Option<u64>) {
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

#[cfg(not(unix))]
fn pre_exec_limits(_cmd: &mut tokio::process::Command, _limit: Option<u64>) {}

impl WorkerSpec {
    /// Starts the job's worker; every failure here is the validator's own
    /// (no file descriptors or processes left, no memory, no program).
    fn spawn(&self, backend: &Backend, step: u64, job: &ModelJob) -> Result<Child, JobError> {
        match backend {
            Backend::Local => self.spawn_local(&job.dir),
            Backend::Slurm(s) => self.spawn_slurm(s, step, job),
        }
        .map_err(JobError::Ours)
    }

    fn spawn_local(&self, dir: &Path) -> Result<Child, String> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .arg("--model")
            .arg(dir)
            .arg("--device")
            .arg(&self.device)
            .stderr(Stdio::inherit());
        pipe_and_tie(&mut cmd);
        if let Some(t) = self.threads {
            if std::env::var_os("RAYON_NUM_THREADS").is_none() {
                cmd.env("RAYON_NUM_THREADS", t.to_string());
            }
        }
        pre_exec_limits(&mut cmd, self.mem_limit);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start worker {}: {e}", self.program.display()))?;
        let stdin = child.stdin.take().ok_or("worker has no stdin")?;
        let stdout = child.stdout.take().ok_or("worker has no stdout")?;
        Ok(Child {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            slurm: None,
        })
    }

    fn spawn_slurm(&self, s: &Arc<SlurmSpec>, step: u64, job: &ModelJob) -> Result<Child, String> {
        let name = s.job_name(step, job.uid);
        let mut cmd = s.srun(&name);
        cmd.args(&self.args)
            .arg("--model")
            .arg(s.node_path(&job.dir))
            .arg("--device")
            .arg(&self.device);
        if let Some(check) = &job.check {
            cmd.arg("--hash").arg(&check.hash);
            if let Some(hk) = &check.hotkey {
                cmd.arg("--hotkey").arg(hk);
            }
        }
        cmd.stderr(Stdio::piped());
        pipe_and_tie(&mut cmd);
        // No address-space limit: Slurm's --mem is the limit, and srun
        // would pass ours on to the task (PropagateResourceLimits).
        pre_exec_limits(&mut cmd, None);
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start {} for Slurm job {name}: {e}",
                s.commands.srun.display()
            )
        })?;
        let stdin = child.stdin.take().ok_or("srun has no stdin")?;
        let stdout = child.stdout.take().ok_or("srun has no stdout")?;
        let stderr = child.stderr.take().ok_or("srun has no stderr")?;
        let tail = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let reader = {
            let (tail, name) = (tail.clone(), name.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    info!(job = %name, "{}", pretrain_core::escape::Escaped(&line));
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    if t.len() == STDERR_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            })
        };
        debug!(uid = job.uid, job = %name, "Slurm job submitted");
        Ok(Child {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            slurm: Some(SlurmJob {
                spec: s.clone(),
                name,
                tail,
                reader: Some(reader),
                answered: false,
            }),
        })
    }
}

impl Child {
    async fn read_message(
        &mut self,
        limit: Duration,
        what: &str,
    ) -> Result<WorkerMessage, JobError> {
        let mut line = String::new();
        match tokio::time::timeout(limit, self.stdout.read_line(&mut line)).await {
            Err(_) => {
                // A Slurm job that never left the queue never ran the model.
                let queued = match &self.slurm {
                    Some(j) => j.spec.pending_reason(&j.name).await,
                    None => None,
                };
                let _ = self.child.start_kill();
                let job = match &self.slurm {
                    Some(j) => format!(" (Slurm job {} cancelled)", j.name),
                    None => String::new(),
                };
                match queued {
                    Some(reason) => Err(JobError::Ours(format!(
                        "the Slurm job waited in the queue ({reason}) past the limit of {limit:?}{job}"
                    ))),
                    None => Err(JobError::Model(format!(
                        "worker exceeded its time limit of {limit:?} while {what} (killed){job}"
                    ))),
                }
            }
            Ok(Err(e)) => Err(JobError::Ours(format!("reading from the worker: {e}"))),
            Ok(Ok(0)) => Err(self.death().await),
            Ok(Ok(_)) => serde_json::from_str(&line).map_err(|e| {
                JobError::Model(format!("worker sent something that is not a message ({e})"))
            }),
        }
    }

    // Why a child closed its output without answering.
    async fn death(&mut self) -> JobError {
        let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        if let Some(job) = self.slurm.as_mut() {
            // srun's own exit says little (137, 143): Slurm's lines say why.
            if let Some(reader) = job.reader.take() {
                let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
            }
            let tail: Vec<String> = job
                .tail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            let status = match status {
                Ok(Ok(s)) => s.to_string(),
                Ok(Err(e)) => format!("vanished: {e}"),
                Err(_) => {
                    let _ = self.child.start_kill();
                    "did not exit (killed)".into()
                }
            };
            let end = job.spec.failure(&job.name, &status, &tail);
            return if end.ours {
                JobError::Ours(end.reason)
            } else {
                JobError::Model(end.reason)
            };
        }
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
                        return JobError::Model(format!("worker died from signal {sig}{name}"));
                    }
                }
                if s.code() == Some(NOT_EVALUATED_EXIT) {
                    return JobError::Ours(
                        "worker could not start its work (its own resources; see its stderr)"
                            .into(),
                    );
                }
                JobError::Model(format!(
                    "worker exited with {s} without an answer (panic or crash)"
                ))
            }
            Ok(Err(e)) => JobError::Ours(format!("worker vanished: {e}")),
            Err(_) => {
                let _ = self.child.start_kill();
                JobError::Model("worker closed its output but did not exit (killed)".into())
            }
        }
    }
}

/// What every job of a step shares.
struct StepContext {
    spec: Arc<WorkerSpec>,
    backend: Backend,
    step: u64,
    line: Arc<Vec<u8>>,
    n_batches: usize,
    eval_slots: Arc<Semaphore>,
}

async fn run_job(ctx: Arc<StepContext>, job: ModelJob) -> JobResult {
    match try_job(ctx, job).await {
        Ok(losses) => JobResult::Losses(losses),
        Err(JobError::Model(reason)) => JobResult::Failed(reason),
        Err(JobError::Ours(reason)) => JobResult::NotEvaluated(reason),
    }
}

async fn try_job(ctx: Arc<StepContext>, job: ModelJob) -> Result<Vec<f64>, JobError> {
    let spec = &ctx.spec;
    let mut child = spec.spawn(&ctx.backend, ctx.step, &job)?;
    match child.read_message(spec.load_timeout, "loading").await? {
        WorkerMessage::Loaded(_) => {}
        WorkerMessage::Error(reason) => {
            // The worker answered: its job ends by itself.
            if let Some(j) = child.slurm.as_mut() {
                j.answered = true;
            }
            return Err(JobError::Model(reason));
        }
        WorkerMessage::NotEvaluated(reason) => {
            if let Some(j) = child.slurm.as_mut() {
                j.answered = true;
            }
            return Err(JobError::Ours(reason));
        }
        WorkerMessage::Losses(_) => return Err("worker answered before it was asked".into()),
    }
    // Loaded ahead of time; now wait for a slot to evaluate in.
    let _slot = ctx
        .eval_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| JobError::Ours("evaluation cancelled".into()))?;
    debug!(uid = job.uid, "worker loaded, sending batches");
    if let Err(e) = child.stdin.write_all(&ctx.line).await {
        return Err(match child.death().await {
            JobError::Model(why) => {
                JobError::Model(format!("cannot send batches to the worker ({e}): {why}"))
            }
            JobError::Ours(why) => {
                JobError::Ours(format!("cannot send batches to the worker ({e}): {why}"))
            }
        });
    }
    let _ = child.stdin.flush().await;
    let n_batches = ctx.n_batches;
    match child.read_message(spec.eval_timeout, "evaluating").await? {
        WorkerMessage::Losses(l) if l.len() == n_batches => {
            if let Some(j) = child.slurm.as_mut() {
                j.answered = true;
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), child.child.wait()).await;
            Ok(l.into_iter().map(|x| x.0).collect())
        }
        WorkerMessage::Losses(l) => Err(JobError::Model(format!(
            "worker returned {} losses for {n_batches} batches",
            l.len()
        ))),
        WorkerMessage::Error(reason) => Err(JobError::Model(reason)),
        WorkerMessage::NotEvaluated(reason) => Err(JobError::Ours(reason)),
        WorkerMessage::Loaded(_) => Err("worker said loaded twice".into()),
    }
}

/// Evaluates every job on the same batches, `workers` at a time, with one
/// more child loading ahead; results by uid. Never fails as a whole: a
/// model's failure is its `Err(reason)`. Local children ([`Backend::Local`]).
pub async fn evaluate_models(
    spec: Arc<WorkerSpec>,
    jobs: Vec<ModelJob>,
    batches: &[Vec<Vec<u32>>],
    workers: usize,
) -> BTreeMap<Uid, JobResult> {
    evaluate_step(&Backend::Local, spec, 0, jobs, batches, workers).await
}

/// [`evaluate_models`] on `backend`, for step `step` (Slurm names each job
/// after the step and the uid). On Slurm, `workers` is the number of jobs
/// in flight.
pub async fn evaluate_step(
    backend: &Backend,
    spec: Arc<WorkerSpec>,
    step: u64,
    jobs: Vec<ModelJob>,
    batches: &[Vec<Vec<u32>>],
    workers: usize,
) -> BTreeMap<Uid, JobResult> {
    let workers = workers.max(1);
    let ctx = Arc::new(StepContext {
        spec,
        backend: backend.clone(),
        step,
        line: Arc::new(batches_line(batches)),
        n_batches: batches.len(),
        eval_slots: Arc::new(Semaphore::new(workers)),
    });
    let alive = Arc::new(Semaphore::new(backend.alive(workers)));
    let mut tasks = tokio::task::JoinSet::new();
    for job in jobs {
        let Ok(permit) = alive.clone().acquire_owned().await else {
            break;
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let uid = job.uid;
            let r = run_job(ctx, job).await;
            drop(permit);
            (uid, r)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((uid, r)) => {
                match &r {
                    JobResult::Losses(_) => {}
                    JobResult::Failed(reason) => warn!(
                        uid,
                        "model scored +inf: {}",
                        pretrain_core::escape::Escaped(reason)
                    ),
                    JobResult::NotEvaluated(reason) => warn!(
                        uid,
                        "not evaluated: {}",
                        pretrain_core::escape::Escaped(reason)
                    ),
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
    fn hash_check_accepts_the_raw_or_secure_hash_and_refuses_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(tiny().join(f), dir.path().join(f)).unwrap();
        }
        let raw = pretrain_core::hash_of_directory(dir.path()).unwrap();
        let hotkey = "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe";
        let secure = pretrain_core::secure_hash(&raw, hotkey);
        let check = |hash: &str, hotkey: Option<&str>| HashCheck {
            hash: hash.into(),
            hotkey: hotkey.map(Into::into),
        };
        assert!(check(&raw, None).verify(dir.path()).is_ok());
        assert!(check(&secure, Some(hotkey)).verify(dir.path()).is_ok());
        // The secure hash needs its hotkey; another hotkey's does not match.
        assert!(check(&secure, None).verify(dir.path()).is_err());
        let other = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";
        assert!(check(&secure, Some(other)).verify(dir.path()).is_err());

        // A changed file on the node: refused with both hashes, not loaded.
        let mut bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
        let mut output = Vec::new();
        let code = run_worker_checked(
            dir.path(),
            &Device::Cpu,
            Default::default(),
            Some(&check(&raw, Some(hotkey))),
            &mut std::io::empty(),
            &mut output,
        )
        .unwrap();
        assert_eq!(code, 2);
        let msg: WorkerMessage = serde_json::from_slice(&output).unwrap();
        let WorkerMessage::Error(reason) = msg else {
            panic!()
        };
        assert!(
            reason.contains(&format!("not the committed {raw}")),
            "{reason}"
        );
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

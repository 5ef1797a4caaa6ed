//! The Slurm evaluation backend: each model job is one `srun` of
//! `pretrain eval_worker`, talked to over the same pipe as a local child
//! (`srun` forwards stdin to the task and returns its stdout).
//!
//! Slurm does the placement, the GPU binding (`--gres`), the memory limit
//! (`--mem`, enforced by the node) and a time limit (`--time`, a backstop
//! behind the validator's own). Each job is named
//! `<prefix>-s<step>-u<uid>`, the prefix derived from the validator's
//! `--model_dir`, so that the jobs of one validator are found by name: they
//! are cancelled when a job is abandoned, when the validator stops, and at
//! start (jobs left by a run that was killed).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pretrain_core::scoring::Uid;
use tracing::{info, warn};

/// How model jobs are submitted to Slurm.
#[derive(Debug, Clone)]
pub struct SlurmSpec {
    /// `--partition` (`None`: the cluster's default).
    pub partition: Option<String>,
    /// `--gres`, e.g. `gpu:1` (`None`: no generic resources).
    pub gres: Option<String>,
    /// `--mem` in MiB (`None`: the partition's default).
    pub mem_mb: Option<u64>,
    /// `--time` in Slurm's format (`minutes`, `minutes:seconds`, `h:m:s`, ..).
    pub time: String,
    /// More `srun` arguments, placed before the `--` (e.g. `--account=x`).
    pub extra_args: Vec<String>,
    /// The worker program as the compute nodes see it.
    pub program: PathBuf,
    /// The validator's `--model_dir` (absolute) and the path the compute
    /// nodes see it at; `None`: the same path.
    pub model_dir: Option<(PathBuf, PathBuf)>,
    /// Start of every job name of this validator.
    pub job_prefix: String,
    /// The `srun`, `scancel` and `squeue` executables.
    pub commands: SlurmCommands,
}

/// The Slurm client programs (from `PATH` by default).
#[derive(Debug, Clone)]
pub struct SlurmCommands {
    /// `srun`.
    pub srun: PathBuf,
    /// `scancel`.
    pub scancel: PathBuf,
    /// `squeue`.
    pub squeue: PathBuf,
}

impl Default for SlurmCommands {
    fn default() -> Self {
        Self {
            srun: "srun".into(),
            scancel: "scancel".into(),
            squeue: "squeue".into(),
        }
    }
}

/// What srun and slurmctld write when they will not run a job at all: the
/// request cannot be met or the cluster cannot take it (the validator's
/// configuration or the cluster's state, never the model's).
const REFUSALS: &[&str] = &[
    "Unable to allocate resources",
    "Memory specification can not be satisfied",
    "Requested node configuration is not available",
    "Required partition not available",
    "Job violates accounting/QOS policy",
    "Requested time limit is invalid",
    "Unable to contact slurm controller",
    "Node count specification invalid",
    "Job submit/allocate failed",
    // Invalid partition, account, qos, generic resource, ...
    "Invalid",
];

/// How a Slurm job ended without an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    /// What happened, for the log and the report.
    pub reason: String,
    /// Whether it was the validator's side (the model is not evaluated).
    pub ours: bool,
}

/// Limit of one `squeue` or `scancel` call.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The job-name prefix of the validator whose `--model_dir` is `dir`: two
/// validators sharing a cluster account never cancel each other's jobs.
pub fn job_prefix_for(dir: &Path) -> String {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in abs.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("pretrain-{:08x}", h as u32)
}

/// `--time` for jobs that may take `limit` (load plus evaluation): whole
/// minutes (Slurm's unit), one more than needed, so that the validator's
/// own limit fires first and Slurm's is the backstop.
pub fn time_for(limit: Duration) -> String {
    let minutes = limit.as_secs().div_ceil(60) + 1;
    minutes.to_string()
}

impl SlurmSpec {
    /// The name of the job of `uid` in `step`.
    pub fn job_name(&self, step: u64, uid: Uid) -> String {
        format!("{}-s{step}-u{uid}", self.job_prefix)
    }

    /// Where the compute nodes see `dir` (a model under `--model_dir`).
    pub fn node_path(&self, dir: &Path) -> PathBuf {
        let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        match &self.model_dir {
            Some((local, remote)) => match abs.strip_prefix(local) {
                Ok(rest) => remote.join(rest),
                Err(_) => abs,
            },
            None => abs,
        }
    }

    /// `srun` with this spec's options for job `name`; the worker's command
    /// line follows (`--` already added).
    pub fn srun(&self, name: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.commands.srun);
        // No `-u`: a pseudo-terminal would echo stdin and rewrite newlines.
        cmd.args(["--quiet", "-N1", "-n1", "--kill-on-bad-exit=1"])
            .arg(format!("--job-name={name}"))
            .arg(format!("--time={}", self.time));
        if let Some(p) = &self.partition {
            cmd.arg(format!("--partition={p}"));
        }
        if let Some(g) = &self.gres {
            cmd.arg(format!("--gres={g}"));
        }
        if let Some(m) = self.mem_mb {
            cmd.arg(format!("--mem={m}M"));
        }
        cmd.args(&self.extra_args).arg("--").arg(&self.program);
        cmd
    }

    /// Ids of the queued or running jobs of this validator (by name).
    pub async fn own_jobs(&self) -> Result<Vec<(String, String)>, String> {
        let mut cmd = tokio::process::Command::new(&self.commands.squeue);
        cmd.args(["--me", "-h", "-o", "%i %j"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
            .await
            .map_err(|_| format!("squeue did not answer within {CLIENT_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot run {}: {e}", self.commands.squeue.display()))?;
        if !out.status.success() {
            return Err(format!(
                "squeue failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let own = format!("{}-", self.job_prefix);
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().split_once(' '))
            .filter(|(_, name)| name.starts_with(&own))
            .map(|(id, name)| (id.to_string(), name.to_string()))
            .collect())
    }

    /// Cancels every queued or running job of this validator; returns how
    /// many there were. At start, these are the jobs of a run that was
    /// killed; at the end, any a stopped step left.
    pub async fn cancel_all(&self) -> Result<usize, String> {
        let jobs = self.own_jobs().await?;
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut cmd = tokio::process::Command::new(&self.commands.scancel);
        cmd.args(jobs.iter().map(|j| &j.0))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
            .await
            .map_err(|_| format!("scancel did not answer within {CLIENT_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot run {}: {e}", self.commands.scancel.display()))?;
        if !out.status.success() {
            return Err(format!(
                "scancel failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let names: Vec<&str> = jobs.iter().map(|j| j.1.as_str()).collect();
        info!(
            ?names,
            "cancelled {} Slurm job(s) of this validator",
            jobs.len()
        );
        Ok(jobs.len())
    }

    /// [`SlurmSpec::cancel_all`], logging instead of failing.
    pub async fn cancel_all_logged(&self, when: &str) {
        if let Err(e) = self.cancel_all().await {
            warn!("cannot cancel the Slurm jobs {when}: {e}");
        }
    }

    /// Cancels job `name` without waiting (from `Drop`): a job whose `srun`
    /// was killed keeps running otherwise.
    pub fn cancel_in_background(&self, name: &str) {
        let mut cmd = std::process::Command::new(&self.commands.scancel);
        cmd.arg(format!("--name={name}"))
            .args(["--me"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cmd.spawn() {
            // Reaped on a thread so that it does not stay a zombie.
            Ok(mut child) => {
                std::thread::spawn(move || child.wait());
            }
            Err(e) => warn!(job = name, "cannot run scancel: {e}"),
        }
    }

    /// Why job `name` ended without an answer, from `srun`'s exit and the
    /// last lines Slurm and the worker wrote on its stderr, and whether
    /// that was the validator's side (Slurm refusing or losing the job)
    /// rather than the model's (over its memory or time, a crash).
    pub fn failure(&self, name: &str, status: &str, stderr: &[String]) -> JobEnd {
        let has = |s: &str| stderr.iter().any(|l| l.contains(s));
        let last_error = stderr
            .iter()
            .rev()
            .find(|l| l.contains("error"))
            .or_else(|| stderr.last())
            .map(|l| l.trim().to_string())
            .unwrap_or_default();
        let (what, ours) = if has("exceeded memory limit") || has("oom-kill") || has("OOM Killed") {
            let mem = self
                .mem_mb
                .map_or(String::new(), |m| format!(" of --mem={m}M"));
            (
                format!("killed by Slurm: the worker exceeded its memory limit{mem}"),
                false,
            )
        } else if has("DUE TO TIME LIMIT") {
            (
                format!(
                    "killed by Slurm: the job ran past its time limit (--time={})",
                    self.time
                ),
                false,
            )
        } else if has("DUE TO NODE FAILURE") || has("NODE_FAIL") {
            ("the node failed (Slurm)".to_string(), true)
        } else if has("CANCELLED") || has("forcing job termination") {
            (
                "cancelled in Slurm (scancel or the administrator)".to_string(),
                true,
            )
        } else if REFUSALS.iter().any(|r| has(r)) {
            ("Slurm refused the job".to_string(), true)
        } else {
            ("the job ended without an answer".to_string(), false)
        };
        let reason = if last_error.is_empty() {
            format!("Slurm job {name}: {what} (srun {status})")
        } else {
            format!("Slurm job {name}: {what} (srun {status}: {last_error})")
        };
        JobEnd { reason, ours }
    }

    /// Why job `name` is still waiting in the queue (`Some("PENDING
    /// Resources")`, say), or `None` when it runs, ended or cannot be seen.
    pub async fn pending_reason(&self, name: &str) -> Option<String> {
        let mut cmd = tokio::process::Command::new(&self.commands.squeue);
        cmd.arg("--me")
            .arg(format!("--name={name}"))
            .args(["-h", "-o", "%T %r"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next()?.trim();
        (out.status.success() && (line.starts_with("PENDING") || line.starts_with("CONFIGURING")))
            .then(|| line.to_string())
    }
}

/// Limit of a preflight call (an allocation test, or the tiny read job).
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `cmd`, within [`PREFLIGHT_TIMEOUT`]; `Err` when it cannot start.
async fn output_of(
    mut cmd: tokio::process::Command,
    what: &str,
) -> Result<std::process::Output, String> {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(PREFLIGHT_TIMEOUT, cmd.output()).await {
        Err(_) => Err(format!(
            "{what} did not answer within {PREFLIGHT_TIMEOUT:?}"
        )),
        Ok(Err(e)) => Err(format!("cannot run {what}: {e}")),
        Ok(Ok(out)) => Ok(out),
    }
}

/// A command's stdout and stderr, trimmed, as one line.
fn said(out: &std::process::Output) -> String {
    let mut t = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let o = String::from_utf8_lossy(&out.stdout);
    if !o.trim().is_empty() {
        t.push_str(" | ");
        t.push_str(o.trim());
    }
    t.replace('\n', "; ")
}

impl SlurmSpec {
    /// The allocation test of this spec's request (`srun --test-only`),
    /// with `--mem` and `--gres` left out as asked: `Ok` when Slurm could
    /// run it, else what Slurm said.
    async fn test_allocation(&self, mem: bool, gres: bool) -> Result<Result<(), String>, String> {
        let mut spec = self.clone();
        if !mem {
            spec.mem_mb = None;
        }
        if !gres {
            spec.gres = None;
        }
        spec.program = "true".into();
        let cmd = spec.srun(&format!("{}.preflight", self.job_prefix));
        // --test-only submits nothing: it asks whether and when it could run.
        let args: Vec<std::ffi::OsString> =
            cmd.as_std().get_args().map(|a| a.to_os_string()).collect();
        let mut test = tokio::process::Command::new(&self.commands.srun);
        test.arg("--test-only").args(args);
        let out = output_of(test, &self.commands.srun.display().to_string()).await?;
        Ok(if out.status.success() {
            Ok(())
        } else {
            Err(said(&out))
        })
    }

    /// Checks at start that this spec can run a job at all, so that a
    /// misconfiguration stops the validator with the flag to change
    /// instead of deferring every model of every step: the client programs
    /// are there, Slurm accepts exactly the step's request (partition,
    /// gres, mem, time), and a job on a node reads `probe` (a file the
    /// validator wrote under `--model_dir`) where the nodes see it.
    pub async fn preflight(&self, probe: &Path) -> Result<(), String> {
        for (program, flag) in [
            (&self.commands.srun, "srun"),
            (&PathBuf::from("sinfo"), "sinfo"),
            (&self.commands.squeue, "squeue"),
            (&self.commands.scancel, "scancel"),
        ] {
            let mut cmd = tokio::process::Command::new(program);
            cmd.arg("--version");
            output_of(cmd, flag).await.map_err(|e| {
                format!("--eval_backend slurm needs {flag} on PATH: {e} (install Slurm's client programs here, or use --eval_backend local)")
            })?;
        }
        let request = format!(
            "--slurm.partition {}, --slurm.gres {}, --slurm.mem {}, --slurm.time {}",
            self.partition.as_deref().unwrap_or("(default)"),
            self.gres.as_deref().unwrap_or("none"),
            self.mem_mb.map_or("(default)".into(), |m| format!("{m}M")),
            self.time
        );
        if let Err(said) = self.test_allocation(true, true).await? {
            // Which part of the request: the same test without it.
            let hint = if self.mem_mb.is_some()
                && self.test_allocation(false, true).await.ok() == Some(Ok(()))
            {
                format!(
                    "--slurm.mem {}M cannot be satisfied by any node: lower --slurm.mem (sinfo -o '%N %m' shows each node's MB)",
                    self.mem_mb.unwrap_or(0)
                )
            } else if self.gres.is_some()
                && self.test_allocation(true, false).await.ok() == Some(Ok(()))
            {
                format!(
                    "--slurm.gres {} cannot be satisfied: change --slurm.gres (or `none`)",
                    self.gres.as_deref().unwrap_or("")
                )
            } else if said.contains("partition") {
                "the partition cannot take jobs: change --slurm.partition".to_string()
            } else if said.to_ascii_lowercase().contains("time limit") {
                "the time limit is refused: change --slurm.time".to_string()
            } else {
                "change --slurm.partition, --slurm.gres, --slurm.mem, --slurm.time or --slurm.extra_args".to_string()
            };
            return Err(format!(
                "Slurm cannot run the validator's jobs ({request}): {hint}; Slurm said: {said}"
            ));
        }
        // A tiny job with the same request: can a node read the model store?
        let seen = self.node_path(probe);
        let mut spec = self.clone();
        spec.program = "test".into();
        let mut cmd = spec.srun(&format!("{}.preflight", self.job_prefix));
        cmd.arg("-r").arg(&seen);
        let out = output_of(cmd, &self.commands.srun.display().to_string()).await?;
        if !out.status.success() {
            let flag = if self.model_dir.is_some() {
                "--slurm.model_dir"
            } else {
                "--slurm.model_dir (the path at which the nodes see --model_dir)"
            };
            return Err(format!(
                "a Slurm job cannot read {} (the validator's --model_dir as the nodes see it; srun {}): set {flag} to where the nodes see {}{}",
                seen.display(),
                out.status,
                probe.parent().unwrap_or(probe).display(),
                match said(&out) {
                    s if s.is_empty() => String::new(),
                    s => format!("; Slurm said: {s}"),
                }
            ));
        }
        info!(%request, "Slurm preflight: the request is accepted and a node reads the model store");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SlurmSpec {
        SlurmSpec {
            partition: Some("gpu".into()),
            gres: Some("gpu:1".into()),
            mem_mb: Some(2048),
            time: "11".into(),
            extra_args: vec!["--account=sn9".into()],
            program: "/opt/pretrain".into(),
            model_dir: Some(("/var/val".into(), "/shared/val".into())),
            job_prefix: "pretrain-0011aabb".into(),
            commands: SlurmCommands::default(),
        }
    }

    #[test]
    fn srun_line_has_the_limits_and_no_pseudo_terminal() {
        let cmd = spec().srun("pretrain-0011aabb-s3-u7");
        let args: Vec<String> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--quiet",
                "-N1",
                "-n1",
                "--kill-on-bad-exit=1",
                "--job-name=pretrain-0011aabb-s3-u7",
                "--time=11",
                "--partition=gpu",
                "--gres=gpu:1",
                "--mem=2048M",
                "--account=sn9",
                "--",
                "/opt/pretrain"
            ]
        );
        assert!(!args.iter().any(|a| a == "-u" || a == "--unbuffered"));
    }

    #[test]
    fn names_paths_and_time() {
        let s = spec();
        assert_eq!(s.job_name(12, 250), "pretrain-0011aabb-s12-u250");
        assert_eq!(
            s.node_path(Path::new("/var/val/models/hk/m/snapshots/c")),
            PathBuf::from("/shared/val/models/hk/m/snapshots/c")
        );
        // Outside --model_dir: as it is.
        assert_eq!(s.node_path(Path::new("/tmp/x")), PathBuf::from("/tmp/x"));
        // 600 s load + 600 s eval = 20 minutes, and one more.
        assert_eq!(time_for(Duration::from_secs(1200)), "21");
        assert_eq!(time_for(Duration::from_secs(61)), "3");
        let a = job_prefix_for(Path::new("/a/model-store"));
        assert_eq!(a.len(), "pretrain-".len() + 8);
        assert_ne!(a, job_prefix_for(Path::new("/b/model-store")));
        assert_eq!(a, job_prefix_for(Path::new("/a/model-store")));
    }

    #[test]
    fn failure_reasons_from_what_slurm_writes() {
        let s = spec();
        // The lines Debian's Slurm 22.05 writes in each case.
        let mem = [
            "slurmstepd-vm: error: StepId=6.0 exceeded memory limit (198660096 > 52428800), being killed".to_string(),
            "slurmstepd-vm: error: *** STEP 6.0 ON vm CANCELLED AT 2026-12-02T01:42:12 ***".into(),
            "srun: error: vm: task 0: Killed".into(),
        ];
        let r = s.failure("j", "exit status: 137", &mem);
        assert!(!r.ours, "{r:?}");
        let r = r.reason;
        assert!(
            r.contains("exceeded its memory limit of --mem=2048M"),
            "{r}"
        );
        let time = [
            "slurmstepd-vm: error: *** STEP 7.0 ON vm CANCELLED AT 2026-12-02T01:43:38 DUE TO TIME LIMIT ***".to_string(),
            "srun: error: vm: task 0: Terminated".into(),
        ];
        let r = s.failure("j", "exit status: 143", &time);
        assert!(!r.ours, "{r:?}");
        let r = r.reason;
        assert!(r.contains("time limit (--time=11)"), "{r}");
        let cancel = [
            "slurmstepd-vm: error: *** STEP 8.0 ON vm CANCELLED AT 2026-12-02T01:43:41 ***"
                .to_string(),
            "srun: error: vm: task 0: Terminated".into(),
        ];
        let r = s.failure("j", "exit status: 143", &cancel);
        assert!(r.ours, "{r:?}");
        let r = r.reason;
        assert!(r.contains("cancelled in Slurm"), "{r}");
        let crash = ["srun: error: vm: task 0: Aborted".to_string()];
        let r = s.failure("j", "exit status: 134", &crash);
        assert!(!r.ours, "{r:?}");
        let r = r.reason;
        assert!(
            r.contains("without an answer") && r.contains("Aborted"),
            "{r}"
        );
        // Refusals, as Debian's Slurm 22.05 words them: the validator's side.
        for line in [
            "srun: error: Unable to allocate resources: Memory specification can not be satisfied",
            "srun: error: Unable to allocate resources: Requested node configuration is not available",
            "srun: error: Unable to allocate resources: Invalid partition name specified",
            "srun: Required partition not available (inactive or drain)",
        ] {
            let r = s.failure("j", "exit status: 1", &[line.to_string()]);
            assert!(r.ours, "{line}: {r:?}");
            assert!(r.reason.contains("Slurm refused the job"), "{r:?}");
        }
        let node = [
            "srun: error: Node failure on vm".to_string(),
            "*** JOB 5 CANCELLED DUE TO NODE FAILURE ***".into(),
        ];
        assert!(s.failure("j", "exit status: 1", &node).ours);
    }
}

//! The child processes of a local subnet: their flags, starting them with
//! their logs, and stopping them.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::start::{miner_lr, ModelSize, Start};
use super::{Layout, LocalnetError, NETUID};

/// How long children get to stop after SIGINT before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// One child process and what it is.
#[derive(Debug)]
pub struct Proc {
    /// `validator` or `miner-<i>`.
    pub name: String,
    /// The process.
    pub child: Child,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
}

impl Proc {
    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// What one miner process is given.
#[derive(Debug, Clone)]
pub struct MinerSpec {
    /// Its index (`miner-<index>`).
    pub index: usize,
    /// The size of model it trains.
    pub size: ModelSize,
    /// What it starts from.
    pub start: Start,
    /// Its competition, where the rules have competition ids.
    pub competition: Option<i64>,
    /// Base seed (miner i uses seed + 1 + i).
    pub seed: u64,
}

/// Common flags of every child: the wallet, the embedded chain, the local hub, the dataset, the schedule.
pub fn common_flags(
    layout: &Layout,
    wallet_name: &str,
    dataset: &str,
    schedule: &str,
) -> Vec<String> {
    [
        "--wallet.path",
        &layout.wallets().display().to_string(),
        "--wallet.name",
        wallet_name,
        "--wallet.hotkey",
        "default",
        "--subtensor.network",
        "embedded",
        "--chain_dir",
        &layout.chain().display().to_string(),
        "--netuid",
        &NETUID.to_string(),
        "--hub",
        &format!("local:{}", layout.hub().display()),
        "--dataset",
        dataset,
        "--schedule",
        schedule,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The `pretrain validate` flags of the local validator.
pub fn validator_flags(layout: &Layout, dataset: &str, schedule: &str) -> Vec<String> {
    let mut a = common_flags(layout, "validator", dataset, schedule);
    a.extend(
        [
            "--model_dir",
            &layout.validator_dir().display().to_string(),
            "--blocks_per_epoch",
            "10",
            "--pages_per_eval",
            "1",
            "--update_interval",
            "5",
            "--idle_wait",
            "5",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a
}

/// The `pretrain mine` flags of miner `m`.
pub fn miner_flags(layout: &Layout, dataset: &str, schedule: &str, m: &MinerSpec) -> Vec<String> {
    let (i, size, seed) = (m.index, m.size, m.seed);
    let name = format!("miner-{i}");
    let mut a = common_flags(layout, &name, dataset, schedule);
    if let Some(c) = m.competition {
        // Uploaded private, made public once the commitment landed (upstream's miner flags).
        a.extend(["--competition_id".to_string(), c.to_string()]);
        a.push("--update_repo_visibility".into());
    }
    let (sl, pages) = match size {
        ModelSize::Tiny => ("128", "1"),
        ModelSize::Default => ("1024", "1"),
    };
    a.extend(
        [
            "--model_dir",
            &layout.miner_dir(i).display().to_string(),
            "--load_model_dir",
            &layout.init_model(m.start).display().to_string(),
            "--hf_repo_id",
            &format!("localnet/{name}"),
            "--lr",
            &miner_lr(size, i).to_string(),
            "--bs",
            "1",
            "--sl",
            sl,
            "--accumulation_steps",
            "1",
            "--pages_per_epoch",
            pages,
            "--num_epochs",
            "-1",
            "--push_every_epoch",
            "--avg_loss_upload_threshold",
            "1000",
            "--seed",
            &(seed + 1 + i as u64).to_string(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a
}

/// Starts the validator, `exe validate ...`.
pub async fn spawn_validator(
    exe: &std::path::Path,
    layout: &Layout,
    dataset: &str,
    schedule: &str,
) -> Result<Proc, LocalnetError> {
    let a = validator_flags(layout, dataset, schedule);
    spawn(exe, layout, "validator", "validate", &a).await
}

/// Starts miner `m`, `exe mine ...`.
pub async fn spawn_miner(
    exe: &std::path::Path,
    layout: &Layout,
    dataset: &str,
    schedule: &str,
    m: &MinerSpec,
) -> Result<Proc, LocalnetError> {
    let a = miner_flags(layout, dataset, schedule, m);
    spawn(exe, layout, &format!("miner-{}", m.index), "mine", &a).await
}

async fn spawn(
    exe: &std::path::Path,
    layout: &Layout,
    name: &str,
    command: &str,
    args: &[String],
) -> Result<Proc, LocalnetError> {
    let log = layout.logs().join(format!("{name}.log"));
    let io_err = |source| LocalnetError::Io {
        what: "opening",
        path: log.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io_err)?;
    let err = file.try_clone().map_err(io_err)?;
    let mut cmd = Command::new(exe);
    cmd.arg(command)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        // One core's worth of threads each: the processes share the machine.
        .env("RAYON_NUM_THREADS", "1")
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    unsafe {
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to
        // signal this child when its parent dies, so no child outlives a
        // killed localnet.
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| LocalnetError::Spawn {
        name: name.to_string(),
        command: command.to_string(),
        source,
    })?;
    tracing::info!(pid = child.id(), log = %log.display(), "started {name}");
    Ok(Proc {
        name: name.to_string(),
        child,
        log,
    })
}

/// SIGINT to every child (they save and stop), then SIGKILL to whoever is
/// still running after `grace`.
pub async fn stop_all(mut procs: Vec<Proc>, grace: Duration) {
    for p in &procs {
        if let Some(pid) = p.child.id().and_then(|id| i32::try_from(id).ok()) {
            // SAFETY: sending a signal to our own child's pid.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        }
    }
    let until = Instant::now() + grace;
    for p in &mut procs {
        let left = until.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, p.child.wait()).await.is_err() {
            tracing::warn!("{} did not stop in {grace:?}: killing it", p.name);
            let _ = p.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            root: PathBuf::from("/ln"),
        }
    }

    fn value<'a>(flags: &'a [String], flag: &str) -> Option<&'a str> {
        flags
            .iter()
            .position(|f| f == flag)
            .and_then(|i| flags.get(i + 1))
            .map(String::as_str)
    }

    #[test]
    fn every_child_gets_the_embedded_chain_the_local_hub_and_its_wallet() {
        let v = validator_flags(&layout(), "local:/c", "sn9-2024-01");
        assert_eq!(value(&v, "--wallet.name"), Some("validator"));
        assert_eq!(value(&v, "--subtensor.network"), Some("embedded"));
        assert_eq!(value(&v, "--chain_dir"), Some("/ln/chain"));
        assert_eq!(value(&v, "--hub"), Some("local:/ln/hub"));
        assert_eq!(value(&v, "--netuid"), Some("9"));
        assert_eq!(value(&v, "--model_dir"), Some("/ln/validator"));
        assert_eq!(value(&v, "--schedule"), Some("sn9-2024-01"));
    }

    #[test]
    fn a_miner_with_a_competition_enters_it_and_publishes_after_the_commit() {
        let m = MinerSpec {
            index: 1,
            size: ModelSize::Tiny,
            start: Start::TinyLlama,
            competition: Some(3),
            seed: 10,
        };
        let f = miner_flags(&layout(), "local:/c", "localnet-two", &m);
        assert_eq!(value(&f, "--wallet.name"), Some("miner-1"));
        assert_eq!(value(&f, "--competition_id"), Some("3"));
        assert!(f.iter().any(|x| x == "--update_repo_visibility"));
        assert_eq!(value(&f, "--load_model_dir"), Some("/ln/init/tiny-llama"));
        assert_eq!(value(&f, "--hf_repo_id"), Some("localnet/miner-1"));
        assert_eq!(value(&f, "--sl"), Some("128"));
        assert_eq!(value(&f, "--seed"), Some("12"));
        let without = MinerSpec {
            competition: None,
            ..m
        };
        let f = miner_flags(&layout(), "local:/c", "sn9-2024-01", &without);
        assert_eq!(value(&f, "--competition_id"), None);
        assert!(!f.iter().any(|x| x == "--update_repo_visibility"));
    }
}

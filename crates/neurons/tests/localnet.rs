//! The local subnet's run order through `pretrain_neurons::localnet::run`:
//! a real embedded chain, wallets, starting models and corpus under a
//! temporary directory, with a shell script standing in for the `pretrain`
//! executable (it prints the flags it was given into its log).

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pretrain_chain::embedded::{EmbeddedChain, EmbeddedOptions};
use pretrain_core::metrics::LeaderboardLine;
use pretrain_core::rules::Schedule;
use pretrain_neurons::localnet::{
    self, ModelSize, Observer, Row, Settings, StopReason, NETUID, SHORT_DOC_CHARS,
};

/// Counts what the run showed.
#[derive(Default)]
struct Seen {
    refreshes: Vec<usize>,
    finished: Vec<Vec<String>>,
}

impl Observer for Seen {
    fn refreshed(&mut self, rows: &[Row], _elapsed: Duration) {
        self.refreshes.push(rows.len());
    }
    fn finished(&mut self, rows: &[Row], _elapsed: Duration) {
        self.finished
            .push(rows.iter().map(|r| r.role.clone()).collect());
    }
}

/// A stand-in `pretrain`: prints its arguments, then runs `then`.
fn fake_pretrain(dir: &Path, then: &str) -> PathBuf {
    let path = dir.join("fake-pretrain");
    std::fs::write(&path, format!("#!/bin/sh\necho \"$@\"\n{then}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn settings(dir: &Path, exe: PathBuf, schedule: &str) -> Settings {
    Settings {
        dir: dir.to_path_buf(),
        miners: 2,
        minutes: None,
        size: ModelSize::Tiny,
        block_time: 1.0,
        dataset: None,
        seed: 1,
        schedule: Schedule::by_name_or_file(schedule).unwrap(),
        schedule_arg: schedule.to_string(),
        commit_reveal: false,
        exe,
    }
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join("logs").join(format!("{name}.log"))).unwrap_or_default()
}

#[tokio::test]
async fn children_get_the_subnet_and_the_run_ends_when_they_all_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let exe = fake_pretrain(tmp.path(), "exit 0");
    let mut seen = Seen::default();
    let out = localnet::run(
        settings(&dir, exe, "sn9-2024-01"),
        &mut seen,
        std::future::pending(),
    )
    .await
    .unwrap();

    assert_eq!(out.stopped, StopReason::AllExited);
    assert_eq!(out.layout.root, dir.canonicalize().unwrap());
    // One validator and two miners registered, none committed yet.
    let roles: Vec<&str> = out.rows.iter().map(|r| r.role.as_str()).collect();
    assert_eq!(roles, ["validator", "miner-0", "miner-1"]);
    assert!(out
        .rows
        .iter()
        .all(|r| r.model.is_none() && r.weight == 0.0));
    // Each refresh read the three of them; the first one found every child gone
    // (unless the machine was too slow to let them exit in time).
    assert!(!seen.refreshes.is_empty() && seen.refreshes.iter().all(|&n| n == 3));
    assert_eq!(seen.finished, [vec!["validator", "miner-0", "miner-1"]]);

    // The sn9-2024-01 rules: one starting GPT-2, no competitions.
    assert!(dir.join("init/tiny-gpt2/model.safetensors").is_file());
    assert!(!dir.join("init/tiny-llama").exists());
    assert!(out.competitions.is_none());
    let corpus = std::fs::read_to_string(dir.join("corpus/short-docs.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(corpus.lines().next().unwrap()).unwrap();
    assert!(first["content"].as_str().unwrap().chars().count() <= SHORT_DOC_CHARS);

    // Each child ran its subcommand with its wallet, the chain and the corpus.
    let v = log(&dir, "validator");
    assert!(v.starts_with("validate "), "{v}");
    assert!(v.contains("--wallet.name validator "), "{v}");
    assert!(v.contains(&format!("--chain_dir {}/chain ", out.layout.root.display())));
    assert!(v.contains(&format!(
        "--dataset local:{}/corpus ",
        out.layout.root.display()
    )));
    let m1 = log(&dir, "miner-1");
    assert!(m1.starts_with("mine "), "{m1}");
    assert!(m1.contains("--wallet.name miner-1 "), "{m1}");
    assert!(m1.contains("--seed 3"), "seed 1 + 1 + index 1: {m1}");
    assert!(!m1.contains("--competition_id"), "{m1}");

    // The refresh was logged, and the summary holds the final rows.
    let lines = std::fs::read_to_string(dir.join("leaderboard.jsonl")).unwrap();
    let line: LeaderboardLine = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(line.leaderboard.len(), 3);
    let summary = out.summary_json();
    assert_eq!(
        summary["dir"].as_str(),
        Some(out.layout.root.to_str().unwrap())
    );
    assert_eq!(summary["leaderboard"].as_array().unwrap().len(), 3);
    assert_eq!(summary["leaderboard"][1]["role"], "miner-0");
    assert!(summary.get("competitions").is_none());
}

#[tokio::test]
async fn miners_are_dealt_over_the_competitions_and_a_stop_ends_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let exe = fake_pretrain(tmp.path(), "exec sleep 60");
    let mut s = settings(&dir, exe, "localnet-two");
    s.commit_reveal = true;
    // Stop once both miners have printed their flags.
    let logs = dir.clone();
    let stop = async move {
        while log(&logs, "miner-0").is_empty() || log(&logs, "miner-1").is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut seen = Seen::default();
    let started = std::time::Instant::now();
    let out = localnet::run(s, &mut seen, stop).await.unwrap();

    assert_eq!(out.stopped, StopReason::Interrupted);
    // The sleeping children stopped at SIGINT, well before the kill after the grace.
    assert!(
        started.elapsed() < localnet::STOP_GRACE,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(seen.finished.len(), 1);
    // Miner i joins competition i mod 2; the LLaMA-only one starts from the tiny LLaMA.
    let ids: Vec<i64> = out
        .competitions
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, [1, 2]);
    let m0 = log(&dir, "miner-0");
    let m1 = log(&dir, "miner-1");
    assert!(m0.contains("--competition_id 1 "), "{m0}");
    assert!(m0.contains("init/tiny-gpt2 "), "{m0}");
    assert!(m1.contains("--competition_id 2 "), "{m1}");
    assert!(m1.contains("init/tiny-llama "), "{m1}");
    assert!(dir.join("init/tiny-llama/model.safetensors").is_file());
    let summary = out.summary_json();
    let comps = summary["competitions"].as_array().unwrap();
    assert_eq!(comps.len(), 2);
    assert_eq!(comps[0]["id"], 1);
    assert_eq!(comps[1]["share"], 0.4);
    assert!(comps[0]["winner"].is_null(), "nothing committed yet");

    // Commit-reveal was switched on for the subnet.
    let chain = EmbeddedChain::open_async(&dir.join("chain"), &EmbeddedOptions::default())
        .await
        .unwrap();
    let cr = chain.commit_reveal(NETUID).await.unwrap();
    assert_eq!(cr, localnet::COMMIT_REVEAL);
}

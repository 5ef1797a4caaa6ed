//! `pretrain localnet` end to end: a validator and two miners as real
//! processes on an embedded chain, a local hub and the sample corpus. The
//! miner with the better learning rate must end with the lower loss and
//! the larger incentive; `pretrain report` then charts the directory; and
//! no child outlives a killed localnet.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn pretrain() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pretrain"));
    c.stdin(Stdio::null());
    c
}

/// Pids of live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        // A zombie keeps no command line; only running processes count.
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

fn row<'a>(board: &'a [Value], role: &str) -> &'a Value {
    board
        .iter()
        .find(|r| r["role"] == role)
        .unwrap_or_else(|| panic!("no {role} in {board:?}"))
}

#[test]
fn the_better_miner_earns_more_and_the_report_charts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let out = pretrain()
        .args(["localnet", "--minutes", "2", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "localnet failed: {stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        Path::new(summary["dir"].as_str().unwrap()),
        dir.canonicalize().unwrap()
    );
    let board = summary["leaderboard"].as_array().unwrap();
    assert_eq!(board.len(), 3, "a validator and two miners: {board:?}");
    let (m0, m1) = (row(board, "miner-0"), row(board, "miner-1"));
    for m in [m0, m1] {
        assert!(
            m["model"]
                .as_str()
                .is_some_and(|s| s.starts_with("localnet/miner-")),
            "every miner pushed and committed: {m}"
        );
    }
    // A random tiny model is at ln(50257) = 10.8; the faster learner is well below the other.
    let (l0, l1) = (m0["loss"].as_f64().unwrap(), m1["loss"].as_f64().unwrap());
    assert!(l0 < l1 && l0 < 10.0, "losses {l0} vs {l1}");
    // Weights were set on chain, and the lower-loss miner holds more incentive.
    let (w0, w1) = (
        m0["weight"].as_f64().unwrap(),
        m1["weight"].as_f64().unwrap(),
    );
    assert!(w0 > w1 && (w0 + w1 - 1.0).abs() < 1e-6, "weights {w0} {w1}");
    let (i0, i1) = (
        m0["incentive"].as_f64().unwrap(),
        m1["incentive"].as_f64().unwrap(),
    );
    assert!(i0 > i1 && i0 > 0.5, "incentive {i0} vs {i1}");
    assert_eq!(m0["win_rate"].as_f64(), Some(1.0));

    // Everything stopped with the parent.
    assert!(
        processes_mentioning(dir.to_str().unwrap()).is_empty(),
        "children left running"
    );
    for log in ["validator", "miner-0", "miner-1"] {
        assert!(dir.join("logs").join(format!("{log}.log")).is_file());
    }

    let out = pretrain().arg("report").arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let charts: Vec<String> = rep["charts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    for name in [
        "training_loss.png",
        "validator_loss.png",
        "validator_weight.png",
        "incentive.png",
    ] {
        assert!(
            charts.iter().any(|c| c.ends_with(name)),
            "{name} missing: {charts:?}"
        );
    }
    assert_eq!(rep["training_runs"], 2, "one run per miner");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<img src=\"incentive.png\""));
}

#[test]
fn killing_localnet_leaves_no_child_running() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let mut parent = pretrain()
        .args(["localnet", "--miners", "1", "--dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let needle = dir.to_str().unwrap().to_string();
    let started = Instant::now();
    while processes_mentioning(&needle).len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "children never started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    parent.kill().unwrap(); // SIGKILL: no chance to clean up itself
    parent.wait().unwrap();
    let killed = Instant::now();
    loop {
        let left = processes_mentioning(&needle);
        if left.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "children outlived the killed parent: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Blocks of `eval_block_delay` in the built-in `localnet-two` schedule.
const LOCALNET_TWO_DELAY: u64 = 20;

#[test]
fn two_competitions_each_winner_holds_its_share_and_a_copy_is_refused() {
    use pretrain_chain::embedded::{EmbeddedChain, EmbeddedOptions};
    use pretrain_chain::wallet::KeyPair;
    use pretrain_chain::{Chain, Hotkey};
    use pretrain_core::CompetitionModelId as LaterModelId;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let child = pretrain()
        .args([
            "localnet",
            "--schedule",
            "localnet-two",
            "--miners",
            "2",
            "--minutes",
            "3.5",
            "--dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();

    // While the subnet runs: as soon as the GPT-2 miner has committed, a
    // third hotkey commits the very same 5-field id (repo, commit, secure
    // hash, competition). Its secure hash is bound to the first hotkey, so
    // the validator must refuse the copy.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let copier = KeyPair::from_secret_seed([77; 32]).unwrap().ss58();
    let (original, copied_at) = rt.block_on(async {
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(150),
                "no GPT-2 miner committed within 150 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            if !dir.join("chain").exists() {
                continue;
            }
            let Ok(chain) =
                EmbeddedChain::open_async(&dir.join("chain"), &EmbeddedOptions::default()).await
            else {
                continue;
            };
            let Ok(commits) = chain.commitments(9).await else {
                continue;
            };
            let Some(c) = commits.iter().find(|c| {
                LaterModelId::from_chain_bytes(&c.data).is_ok_and(|id| id.competition_id == 1)
            }) else {
                continue;
            };
            let id = LaterModelId::from_chain_bytes(&c.data).unwrap();
            assert!(id.hash.is_none() && id.secure_hash.is_some(), "{id:?}");
            chain.register(9, &copier, &copier).await.unwrap();
            let block = chain
                .commit(&Hotkey::address_only(&copier), 9, &c.data)
                .await
                .unwrap();
            break (c.hotkey.clone(), block);
        }
    });

    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "localnet failed: {stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let board = summary["leaderboard"].as_array().unwrap();
    let (m0, m1) = (row(board, "miner-0"), row(board, "miner-1"));
    assert_eq!(m0["competition"], 1, "miner 0 trains GPT-2: {m0}");
    assert_eq!(m1["competition"], 2, "miner 1 trains LLaMA: {m1}");
    assert_eq!(m0["hotkey"], original.as_str());

    // Each competition's only honest miner wins it and holds its share:
    // incentive in proportion 0.6 : 0.4.
    let comps = summary["competitions"].as_array().unwrap();
    assert_eq!(comps.len(), 2, "{comps:?}");
    for (c, share, m) in [(&comps[0], 0.6, m0), (&comps[1], 0.4, m1)] {
        assert_eq!(c["share"].as_f64(), Some(share));
        assert_eq!(c["winner"], m["uid"], "{c}");
        let inc = m["incentive"].as_f64().unwrap();
        assert!(
            (inc - share).abs() < 0.01,
            "incentive {inc} for share {share}: {board:?}"
        );
        let w = m["weight"].as_f64().unwrap();
        assert!((w - share).abs() < 0.01, "weight {w} for share {share}");
    }

    // The copy was refused by the hash check, so it holds nothing.
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("validator/validator_state.json")).unwrap())
            .unwrap();
    let refused = &state["refused"][copier.as_str()];
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("secure hash"),
        "copy not refused by the hash check: {state}"
    );
    assert_eq!(refused["block"].as_u64(), Some(copied_at));
    let c = board
        .iter()
        .find(|r| r["hotkey"] == copier.as_str())
        .unwrap();
    assert_eq!(c["incentive"].as_f64(), Some(0.0), "{c}");

    // One competition per step, in turn; no model evaluated before it was
    // eval_block_delay blocks old.
    let metrics = std::fs::read_to_string(dir.join("validator/metrics.jsonl")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in metrics.lines() {
        let step: Value = serde_json::from_str(line).unwrap();
        seen.insert(step["competition"].as_i64().unwrap());
        let at = step["block"].as_u64().unwrap();
        for u in step["uids"].as_array().unwrap() {
            if let Some(committed) = u["block"].as_u64() {
                assert!(
                    at >= committed + LOCALNET_TWO_DELAY,
                    "uid {} committed at {committed} evaluated at {at}",
                    u["uid"]
                );
            }
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 2]);
    assert!(
        processes_mentioning(dir.to_str().unwrap()).is_empty(),
        "children left running"
    );
}

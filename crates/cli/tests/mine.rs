//! `pretrain mine` end to end: the fixture wallet on the embedded chain, a
//! local hub, the sample corpus and the tiny reference GPT-2; and every bad
//! input refused before training with nothing half-written.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use pretrain_core::{hash_of_directory, ModelId};
use pretrain_store::{open_hub, HubOptions};

mod common;
#[path = "common/mining.rs"]
mod mining;
use common::{fails_with, ok_json};
use mining::*;

/// A short training run of the tiny model on a slice of the sample corpus.
fn mine(tmp: &Path, hub: &str, epochs: u32, extra: &[&str]) -> Output {
    mine_as(tmp, hub, epochs, "fixture", Some(&tiny_model()), extra)
}

fn mine_as(
    tmp: &Path,
    hub: &str,
    epochs: u32,
    wallet: &str,
    model: Option<&Path>,
    extra: &[&str],
) -> Output {
    let dataset = corpus_slice(&tmp.join("corpus"));
    let mut args = Vec::new();
    if let Some(m) = model {
        args.extend(s(&["--load_model_dir", m.to_str().unwrap()]));
    }
    args.extend(s(&[
        "--dataset",
        &dataset,
        "--model_dir",
        tmp.join("models").to_str().unwrap(),
        "--hub",
        hub,
        "--num_epochs",
        &epochs.to_string(),
        "--lr",
        "1e-3",
        "--bs",
        "2",
        "--sl",
        "64",
        "--accumulation_steps",
        "2",
        "--pages_per_epoch",
        "1",
        "--seed",
        "3",
        "--commit_retry_delay",
        "0.1",
    ]));
    args.insert(0, "mine".to_string());
    args.extend(wallet_chain_flags(&tmp.join("chain"), wallet));
    args.extend(extra.iter().map(|x| x.to_string()));
    pretrain(&args)
}

fn training_dir_is_empty(tmp: &Path) -> bool {
    let t = tmp.join("models").join("training");
    !t.exists() || std::fs::read_dir(&t).unwrap().next().is_none()
}

#[test]
fn mine_trains_pushes_and_the_commitment_matches_the_hub() {
    let tmp = tempfile::tempdir().unwrap();
    register(&tmp.path().join("chain"));
    let hub = format!("local:{}", tmp.path().join("hub").display());
    let out = mine(
        tmp.path(),
        &hub,
        3,
        &[
            "--hf_repo_id",
            "miner/tiny-mined",
            "--avg_loss_upload_threshold",
            "100",
            "--wandb_project",
            "p",
        ],
    );
    let j = ok_json(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Off a terminal: plain text, one line per epoch, W&B said once.
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI codes off a terminal: {stderr}"
    );
    let epoch_lines = stderr
        .lines()
        .filter(|l| l.contains("average loss") && l.contains("tokens/s)"))
        .count();
    assert_eq!(epoch_lines, 3, "{stderr}");
    // --wandb_project without --wandb_entity: the original logs nothing, and says so once.
    assert_eq!(
        stderr
            .matches("W&B needs both --wandb_entity and --wandb_project")
            .count(),
        1,
        "{stderr}"
    );

    let losses: Vec<f64> = j["epoch_losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 3);
    assert!(losses[2] < losses[0] - 0.5, "{losses:?}");

    // The chain holds what was pushed; its hash is that of the hub's files at the commit.
    let pushed = &j["pushed"];
    let id = ModelId::from_compressed_str(pushed["model_id"].as_str().unwrap()).unwrap();
    let c = ok_json(&pretrain(&s(&[
        "chain",
        "commitment",
        "--hotkey",
        HOT_SS58,
        "--chain_dir",
        tmp.path().join("chain").to_str().unwrap(),
    ])));
    assert_eq!(c["data"], pushed["model_id"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hub = open_hub(&hub, HubOptions::default()).unwrap();
    let got = rt
        .block_on(hub.download(
            &"miner/tiny-mined".parse().unwrap(),
            &id.commit.as_deref().unwrap().parse().unwrap(),
            &tmp.path().join("dl"),
        ))
        .unwrap();
    assert_eq!(id.hash.clone().unwrap(), hash_of_directory(&got).unwrap());

    // The best model is a whole directory the validator accepts.
    let best = PathBuf::from(j["best_dir"].as_str().unwrap());
    assert_eq!(id.hash.unwrap(), hash_of_directory(&best).unwrap());
    let inspect = ok_json(&pretrain(&s(&["inspect", best.to_str().unwrap()])));
    assert_eq!(inspect["valid"], true, "{inspect}");
    let run = PathBuf::from(j["run_dir"].as_str().unwrap());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let epochs = metrics
        .lines()
        .filter(|l| l.contains("\"event\":\"epoch\""))
        .count();
    assert_eq!(epochs, 3, "{metrics}");
}

#[test]
fn bad_inputs_are_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = format!("local:{}", tmp.path().join("hub").display());
    let repo = ["--hf_repo_id", "miner/tiny-mined"];

    // Unregistered hotkey (the subnet exists, the hotkey is not in it).
    let mut args = s(&[
        "chain",
        "register",
        "--hotkey",
        "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
    ]);
    args.extend(chain_flags(&tmp.path().join("chain")));
    ok_json(&pretrain(&args));
    fails_with(
        &mine(tmp.path(), &hub, 1, &repo),
        "is not registered on subnet 9",
    );
    assert!(training_dir_is_empty(tmp.path()));

    // Missing wallet.
    let mut out = mine_as(
        tmp.path(),
        &hub,
        1,
        "nobody",
        Some(&tiny_model()),
        &["--hf_repo_id", "miner/tiny-mined"],
    );
    fails_with(&out, "pretrain wallet new");

    // Bad repo id; no repo id at all.
    out = mine(tmp.path(), &hub, 1, &["--hf_repo_id", "no-slash-here"]);
    fails_with(&out, "--hf_repo_id");
    out = mine(tmp.path(), &hub, 1, &[]);
    fails_with(&out, "--hf_repo_id is required");

    // A corrupt model directory: a truncated weights file.
    let bad = tmp.path().join("bad-model");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(tiny_model().join("config.json"), bad.join("config.json")).unwrap();
    let w = std::fs::read(tiny_model().join("model.safetensors")).unwrap();
    std::fs::write(bad.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    out = mine_as(tmp.path(), &hub, 1, "fixture", Some(&bad), &["--offline"]);
    fails_with(&out, "is not a model the validator accepts");
    assert!(training_dir_is_empty(tmp.path()));

    // Two starting models at once.
    out = mine(tmp.path(), &hub, 1, &["--offline", "--load_best"]);
    assert!(!out.status.success());
    assert!(training_dir_is_empty(tmp.path()));
    // Each message is one line.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn an_unreachable_hub_after_training_keeps_the_model_and_says_how_to_finish() {
    let tmp = tempfile::tempdir().unwrap();
    register(&tmp.path().join("chain"));
    // The hub's place is taken by a file: nothing can be written there.
    let blocked = tmp.path().join("hub");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let hub = format!("local:{}", blocked.display());
    let out = mine(
        tmp.path(),
        &hub,
        1,
        &[
            "--hf_repo_id",
            "miner/tiny-mined",
            "--avg_loss_upload_threshold",
            "100",
        ],
    );
    fails_with(&out, "pretrain upload --load_model_dir");
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap();
    let cmd = line.split("finish with: ").nth(1).unwrap();
    assert!(cmd.contains("--hf_repo_id miner/tiny-mined"), "{cmd}");
    assert!(cmd.contains("--wallet.name fixture"), "{cmd}");
    // The best model stays on disk, whole, where the command points.
    let dir = cmd.split_whitespace().nth(3).unwrap();
    let inspect = ok_json(&pretrain(&s(&["inspect", dir])));
    assert_eq!(inspect["valid"], true, "{inspect}");

    // The printed command finishes the job once the hub is back.
    std::fs::remove_file(&blocked).unwrap();
    let words: Vec<String> = cmd.split_whitespace().skip(1).map(String::from).collect();
    let up = ok_json(&pretrain(&words));
    assert_eq!(up["hotkey"], HOT_SS58);
}

#[test]
fn offline_resume_continues_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = format!("local:{}", tmp.path().join("hub").display());
    let first = ok_json(&mine(tmp.path(), &hub, 1, &["--offline"]));
    assert_eq!(first["pushed"], serde_json::Value::Null);
    let run = first["run_dir"].as_str().unwrap().to_string();
    let dataset = corpus_slice(&tmp.path().join("corpus"));
    let mut args = s(&[
        "mine",
        "--offline",
        "--resume",
        &run,
        "--num_epochs",
        "2",
        "--dataset",
        &dataset,
    ]);
    args.extend(chain_flags(&tmp.path().join("chain")));
    let second = ok_json(&pretrain(&args));
    assert_eq!(second["run_dir"], first["run_dir"]);
    assert_eq!(second["epochs"], 2);
    // The same run in one go gives the same second epoch.
    let tmp2 = tempfile::tempdir().unwrap();
    let whole = ok_json(&mine(tmp2.path(), &hub, 2, &["--offline"]));
    assert_eq!(whole["epoch_losses"][1], second["epoch_losses"][0]);
    assert_eq!(whole["epoch_losses"][0], first["epoch_losses"][0]);
}

#[test]
fn ctrl_c_stops_after_saving_and_the_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = corpus_slice(&tmp.path().join("corpus"));
    let models = tmp.path().join("models");
    let mut args = s(&[
        "mine",
        "--offline",
        "--load_model_dir",
        tiny_model().to_str().unwrap(),
        "--dataset",
        &dataset,
        "--model_dir",
        models.to_str().unwrap(),
        "--num_epochs",
        "50",
        "--lr",
        "1e-3",
        "--bs",
        "2",
        "--sl",
        "64",
        "--seed",
        "1",
    ]);
    args.extend(chain_flags(&tmp.path().join("chain")));
    let child = Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first optimizer step on disk, then interrupt.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let metrics = loop {
        let found = std::fs::read_dir(models.join("training"))
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path().join("metrics.jsonl"))
            .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("\"step\"")));
        if let Some(p) = found {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no training step within 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let j = ok_json(&out);
    assert_eq!(j["stopped"], true, "{j}");
    assert!(j["epochs"].as_u64().unwrap() < 50);
    let run = metrics.parent().unwrap();
    assert!(run
        .join("checkpoint/optimizer/optimizer.safetensors")
        .is_file());
    assert!(run.join("best/model.safetensors").is_file());
    // Continuing where it stopped, to the end of the current epoch plus one.
    let total = (j["epochs"].as_u64().unwrap() + 1).to_string();
    let mut again = s(&[
        "mine",
        "--offline",
        "--resume",
        run.to_str().unwrap(),
        "--num_epochs",
        &total,
        "--dataset",
        &dataset,
    ]);
    again.extend(chain_flags(&tmp.path().join("chain")));
    let r = ok_json(&pretrain(&again));
    assert_eq!(r["stopped"], false);
    assert_eq!(r["epochs"].as_u64().unwrap().to_string(), total);
}

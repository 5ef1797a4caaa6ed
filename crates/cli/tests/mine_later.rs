//! `pretrain mine` under a later-protocol schedule (the built-in
//! `localnet-two`: competition 1 TINY_GPT2, competition 2 TINY_LLAMA): the
//! 5-field commitment with the hotkey-bound secure hash, the private upload
//! and `--update_repo_visibility`, and the competition refused before
//! training when it is not scheduled or the model does not fit it.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;

use base64::Engine as _;
use pretrain_core::hash_of_directory;
use pretrain_store::{HubError, LocalHub, ModelHub, Visibility};
use sha2::Digest as _;

mod common;
#[path = "common/mining.rs"]
mod mining;
use common::{fails_with, ok_json};
use mining::*;

/// One short epoch of the tiny GPT-2 under `localnet-two`, pushing to the local hub.
fn mine_later(tmp: &Path, extra: &[&str]) -> Output {
    let dataset = corpus_slice(&tmp.join("corpus"));
    let hub = format!("local:{}", tmp.join("hub").display());
    let mut args = s(&[
        "mine",
        "--schedule",
        "localnet-two",
        "--load_model_dir",
        tiny_model().to_str().unwrap(),
        "--dataset",
        &dataset,
        "--model_dir",
        tmp.join("models").to_str().unwrap(),
        "--hub",
        &hub,
        "--num_epochs",
        "1",
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
        "--avg_loss_upload_threshold",
        "100",
    ]);
    args.extend(chain_flags(&tmp.join("chain")));
    args.extend(extra.iter().map(|x| x.to_string()));
    pretrain(&args)
}

fn training_dir_is_empty(tmp: &Path) -> bool {
    let t = tmp.join("models").join("training");
    !t.exists() || std::fs::read_dir(&t).unwrap().next().is_none()
}

/// taoverse's `get_hash_of_two_strings`, written out here rather than taken
/// from the code under test.
fn expected_secure_hash(model_hash: &str, hotkey: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{model_hash}{hotkey}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The commitment on chain for the fixture hotkey, as text.
fn commitment(tmp: &Path) -> String {
    let c = ok_json(&pretrain(&s(&[
        "chain",
        "commitment",
        "--hotkey",
        HOT_SS58,
        "--chain_dir",
        tmp.join("chain").to_str().unwrap(),
    ])));
    c["data"].as_str().unwrap().to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn later_mine_commits_the_secure_hash_and_competition_and_uploads_private() {
    let tmp = tempfile::tempdir().unwrap();
    register(&tmp.path().join("chain"));
    let rt = runtime();
    let hub = LocalHub::open(tmp.path().join("hub")).unwrap();

    // Without --update_repo_visibility: committed, but the repo stays private.
    let j = ok_json(&mine_later(
        tmp.path(),
        &["--competition_id", "1", "--hf_repo_id", "miner/tiny-later"],
    ));
    let pushed = &j["pushed"];
    let on_chain = commitment(tmp.path());
    assert_eq!(pushed["model_id"].as_str().unwrap(), on_chain);
    let parts: Vec<&str> = on_chain.split(':').collect();
    assert_eq!(parts.len(), 5, "{on_chain}");
    assert_eq!(&parts[..2], ["miner", "tiny-later"]);
    assert_eq!(parts[4], "1", "the competition asked for");
    assert_eq!(pushed["competition_id"], 1);
    assert_eq!(pushed["secure_hash"].as_str().unwrap(), parts[3]);
    assert_eq!(pushed["commit"].as_str().unwrap(), parts[2]);
    let repo = "miner/tiny-later".parse().unwrap();
    let commit = parts[2].parse().unwrap();
    let dest = tmp.path().join("dl");
    for err in [
        rt.block_on(hub.files_at(&repo, &commit)).unwrap_err(),
        rt.block_on(hub.download(&repo, &commit, &dest))
            .unwrap_err(),
    ] {
        assert!(matches!(err, HubError::NotFound(_)), "{err}");
    }
    // Made public by hand: the secure hash binds what a validator downloads to the hotkey.
    rt.block_on(hub.set_visibility(&repo, Visibility::Public))
        .unwrap();
    let snapshot = rt.block_on(hub.download(&repo, &commit, &dest)).unwrap();
    let model_hash = hash_of_directory(&snapshot).unwrap();
    assert_eq!(parts[3], expected_secure_hash(&model_hash, HOT_SS58));
    assert_eq!(pushed["hash"].as_str().unwrap(), model_hash);
    // Another hotkey's secure hash of the same files differs (what stops copies).
    assert_ne!(
        parts[3],
        expected_secure_hash(
            &model_hash,
            "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
        )
    );

    // With --update_repo_visibility, and without --competition_id... refused:
    // two competitions are scheduled, so the miner must choose.
    fails_with(
        &mine_later(
            tmp.path(),
            &[
                "--hf_repo_id",
                "miner/tiny-public",
                "--update_repo_visibility",
            ],
        ),
        "choose one with --competition_id",
    );
    // With it: public once the commitment landed.
    let j = ok_json(&mine_later(
        tmp.path(),
        &[
            "--competition_id",
            "1",
            "--hf_repo_id",
            "miner/tiny-public",
            "--update_repo_visibility",
        ],
    ));
    let on_chain = commitment(tmp.path());
    assert_eq!(j["pushed"]["model_id"].as_str().unwrap(), on_chain);
    let parts: Vec<&str> = on_chain.split(':').collect();
    assert_eq!(parts.len(), 5, "{on_chain}");
    assert_eq!((parts[1], parts[4]), ("tiny-public", "1"));
    let repo = "miner/tiny-public".parse().unwrap();
    let commit = parts[2].parse().unwrap();
    assert_eq!(hub.visibility(&repo).unwrap(), Some(Visibility::Public));
    let snapshot = rt.block_on(hub.download(&repo, &commit, &dest)).unwrap();
    let model_hash = hash_of_directory(&snapshot).unwrap();
    assert_eq!(parts[3], expected_secure_hash(&model_hash, HOT_SS58));
}

#[test]
fn later_mine_refuses_a_competition_it_cannot_enter_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    register(&tmp.path().join("chain"));
    let repo = ["--hf_repo_id", "miner/tiny-later"];

    // Not scheduled: the message names the scheduled ids and names.
    let out = mine_later(
        tmp.path(),
        &[&repo[..], &["--competition_id", "7"]].concat(),
    );
    fails_with(&out, "--competition_id 7 is not scheduled at block");
    fails_with(&out, "scheduled: 1 (TINY_GPT2), 2 (TINY_LLAMA)");
    // Offline too (the schedule's latest entry).
    let out = mine_later(tmp.path(), &["--offline", "--competition_id", "0"]);
    fails_with(&out, "scheduled: 1 (TINY_GPT2), 2 (TINY_LLAMA)");

    // Scheduled, but a GPT-2 model does not enter the LLaMA competition.
    let out = mine_later(
        tmp.path(),
        &[&repo[..], &["--competition_id", "2"]].concat(),
    );
    fails_with(
        &out,
        "architecture GPT2LMHeadModel is not allowed in competition 2",
    );

    // A repo id too long for the 5-field id in 128 bytes (38 bytes at most).
    let long = format!("miner/{}", "m".repeat(33));
    assert_eq!(long.len(), 39);
    let out = mine_later(
        tmp.path(),
        &["--competition_id", "1", "--hf_repo_id", &long],
    );
    fails_with(&out, "at most 38 bytes");
    assert!(training_dir_is_empty(tmp.path()));
    assert!(!tmp.path().join("hub").join("repos").join("miner").exists());

    // The hub is unreachable after training: the command printed to finish
    // the job is the later push into the same competition.
    let blocked = tmp.path().join("hub");
    std::fs::remove_dir_all(&blocked).ok();
    std::fs::write(&blocked, b"not a directory").unwrap();
    let out = mine_later(
        tmp.path(),
        &[
            &repo[..],
            &["--competition_id", "1", "--update_repo_visibility"],
        ]
        .concat(),
    );
    fails_with(&out, "pretrain upload --load_model_dir");
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap();
    let cmd = line.split("finish with: ").nth(1).unwrap();
    assert!(
        cmd.contains("--schedule localnet-two --competition_id 1 --update_repo_visibility"),
        "{cmd}"
    );
    std::fs::remove_file(&blocked).unwrap();
    let words: Vec<String> = cmd.split_whitespace().skip(1).map(String::from).collect();
    let up = ok_json(&pretrain(&words));
    let id = up["model_id"].as_str().unwrap();
    assert!(
        id.starts_with("miner:tiny-later:") && id.ends_with(":1"),
        "{id}"
    );
    assert_eq!(commitment(tmp.path()), id);
    let hub = LocalHub::open(&blocked).unwrap();
    assert_eq!(
        hub.visibility(&"miner/tiny-later".parse().unwrap())
            .unwrap(),
        Some(Visibility::Public)
    );
}

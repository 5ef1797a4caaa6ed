//! `pretrain upload` end to end on the offline backends: the fixture wallet,
//! the embedded chain and a local hub; then the validator's store fetches
//! and verifies what was committed.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use pretrain_core::ModelId;
use pretrain_store::{open_hub, HubOptions, ModelStore};
use serde_json::Value;

const WALLETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/wallet");
// From testdata/wallet/README.md.
const HOT_SS58: &str = "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe";

fn reference_model() -> (PathBuf, Value) {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/models/tiny-gpt2"
    ));
    let expected =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    (dir.join("model"), expected)
}

fn pretrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pretrain")
}

mod common;
use common::{fails_with, ok_json};

fn common(chain_dir: &Path) -> Vec<String> {
    [
        "--wallet.path",
        WALLETS,
        "--wallet.name",
        "fixture",
        "--wallet.hotkey",
        "default",
        "--chain_dir",
        chain_dir.to_str().unwrap(),
        "--block_time",
        // 100 blocks of rate limit = 20 s: ample for the second push to come too early.
        "0.2",
    ]
    .map(String::from)
    .to_vec()
}

fn upload(model: &Path, hub: &str, chain_dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "upload".to_string(),
        "--load_model_dir".into(),
        model.to_str().unwrap().into(),
        "--hf_repo_id".into(),
        "miner/tiny-gpt2".into(),
        "--hub".into(),
        hub.into(),
    ];
    args.extend(common(chain_dir));
    args.extend(extra.iter().map(|s| s.to_string()));
    pretrain(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn upload_commits_the_reference_hash_and_the_validator_fetches_it() {
    let tmp = tempfile::tempdir().unwrap();
    let chain_dir = tmp.path().join("chain");
    let hub_dir = tmp.path().join("hub");
    let hub = format!("local:{}", hub_dir.display());
    let (model, expected) = reference_model();

    // Not registered yet: the commit is refused, not retried forever.
    fails_with(
        &upload(
            &model,
            &hub,
            &chain_dir,
            &["--max_commit_attempts", "2", "--commit_retry_delay", "0"],
        ),
        // Reading commands never create a chain: there is none yet.
        "no embedded chain",
    );
    let mut reg = vec!["chain".to_string(), "register".into()];
    reg.extend(common(&chain_dir));
    ok_json(&pretrain(
        &reg.iter().map(String::as_str).collect::<Vec<_>>(),
    ));

    let out = ok_json(&upload(&model, &hub, &chain_dir, &[]));
    // The committed hash is the one the original computes for these files.
    assert_eq!(out["hash"], expected["hash_of_directory"]);
    assert_eq!(out["hotkey"], HOT_SS58);
    let commit = out["commit"].as_str().unwrap();
    assert!(commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()));
    let id = ModelId::from_compressed_str(out["model_id"].as_str().unwrap()).unwrap();
    assert_eq!(id.namespace, "miner");
    assert_eq!(id.name, "tiny-gpt2");

    // The chain holds it under uid 0.
    let c = ok_json(&pretrain(&[
        "chain",
        "commitment",
        "--uid",
        "0",
        "--chain_dir",
        chain_dir.to_str().unwrap(),
    ]));
    assert_eq!(c["data"], out["model_id"]);
    assert_eq!(c["block"], out["block"]);

    // A second push right away is rate-limited by the chain (100 blocks).
    fails_with(
        &upload(&model, &hub, &chain_dir, &["--max_commit_attempts", "1"]),
        "rate limited",
    );

    // The validator's side: download at the commit, verify the hash.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hub = open_hub(&hub, HubOptions::default()).unwrap();
    let store = ModelStore::new(tmp.path().join("validator"));
    let fetched = rt
        .block_on(store.fetch(
            hub.as_ref(),
            &HOT_SS58.parse().unwrap(),
            &id,
            pretrain_core::constants::MAX_MODEL_BYTES,
        ))
        .unwrap();
    assert_eq!(
        fetched.hash,
        expected["hash_of_directory"].as_str().unwrap()
    );
    assert!(fetched.path.join("model.safetensors").is_file());
}

#[test]
fn upload_refuses_bad_input_before_uploading() {
    let tmp = tempfile::tempdir().unwrap();
    let chain_dir = tmp.path().join("chain");
    let hub_dir = tmp.path().join("hub");
    let hub = format!("local:{}", hub_dir.display());
    let (model, _) = reference_model();

    // A local hub with a real chain: validators could never download it.
    fails_with(
        &upload(&model, &hub, &chain_dir, &["--subtensor.network", "finney"]),
        "--hub hf",
    );

    // Weights as pickle only: the validator would reject it, so it is not uploaded.
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::copy(model.join("config.json"), bad.join("config.json")).unwrap();
    std::fs::write(bad.join("pytorch_model.bin"), b"not a pickle").unwrap();
    fails_with(
        &upload(&bad, &hub, &chain_dir, &[]),
        "not a model the validator accepts",
    );
    assert!(!hub_dir.exists(), "nothing reached the hub");

    // A repo id that cannot be a Hugging Face repo.
    let mut args = vec![
        "upload".to_string(),
        "--load_model_dir".into(),
        model.to_str().unwrap().into(),
        "--hf_repo_id".into(),
        "no-slash".into(),
        "--hub".into(),
        hub.clone(),
    ];
    args.extend(common(&chain_dir));
    let out = pretrain(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    assert!(!hub_dir.join("no-slash").exists());
}

#[test]
fn absurd_durations_are_refused_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = reference_model();
    let hub = format!("local:{}", tmp.path().join("hub").display());
    for bad in ["1e300", "nan", "-1", "inf"] {
        let flag = format!("--commit_retry_delay={bad}");
        let out = upload(&model, &hub, &tmp.path().join("chain"), &[&flag]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{bad}: no panic (101), a refusal"
        );
        fails_with(&out, "--commit_retry_delay must be a number of seconds");
    }
    for flag in ["--idle_wait", "--eval_timeout", "--update_interval"] {
        let out = pretrain(&["validate", "--offline", flag, "1e300"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{flag}: no panic (101), a refusal"
        );
        fails_with(&out, &format!("{flag} must be a number of seconds"));
    }
}

#[test]
fn upload_under_a_later_schedule_commits_the_secure_hash_and_publishes_after() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let tmp = tempfile::tempdir().unwrap();
    let chain_dir = tmp.path().join("chain");
    let hub_dir = tmp.path().join("hub");
    let hub = format!("local:{}", hub_dir.display());
    let (model, expected) = reference_model();
    let mut reg = vec!["chain".to_string(), "register".into()];
    reg.extend(common(&chain_dir));
    ok_json(&pretrain(
        &reg.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let later = ["--schedule", "localnet-two"];

    // An unscheduled competition is refused, naming the scheduled ones, before any upload.
    fails_with(
        &upload(
            &model,
            &hub,
            &chain_dir,
            &[&later[..], &["--competition_id", "5"]].concat(),
        ),
        "scheduled: 1 (TINY_GPT2), 2 (TINY_LLAMA)",
    );
    assert!(!hub_dir.join("repos").exists(), "nothing reached the hub");

    let out = ok_json(&upload(
        &model,
        &hub,
        &chain_dir,
        &[
            &later[..],
            &["--competition_id", "1", "--update_repo_visibility"],
        ]
        .concat(),
    ));
    // taoverse's get_hash_of_two_strings over the original's hash of these files.
    let model_hash = expected["hash_of_directory"].as_str().unwrap();
    let secure = base64::engine::general_purpose::STANDARD
        .encode(sha2::Sha256::digest(format!("{model_hash}{HOT_SS58}")));
    let commit = out["commit"].as_str().unwrap();
    assert_eq!(
        out["model_id"].as_str().unwrap(),
        format!("miner:tiny-gpt2:{commit}:{secure}:1")
    );
    assert_eq!(out["hash"], model_hash);
    assert_eq!(out["competition_id"], 1);
    let c = ok_json(&pretrain(&[
        "chain",
        "commitment",
        "--uid",
        "0",
        "--chain_dir",
        chain_dir.to_str().unwrap(),
    ]));
    assert_eq!(c["data"], out["model_id"]);
    // Public after the commitment: anyone can list it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hub = open_hub(&hub, HubOptions::default()).unwrap();
    let files = rt
        .block_on(hub.files_at(
            &"miner/tiny-gpt2".parse().unwrap(),
            &commit.parse().unwrap(),
        ))
        .unwrap();
    // The model and the .gitattributes the hub writes.
    assert_eq!(files.len(), 4);
}

/// A model with a NaN weight is refused with the tensor's name before anything is
/// uploaded or committed, with and without `--upload_b16`: the miner's good
/// commitment stays on chain and the hub gets no new commit.
#[test]
fn a_non_finite_weight_is_refused_and_the_good_commitment_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let chain_dir = tmp.path().join("chain");
    let hub_dir = tmp.path().join("hub");
    let hub = format!("local:{}", hub_dir.display());
    let (model, _) = reference_model();
    let bad = tmp.path().join("bad");
    let tensor = "transformer.h.1.attn.c_proj.weight";
    common::copy_with_weight(&model, &bad, tensor, 17, f32::NAN);

    // Refused before the chain is even asked (there is none yet).
    fails_with(&upload(&bad, &hub, &chain_dir, &[]), tensor);
    assert!(!hub_dir.exists(), "nothing reached the hub");

    let mut reg = vec!["chain".to_string(), "register".into()];
    reg.extend(common(&chain_dir));
    ok_json(&pretrain(
        &reg.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let good = ok_json(&upload(&model, &hub, &chain_dir, &[]));
    let before = walk_count(&hub_dir);
    for extra in [&[][..], &["--upload_b16"][..]] {
        let out = upload(&bad, &hub, &chain_dir, extra);
        fails_with(&out, tensor);
        fails_with(&out, "non-finite");
    }
    assert_eq!(walk_count(&hub_dir), before, "the hub is unchanged");
    let c = ok_json(&pretrain(&[
        "chain",
        "commitment",
        "--uid",
        "0",
        "--chain_dir",
        chain_dir.to_str().unwrap(),
    ]));
    assert_eq!(c["data"], good["model_id"]);
}

fn walk_count(d: &Path) -> usize {
    std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        1 + walk_count(&p)
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

//! A v3 commit our code encrypted, decrypted by a real subtensor runtime
//! (spec_version 293, from `testdata/chain/subtensor-spec293-aura-dev.json`)
//! run by chopsticks on this machine, and its weights applied in the block
//! that ends the epoch before the reveal epoch our code predicted.
//!
//! Ignored unless asked for (`cargo test -p pretrain-chain --test subtensor_chopsticks_crv3 -- --ignored`):
//! needs node and chopsticks 1.5.1. `PRETRAIN_CHOPSTICKS_NODE_MODULES` is the
//! `node_modules` folder that holds `@acala-network/chopsticks`; unset, the test
//! installs it with npm into `~/.cache/pretrain-chopsticks` (npm's registry).
//!
//! No machine here reaches drand, so the commit goes to quicknet round 1000,
//! whose real signature is in `testdata/chain/timelock.json`, and the test
//! writes that pulse into `Drand.Pulses` with `dev_setStorage` (the pallet's
//! own `write_pulse` verifies with bls12-381 host calls chopsticks lacks).

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::chopsticks::*;
use pretrain_chain::subtensor::{self, SubtensorChain};
use pretrain_chain::timelock::quicknet_round_at;
use pretrain_chain::{Chain, WeightsSubmission};
use sha2::{Digest, Sha256};
use subxt::dynamic::Value;
use subxt::rpcs::{rpc_params, RpcClient};
use subxt::{OnlineClient, SubstrateConfig};
use subxt_signer::sr25519::dev;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const ROUND: u64 = 1000;
const TEMPO: u64 = 4;

/// The `node_modules` folder with chopsticks 1.5.1, installed on first use.
fn node_modules() -> PathBuf {
    if let Ok(dir) = std::env::var("PRETRAIN_CHOPSTICKS_NODE_MODULES") {
        return PathBuf::from(dir);
    }
    let home = std::env::var("HOME").expect("HOME");
    let prefix = PathBuf::from(home).join(".cache/pretrain-chopsticks");
    let modules = prefix.join("node_modules");
    if !modules
        .join("@acala-network/chopsticks/package.json")
        .exists()
    {
        std::fs::create_dir_all(&prefix).unwrap();
        let status = Command::new("npm")
            .args(["install", "--silent", "--prefix"])
            .arg(&prefix)
            .arg("@acala-network/chopsticks@1.5.1")
            .status()
            .expect("npm (needs node and npm)");
        assert!(status.success(), "npm install chopsticks failed");
    }
    modules
}

fn round_signature() -> Vec<u8> {
    let text = std::fs::read_to_string(format!("{REF}/chain/timelock.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let pulse = v["pulses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["round"] == ROUND)
        .unwrap();
    hex::decode(pulse["signature"].as_str().unwrap()).unwrap()
}

async fn new_blocks(rpc: &RpcClient, count: u64) {
    let _: serde_json::Value = rpc
        .request(
            "dev_newBlock",
            rpc_params![serde_json::json!({ "count": count })],
        )
        .await
        .expect("dev_newBlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and chopsticks 1.5.1 (npm) running the spec-293 subtensor runtime; run with --ignored"]
async fn a_v3_commit_we_encrypted_is_revealed_by_the_real_runtime() {
    let modules = node_modules();
    let script = format!("{REPO}/scripts/chopsticks/chopsticks.cjs");
    let node_path = [("NODE_PATH", modules.display().to_string())];
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("spec293-raw.json");
    let built = Command::new("node")
        .envs(node_path.iter().map(|(k, v)| (*k, v.as_str())))
        .arg(&script)
        .arg("raw-spec")
        .arg(format!("{REF}/chain/subtensor-spec293-aura-dev.json"))
        .arg(&raw)
        .status()
        .expect("node");
    assert!(built.success(), "raw-spec failed");

    let port = free_port();
    let _node = start_chopsticks_with(
        "node",
        &[
            script.clone(),
            "run".into(),
            "--allow-unresolved-imports".into(),
        ],
        &node_path,
        raw.to_str().unwrap(),
        1000,
        port,
    );
    let url = format!("ws://127.0.0.1:{port}");
    let chain: SubtensorChain = connect(&url).await;
    let rpc = RpcClient::from_insecure_url(&url).await.expect("rpc");
    let client = OnlineClient::<SubstrateConfig>::from_insecure_url(&url)
        .await
        .expect("client");

    // Alice is sudo in this spec; the fixture coldkey and hotkey get funds.
    let alice = dev::alice();
    let coldkey = keypair(COLDKEY_SEED);
    let hotkey = fixture_hotkey();
    let hotkey_account = subtensor::account_of(&hotkey.ss58).expect("ss58");
    let funded =
        serde_json::json!({ "providers": 1, "data": { "free": 1_000_000_000_000_000u64 } });
    let storage = serde_json::json!({
        "System": { "Account": [
            [[COLDKEY_SS58], funded],
            [[hotkey.ss58.clone()], funded],
        ] }
    });
    let _: serde_json::Value = rpc
        .request("dev_setStorage", rpc_params![storage])
        .await
        .expect("dev_setStorage");

    submit(
        &client,
        &sudo(call(
            "AdminUtils",
            "sudo_set_network_rate_limit",
            vec![("rate_limit", u(0))],
        )),
        &alice,
    )
    .await;
    let events = submit(
        &client,
        &call(
            "SubtensorModule",
            "register_network",
            vec![("hotkey", account_value(&alice))],
        ),
        &alice,
    )
    .await;
    let netuid = added_netuid(&events);
    let admin = |name: &str, fields: Vec<(&str, Value)>| sudo(call("AdminUtils", name, fields));
    let n = || ("netuid", u(netuid.into()));
    submit(
        &client,
        &admin("sudo_set_tempo", vec![n(), ("tempo", u(TEMPO))]),
        &alice,
    )
    .await;
    submit(
        &client,
        &admin(
            "sudo_set_weights_set_rate_limit",
            vec![n(), ("weights_set_rate_limit", u(0))],
        ),
        &alice,
    )
    .await;
    submit(
        &client,
        &admin(
            "sudo_set_commit_reveal_weights_enabled",
            vec![n(), ("enabled", Value::bool(true))],
        ),
        &alice,
    )
    .await;
    submit(
        &client,
        &call(
            "SubtensorModule",
            "burned_register",
            vec![n(), ("hotkey", Value::from_bytes(hotkey_account))],
        ),
        &coldkey,
    )
    .await;

    // Through our backend from here on.
    let hp = chain
        .hyperparameters(netuid)
        .await
        .expect("hyperparameters");
    eprintln!("subnet {netuid}: {hp:?}");
    assert!(hp.commit_reveal_weights_enabled);
    assert_eq!(hp.tempo, TEMPO);
    let uid = chain
        .uid_of(netuid, &hotkey.ss58)
        .await
        .unwrap()
        .expect("registered");
    // Until epoch 2 the runtime reveals nothing: start from there.
    while (chain.current_block().await.unwrap() + u64::from(netuid) + 1) / (TEMPO + 1) < 2 {
        new_blocks(&rpc, 1).await;
    }
    let submitted = chain
        .commit_weights_to_round(&hotkey, netuid, &[uid], &[65535], 0, ROUND)
        .await
        .expect("commit_crv3_weights");
    let WeightsSubmission::Committed {
        block,
        reveal_round,
        reveal_block,
    } = submitted
    else {
        panic!("expected a commit, got {submitted:?}")
    };
    assert_eq!(reveal_round, ROUND);
    eprintln!("committed at block {block}; reveal expected at block {reveal_block}");
    assert!(reveal_block > block);

    // The pulse of the round, as the drand pallet stores it.
    let signature = round_signature();
    let randomness: [u8; 32] = Sha256::digest(&signature).into();
    let pulse = serde_json::json!({ "Drand": { "Pulses": [[[ROUND], {
        "round": ROUND,
        "randomness": format!("0x{}", hex::encode(randomness)),
        "signature": format!("0x{}", hex::encode(&signature)),
    }]] } });
    let _: serde_json::Value = rpc
        .request("dev_setStorage", rpc_params![pulse])
        .await
        .expect("dev_setStorage pulse");

    // `reveal_block` is the first block of the reveal epoch (the SDK's
    // definition); the runtime reveals in the block before it, the one that
    // runs the epoch (`blocks_until_next_epoch == 0`). No weights before that
    // block; ours in it.
    let revealing = reveal_block - 1;
    loop {
        let now = chain.current_block().await.unwrap();
        let weights = chain.weights_of(netuid, uid).await.unwrap();
        if now < revealing {
            assert!(
                weights.is_empty(),
                "weights at block {now}, before the epoch's block {revealing}: {weights:?}"
            );
        } else {
            assert_eq!(now, revealing, "weights are read at every block");
            assert_eq!(weights, vec![(uid, 65535)], "at block {now}");
            break;
        }
        new_blocks(&rpc, 1).await;
    }
    eprintln!("revealed by the spec-293 runtime at block {revealing}: weights applied");

    // What the validator calls: committed to the round of the reveal epoch's time.
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    match chain
        .submit_weights(&hotkey, netuid, &[uid], &[65535], 0)
        .await
        .expect("submit_weights")
    {
        WeightsSubmission::Committed { reveal_round, .. } => {
            let round_now = quicknet_round_at(now_secs);
            assert!(
                reveal_round + 100 > round_now && reveal_round < round_now + 100,
                "round {reveal_round}, now {round_now}"
            );
        }
        other => panic!("expected a commit, got {other:?}"),
    }
}

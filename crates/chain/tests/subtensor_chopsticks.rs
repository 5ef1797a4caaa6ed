//! The `subtensor` backend against a real subtensor runtime (spec 218, from
//! `testdata/chain/raonet.json`) run by chopsticks on this machine.
//!
//! Ignored unless asked for (`cargo test -p pretrain-chain --test subtensor_chopsticks -- --ignored`); needs chopsticks 1.5.1
//! (`npm install @acala-network/chopsticks@1.5.1`). `PRETRAIN_CHOPSTICKS` is
//! the command that starts it (default `npx --yes @acala-network/chopsticks@1.5.1`,
//! e.g. `/tmp/cs/node_modules/.bin/chopsticks`). See crates/chain/README.md.
//!
//! Setup (made with subxt directly, as an operator would with btcli): Alice is
//! made sudo and funded with `dev_setStorage`, registers a subnet, the fixture
//! coldkey burns-registers the fixture hotkey. Then everything the miner and
//! validator do goes through OUR backend: uid, metagraph, commit, read the
//! commitment back, set weights (and the commit-reveal refusal).

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

mod common;

use common::chopsticks::*;
use pretrain_chain::subtensor;
use pretrain_chain::{Chain, ChainError};
use subxt::dynamic::Value;
use subxt::rpcs::{rpc_params, RpcClient};
use subxt::{OnlineClient, SubstrateConfig};
use subxt_signer::sr25519::dev;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chopsticks 1.5.1 (npx) running a subtensor runtime; run with --ignored, see crates/chain/README.md"]
async fn subtensor_backend_against_chopsticks() {
    let port = free_port();
    let _node = start_chopsticks(port);
    let url = format!("ws://127.0.0.1:{port}");

    let chain = connect(&url).await;

    let alice = dev::alice();
    let coldkey = keypair(COLDKEY_SEED);
    assert_eq!(ss58(&coldkey), COLDKEY_SS58);
    let hotkey = fixture_hotkey();
    let hotkey_account = subtensor::account_of(&hotkey.ss58).expect("ss58");

    // Alice becomes sudo; Alice, the fixture coldkey and hotkey get funds (1M TAO).
    let rpc = RpcClient::from_insecure_url(&url).await.expect("rpc");
    // The chain's identity for the validator's state is its genesis hash.
    let genesis: String = rpc
        .request("chain_getBlockHash", rpc_params![0])
        .await
        .expect("chain_getBlockHash");
    assert_eq!(
        chain.chain_id().await.expect("chain_id"),
        Some(format!("genesis:{genesis}"))
    );
    let funded =
        serde_json::json!({ "providers": 1, "data": { "free": 1_000_000_000_000_000u64 } });
    let storage = serde_json::json!({
        "Sudo": { "Key": ss58(&alice) },
        "System": { "Account": [
            [[ss58(&alice)], funded],
            [[COLDKEY_SS58], funded],
            [[hotkey.ss58.clone()], funded],
        ] }
    });
    let _: serde_json::Value = rpc
        .request("dev_setStorage", rpc_params![storage])
        .await
        .expect("dev_setStorage");

    let client = OnlineClient::<SubstrateConfig>::from_insecure_url(&url)
        .await
        .expect("client");
    // No waiting between network registrations on this test chain.
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
            vec![("hotkey", account_value(&alice)), ("mechid", u(1))],
        ),
        &alice,
    )
    .await;
    let netuid = added_netuid(&events);
    eprintln!("registered subnet {netuid}");
    // Weights may be set every block on this test subnet.
    submit(
        &client,
        &sudo(call(
            "AdminUtils",
            "sudo_set_weights_set_rate_limit",
            vec![
                ("netuid", u(netuid.into())),
                ("weights_set_rate_limit", u(0)),
            ],
        )),
        &alice,
    )
    .await;

    // Before registration: no uid, commit refused as NotRegistered.
    assert_eq!(
        chain.uid_of(netuid, &hotkey.ss58).await.expect("uid_of"),
        None
    );
    match chain.commit(&hotkey, netuid, b"early").await {
        Err(ChainError::NotRegistered { netuid: n, .. }) => assert_eq!(n, netuid),
        other => panic!("expected NotRegistered, got {other:?}"),
    }
    assert!(matches!(
        chain.metagraph(4242).await,
        Err(ChainError::NoSuchSubnet(4242))
    ));

    submit(
        &client,
        &call(
            "SubtensorModule",
            "burned_register",
            vec![
                ("netuid", u(netuid.into())),
                ("hotkey", Value::from_bytes(hotkey_account)),
            ],
        ),
        &coldkey,
    )
    .await;

    // Through our backend from here on.
    let block0 = chain.current_block().await.expect("current_block");
    let uid = chain
        .uid_of(netuid, &hotkey.ss58)
        .await
        .expect("uid_of")
        .expect("registered");
    let metagraph = chain.metagraph(netuid).await.expect("metagraph");
    eprintln!(
        "metagraph at block {}: {:?}",
        metagraph.block, metagraph.neurons
    );
    let me = metagraph
        .neurons
        .iter()
        .find(|n| n.uid == uid)
        .expect("our uid in the metagraph");
    assert_eq!(me.hotkey, hotkey.ss58);
    assert_eq!(me.coldkey, COLDKEY_SS58);
    assert!(metagraph.block >= block0);

    let data = b"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn:mmmmmmmmmmmmmmmmmmmmmmmmmmmmmm:cccccccccccccccccccccccccccccccccccccccc:hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh";
    let data = &data[..128];
    let commit_block = chain.commit(&hotkey, netuid, data).await.expect("commit");
    assert!(commit_block > block0);
    let got = chain
        .commitment(netuid, &hotkey.ss58)
        .await
        .expect("commitment")
        .expect("some");
    assert_eq!(got.data, data);
    assert_eq!(got.block, commit_block);
    let all = chain.commitments(netuid).await.expect("commitments");
    assert_eq!(all, vec![got.clone()]);

    // A second commit right away hits the pallet's rate limit.
    match chain.commit(&hotkey, netuid, b"again").await {
        Err(ChainError::RateLimited(msg)) => {
            eprintln!("second commit rate limited as expected: {msg}")
        }
        other => panic!("expected RateLimited on an immediate second commit, got {other:?}"),
    }
    let still = chain
        .commitment(netuid, &hotkey.ss58)
        .await
        .expect("commitment");
    assert_eq!(still, Some(got), "a refused commit leaves the old one");

    // Commit-reveal on: our set_weights refuses clearly.
    let cr = |on: bool| {
        sudo(call(
            "AdminUtils",
            "sudo_set_commit_reveal_weights_enabled",
            vec![("netuid", u(netuid.into())), ("enabled", Value::bool(on))],
        ))
    };
    submit(&client, &cr(true), &alice).await;
    match chain
        .set_weights(&hotkey, netuid, &[uid], &[65535], 0)
        .await
    {
        Err(ChainError::Rejected(msg)) => assert!(msg.contains("commit-reveal"), "{msg}"),
        other => panic!("expected a commit-reveal refusal, got {other:?}"),
    }
    submit(&client, &cr(false), &alice).await;
    chain
        .set_weights(&hotkey, netuid, &[uid], &[65535], 0)
        .await
        .expect("set_weights");

    // The weights are on chain: Weights(netuid, uid) = [(uid, 65535)].
    let at = client.at_current_block().await.expect("at");
    let weights = at
        .storage()
        .fetch(
            subxt::dynamic::storage::<(u16, u16), Value>("SubtensorModule", "Weights"),
            (netuid, uid),
        )
        .await
        .expect("Weights")
        .decode()
        .expect("decode");
    assert_eq!(
        weights.to_string(),
        format!("(({uid}, 65535))"),
        "weights on chain"
    );
    eprintln!("chopsticks test passed: subnet {netuid}, uid {uid}, commit at block {commit_block}");
}

//! Commit-reveal weights on the embedded chain: a validator's weights are
//! committed timelocked to the chain's beacon, give no incentive before the
//! reveal epoch, and give exactly the committed (scoring's) incentive after
//! it; a validator process killed between commit and reveal still has its
//! weights applied; a stale version key is refused before anything is sent;
//! a commit that cannot be opened is dropped at its reveal.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use pretrain_chain::embedded::{CommitReveal, EmbeddedChain, EmbeddedOptions, SubnetParams};
use pretrain_chain::timelock::{decrypt, reveal_payload, verify_signature};
use pretrain_chain::wallet::KeyPair;
use pretrain_chain::{Chain, ChainError, Hotkey, WeightsSubmission};

const NETUID: u16 = 9;
const BLOCK_TIME: f64 = 0.05;
const TEMPO: u64 = 20;
const CHILD_ENV: &str = "PRETRAIN_CR_CHILD_DIR";

fn addr(i: u8) -> String {
    KeyPair::from_secret_seed([i; 32]).unwrap().ss58()
}

fn key(i: u8) -> Hotkey {
    Hotkey::address_only(addr(i))
}

fn open(dir: &Path) -> EmbeddedChain {
    EmbeddedChain::open(
        dir,
        &EmbeddedOptions {
            block_time: Some(BLOCK_TIME),
            ..EmbeddedOptions::default()
        },
    )
    .unwrap()
}

/// A subnet with commit-reveal on: validator uid 0 (staked), miners uids 1..=3.
async fn subnet(dir: &Path, enabled: bool, weights_version_key: u64) -> EmbeddedChain {
    let chain = open(dir);
    chain
        .create_subnet(NETUID, SubnetParams::default())
        .await
        .unwrap();
    chain
        .set_commit_reveal(
            NETUID,
            CommitReveal {
                enabled,
                reveal_period_epochs: 1,
                tempo: TEMPO,
                weights_version_key,
            },
        )
        .await
        .unwrap();
    for i in 0..4u8 {
        chain.register(NETUID, &addr(i), &addr(i)).await.unwrap();
    }
    chain.add_stake(&addr(0), 100.0).await.unwrap();
    // Weights count only on uids registered before the block they are set at.
    let b = chain.current_block().await.unwrap();
    wait_past(&chain, b).await;
    chain
}

async fn wait_past(chain: &EmbeddedChain, block: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while chain.current_block().await.unwrap() <= block {
        assert!(
            Instant::now() < deadline,
            "the chain stopped at block {block}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the first block of an epoch, so a commit made now has a whole epoch before its reveal.
async fn wait_epoch_start(chain: &EmbeddedChain) {
    let cr = chain.commit_reveal(NETUID).await.unwrap();
    let b = chain.current_block().await.unwrap();
    let next = cr.epoch_start(NETUID, cr.epoch_of(NETUID, b) + 1);
    wait_past(chain, next.saturating_sub(1)).await;
}

async fn incentives(chain: &EmbeddedChain) -> Vec<f64> {
    chain
        .metagraph(NETUID)
        .await
        .unwrap()
        .neurons
        .iter()
        .map(|n| n.incentive)
        .collect()
}

/// What scoring emits for per-uid weights (the validator's own conversion).
fn emitted() -> (Vec<u16>, Vec<u16>) {
    pretrain_core::weights_for_emit(&[0.0, 0.5, 0.3, 0.2])
}

fn assert_incentive_is(got: &[f64], uids: &[u16], values: &[u16]) {
    let sum: f64 = uids
        .iter()
        .zip(values)
        .filter(|(u, _)| **u != 0)
        .map(|(_, v)| f64::from(*v))
        .sum();
    for (u, v) in uids.iter().zip(values) {
        if *u == 0 {
            continue;
        }
        let want = f64::from(*v) / sum;
        let g = got[usize::from(*u)];
        assert!((g - want).abs() < 1e-9, "uid {u}: {g} vs {want} ({got:?})");
    }
}

#[tokio::test]
async fn incentive_appears_only_after_the_reveal_and_equals_the_committed_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = subnet(tmp.path(), true, 0).await;
    let (uids, values) = emitted();
    wait_epoch_start(&chain).await;
    let sub = chain
        .submit_weights(&key(0), NETUID, &uids, &values, 2002)
        .await
        .unwrap();
    let WeightsSubmission::Committed {
        block,
        reveal_round,
        reveal_block,
    } = sub
    else {
        panic!("expected a commit, got {sub:?}");
    };
    // Epoch of the commit (block + netuid + 1) / (tempo + 1); the round is 3 blocks into the next.
    let cr = chain.commit_reveal(NETUID).await.unwrap();
    let next_epoch = cr.epoch_of(NETUID, block) + 1;
    assert_eq!(reveal_round, cr.epoch_start(NETUID, next_epoch) + 3);
    assert_eq!(reveal_block, reveal_round);
    assert_eq!(chain.pending_commits(NETUID).await.unwrap().len(), 1);
    // Before the reveal: nothing counts, the weights are not readable, the pulse is not out.
    assert!(incentives(&chain).await.iter().all(|x| *x == 0.0));
    assert!(chain.weights_of(NETUID, 0).await.unwrap().is_empty());
    assert!(chain.pulse(reveal_round).await.unwrap().is_none());

    wait_past(&chain, reveal_block).await;
    // The pulse is a drand-format signature under the beacon's key.
    let pulse = chain.pulse(reveal_round).await.unwrap().unwrap();
    let pk = chain.beacon_public_key().await.unwrap();
    verify_signature(&pk, reveal_round, &hex::decode(&pulse.signature).unwrap()).unwrap();
    let inc = incentives(&chain).await;
    assert_incentive_is(&inc, &uids, &values);
    let pairs: Vec<(u16, u16)> = uids.iter().copied().zip(values.iter().copied()).collect();
    assert_eq!(chain.weights_of(NETUID, 0).await.unwrap(), pairs);
    // A write stores the reveal (the commit leaves the table), and nothing changes.
    chain.register(NETUID, &addr(9), &addr(9)).await.unwrap();
    assert!(chain.pending_commits(NETUID).await.unwrap().is_empty());
    assert_eq!(chain.weights_of(NETUID, 0).await.unwrap(), pairs);

    // The confirmation the validator logs sees the weights applied.
    let arc: std::sync::Arc<dyn Chain> = std::sync::Arc::new(chain.clone());
    let outcome = pretrain_chain::confirm_reveal(
        arc,
        NETUID,
        addr(0),
        pairs,
        reveal_block,
        0,
        Duration::from_millis(10),
    )
    .await
    .unwrap();
    assert_eq!(outcome, pretrain_chain::RevealOutcome::Applied);
    let h = chain.hyperparameters(NETUID).await.unwrap();
    assert!(h.commit_reveal_weights_enabled);
    assert_eq!((h.tempo, h.reveal_period_epochs), (TEMPO, 1));
    assert_eq!(h.commit_reveal_version, Some(4));
}

#[tokio::test]
async fn with_commit_reveal_off_weights_count_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = subnet(tmp.path(), false, 0).await;
    let (uids, values) = emitted();
    let sub = chain
        .submit_weights(&key(0), NETUID, &uids, &values, 2002)
        .await
        .unwrap();
    assert!(matches!(sub, WeightsSubmission::Set { .. }), "{sub:?}");
    assert!(chain.pending_commits(NETUID).await.unwrap().is_empty());
    assert_incentive_is(&incentives(&chain).await, &uids, &values);
}

#[tokio::test]
async fn a_stale_version_key_is_refused_before_anything_is_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = subnet(tmp.path(), true, 5000).await;
    let (uids, values) = emitted();
    let e = chain
        .submit_weights(&key(0), NETUID, &uids, &values, 2002)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ChainError::Rejected(m) if m.contains("version key 2002") && m.contains("5000")),
        "{e:?}"
    );
    assert!(chain.pending_commits(NETUID).await.unwrap().is_empty());
    // Unknown uids and a validator without a permit are refused the same way.
    let e = chain
        .submit_weights(&key(0), NETUID, &[1, 40], &[1, 1], 5000)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ChainError::Rejected(m) if m.contains("uid 40")),
        "{e:?}"
    );
    let e = chain
        .submit_weights(&key(1), NETUID, &[2], &[1], 5000)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ChainError::Rejected(m) if m.contains("permit")),
        "{e:?}"
    );
    assert!(chain.pending_commits(NETUID).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_commit_that_cannot_be_opened_is_dropped_at_its_reveal() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = subnet(tmp.path(), true, 0).await;
    let block = chain.current_block().await.unwrap();
    let cr = chain.commit_reveal(NETUID).await.unwrap();
    let round = cr.epoch_start(NETUID, cr.epoch_of(NETUID, block) + 1) + 3;
    chain
        .commit_timelocked_weights(&addr(0), NETUID, b"not a ciphertext", round, 4)
        .await
        .unwrap();
    // Version 3 is not this chain's.
    let e = chain
        .commit_timelocked_weights(&addr(0), NETUID, b"x", round, 3)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ChainError::Rejected(m) if m.contains("version 3")),
        "{e:?}"
    );
    wait_past(&chain, round).await;
    assert!(incentives(&chain).await.iter().all(|x| *x == 0.0));
    chain.register(NETUID, &addr(9), &addr(9)).await.unwrap();
    assert!(chain.pending_commits(NETUID).await.unwrap().is_empty());
    assert!(chain.weights_of(NETUID, 0).await.unwrap().is_empty());
}

/// Run as a child process by the test below: commits the weights, says so, and waits to be killed.
#[tokio::test]
#[ignore = "a child process of a_validator_killed_between_commit_and_reveal_still_gets_its_weights"]
async fn child_commits_and_waits_to_be_killed() {
    let dir = std::env::var(CHILD_ENV).expect("run by the parent test, which sets the directory");
    let chain = open(Path::new(&dir));
    let (uids, values) = emitted();
    let sub = chain
        .submit_weights(&key(0), NETUID, &uids, &values, 2002)
        .await
        .unwrap();
    let WeightsSubmission::Committed { reveal_block, .. } = sub else {
        panic!("expected a commit, got {sub:?}");
    };
    std::fs::write(Path::new(&dir).join("committed"), reveal_block.to_string()).unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test]
async fn a_validator_killed_between_commit_and_reveal_still_gets_its_weights() {
    let tmp = tempfile::tempdir().unwrap();
    // A long tempo, so the child has committed and been killed well before the reveal.
    let chain = open(tmp.path());
    chain
        .create_subnet(NETUID, SubnetParams::default())
        .await
        .unwrap();
    chain
        .set_commit_reveal(
            NETUID,
            CommitReveal {
                enabled: true,
                reveal_period_epochs: 1,
                tempo: 200,
                weights_version_key: 0,
            },
        )
        .await
        .unwrap();
    for i in 0..4u8 {
        chain.register(NETUID, &addr(i), &addr(i)).await.unwrap();
    }
    chain.add_stake(&addr(0), 100.0).await.unwrap();

    wait_epoch_start(&chain).await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_commits_and_waits_to_be_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, tmp.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = tmp.path().join("committed");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the child never committed");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child exited early"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reveal_block: u64 = std::fs::read_to_string(&marker).unwrap().parse().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        chain.current_block().await.unwrap() < reveal_block,
        "killed after the reveal; the test proves nothing"
    );
    assert!(incentives(&chain).await.iter().all(|x| *x == 0.0));
    wait_past(&chain, reveal_block).await;
    let (uids, values) = emitted();
    assert_incentive_is(&incentives(&chain).await, &uids, &values);
}

#[test]
fn the_beacon_key_opens_only_its_rounds() {
    // The public functions the chain uses, on a commit made with another key: refused.
    let e = reveal_payload(b"", &[0u8; 48]).unwrap_err();
    assert!(!e.to_string().is_empty());
    assert!(decrypt(&[1, 2, 3], &[0u8; 48]).is_err());
}

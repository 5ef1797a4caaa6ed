//! Permits, incentives and the block clock, on hand-made snapshots.

use std::collections::HashMap;

use super::metagraph::{compute, NeuronRow, Snapshot, WeightRow};
use super::*;

fn neuron(uid: u16, stake: f64, registered_block: u64) -> NeuronRow {
    NeuronRow {
        uid,
        hotkey: format!("h{uid}"),
        coldkey: "c".into(),
        registered_block,
        stake,
    }
}

#[test]
fn incentive_is_stake_weighted_and_normalised() {
    let mut weights = HashMap::new();
    // uid 0 (stake 3) puts all on uid 2; uid 1 (stake 1) splits 1:1 between 2 and 3.
    weights.insert(
        0,
        WeightRow {
            block: 10,
            pairs: vec![(2, 65535)],
        },
    );
    weights.insert(
        1,
        WeightRow {
            block: 10,
            pairs: vec![(2, 100), (3, 100), (1, 65535)],
        },
    );
    let snap = Snapshot {
        netuid: 1,
        params: SubnetParams::default(),
        neurons: vec![
            neuron(0, 3.0, 0),
            neuron(1, 1.0, 0),
            neuron(2, 0.0, 0),
            neuron(3, 0.0, 0),
        ],
        weights,
    };
    let g = compute(&snap, 11);
    let inc: Vec<f64> = g.neurons.iter().map(|n| n.incentive).collect();
    // (3*1 + 1*0.5)/4 = 0.875 and (1*0.5)/4 = 0.125; self-weight of uid 1 ignored.
    assert!((inc[2] - 0.875).abs() < 1e-12, "{inc:?}");
    assert!((inc[3] - 0.125).abs() < 1e-12, "{inc:?}");
    assert_eq!(inc[0], 0.0);
    assert_eq!(inc[1], 0.0);
    let permits: Vec<bool> = g.neurons.iter().map(|n| n.validator_permit).collect();
    assert_eq!(permits, vec![true, true, false, false]);
}

#[test]
fn weights_set_before_registration_do_not_count() {
    let mut weights = HashMap::new();
    weights.insert(
        0,
        WeightRow {
            block: 5,
            pairs: vec![(1, 1), (2, 1)],
        },
    );
    let snap = Snapshot {
        netuid: 1,
        params: SubnetParams::default(),
        neurons: vec![neuron(0, 1.0, 0), neuron(1, 0.0, 0), neuron(2, 0.0, 7)],
        weights,
    };
    let g = compute(&snap, 8);
    assert_eq!(g.neurons[1].incentive, 1.0);
    assert_eq!(g.neurons[2].incentive, 0.0);
}

#[test]
fn permits_go_to_the_top_stakes_then_lowest_uid() {
    let snap = Snapshot {
        netuid: 1,
        params: SubnetParams {
            max_validators: 2,
            ..SubnetParams::default()
        },
        neurons: vec![
            neuron(0, 1.0, 0),
            neuron(1, 5.0, 0),
            neuron(2, 1.0, 0),
            neuron(3, 0.0, 0),
        ],
        weights: HashMap::new(),
    };
    let g = compute(&snap, 1);
    let permits: Vec<bool> = g.neurons.iter().map(|n| n.validator_permit).collect();
    assert_eq!(permits, vec![true, true, false, false]);
    assert!(g.neurons.iter().all(|n| n.incentive == 0.0));
}

#[test]
fn blocks_follow_wall_time() {
    let c = Clock::new(1000.0, 12.0);
    assert_eq!(c.block_at(999.0), 0);
    assert_eq!(c.block_at(1011.9), 0);
    assert_eq!(c.block_at(1012.0), 1);
    assert_eq!(c.block_at(1000.0 + 12.0 * 100.0 + 5.0), 100);
}

#[test]
fn a_clock_stepping_back_holds_the_block_instead_of_moving_it_back() {
    let c = Clock::new(1000.0, 12.0);
    assert_eq!(c.monotonic(c.block_at(1000.0 + 12.0 * 50.0)), 50);
    // The wall clock went back 10 blocks: the chain stays at 50 ...
    assert_eq!(c.monotonic(c.block_at(1000.0 + 12.0 * 40.0)), 50);
    // ... for every clone handed to a call, and moves on once time catches up.
    assert_eq!(c.clone().monotonic(45), 50);
    assert_eq!(c.monotonic(51), 51);
}

/// An empty chain file is not turned into a new chain by a
/// command that only opens one; a clock behind the chain's own records
/// (genesis_time edited forward) is refused rather than moving blocks
/// back; the chain keeps one identity across opens.
#[tokio::test]
async fn empty_files_and_clocks_going_back_are_refused_and_the_id_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        block_time: Some(0.01),
        ..EmbeddedOptions::default()
    };
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join(DB_FILE), b"").unwrap();
    let err = EmbeddedChain::open_existing_async(&empty, &options)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is empty, not a chain"), "{err}");
    assert_eq!(std::fs::metadata(empty.join(DB_FILE)).unwrap().len(), 0);

    let dir = tmp.path().join("chain");
    let chain = EmbeddedChain::open_async(&dir, &options).await.unwrap();
    let id = crate::Chain::chain_id(&chain).await.unwrap().unwrap();
    assert!(id.starts_with("embedded:"), "{id}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    chain.register(9, ALICE_SS58, ALICE_SS58).await.unwrap();
    let genesis = chain.genesis_time();
    drop(chain);
    let again = EmbeddedChain::open_existing_async(&dir, &options)
        .await
        .unwrap();
    assert_eq!(crate::Chain::chain_id(&again).await.unwrap(), Some(id));
    drop(again);
    // Block 0 an hour later: every record is now in the future.
    let conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    conn.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'genesis_time'",
        rusqlite::params![(genesis + 3600.0).to_string()],
    )
    .unwrap();
    drop(conn);
    let err = EmbeddedChain::open_existing_async(&dir, &options)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("blocks must not go backwards"), "{err}");
}

const ALICE_SS58: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

/// A link planted at the chain's lock file is refused by name; its target is
/// never opened, created or written.
#[cfg(unix)]
#[tokio::test]
async fn a_planted_lock_link_is_refused_and_its_target_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        block_time: Some(0.01),
        ..EmbeddedOptions::default()
    };
    let dir = tmp.path().join("chain");
    std::fs::create_dir_all(&dir).unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join(LOCK_FILE)).unwrap();
    let err = EmbeddedChain::open_async(&dir, &options)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("symbolic link") && err.contains("remove it"),
        "{err}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

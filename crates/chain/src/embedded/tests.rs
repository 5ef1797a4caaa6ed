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
    let c = Clock {
        genesis_time: 1000.0,
        block_time: 12.0,
    };
    assert_eq!(c.block_at(999.0), 0);
    assert_eq!(c.block_at(1011.9), 0);
    assert_eq!(c.block_at(1012.0), 1);
    assert_eq!(c.block_at(1000.0 + 12.0 * 100.0 + 5.0), 100);
}

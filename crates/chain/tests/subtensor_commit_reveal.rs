//! The v4 commit call against real runtime metadata: its SCALE call data
//! under `subtensor_devnet_metadata_v16.scale` is the bytes written out from
//! subtensor's sources (pallet 7, call index 113, `netuid: u16`, `commit:
//! BoundedVec<u8>`, `reveal_round: u64`, `commit_reveal_version: u16`); the
//! spec-218 runtime has no such call; the epoch shape and block time are
//! read from the metadata.

#![allow(clippy::unwrap_used)]

use pretrain_chain::subtensor::{
    block_time, commit_timelocked_weights_call, encode_call_data, epoch_shape, has_call,
    load_metadata, EpochShape,
};

fn metadata(name: &str) -> subxt::Metadata {
    let path = format!("{}/../../testdata/chain/{name}", env!("CARGO_MANIFEST_DIR"));
    load_metadata(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn commit_timelocked_weights_encodes_as_the_runtime_declares() {
    let md = metadata("subtensor_devnet_metadata_v16.scale");
    let call = commit_timelocked_weights_call(2, &[1, 2, 3], 1000, 4);
    let bytes = encode_call_data(&md, &call).unwrap();
    // 07 pallet, 71 call 113, 0200 netuid, 0c compact(3) 010203, e803.. u64 1000, 0400 u16 4.
    assert_eq!(
        hex::encode(bytes),
        concat!("07710200", "0c010203", "e803000000000000", "0400")
    );
}

#[test]
fn the_runtimes_calls_and_epoch_shapes() {
    let devnet = metadata("subtensor_devnet_metadata_v16.scale");
    let spec218 = metadata("subtensor_spec218_metadata_v15.scale");
    assert!(has_call(
        &devnet,
        "SubtensorModule",
        "commit_timelocked_weights"
    ));
    assert!(!has_call(
        &spec218,
        "SubtensorModule",
        "commit_timelocked_weights"
    ));
    assert!(has_call(&spec218, "SubtensorModule", "set_weights"));
    // Neither runtime has SubnetEpochIndex / LastEpochBlock: both schedule epochs the old way.
    assert_eq!(epoch_shape(&devnet), EpochShape::Legacy);
    assert_eq!(epoch_shape(&spec218), EpochShape::Legacy);
    // Block time is twice Timestamp.MinimumPeriod (Aura's slot). The devnet metadata comes
    // from subtensor's contract tests, built with `fast-blocks` (250 ms, the SDK's fast
    // localnet block time); raonet's spec 218 runs 3 s slots (chopsticks only takes
    // timestamps on whole 3000 ms slots for it: testdata/chain/README.md).
    assert_eq!(block_time(&devnet), 0.25);
    assert_eq!(block_time(&spec218), 3.0);
}

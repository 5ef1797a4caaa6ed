//! The `subtensor` backend: a real subtensor node over websocket, through
//! `subxt`'s dynamic API. Calls and storage are looked up by name in the
//! metadata the node hands us (per runtime version), so a runtime upgrade
//! that keeps names and shapes does not break us; nothing is code-generated.
//!
//! The encoding and decoding helpers (`*_call`, [`encode_call_data`],
//! [`storage_key`], [`decode_commitment_of`]) are plain functions of a
//! [`Metadata`](subxt::Metadata): the live client and the golden-vector tests use the same ones.
//!
//! Split by concern: `client` (connection, reconnection, the `Chain`
//! impl), `scale` (storage keys and SCALE decoding), `extrinsics` (calls
//! and signing), `errors` (what a runtime refusal means), `storage`
//! (storage reads), `commitments` and `metagraph`.

use subxt::client::OnlineClientAtBlock;
use subxt::ext::scale_value::Composite;
use subxt::rpcs::RpcClient;
use subxt::transactions::DynamicPayload;
use subxt::{OnlineClient, SubstrateConfig};

mod client;
mod commitments;
mod errors;
mod extrinsics;
mod metagraph;
mod scale;
mod storage;
#[cfg(test)]
mod tests;
mod weights;

pub use client::SubtensorChain;
pub use commitments::{commitment_of_key, decode_commitment_of, RawCommitment};
pub use errors::{classify_module_error, classify_pool_message, ErrorClass};
pub use extrinsics::{encode_call_data, set_commitment_call, set_weights_call};
pub use scale::{
    account_of, decode_storage_value, has_storage, keys_key, load_metadata, ss58_of, storage_key,
};
pub use weights::{
    block_time, commit_timelocked_weights_call, epoch_shape, has_call, EpochShape,
    DEFAULT_BLOCK_TIME,
};

/// Endpoint of bittensor's main network.
pub const FINNEY_ENDPOINT: &str = "wss://entrypoint-finney.opentensor.ai:443";
/// Endpoint of bittensor's test network.
pub const TEST_ENDPOINT: &str = "wss://test.finney.opentensor.ai:443";
/// Endpoint of a subtensor node on this machine.
pub const LOCAL_ENDPOINT: &str = "ws://127.0.0.1:9944";
/// Timeout of every chain call unless told otherwise (the core constant).
pub use pretrain_core::constants::CHAIN_CALL_TIMEOUT as DEFAULT_TIMEOUT;
/// Most bytes a `Raw` commitment field can hold (the core constant).
pub use pretrain_core::constants::MAX_COMMITMENT_BYTES;

const SUBTENSOR: &str = "SubtensorModule";
const COMMITMENTS: &str = "Commitments";

/// The node a `--subtensor.network` name stands for (bittensor's names).
pub fn endpoint_for(network: &str) -> Option<&'static str> {
    match network {
        "finney" => Some(FINNEY_ENDPOINT),
        "test" => Some(TEST_ENDPOINT),
        "local" => Some(LOCAL_ENDPOINT),
        _ => None,
    }
}

/// The config we talk to subtensor with: substrate defaults (AccountId32,
/// MultiSignature, BlakeTwo256); subtensor's own extensions encode to nothing.
pub type SubtensorConfig = SubstrateConfig;

/// A call built dynamically from pallet, call and named fields.
pub type CallPayload = DynamicPayload<Composite<()>>;

// The two connection types every part uses (here, below `client`, so that the
// storage, call and metagraph parts need nothing from the client on top of them).
/// A client pinned to one block.
pub(super) type AtBlock = OnlineClientAtBlock<SubtensorConfig>;

/// One websocket connection: subxt's client and the raw RPC client under it.
#[derive(Clone)]
pub(super) struct Conn {
    pub(super) client: OnlineClient<SubtensorConfig>,
    pub(super) rpc: RpcClient,
}

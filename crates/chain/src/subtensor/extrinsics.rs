//! Calls (built dynamically from the metadata's names), their SCALE call
//! data, and signing and submitting them.

use subxt::config::SubstrateExtrinsicParamsBuilder;
use subxt::dynamic::Value;
use subxt::ext::frame_decode;
use subxt::ext::scale_value::Composite;
use subxt::rpcs::rpc_params;
use subxt::transactions::TransactionStatus;
use subxt::Metadata;
use subxt_signer::sr25519::Keypair;
use tracing::{debug, info};

use super::errors::TxContext;
use super::scale::account_of;
use super::{AtBlock, CallPayload, Conn, COMMITMENTS, MAX_COMMITMENT_BYTES, SUBTENSOR};
use crate::{ChainError, Hotkey};

/// `Commitments.set_commitment(netuid, CommitmentInfo { fields: [Raw<N>(data)] })`.
pub fn set_commitment_call(netuid: u16, data: &[u8]) -> Result<CallPayload, ChainError> {
    if data.len() > MAX_COMMITMENT_BYTES {
        return Err(ChainError::Rejected(format!(
            "commitment is {} bytes; the chain takes at most {MAX_COMMITMENT_BYTES}",
            data.len()
        )));
    }
    let raw = Value::unnamed_variant(format!("Raw{}", data.len()), [Value::from_bytes(data)]);
    let info = Value::named_composite([("fields", Value::unnamed_composite([raw]))]);
    Ok(subxt::dynamic::tx(
        COMMITMENTS,
        "set_commitment",
        Composite::named([("netuid", Value::u128(netuid.into())), ("info", info)]),
    ))
}

/// `SubtensorModule.set_weights(netuid, dests, weights, version_key)`.
pub fn set_weights_call(
    netuid: u16,
    uids: &[u16],
    weights: &[u16],
    version_key: u64,
) -> CallPayload {
    let list = |xs: &[u16]| Value::unnamed_composite(xs.iter().map(|&x| Value::u128(x.into())));
    subxt::dynamic::tx(
        SUBTENSOR,
        "set_weights",
        Composite::named([
            ("netuid", Value::u128(netuid.into())),
            ("dests", list(uids)),
            ("weights", list(weights)),
            ("version_key", Value::u128(version_key.into())),
        ]),
    )
}

/// SCALE call data (pallet index, call index, arguments) of `call` under `metadata`.
pub fn encode_call_data(metadata: &Metadata, call: &CallPayload) -> Result<Vec<u8>, ChainError> {
    frame_decode::extrinsics::encode_call_data(
        call.pallet_name(),
        call.call_name(),
        call.call_data(),
        metadata,
        metadata.types(),
    )
    .map_err(|e| {
        ChainError::BadResponse(format!(
            "cannot encode {}.{} for this runtime: {e}",
            call.pallet_name(),
            call.call_name()
        ))
    })
}

pub(super) fn keypair_of(hotkey: &Hotkey) -> Result<Keypair, ChainError> {
    let seed = hotkey.secret_seed().ok_or_else(|| {
        ChainError::Rejected(format!(
            "hotkey {} has no secret key; cannot sign",
            hotkey.ss58
        ))
    })?;
    let pair = Keypair::from_secret_key(*seed).map_err(|e| {
        ChainError::Rejected(format!("bad secret key for hotkey {}: {e}", hotkey.ss58))
    })?;
    if pair.public_key().0 != account_of(&hotkey.ss58)? {
        return Err(ChainError::Rejected(format!(
            "the secret key does not belong to hotkey {}",
            hotkey.ss58
        )));
    }
    Ok(pair)
}

/// Signs and submits `call`, waits until it is in a block and succeeded; returns that block.
pub(super) async fn submit(
    conn: &Conn,
    at: &AtBlock,
    call: &CallPayload,
    signer: &Keypair,
    ctx: TxContext<'_>,
) -> Result<u64, ChainError> {
    // `at` is the finalized block; a transaction of ours in a newer best block (a
    // retry right after a failed commit) would make its nonce stale. The node's
    // pool-aware nonce avoids "Transaction is outdated".
    let mut params = SubstrateExtrinsicParamsBuilder::new();
    match conn
        .rpc
        .request::<u64>("system_accountNextIndex", rpc_params![ctx.hotkey])
        .await
    {
        Ok(nonce) => params = params.nonce(nonce),
        Err(e) => {
            debug!(error = %e, "system_accountNextIndex unavailable; nonce from the finalized block")
        }
    }
    let mut progress = at
        .transactions()
        .sign_and_submit_then_watch(call, signer, params.build())
        .await
        .map_err(|e| ctx.extrinsic(e))?;
    while let Some(status) = progress.next().await {
        match status.map_err(|e| ctx.progress(e))? {
            TransactionStatus::InBestBlock(in_block)
            | TransactionStatus::InFinalizedBlock(in_block) => {
                in_block
                    .wait_for_success()
                    .await
                    .map_err(|e| ctx.events(e))?;
                let block = in_block
                    .at()
                    .await
                    .map_err(|e| ChainError::Network(format!("{}: {e}", ctx.what)))?
                    .block_number();
                info!(what = ctx.what, block, "transaction included");
                return Ok(block);
            }
            TransactionStatus::Invalid { message }
            | TransactionStatus::Error { message }
            | TransactionStatus::Dropped { message } => return Err(ctx.pool(&message)),
            _ => {}
        }
    }
    Err(ChainError::Network(format!(
        "{}: the node stopped reporting the transaction",
        ctx.what
    )))
}

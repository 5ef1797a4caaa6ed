//! The `subtensor` backend: a real subtensor node over websocket, through
//! `subxt`'s dynamic API. Calls and storage are looked up by name in the
//! metadata the node hands us (per runtime version), so a runtime upgrade
//! that keeps names and shapes does not break us; nothing is code-generated.
//!
//! The encoding and decoding helpers (`*_call`, [`encode_call_data`],
//! [`storage_key`], [`decode_commitment_of`]) are plain functions of a
//! [`Metadata`]: the live client and the golden-vector tests use the same ones.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use subxt::client::OnlineClientAtBlock;
use subxt::config::SubstrateExtrinsicParamsBuilder;
use subxt::dynamic::{At, Value};
use subxt::error::{
    DispatchError, ExtrinsicError, StorageError, TransactionEventsError, TransactionProgressError,
    TransactionStatusError,
};
use subxt::ext::frame_decode;
use subxt::ext::frame_decode::storage::{IntoEncodableValues, StorageTypeInfo};
use subxt::ext::futures::{stream, StreamExt, TryStreamExt};
use subxt::ext::scale_value::{Composite, ValueDef};
use subxt::rpcs::{rpc_params, RpcClient};
use subxt::transactions::{DynamicPayload, TransactionStatus};
use subxt::utils::AccountId32;
use subxt::{Metadata, OnlineClient, SubstrateConfig};
use subxt_signer::sr25519::Keypair;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::{Chain, ChainError, Commitment, Hotkey, Metagraph, Neuron};

/// Endpoint of bittensor's main network.
pub const FINNEY_ENDPOINT: &str = "wss://entrypoint-finney.opentensor.ai:443";
/// Endpoint of bittensor's test network.
pub const TEST_ENDPOINT: &str = "wss://test.finney.opentensor.ai:443";
/// Endpoint of a subtensor node on this machine.
pub const LOCAL_ENDPOINT: &str = "ws://127.0.0.1:9944";
/// Timeout of every chain call unless told otherwise (SPEC: 60 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes a `Raw` commitment field can hold (`Data::Raw128`).
pub const MAX_COMMITMENT_BYTES: usize = 128;

const SUBTENSOR: &str = "SubtensorModule";
const COMMITMENTS: &str = "Commitments";
/// RAO per TAO.
const RAO_PER_TAO: f64 = 1e9;
/// Concurrent storage reads while building a metagraph.
const READ_CONCURRENCY: usize = 16;

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

/// Decodes runtime metadata (`RuntimeMetadataPrefixed`, V14-V16, as returned by
/// `state_getMetadata` / `Metadata_metadata_at_version`).
pub fn load_metadata(bytes: &[u8]) -> Result<Metadata, ChainError> {
    Metadata::decode_from(bytes).map_err(|e| ChainError::BadResponse(format!("metadata: {e}")))
}

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

/// Whether the runtime has storage entry `pallet.entry`.
pub fn has_storage(metadata: &Metadata, pallet: &str, entry: &str) -> bool {
    metadata
        .pallet_by_name(pallet)
        .and_then(|p| p.storage())
        .and_then(|s| s.entry_by_name(entry))
        .is_some()
}

/// Full storage key of `pallet.entry(keys...)` (hashers from the metadata).
pub fn storage_key<K: IntoEncodableValues>(
    metadata: &Metadata,
    pallet: &str,
    entry: &str,
    keys: K,
) -> Result<Vec<u8>, ChainError> {
    frame_decode::storage::encode_storage_key(pallet, entry, keys, metadata, metadata.types())
        .map_err(|e| ChainError::BadResponse(format!("cannot encode key of {pallet}.{entry}: {e}")))
}

/// Key of `Commitments.CommitmentOf(netuid, account)`.
pub fn commitment_of_key(
    metadata: &Metadata,
    netuid: u16,
    account: &[u8; 32],
) -> Result<Vec<u8>, ChainError> {
    storage_key(metadata, COMMITMENTS, "CommitmentOf", (netuid, *account))
}

/// Key of `SubtensorModule.Keys(netuid, uid)` (the hotkey at a uid).
pub fn keys_key(metadata: &Metadata, netuid: u16, uid: u16) -> Result<Vec<u8>, ChainError> {
    storage_key(metadata, SUBTENSOR, "Keys", (netuid, uid))
}

/// Decodes a raw value of `pallet.entry` into a dynamic value.
pub fn decode_storage_value(
    metadata: &Metadata,
    pallet: &str,
    entry: &str,
    bytes: &[u8],
) -> Result<Value<u32>, ChainError> {
    let info = metadata
        .storage_info(pallet, entry)
        .map_err(|e| ChainError::BadResponse(format!("{pallet}.{entry}: {e}")))?;
    let mut cursor = bytes;
    let value = subxt::ext::scale_value::scale::decode_as_type(
        &mut cursor,
        info.value_id,
        metadata.types(),
    )
    .map_err(|e| ChainError::BadResponse(format!("cannot decode {pallet}.{entry}: {e}")))?;
    if !cursor.is_empty() {
        return Err(ChainError::BadResponse(format!(
            "{pallet}.{entry}: {} trailing bytes after the value",
            cursor.len()
        )));
    }
    Ok(value)
}

/// A decoded `Commitments.CommitmentOf` value (`Registration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCommitment {
    /// Deposit held for the commitment (RAO).
    pub deposit: u128,
    /// Block the commitment was made at.
    pub block: u64,
    /// Bytes of the first `Raw` field (empty if there is none).
    pub data: Vec<u8>,
}

/// Decodes a raw `Commitments.CommitmentOf` value.
pub fn decode_commitment_of(
    metadata: &Metadata,
    bytes: &[u8],
) -> Result<RawCommitment, ChainError> {
    let value = decode_storage_value(metadata, COMMITMENTS, "CommitmentOf", bytes)?;
    let bad =
        |what: &str| ChainError::BadResponse(format!("Commitments.CommitmentOf: {what} ({value})"));
    let block = value
        .at("block")
        .and_then(as_uint)
        .ok_or_else(|| bad("no block"))?;
    let deposit = value.at("deposit").and_then(as_uint).unwrap_or(0);
    let fields = value
        .at("info")
        .and_then(|i| i.at("fields"))
        .and_then(as_list)
        .ok_or_else(|| bad("no info.fields"))?;
    // bittensor reads the first field; we take the first `Raw` one, which is the same
    // for everything the subnet writes and skips exotic leading fields.
    let data = fields
        .iter()
        .find_map(|field| match &field.value {
            ValueDef::Variant(v) if v.name.starts_with("Raw") => v
                .values
                .values()
                .next()
                .map(as_bytes)
                .unwrap_or(Some(Vec::new())),
            _ => None,
        })
        .unwrap_or_default();
    Ok(RawCommitment {
        deposit,
        block: u64::try_from(block).map_err(|_| bad("block out of range"))?,
        data,
    })
}

/// An unsigned integer, looking through newtype wrappers (`NetUid(u16)`, `AlphaCurrency(u64)`, ...).
fn as_uint<T>(v: &Value<T>) -> Option<u128> {
    match &v.value {
        ValueDef::Primitive(p) => p.as_u128(),
        ValueDef::Composite(c) if c.len() == 1 => c.values().next().and_then(as_uint),
        _ => None,
    }
}

/// A bool, looking through newtype wrappers.
fn as_bool<T>(v: &Value<T>) -> Option<bool> {
    match &v.value {
        ValueDef::Primitive(p) => p.as_bool(),
        ValueDef::Composite(c) if c.len() == 1 => c.values().next().and_then(as_bool),
        _ => None,
    }
}

/// The elements of a sequence, looking through `BoundedVec`-style wrappers.
fn as_list<T>(v: &Value<T>) -> Option<Vec<&Value<T>>> {
    match &v.value {
        ValueDef::Composite(c) => {
            if c.len() == 1 {
                if let Some(inner) = c.values().next() {
                    if matches!(inner.value, ValueDef::Composite(_)) {
                        return as_list(inner);
                    }
                }
            }
            Some(c.values().collect())
        }
        _ => None,
    }
}

/// Bytes of a `[u8; N]` / `Vec<u8>` value.
fn as_bytes<T>(v: &Value<T>) -> Option<Vec<u8>> {
    as_list(v)?
        .into_iter()
        .map(|b| as_uint(b).and_then(|b| u8::try_from(b).ok()))
        .collect()
}

/// SS58 (prefix 42) of a 32-byte account.
pub fn ss58_of(account: &[u8; 32]) -> String {
    AccountId32(*account).to_string()
}

/// The 32-byte account of an SS58 address.
pub fn account_of(ss58: &str) -> Result<[u8; 32], ChainError> {
    AccountId32::from_str(ss58)
        .map(|a| a.0)
        .map_err(|e| ChainError::Rejected(format!("invalid SS58 address {ss58:?}: {e}")))
}

fn account_from_bytes(bytes: &[u8], what: &str) -> Result<[u8; 32], ChainError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        ChainError::BadResponse(format!(
            "{what}: expected a 32-byte account, got {} bytes",
            bytes.len()
        ))
    })
}

/// What a runtime error means to callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The hotkey is not registered on the subnet (or not allowed to commit).
    NotRegistered,
    /// A rate limit; try again later.
    RateLimited,
    /// The subnet does not exist.
    NoSuchSubnet,
    /// Anything else.
    Other,
}

/// Classifies a pallet error by its name (names are stable across runtimes, indices are not).
pub fn classify_module_error(error: &str) -> ErrorClass {
    match error {
        "HotKeyNotRegisteredInSubNet"
        | "HotKeyNotRegisteredInNetwork"
        | "HotKeyAccountNotExists"
        | "NotRegistered"
        | "AccountNotAllowedCommit" => ErrorClass::NotRegistered,
        "SubNetworkDoesNotExist" | "SubnetNotExists" | "NetworkDoesNotExist" => {
            ErrorClass::NoSuchSubnet
        }
        _ if error.contains("RateLimit")
            || error.contains("TooFast")
            || error.contains("TooSoon") =>
        {
            ErrorClass::RateLimited
        }
        _ => ErrorClass::Other,
    }
}

/// Classifies a transaction-pool rejection (`Invalid Transaction: Custom error: N`, ...).
/// Codes are subtensor's `CustomTransactionError` (stable since the 2025 runtimes).
pub fn classify_pool_message(message: &str) -> ErrorClass {
    let lower = message.to_ascii_lowercase();
    if lower.contains("rate") && lower.contains("limit") {
        return ErrorClass::RateLimited;
    }
    if let Some(code) = lower
        .split("custom error:")
        .nth(1)
        .and_then(|rest| rest.trim().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse::<u16>().ok())
    {
        return match code {
            6 | 12 => ErrorClass::RateLimited,
            3 => ErrorClass::NoSuchSubnet,
            4 | 10 => ErrorClass::NotRegistered,
            _ => ErrorClass::Other,
        };
    }
    ErrorClass::Other
}

/// Who a transaction was for, to build typed errors.
#[derive(Clone, Copy)]
struct TxContext<'a> {
    what: &'a str,
    hotkey: &'a str,
    netuid: u16,
}

impl TxContext<'_> {
    fn error(&self, class: ErrorClass, detail: String) -> ChainError {
        match class {
            ErrorClass::NotRegistered => ChainError::NotRegistered {
                hotkey: self.hotkey.to_string(),
                netuid: self.netuid,
            },
            ErrorClass::RateLimited => ChainError::RateLimited(format!("{}: {detail}", self.what)),
            ErrorClass::NoSuchSubnet => ChainError::NoSuchSubnet(self.netuid),
            ErrorClass::Other => ChainError::Rejected(format!("{} failed: {detail}", self.what)),
        }
    }

    fn dispatch(&self, e: &DispatchError) -> ChainError {
        if let DispatchError::Module(m) = e {
            if let Ok(details) = m.details() {
                let (pallet, name) = (details.pallet.name(), details.variant.name.as_str());
                return self.error(classify_module_error(name), format!("{pallet}::{name}"));
            }
        }
        self.error(ErrorClass::Other, e.to_string())
    }

    fn pool(&self, message: &str) -> ChainError {
        self.error(classify_pool_message(message), message.to_string())
    }

    fn extrinsic(&self, e: ExtrinsicError) -> ChainError {
        let text = e.to_string();
        match e {
            ExtrinsicError::EncodeError(_)
            | ExtrinsicError::PalletNameNotFound(_)
            | ExtrinsicError::CallNameNotFound { .. } => ChainError::BadResponse(format!(
                "{}: this runtime does not take our call: {text}",
                self.what
            )),
            _ => match classify_pool_message(&text) {
                ErrorClass::Other if looks_like_network(&text) => ChainError::Network(text),
                class => self.error(class, text),
            },
        }
    }

    fn progress(&self, e: TransactionProgressError) -> ChainError {
        match e {
            TransactionProgressError::TransactionStatusError(
                TransactionStatusError::Invalid(m)
                | TransactionStatusError::Error(m)
                | TransactionStatusError::Dropped(m),
            ) => self.pool(&m),
            other => ChainError::Network(format!("{}: {other}", self.what)),
        }
    }

    fn events(&self, e: TransactionEventsError) -> ChainError {
        match e {
            TransactionEventsError::ExtrinsicFailed(d) => self.dispatch(&d),
            TransactionEventsError::CannotDecodeDispatchError { .. }
            | TransactionEventsError::CannotDecodeEventInBlock { .. } => {
                ChainError::BadResponse(format!("{}: {e}", self.what))
            }
            other => ChainError::Network(format!("{}: {other}", self.what)),
        }
    }
}

fn looks_like_network(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "connection",
        "restart",
        "websocket",
        "transport",
        "closed",
        "i/o",
        "rpc",
    ]
    .iter()
    .any(|w| t.contains(w))
}

fn storage_err(what: &str, e: StorageError) -> ChainError {
    match e {
        StorageError::CannotFetchValue(_)
        | StorageError::CannotIterateValues(_)
        | StorageError::StreamFailure(_) => ChainError::Network(format!("{what}: {e}")),
        other => ChainError::BadResponse(format!("{what}: {other}")),
    }
}

type AtBlock = OnlineClientAtBlock<SubtensorConfig>;

/// One websocket connection: subxt's client and the raw RPC client under it.
#[derive(Clone)]
struct Conn {
    client: OnlineClient<SubtensorConfig>,
    rpc: RpcClient,
}

/// A subtensor node reached over websocket.
pub struct SubtensorChain {
    url: String,
    timeout: Duration,
    // Reconnected lazily after a network error: jsonrpsee's client does not
    // come back by itself once the socket drops, and validators run for days.
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for SubtensorChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubtensorChain")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SubtensorChain {
    /// Connects to `url` (`ws://` or `wss://`); every later call is bounded by `timeout`.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, ChainError> {
        let conn = Self::open(url, timeout).await?;
        Ok(Self {
            url: url.to_string(),
            timeout,
            conn: Mutex::new(Some(conn)),
        })
    }

    /// Connects to a named network (`finney`, `test`, `local`) or an explicit URL.
    pub async fn connect_network(
        network_or_url: &str,
        timeout: Duration,
    ) -> Result<Self, ChainError> {
        let url = endpoint_for(network_or_url).unwrap_or(network_or_url);
        Self::connect(url, timeout).await
    }

    /// The endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn open(url: &str, timeout: Duration) -> Result<Conn, ChainError> {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(ChainError::Network(format!(
                "chain endpoint {url:?} is not a ws:// or wss:// URL"
            )));
        }
        info!(url, "connecting to subtensor");
        // `insecure` only means plain ws:// is allowed: local nodes and chopsticks have no TLS.
        let connect = async {
            let rpc = RpcClient::from_insecure_url(url)
                .await
                .map_err(|e| ChainError::Network(format!("cannot connect to {url}: {e}")))?;
            let client = OnlineClient::<SubtensorConfig>::from_rpc_client(rpc.clone())
                .await
                .map_err(|e| ChainError::Network(format!("cannot connect to {url}: {e}")))?;
            Ok(Conn { client, rpc })
        };
        match tokio::time::timeout(timeout, connect).await {
            Err(_) => Err(ChainError::Timeout(timeout)),
            Ok(r) => r,
        }
    }

    async fn conn(&self) -> Result<Conn, ChainError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = Self::open(&self.url, self.timeout).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs `f` under the timeout; drops the connection after a network
    /// error or a timeout (a half-dead socket times out rather than
    /// erroring) so the next call reconnects.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, ChainError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, ChainError>>,
    {
        let result = match tokio::time::timeout(self.timeout, async {
            let conn = self.conn().await?;
            f(conn).await
        })
        .await
        {
            Err(_) => Err(ChainError::Timeout(self.timeout)),
            Ok(r) => r,
        };
        if let Err(e) = &result {
            if drops_connection(e) {
                warn!(url = %self.url, error = %e, "subtensor call failed; will reconnect on the next call");
                *self.conn.lock().await = None;
            }
        }
        result
    }
}

/// Whether a failed call leaves the connection suspect: after a network
/// error or a timeout the next call opens a fresh one.
fn drops_connection(e: &ChainError) -> bool {
    matches!(e, ChainError::Network(_) | ChainError::Timeout(_))
}

async fn at_latest(conn: &Conn) -> Result<AtBlock, ChainError> {
    conn.client
        .at_current_block()
        .await
        .map_err(|e| ChainError::Network(format!("cannot get the current block: {e}")))
}

/// Raw value at `key`, `None` if unset.
async fn fetch_raw(at: &AtBlock, key: Vec<u8>, what: &str) -> Result<Option<Vec<u8>>, ChainError> {
    match at.storage().fetch_raw(key).await {
        Ok(v) => Ok(Some(v)),
        Err(StorageError::NoValueFound) => Ok(None),
        Err(e) => Err(storage_err(what, e)),
    }
}

/// Value of `pallet.entry(keys)`, falling back to the entry's default; `None` if the
/// runtime has no such entry.
async fn fetch_value<K: IntoEncodableValues>(
    at: &AtBlock,
    pallet: &str,
    entry: &str,
    keys: K,
) -> Result<Option<Value<u32>>, ChainError> {
    let metadata = at.metadata();
    if !has_storage(&metadata, pallet, entry) {
        debug!(pallet, entry, "storage entry not in this runtime");
        return Ok(None);
    }
    let what = format!("{pallet}.{entry}");
    let key = storage_key(&metadata, pallet, entry, keys)?;
    let bytes = match fetch_raw(at, key, &what).await? {
        Some(b) => b,
        None => match metadata
            .storage_info(pallet, entry)
            .ok()
            .and_then(|i| i.default_value.map(|d| d.to_vec()))
        {
            Some(d) => d,
            None => return Ok(None),
        },
    };
    decode_storage_value(&metadata, pallet, entry, &bytes).map(Some)
}

async fn subnet_exists(at: &AtBlock, netuid: u16) -> Result<bool, ChainError> {
    match fetch_value(at, SUBTENSOR, "NetworksAdded", (netuid,)).await? {
        Some(v) => Ok(as_bool(&v).unwrap_or(false)),
        // Without the entry we cannot tell; let the other reads decide.
        None => Ok(true),
    }
}

/// Refuses a transaction from a hotkey with no uid on an existing subnet
/// before it is sent: the pallets would only give a vaguer error.
async fn ensure_registered(
    at: &AtBlock,
    account: &[u8; 32],
    ctx: &TxContext<'_>,
) -> Result<(), ChainError> {
    if !subnet_exists(at, ctx.netuid).await? {
        return Err(ChainError::NoSuchSubnet(ctx.netuid));
    }
    match uid_at(at, ctx.netuid, account).await? {
        Some(_) => Ok(()),
        None => Err(ctx.error(ErrorClass::NotRegistered, String::new())),
    }
}

async fn uid_at(at: &AtBlock, netuid: u16, account: &[u8; 32]) -> Result<Option<u16>, ChainError> {
    let metadata = at.metadata();
    let key = storage_key(&metadata, SUBTENSOR, "Uids", (netuid, *account))?;
    match fetch_raw(at, key, "SubtensorModule.Uids").await? {
        None => Ok(None),
        Some(bytes) => {
            let v = decode_storage_value(&metadata, SUBTENSOR, "Uids", &bytes)?;
            let uid = as_uint(&v).and_then(|u| u16::try_from(u).ok());
            uid.map(Some).ok_or_else(|| {
                ChainError::BadResponse(format!("SubtensorModule.Uids: not a u16: {v}"))
            })
        }
    }
}

/// Stake of a hotkey in RAO, from whatever this runtime keeps.
async fn stake_of(at: &AtBlock, netuid: u16, account: [u8; 32]) -> Result<u128, ChainError> {
    // dTAO runtimes: stake on the subnet, in alpha; older ones: the hotkey's total TAO.
    let found = match fetch_value(at, SUBTENSOR, "TotalHotkeyAlpha", (account, netuid)).await {
        Ok(Some(v)) => Ok(Some(v)),
        Ok(None) => fetch_value(at, SUBTENSOR, "TotalHotkeyStake", (account,)).await,
        Err(e) => Err(e),
    };
    match found {
        Ok(Some(v)) => Ok(as_uint(&v).unwrap_or(0)),
        Ok(None) => {
            debug!("no stake entry in this runtime; stake reads as 0");
            Ok(0)
        }
        Err(e @ ChainError::Network(_)) => Err(e),
        // A runtime that reshaped its stake entries must not cost us the metagraph.
        Err(e) => {
            debug!(error = %e, "cannot read stake; stake reads as 0");
            Ok(0)
        }
    }
}

fn uints(v: Option<Value<u32>>) -> Vec<u128> {
    v.as_ref()
        .and_then(as_list)
        .map(|l| l.into_iter().map(|x| as_uint(x).unwrap_or(0)).collect())
        .unwrap_or_default()
}

fn bools(v: Option<Value<u32>>) -> Vec<bool> {
    v.as_ref()
        .and_then(as_list)
        .map(|l| l.into_iter().map(|x| as_bool(x).unwrap_or(false)).collect())
        .unwrap_or_default()
}

async fn read_metagraph(at: &AtBlock, netuid: u16) -> Result<Metagraph, ChainError> {
    if !subnet_exists(at, netuid).await? {
        return Err(ChainError::NoSuchSubnet(netuid));
    }
    let metadata = at.metadata();
    let n = fetch_value(at, SUBTENSOR, "SubnetworkN", (netuid,))
        .await?
        .as_ref()
        .and_then(as_uint)
        .unwrap_or(0);

    // Every uid -> hotkey in one paged read rather than n point reads.
    let mut hotkeys: BTreeMap<u16, [u8; 32]> = BTreeMap::new();
    let keys_addr = subxt::dynamic::storage::<(u16, u16), Value>(SUBTENSOR, "Keys");
    let mut entries = at
        .storage()
        .iter(keys_addr, (netuid,))
        .await
        .map_err(|e| storage_err("SubtensorModule.Keys", e))?;
    while let Some(kv) = entries.next().await {
        let kv = kv.map_err(|e| storage_err("SubtensorModule.Keys", e))?;
        let key = kv.key_bytes();
        // Keys(Identity(netuid), Identity(uid)): the uid is the key's last two bytes.
        let uid = key
            .len()
            .checked_sub(2)
            .map(|i| u16::from_le_bytes([key[i], key[i + 1]]))
            .ok_or_else(|| ChainError::BadResponse("SubtensorModule.Keys: short key".into()))?;
        if u128::from(uid) >= n {
            continue;
        }
        hotkeys.insert(
            uid,
            account_from_bytes(kv.value().bytes(), "SubtensorModule.Keys")?,
        );
    }

    let incentive = uints(fetch_value(at, SUBTENSOR, "Incentive", (netuid,)).await?);
    let permits = bools(fetch_value(at, SUBTENSOR, "ValidatorPermit", (netuid,)).await?);

    let details: Vec<([u8; 32], u128)> = stream::iter(hotkeys.values().copied())
        .map(|hk| {
            let metadata = metadata.clone();
            async move {
                let owner_key = storage_key(&metadata, SUBTENSOR, "Owner", (hk,))?;
                let owner = match fetch_raw(at, owner_key, "SubtensorModule.Owner").await? {
                    Some(b) => account_from_bytes(&b, "SubtensorModule.Owner")?,
                    None => [0u8; 32],
                };
                let stake = stake_of(at, netuid, hk).await?;
                Ok::<_, ChainError>((owner, stake))
            }
        })
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;

    let neurons = hotkeys
        .iter()
        .zip(details)
        .map(|((&uid, hotkey), (coldkey, stake))| Neuron {
            uid,
            hotkey: ss58_of(hotkey),
            coldkey: ss58_of(&coldkey),
            stake: stake as f64 / RAO_PER_TAO,
            incentive: incentive
                .get(usize::from(uid))
                .map_or(0.0, |&i| i as f64 / f64::from(u16::MAX)),
            validator_permit: permits.get(usize::from(uid)).copied().unwrap_or(false),
        })
        .collect();
    Ok(Metagraph {
        netuid,
        block: at.block_number(),
        neurons,
    })
}

fn keypair_of(hotkey: &Hotkey) -> Result<Keypair, ChainError> {
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
async fn submit(
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

async fn commitment_at(
    at: &AtBlock,
    netuid: u16,
    hotkey: &str,
) -> Result<Option<Commitment>, ChainError> {
    let metadata = at.metadata();
    let key = commitment_of_key(&metadata, netuid, &account_of(hotkey)?)?;
    match fetch_raw(at, key, "Commitments.CommitmentOf").await? {
        None => Ok(None),
        Some(bytes) => {
            let raw = decode_commitment_of(&metadata, &bytes)?;
            Ok(Some(Commitment {
                hotkey: hotkey.to_string(),
                block: raw.block,
                data: raw.data,
            }))
        }
    }
}

async fn commitments_at(at: &AtBlock, netuid: u16) -> Result<Vec<Commitment>, ChainError> {
    let metadata = at.metadata();
    let addr = subxt::dynamic::storage::<(u16, [u8; 32]), Value>(COMMITMENTS, "CommitmentOf");
    let mut entries = at
        .storage()
        .iter(addr, (netuid,))
        .await
        .map_err(|e| storage_err("Commitments.CommitmentOf", e))?;
    let mut out = Vec::new();
    while let Some(kv) = entries.next().await {
        let kv = kv.map_err(|e| storage_err("Commitments.CommitmentOf", e))?;
        // Twox64Concat(AccountId32): the account is the key's last 32 bytes.
        let key = kv.key_bytes();
        let account = key
            .len()
            .checked_sub(32)
            .map(|i| &key[i..])
            .ok_or_else(|| ChainError::BadResponse("Commitments.CommitmentOf: short key".into()))
            .and_then(|b| account_from_bytes(b, "Commitments.CommitmentOf key"))?;
        match decode_commitment_of(&metadata, kv.value().bytes()) {
            Ok(raw) => out.push(Commitment {
                hotkey: ss58_of(&account),
                block: raw.block,
                data: raw.data,
            }),
            // One odd entry must not hide everybody else's commitments.
            Err(e) => {
                warn!(hotkey = %ss58_of(&account), error = %e, "skipping undecodable commitment")
            }
        }
    }
    out.sort_by(|a, b| a.hotkey.cmp(&b.hotkey));
    Ok(out)
}

#[async_trait]
impl Chain for SubtensorChain {
    async fn current_block(&self) -> Result<u64, ChainError> {
        self.call(|c| async move { Ok(at_latest(&c).await?.block_number()) })
            .await
    }

    async fn metagraph(&self, netuid: u16) -> Result<Metagraph, ChainError> {
        self.call(|c| async move { read_metagraph(&at_latest(&c).await?, netuid).await })
            .await
    }

    async fn uid_of(&self, netuid: u16, hotkey: &str) -> Result<Option<u16>, ChainError> {
        let account = account_of(hotkey)?;
        self.call(|c| async move { uid_at(&at_latest(&c).await?, netuid, &account).await })
            .await
    }

    async fn commit(&self, hotkey: &Hotkey, netuid: u16, data: &[u8]) -> Result<u64, ChainError> {
        let signer = keypair_of(hotkey)?;
        let call = set_commitment_call(netuid, data)?;
        let account = account_of(&hotkey.ss58)?;
        let ctx = TxContext {
            what: "set_commitment",
            hotkey: &hotkey.ss58,
            netuid,
        };
        self.call(|c| async move {
            let at = at_latest(&c).await?;
            ensure_registered(&at, &account, &ctx).await?;
            submit(&c, &at, &call, &signer, ctx).await
        })
        .await
    }

    async fn commitment(
        &self,
        netuid: u16,
        hotkey: &str,
    ) -> Result<Option<Commitment>, ChainError> {
        self.call(|c| async move { commitment_at(&at_latest(&c).await?, netuid, hotkey).await })
            .await
    }

    async fn commitments(&self, netuid: u16) -> Result<Vec<Commitment>, ChainError> {
        self.call(|c| async move { commitments_at(&at_latest(&c).await?, netuid).await })
            .await
    }

    async fn set_weights(
        &self,
        hotkey: &Hotkey,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
    ) -> Result<(), ChainError> {
        crate::check_weights(uids, values)?;
        let signer = keypair_of(hotkey)?;
        let call = set_weights_call(netuid, uids, values, version_key);
        let account = account_of(&hotkey.ss58)?;
        let ctx = TxContext {
            what: "set_weights",
            hotkey: &hotkey.ss58,
            netuid,
        };
        self.call(|c| async move {
            let at = at_latest(&c).await?;
            ensure_registered(&at, &account, &ctx).await?;
            let commit_reveal = fetch_value(&at, SUBTENSOR, "CommitRevealWeightsEnabled", (netuid,))
                .await?
                .as_ref()
                .and_then(as_bool)
                .unwrap_or(false);
            if commit_reveal {
                // The runtime refuses plain set_weights here (`CommitRevealEnabled`); its
                // commit/reveal calls (v3: drand-timelocked commits) are not implemented.
                return Err(ChainError::Rejected(format!(
                    "subnet {netuid} has commit-reveal weights enabled; plain set_weights is refused by the \
                     chain and this client does not implement commit/reveal (ask the subnet owner to disable \
                     CommitRevealWeightsEnabled, or use bittensor's Python SDK to set weights)"
                )));
            }
            submit(&c, &at, &call, &signer, ctx).await.map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V16: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/chain/subtensor_devnet_metadata_v16.scale"
    );
    const V15: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/chain/subtensor_spec218_metadata_v15.scale"
    );
    const VECTORS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/chain/vectors.json"
    );

    fn vectors() -> serde_json::Value {
        let text = std::fs::read_to_string(VECTORS).expect("vectors.json");
        serde_json::from_str(&text).expect("vectors.json parses")
    }

    fn metadatas() -> Vec<(&'static str, Metadata)> {
        [("v16 devnet", V16), ("v15 spec218", V15)]
            .into_iter()
            .map(|(name, path)| {
                let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
                (
                    name,
                    load_metadata(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")),
                )
            })
            .collect()
    }

    fn vector(section: &str, prefix: &str) -> Vec<u8> {
        let v = vectors();
        let map = v[section].as_object().expect("section");
        let (_, hex_str) = map
            .iter()
            .find(|(k, _)| k.starts_with(prefix))
            .expect("vector present");
        hex::decode(hex_str.as_str().expect("hex").trim_start_matches("0x")).expect("hex decodes")
    }

    fn hotkey_account() -> [u8; 32] {
        let v = vectors();
        let ss58 = v["hotkey_ss58"].as_str().expect("ss58");
        let account = account_of(ss58).expect("ss58 decodes");
        assert_eq!(
            hex::encode(account),
            v["hotkey_public_hex"].as_str().expect("hex")
        );
        assert_eq!(ss58_of(&account), ss58);
        account
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint_for("finney"),
            Some("wss://entrypoint-finney.opentensor.ai:443")
        );
        assert_eq!(
            endpoint_for("test"),
            Some("wss://test.finney.opentensor.ai:443")
        );
        assert_eq!(endpoint_for("local"), Some("ws://127.0.0.1:9944"));
        assert_eq!(endpoint_for("embedded"), None);
    }

    #[test]
    fn set_commitment_call_data_matches_vectors() {
        let want = vector("calls", "Commitments.set_commitment");
        let call = set_commitment_call(2, b"namespace:name:commit:hash").expect("call");
        for (name, md) in metadatas() {
            assert_eq!(
                encode_call_data(&md, &call).expect("encodes"),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn set_weights_call_data_matches_vectors() {
        let want = vector("calls", "SubtensorModule.set_weights");
        let call = set_weights_call(2, &[0, 1], &[65535, 32768], 0);
        for (name, md) in metadatas() {
            assert_eq!(
                encode_call_data(&md, &call).expect("encodes"),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn storage_keys_match_vectors() {
        let account = hotkey_account();
        let want_commitment = vector("storage_keys", "Commitments.CommitmentOf");
        let want_keys = vector("storage_keys", "SubtensorModule.Keys");
        for (name, md) in metadatas() {
            assert_eq!(
                commitment_of_key(&md, 2, &account).expect("key"),
                want_commitment,
                "{name}"
            );
            assert_eq!(keys_key(&md, 2, 0).expect("key"), want_keys, "{name}");
        }
    }

    #[test]
    fn commitment_value_decodes() {
        let v = vectors();
        let (_, case) = v["storage_values"]
            .as_object()
            .expect("storage_values")
            .iter()
            .next()
            .expect("one value");
        let raw =
            hex::decode(case["raw"].as_str().expect("raw").trim_start_matches("0x")).expect("hex");
        for (name, md) in metadatas() {
            let got = decode_commitment_of(&md, &raw).expect("decodes");
            assert_eq!(got.block, case["block"].as_u64().expect("block"), "{name}");
            assert_eq!(
                got.deposit,
                u128::from(case["deposit"].as_u64().expect("deposit")),
                "{name}"
            );
            assert_eq!(
                String::from_utf8(got.data).expect("utf8"),
                case["text"].as_str().expect("text"),
                "{name}"
            );
        }
    }

    #[test]
    fn commitment_round_trips_every_length() {
        // A value the way the pallet stores it: deposit u64, block u32, fields [Raw<N>].
        for (name, md) in metadatas() {
            for len in [0usize, 1, 31, 32, 33, 127, 128] {
                let data: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                let mut raw = Vec::new();
                raw.extend_from_slice(&7u64.to_le_bytes());
                raw.extend_from_slice(&99u32.to_le_bytes());
                raw.push(4); // compact(1) field
                raw.push(1 + len as u8); // Raw<len> is variant 1 + len
                raw.extend_from_slice(&data);
                let got = decode_commitment_of(&md, &raw)
                    .unwrap_or_else(|e| panic!("{name} len {len}: {e}"));
                assert_eq!(
                    (got.deposit, got.block, got.data),
                    (7, 99, data),
                    "{name} len {len}"
                );
            }
        }
    }

    #[test]
    fn signed_transactions_build_for_both_runtimes() {
        // The runtime's transaction extensions must all be ones subxt can fill (or empty
        // ones it skips), or signing fails on the live chain; check it offline for both.
        use subxt::config::substrate::{SpecVersionForRange, SubstrateConfigBuilder};
        use subxt::config::SubstrateExtrinsicParamsBuilder;
        use subxt::OfflineClient;
        let signer = Keypair::from_secret_key([7; 32]).expect("keypair");
        for (name, md) in metadatas() {
            let config = SubstrateConfigBuilder::new()
                .set_genesis_hash(Default::default())
                .set_spec_version_for_block_ranges([SpecVersionForRange {
                    block_range: 0..u64::MAX,
                    spec_version: 1,
                    transaction_version: 1,
                }])
                .set_metadata_for_spec_versions([(1, md.arc())])
                .build();
            let client = OfflineClient::new_with_config(config);
            let at = client.at_block(0u64).expect("offline client");
            let calls = [
                set_commitment_call(2, b"namespace:name:commit:hash").expect("call"),
                set_weights_call(2, &[0, 1], &[65535, 32768], 2002),
            ];
            for call in calls {
                let params = SubstrateExtrinsicParamsBuilder::new().build();
                let mut tx = at
                    .transactions()
                    .create_signable_offline(&call, params)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let signed = tx.sign(&signer).unwrap_or_else(|e| panic!("{name}: {e}"));
                let call_data = encode_call_data(&at.metadata(), &call).expect("call data");
                let bytes = signed.encoded();
                assert!(
                    bytes
                        .windows(call_data.len())
                        .any(|w| w == call_data.as_slice()),
                    "{name}: the signed extrinsic carries our call data"
                );
            }
        }
    }

    #[test]
    fn oversize_commitment_is_refused() {
        assert!(matches!(
            set_commitment_call(9, &[b'x'; 129]),
            Err(ChainError::Rejected(_))
        ));
        assert!(set_commitment_call(9, &[b'x'; 128]).is_ok());
    }

    #[test]
    fn metadata_has_what_we_read() {
        for (name, md) in metadatas() {
            for entry in [
                "Keys",
                "Uids",
                "Owner",
                "Incentive",
                "ValidatorPermit",
                "SubnetworkN",
                "NetworksAdded",
            ] {
                assert!(has_storage(&md, SUBTENSOR, entry), "{name}: {entry}");
            }
            assert!(has_storage(&md, COMMITMENTS, "CommitmentOf"), "{name}");
            let stake = has_storage(&md, SUBTENSOR, "TotalHotkeyAlpha")
                || has_storage(&md, SUBTENSOR, "TotalHotkeyStake");
            assert!(stake, "{name}: no stake entry");
            assert!(!has_storage(&md, SUBTENSOR, "NoSuchEntry"));
            // Every key the live client builds encodes under this runtime.
            let a = [1u8; 32];
            storage_key(&md, SUBTENSOR, "Uids", (2u16, a)).expect("Uids");
            storage_key(&md, SUBTENSOR, "Owner", (a,)).expect("Owner");
            for entry in [
                "Incentive",
                "ValidatorPermit",
                "SubnetworkN",
                "NetworksAdded",
                "CommitRevealWeightsEnabled",
            ] {
                storage_key(&md, SUBTENSOR, entry, (2u16,))
                    .unwrap_or_else(|e| panic!("{name}: {entry}: {e}"));
            }
            if has_storage(&md, SUBTENSOR, "TotalHotkeyAlpha") {
                storage_key(&md, SUBTENSOR, "TotalHotkeyAlpha", (a, 2u16)).expect("alpha");
            }
            if has_storage(&md, SUBTENSOR, "TotalHotkeyStake") {
                storage_key(&md, SUBTENSOR, "TotalHotkeyStake", (a,)).expect("stake");
            }
        }
    }

    #[test]
    fn error_classes() {
        assert_eq!(
            classify_module_error("CommitmentSetRateLimitExceeded"),
            ErrorClass::RateLimited
        );
        assert_eq!(
            classify_module_error("SettingWeightsTooFast"),
            ErrorClass::RateLimited
        );
        assert_eq!(
            classify_module_error("TxRateLimitExceeded"),
            ErrorClass::RateLimited
        );
        assert_eq!(
            classify_module_error("HotKeyNotRegisteredInSubNet"),
            ErrorClass::NotRegistered
        );
        assert_eq!(
            classify_module_error("AccountNotAllowedCommit"),
            ErrorClass::NotRegistered
        );
        assert_eq!(
            classify_module_error("SubNetworkDoesNotExist"),
            ErrorClass::NoSuchSubnet
        );
        assert_eq!(
            classify_module_error("IncorrectWeightVersionKey"),
            ErrorClass::Other
        );
        assert_eq!(
            classify_pool_message("Invalid Transaction: Custom error: 6"),
            ErrorClass::RateLimited
        );
        assert_eq!(
            classify_pool_message("Custom error: 10"),
            ErrorClass::NotRegistered
        );
        assert_eq!(
            classify_pool_message("Priority is too low"),
            ErrorClass::Other
        );
    }

    #[test]
    fn keypair_must_match_address() {
        let v = vectors();
        let ss58 = v["hotkey_ss58"].as_str().expect("ss58");
        // The fixture hotkey's mini secret (testdata/wallet/fixture/hotkeys/default).
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/wallet/fixture/hotkeys/default"
        ))
        .expect("fixture hotkey");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        let seed: [u8; 32] = hex::decode(
            json["secretSeed"]
                .as_str()
                .expect("seed")
                .trim_start_matches("0x"),
        )
        .expect("hex")
        .try_into()
        .expect("32 bytes");
        assert!(keypair_of(&Hotkey::from_secret_seed(ss58, seed)).is_ok());
        let other = "5EPCUjPxiHAcNooYipQFWr9NmmXJKpNG5RhcntXwbtUySrgH";
        assert!(matches!(
            keypair_of(&Hotkey::from_secret_seed(other, seed)),
            Err(ChainError::Rejected(_))
        ));
        assert!(matches!(
            keypair_of(&Hotkey::address_only(ss58)),
            Err(ChainError::Rejected(_))
        ));
    }

    #[test]
    fn timeouts_and_network_errors_reconnect_refusals_do_not() {
        assert!(drops_connection(&ChainError::Timeout(Duration::from_secs(
            60
        ))));
        assert!(drops_connection(&ChainError::Network("reset".into())));
        assert!(!drops_connection(&ChainError::RateLimited("later".into())));
        assert!(!drops_connection(&ChainError::Rejected("no".into())));
    }

    #[tokio::test]
    async fn unreachable_node_is_a_network_error() {
        // Port 9 (discard) on localhost: nothing listens, the connection is refused fast.
        match SubtensorChain::connect("ws://127.0.0.1:9", Duration::from_secs(10)).await {
            Err(ChainError::Network(_)) | Err(ChainError::Timeout(_)) => {}
            other => panic!("expected a network error, got {other:?}"),
        }
        assert!(matches!(
            SubtensorChain::connect("http://example.invalid", Duration::from_secs(1)).await,
            Err(ChainError::Network(_))
        ));
    }
}

//! The websocket connection to a node (reconnected after a network error or
//! a timeout) and the [`Chain`] impl on top of it.

use std::time::Duration;

use async_trait::async_trait;
use subxt::rpcs::RpcClient;
use subxt::OnlineClient;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::commitments::{commitment_at, commitments_at};
use super::errors::TxContext;
use super::extrinsics::{keypair_of, set_commitment_call, set_weights_call, submit};
use super::metagraph::read_metagraph;
use super::scale::{account_of, storage_key};
use super::storage::{ensure_registered, fetch_raw, uid_at};
use super::weights::{hyperparameters_at, prepare_commit};
use super::{endpoint_for, AtBlock, Conn, SubtensorConfig, SUBTENSOR};
use crate::{Chain, ChainError, Commitment, Hotkey, Hyperparameters, Metagraph, WeightsSubmission};

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

    /// Commits timelocked weights to drand round `reveal_round` instead of the
    /// reveal epoch's (commit-reveal must be on): for debugging a commit against
    /// a pulse one has, and for tests on chains whose pulses are written by hand.
    pub async fn commit_weights_to_round(
        &self,
        hotkey: &Hotkey,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
        reveal_round: u64,
    ) -> Result<WeightsSubmission, ChainError> {
        self.weights_to_round(
            hotkey,
            netuid,
            uids,
            values,
            version_key,
            Some(reveal_round),
        )
        .await
    }

    /// Sets weights (commit-reveal off) or commits them timelocked to `round`
    /// (`None`: the reveal epoch's round).
    async fn weights_to_round(
        &self,
        hotkey: &Hotkey,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
        round: Option<u64>,
    ) -> Result<WeightsSubmission, ChainError> {
        crate::check_weights(uids, values)?;
        let signer = keypair_of(hotkey)?;
        let direct = set_weights_call(netuid, uids, values, version_key);
        let account = account_of(&hotkey.ss58)?;
        self.call(|c| async move {
            let at = at_latest(&c).await?;
            let ctx = TxContext {
                what: "set_weights",
                hotkey: &hotkey.ss58,
                netuid,
            };
            ensure_registered(&at, &account, &ctx).await?;
            let hp = hyperparameters_at(&at, netuid).await?;
            if !hp.commit_reveal_weights_enabled {
                if round.is_some() {
                    return Err(ChainError::Rejected(format!(
                        "subnet {netuid} has commit-reveal off: weights are set directly, not committed to a round"
                    )));
                }
                let block = submit(&c, &at, &direct, &signer, ctx).await?;
                return Ok(WeightsSubmission::Set { block });
            }
            let uid =
                uid_at(&at, netuid, &account)
                    .await?
                    .ok_or_else(|| ChainError::NotRegistered {
                        hotkey: hotkey.ss58.clone(),
                        netuid,
                    })?;
            let commit = prepare_commit(
                &at,
                &hp,
                uid,
                &account,
                netuid,
                uids,
                values,
                version_key,
                round,
            )
            .await?;
            let ctx = TxContext {
                what: commit.call_name,
                hotkey: &hotkey.ss58,
                netuid,
            };
            let block = submit(&c, &at, &commit.call, &signer, ctx).await?;
            Ok(WeightsSubmission::Committed {
                block,
                reveal_round: commit.reveal_round,
                reveal_block: commit.reveal_block,
            })
        })
        .await
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
pub(super) fn drops_connection(e: &ChainError) -> bool {
    matches!(e, ChainError::Network(_) | ChainError::Timeout(_))
}

async fn at_latest(conn: &Conn) -> Result<AtBlock, ChainError> {
    conn.client
        .at_current_block()
        .await
        .map_err(|e| ChainError::Network(format!("cannot get the current block: {e}")))
}

#[async_trait]
impl Chain for SubtensorChain {
    async fn chain_id(&self) -> Result<Option<String>, ChainError> {
        // The genesis hash names the network (finney, testnet, a devnet) for good.
        self.call(|c| async move {
            Ok(Some(format!(
                "genesis:0x{}",
                hex::encode(c.client.genesis_hash().as_ref())
            )))
        })
        .await
    }

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
        self.submit_weights(hotkey, netuid, uids, values, version_key)
            .await
            .map(|_| ())
    }

    async fn submit_weights(
        &self,
        hotkey: &Hotkey,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
    ) -> Result<WeightsSubmission, ChainError> {
        self.weights_to_round(hotkey, netuid, uids, values, version_key, None)
            .await
    }

    async fn weights_of(&self, netuid: u16, uid: u16) -> Result<Vec<(u16, u16)>, ChainError> {
        self.call(|c| async move {
            let at = at_latest(&c).await?;
            let key = storage_key(&at.metadata(), SUBTENSOR, "Weights", (netuid, uid))?;
            let Some(bytes) = fetch_raw(&at, key, "SubtensorModule.Weights").await? else {
                return Ok(Vec::new());
            };
            let mut reader = bytes.as_slice();
            <Vec<(u16, u16)> as codec::Decode>::decode(&mut reader).map_err(|e| {
                ChainError::BadResponse(format!("cannot decode SubtensorModule.Weights: {e}"))
            })
        })
        .await
    }

    async fn hyperparameters(&self, netuid: u16) -> Result<Hyperparameters, ChainError> {
        self.call(|c| async move { hyperparameters_at(&at_latest(&c).await?, netuid).await })
            .await
    }
}

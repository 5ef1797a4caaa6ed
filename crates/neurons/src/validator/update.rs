//! The update loop: finds changed commitments and brings their models in.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pretrain_core::escape::Escaped;
use pretrain_core::rules::schedule::ModelFacts;
use pretrain_core::rules::{Admission, CompetitionSpec, HashRule};
use pretrain_core::scoring::Uid;
use pretrain_core::{HotkeyAddress, ModelId, ModelMetadata};
use pretrain_model::{check_model_dir, Limits};
use pretrain_store::StoreError;
use rand::Rng;
use tracing::{debug, info, warn};

use super::{failure, Refusal, Shared, TrackedModel};

/// Cycles through the uids, as the original's `MinerIterator`: sorted,
/// starting at a random position, and keeping its place (the next uid at or
/// after the one it would have given) when the uid list changes.
#[derive(Debug, Clone)]
pub struct MinerIterator {
    uids: Vec<Uid>,
    index: usize,
}

impl MinerIterator {
    /// Starts at position `start` (wrapped) of the sorted `uids`.
    pub fn new(mut uids: Vec<Uid>, start: usize) -> Self {
        uids.sort_unstable();
        let index = if uids.is_empty() {
            0
        } else {
            start % uids.len()
        };
        Self { uids, index }
    }

    /// The next uid; `None` while there are none.
    pub fn next_uid(&mut self) -> Option<Uid> {
        let uid = *self.uids.get(self.index)?;
        self.index = (self.index + 1) % self.uids.len();
        Some(uid)
    }

    /// Replaces the uids, keeping the position stable.
    pub fn set_uids(&mut self, mut uids: Vec<Uid>) {
        uids.sort_unstable();
        let next = self.uids.get(self.index).copied();
        self.index = match next {
            Some(next) => {
                let i = uids.partition_point(|&u| u < next);
                if i >= uids.len() {
                    0
                } else {
                    i
                }
            }
            None => 0,
        };
        self.uids = uids;
    }
}

/// What one check of a hotkey found.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncOutcome {
    /// No commitment, or the same one as before (tracked or refused).
    Unchanged,
    /// A new model passed every check; it is tracked and its uid queued.
    Updated(ModelMetadata),
    /// The new commitment was refused (logged once; the uid scores +inf).
    Refused(String),
    /// Could not tell now (network, timeout); tried again next time.
    Deferred(String),
}

impl SyncOutcome {
    /// The outcome of a download failure that is not the model's fault
    /// (formerly `failure::deferred`: it builds this type, so it lives here).
    pub fn download_deferred(e: &StoreError) -> Self {
        Self::Deferred(format!(
            "download failed, retried later: {}",
            crate::error_chain(e)
        ))
    }
}

fn refusal_key(data: &[u8], block: u64) -> (String, u64) {
    (String::from_utf8_lossy(data).into_owned(), block)
}

/// Checks one hotkey's commitment and brings its model in if it changed.
pub async fn sync_hotkey(shared: &Shared, uid: Uid, hotkey: &HotkeyAddress) -> SyncOutcome {
    let cfg = &shared.config;
    let commitment = match tokio::time::timeout(
        cfg.call_timeout,
        shared.chain.commitment(cfg.netuid, hotkey.as_str()),
    )
    .await
    {
        Err(_) => {
            return SyncOutcome::Deferred(format!(
                "commitment read timed out after {:?}",
                cfg.call_timeout
            ))
        }
        Ok(Err(e)) => {
            return SyncOutcome::Deferred(format!(
                "commitment read failed: {}",
                crate::error_chain(&e)
            ))
        }
        Ok(Ok(None)) => return SyncOutcome::Unchanged,
        Ok(Ok(Some(c))) => c,
    };
    let key = refusal_key(&commitment.data, commitment.block);
    let (tracked, refused) = {
        let s = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        (
            s.tracked.get(hotkey).cloned(),
            s.refused.get(hotkey).cloned(),
        )
    };
    if refused.is_some_and(|r| (r.commitment.clone(), r.block) == key) {
        return SyncOutcome::Unchanged;
    }
    let ctx = HotkeyCheck {
        shared,
        uid,
        hotkey,
        key,
        tracked,
    };
    sync(ctx, &commitment.data, commitment.block).await
}

/// One hotkey's check in progress.
struct HotkeyCheck<'a> {
    shared: &'a Shared,
    uid: Uid,
    hotkey: &'a HotkeyAddress,
    /// The commitment as a refusal key.
    key: (String, u64),
    /// What the hotkey had tracked before.
    tracked: Option<TrackedModel>,
}

impl HotkeyCheck<'_> {
    fn refuse(self, reason: String, fetched: Option<&ModelId>) -> SyncOutcome {
        refuse(
            self.shared,
            self.uid,
            self.hotkey,
            self.key,
            reason,
            fetched,
        )
    }

    /// Whether `model` is what is tracked already, on disk.
    fn unchanged(&self, model: &TrackedModel) -> bool {
        let path = self.shared.store.model_path(self.hotkey, &model.id);
        self.tracked.as_ref() == Some(model) && path.as_ref().is_ok_and(|p| p.is_dir())
    }

    fn current_block(&self) -> u64 {
        self.shared
            .metagraph
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .block
    }
}

/// One commitment through its protocol's admission rules, then fetched,
/// checked against the committed hash as the protocol says, and tracked.
async fn sync(ctx: HotkeyCheck<'_>, data: &[u8], block: u64) -> SyncOutcome {
    let cfg = &ctx.shared.config;
    // The metagraph's block may lag the chain, which only delays, never
    // admits early.
    let current = ctx.current_block();
    let admitted = match cfg.protocol().admit(&cfg.schedule, data, block, current) {
        Admission::Admit(a) => *a,
        Admission::Defer(why) => return SyncOutcome::Deferred(why),
        Admission::Refuse(why) => return ctx.refuse(why, None),
    };
    let model = TrackedModel {
        id: admitted.model,
        block,
        competition: admitted.competition,
    };
    if ctx.unchanged(&model) {
        return SyncOutcome::Unchanged;
    }
    info!(uid = ctx.uid, hotkey = %ctx.hotkey, model = %Escaped(&admitted.shown), block, competition = ?admitted.competition, "new commitment, fetching the model");
    let store = &ctx.shared.store;
    let hub = ctx.shared.hub.as_ref();
    let max_bytes = admitted.max_bytes;
    let fetched = tokio::time::timeout(cfg.download_timeout, async {
        match admitted.hash_rule {
            // The store compares the committed hash itself.
            HashRule::Committed => store.fetch(hub, ctx.hotkey, &model.id, max_bytes).await,
            rule => {
                let hotkey_ss58 = ctx.hotkey.as_str().to_string();
                let shown = admitted.shown.clone();
                let verify = move |downloaded: &str| {
                    rule.check(downloaded, &hotkey_ss58)
                        .map_err(|source| StoreError::HashCheck {
                            model: shown,
                            source: Box::new(source),
                        })
                };
                store
                    .fetch_verified(hub, ctx.hotkey, &model.id, max_bytes, verify)
                    .await
            }
        }
    })
    .await;
    let fetched = match fetched {
        Err(_) => {
            return SyncOutcome::Deferred(format!(
                "download did not finish within {:?}",
                cfg.download_timeout
            ))
        }
        // A missing repo, or one still private (the miner makes it public
        // once its commitment landed): upstream retries it later.
        // Also the validator's own failures (disk, token, endpoint).
        Ok(Err(e)) if !failure::store_is_content(&e) => return SyncOutcome::download_deferred(&e),
        Ok(Err(e)) => return ctx.refuse(crate::error_chain(&e), None),
        Ok(Ok(f)) => f,
    };
    check_and_track(ctx, model, fetched.path, admitted.spec).await
}

/// Checks the fetched model's files, then against the competition
/// (parameter range, architectures); tracks and queues it, or refuses it.
async fn check_and_track(
    ctx: HotkeyCheck<'_>,
    model: TrackedModel,
    dir: std::path::PathBuf,
    spec: Option<CompetitionSpec>,
) -> SyncOutcome {
    let limits = spec.as_ref().map_or_else(Limits::default, |c| Limits {
        max_params: c.constraints.max_parameters,
        max_bytes: c.constraints.max_bytes,
    });
    let checked = tokio::task::spawn_blocking(move || check_model_dir(&dir, limits)).await;
    // The competition may also set a floor and allow fewer architectures.
    let checked = checked.map(|r| {
        r.map_err(|e| (failure::model_is_content(&e), crate::error_chain(&e)))
            .and_then(|info| {
                let Some(spec) = &spec else {
                    return Ok(info);
                };
                spec.check_model(&ModelFacts {
                    parameters: info.params,
                    architecture: info.architecture.class_name(),
                })
                .map(|()| info)
                .map_err(|e| (true, e.to_string()))
            })
    });
    match checked {
        Ok(Ok(info)) => {
            let (uid, hotkey) = (ctx.uid, ctx.hotkey);
            info!(uid, %hotkey, model = %Escaped(&model.model_str()), params = info.params, architecture = ?info.architecture, "model tracked and queued");
            let m = model.clone();
            let hk = hotkey.clone();
            ctx.shared.update_state(move |s| {
                let competition = m.competition;
                s.tracked.insert(hk.clone(), m);
                s.refused.remove(&hk);
                match (competition, s.competitions.as_mut()) {
                    (Some(c), Some(later)) => {
                        later.pending_uids.entry(c).or_default().insert(uid);
                    }
                    _ => {
                        s.pending_uids.insert(uid);
                    }
                }
            });
            SyncOutcome::Updated(ModelMetadata {
                id: model.id,
                block: model.block,
            })
        }
        Ok(Err((true, reason))) => {
            let id = model.id.clone();
            ctx.refuse(reason, Some(&id))
        }
        // The validator could not read what it downloaded (disk,
        // permission, memory): checked again on a later pass.
        Ok(Err((false, reason))) => {
            SyncOutcome::Deferred(format!("cannot check the model: {reason}"))
        }
        Err(e) => SyncOutcome::Deferred(format!("the model check did not finish: {e}")),
    }
}

fn refuse(
    shared: &Shared,
    uid: Uid,
    hotkey: &HotkeyAddress,
    key: (String, u64),
    reason: String,
    fetched: Option<&ModelId>,
) -> SyncOutcome {
    warn!(uid, %hotkey, commitment = %Escaped(&key.0), block = key.1, "model refused: {}", Escaped(&reason));
    shared.observers.refused(&reason);
    if let Some(id) = fetched {
        if let Err(e) = shared.store.remove_model(hotkey, id) {
            warn!(%hotkey, "cannot remove the refused model: {}", crate::error_chain(&e));
        }
    }
    let hk = hotkey.clone();
    let r = reason.clone();
    shared.update_state(move |s| {
        // The latest commitment is what counts: an older model of this
        // hotkey is no longer evaluated.
        s.tracked.remove(&hk);
        s.refused.insert(
            hk,
            Refusal {
                commitment: key.0,
                block: key.1,
                reason: r,
                kind: Some(failure::CONTENT.into()),
            },
        );
        // Under sn9-2024-01 the uid scores +inf at its next step; the
        // competitions evaluate only tracked models, so it leaves its competition.
        if s.competitions.is_none() {
            s.pending_uids.insert(uid);
        }
    });
    SyncOutcome::Refused(reason)
}

/// The loop: forever, the next uid, at most once per `update_interval`.
pub async fn update_loop(shared: Arc<Shared>) {
    let first = metagraph_uids(&shared);
    let start = rand::thread_rng().gen_range(0..first.len().max(1));
    let mut it = MinerIterator::new(first, start);
    let mut last_checked: HashMap<Uid, Instant> = HashMap::new();
    // Uids whose check has finished (the first pass is done once all have).
    let mut finished: std::collections::HashSet<Uid> = std::collections::HashSet::new();
    let mut checks: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    // The uid of each check in flight, by task: a check that panics ends too.
    let mut running = Running::default();
    loop {
        while let Some(done) = checks.try_join_next_with_id() {
            running.ended(done, &mut finished);
        }
        let current = metagraph_uids(&shared);
        if !shared.first_pass_done.load(Ordering::Relaxed)
            && current.iter().all(|u| finished.contains(u))
        {
            info!("every uid checked once");
            shared.first_pass_done.store(true, Ordering::Relaxed);
        }
        // A few at once, so that one slow repo does not hold the others.
        if checks.len() >= CHECKS_AT_ONCE {
            if let Some(done) = checks.join_next_with_id().await {
                running.ended(done, &mut finished);
            }
            continue;
        }
        it.set_uids(current);
        let Some(uid) = it.next_uid() else {
            tokio::time::sleep(shared.config.idle_wait).await;
            continue;
        };
        wait_out_interval(last_checked.get(&uid), shared.config.update_interval).await;
        last_checked.insert(uid, Instant::now());
        let Some(hotkey) = hotkey_of(&shared, uid) else {
            finished.insert(uid);
            continue;
        };
        // A uid still being checked (a slow fetch) is not started twice: wait
        // a little for a check to end, then go on to the next uid, so that a
        // stalled repo never holds the loop (its turn comes next pass).
        if running.contains(uid) {
            let wait = shared.config.idle_wait.min(Duration::from_secs(1));
            if let Ok(Some(done)) = tokio::time::timeout(wait, checks.join_next_with_id()).await {
                running.ended(done, &mut finished);
            }
            continue;
        }
        let shared = shared.clone();
        let task = checks.spawn(async move {
            match sync_hotkey(&shared, uid, &hotkey).await {
                SyncOutcome::Deferred(why) => {
                    warn!(uid, %hotkey, "model update deferred: {}", Escaped(&why))
                }
                outcome => debug!(uid, %hotkey, ?outcome, "checked"),
            }
        });
        running.by_task.insert(task.id(), uid);
    }
}

/// The uids of the metagraph as last synced.
fn metagraph_uids(shared: &Shared) -> Vec<Uid> {
    shared
        .metagraph_snapshot()
        .neurons
        .iter()
        .map(|n| n.uid)
        .collect()
}

/// Sleeps out the rest of the update interval of a uid checked at `last`:
/// every uid was checked within it.
async fn wait_out_interval(last: Option<&Instant>, interval: Duration) {
    if let Some(t) = last {
        let elapsed = t.elapsed();
        if elapsed < interval {
            let wait = interval - elapsed;
            debug!("every uid checked within the interval; sleeping {wait:?}");
            tokio::time::sleep(wait).await;
        }
    }
}

/// The hotkey of `uid` in the metagraph, checked; `None` (said once per pass
/// for a refused one: never tracked, so it scores +inf) where there is none.
fn hotkey_of(shared: &Shared, uid: Uid) -> Option<HotkeyAddress> {
    let hotkey = {
        let g = shared.metagraph.read().unwrap_or_else(|p| p.into_inner());
        g.neurons
            .iter()
            .find(|n| n.uid == uid)
            .map(|n| n.hotkey.clone())
    }?;
    match hotkey.parse::<HotkeyAddress>() {
        Ok(h) => Some(h),
        Err(e) => {
            warn!(uid, "hotkey refused: {}", Escaped(&e));
            None
        }
    }
}

/// The update loop's checks in flight: their uids by task.
#[derive(Default)]
struct Running {
    by_task: HashMap<tokio::task::Id, Uid>,
}

impl Running {
    fn contains(&self, uid: Uid) -> bool {
        self.by_task.values().any(|u| *u == uid)
    }

    /// A check ended, normally or by a panic: its uid is checked again next pass.
    fn ended(
        &mut self,
        done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
        finished: &mut std::collections::HashSet<Uid>,
    ) {
        let id = match done {
            Ok((id, ())) => id,
            Err(e) => {
                warn!("a model check did not finish: {e}");
                e.id()
            }
        };
        if let Some(uid) = self.by_task.remove(&id) {
            finished.insert(uid);
        }
    }
}

/// Uids checked (and their models fetched) at once by the update loop.
pub const CHECKS_AT_ONCE: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterator_cycles_and_keeps_its_place() {
        let mut it = MinerIterator::new(vec![3, 1, 2], 1);
        assert_eq!(
            (0..4).map(|_| it.next_uid().unwrap()).collect::<Vec<_>>(),
            vec![2, 3, 1, 2]
        );
        // Next would be 3; 3 left, so the next uid after it is 4.
        it.set_uids(vec![1, 2, 4, 5]);
        assert_eq!(it.next_uid(), Some(4));
        // Next would be 5; nothing at or after it: wrap to the start.
        it.set_uids(vec![0, 1]);
        assert_eq!(it.next_uid(), Some(0));
        let mut empty = MinerIterator::new(vec![], 7);
        assert_eq!(empty.next_uid(), None);
        empty.set_uids(vec![8]);
        assert_eq!(empty.next_uid(), Some(8));
    }
}

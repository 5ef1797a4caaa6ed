//! The clean loop: deletes model directories that no tracked model
//! references, once they are older than the grace period.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{info, warn};

use super::Shared;

/// One cleanup pass; returns how many directories were removed.
pub async fn clean_once(shared: &Shared) -> usize {
    let tracked: HashMap<pretrain_core::HotkeyAddress, pretrain_core::ModelId> = shared
        .state_snapshot()
        .tracked
        .into_iter()
        .map(|(hk, t)| (hk, t.id))
        .collect();
    let store = shared.store.clone();
    let grace = shared.config.clean_grace;
    match tokio::task::spawn_blocking(move || store.delete_unreferenced(&tracked, grace)).await {
        Ok(Ok(report)) => {
            for p in &report.removed {
                info!("removed unreferenced model {}", p.display());
            }
            report.removed.len()
        }
        Ok(Err(e)) => {
            warn!("model cleanup failed: {}", crate::error_chain(&e));
            0
        }
        Err(e) => {
            warn!("model cleanup task failed: {e}");
            0
        }
    }
}

/// Forever: wait `clean_interval`, clean.
pub async fn clean_loop(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(shared.config.clean_interval).await;
        clean_once(&shared).await;
    }
}

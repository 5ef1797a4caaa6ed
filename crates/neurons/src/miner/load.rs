//! The miner's model actions: load a uid's committed model, a local
//! directory or a bare weights file; save.

use std::path::{Path, PathBuf};

use candle_core::Device;
use pretrain_chain::{Chain, Metagraph};
use pretrain_core::{constants::MAX_MODEL_BYTES, ModelId, ModelMetadata};
use pretrain_model::{check_model_dir, config::default_gpt2_config_json, Limits, Model};
use pretrain_store::{ModelHub, ModelStore};
use tracing::info;

use super::MinerError;

/// A model loaded from the chain and the hub.
#[derive(Debug)]
pub struct RemoteModel {
    /// The model.
    pub model: Model,
    /// What the uid committed, with the block.
    pub metadata: ModelMetadata,
    /// The hotkey of the uid.
    pub hotkey: String,
    /// Where the verified snapshot lies.
    pub path: PathBuf,
}

/// The uid with the highest incentive (the first of equals, as the
/// original's `max(range(n), key=I)`); `None` for an empty subnet.
pub fn best_uid(metagraph: &Metagraph) -> Option<u16> {
    let mut best: Option<(u16, f64)> = None;
    for n in &metagraph.neurons {
        let better = match best {
            None => true,
            Some((uid, inc)) => n.incentive > inc || (n.incentive == inc && n.uid < uid),
        };
        if better {
            best = Some((n.uid, n.incentive));
        }
    }
    best.map(|(uid, _)| uid)
}

/// Loads the model `uid` has committed on `netuid`, as the validator does:
/// the commitment parsed, the files fetched at exactly that commit into
/// `<download_dir>/models/<hotkey>/...`, their hash compared with the
/// committed one, and the directory checked (architecture, parameters,
/// size) before it is loaded.
pub async fn load_remote_model(
    chain: &dyn Chain,
    hub: &dyn ModelHub,
    netuid: u16,
    uid: u16,
    download_dir: &Path,
    device: &Device,
) -> Result<RemoteModel, MinerError> {
    let metagraph = chain.metagraph(netuid).await?;
    let hotkey = metagraph
        .neurons
        .iter()
        .find(|n| n.uid == uid)
        .map(|n| n.hotkey.clone())
        .ok_or_else(|| {
            MinerError::NoModel(format!(
                "uid {uid} does not exist on subnet {netuid} ({} neurons)",
                metagraph.neurons.len()
            ))
        })?;
    let commitment = chain.commitment(netuid, &hotkey).await?.ok_or_else(|| {
        MinerError::NoModel(format!(
            "uid {uid} ({hotkey}) has committed no model on subnet {netuid}"
        ))
    })?;
    let id = ModelId::from_chain_bytes(&commitment.data).map_err(|e| {
        MinerError::NoModel(format!(
            "uid {uid} ({hotkey}) committed no valid model id: {e}"
        ))
    })?;
    if id.commit.is_none() || id.hash.is_none() {
        return Err(MinerError::NoModel(format!(
            "uid {uid} ({hotkey}) committed {id}, without a commit and hash"
        )));
    }
    info!(uid, %hotkey, model = %id, block = commitment.block, "fetching the committed model");
    let store = ModelStore::new(download_dir);
    let address: pretrain_core::HotkeyAddress = hotkey
        .parse()
        .map_err(|e| MinerError::NoModel(format!("uid {uid}: {e}")))?;
    let fetched = store.fetch(hub, &address, &id, MAX_MODEL_BYTES).await?;
    let path = fetched.path.clone();
    let dev = device.clone();
    let model = tokio::task::spawn_blocking(move || load_local_model(&path, &dev))
        .await
        .map_err(MinerError::Join)??;
    Ok(RemoteModel {
        model,
        metadata: ModelMetadata {
            id,
            block: commitment.block,
        },
        hotkey,
        path: fetched.path,
    })
}

/// Loads a `save_pretrained` directory after the validator's checks; a
/// model they refuse is an error with their reason.
pub fn load_local_model(dir: &Path, device: &Device) -> Result<Model, MinerError> {
    if !dir.is_dir() {
        return Err(MinerError::Rejected {
            path: dir.display().to_string(),
            reason: "no such directory".into(),
        });
    }
    check_model_dir(dir, Limits::default()).map_err(|e| MinerError::Rejected {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    Model::load(dir, device).map_err(|e| MinerError::Rejected {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })
}

/// Loads a bare safetensors file holding the weights of the default GPT-2
/// config (the original's `load_gpt2_model`, `--load_model FILE`).
pub fn load_model_file(file: &Path, device: &Device) -> Result<Model, MinerError> {
    if !file.is_file() {
        return Err(MinerError::Rejected {
            path: file.display().to_string(),
            reason: "no such file".into(),
        });
    }
    Model::load_weights_file(file, default_gpt2_config_json(), device).map_err(|e| {
        MinerError::Rejected {
            path: file.display().to_string(),
            reason: format!("not weights of the default GPT-2 config: {e}"),
        }
    })
}

/// Saves `model` as a `save_pretrained` directory, replacing `dir` whole.
pub fn save(model: &Model, dir: &Path) -> Result<(), MinerError> {
    Ok(model.save(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretrain_chain::Neuron;

    fn neuron(uid: u16, incentive: f64) -> Neuron {
        Neuron {
            uid,
            hotkey: format!("hk{uid}"),
            coldkey: String::new(),
            stake: 0.0,
            incentive,
            validator_permit: false,
        }
    }

    #[test]
    fn best_uid_is_the_highest_incentive_first_of_equals() {
        let mut mg = Metagraph {
            netuid: 9,
            block: 0,
            neurons: vec![
                neuron(0, 0.1),
                neuron(1, 0.5),
                neuron(2, 0.5),
                neuron(3, 0.2),
            ],
        };
        assert_eq!(best_uid(&mg), Some(1));
        mg.neurons.reverse();
        assert_eq!(best_uid(&mg), Some(1));
        mg.neurons.clear();
        assert_eq!(best_uid(&mg), None);
    }
}

//! How a mining session begins: a new run from a starting model (checked
//! against the competition entered), or the resumed run of a directory.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use pretrain_chain::Chain;
use pretrain_core::rules::schedule::ModelFacts;
use pretrain_core::rules::CompetitionSpec;
use pretrain_data::PageSource;
use pretrain_model::{ComputeOptions, Model};
use pretrain_store::ModelHub;
use tracing::info;

use super::session_error::SessionError;
use super::{
    best_uid, load_local_model, load_model_file, load_remote_model, new_run_id, MinerConfig,
    RunDir, Training,
};

/// The model a new run trains (`--load_model_dir`, `--load_model`,
/// `--load_uid` / `--load_best`, or none of them).
pub enum StartingModel {
    /// A `save_pretrained` directory.
    Dir(PathBuf),
    /// A bare safetensors file of the default GPT-2 config.
    File(PathBuf),
    /// The model a uid committed, downloaded into the run's `model_dir`.
    Committed {
        /// The chain to read the commitment (and the metagraph) from.
        chain: Arc<dyn Chain>,
        /// The hub to download from.
        hub: Box<dyn ModelHub>,
        /// The subnet.
        netuid: u16,
        /// The uid; `None`: the uid with the highest incentive.
        uid: Option<u16>,
    },
    /// A new default GPT-2, its weights drawn from the run's seed.
    Scratch,
}

impl std::fmt::Debug for StartingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(d) => f.debug_tuple("Dir").field(d).finish(),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Committed { netuid, uid, .. } => f
                .debug_struct("Committed")
                .field("netuid", netuid)
                .field("uid", uid)
                .finish_non_exhaustive(),
            Self::Scratch => f.write_str("Scratch"),
        }
    }
}

/// A new run or the continuation of one.
#[derive(Debug)]
pub enum Start {
    /// A new run of `config` in `<model_dir>/training/<new run id>`.
    New {
        /// The settings (checked before the model is loaded).
        config: MinerConfig,
        /// What it trains.
        model: StartingModel,
    },
    /// Continue the run in `dir`, its settings its own (`run.json`).
    Resume {
        /// `<model_dir>/training/<run_id>`.
        dir: PathBuf,
        /// A new total of epochs to reach (`Some(None)`: until stopped);
        /// `None` keeps the run's own.
        num_epochs: Option<Option<u64>>,
    },
}

/// What starting needs besides the [`Start`].
pub(crate) struct StartWith<'a> {
    pub device: &'a Device,
    pub compute: ComputeOptions,
    pub source: Arc<dyn PageSource>,
    pub competition: &'a CompetitionSpec,
    pub schedule: &'a str,
}

/// The training `start` describes: resumed, or a new run whose starting
/// model is saved as its first `best/`.
pub(crate) async fn begin(start: Start, with: StartWith<'_>) -> Result<Training, SessionError> {
    match start {
        Start::Resume { dir, num_epochs } => resume(dir, num_epochs, with),
        Start::New { config, model } => start_new(config, model, with).await,
    }
}

fn resume(
    dir: PathBuf,
    num_epochs: Option<Option<u64>>,
    with: StartWith<'_>,
) -> Result<Training, SessionError> {
    let run = RunDir::open(&dir)?;
    let training = Training::resume_with(run, with.source, with.device, num_epochs, with.compute)
        .map_err(|source| SessionError::Resume { dir, source })?;
    info!(
        settings = ?training.config(),
        "resuming: the training settings are the run's own (its run.json); --num_epochs sets its total"
    );
    Ok(training)
}

async fn start_new(
    config: MinerConfig,
    model: StartingModel,
    with: StartWith<'_>,
) -> Result<Training, SessionError> {
    config.validate()?;
    let model = load_starting(model, &config, with.device)
        .await?
        .with_options(with.compute)?;
    with.competition
        .check_model(&ModelFacts {
            parameters: model.stored_values(),
            architecture: model.config().architecture().class_name(),
        })
        .map_err(|source| SessionError::Misfit {
            schedule: with.schedule.to_string(),
            source,
        })?;
    let run = RunDir::create(&config.model_dir, &new_run_id())?;
    info!(dir = %run.root().display(), "saving the starting model");
    Ok(Training::start(model, config, with.source, run)?)
}

/// Loads the model a new run starts from.
async fn load_starting(
    model: StartingModel,
    config: &MinerConfig,
    device: &Device,
) -> Result<Model, SessionError> {
    match model {
        StartingModel::Dir(dir) => {
            info!(dir = %dir.display(), "training the model from disk");
            Ok(load_local_model(&dir, device)?)
        }
        StartingModel::File(file) => {
            info!(file = %file.display(), "training the weights file from disk");
            Ok(load_model_file(&file, device)?)
        }
        StartingModel::Committed {
            chain,
            hub,
            netuid,
            uid,
        } => {
            let uid = match uid {
                Some(uid) => uid,
                None => {
                    let mg = chain
                        .metagraph(netuid)
                        .await
                        .map_err(SessionError::Metagraph)?;
                    best_uid(&mg).ok_or(SessionError::NoNeurons(netuid))?
                }
            };
            let remote = load_remote_model(
                chain.as_ref(),
                hub.as_ref(),
                netuid,
                uid,
                &config.model_dir,
                device,
            )
            .await
            .map_err(|source| SessionError::LoadUid { uid, source })?;
            info!(uid, model = %remote.metadata.id, "training the model of uid {uid}");
            Ok(remote.model)
        }
        StartingModel::Scratch => {
            info!(
                seed = config.seed,
                "training a new default GPT-2 from scratch"
            );
            Ok(Model::default_gpt2(config.seed, device)?)
        }
    }
}

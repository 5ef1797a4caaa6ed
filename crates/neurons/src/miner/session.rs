//! The mining session behind `pretrain mine`: start or resume a run, train
//! epoch after epoch until `num_epochs` or the stop flag, push when the
//! [`PushPolicy`] says so, and report it all to a [`SessionObserver`].

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use pretrain_chain::{Chain, Hotkey};
use pretrain_core::rules::{CompetitionSpec, Protocol};
use pretrain_core::RepoId;
use pretrain_data::PageSource;
use pretrain_model::ComputeOptions;
use pretrain_store::ModelHub;
use tracing::{info, warn};

use super::push_policy::{FinalPush, PushPolicy};
use super::session_error::SessionError;
use super::start::{begin, Start, StartWith};
use super::{push_best_model, Observer, StopFlag, Training, TrainingSummary};
use crate::push::{publish, PushOptions, Pushed};

/// What a push needs from the session's caller: the hub, opened when a push
/// begins (so a hub that fails then fails that push, not the training),
/// and the words that tell a person how to finish by hand.
pub trait PushHelp {
    /// Opens the hub to push to; the error on one line.
    fn open_hub(&self) -> Result<Box<dyn ModelHub>, String>;
    /// The command that pushes `best_dir` to `repo` by hand (`pretrain
    /// upload ...`), into `entered` where the protocol has competitions.
    fn finish_command(
        &self,
        best_dir: &Path,
        repo: &RepoId,
        entered: Option<&CompetitionSpec>,
    ) -> String;
    /// How to make `repo` public by hand.
    fn make_public_hint(&self, repo: &RepoId) -> String;
}

/// Where and how a session pushes (everything checked before training).
pub struct PushTarget<'a> {
    /// The chain to commit to.
    pub chain: Arc<dyn Chain>,
    /// The miner's hotkey (registered).
    pub hotkey: Hotkey,
    /// The repo to upload to.
    pub repo: RepoId,
    /// The schedule's protocol.
    pub protocol: Protocol,
    /// Retries, subnet, bf16.
    pub options: PushOptions,
    /// Make the repo public once the commitment landed
    /// (`--update_repo_visibility`, under the competitions).
    pub update_repo_visibility: bool,
    /// The hub and the hints.
    pub help: &'a dyn PushHelp,
}

/// Everything a session runs with, built by its caller (from flags).
pub struct SessionSettings<'a> {
    /// A new run or a resumed one.
    pub start: Start,
    /// The device to train on.
    pub device: Device,
    /// Kernels and dtype.
    pub compute: ComputeOptions,
    /// Where the pages come from.
    pub source: Arc<dyn PageSource>,
    /// The competition entered (its constraints check the starting model).
    pub competition: CompetitionSpec,
    /// The schedule's name, for messages.
    pub schedule: String,
    /// When to push.
    pub policy: PushPolicy,
    /// Where to push; `None`: offline, nothing is pushed.
    pub push: Option<PushTarget<'a>>,
}

/// Receives a session's reports: the training loop's [`Event`](super::Event)s,
/// each push, and the end of training (before the final push).
pub trait SessionObserver: Observer {
    /// A push ended (pushed, or failed with this error).
    fn pushed(&mut self, result: Result<&Pushed, &SessionError>);
    /// Training ended (`stopped`: by the stop flag); the final push, if
    /// any, comes after.
    fn training_ended(&mut self, stopped: bool) -> impl std::future::Future<Output = ()>;
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionOutcome {
    /// The training's summary.
    pub summary: TrainingSummary,
    /// The run's seed.
    pub seed: u64,
    /// The last push that landed, if any.
    pub pushed: Option<Pushed>,
}

/// A mining session: a run under training and its push rule.
pub struct MiningSession<'a> {
    training: Training,
    competition: CompetitionSpec,
    policy: PushPolicy,
    push: Option<PushTarget<'a>>,
    pushed: Option<Pushed>,
}

impl<'a> MiningSession<'a> {
    /// Starts or resumes the run of `settings` (a new run saves its
    /// starting model first).
    pub async fn begin(settings: SessionSettings<'a>) -> Result<Self, SessionError> {
        let with = StartWith {
            device: &settings.device,
            compute: settings.compute,
            source: settings.source,
            competition: &settings.competition,
            schedule: &settings.schedule,
        };
        let training = begin(settings.start, with).await?;
        Ok(Self {
            training,
            competition: settings.competition,
            policy: settings.policy,
            push: settings.push,
            pushed: None,
        })
    }

    /// The flag that stops training after the current batch (Ctrl-C).
    pub fn stop_flag(&self) -> StopFlag {
        self.training.stop_flag()
    }

    /// The run under training.
    pub fn training(&self) -> &Training {
        &self.training
    }

    /// Trains to the end (or the stop flag), pushing as the policy says,
    /// then makes the final push.
    pub async fn run<O: SessionObserver>(
        mut self,
        observer: &mut O,
    ) -> Result<SessionOutcome, SessionError> {
        let (losses, stopped) = self.train(observer).await?;
        observer.training_ended(stopped).await;
        let summary = self.training.summary(losses, stopped);
        let best = summary.best_avg_loss.unwrap_or(f64::INFINITY);
        info!(best_avg_loss = best, "finished training");
        self.final_push(stopped, best, observer).await?;
        Ok(SessionOutcome {
            summary,
            seed: self.training.config().seed,
            pushed: self.pushed,
        })
    }

    /// The epoch loop; returns each epoch's average loss and whether the
    /// stop flag ended it.
    async fn train<O: SessionObserver>(
        &mut self,
        observer: &mut O,
    ) -> Result<(Vec<f64>, bool), SessionError> {
        let mut losses = Vec::new();
        while !self.training.finished() {
            let Some(epoch) = self.training.run_epoch(observer).await? else {
                return Ok((losses, true));
            };
            losses.push(epoch.avg_loss);
            let Some(target) = &self.push else { continue };
            if self.policy.after_epoch(&epoch) {
                match push_best(&self.training, &self.competition, target).await {
                    Ok(pushed) => {
                        self.policy.record_push(epoch.avg_loss);
                        observer.pushed(Ok(&pushed));
                        self.pushed = Some(pushed);
                    }
                    Err(e) => {
                        observer.pushed(Err(&e));
                        warn!("{}; training goes on", crate::error_chain(&e));
                    }
                }
            }
        }
        Ok((losses, false))
    }

    /// The push at the end of training, when it was not stopped, is online,
    /// and the policy says so.
    async fn final_push<O: SessionObserver>(
        &mut self,
        stopped: bool,
        best: f64,
        observer: &mut O,
    ) -> Result<(), SessionError> {
        if stopped {
            info!(
                "stopped; continue with: pretrain mine --resume {}",
                self.training.run_dir().root().display()
            );
            return Ok(());
        }
        let Some(target) = &self.push else {
            info!("not uploading: --offline");
            return Ok(());
        };
        let threshold = self.policy.threshold();
        match self.policy.at_end(best) {
            FinalPush::Push => {
                info!("best average loss {best} is below the threshold {threshold}: pushing");
                let result = push_best(&self.training, &self.competition, target).await;
                observer.pushed(result.as_ref());
                let pushed = result?;
                self.policy.record_push(best);
                self.pushed = Some(pushed);
            }
            FinalPush::AlreadyPushed => {}
            FinalPush::NotMet => info!(
                "best average loss {best} did not meet the threshold {threshold}: not uploading"
            ),
        }
        Ok(())
    }
}

/// Pushes the run's best model (into the competition entered where the
/// protocol has them); a failure says how to finish by hand.
async fn push_best(
    training: &Training,
    competition: &CompetitionSpec,
    target: &PushTarget<'_>,
) -> Result<Pushed, SessionError> {
    let run = training.run_dir();
    let failed = |reason: String| SessionError::PushFailed {
        best: run.best_dir(),
        reason,
        finish: target.help.finish_command(
            &run.best_dir(),
            &target.repo,
            target.protocol.entered(competition),
        ),
    };
    let hub = target.help.open_hub().map_err(failed)?;
    let pushed = push_best_model(
        run,
        hub.as_ref(),
        target.chain.as_ref(),
        &target.hotkey,
        &target.repo,
        target.protocol,
        competition,
        &target.options,
    )
    .await
    .map_err(|e| failed(crate::error_chain(&e).replace('\n', " ")))?;
    // The step the competitions add: the repo, uploaded private, is made
    // public once the commitment has landed.
    if target.protocol.uploads_private() {
        if target.update_repo_visibility {
            publish(
                hub.as_ref(),
                &target.repo,
                &target.options.upload_backoff,
                &pushed,
                &target.help.make_public_hint(&target.repo),
            )
            .await?;
        } else {
            info!(
                repo = %target.repo,
                "the repo stays private until you make it public (--update_repo_visibility does it \
                 after the commitment lands); validators cannot download it before"
            );
        }
    }
    Ok(pushed)
}

//! The miner's training loop, as the original's: each epoch draws fresh
//! random pages (seeded per epoch), trains on `[bs, sl]` batches with the
//! loss divided by `accumulation_steps` and an AdamW step every
//! `accumulation_steps` batches, and keeps the model of the best epoch
//! average loss. Everything a person watches goes to an [`Observer`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::Device;
use pretrain_chain::{Chain, Hotkey};
use pretrain_core::fsio::{append_line, atomic_write_json, recover_dir, replace_dir};
use pretrain_core::metrics::TrainRow;
use pretrain_data::{load_batches, sample_pages, Batch, PageSource, Tokenizer};
use pretrain_model::mix_seed;
use pretrain_model::{Model, TrainConfig, Trainer};
use pretrain_store::ModelHub;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{load_local_model, MinerConfig, MinerError, RunDir};
use crate::push::{push_model, PushOptions, Pushed};
use pretrain_core::rules::Protocol;

/// Set to stop training after the current batch (Ctrl-C); the loop saves a
/// checkpoint before it returns.
pub type StopFlag = Arc<AtomicBool>;

/// Where a batch leaves the epoch, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Epoch (0-based).
    pub epoch: u64,
    /// Batches done in this epoch.
    pub batch: usize,
    /// Batches in this epoch.
    pub batches: usize,
    /// Loss of the batch just trained (unscaled).
    pub loss: f32,
    /// Mean loss of the epoch so far.
    pub running_loss: f64,
    /// Training tokens per second in this epoch so far (compute only).
    pub tokens_per_s: f64,
}

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochSummary {
    /// Epoch (0-based).
    pub epoch: u64,
    /// Mean loss of the epoch's batches.
    pub avg_loss: f64,
    /// Batches in the epoch.
    pub batches: usize,
    /// Optimizer steps taken since the run began.
    pub steps: u64,
    /// Training tokens per second (compute only, this process's batches).
    pub tokens_per_s: f64,
    /// Seconds spent training (compute only).
    pub train_seconds: f64,
    /// Whether this epoch's average beat every earlier one (the best model was saved).
    pub improved: bool,
    /// Best average loss of the run so far.
    pub best_avg_loss: f64,
    /// The seed of this epoch's page draw.
    pub page_seed: u64,
    /// The pages drawn.
    pub pages: Vec<u64>,
}

/// What the loop reports.
#[derive(Debug)]
pub enum Event<'a> {
    /// Pages are drawn and tokenized; training the epoch begins.
    EpochStart {
        /// Epoch (0-based).
        epoch: u64,
        /// Seed of the page draw.
        page_seed: u64,
        /// The pages.
        pages: &'a [u64],
        /// Batches in the epoch.
        batches: usize,
        /// Batches already done (a resumed epoch).
        done: usize,
    },
    /// A batch was trained.
    Batch(Progress),
    /// An optimizer step was taken.
    Step {
        /// Epoch.
        epoch: u64,
        /// Steps since the run began.
        step: u64,
        /// Loss of the last batch of the step.
        loss: f32,
    },
    /// An epoch ended.
    EpochEnd(&'a EpochSummary),
    /// A new best model was saved.
    BestSaved {
        /// Its directory.
        path: &'a Path,
        /// Its average loss.
        avg_loss: f64,
    },
    /// Training stopped on request; the checkpoint is saved.
    Stopped {
        /// Epoch.
        epoch: u64,
        /// Batches done in it.
        batch: usize,
    },
}

/// Receives the loop's [`Event`]s (progress bars, logs).
pub trait Observer {
    /// Called for each event, on the loop's task.
    fn event(&mut self, event: &Event<'_>);
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn event(&mut self, _: &Event<'_>) {}
}

/// How a training run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The best model (`save_pretrained`).
    pub best_dir: PathBuf,
    /// Best epoch average loss (`None`: no epoch finished).
    pub best_avg_loss: Option<f64>,
    /// Epochs finished in all (a resumed run included).
    pub epochs: u64,
    /// Optimizer steps in all.
    pub steps: u64,
    /// Whether it stopped on request before `num_epochs`.
    pub stopped: bool,
    /// The average loss of each epoch finished by this call.
    pub epoch_losses: Vec<f64>,
}

/// Where the run stands (`checkpoint/position.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Position {
    /// Epochs finished.
    epoch: u64,
    /// Batches done in the unfinished epoch `epoch`.
    batch_in_epoch: usize,
    /// Sum of those batches' losses.
    epoch_loss_sum: f64,
    /// Batches trained since the run began.
    global_batches: u64,
    /// Best epoch average so far.
    best_avg_loss: Option<f64>,
}

impl Position {
    /// Whether the position can belong to a checkpoint whose optimizer took
    /// `steps` steps of `accumulation` batches each: counters consistent,
    /// sums and losses finite and not negative. (That `batch_in_epoch` is
    /// inside its epoch is checked when the epoch's batches are known.)
    fn check(&self, steps: u64, accumulation: usize) -> Result<(), String> {
        // Every optimizer step took `accumulation` batches (a partial group
        // dropped at an epoch's start only adds batches).
        let accumulation = u64::try_from(accumulation).unwrap_or(u64::MAX);
        let least = steps.saturating_mul(accumulation);
        if self.global_batches < least {
            return Err(format!(
                "global_batches {} is fewer than the {least} the optimizer's {steps} steps took",
                self.global_batches
            ));
        }
        if self.batch_in_epoch as u64 > self.global_batches {
            return Err(format!(
                "batch_in_epoch {} is more than global_batches {}",
                self.batch_in_epoch, self.global_batches
            ));
        }
        if self.epoch > self.global_batches {
            return Err(format!(
                "epoch {} is more than global_batches {}",
                self.epoch, self.global_batches
            ));
        }
        if !(self.epoch_loss_sum.is_finite() && self.epoch_loss_sum >= 0.0) {
            return Err(format!(
                "epoch_loss_sum {} is not a loss sum",
                self.epoch_loss_sum
            ));
        }
        if self.batch_in_epoch == 0 && self.epoch_loss_sum != 0.0 {
            return Err("epoch_loss_sum without batches".into());
        }
        if let Some(b) = self.best_avg_loss {
            if !(b.is_finite() && b >= 0.0) {
                return Err(format!("best_avg_loss {b} is not a loss"));
            }
        }
        Ok(())
    }
}

const CHECKPOINT_MODEL: &str = "model";
const CHECKPOINT_OPTIMIZER: &str = "optimizer";
const CHECKPOINT_POSITION: &str = "position.json";

/// A training run: the model under training, its data and its directory.
pub struct Training {
    config: MinerConfig,
    trainer: Option<Trainer>,
    source: Arc<dyn PageSource>,
    tokenizer: Tokenizer,
    run: RunDir,
    pos: Position,
    stop: StopFlag,
    started: Instant,
    /// One miner per run directory: two would interleave its checkpoints.
    _lock: pretrain_core::lock::DirLock,
}

impl std::fmt::Debug for Training {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Training")
            .field("run", &self.run)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// An epoch's training throughput so far (compute only).
#[derive(Debug, Clone, Copy)]
struct Speed {
    tokens_per_batch: f64,
    /// Seconds spent in training steps.
    compute: f64,
    /// Batches trained by this process.
    trained: usize,
}

impl Speed {
    fn tokens_per_s(&self) -> f64 {
        self.trained as f64 * self.tokens_per_batch / self.compute.max(1e-9)
    }
}

fn train_config(c: &MinerConfig) -> TrainConfig {
    TrainConfig {
        lr: c.lr,
        weight_decay: 0.01,
        accumulation_steps: c.accumulation_steps,
        ..TrainConfig::default()
    }
}

fn check_fits(model: &Model, c: &MinerConfig) -> Result<(), MinerError> {
    if let Some(max) = model.config().max_positions() {
        if c.sl > max {
            return Err(MinerError::Config(format!(
                "--sl {} exceeds the model's {max} positions",
                c.sl
            )));
        }
    }
    Ok(())
}

/// The settings a run was started with (its `run.json`).
fn read_settings(run: &RunDir) -> Result<MinerConfig, MinerError> {
    let settings = run.settings_file();
    let text = std::fs::read(&settings).map_err(MinerError::io(&settings))?;
    serde_json::from_slice(&text).map_err(|e| {
        MinerError::Config(format!(
            "{} is not a run's settings: {e}",
            settings.display()
        ))
    })
}

/// The trainer and position saved in the checkpoint `ckpt`: weights,
/// optimizer state, and a position checked against that state.
fn from_checkpoint(
    ckpt: &Path,
    config: &MinerConfig,
    device: &Device,
    options: pretrain_model::ComputeOptions,
) -> Result<(Trainer, Position), MinerError> {
    let model = Model::load(&ckpt.join(CHECKPOINT_MODEL), device)?.with_options(options)?;
    check_fits(&model, config)?;
    let mut trainer = Trainer::new(model, train_config(config))?;
    trainer.load_state(&ckpt.join(CHECKPOINT_OPTIMIZER))?;
    let p = ckpt.join(CHECKPOINT_POSITION);
    let text = std::fs::read(&p).map_err(MinerError::io(&p))?;
    let pos: Position = serde_json::from_slice(&text).map_err(|e| {
        MinerError::Config(format!("{} is not a checkpoint position: {e}", p.display()))
    })?;
    pos.check(trainer.steps(), config.accumulation_steps)
        .map_err(|why| {
            MinerError::Config(format!(
                "{} is not a position this checkpoint can be at: {why}; move the checkpoint/ directory aside to restart the run from best/",
                p.display()
            ))
        })?;
    Ok((trainer, pos))
}

impl Training {
    /// Starts a new run in `run`: writes `run.json` and saves the starting
    /// model as the first `best/` (as the original saves it before training).
    pub fn start(
        model: Model,
        config: MinerConfig,
        source: Arc<dyn PageSource>,
        run: RunDir,
    ) -> Result<Self, MinerError> {
        config.validate()?;
        check_fits(&model, &config)?;
        let lock = pretrain_core::lock::lock_dir(run.root(), "pretrain mine")?;
        let settings = run.settings_file();
        atomic_write_json(&settings, &config).map_err(MinerError::io(&settings))?;
        model.save(&run.best_dir())?;
        info!(dir = %run.root().display(), seed = config.seed, "training run started");
        let trainer = Trainer::new(model, train_config(&config))?.with_seed(config.seed);
        Ok(Self {
            config,
            trainer: Some(trainer),
            source,
            tokenizer: Tokenizer::gpt2()?,
            run,
            pos: Position::default(),
            stop: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
            _lock: lock,
        })
    }

    /// Continues the run in `run` from its last checkpoint: weights,
    /// optimizer moments, pending gradients, epoch and step counters (and
    /// the place inside an interrupted epoch). Settings come from its
    /// `run.json`; `num_epochs`, when given, replaces the total to reach.
    pub fn resume(
        run: RunDir,
        source: Arc<dyn PageSource>,
        device: &Device,
        num_epochs: Option<Option<u64>>,
    ) -> Result<Self, MinerError> {
        Self::resume_with(run, source, device, num_epochs, Default::default())
    }

    /// [`Training::resume`] computing as `options` say (`--kernels`, `--dtype`).
    pub fn resume_with(
        run: RunDir,
        source: Arc<dyn PageSource>,
        device: &Device,
        num_epochs: Option<Option<u64>>,
        options: pretrain_model::ComputeOptions,
    ) -> Result<Self, MinerError> {
        let lock = pretrain_core::lock::lock_dir(run.root(), "pretrain mine")?;
        let mut config = read_settings(&run)?;
        if let Some(n) = num_epochs {
            config.num_epochs = n;
        }
        config.validate()?;
        let ckpt = run.checkpoint_dir();
        recover_dir(&ckpt).map_err(MinerError::io(&ckpt))?;
        let (trainer, pos) = if ckpt.is_dir() {
            from_checkpoint(&ckpt, &config, device, options)?
        } else {
            // Stopped before the first checkpoint: begin again from the starting model.
            let best = run.best_dir();
            recover_dir(&best).map_err(MinerError::io(&best))?;
            let model = load_local_model(&best, device)?.with_options(options)?;
            check_fits(&model, &config)?;
            let trainer = Trainer::new(model, train_config(&config))?.with_seed(config.seed);
            (trainer, Position::default())
        };
        info!(
            dir = %run.root().display(),
            epoch = pos.epoch,
            batch = pos.batch_in_epoch,
            steps = trainer.steps(),
            "resuming the run"
        );
        Ok(Self {
            config,
            trainer: Some(trainer),
            source,
            tokenizer: Tokenizer::gpt2()?,
            run,
            pos,
            stop: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
            _lock: lock,
        })
    }

    /// The flag that stops the loop after the current batch.
    pub fn stop_flag(&self) -> StopFlag {
        self.stop.clone()
    }

    /// The run directory.
    pub fn run_dir(&self) -> &RunDir {
        &self.run
    }

    /// The settings in force.
    pub fn config(&self) -> &MinerConfig {
        &self.config
    }

    /// Epochs finished.
    pub fn epochs_done(&self) -> u64 {
        self.pos.epoch
    }

    /// Best epoch average loss so far.
    pub fn best_avg_loss(&self) -> Option<f64> {
        self.pos.best_avg_loss
    }

    /// Whether `num_epochs` are done.
    pub fn finished(&self) -> bool {
        matches!(self.config.num_epochs, Some(n) if self.pos.epoch >= n)
    }

    fn trainer(&self) -> Result<&Trainer, MinerError> {
        self.trainer
            .as_ref()
            .ok_or_else(|| MinerError::Task("a training step failed earlier".into()))
    }

    /// Trains until `num_epochs` are done or the stop flag is set.
    pub async fn run(
        &mut self,
        observer: &mut dyn Observer,
    ) -> Result<TrainingSummary, MinerError> {
        let mut losses = Vec::new();
        let mut stopped = false;
        while !self.finished() {
            match self.run_epoch(observer).await? {
                Some(s) => losses.push(s.avg_loss),
                None => {
                    stopped = true;
                    break;
                }
            }
        }
        Ok(self.summary(losses, stopped))
    }

    /// The run's state as a summary.
    pub fn summary(&self, epoch_losses: Vec<f64>, stopped: bool) -> TrainingSummary {
        TrainingSummary {
            run_dir: self.run.root().to_path_buf(),
            best_dir: self.run.best_dir(),
            best_avg_loss: self.pos.best_avg_loss,
            epochs: self.pos.epoch,
            steps: self.trainer.as_ref().map(Trainer::steps).unwrap_or(0),
            stopped,
            epoch_losses,
        }
    }

    /// The pages of epoch `epoch`: drawn from `(seed, epoch)`, so a resumed
    /// run sees the same pages as an uninterrupted one.
    pub fn pages_of_epoch(&self, epoch: u64) -> (u64, Vec<u64>) {
        let page_seed = mix_seed(self.config.seed, epoch);
        let pages = sample_pages(
            page_seed,
            self.source.page_range(),
            self.config.pages_per_epoch,
        );
        (page_seed, pages)
    }

    /// Trains one epoch (the rest of it, when resumed inside one). `None`
    /// when the stop flag ended it early (a checkpoint is saved then).
    pub async fn run_epoch(
        &mut self,
        observer: &mut dyn Observer,
    ) -> Result<Option<EpochSummary>, MinerError> {
        let epoch = self.pos.epoch;
        if self.stop.load(Ordering::SeqCst) {
            let batch = self.pos.batch_in_epoch;
            self.stop_at(epoch, batch, observer).await?;
            return Ok(None);
        }
        let (page_seed, pages) = self.pages_of_epoch(epoch);
        let batches = self.epoch_batches(epoch, page_seed, &pages).await?;
        let n = batches.len();
        self.enter_epoch(n)?;
        let done = self.pos.batch_in_epoch.min(n);
        observer.event(&Event::EpochStart {
            epoch,
            page_seed,
            pages: &pages,
            batches: n,
            done,
        });
        let Some(speed) = self.train_batches(epoch, batches, done, observer).await? else {
            return Ok(None);
        };
        let summary = self
            .end_epoch(epoch, n, speed, (page_seed, pages), observer)
            .await?;
        Ok(Some(summary))
    }

    /// Saves a checkpoint at batch `batch` of `epoch` and reports the stop.
    async fn stop_at(
        &mut self,
        epoch: u64,
        batch: usize,
        observer: &mut dyn Observer,
    ) -> Result<(), MinerError> {
        self.save_checkpoint().await?;
        observer.event(&Event::Stopped { epoch, batch });
        Ok(())
    }

    /// The batches of `epoch`'s pages; at least one.
    async fn epoch_batches(
        &self,
        epoch: u64,
        page_seed: u64,
        pages: &[u64],
    ) -> Result<Vec<Batch>, MinerError> {
        info!(epoch, page_seed, ?pages, "loading {} pages", pages.len());
        let batches = load_batches(
            self.source.as_ref(),
            &self.tokenizer,
            pages,
            self.config.bs,
            self.config.sl,
        )
        .await?;
        if batches.is_empty() {
            return Err(MinerError::Config(format!(
                "the {} pages of epoch {epoch} hold fewer than one batch of {} x {} tokens: \
                 raise --pages_per_epoch or lower --bs/--sl",
                pages.len(),
                self.config.bs,
                self.config.sl
            )));
        }
        Ok(batches)
    }

    /// Readies the position for an epoch of `n` batches: a fresh epoch
    /// starts with zeroed gradients and loss sum; a resumed one must lie
    /// inside the epoch.
    fn enter_epoch(&mut self, n: usize) -> Result<(), MinerError> {
        if self.pos.batch_in_epoch == 0 {
            // The original zeroes the gradients at each epoch start: a
            // partial accumulation group from the last epoch is dropped.
            if let Some(t) = self.trainer.as_mut() {
                t.zero_grad();
            }
            self.pos.epoch_loss_sum = 0.0;
        }
        // A checkpoint is saved before a batch, never after an epoch's
        // last: a position at or past the end (a forged `batch_in_epoch`)
        // would skip the epoch and report its loss as 0, a new best.
        if self.pos.batch_in_epoch >= n && n > 0 {
            return Err(MinerError::Config(format!(
                "the checkpoint's position is batch {} of an epoch of {n} batches: it is not from this run's data; move {} aside to restart the run from best/",
                self.pos.batch_in_epoch,
                self.run.checkpoint_dir().display()
            )));
        }
        Ok(())
    }

    /// Trains `batches` from `done` on, each step logged and reported;
    /// `None` when the stop flag ended the epoch (checkpoint saved).
    async fn train_batches(
        &mut self,
        epoch: u64,
        batches: Vec<Batch>,
        done: usize,
        observer: &mut dyn Observer,
    ) -> Result<Option<Speed>, MinerError> {
        let n = batches.len();
        let mut speed = Speed {
            tokens_per_batch: (self.config.bs * self.config.sl) as f64,
            compute: 0.0,
            trained: 0,
        };
        for (i, batch) in batches.into_iter().enumerate().skip(done) {
            if self.stop.load(Ordering::SeqCst) {
                self.stop_at(epoch, i, observer).await?;
                return Ok(None);
            }
            let t0 = Instant::now();
            let (loss, stepped, step) = self.micro_step(batch).await?;
            speed.compute += t0.elapsed().as_secs_f64();
            speed.trained += 1;
            self.pos.batch_in_epoch = i + 1;
            self.pos.epoch_loss_sum += f64::from(loss);
            self.pos.global_batches += 1;
            let tokens_per_s = speed.tokens_per_s();
            if stepped {
                self.metric(TrainRow::Step {
                    epoch,
                    step,
                    batch: (i + 1) as u64,
                    loss: Some(loss),
                    tokens_per_s: Some(tokens_per_s),
                    lr: self.config.lr,
                    time: None,
                    wall_s: None,
                })?;
                observer.event(&Event::Step { epoch, step, loss });
            }
            observer.event(&Event::Batch(Progress {
                epoch,
                batch: i + 1,
                batches: n,
                loss,
                running_loss: self.pos.epoch_loss_sum / (i + 1) as f64,
                tokens_per_s,
            }));
        }
        Ok(Some(speed))
    }

    /// One batch forward and backward off the async runtime (an optimizer
    /// step when it completes an accumulation group): the unscaled loss,
    /// whether a step was taken, and the steps so far.
    async fn micro_step(&mut self, batch: Batch) -> Result<(f32, bool, u64), MinerError> {
        let mut trainer = self
            .trainer
            .take()
            .ok_or_else(|| MinerError::Task("a training step failed earlier".into()))?;
        let (trainer, result) = tokio::task::spawn_blocking(move || {
            let r = trainer.micro_step(&batch);
            (trainer, r)
        })
        .await
        .map_err(MinerError::Join)?;
        let stepped = trainer.pending_micro_steps() == 0;
        let step = trainer.steps();
        self.trainer = Some(trainer);
        Ok((result?, stepped, step))
    }

    /// Closes `epoch` of `n` batches trained at `speed` on `pages`: the
    /// position moves to the next epoch, a new best model is saved, the
    /// epoch's metrics line and a checkpoint are written, and the end is
    /// reported.
    async fn end_epoch(
        &mut self,
        epoch: u64,
        n: usize,
        speed: Speed,
        (page_seed, pages): (u64, Vec<u64>),
        observer: &mut dyn Observer,
    ) -> Result<EpochSummary, MinerError> {
        let avg_loss = self.pos.epoch_loss_sum / n as f64;
        let improved = avg_loss < self.pos.best_avg_loss.unwrap_or(f64::INFINITY);
        self.pos.epoch += 1;
        self.pos.batch_in_epoch = 0;
        self.pos.epoch_loss_sum = 0.0;
        if improved {
            self.pos.best_avg_loss = Some(avg_loss);
            let best = self.run.best_dir();
            self.save_model(&best).await?;
            info!(epoch, avg_loss, dir = %best.display(), "new best average loss; model saved");
            observer.event(&Event::BestSaved {
                path: &best,
                avg_loss,
            });
        }
        let summary = EpochSummary {
            epoch,
            avg_loss,
            batches: n,
            steps: self.trainer()?.steps(),
            tokens_per_s: speed.tokens_per_s(),
            train_seconds: speed.compute,
            improved,
            best_avg_loss: self.pos.best_avg_loss.unwrap_or(f64::INFINITY),
            page_seed,
            pages,
        };
        self.metric(TrainRow::Epoch {
            epoch,
            step: summary.steps,
            loss: Some(avg_loss),
            tokens_per_s: Some(summary.tokens_per_s),
            lr: self.config.lr,
            best: improved,
            time: None,
            wall_s: None,
        })?;
        self.save_checkpoint().await?;
        observer.event(&Event::EpochEnd(&summary));
        Ok(summary)
    }

    /// Appends a metrics line with the wall time.
    fn metric(&self, row: TrainRow) -> Result<(), MinerError> {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let row = row.stamped(unix, self.started.elapsed().as_secs_f64());
        // Through a JSON map: the keys come out in the order the file has
        // always had (sorted), whatever the field order.
        let line = serde_json::to_value(&row)
            .map_err(|e| MinerError::Task(format!("cannot serialise a metrics row: {e}")))?;
        let path = self.run.metrics_file();
        append_line(&path, &line.to_string()).map_err(MinerError::io(&path))
    }

    async fn save_model(&mut self, dir: &Path) -> Result<(), MinerError> {
        let trainer = self.trainer()?;
        // A frozen copy, so the save runs off the async runtime.
        let model = trainer.model()?;
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || model.save(&dir))
            .await
            .map_err(MinerError::Join)??;
        Ok(())
    }

    /// Writes `checkpoint/` whole: the current weights, the optimizer state
    /// and the position, staged then swapped in.
    pub async fn save_checkpoint(&mut self) -> Result<(), MinerError> {
        let root = self.run.root().to_path_buf();
        let stage = tempfile::Builder::new()
            .prefix(".tmp-checkpoint-")
            .tempdir_in(&root)
            .map_err(MinerError::io(&root))?;
        let trainer = self
            .trainer
            .take()
            .ok_or_else(|| MinerError::Task("a training step failed earlier".into()))?;
        let staged = stage.path().to_path_buf();
        let pos = self.pos.clone();
        let (trainer, result) = tokio::task::spawn_blocking(move || {
            let r = (|| -> Result<(), MinerError> {
                trainer.save(&staged.join(CHECKPOINT_MODEL))?;
                trainer.save_state(&staged.join(CHECKPOINT_OPTIMIZER))?;
                let p = staged.join(CHECKPOINT_POSITION);
                atomic_write_json(&p, &pos).map_err(MinerError::io(&p))?;
                Ok(())
            })();
            (trainer, r)
        })
        .await
        .map_err(MinerError::Join)?;
        self.trainer = Some(trainer);
        result?;
        let dst = self.run.checkpoint_dir();
        replace_dir(stage.path(), &dst).map_err(MinerError::io(&dst))?;
        let _ = stage.keep();
        Ok(())
    }
}

/// Reloads the best model of a run and checks it as a validator would
/// (against `competition` where given: parameter range, architecture);
/// returns its directory.
async fn checked_best(
    run: &RunDir,
    competition: Option<&pretrain_core::rules::CompetitionSpec>,
) -> Result<std::path::PathBuf, MinerError> {
    let best = run.best_dir();
    recover_dir(&best).map_err(MinerError::io(&best))?;
    let b = best.clone();
    let (parameters, architecture) = tokio::task::spawn_blocking(move || {
        load_local_model(&b, &Device::Cpu).map(|m| {
            (
                m.stored_values(),
                m.config().architecture().class_name().to_string(),
            )
        })
    })
    .await
    .map_err(MinerError::Join)??;
    if let Some(competition) = competition {
        competition
            .check_model(&pretrain_core::rules::schedule::ModelFacts {
                parameters,
                architecture: &architecture,
            })
            .map_err(|e| MinerError::Rejected {
                path: best.display().to_string(),
                reason: e.to_string(),
            })?;
    }
    Ok(best)
}

/// Reloads the best model of a run, checks it as a validator of
/// `protocol` would ([`Protocol::entered`]: under the competitions
/// against `competition` too), and pushes it ([`push_model`]: upload, then
/// commit, retrying while rate-limited). Under the competitions the caller
/// makes the repo public afterwards.
#[allow(clippy::too_many_arguments)]
pub async fn push_best_model(
    run: &RunDir,
    hub: &dyn ModelHub,
    chain: &dyn Chain,
    hotkey: &Hotkey,
    repo: &pretrain_core::RepoId,
    protocol: Protocol,
    competition: &pretrain_core::rules::CompetitionSpec,
    options: &PushOptions,
) -> Result<Pushed, MinerError> {
    let best = checked_best(run, protocol.entered(competition)).await?;
    Ok(push_model(
        hub,
        chain,
        hotkey,
        &best,
        repo,
        protocol,
        competition.id,
        options,
    )
    .await?)
}

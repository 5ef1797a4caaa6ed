//! What a person watches while `pretrain mine` trains: a bar per epoch on a
//! terminal (one log line per epoch otherwise), and the opt-in W&B run and
//! Prometheus figures fed from the session's events.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use pretrain_neurons::miner::{
    EpochSummary, Event, Observer, Progress, SessionError, SessionObserver,
};
use pretrain_neurons::Pushed;
use pretrain_telemetry::prometheus::{MinerMetrics, Outcome};
use pretrain_telemetry::wandb::{self, Run};
use tracing::{info, warn};

/// Draws what a person watches: a bar per epoch on a terminal, one log line
/// per epoch otherwise.
pub(super) struct Watch {
    bar: Option<ProgressBar>,
    tty: bool,
    /// The opt-in W&B run.
    wandb: Option<Run>,
    /// The Prometheus figures (`--metrics.port`).
    metrics: Option<MinerMetrics>,
    /// Batches of the epoch so far (the original's `n_batches`).
    batches: usize,
    tokens_per_s: f64,
}

impl Watch {
    pub(super) fn new(wandb: Option<Run>, metrics: Option<MinerMetrics>) -> Self {
        Self {
            bar: None,
            tty: std::io::stderr().is_terminal(),
            wandb,
            metrics,
            batches: 0,
            tokens_per_s: 0.0,
        }
    }

    async fn finish_wandb(&mut self, exit_code: i32) {
        let Some(run) = self.wandb.take() else { return };
        match tokio::time::timeout(std::time::Duration::from_secs(30), run.finish(exit_code)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("W&B: the run did not finish cleanly: {e}"),
            Err(_) => warn!("W&B: the run's last lines were not sent within 30 s"),
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn epoch_start(
        &mut self,
        epoch: u64,
        page_seed: u64,
        pages: usize,
        batches: usize,
        done: usize,
    ) {
        info!(epoch, page_seed, pages, batches, "epoch {epoch}: training");
        if self.tty {
            let bar = ProgressBar::new(batches as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} batches {msg} ({elapsed}<{eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(epoch.to_string());
            bar.set_position(done as u64);
            self.bar = Some(bar);
        }
    }

    fn batch(&mut self, p: &Progress) {
        self.batches = p.batch;
        self.tokens_per_s = p.tokens_per_s;
        if let Some(b) = &self.bar {
            b.set_position(p.batch as u64);
            b.set_message(format!(
                "loss {:.4} (running {:.4}) {:.0} tok/s",
                p.loss, p.running_loss, p.tokens_per_s
            ));
        }
    }

    fn step(&mut self, step: u64, loss: f32) {
        if let Some(m) = &self.metrics {
            m.loss.set(f64::from(loss));
            m.tokens_per_second.set(self.tokens_per_s);
        }
        if let Some(run) = &mut self.wandb {
            // The row the original logs: {loss, n_batches} at step n_acc_steps.
            let row = wandb::miner::step_row(f64::from(loss), self.batches as u64);
            if let Err(e) = run.log(step, row) {
                warn!("W&B: step {step} not logged: {e}");
            }
        }
    }

    fn epoch_end(&mut self, s: &EpochSummary) {
        if let Some(m) = &self.metrics {
            m.epochs.inc();
        }
        self.finish();
        info!(
            "epoch {} average loss {:.6} ({} batches, {} steps, {:.1} tokens/s){}",
            s.epoch,
            s.avg_loss,
            s.batches,
            s.steps,
            s.tokens_per_s,
            if s.improved { ", new best" } else { "" }
        );
    }
}

impl Observer for Watch {
    fn event(&mut self, event: &Event<'_>) {
        match event {
            Event::EpochStart {
                epoch,
                page_seed,
                pages,
                batches,
                done,
            } => self.epoch_start(*epoch, *page_seed, pages.len(), *batches, *done),
            Event::Batch(p) => self.batch(p),
            Event::Step { step, loss, .. } => self.step(*step, *loss),
            Event::EpochEnd(s) => self.epoch_end(s),
            Event::BestSaved { .. } => {}
            Event::Stopped { epoch, batch } => {
                self.finish();
                info!(epoch, batch, "stopped; checkpoint saved");
            }
        }
    }
}

impl SessionObserver for Watch {
    fn pushed(&mut self, result: Result<&Pushed, &SessionError>) {
        let outcome = if result.is_ok() {
            Outcome::Pushed
        } else {
            Outcome::Failed
        };
        if let Some(m) = &self.metrics {
            m.pushes.with_label_values(&[outcome.as_str()]).inc();
        }
    }

    async fn training_ended(&mut self, stopped: bool) {
        self.finish();
        self.finish_wandb(if stopped { 1 } else { 0 }).await;
    }
}

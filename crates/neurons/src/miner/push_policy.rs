//! When the miner pushes: the one place that decides it (the original
//! miner's rule). A model is pushed only when its epoch average loss is
//! below `--avg_loss_upload_threshold`; with `--push_every_epoch` after each
//! epoch that beats every earlier one, and in any case once at the end,
//! unless that best model is already the one pushed.

use super::EpochSummary;

/// What the policy decides once training has ended (not stopped, online).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalPush {
    /// Push the best model now.
    Push,
    /// The best model is the one already pushed: nothing to do.
    AlreadyPushed,
    /// The best average loss is not below the threshold: nothing is pushed.
    NotMet,
}

/// The push rule of a mining session and what it has pushed so far.
#[derive(Debug, Clone, PartialEq)]
pub struct PushPolicy {
    threshold: f64,
    every_epoch: bool,
    /// The average loss of the model pushed last (infinite: none yet).
    pushed_loss: f64,
}

impl PushPolicy {
    /// Pushes below `threshold` (0: never, losses are not negative); with
    /// `every_epoch` also after each improving epoch.
    pub fn new(threshold: f64, every_epoch: bool) -> Self {
        Self {
            threshold,
            every_epoch,
            pushed_loss: f64::INFINITY,
        }
    }

    /// The loss a model must be below to be pushed.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Whether to push right after `epoch` (`--push_every_epoch`): it saved a
    /// new best model and that model beats the threshold.
    pub fn after_epoch(&self, epoch: &EpochSummary) -> bool {
        self.every_epoch && epoch.improved && epoch.avg_loss < self.threshold
    }

    /// Notes that the model of average loss `avg_loss` was pushed (a failed
    /// push is not noted, so the final push tries again).
    pub fn record_push(&mut self, avg_loss: f64) {
        self.pushed_loss = avg_loss;
    }

    /// The decision at the end of training, for the run's best average loss.
    pub fn at_end(&self, best: f64) -> FinalPush {
        if best < self.threshold {
            if best < self.pushed_loss {
                FinalPush::Push
            } else {
                FinalPush::AlreadyPushed
            }
        } else {
            FinalPush::NotMet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: u64, avg_loss: f64, improved: bool) -> EpochSummary {
        EpochSummary {
            epoch,
            avg_loss,
            batches: 10,
            steps: 2,
            tokens_per_s: 1.0,
            train_seconds: 1.0,
            improved,
            best_avg_loss: avg_loss,
            page_seed: 0,
            pages: vec![0],
        }
    }

    #[test]
    fn a_loss_that_does_not_beat_the_threshold_is_not_pushed() {
        let p = PushPolicy::new(3.0, true);
        assert!(!p.after_epoch(&epoch(0, 3.5, true)));
        // Equal is not below.
        assert!(!p.after_epoch(&epoch(0, 3.0, true)));
        assert_eq!(p.at_end(3.5), FinalPush::NotMet);
        assert_eq!(p.at_end(3.0), FinalPush::NotMet);
        // No epoch finished: the best is infinite.
        assert_eq!(p.at_end(f64::INFINITY), FinalPush::NotMet);
    }

    #[test]
    fn a_zero_threshold_never_pushes() {
        let p = PushPolicy::new(0.0, true);
        assert!(!p.after_epoch(&epoch(0, 0.01, true)));
        assert_eq!(p.at_end(0.01), FinalPush::NotMet);
        assert_eq!(p.at_end(0.0), FinalPush::NotMet);
    }

    #[test]
    fn push_every_epoch_pushes_each_improving_epoch_below_the_threshold() {
        let mut p = PushPolicy::new(5.0, true);
        let losses = [4.0, 3.5, 3.9, 3.0];
        let mut best = f64::INFINITY;
        let mut pushed = Vec::new();
        for (e, &l) in losses.iter().enumerate() {
            let improved = l < best;
            best = best.min(l);
            let s = epoch(e as u64, l, improved);
            if p.after_epoch(&s) {
                pushed.push(e);
                p.record_push(l);
            }
        }
        // Epoch 2 (3.9) did not improve on 3.5: not pushed.
        assert_eq!(pushed, vec![0, 1, 3]);
        // The last push was the best model: the end pushes nothing more.
        assert_eq!(p.at_end(best), FinalPush::AlreadyPushed);
    }

    #[test]
    fn without_push_every_epoch_only_the_end_pushes() {
        let p = PushPolicy::new(5.0, false);
        assert!(!p.after_epoch(&epoch(0, 1.0, true)));
        assert_eq!(p.at_end(1.0), FinalPush::Push);
    }

    #[test]
    fn the_final_push_happens_once() {
        let mut p = PushPolicy::new(5.0, false);
        assert_eq!(p.at_end(2.0), FinalPush::Push);
        p.record_push(2.0);
        assert_eq!(p.at_end(2.0), FinalPush::AlreadyPushed);
    }

    #[test]
    fn a_failed_epoch_push_is_retried_at_the_end() {
        let mut p = PushPolicy::new(5.0, true);
        assert!(p.after_epoch(&epoch(0, 4.0, true)));
        p.record_push(4.0);
        // Epoch 1 improved to 3.0 but its push failed (not recorded).
        assert!(p.after_epoch(&epoch(1, 3.0, true)));
        assert_eq!(p.at_end(3.0), FinalPush::Push);
        // An earlier pushed model that is not the best: the best is pushed.
        assert_eq!(p.at_end(3.9), FinalPush::Push);
    }
}

//! What operators and the community watch: Weights & Biases runs in the
//! original's format ([`wandb`]: the validator's step log every dashboard
//! reads, the miner's opt-in training log; online through W&B's HTTP
//! protocol, or offline as `.wandb` files for `wandb sync`), and a Prometheus
//! text endpoint ([`prometheus`]).
//!
//! Nothing here may stop the work it observes: a W&B server that is down or
//! slow costs a warning and a buffered line, never a validator step.

pub mod prometheus;
pub mod wandb;

//! Training: forward in train mode (dropout on), the fused cross-entropy,
//! backward, gradient accumulation and torch's AdamW.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::loss::cross_entropy;
use crate::model::{CausalLm, Model};
use crate::nets::{self, Mode, Weights};

/// Optimizer settings; the defaults are the miner's (torch's AdamW defaults
/// with the original's lr 1e-5 and weight decay 0.01).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Adam beta1.
    pub beta1: f64,
    /// Adam beta2.
    pub beta2: f64,
    /// Adam epsilon.
    pub eps: f64,
    /// Micro-batches per optimizer step; each loss is divided by this.
    pub accumulation_steps: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 1e-5,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            accumulation_steps: 1,
        }
    }
}

/// AdamW moments of one parameter.
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

/// Trains a [`Model`] in place: call [`Trainer::micro_step`] per batch; every
/// `accumulation_steps` micro-batches it runs an optimizer step.
pub struct Trainer {
    config: TrainConfig,
    model: Model,
    vars: BTreeMap<String, Var>,
    moments: BTreeMap<String, Moments>,
    grads: BTreeMap<String, Tensor>,
    micro: usize,
    steps: u64,
}

impl Trainer {
    /// Makes the model's weights trainable.
    pub fn new(model: Model, config: TrainConfig) -> Result<Self> {
        if config.accumulation_steps == 0 {
            return Err(ModelError::Input(
                "accumulation_steps must be at least 1".into(),
            ));
        }
        let (cfg, json, weights, device) = model.into_parts();
        let mut vars = BTreeMap::new();
        let mut tracked = Weights::new();
        for (name, t) in weights {
            let var = Var::from_tensor(&t)?;
            tracked.insert(name.clone(), var.as_tensor().clone());
            vars.insert(name, var);
        }
        Ok(Self {
            config,
            model: Model::from_trusted_parts(cfg, json, tracked, device),
            vars,
            moments: BTreeMap::new(),
            grads: BTreeMap::new(),
            micro: 0,
            steps: 0,
        })
    }

    /// The training settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Forward (train mode) and backward on one micro-batch; the loss is divided
    /// by `accumulation_steps` before backward and gradients add up; after the
    /// last micro-batch of a group the optimizer steps. Returns the unscaled loss.
    pub fn micro_step(&mut self, batch: &[Vec<u32>]) -> Result<f32> {
        let m = &self.model;
        let h = m.hidden(batch, Mode::Train)?;
        let (b, t) = (batch.len(), batch[0].len());
        let d = h.dim(1)?;
        // Positions 0..T-1 of each row predict tokens 1..T.
        let h = h
            .reshape((b, t, d))?
            .narrow(1, 0, t - 1)?
            .reshape((b * (t - 1), d))?;
        let out = nets::output_weight(m.config(), m.weights())?;
        let logits = h.matmul(&out.t()?)?;
        let targets: Vec<u32> = batch.iter().flat_map(|r| r[1..].iter().copied()).collect();
        let loss = cross_entropy(&logits, &targets)?;
        let value = loss.to_vec0::<f32>()?;
        let scaled = (loss / self.config.accumulation_steps as f64)?;
        let mut grads = scaled.backward()?;
        for (name, var) in &self.vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                let g = match self.grads.remove(name) {
                    Some(prev) => (prev + g)?,
                    None => g,
                };
                self.grads.insert(name.clone(), g);
            }
        }
        self.micro += 1;
        if self.micro == self.config.accumulation_steps {
            self.optimizer_step()?;
        }
        Ok(value)
    }

    /// One AdamW step with the accumulated gradients (as torch's
    /// single-tensor AdamW), then zero the gradients.
    pub fn optimizer_step(&mut self) -> Result<()> {
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = (c.lr / bc1) as f32;
        let decay = (1.0 - c.lr * c.weight_decay) as f32;
        let b2 = c.beta2 as f32;
        let (one_b1, one_b2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
        let (bc2_sqrt, eps) = (bc2_sqrt as f32, c.eps as f32);
        let grads = std::mem::take(&mut self.grads);
        for (name, g) in grads {
            let Some(var) = self.vars.get(&name) else {
                continue;
            };
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            let mut p: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            let mom = self.moments.entry(name).or_insert_with(|| Moments {
                m: vec![0.0; g.len()],
                v: vec![0.0; g.len()],
            });
            p.par_iter_mut()
                .zip(mom.m.par_iter_mut())
                .zip(mom.v.par_iter_mut())
                .zip(g.par_iter())
                .with_min_len(4096)
                .for_each(|(((p, m), v), &g)| {
                    *p *= decay;
                    // torch's lerp with weight < 0.5: m + w * (g - m).
                    *m += one_b1 * (g - *m);
                    *v = *v * b2 + one_b2 * g * g;
                    let denom = v.sqrt() / bc2_sqrt + eps;
                    *p -= step_size * (*m / denom);
                });
            let new = Tensor::from_vec(p, var.as_tensor().shape(), var.as_tensor().device())?;
            var.set(&new)?;
        }
        self.micro = 0;
        Ok(())
    }

    /// Eval-mode loss of the current weights (no dropout, no graph).
    pub fn eval_loss(&self, batch: &[Vec<u32>]) -> Result<f32> {
        self.snapshot_view().loss(batch)
    }

    /// A model sharing the current weights, detached from training (it sees
    /// later optimizer steps; use [`Trainer::model`] for a frozen copy).
    fn snapshot_view(&self) -> Model {
        let weights: Weights = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        Model::from_trusted_parts(
            self.model.config().clone(),
            self.model.config_json().clone(),
            weights,
            self.model.device().clone(),
        )
    }

    /// A frozen copy of the current model.
    pub fn model(&self) -> Result<Model> {
        let mut weights = Weights::new();
        for (k, v) in &self.vars {
            weights.insert(k.clone(), v.as_tensor().detach().copy()?);
        }
        Ok(Model::from_trusted_parts(
            self.model.config().clone(),
            self.model.config_json().clone(),
            weights,
            self.model.device().clone(),
        ))
    }

    /// Ends training and returns the model with its current weights (no copy).
    pub fn into_model(self) -> Model {
        self.snapshot_view()
    }

    /// Saves the current model as a `save_pretrained` directory (atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.snapshot_view().save(dir)
    }
}

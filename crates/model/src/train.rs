//! Training: forward in train mode (dropout on), the fused cross-entropy,
//! backward, gradient accumulation and torch's AdamW.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::hf::safetensors::{self as st, SafetensorsFile};
use crate::kernels::embedding::GradSink;
use crate::kernels::loss::lm_head_cross_entropy;
use crate::kernels::optimizer::{self, AdamW, Moments, StepCoeffs};
use crate::mode::mix_seed;
use crate::model::{CausalLm, Model, Parts, Weights};
use crate::options::ComputeDtype;

/// File of [`Trainer::save_state`] holding the optimizer's tensors.
pub const STATE_TENSORS_FILE: &str = "optimizer.safetensors";
/// File of [`Trainer::save_state`] holding the counters.
pub const STATE_COUNTERS_FILE: &str = "trainer.json";

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

impl TrainConfig {
    /// The optimizer's own settings.
    fn adamw(&self) -> AdamW {
        AdamW {
            lr: self.lr,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        }
    }
}

/// Trains a [`Model`] in place: call [`Trainer::micro_step`] per batch; every
/// `accumulation_steps` micro-batches it runs an optimizer step.
pub struct Trainer {
    config: TrainConfig,
    /// The model over the variables; in bf16 rebuilt before each micro-batch
    /// (its bf16 copies are taken from the f32 master weights).
    model: Model,
    parts: Parts,
    vars: BTreeMap<String, Var>,
    moments: BTreeMap<String, Moments>,
    grads: BTreeMap<String, Tensor>,
    micro: usize,
    steps: u64,
    seed: u64,
    micro_total: u64,
    /// The weights changed since the network was built (bf16 CPU path:
    /// its packs are stale).
    repack: bool,
}

/// The counters of a saved trainer state (`trainer.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerCounters {
    /// Optimizer steps taken.
    pub steps: u64,
    /// Micro-batches accumulated since the last optimizer step.
    pub micro: usize,
    /// Micro-batches ever run (picks each one's dropout masks).
    pub micro_total: u64,
    /// The dropout seed.
    pub seed: u64,
    /// The learning rate in force when saved (informational).
    pub lr: f64,
    /// Micro-batches per optimizer step when saved.
    pub accumulation_steps: usize,
}

impl Trainer {
    /// Makes the model's weights trainable.
    pub fn new(model: Model, config: TrainConfig) -> Result<Self> {
        if config.accumulation_steps == 0 {
            return Err(ModelError::Input(
                "accumulation_steps must be at least 1".into(),
            ));
        }
        let (parts, weights) = model.into_parts()?;
        let mut vars = BTreeMap::new();
        let mut tracked = Weights::new();
        for (name, t) in weights {
            let var = Var::from_tensor(&t)?;
            tracked.insert(name.clone(), var.as_tensor().clone());
            vars.insert(name, var);
        }
        Ok(Self {
            config,
            model: Model::from_trusted_parts(&parts, tracked)?,
            parts,
            vars,
            moments: BTreeMap::new(),
            grads: BTreeMap::new(),
            micro: 0,
            steps: 0,
            seed: 0,
            micro_total: 0,
            repack: false,
        })
    }

    /// Sets the dropout seed: micro-batch `n` (counted over the trainer's
    /// life) uses masks drawn from `(seed, n)`, so the same seed, weights and
    /// batches give the same losses.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The dropout seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Micro-batches run so far (over the trainer's life, saved state included).
    pub fn micro_steps(&self) -> u64 {
        self.micro_total
    }

    /// Micro-batches accumulated since the last optimizer step.
    pub fn pending_micro_steps(&self) -> usize {
        self.micro
    }

    /// Drops the accumulated gradients without stepping (torch's
    /// `optimizer.zero_grad()`, which the original calls at each epoch start).
    pub fn zero_grad(&mut self) {
        self.grads.clear();
        self.micro = 0;
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
        let stale = std::mem::take(&mut self.repack) || !self.parts.path.is_bf16();
        if self.parts.options.dtype != ComputeDtype::F32 && stale {
            // Fresh low-precision copies of the master weights after the last
            // step: every micro-batch on the portable path (casts on the
            // graph), once per optimizer step on the CPU's bf16 path (its
            // packs, made on first use).
            let tracked = self
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect();
            self.model = Model::from_trusted_parts(&self.parts, tracked)?;
        }
        let path = self.parts.path;
        let m = &self.model;
        // The output head's weight gradient (with a tied embedding's rows)
        // is written here in place rather than summed by candle into new
        // [V, d] tensors (see `kernels::embedding`).
        let head_sink = GradSink::default();
        let h = {
            let h = m.hidden_train(batch, mix_seed(self.seed, self.micro_total), &head_sink)?;
            let (b, t) = (batch.len(), batch[0].len());
            let d = h.dim(1)?;
            // Positions 0..T-1 of each row predict tokens 1..T.
            h.reshape((b, t, d))?
                .narrow(1, 0, t - 1)?
                .reshape((b * (t - 1), d))?
        };
        let targets: Vec<u32> = batch.iter().flat_map(|r| r[1..].iter().copied()).collect();
        let packs = m.head_packs();
        let loss = lm_head_cross_entropy(path, &h, m.lm_head(), &targets, Some(&head_sink), packs)?;
        let value = loss.to_dtype(DType::F32)?.to_vec0::<f32>()?;
        let mut grads = (loss / self.config.accumulation_steps as f64)?.backward()?;
        // The graph (every activation) is freed here, before the optimizer runs.
        drop(h);
        let head_id = m.lm_head().id();
        for (name, var) in &self.vars {
            let mut g = grads.remove(var.as_tensor());
            // The sink holds the head's gradient on the fast path, where the
            // head is the variable itself (f32); elsewhere candle has it all.
            if var.as_tensor().id() == head_id {
                if let Some(sunk) = head_sink.take() {
                    let t = var.as_tensor();
                    let sunk = Tensor::from_vec(sunk, t.shape(), t.device())?;
                    g = Some(match g {
                        Some(g) => (sunk + g)?,
                        None => sunk,
                    });
                }
            }
            if let Some(g) = g {
                let g = match self.grads.remove(name) {
                    Some(prev) => (prev + g)?,
                    None => g,
                };
                self.grads.insert(name.clone(), g);
            }
        }
        drop(grads);
        self.micro += 1;
        self.micro_total += 1;
        if self.micro == self.config.accumulation_steps {
            self.optimizer_step()?;
        }
        Ok(value)
    }

    /// One AdamW step with the accumulated gradients (as torch's
    /// single-tensor AdamW), then zero the gradients.
    pub fn optimizer_step(&mut self) -> Result<()> {
        self.steps += 1;
        let coeffs = StepCoeffs::new(&self.config.adamw(), self.steps);
        let grads = std::mem::take(&mut self.grads);
        for (name, g) in grads {
            let Some(var) = self.vars.get(&name) else {
                continue;
            };
            let mom = match self.moments.entry(name) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(Moments::zeros(self.parts.path, var.as_tensor())?)
                }
            };
            // In place on the weights the network holds: no copy of either.
            optimizer::step(&coeffs, var, &g, mom)?;
        }
        self.repack = true;
        self.micro = 0;
        Ok(())
    }

    /// Eval-mode loss of the current weights (no dropout, no graph).
    pub fn eval_loss(&self, batch: &[Vec<u32>]) -> Result<f32> {
        self.snapshot_view()?.loss(batch)
    }

    /// A model sharing the current weights, detached from training (it sees
    /// later optimizer steps; use [`Trainer::model`] for a frozen copy).
    fn snapshot_view(&self) -> Result<Model> {
        // Detached: evaluation through these records no graph.
        let weights: Weights = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        Model::from_trusted_parts(&self.parts, weights)
    }

    /// A frozen copy of the current model.
    pub fn model(&self) -> Result<Model> {
        let mut weights = Weights::new();
        for (k, v) in &self.vars {
            weights.insert(k.clone(), v.as_tensor().detach().copy()?);
        }
        Model::from_trusted_parts(&self.parts, weights)
    }

    /// Ends training and returns the model with its current weights (no copy).
    pub fn into_model(self) -> Result<Model> {
        self.snapshot_view()
    }

    /// Saves the current model as a `save_pretrained` directory (atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.snapshot_view()?.save(dir)
    }

    /// [`Trainer::save`] with the weights stored as `dtype` (see [`Model::save_as`]).
    pub fn save_as(&self, dir: &Path, dtype: DType) -> Result<()> {
        self.snapshot_view()?.save_as(dir, dtype)
    }

    /// Saves what [`Trainer::load_state`] needs to continue exactly where this
    /// trainer is: AdamW moments and pending accumulated gradients
    /// (`optimizer.safetensors`, f32) and the counters and seed
    /// (`trainer.json`). The directory is staged and swapped in whole, so a
    /// crash leaves the previous state intact. The weights are not included:
    /// save them with [`Trainer::save`].
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| ModelError::io(&parent, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-state-")
            .tempdir_in(&parent)
            .map_err(|e| ModelError::io(&parent, e))?;
        let device = self.model.device();
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (name, mom) in &self.moments {
            let Some(var) = self.vars.get(name) else {
                continue;
            };
            let (m, v) = mom.tensors(var.as_tensor().dims(), device)?;
            tensors.push((format!("exp_avg.{name}"), m));
            tensors.push((format!("exp_avg_sq.{name}"), v));
        }
        for (name, g) in &self.grads {
            tensors.push((format!("grad.{name}"), g.clone()));
        }
        st::write(&tmp.path().join(STATE_TENSORS_FILE), &tensors, &[])?;
        let counters = TrainerCounters {
            steps: self.steps,
            micro: self.micro,
            micro_total: self.micro_total,
            seed: self.seed,
            lr: self.config.lr,
            accumulation_steps: self.config.accumulation_steps,
        };
        let json = tmp.path().join(STATE_COUNTERS_FILE);
        pretrain_core::fsio::atomic_write_json(&json, &counters)
            .map_err(|e| ModelError::io(&json, e))?;
        pretrain_core::fsio::replace_dir(tmp.path(), dir).map_err(|e| ModelError::io(dir, e))?;
        let _ = tmp.keep();
        Ok(())
    }

    /// Restores a state written by [`Trainer::save_state`] onto this
    /// trainer (whose model holds the weights saved with it). Every tensor
    /// must name a parameter of the model with its shape.
    pub fn load_state(&mut self, dir: &Path) -> Result<TrainerCounters> {
        if !dir.exists() {
            pretrain_core::fsio::recover_dir(dir).map_err(|e| ModelError::io(dir, e))?;
        }
        let json = dir.join(STATE_COUNTERS_FILE);
        let text = fs::read(&json).map_err(|e| ModelError::io(&json, e))?;
        let counters: TrainerCounters = serde_json::from_slice(&text).map_err(|e| {
            ModelError::Input(format!("{} is not a trainer state: {e}", json.display()))
        })?;
        let file = SafetensorsFile::open(&dir.join(STATE_TENSORS_FILE))?;
        let device = self.model.device().clone();
        let mut exp_avg: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        let mut exp_avg_sq: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        let mut grads = BTreeMap::new();
        for info in &file.tensors {
            let (kind, name) = info.name.split_once('.').ok_or_else(|| {
                ModelError::st(
                    STATE_TENSORS_FILE,
                    format!("unexpected tensor {}", info.name),
                )
            })?;
            let var = self.vars.get(name).ok_or_else(|| {
                ModelError::st(
                    STATE_TENSORS_FILE,
                    format!("tensor {} names no parameter of the model", info.name),
                )
            })?;
            if info.shape.as_slice() != var.as_tensor().dims() {
                return Err(ModelError::WrongShape {
                    name: info.name.clone(),
                    found: info.shape.clone(),
                    expected: var.as_tensor().dims().to_vec(),
                });
            }
            let t = file.load(info, &device)?;
            match kind {
                "exp_avg" => {
                    exp_avg.insert(name.to_string(), t.flatten_all()?.to_vec1()?);
                }
                "exp_avg_sq" => {
                    exp_avg_sq.insert(name.to_string(), t.flatten_all()?.to_vec1()?);
                }
                "grad" => {
                    grads.insert(name.to_string(), t);
                }
                _ => {
                    return Err(ModelError::st(
                        STATE_TENSORS_FILE,
                        format!("unexpected tensor {}", info.name),
                    ))
                }
            }
        }
        let mut moments = BTreeMap::new();
        for (name, m) in exp_avg {
            let v = exp_avg_sq.remove(&name).ok_or_else(|| {
                ModelError::st(STATE_TENSORS_FILE, format!("exp_avg_sq.{name} is missing"))
            })?;
            let param = self.vars.get(&name).map(|v| v.as_tensor().clone());
            let Some(param) = param else { continue };
            moments.insert(name, Moments::from_host(self.parts.path, m, v, &param)?);
        }
        if let Some(name) = exp_avg_sq.keys().next() {
            return Err(ModelError::st(
                STATE_TENSORS_FILE,
                format!("exp_avg.{name} is missing"),
            ));
        }
        self.moments = moments;
        self.grads = grads;
        self.steps = counters.steps;
        self.micro = counters.micro;
        self.repack = true;
        self.micro_total = counters.micro_total;
        self.seed = counters.seed;
        Ok(counters)
    }
}

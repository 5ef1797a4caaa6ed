//! [`Model`]: a loaded GPT-2 or LLaMA with its config, Hugging Face
//! directory I/O, the eval loss and logits.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::Value;

use crate::config::{
    default_gpt2_config_json, generation_config_json, to_hf_json, Architecture, ModelConfig,
};
use crate::error::{ModelError, Result};
use crate::kernels::embedding::GradSink;
use crate::kernels::loss::eval_loss_from_hidden;
use crate::nn::{Mode, VarBuilder};
use crate::st::{self, SafetensorsFile, TensorInfo};
use crate::{gpt2, llama};

/// Named weights, Hugging Face names to tensors (f32).
pub type Weights = BTreeMap<String, Tensor>;

/// File name of single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the index of sharded weights.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// File name of the config.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the generation config.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// What the miner and validator call on a model, whatever its architecture.
pub trait CausalLm: Send + Sync {
    /// The architecture.
    fn architecture(&self) -> Architecture;
    /// Parameter count (each distinct tensor once).
    fn param_count(&self) -> u64;
    /// Logits `[B, T, V]` for a batch of equal-length token rows (eval mode).
    fn logits(&self, batch: &[Vec<u32>]) -> Result<Tensor>;
    /// Mean next-token cross-entropy with `labels = inputs` (eval mode).
    fn loss(&self, batch: &[Vec<u32>]) -> Result<f32>;
}

/// A causal language model: config, `config.json` as read, and f32 weights
/// under their Hugging Face names, with the network built from them once.
#[derive(Clone)]
pub struct Model {
    config: ModelConfig,
    config_json: Value,
    weights: Weights,
    net: Net,
    device: Device,
}

/// The network of one architecture, holding (shared) handles to the weights.
#[derive(Clone)]
enum Net {
    Gpt2(gpt2::Model),
    Llama(llama::Model),
}

impl Net {
    fn new(config: &ModelConfig, weights: &Weights) -> Result<Self> {
        let vb = VarBuilder::new(weights);
        Ok(match config {
            ModelConfig::Gpt2(c) => Net::Gpt2(gpt2::Model::new(c, vb)?),
            ModelConfig::Llama(c) => Net::Llama(llama::Model::new(c, vb)?),
        })
    }

    fn forward(
        &self,
        ids: &Tensor,
        mode: Mode,
        seed: u64,
        head_sink: Option<&GradSink>,
    ) -> Result<Tensor> {
        match self {
            Net::Gpt2(m) => m.forward(ids, mode, seed, head_sink),
            Net::Llama(m) => m.forward(ids, mode, seed),
        }
    }

    fn lm_head(&self) -> &Tensor {
        match self {
            Net::Gpt2(m) => m.lm_head(),
            Net::Llama(m) => m.lm_head(),
        }
    }
}

/// Checks a batch of token rows against the model and makes the `[B, T]` u32 tensor.
fn ids_tensor(cfg: &ModelConfig, batch: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let b = batch.len();
    if b == 0 {
        return Err(ModelError::Input("empty batch".into()));
    }
    let t = batch[0].len();
    if t < 2 {
        return Err(ModelError::Input(format!(
            "rows need at least 2 tokens for a next-token loss, got {t}"
        )));
    }
    if let Some((i, r)) = batch.iter().enumerate().find(|(_, r)| r.len() != t) {
        return Err(ModelError::Input(format!(
            "rows must have equal length: row 0 has {t} tokens, row {i} has {}",
            r.len()
        )));
    }
    if let Some(max) = cfg.max_positions() {
        if t > max {
            return Err(ModelError::Input(format!(
                "rows of {t} tokens exceed the model's {max} positions"
            )));
        }
    }
    let vocab = cfg.vocab_size();
    if let Some(bad) = batch.iter().flatten().find(|&&x| x as usize >= vocab) {
        return Err(ModelError::Input(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let flat: Vec<u32> = batch.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (b, t), device)?)
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("tensors", &self.weights.len())
            .finish()
    }
}

/// Reads and parses `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<(Value, ModelConfig)> {
    let path = dir.join(CONFIG_FILE);
    // A regular file of bounded size: a link to /dev/zero must not be read until memory runs out.
    let text =
        pretrain_core::bounded::read_regular(&path, pretrain_core::bounded::SMALL_FILE_LIMIT)
            .map_err(|e| ModelError::io(&path, e))?;
    let json: Value = serde_json::from_slice(&text)
        .map_err(|e| ModelError::Config(format!("config.json is not valid JSON: {e}")))?;
    let cfg = ModelConfig::from_json(&json)?;
    Ok((json, cfg))
}

/// Opens the safetensors weights of `dir` (single file or shards); rejects
/// pickle-only directories.
pub fn open_weights(dir: &Path) -> Result<Vec<SafetensorsFile>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![SafetensorsFile::open(&single)?]);
    }
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if index.is_file() {
        let text =
            pretrain_core::bounded::read_regular(&index, pretrain_core::bounded::SMALL_FILE_LIMIT)
                .map_err(|e| ModelError::io(&index, e))?;
        let json: Value = serde_json::from_slice(&text)
            .map_err(|e| ModelError::st(WEIGHTS_INDEX_FILE, format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::st(WEIGHTS_INDEX_FILE, "no weight_map object"))?;
        let mut shards: Vec<&str> = Vec::new();
        for v in map.values() {
            let f = v.as_str().ok_or_else(|| {
                ModelError::st(WEIGHTS_INDEX_FILE, "weight_map values must be file names")
            })?;
            // Only plain file names inside the directory: no path escapes.
            if f.contains('/')
                || f.contains('\\')
                || f.starts_with('.')
                || !f.ends_with(".safetensors")
            {
                return Err(ModelError::st(
                    WEIGHTS_INDEX_FILE,
                    format!("bad shard file name {f:?}"),
                ));
            }
            if !shards.contains(&f) {
                shards.push(f);
            }
        }
        shards.sort_unstable();
        return shards
            .iter()
            .map(|f| SafetensorsFile::open(&dir.join(f)))
            .collect();
    }
    let mut pickles = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if [".bin", ".pt", ".pth", ".ckpt", ".pkl"]
                .iter()
                .any(|s| n.ends_with(s))
            {
                pickles.push(n);
            }
        }
    }
    if !pickles.is_empty() {
        pickles.sort();
        return Err(ModelError::PickleWeights(pickles.join(", ")));
    }
    Err(ModelError::NoWeights(dir.to_path_buf()))
}

/// Maps every tensor the config needs to its file entry, checking shapes.
/// GPT-2 files saved from the bare `GPT2Model` (no `transformer.` prefix) are accepted.
pub fn match_tensors<'a>(
    cfg: &ModelConfig,
    files: &'a [SafetensorsFile],
) -> Result<Vec<(String, &'a SafetensorsFile, &'a TensorInfo)>> {
    let mut found: BTreeMap<&str, (&SafetensorsFile, &TensorInfo)> = BTreeMap::new();
    for f in files {
        for t in &f.tensors {
            if found.insert(t.name.as_str(), (f, t)).is_some() {
                return Err(ModelError::st(
                    f.name(),
                    format!("tensor {} appears twice", t.name),
                ));
            }
        }
    }
    let mut out = Vec::new();
    for (name, shape) in cfg.tensor_shapes() {
        let hit = found
            .get(name.as_str())
            .or_else(|| name.strip_prefix("transformer.").and_then(|n| found.get(n)))
            .filter(|_| {
                cfg.architecture() == Architecture::Gpt2 || !name.starts_with("transformer.")
            });
        let Some(&(f, t)) = hit else {
            return Err(ModelError::MissingTensor(name));
        };
        if t.dtype.is_none() {
            return Err(ModelError::st(
                f.name(),
                format!(
                    "tensor {name} has dtype {}; weights must be F32, F16, BF16 or F64",
                    t.dtype_name
                ),
            ));
        }
        if t.shape != shape {
            return Err(ModelError::WrongShape {
                name,
                found: t.shape.clone(),
                expected: shape,
            });
        }
        out.push((name, f, t));
    }
    Ok(out)
}

/// Box-Muller normal samples with std `std`.
fn normal(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
        let u2: f32 = rng.gen();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let a = 2.0 * std::f32::consts::PI * u2;
        v.push(r * a.cos());
        v.push(r * a.sin());
    }
    v.truncate(n);
    v
}

impl Model {
    /// Loads a Hugging Face `save_pretrained` directory onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        // A save interrupted between its two renames left the old copy aside.
        if !dir.exists() {
            pretrain_core::fsio::recover_dir(dir).map_err(|e| ModelError::io(dir, e))?;
        }
        let (config_json, config) = read_config(dir)?;
        let files = open_weights(dir)?;
        let matched = match_tensors(&config, &files)?;
        let mut weights = Weights::new();
        for (name, f, t) in matched {
            weights.insert(name, f.load(t, device)?);
        }
        Self::assemble(config, config_json, weights, device.clone())
    }

    /// Loads a bare safetensors file (the miner's `--load_model FILE`) with the
    /// given `config.json` value, e.g. [`crate::config::default_gpt2_config_json`].
    pub fn load_weights_file(file: &Path, config_json: Value, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_json(&config_json)?;
        let files = vec![SafetensorsFile::open(file)?];
        let mut weights = Weights::new();
        for (name, f, t) in match_tensors(&config, &files)? {
            weights.insert(name, f.load(t, device)?);
        }
        Self::assemble(config, config_json, weights, device.clone())
    }

    /// A model with fresh random weights from a `config.json` value, initialised
    /// as `transformers` does (normal(0, 0.02), zero biases, unit norms,
    /// GPT-2's residual projections scaled by `1/sqrt(2 n_layer)`).
    pub fn random(config_json: Value, seed: u64, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_json(&config_json)?;
        let std = config_json
            .get("initializer_range")
            .and_then(Value::as_f64)
            .unwrap_or(0.02) as f32;
        let n_layer = match &config {
            ModelConfig::Gpt2(c) => c.n_layer,
            ModelConfig::Llama(c) => c.num_hidden_layers,
        };
        let mut weights = Weights::new();
        for (i, (name, shape)) in config.tensor_shapes().into_iter().enumerate() {
            let n: usize = shape.iter().product();
            let is_norm = name.contains("ln_") || name.contains("norm");
            let data = if name.ends_with(".bias") {
                vec![0.0; n]
            } else if is_norm {
                vec![1.0; n]
            } else {
                let mut rng = StdRng::seed_from_u64(
                    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        .wrapping_add(i as u64),
                );
                let s = if config.architecture() == Architecture::Gpt2
                    && name.ends_with("c_proj.weight")
                {
                    std / ((2 * n_layer) as f32).sqrt()
                } else {
                    std
                };
                normal(&mut rng, n, s)
            };
            weights.insert(name, Tensor::from_vec(data, shape, device)?);
        }
        Self::assemble(config, config_json, weights, device.clone())
    }

    /// The subnet's default GPT-2 (122,268,040 parameters) with random weights.
    pub fn default_gpt2(seed: u64, device: &Device) -> Result<Self> {
        Self::random(default_gpt2_config_json(), seed, device)
    }

    /// Builds a model from parts; weights must match the config's tensors.
    pub fn from_parts(config_json: Value, weights: Weights, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_json(&config_json)?;
        for (name, shape) in config.tensor_shapes() {
            let t = weights
                .get(&name)
                .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
            if t.dims() != shape.as_slice() {
                return Err(ModelError::WrongShape {
                    name,
                    found: t.dims().to_vec(),
                    expected: shape,
                });
            }
        }
        Self::assemble(config, config_json, weights, device.clone())
    }

    /// Builds the network over weights already checked against the config.
    fn assemble(
        config: ModelConfig,
        config_json: Value,
        weights: Weights,
        device: Device,
    ) -> Result<Self> {
        let net = Net::new(&config, &weights)?;
        Ok(Self {
            config,
            config_json,
            weights,
            net,
            device,
        })
    }

    /// The parsed config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// `config.json` as read (all fields, known or not).
    pub fn config_json(&self) -> &Value {
        &self.config_json
    }

    /// The weights under their HF names.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Final hidden states `[B*T, d]`; training masks are drawn at random
    /// (see [`Model::hidden_seeded`] for repeatable ones).
    pub fn hidden(&self, batch: &[Vec<u32>], mode: Mode) -> Result<Tensor> {
        let seed = match mode {
            Mode::Train => rand::random(),
            Mode::Eval => 0,
        };
        self.hidden_seeded(batch, mode, seed)
    }

    /// Final hidden states `[B*T, d]`; in training mode `seed` fixes every
    /// dropout mask (the same seed gives the same masks).
    pub fn hidden_seeded(&self, batch: &[Vec<u32>], mode: Mode, seed: u64) -> Result<Tensor> {
        let ids = ids_tensor(&self.config, batch, &self.device)?;
        self.net.forward(&ids, mode, seed, None)
    }

    /// [`Model::hidden_seeded`] in training mode, where a token embedding
    /// tied to the output head adds its weight gradient to `head_sink`
    /// instead of candle's gradient store.
    pub(crate) fn hidden_train(
        &self,
        batch: &[Vec<u32>],
        seed: u64,
        head_sink: &GradSink,
    ) -> Result<Tensor> {
        let ids = ids_tensor(&self.config, batch, &self.device)?;
        self.net.forward(&ids, Mode::Train, seed, Some(head_sink))
    }

    /// The output projection `[V, d]` (the token embedding when tied).
    pub(crate) fn lm_head(&self) -> &Tensor {
        self.net.lm_head()
    }

    /// Saves as a `save_pretrained` directory: `config.json`,
    /// `generation_config.json`, `model.safetensors` (f32). Written and
    /// fsynced in a temporary directory beside `dir`, then swapped in with
    /// [`pretrain_core::fsio::replace_dir`]: a crash at any moment leaves a
    /// whole directory, the old or the new one (after a crash between the
    /// two renames the old one waits at `<dir>.old`, which
    /// [`Model::load`] and the next save put back first).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| ModelError::io(&parent, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-model-")
            .tempdir_in(&parent)
            .map_err(|e| ModelError::io(&parent, e))?;
        let mut config = self.config_json.clone();
        if let Some(m) = config.as_object_mut() {
            m.insert("torch_dtype".into(), Value::String("float32".into()));
            m.insert(
                "architectures".into(),
                serde_json::json!([self.config.architecture().class_name()]),
            );
        }
        let write = |name: &str, text: String| -> Result<()> {
            let p = tmp.path().join(name);
            fs::write(&p, text).map_err(|e| ModelError::io(&p, e))
        };
        write(CONFIG_FILE, to_hf_json(&config))?;
        write(
            GENERATION_CONFIG_FILE,
            to_hf_json(&generation_config_json(&config)),
        )?;
        let tensors: Vec<(String, Tensor)> = self
            .weights
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        st::write(
            &tmp.path().join(WEIGHTS_FILE),
            &tensors,
            &[("format", "pt")],
        )?;
        // The files reach the disk before the rename makes them the model
        // (`st::write` syncs the weights itself).
        for name in [CONFIG_FILE, GENERATION_CONFIG_FILE] {
            let p = tmp.path().join(name);
            fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| ModelError::io(&p, e))?;
        }
        pretrain_core::fsio::fsync_dir(tmp.path()).map_err(|e| ModelError::io(tmp.path(), e))?;
        // On error the TempDir guard removes the staged copy.
        pretrain_core::fsio::replace_dir(tmp.path(), dir).map_err(|e| ModelError::io(dir, e))?;
        // Renamed away: nothing left for the guard to remove.
        let _ = tmp.keep();
        Ok(())
    }

    /// Number of f32 values held (each distinct tensor once).
    pub fn stored_values(&self) -> u64 {
        self.weights.values().map(|t| t.elem_count() as u64).sum()
    }

    /// Casts nothing, copies nothing: the weights as candle tensors for training.
    pub(crate) fn into_parts(self) -> (ModelConfig, Value, Weights, Device) {
        (self.config, self.config_json, self.weights, self.device)
    }

    pub(crate) fn from_trusted_parts(
        config: ModelConfig,
        config_json: Value,
        weights: Weights,
        device: Device,
    ) -> Result<Self> {
        Self::assemble(config, config_json, weights, device)
    }
}

impl CausalLm for Model {
    fn architecture(&self) -> Architecture {
        self.config.architecture()
    }

    fn param_count(&self) -> u64 {
        self.stored_values()
    }

    fn logits(&self, batch: &[Vec<u32>]) -> Result<Tensor> {
        let h = self.hidden(batch, Mode::Eval)?;
        let out = self.lm_head();
        let v = out.dim(0)?;
        Ok(h.matmul(&out.t()?)?
            .reshape((batch.len(), batch[0].len(), v))?)
    }

    fn loss(&self, batch: &[Vec<u32>]) -> Result<f32> {
        let h = self.hidden(batch, Mode::Eval)?;
        eval_loss_from_hidden(&h, self.lm_head(), batch)
    }
}

/// Loss for the validator: any error (bad input, failing model) is `+inf`, as
/// the original scored a model that failed on a batch. NaN stays NaN.
pub fn loss_or_inf(model: &dyn CausalLm, batch: &[Vec<u32>]) -> f32 {
    match model.loss(batch) {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!("loss failed, scoring +inf: {e}");
            f32::INFINITY
        }
    }
}

/// The dtype every model computes in.
pub const COMPUTE_DTYPE: DType = DType::F32;

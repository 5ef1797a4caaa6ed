//! [`Model`]: a loaded GPT-2 or LLaMA with its config, Hugging Face
//! directory I/O, the eval loss and logits.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::Value;

use crate::arch::{AnyNet, Architecture, Init, ModelConfig};
use crate::error::{ModelError, Result};
use crate::hf::config::{default_gpt2_config_json, generation_config_json, to_hf_json};
pub use crate::hf::config::{read_config, CONFIG_FILE, GENERATION_CONFIG_FILE};
use crate::hf::safetensors::{self as st, SafetensorsFile};
pub use crate::hf::{match_tensors, open_weights, WEIGHTS_FILE, WEIGHTS_INDEX_FILE};
use crate::kernels::embedding::GradSink;
use crate::kernels::gemm::WeightPacks;
use crate::kernels::loss::eval_loss_from_hidden;
use crate::kernels::KernelPath;
pub use crate::layers::Weights;
use crate::layers::{Sealing, VarBuilder};
use crate::mode::Mode;
use crate::options::{ComputeDtype, ComputeOptions};

/// What the miner and validator call on a model, whatever its architecture.
pub trait CausalLm: Send + Sync {
    /// The architecture.
    fn architecture(&self) -> Architecture;
    /// Parameter count (each distinct tensor once).
    fn param_count(&self) -> u64;
    /// Logits `[B, T, V]` (f32) for a batch of equal-length token rows (eval mode).
    fn logits(&self, batch: &[Vec<u32>]) -> Result<Tensor>;
    /// Mean next-token cross-entropy with `labels = inputs` (eval mode).
    fn loss(&self, batch: &[Vec<u32>]) -> Result<f32>;
}

/// A causal language model: config, `config.json` as read, and f32 weights
/// under their Hugging Face names, with the network built from them once
/// for the kernels and dtype chosen then.
#[derive(Clone)]
pub struct Model {
    config: ModelConfig,
    config_json: Value,
    weights: Weights,
    net: AnyNet,
    device: Device,
    options: ComputeOptions,
    path: KernelPath,
    /// The output head's bf16 packs (the bf16 CPU path only; made on first use).
    head_packs: Arc<WeightPacks>,
    /// Values of the weights dropped by [`Model::sealed_for_eval`] (0: none).
    sealed_values: u64,
}

/// The network over `weights` (cast to the compute dtype) for `path`.
fn build_net(
    config: &ModelConfig,
    weights: &Weights,
    dtype: ComputeDtype,
    path: KernelPath,
) -> Result<AnyNet> {
    // The bf16 CPU path keeps f32 weights and activations: only its GEMMs
    // read bf16 copies of the weights, packed once per build.
    if dtype == ComputeDtype::F32 || path.is_bf16() {
        return config.build(VarBuilder::new(weights, path));
    }
    // Copies in the compute dtype; in training the casts are on the graph,
    // so gradients reach the f32 master weights.
    let cast = weights
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype.dtype())?)))
        .collect::<Result<Weights>>()?;
    config.build(VarBuilder::new(&cast, path))
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
        Self::load_with(dir, device, ComputeOptions::default())
    }

    /// Loads a `save_pretrained` directory to compute as `options` say
    /// (refused with the reason where the device cannot, e.g. bf16 on a CPU
    /// without a bf16 GEMM); the network is built once, for those options.
    pub fn load_with(dir: &Path, device: &Device, options: ComputeOptions) -> Result<Self> {
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
        Self::assemble(config, config_json, weights, device.clone(), options)
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
        Self::assemble(
            config,
            config_json,
            weights,
            device.clone(),
            ComputeOptions::default(),
        )
    }

    /// A model with fresh random weights from a `config.json` value, initialised
    /// as `transformers` does (normal(0, 0.02), zero biases, unit norms,
    /// GPT-2's residual projections scaled by `1/sqrt(2 n_layer)`).
    pub fn random(config_json: Value, seed: u64, device: &Device) -> Result<Self> {
        Self::random_with(config_json, seed, device, ComputeOptions::default())
    }

    /// [`Model::random`] computing as `options` say; the network is built
    /// once, for those options.
    pub fn random_with(
        config_json: Value,
        seed: u64,
        device: &Device,
        options: ComputeOptions,
    ) -> Result<Self> {
        let config = ModelConfig::from_json(&config_json)?;
        let std = config_json
            .get("initializer_range")
            .and_then(Value::as_f64)
            .unwrap_or(0.02) as f32;
        let mut weights = Weights::new();
        for (i, spec) in config.tensor_specs().into_iter().enumerate() {
            let n: usize = spec.shape.iter().product();
            let data = match spec.init {
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
                Init::Normal(div) => {
                    let mut rng = StdRng::seed_from_u64(
                        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                            .wrapping_add(i as u64),
                    );
                    normal(&mut rng, n, std / div)
                }
            };
            weights.insert(spec.name, Tensor::from_vec(data, spec.shape, device)?);
        }
        Self::assemble(config, config_json, weights, device.clone(), options)
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
        Self::assemble(
            config,
            config_json,
            weights,
            device.clone(),
            ComputeOptions::default(),
        )
    }

    /// Builds the network over weights already checked against the config,
    /// computing as `options` say.
    fn assemble(
        config: ModelConfig,
        config_json: Value,
        weights: Weights,
        device: Device,
        options: ComputeOptions,
    ) -> Result<Self> {
        let path = options.resolve(&device)?;
        Self::assemble_with(config, config_json, weights, device, options, path)
    }

    /// [`Model::assemble`] for the given options and kernel path.
    fn assemble_with(
        config: ModelConfig,
        config_json: Value,
        weights: Weights,
        device: Device,
        options: ComputeOptions,
        path: KernelPath,
    ) -> Result<Self> {
        let net = build_net(&config, &weights, options.dtype, path)?;
        Ok(Self {
            config,
            config_json,
            weights,
            net,
            device,
            options,
            path,
            head_packs: Arc::default(),
            sealed_values: 0,
        })
    }

    /// The same model for evaluation only, without the f32 copy of every
    /// weight that only GEMMs read: on the bf16 CPU paths each such weight's
    /// bf16 copy is made now and its f32 values are dropped (a GPT-2's
    /// projections: 85M values, 340 MB), so evaluation holds one copy of
    /// them instead of two; losses do not change (the GEMMs read the same
    /// copies). The model then evaluates only: [`Model::save`], training and
    /// [`Model::with_options`] refuse it, and [`Model::weights`] lacks the
    /// dropped tensors. Elsewhere (f32, other devices) it is returned as is.
    pub fn sealed_for_eval(self) -> Result<Self> {
        if self.is_sealed() || !self.path.is_bf16() || !self.device.is_cpu() {
            return Ok(self);
        }
        let Model {
            config,
            config_json,
            weights,
            net,
            device,
            options,
            path,
            head_packs,
            sealed_values: _,
        } = self;
        // The old network holds every weight too: it goes first, so each f32
        // weight is freed as soon as its copy is made.
        drop(net);
        let sealing = std::cell::RefCell::new(Sealing {
            weights,
            dropped: 0,
        });
        let net = config.build(VarBuilder::sealing(&sealing, path))?;
        let Sealing { weights, dropped } = sealing.into_inner();
        Ok(Self {
            config,
            config_json,
            weights,
            net,
            device,
            options,
            path,
            head_packs,
            sealed_values: dropped,
        })
    }

    /// Whether [`Model::sealed_for_eval`] dropped weights: the model evaluates only.
    pub fn is_sealed(&self) -> bool {
        self.sealed_values > 0
    }

    /// The error for what a sealed model cannot do.
    fn refuse_sealed(&self, what: &str) -> Result<()> {
        if self.is_sealed() {
            return Err(ModelError::Unsupported(format!(
                "{what} a model sealed for evaluation (its f32 projection weights were dropped); \
                 load it again"
            )));
        }
        Ok(())
    }

    /// The same weights, computing as `options` say (kernels, dtype): the
    /// network is built again, the weights are shared, not copied.
    pub fn with_options(self, options: ComputeOptions) -> Result<Self> {
        let path = options.resolve(&self.device)?;
        self.with_path(options, path)
    }

    /// [`Model::with_options`] with the path given, unchecked (tests run
    /// the bf16 portable path on the CPU, which users cannot choose).
    pub(crate) fn with_path(self, options: ComputeOptions, path: KernelPath) -> Result<Self> {
        self.refuse_sealed("rebuilding")?;
        Self::assemble_with(
            self.config,
            self.config_json,
            self.weights,
            self.device,
            options,
            path,
        )
    }

    /// How this model computes.
    pub fn options(&self) -> ComputeOptions {
        self.options
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

    /// The output projection's bf16 packs.
    pub(crate) fn head_packs(&self) -> &Arc<WeightPacks> {
        &self.head_packs
    }

    /// Saves as a `save_pretrained` directory: `config.json`,
    /// `generation_config.json`, `model.safetensors` (f32). Written and
    /// fsynced in a temporary directory beside `dir`, then swapped in with
    /// [`pretrain_core::fsio::replace_dir`]: a crash at any moment leaves a
    /// whole directory, the old or the new one (after a crash between the
    /// two renames the old one waits at `<dir>.old`, which
    /// [`Model::load`] and the next save put back first).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_as(dir, DType::F32)
    }

    /// [`Model::save`] with the weights stored as `dtype`: F32, or BF16 (the
    /// original's `--upload_b16`: half the bytes, `torch_dtype` `bfloat16`,
    /// which `transformers` loads and [`Model::load`] upcasts to f32).
    pub fn save_as(&self, dir: &Path, dtype: DType) -> Result<()> {
        self.refuse_sealed("saving")?;
        let torch_dtype = match dtype {
            DType::F32 => "float32",
            DType::BF16 => "bfloat16",
            other => {
                return Err(ModelError::Unsupported(format!(
                    "saving weights as {other:?} (F32 or BF16)"
                )))
            }
        };
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
            m.insert("torch_dtype".into(), Value::String(torch_dtype.into()));
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
        st::write_as(
            &tmp.path().join(WEIGHTS_FILE),
            &tensors,
            &[("format", "pt")],
            dtype,
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
        let held: u64 = self.weights.values().map(|t| t.elem_count() as u64).sum();
        // A sealed model's dropped weights still count: they are in its copies.
        held + self.sealed_values
    }

    /// Casts nothing, copies nothing: the weights as candle tensors for
    /// training, with how the model computes.
    pub(crate) fn into_parts(self) -> Result<(Parts, Weights)> {
        self.refuse_sealed("training")?;
        let parts = Parts {
            config: self.config,
            config_json: self.config_json,
            device: self.device,
            options: self.options,
            path: self.path,
        };
        Ok((parts, self.weights))
    }

    /// A model of `parts` over `weights` already checked against the config.
    pub(crate) fn from_trusted_parts(parts: &Parts, weights: Weights) -> Result<Self> {
        Self::assemble_with(
            parts.config.clone(),
            parts.config_json.clone(),
            weights,
            parts.device.clone(),
            parts.options,
            parts.path,
        )
    }
}

/// Everything of a [`Model`] but its weights (the trainer rebuilds models
/// over its variables from these).
#[derive(Clone)]
pub(crate) struct Parts {
    /// The parsed config.
    pub(crate) config: ModelConfig,
    /// `config.json` as read.
    pub(crate) config_json: Value,
    /// The device of the weights.
    pub(crate) device: Device,
    /// How the model computes.
    pub(crate) options: ComputeOptions,
    /// The kernel path chosen for it.
    pub(crate) path: KernelPath,
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
            .to_dtype(DType::F32)?
            .reshape((batch.len(), batch[0].len(), v))?)
    }

    fn loss(&self, batch: &[Vec<u32>]) -> Result<f32> {
        let h = self.hidden(batch, Mode::Eval)?;
        eval_loss_from_hidden(self.path, &h, self.lm_head(), batch, &self.head_packs)
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

/// The dtype models compute in unless told otherwise ([`ComputeOptions`]).
pub const COMPUTE_DTYPE: DType = DType::F32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Kernels;
    use crate::train::{TrainConfig, Trainer};

    fn reference(name: &str) -> (PathBuf, Value) {
        let dir = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/models"
        ))
        .join(name);
        let exp = serde_json::from_slice(&fs::read(dir.join("expected.json")).unwrap()).unwrap();
        (dir.join("model"), exp)
    }

    fn rows(v: &Value) -> Vec<Vec<u32>> {
        serde_json::from_value(v.clone()).unwrap()
    }

    const BF16: ComputeOptions = ComputeOptions {
        kernels: Kernels::Portable,
        dtype: ComputeDtype::Bf16,
    };

    /// The bf16 path CUDA runs (candle's ops on bf16 copies of the weights,
    /// f32 loss), run here on the CPU where users cannot choose it: the
    /// reference losses within 2e-2, and three AdamW steps (f32 master
    /// weights and moments) within 2e-2 of torch's f32 losses.
    #[test]
    fn bf16_portable_path_matches_the_reference_within_2e_2() {
        bf16_matches_the_reference_within_2e_2(|m| m.with_path(BF16, KernelPath::Portable));
    }

    /// `--dtype bf16` on the CPU (the fast kernels with bf16 GEMMs, f32
    /// master weights and moments): the same bounds.
    #[test]
    #[cfg_attr(not(cpu_avx512bf16), ignore = "needs AVX512-BF16")]
    fn bf16_cpu_path_matches_the_reference_within_2e_2() {
        bf16_matches_the_reference_within_2e_2(|m| {
            let m = m.with_options(CPU_BF16)?;
            assert!(m.path.is_bf16() && m.path.is_fast(), "{:?}", m.path);
            // Whatever auto chose, our own bf16 GEMM is checked too.
            m.with_path(CPU_BF16, KernelPath::FastBf16)
        });
    }

    /// `--kernels onednn --dtype bf16` (every weight GEMM on oneDNN in bf16,
    /// weights reordered once per build, f32 master weights and moments):
    /// the same bounds.
    #[test]
    #[cfg_attr(
        not(have_onednn),
        ignore = "needs libdnnl.so.2 (apt-get install libdnnl-dev)"
    )]
    fn bf16_onednn_path_matches_the_reference_within_2e_2() {
        if let Err(e) = crate::onednn::implementation(crate::onednn::Dtype::Bf16) {
            eprintln!("skipped: {e}");
            return;
        }
        bf16_matches_the_reference_within_2e_2(|m| {
            let m = m.with_options(ComputeOptions {
                kernels: Kernels::Onednn,
                dtype: ComputeDtype::Bf16,
            })?;
            assert_eq!(m.path, KernelPath::OnednnBf16);
            Ok(m)
        });
    }

    /// A model sealed for evaluation on each bf16 CPU path this machine
    /// runs gives the same losses, to the bit, as before sealing (and the
    /// reference's within 2e-2), holds none of its projection weights in
    /// f32 (but counts them), and refuses what it can no longer do. On f32
    /// sealing changes nothing.
    #[test]
    #[cfg_attr(
        not(any(cpu_avx512bf16, have_onednn)),
        ignore = "needs AVX512-BF16 or libdnnl.so.2 (a bf16 CPU path)"
    )]
    fn a_sealed_model_evaluates_as_before_without_its_f32_projections() {
        let mut paths = Vec::new();
        if crate::kernels::gemm_bf16::support().is_ok() {
            paths.push((Kernels::Auto, KernelPath::FastBf16));
        }
        if crate::onednn::implementation(crate::onednn::Dtype::Bf16).is_ok() {
            paths.push((Kernels::Onednn, KernelPath::OnednnBf16));
        }
        if paths.is_empty() {
            eprintln!("skipped: no bf16 CPU path here (AVX512-BF16 or oneDNN)");
            return;
        }
        let projections = [
            (
                "tiny-gpt2",
                "transformer.h.0.attn.c_attn.weight",
                "transformer.wte.weight",
            ),
            (
                "tiny-llama",
                "model.layers.0.self_attn.q_proj.weight",
                "model.embed_tokens.weight",
            ),
        ];
        for (name, projection, kept) in projections {
            let (dir, exp) = reference(name);
            let f32_model = Model::load(&dir, &Device::Cpu).unwrap();
            let values = f32_model.stored_values();
            let unchanged = f32_model.sealed_for_eval().unwrap();
            assert!(!unchanged.is_sealed() && unchanged.weights().contains_key(projection));
            for (kernels, path) in &paths {
                let options = ComputeOptions {
                    kernels: *kernels,
                    dtype: ComputeDtype::Bf16,
                };
                let model = Model::load(&dir, &Device::Cpu)
                    .unwrap()
                    .with_path(options, *path)
                    .unwrap();
                let sealed = model.clone().sealed_for_eval().unwrap();
                assert!(sealed.is_sealed(), "{name} {path:?}");
                assert!(
                    !sealed.weights().contains_key(projection),
                    "{name} {path:?}"
                );
                assert!(sealed.weights().contains_key(kept), "{name} {path:?}");
                assert_eq!(sealed.stored_values(), values, "{name} {path:?}");
                for b in exp["batches"].as_array().unwrap() {
                    let batch = rows(&b["input_ids"]);
                    let before = model.loss(&batch).unwrap();
                    let after = sealed.loss(&batch).unwrap();
                    assert_eq!(before.to_bits(), after.to_bits(), "{name} {path:?}");
                    let want = b["loss"].as_f64().unwrap();
                    assert!(
                        (after as f64 - want).abs() < 2e-2,
                        "{name}: {after} vs {want}"
                    );
                }
                let out = tempfile::tempdir().unwrap();
                let refused = [
                    sealed.save(&out.path().join("m")).map(|_| ()),
                    Trainer::new(sealed.clone(), TrainConfig::default()).map(|_| ()),
                    sealed.clone().with_options(options).map(|_| ()),
                ];
                for r in refused {
                    let e = r.unwrap_err().to_string();
                    assert!(e.contains("sealed for evaluation"), "{name} {path:?}: {e}");
                }
                assert!(!out.path().join("m").exists());
            }
        }
    }

    /// `--dtype bf16` on the CPU.
    const CPU_BF16: ComputeOptions = ComputeOptions {
        kernels: Kernels::Auto,
        dtype: ComputeDtype::Bf16,
    };

    fn bf16_matches_the_reference_within_2e_2(bf16: impl Fn(Model) -> Result<Model>) {
        for name in ["tiny-gpt2", "tiny-llama"] {
            let (dir, exp) = reference(name);
            let model = bf16(Model::load(&dir, &Device::Cpu).unwrap()).unwrap();
            assert_eq!(model.weights().values().next().unwrap().dtype(), DType::F32);
            for b in exp["batches"].as_array().unwrap() {
                let loss = model.loss(&rows(&b["input_ids"])).unwrap() as f64;
                let want = b["loss"].as_f64().unwrap();
                assert!((loss - want).abs() < 2e-2, "{name}: {loss} vs {want}");
            }
            let tr = &exp["training"];
            let i = tr["batch_index"].as_u64().unwrap() as usize;
            let batch = rows(&exp["batches"][i]["input_ids"]);
            let cfg = TrainConfig {
                lr: tr["lr"].as_f64().unwrap(),
                weight_decay: tr["weight_decay"].as_f64().unwrap(),
                ..TrainConfig::default()
            };
            let mut trainer = Trainer::new(model, cfg).unwrap();
            for want in tr["loss_before_each_step"].as_array().unwrap() {
                let loss = trainer.micro_step(&batch).unwrap() as f64;
                let want = want.as_f64().unwrap();
                assert!((loss - want).abs() < 2e-2, "{name} train: {loss} vs {want}");
            }
            let after = trainer.eval_loss(&batch).unwrap() as f64;
            let want = tr["loss_after_last_step"].as_f64().unwrap();
            assert!(
                (after - want).abs() < 2e-2,
                "{name} after: {after} vs {want}"
            );
        }
    }

    /// A tiny model trains in bf16 on the CPU: each step's training loss is
    /// the loss of the weights the last step left (the bf16 packs are made
    /// again after every optimizer step, never stale), and 12 AdamW steps
    /// bring the loss down by more than a nat.
    #[test]
    #[cfg_attr(not(cpu_avx512bf16), ignore = "needs AVX512-BF16")]
    fn a_tiny_model_trains_in_bf16_on_the_cpu() {
        a_tiny_model_trains(CPU_BF16, None);
    }

    /// The same on oneDNN, in f32 and (where oneDNN has a bf16 kernel) bf16.
    #[test]
    #[cfg_attr(
        not(have_onednn),
        ignore = "needs libdnnl.so.2 (apt-get install libdnnl-dev)"
    )]
    fn a_tiny_model_trains_on_onednn() {
        let f32_opts = ComputeOptions {
            kernels: Kernels::Onednn,
            dtype: ComputeDtype::F32,
        };
        a_tiny_model_trains(f32_opts, Some(KernelPath::Onednn));
        match crate::onednn::implementation(crate::onednn::Dtype::Bf16) {
            Ok(_) => a_tiny_model_trains(
                ComputeOptions {
                    dtype: ComputeDtype::Bf16,
                    ..f32_opts
                },
                Some(KernelPath::OnednnBf16),
            ),
            Err(e) => eprintln!("bf16 skipped: {e}"),
        }
    }

    fn a_tiny_model_trains(options: ComputeOptions, path: Option<KernelPath>) {
        for name in ["tiny-gpt2", "tiny-llama"] {
            let (dir, exp) = reference(name);
            let model = Model::load_with(&dir, &Device::Cpu, options).unwrap();
            if let Some(path) = path {
                assert_eq!(model.path, path);
            }
            let batch = rows(&exp["batches"][1]["input_ids"]);
            let cfg = TrainConfig {
                lr: 1e-3,
                accumulation_steps: 2,
                ..TrainConfig::default()
            };
            let mut trainer = Trainer::new(model, cfg).unwrap();
            let first = trainer.eval_loss(&batch).unwrap();
            let mut last = first;
            for step in 0..12 {
                // Two micro-batches a step: the second runs on the same packs.
                for _ in 0..2 {
                    let train = trainer.micro_step(&batch).unwrap();
                    assert!(
                        (train - last).abs() < 1e-3,
                        "{name} step {step}: trained on {train}, weights give {last}"
                    );
                }
                let now = trainer.eval_loss(&batch).unwrap();
                assert!(now < last, "{name} step {step}: {now} after {last}");
                last = now;
            }
            assert!(last < first - 1.0, "{name}: {first} -> {last}");
        }
    }

    /// Weights saved as bf16 are half the bytes, say so in `config.json`,
    /// and load back (upcast to f32) equal to the weights rounded to bf16.
    #[test]
    fn bf16_save_halves_the_weights_and_loads_back_rounded() {
        let (dir, _) = reference("tiny-gpt2");
        let model = Model::load(&dir, &Device::Cpu).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        model.save(&tmp.path().join("f32")).unwrap();
        model
            .save_as(&tmp.path().join("bf16"), DType::BF16)
            .unwrap();
        let size = |d: &str| {
            fs::metadata(tmp.path().join(d).join(WEIGHTS_FILE))
                .unwrap()
                .len()
        };
        let data = model.stored_values();
        // The data sections are 4 and 2 bytes per value; the headers differ only in dtype names.
        assert!(
            size("f32") - size("bf16") >= 2 * data - 64,
            "{} {}",
            size("f32"),
            size("bf16")
        );
        let cfg: Value =
            serde_json::from_slice(&fs::read(tmp.path().join("bf16/config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["torch_dtype"], "bfloat16");
        let back = Model::load(&tmp.path().join("bf16"), &Device::Cpu).unwrap();
        for (name, t) in model.weights() {
            let want: Vec<f32> = t
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(half_round)
                .collect();
            let got: Vec<f32> = back.weights()[name]
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got, want, "{name}");
        }
    }

    /// f32 rounded to the nearest bf16 (ties to even), by its definition on the bits.
    fn half_round(x: f32) -> f32 {
        let b = x.to_bits();
        let lsb = (b >> 16) & 1;
        f32::from_bits((b.wrapping_add(0x7FFF + lsb)) & 0xFFFF_0000)
    }
}

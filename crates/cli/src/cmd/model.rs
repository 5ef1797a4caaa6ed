//! `pretrain eval`, `pretrain inspect` and the model benchmarks of `pretrain bench`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Device;
use clap::Args;
use pretrain_model::bench::{bench_eval, bench_train, BenchConfig};
use pretrain_model::check::{check_model_dir, dir_size, Limits};
use pretrain_model::model::read_config;
use pretrain_model::{CausalLm, Model};
use serde_json::{json, Value};

/// Arguments of `pretrain eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model directory (`save_pretrained` layout).
    #[arg(long)]
    pub model: PathBuf,
    /// JSON file `[[id, ...], ...]`: one batch of equal-length token rows.
    #[arg(long)]
    pub tokens: PathBuf,
    /// Device: `cpu`, or `cuda` / `cuda:N` (needs the `cuda` build feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Arguments of `pretrain inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model directory to inspect.
    pub dir: PathBuf,
}

/// Arguments of `pretrain bench eval|train`.
#[derive(Args, Debug)]
pub struct ModelBenchArgs {
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed iterations after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Rows per batch.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 1024)]
    pub seq_len: usize,
    /// Use this model's `config.json` instead of the default GPT-2 (random weights either way).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context("opening cuda:0"),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::new_cuda(n).with_context(|| format!("opening cuda:{n}")),
            _ => bail!("unknown device {other:?} (use cpu, cuda or cuda:N)"),
        },
    }
}

fn read_tokens(path: &Path) -> anyhow::Result<Vec<Vec<u32>>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "{}: expected JSON [[id, ...], ...] of non-negative 32-bit integers",
            path.display()
        )
    })
}

/// Non-finite floats as the reference's JSON convention writes them.
fn json_f64(x: f64) -> Value {
    if x.is_nan() {
        json!("nan")
    } else if x == f64::INFINITY {
        json!("inf")
    } else if x == f64::NEG_INFINITY {
        json!("-inf")
    } else {
        json!(x)
    }
}

/// Prints `{"loss": f}` for one batch.
pub fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let batch = read_tokens(&args.tokens)?;
    let model = Model::load(&args.model, &device)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let loss = model.loss(&batch).context("computing the loss")?;
    println!("{}", json!({ "loss": json_f64(loss as f64) }));
    Ok(())
}

/// Prints `{"architecture", "params", "size_bytes", "hash", "valid", "reason"}`.
pub fn run_inspect(args: InspectArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let size = dir_size(dir).with_context(|| format!("reading {}", dir.display()))?;
    let hash = pretrain_core::hash_of_directory(dir)
        .with_context(|| format!("hashing {}", dir.display()))?;
    let config = read_config(dir).ok().map(|(_, c)| c);
    let (valid, reason) = match check_model_dir(dir, Limits::default()) {
        Ok(_) => (true, Value::Null),
        Err(e) => (false, json!(e.to_string())),
    };
    let out = json!({
        "architecture": config.as_ref().map(|c| c.architecture().class_name()),
        "params": config.as_ref().map(|c| c.param_count()),
        "size_bytes": size,
        "hash": hash,
        "valid": valid,
        "reason": reason,
    });
    println!("{out}");
    Ok(())
}

/// Runs the evaluation (`train == false`) or training benchmark and prints its JSON.
pub fn run_bench(args: ModelBenchArgs, train: bool) -> anyhow::Result<()> {
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // candle's matmul reads RAYON_NUM_THREADS; the global pool serves the rest.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting the thread count")?;
    }
    let mut cfg = BenchConfig {
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        iters: args.iters.max(1),
        ..BenchConfig::default()
    };
    if let Some(p) = &args.config {
        let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        cfg.config_json =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", p.display()))?;
    }
    let r = if train {
        bench_train(&cfg)
    } else {
        bench_eval(&cfg)
    }
    .context("running the benchmark")?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

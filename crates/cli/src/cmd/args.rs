//! Argument groups shared by `mine`, `validate`, `upload`, `localnet` and
//! the `chain` commands (the wallet group lives beside its own commands in
//! `wallet.rs`), so one flag means one thing everywhere.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use candle_core::Device;
use clap::Args;
use pretrain_chain::network::DEFAULT_CHAIN_DIR;
use pretrain_chain::{ChainOptions, Network};
use pretrain_data::PageSource;
use pretrain_store::{open_hub, HubOptions, ModelHub};

/// Default `--hub`: a hub on this machine, so commands work offline.
pub const DEFAULT_LOCAL_HUB: &str = "local:~/.bittensor/pretrain-hub";

/// Where models are uploaded to and downloaded from.
#[derive(Args, Debug, Clone)]
pub struct HubArgs {
    /// Where models go: `hf` (Hugging Face; token from HF_ACCESS_TOKEN or
    /// `.env`) or `local:DIR` (a hub on this machine, for the embedded chain).
    #[arg(long, default_value = DEFAULT_LOCAL_HUB)]
    pub hub: String,
    /// Another Hugging Face endpoint, e.g. a mirror (or set HF_ENDPOINT).
    #[arg(long = "hub_endpoint")]
    pub hub_endpoint: Option<String>,
}

impl HubArgs {
    /// Whether the hub is one on this machine.
    pub fn is_local(&self) -> bool {
        self.hub.starts_with("local:")
    }

    /// How to make `repo` public without this program.
    pub fn make_public_hint(&self, repo: &pretrain_core::RepoId) -> String {
        match self.hub.strip_prefix("local:") {
            Some(dir) => format!(
                "write `public` into {}",
                std::path::Path::new(dir)
                    .join("repos")
                    .join(repo.namespace())
                    .join(repo.name())
                    .join("visibility")
                    .display()
            ),
            None => {
                let endpoint = pretrain_store::resolve_endpoint(self.hub_endpoint.as_deref());
                format!(
                    "{}/{repo}/settings (Change repository visibility), or huggingface_hub's \
                     HfApi().update_repo_settings(\"{repo}\", private=False)",
                    endpoint.trim_end_matches('/')
                )
            }
        }
    }

    /// Refuses a hub on this machine together with a real chain: what one
    /// side puts there, the other side of the subnet could never download.
    pub fn check_reachable_from(&self, chain: &ChainArgs) -> anyhow::Result<()> {
        if chain.is_real() && self.is_local() {
            anyhow::bail!(
                "--hub {} is only visible on this machine, so the rest of a real subnet could \
                 never download its models: use --hub hf",
                self.hub
            );
        }
        Ok(())
    }

    /// Opens the hub (`~` expanded in `local:` paths).
    pub fn open(&self, progress: bool) -> anyhow::Result<Box<dyn ModelHub>> {
        let spec = match self.hub.strip_prefix("local:") {
            Some(path) => format!(
                "local:{}",
                pretrain_chain::wallet::expand_home(std::path::Path::new(path)).display()
            ),
            None => self.hub.clone(),
        };
        open_hub(
            &spec,
            HubOptions {
                endpoint: self.hub_endpoint.clone(),
                token: None,
                progress,
            },
        )
        .with_context(|| format!("opening hub {}", self.hub))
    }
}

/// The chain flags shared by every command that talks to a chain.
#[derive(Args, Debug, Clone)]
pub struct ChainArgs {
    /// finney, test, local (ws://127.0.0.1:9944) or embedded (the offline chain under --chain_dir).
    #[arg(long = "subtensor.network", default_value = "embedded")]
    pub network: Network,
    /// A node URL (ws:// or wss://); wins over --subtensor.network.
    #[arg(long = "subtensor.chain_endpoint")]
    pub chain_endpoint: Option<String>,
    /// Directory of the embedded chain.
    #[arg(long = "chain_dir", default_value = DEFAULT_CHAIN_DIR)]
    pub chain_dir: PathBuf,
    /// Seconds per block of a new embedded chain (an existing one keeps its own; default 12).
    #[arg(long = "block_time")]
    pub block_time: Option<f64>,
    /// Subnet.
    #[arg(long, default_value_t = pretrain_core::constants::SUBNET_UID)]
    pub netuid: u16,
    /// Limit for each chain call, in seconds.
    #[arg(long = "chain_timeout", default_value_t = pretrain_core::constants::CHAIN_CALL_TIMEOUT.as_secs_f64())]
    pub chain_timeout: f64,
}

impl ChainArgs {
    /// Whether these flags name a real node rather than the embedded chain.
    pub fn is_real(&self) -> bool {
        self.chain_endpoint.is_some() || self.network != Network::Embedded
    }

    /// The options for [`pretrain_chain::connect`].
    pub fn options(&self) -> anyhow::Result<ChainOptions> {
        let timeout =
            pretrain_core::bounded::seconds("--chain_timeout", self.chain_timeout, 86_400.0)
                .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            !timeout.is_zero(),
            "--chain_timeout must be more than 0 seconds"
        );
        if let Some(bt) = self.block_time {
            pretrain_chain::embedded::check_block_time(bt).context("--block_time")?;
        }
        Ok(ChainOptions {
            network: self.network,
            chain_endpoint: self.chain_endpoint.clone(),
            chain_dir: self.chain_dir.clone(),
            block_time: self.block_time,
            timeout,
        })
    }
}

/// Where text pages come from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Where pages come from: `falcon` (the RefinedWeb rows API) or
    /// `local:DIR` (Parquet/JSONL with a `content` column); default: the
    /// sample corpus shipped in the repository.
    #[arg(long)]
    pub dataset: Option<String>,
}

impl DataArgs {
    /// The `--dataset` value with its default filled in.
    pub fn spec(&self) -> String {
        self.dataset
            .clone()
            .unwrap_or_else(|| format!("local:{}", pretrain_data::sample_corpus_dir().display()))
    }

    /// Opens the page source.
    pub fn open(&self) -> anyhow::Result<Arc<dyn PageSource>> {
        let spec = self.spec();
        pretrain_data::open_source(&spec).with_context(|| format!("opening dataset {spec}"))
    }
}

/// The compute device.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Device: `cpu`, or `cuda` / `cuda:N` (needs the `cuda` build feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// How the model computes: kernels and dtype, chosen once at load.
#[derive(Args, Debug, Clone)]
pub struct ComputeArgs {
    /// Kernels: `auto` (the fast CPU kernels on the CPU, their weight GEMMs
    /// on oneDNN where libdnnl.so.2 loads and a short measured race at start
    /// finds it faster for the dtype; candle's ops elsewhere), `portable`
    /// (candle's ops only: what CUDA runs) or `onednn` (every weight GEMM on
    /// oneDNN: an error where libdnnl.so.2 does not load, or for bf16 where
    /// oneDNN has no bf16 kernel on this CPU). The path chosen and oneDNN's
    /// kernel are logged at start ("compute path: ...").
    #[arg(long, default_value = "auto")]
    pub kernels: pretrain_model::Kernels,
    /// Compute dtype: `f32`, or `bf16` (on a GPU, or on a CPU with
    /// AVX512-BF16 or AMX with `--kernels auto|onednn`: bf16 GEMMs with f32 accumulation;
    /// training keeps f32 master weights and AdamW state). Losses move by
    /// about 1e-3 relative: validators that disagree on close pairs lose
    /// vTrust, so f32 stays the default.
    #[arg(long, default_value = "f32")]
    pub dtype: pretrain_model::ComputeDtype,
}

impl ComputeArgs {
    /// The model crate's options.
    pub fn options(&self) -> pretrain_model::ComputeOptions {
        pretrain_model::ComputeOptions {
            kernels: self.kernels,
            dtype: self.dtype,
        }
    }

    /// The flags again, for a child process.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--kernels".into(),
            self.kernels.to_string(),
            "--dtype".into(),
            self.dtype.to_string(),
        ]
    }
}

/// The Prometheus endpoint (`--metrics.port`, `--metrics.address`).
#[derive(Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on this port at /metrics (off by default).
    #[arg(long = "metrics.port")]
    pub port: Option<u16>,
    /// Address the metrics endpoint listens on (loopback unless told otherwise).
    #[arg(long = "metrics.address", default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
}

impl MetricsArgs {
    /// Starts the endpoint with a fresh registry, if a port was given;
    /// `make` registers the metrics in it.
    pub async fn serve<M>(
        &self,
        make: impl FnOnce(
            &pretrain_telemetry::prometheus::Registry,
        ) -> Result<M, pretrain_telemetry::prometheus::MetricsError>,
    ) -> anyhow::Result<Option<M>> {
        let Some(port) = self.port else {
            return Ok(None);
        };
        let registry = pretrain_telemetry::prometheus::Registry::new();
        let metrics = make(&registry).context("setting up the metrics")?;
        let addr = std::net::SocketAddr::new(self.address, port);
        let bound = pretrain_telemetry::prometheus::serve(addr, registry)
            .await
            .context("--metrics.port")?;
        tracing::info!("Prometheus metrics on http://{bound}/metrics");
        Ok(Some(metrics))
    }
}

impl DeviceArgs {
    /// Opens the device; refuses a `--dtype` it cannot compute in.
    pub fn open(&self) -> anyhow::Result<Device> {
        let device = parse_device(&self.device)?;
        self.compute.options().check(&device)?;
        Ok(device)
    }
}

/// Parses `cpu`, `cuda` or `cuda:N` (every command's `--device`).
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    let n = match s {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => anyhow::bail!("unknown device {other:?} (use cpu, cuda or cuda:N)"),
        },
    };
    open_cuda(s, n)
}

/// Opens `cuda:n` after asking the driver whether there is one: candle
/// reports a missing driver or GPU as a bare `DriverError(CUDA_ERROR_...)`
/// from deep inside device creation, which tells an operator nothing.
/// candle has cudarc link libcuda.so.1 (`dynamic-linking`), so these calls
/// cannot panic on a missing library: without one the binary does not start
/// (the dynamic loader names libcuda.so.1); a build machine's stub answers
/// CUDA_ERROR_STUB_LIBRARY.
#[cfg(feature = "cuda")]
fn open_cuda(s: &str, n: usize) -> anyhow::Result<Device> {
    use candle_core::cuda::cudarc::driver::result;
    let probe = result::init().and_then(|()| result::device::get_count());
    match probe {
        Ok(count) => {
            let count = usize::try_from(count).unwrap_or(0);
            if n >= count {
                anyhow::bail!(
                    "--device {s}: this machine has {count} CUDA device(s){}",
                    if count == 0 {
                        String::new()
                    } else {
                        format!(" (cuda:0 to cuda:{})", count - 1)
                    }
                );
            }
        }
        Err(e) => anyhow::bail!("--device {s}: {}", cuda_init_error(e.0 as i32)),
    }
    Device::new_cuda(n).with_context(|| format!("opening cuda:{n}"))
}

/// Without the `cuda` feature there is no CUDA device to open.
#[cfg(not(feature = "cuda"))]
fn open_cuda(s: &str, _n: usize) -> anyhow::Result<Device> {
    anyhow::bail!(
        "--device {s}: this pretrain was built without CUDA; build it with \
         scripts/build_cuda.sh (`cargo build --release -p pretrain-cli --features cuda` \
         with the CUDA toolkit)"
    )
}

/// What a failed `cuInit` (its CUresult, as in cuda.h) means for an operator.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn cuda_init_error(code: i32) -> String {
    match code {
        // CUDA_ERROR_STUB_LIBRARY
        34 => "no CUDA driver: the libcuda.so.1 loaded is a link stub, not the \
             NVIDIA driver (this machine has no NVIDIA driver/GPU); use --device cpu, or run on a \
             machine with an NVIDIA GPU and its driver"
            .to_string(),
        // CUDA_ERROR_NO_DEVICE
        100 => "no CUDA device: the NVIDIA driver is loaded but finds no GPU (see nvidia-smi and \
             CUDA_VISIBLE_DEVICES); use --device cpu"
            .to_string(),
        // CUDA_ERROR_INSUFFICIENT_DRIVER
        35 => "the NVIDIA driver is older than the CUDA version this pretrain was built with \
             (scripts/build_cuda.sh: CUDA_VERSION, default 13.0, needs driver 580 or newer)"
            .to_string(),
        other => format!("initialising the CUDA driver failed (CUresult {other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_cpu_cuda_or_cuda_n() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", ""] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains("unknown device"), "{bad}: {e}");
        }
        if !cfg!(feature = "cuda") {
            let e = parse_device("cuda:1").unwrap_err().to_string();
            assert!(e.contains("built without CUDA"), "{e}");
        }
    }

    #[test]
    fn a_missing_driver_or_gpu_is_named_not_a_bare_cuda_code() {
        // CUresult values from the CUDA driver API (cuda.h), not this code.
        let stub = cuda_init_error(34);
        assert!(
            stub.contains("no CUDA driver") && stub.contains("--device cpu"),
            "{stub}"
        );
        let no_gpu = cuda_init_error(100);
        assert!(
            no_gpu.contains("no CUDA device") && no_gpu.contains("nvidia-smi"),
            "{no_gpu}"
        );
        assert!(cuda_init_error(35).contains("driver is older"));
        assert!(cuda_init_error(999).contains("CUresult 999"));
    }

    /// Where the CUDA build runs without a driver (scripts/build_cuda.sh
    /// links a stub libcuda.so.1 there), `--device cuda` is a clear error.
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs the CUDA build on a machine without an NVIDIA GPU"]
    fn cuda_without_a_driver_is_a_clear_error() {
        let e = parse_device("cuda").unwrap_err().to_string();
        assert!(
            e.contains("no CUDA driver") || e.contains("no CUDA device"),
            "{e}"
        );
    }

    #[test]
    fn the_make_public_hint_names_the_visibility_file_or_the_settings_page() {
        let repo: pretrain_core::RepoId = "me/model".parse().unwrap();
        let local = HubArgs {
            hub: "local:/hub".into(),
            hub_endpoint: None,
        };
        assert_eq!(
            local.make_public_hint(&repo),
            "write `public` into /hub/repos/me/model/visibility"
        );
        let hf = HubArgs {
            hub: "hf".into(),
            hub_endpoint: Some("http://mirror/".into()),
        };
        assert!(hf
            .make_public_hint(&repo)
            .starts_with("http://mirror/me/model/settings"));
    }
}

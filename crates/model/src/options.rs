//! How a model computes, chosen once when it is built: the kernel path
//! (`--kernels auto|portable|onednn`) and the compute dtype (`--dtype f32|bf16`).

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::kernels::KernelPath;

/// Which kernels a model runs (`--kernels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// The fused CPU kernels on the CPU, their weight GEMMs on oneDNN where
    /// it loads and measured faster for the dtype ([`crate::gemm_race`]);
    /// candle's ops elsewhere.
    #[default]
    Auto,
    /// candle's ops only, on every device: what CUDA and Metal run.
    Portable,
    /// The fused CPU kernels with every weight GEMM on oneDNN
    /// (`libdnnl.so.2`); an error where it does not load or (bf16) has no
    /// bf16 kernel on this CPU.
    Onednn,
}

/// The dtype a model computes in (`--dtype`); weights are stored and
/// trained (master weights, AdamW state) in f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// 32-bit floats (the reference precision).
    #[default]
    F32,
    /// bfloat16 activations and weight copies; losses and softmax sums in f32.
    Bf16,
}

/// How a model computes: kernels and dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ComputeOptions {
    /// The kernel choice.
    pub kernels: Kernels,
    /// The compute dtype.
    pub dtype: ComputeDtype,
}

impl ComputeDtype {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }
}

impl ComputeOptions {
    /// Checks that `device` can compute in the chosen dtype and picks the
    /// kernel path: the fast kernels for `auto` on the CPU (in f32, or with
    /// their weight GEMMs in bf16), candle's ops elsewhere.
    pub(crate) fn resolve(self, device: &Device) -> Result<KernelPath> {
        self.check(device)?;
        let bf16 = self.dtype == ComputeDtype::Bf16;
        let path = match (self.kernels, device.is_cpu(), bf16) {
            (Kernels::Onednn, true, false) => KernelPath::Onednn,
            (Kernels::Onednn, true, true) => KernelPath::OnednnBf16,
            (Kernels::Auto, true, _) if crate::kernels::gemm::gemm_race(bf16).onednn_wins() => {
                if bf16 {
                    KernelPath::OnednnBf16
                } else {
                    KernelPath::Onednn
                }
            }
            (Kernels::Auto, true, false) => KernelPath::Fast,
            (Kernels::Auto, true, true) => KernelPath::FastBf16,
            _ => KernelPath::Portable,
        };
        log_path_once(self, path);
        Ok(path)
    }

    /// The kernel path these options give on `device` and, on the CPU, its
    /// GEMM engine: "onednn-bf16 (oneDNN 2.6.3 brg:avx512_core_bf16; ours
    /// 150 GFLOP/s, oneDNN 160)" and the like, for the start-up log line.
    pub fn describe(self, device: &Device) -> Result<String> {
        let path = self.resolve(device)?;
        Ok(describe_path(self, path))
    }

    /// Refuses what the device's kernels cannot do, with the reason.
    pub fn check(self, device: &Device) -> Result<()> {
        if self.kernels == Kernels::Onednn {
            if !device.is_cpu() {
                return Err(ModelError::Unsupported(
                    "--kernels onednn runs on the CPU only; use --kernels auto on a GPU".into(),
                ));
            }
            let dtype = match self.dtype {
                ComputeDtype::F32 => crate::onednn::Dtype::F32,
                ComputeDtype::Bf16 => crate::onednn::Dtype::Bf16,
            };
            // Creating a primitive is what tells whether oneDNN has a kernel
            // for the dtype here: the reason goes to the user as is.
            crate::onednn::implementation(dtype)
                .map_err(|e| ModelError::Unsupported(e.to_string()))?;
            return Ok(());
        }
        if self.dtype == ComputeDtype::Bf16 && device.is_cpu() {
            if self.kernels == Kernels::Portable {
                return Err(ModelError::Unsupported(
                    "bf16 on the CPU runs the auto kernels' bf16 GEMM (--kernels auto): \
                     candle's CPU bf16 matmul (--kernels portable) is slower than f32; \
                     use --kernels auto, or --dtype f32"
                        .into(),
                ));
            }
            // Auto: our bf16 GEMM, or oneDNN's where ours cannot run.
            if let Err(e) = crate::kernels::gemm_bf16::support() {
                if crate::onednn::implementation(crate::onednn::Dtype::Bf16).is_err() {
                    return Err(ModelError::Unsupported(e.to_string()));
                }
            }
        }
        Ok(())
    }
}

/// [`ComputeOptions::describe`] for a path already resolved.
fn describe_path(options: ComputeOptions, path: KernelPath) -> String {
    if !path.is_fast() {
        return format!("{} {}", path.name(), options.dtype);
    }
    let race = crate::kernels::gemm::gemm_race(path.is_bf16());
    format!(
        "{} (kernels {}, dtype {}; {})",
        path.name(),
        options.kernels,
        options.dtype,
        race.describe()
    )
}

/// Logs the path chosen, once a process for each (options, path).
fn log_path_once(options: ComputeOptions, path: KernelPath) {
    use std::sync::Mutex;
    static SEEN: Mutex<Vec<(ComputeOptions, KernelPath)>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(&(options, path)) {
        return;
    }
    seen.push((options, path));
    drop(seen);
    tracing::info!("compute path: {}", describe_path(options, path));
}

impl fmt::Display for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Portable => "portable",
            Self::Onednn => "onednn",
        })
    }
}

impl FromStr for Kernels {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "portable" => Ok(Self::Portable),
            "onednn" => Ok(Self::Onednn),
            _ => Err(format!("unknown kernels {s:?} (auto, portable or onednn)")),
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

impl FromStr for ComputeDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!("unknown dtype {s:?} (f32 or bf16)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_fast_on_cpu_and_bf16_on_cpu_needs_auto() {
        let cpu = Device::Cpu;
        let auto = ComputeOptions::default();
        // Auto takes oneDNN only where it runs and won the measured race.
        let want = if crate::kernels::gemm::gemm_race(false).onednn_wins() {
            KernelPath::Onednn
        } else {
            KernelPath::Fast
        };
        assert_eq!(auto.resolve(&cpu).unwrap(), want);
        let portable = ComputeOptions {
            kernels: Kernels::Portable,
            ..auto
        };
        assert_eq!(portable.resolve(&cpu).unwrap(), KernelPath::Portable);
        let bf16_portable = ComputeOptions {
            dtype: ComputeDtype::Bf16,
            ..portable
        };
        let e = bf16_portable.resolve(&cpu).unwrap_err().to_string();
        assert!(e.contains("--kernels auto"), "{e}");
        assert_eq!("portable".parse::<Kernels>(), Ok(Kernels::Portable));
        assert_eq!("bf16".parse::<ComputeDtype>(), Ok(ComputeDtype::Bf16));
        assert!("fast".parse::<Kernels>().is_err());
    }

    #[test]
    #[cfg_attr(not(cpu_avx512bf16), ignore = "needs AVX512-BF16")]
    fn bf16_on_an_avx512_bf16_cpu_runs_the_fast_kernels_in_bf16() {
        let bf16 = ComputeOptions {
            dtype: ComputeDtype::Bf16,
            ..ComputeOptions::default()
        };
        let path = bf16.resolve(&Device::Cpu).unwrap();
        assert!(path.is_bf16() && path.is_fast(), "{path:?}");
    }

    #[test]
    #[cfg_attr(
        not(have_onednn),
        ignore = "needs libdnnl.so.2 (apt-get install libdnnl-dev)"
    )]
    fn onednn_resolves_to_the_onednn_paths_and_names_its_kernel() {
        let cpu = Device::Cpu;
        let f32_opts = ComputeOptions {
            kernels: Kernels::Onednn,
            dtype: ComputeDtype::F32,
        };
        assert_eq!(f32_opts.resolve(&cpu).unwrap(), KernelPath::Onednn);
        let line = f32_opts.describe(&cpu).unwrap();
        assert!(
            line.starts_with("onednn (kernels onednn, dtype f32"),
            "{line}"
        );
        assert!(line.contains("oneDNN 2."), "{line}");
        let bf16 = ComputeOptions {
            dtype: ComputeDtype::Bf16,
            ..f32_opts
        };
        match crate::onednn::implementation(crate::onednn::Dtype::Bf16) {
            Ok(_) => assert_eq!(bf16.resolve(&cpu).unwrap(), KernelPath::OnednnBf16),
            Err(e) => {
                let got = bf16.resolve(&cpu).unwrap_err().to_string();
                assert!(got.contains(&e.to_string()), "{got}");
            }
        }
        assert_eq!("onednn".parse::<Kernels>(), Ok(Kernels::Onednn));
        assert_eq!(Kernels::Onednn.to_string(), "onednn");
    }

    #[test]
    #[cfg_attr(have_onednn, ignore = "needs a machine without libdnnl.so.2")]
    fn onednn_without_the_library_is_a_clear_error() {
        let opts = ComputeOptions {
            kernels: Kernels::Onednn,
            dtype: ComputeDtype::F32,
        };
        let e = opts.resolve(&Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains("libdnnl.so.2") && e.contains("libdnnl-dev"),
            "{e}"
        );
        // Auto never picks oneDNN there.
        assert_eq!(
            ComputeOptions::default().resolve(&Device::Cpu).unwrap(),
            KernelPath::Fast
        );
    }

    #[test]
    #[cfg_attr(cpu_avx512bf16, ignore = "needs a CPU without AVX512-BF16")]
    fn bf16_without_avx512_bf16_is_refused_with_the_reason() {
        let bf16 = ComputeOptions {
            dtype: ComputeDtype::Bf16,
            ..ComputeOptions::default()
        };
        let e = bf16.resolve(&Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("needs AVX512-BF16"), "{e}");
    }
}

//! How a model computes, chosen once when it is built: the kernel path
//! (`--kernels auto|portable`) and the compute dtype (`--dtype f32|bf16`).

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
    /// The fused CPU kernels on the CPU in f32, candle's ops elsewhere.
    #[default]
    Auto,
    /// candle's ops only, on every device: what CUDA and Metal run.
    Portable,
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
        Ok(match (self.kernels, device.is_cpu(), self.dtype) {
            (Kernels::Auto, true, ComputeDtype::F32) => KernelPath::Fast,
            (Kernels::Auto, true, ComputeDtype::Bf16) => KernelPath::FastBf16,
            _ => KernelPath::Portable,
        })
    }

    /// Refuses what the device's kernels cannot do, with the reason.
    pub fn check(self, device: &Device) -> Result<()> {
        if self.dtype == ComputeDtype::Bf16 && device.is_cpu() {
            if self.kernels == Kernels::Portable {
                return Err(ModelError::Unsupported(
                    "bf16 on the CPU runs the auto kernels' bf16 GEMM (--kernels auto): \
                     candle's CPU bf16 matmul (--kernels portable) is slower than f32; \
                     use --kernels auto, or --dtype f32"
                        .into(),
                ));
            }
            if let Err(e) = crate::kernels::gemm_bf16::support() {
                return Err(ModelError::Unsupported(e.to_string()));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Portable => "portable",
        })
    }
}

impl FromStr for Kernels {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "portable" => Ok(Self::Portable),
            _ => Err(format!("unknown kernels {s:?} (auto or portable)")),
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
        assert_eq!(auto.resolve(&cpu).unwrap(), KernelPath::Fast);
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
        assert_eq!(bf16.resolve(&Device::Cpu).unwrap(), KernelPath::FastBf16);
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

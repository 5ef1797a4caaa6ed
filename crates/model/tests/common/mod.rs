//! Helpers shared by the integration tests: where the reference models are
//! and how to read their `expected.json`.
#![allow(dead_code)] // each test binary uses a different subset
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::Value;

/// `testdata/models`.
pub fn models_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/models"
    ))
}

/// `expected.json` of the reference model `name`.
pub fn expected(name: &str) -> Value {
    let p = models_dir().join(name).join("expected.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Token rows of a JSON `[[id, ...], ...]`.
pub fn rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// Loads `dir` on the CPU to run the kernels of `kernels`.
pub fn load_on(dir: &std::path::Path, kernels: pretrain_model::Kernels) -> pretrain_model::Model {
    let options = pretrain_model::ComputeOptions {
        kernels,
        ..Default::default()
    };
    pretrain_model::Model::load_with(dir, &candle_core::Device::Cpu, options).unwrap()
}

/// `name => check` runs `check(kernels)` as three tests, `name::auto` (the
/// fast CPU kernels, their GEMMs on oneDNN where auto measured it faster),
/// `name::portable` (candle's ops only, the path CUDA runs) and
/// `name::onednn` (every weight GEMM on oneDNN; ignored with the reason
/// where libdnnl.so.2 is absent), so every parity check covers every path
/// in every `cargo test`.
#[macro_export]
macro_rules! on_both_paths {
    ($($name:ident => $check:expr;)+) => {
        $(
            mod $name {
                use super::*;

                #[test]
                fn auto() {
                    ($check)(pretrain_model::Kernels::Auto);
                }

                #[test]
                fn portable() {
                    ($check)(pretrain_model::Kernels::Portable);
                }

                #[test]
                #[cfg_attr(
                    not(have_onednn),
                    ignore = "needs libdnnl.so.2 (apt-get install libdnnl-dev)"
                )]
                fn onednn() {
                    ($check)(pretrain_model::Kernels::Onednn);
                }
            }
        )+
    };
}

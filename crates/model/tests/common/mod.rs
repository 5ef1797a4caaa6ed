//! Helpers shared by the integration tests: where the reference models are
//! and how to read their `expected.json`.
#![allow(dead_code)] // each test binary uses a different subset

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

//! Checks on a finished `pretrain` run, shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::process::Output;

use serde_json::Value;

/// The run succeeded; its stdout parsed as JSON.
pub fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// The run failed with a one-line `error:` that mentions `needle`.
pub fn fails_with(out: &Output, needle: &str) {
    assert!(!out.status.success(), "should have failed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:") && err.contains(needle), "{err}");
}

/// A stdout whose reader is already gone, so the child's first write fails
/// with EPIPE whatever the timing (dropping a piped stdout after spawning
/// races with a child that writes at once).
pub fn closed_pipe() -> std::process::Stdio {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    writer.into()
}

/// A copy of the model directory `src` in `dst` with element `index` of
/// tensor `name` (an F32 tensor of its `model.safetensors`) set to `value`:
/// how a diverged run or a hostile miner leaves a NaN in one weight.
pub fn copy_with_weight(
    src: &std::path::Path,
    dst: &std::path::Path,
    name: &str,
    index: usize,
    value: f32,
) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read_dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy");
    }
    let path = dst.join("model.safetensors");
    let mut bytes = std::fs::read(&path).expect("read weights");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let t = &header[name];
    assert_eq!(t["dtype"], "F32", "{name}: {t}");
    let start = t["data_offsets"][0].as_u64().expect("offset") as usize;
    let at = 8 + n + start + 4 * index;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(&path, bytes).expect("write weights");
}

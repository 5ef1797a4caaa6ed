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

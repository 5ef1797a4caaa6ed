//! Everything `pretrain` prints on stdout goes through here, so every
//! command behaves the same when stdout is closed early (`pretrain hash DIR
//! | head -c0`, `| true`): the write fails with [`StdoutClosed`], which
//! `main` turns into a quiet exit with status 141 (128 + SIGPIPE, what a
//! shell reports for a tool killed by SIGPIPE) instead of a panic.
//!
//! JSON is always printed the same way: one compact document on one line
//! (pipe it through `jq` to read it).

use std::io::Write;

use serde::Serialize;

/// Exit status when stdout was closed before everything was printed.
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// Stdout was closed by its reader before the output was written.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed before the output was written")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes `text` to stdout and flushes it.
pub fn print_text(text: &str) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    lock.write_all(text.as_bytes())
        .and_then(|()| lock.flush())
        .map_err(stdout_error)
}

/// Writes `line` and a newline to stdout.
pub fn print_line(line: &str) -> anyhow::Result<()> {
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    print_text(&text)
}

/// Writes `value` as one line of compact JSON to stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string(value)?;
    print_line(&text)
}

/// The error for a failed write to stdout: [`StdoutClosed`] for a closed pipe.
pub fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// Whether `err` (or one of its causes) is a closed stdout.
pub fn is_stdout_closed(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|c| c.downcast_ref::<StdoutClosed>().is_some())
}

/// For output printed with `println!` (code not yet moved to this module):
/// a panic because stdout is a closed pipe exits quietly with
/// [`BROKEN_PIPE_EXIT`]; every other panic is reported as before.
pub fn install_broken_pipe_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default(info);
    }));
}

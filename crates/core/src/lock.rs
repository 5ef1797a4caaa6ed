//! One writer per directory: a validator's `--model_dir` or a miner's run
//! directory is locked by the process using it, so a second instance
//! refuses to start (two writers interleave `metrics.jsonl` and the last
//! one wins the state) and says which pid holds it. The lock is the
//! kernel's (`flock`), so it goes with the process, however it ends; the
//! file only says who held it last.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Name of the lock file inside a locked directory.
pub const LOCK_FILE: &str = ".pretrain.lock";

/// Why a directory could not be locked.
#[derive(Debug, Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("{} is in use by another {what} (pid {pid}): stop that one first, or give this one another directory", dir.display())]
    Held {
        /// The directory.
        dir: PathBuf,
        /// What uses it (`pretrain validate`, ...).
        what: String,
        /// The holder's pid, as it wrote it (`unknown` if unreadable).
        pid: String,
    },
    /// The lock file could not be made or locked.
    #[error("cannot lock {}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A held directory lock; released when dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Locks `dir` (created if missing) for this process, `what` naming the
/// program in the refusal; fails at once if another process holds it.
pub fn lock_dir(dir: &Path, what: &str) -> Result<DirLock, LockError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = (&file).take(64).read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                what: what.to_string(),
                pid: if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
                    "unknown".into()
                } else {
                    pid.to_string()
                },
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DirLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model_dir");
        let first = lock_dir(&dir, "pretrain validate").unwrap();
        assert_eq!(
            fs::read_to_string(first.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        // flock locks belong to the open file: a second open in this
        // process is refused as another process would be.
        let err = lock_dir(&dir, "pretrain validate").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id()))
                && msg.contains("pretrain validate")
                && msg.contains("stop that one first"),
            "{msg}"
        );
        drop(first);
        // Released: the next one gets it.
        lock_dir(&dir, "pretrain validate").unwrap();
    }
}

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
    /// Something other than a lock file sits at the lock path: a link
    /// (planted, perhaps, to make the pid overwrite its target), a FIFO, a
    /// device, a directory, or a file with other names (a hard link).
    #[error("{} is a {kind}, not a lock file: it is never followed or written; remove it (`rm {}`) and start again", path.display(), path.display())]
    NotALockFile {
        /// The lock file's path.
        path: PathBuf,
        /// What is there, in words.
        kind: String,
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

/// Opens (creating it if missing) the lock file at `path` for reading and
/// writing, never through a symbolic link, and only if it is a regular file
/// with no other name: the lock truncates and writes it, so anything else
/// there could make it write over a file it does not own.
pub fn open_lock_file(path: &Path) -> Result<File, LockError> {
    let not_lock = |kind: String| LockError::NotALockFile {
        path: path.to_path_buf(),
        kind,
    };
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Looked at first only to name what is there; the open below is what
    // refuses a link swapped in meanwhile.
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_file() => {
            return Err(not_lock(crate::bounded::kind_of(&meta).to_string()))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: a FIFO swapped in after the look above must not hang the open.
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = match options.open(path) {
        Ok(f) => f,
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(not_lock("symbolic link".into()))
        }
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(not_lock(crate::bounded::kind_of(&meta).to_string()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.nlink() > 1 {
            return Err(not_lock(format!(
                "file with {} hard links (another file's name too)",
                meta.nlink()
            )));
        }
    }
    Ok(file)
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
    let mut file = open_lock_file(&path)?;
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

    // What is at the lock path, refused with the kind named and nothing written.
    fn refused_kind(dir: &Path) -> String {
        match lock_dir(dir, "pretrain validate") {
            Err(LockError::NotALockFile { kind, .. }) => {
                let msg = lock_dir(dir, "pretrain validate").unwrap_err().to_string();
                assert!(
                    msg.contains("remove it") && msg.contains(LOCK_FILE),
                    "{msg}"
                );
                kind
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_symlink_is_refused_and_its_target_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model_dir");
        fs::create_dir_all(&dir).unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious bytes").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(LOCK_FILE)).unwrap();
        assert_eq!(refused_kind(&dir), "symbolic link");
        assert_eq!(fs::read(&victim).unwrap(), b"precious bytes");
        // A dangling link is not created through either.
        let absent = tmp.path().join("absent");
        let dir2 = tmp.path().join("d2");
        fs::create_dir_all(&dir2).unwrap();
        std::os::unix::fs::symlink(&absent, dir2.join(LOCK_FILE)).unwrap();
        assert_eq!(refused_kind(&dir2), "symbolic link");
        assert!(!absent.exists());
        // A link to a directory, too.
        let dir3 = tmp.path().join("d3");
        fs::create_dir_all(&dir3).unwrap();
        std::os::unix::fs::symlink(tmp.path(), dir3.join(LOCK_FILE)).unwrap();
        assert_eq!(refused_kind(&dir3), "symbolic link");
    }

    #[cfg(unix)]
    #[test]
    fn a_hard_link_to_another_file_is_refused_and_left_as_is() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model_dir");
        fs::create_dir_all(&dir).unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious bytes").unwrap();
        fs::hard_link(&victim, dir.join(LOCK_FILE)).unwrap();
        assert!(refused_kind(&dir).contains("2 hard links"));
        assert_eq!(fs::read(&victim).unwrap(), b"precious bytes");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_directory_or_socket_is_named_not_hung_on() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo_dir = tmp.path().join("fifo");
        fs::create_dir_all(&fifo_dir).unwrap();
        let fifo = fifo_dir.join(LOCK_FILE);
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(refused_kind(&fifo_dir), "FIFO");

        let sub_dir = tmp.path().join("sub");
        fs::create_dir_all(sub_dir.join(LOCK_FILE)).unwrap();
        assert_eq!(refused_kind(&sub_dir), "directory");

        let sock_dir = tmp.path().join("sock");
        fs::create_dir_all(&sock_dir).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(sock_dir.join(LOCK_FILE)).unwrap();
        assert_eq!(refused_kind(&sock_dir), "socket");
    }

    #[test]
    fn an_existing_stale_lock_file_is_reused_and_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model_dir");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(LOCK_FILE), b"999999999\nleftover text").unwrap();
        let l = lock_dir(&dir, "pretrain mine").unwrap();
        assert_eq!(
            fs::read_to_string(l.path()).unwrap(),
            format!("{}\n", std::process::id())
        );
    }
}

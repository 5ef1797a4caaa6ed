//! The one way the project reads a file that comes from outside (a model
//! directory, a key file, a JSON input): only regular files (a FIFO, a
//! socket or a device such as `/dev/zero`, directly or through a symlink,
//! is refused before it is opened for reading, so nothing blocks or reads
//! forever), and never more than a stated number of bytes (checked from the
//! file's size before reading, and again while reading, since a file can
//! grow).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

/// Cap for small JSON files read from outside (`config.json`, key files, ...).
pub const SMALL_FILE_LIMIT: u64 = 16 << 20;

/// Opens `path` (symlinks followed) only if it is a regular file of at most
/// `limit` bytes; returns the file and its size. Errors are `io::Error`s
/// whose message names the path and what is wrong.
pub fn open_regular(path: &Path, limit: u64) -> io::Result<(File, u64)> {
    // Checked before opening: opening a FIFO for reading blocks until a writer appears.
    let meta = fs::metadata(path)?;
    check_meta(path, &meta, limit)?;
    let file = File::open(path)?;
    // Checked again on the open file: the path may have been swapped in between.
    let meta = file.metadata()?;
    check_meta(path, &meta, limit)?;
    Ok((file, meta.len()))
}

/// The whole content of the regular file `path`, refused when it is larger than `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let (file, len) = open_regular(path, limit)?;
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // One byte past the limit tells a file that grew after the size check.
    file.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(too_large(path, buf.len() as u64, limit));
    }
    Ok(buf)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_to_string(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, limit)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not UTF-8 text", path.display()),
        )
    })
}

/// Reads at most `limit` bytes from any reader (stdin), refusing more.
pub fn read_limited(reader: impl Read, limit: u64, what: &str) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    reader.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} is larger than the limit of {limit} bytes"),
        ));
    }
    Ok(buf)
}

/// A size that came from outside (a flag, a JSON field), checked against its bound before
/// anything is allocated from it: `Err` names the field, the value and the bound.
pub fn check_size(what: &str, value: u64, max: u64) -> Result<usize, String> {
    if value > max {
        return Err(format!("{what} is {value}, over the limit of {max}"));
    }
    usize::try_from(value).map_err(|_| format!("{what} is {value}, too large for this machine"))
}

/// A number of seconds from outside (a flag), as a `Duration`: finite, at least 0, at most
/// `max_secs` (`Duration::from_secs_f64` panics on values like 1e300).
pub fn seconds(what: &str, value: f64, max_secs: f64) -> Result<std::time::Duration, String> {
    if !(value.is_finite() && value >= 0.0 && value <= max_secs) {
        return Err(format!(
            "{what} must be a number of seconds from 0 to {max_secs}, got {value}"
        ));
    }
    std::time::Duration::try_from_secs_f64(value).map_err(|e| format!("{what}: {e}"))
}

/// What kind of file `meta` describes, in words (for messages).
pub fn kind_of(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        return "regular file";
    }
    if t.is_dir() {
        return "directory";
    }
    if t.is_symlink() {
        return "symbolic link";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "FIFO";
        }
        if t.is_socket() {
            return "socket";
        }
        if t.is_char_device() {
            return "character device";
        }
        if t.is_block_device() {
            return "block device";
        }
    }
    "special file"
}

fn check_meta(path: &Path, meta: &fs::Metadata, limit: u64) -> io::Result<()> {
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a {}, not a regular file",
                path.display(),
                kind_of(meta)
            ),
        ));
    }
    if meta.len() > limit {
        return Err(too_large(path, meta.len(), limit));
    }
    Ok(())
}

fn too_large(path: &Path, len: u64, limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} is {len} bytes or more, over the limit of {limit} bytes",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_within_the_limit_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a");
        fs::write(&p, b"hello").unwrap();
        assert_eq!(read_regular(&p, 5).unwrap(), b"hello");
        let e = read_regular(&p, 4).unwrap_err();
        assert!(e.to_string().contains("over the limit of 4 bytes"), "{e}");
        assert!(read_regular(tmp.path(), 100)
            .unwrap_err()
            .to_string()
            .contains("is a directory"));
        assert_eq!(read_limited(&b"abc"[..], 3, "x").unwrap(), b"abc");
        assert_eq!(
            seconds("--d", 1.5, 10.0).unwrap(),
            std::time::Duration::from_millis(1500)
        );
        for bad in [1e300, -1.0, f64::NAN, f64::INFINITY, 10.5] {
            assert!(seconds("--d", bad, 10.0).is_err(), "{bad}");
        }
        assert_eq!(check_size("n", 5, 5).unwrap(), 5);
        assert!(check_size("n", u64::MAX, 5)
            .unwrap_err()
            .contains("over the limit of 5"));
        assert!(read_limited(&b"abcd"[..], 3, "stdin").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_refused_without_blocking() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        // Would block forever if opened for reading.
        let e = read_regular(&fifo, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("is a FIFO"), "{e}");
        let zero = tmp.path().join("zero");
        symlink("/dev/zero", &zero).unwrap();
        let e = read_regular(&zero, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        assert!(open_regular(Path::new("/dev/null"), 10).is_err());
    }
}

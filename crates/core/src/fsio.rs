//! Files written for later are written atomically: a temporary file in the
//! same directory, fsync, rename over the target, fsync the directory. A
//! crash at any moment leaves either the old file or the new one, whole.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically (parent directories are created).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let parent = parent_of(path);
    fs::create_dir_all(parent)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(parent)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fsync_dir(parent)
}

/// Mode of the files of a report or any other output meant to be read by
/// others (a web server): the same for every file of one output.
pub const SHARED_MODE: u32 = 0o644;

/// A new, empty file with a random name in `dir` (created with `O_EXCL`,
/// so a planted link or file is never followed or reused), `mode` on unix.
/// For writers that need a path (a chart library); rename it over the
/// target with `persist`.
pub fn temp_file_in(dir: &Path, suffix: &str, mode: u32) -> io::Result<tempfile::NamedTempFile> {
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(suffix)
        .tempfile_in(dir)?;
    set_mode(tmp.as_file(), mode)?;
    Ok(tmp)
}

/// [`atomic_write`] with the file's mode set (unix): the default of a
/// temporary file is 0600, which a web server serving the output cannot read.
pub fn atomic_write_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let parent = parent_of(path);
    fs::create_dir_all(parent)?;
    let mut tmp = temp_file_in(parent, "", mode)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fsync_dir(parent)
}

fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (file, mode);
        Ok(())
    }
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn atomic_write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> io::Result<()> {
    let mut text = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    text.push(b'\n');
    atomic_write(path, &text)
}

/// Flushes a directory's entries (a rename inside it) to disk. A no-op
/// where directories cannot be opened (Windows).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Appends one line to `path` (created if missing) and flushes it: the
/// JSON Lines metrics files. A crash loses at most the line being written;
/// a file left ending inside a line (a full disk, a crash mid-write) gets
/// a newline first, so the new line is never glued onto the broken one.
pub fn append_line(path: &Path, line: &str) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    fs::create_dir_all(parent_of(path))?;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let mut buf = Vec::with_capacity(line.len() + 2);
    if f.metadata()?.len() > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::End(-1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            buf.push(b'\n');
        }
    }
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    f.write_all(&buf)?;
    f.sync_data()
}

/// Replaces directory `dst` by the complete directory `staged` (same
/// filesystem) so that a crash at any moment leaves a whole directory at
/// `dst`, old or new: the old one is renamed aside first and removed last;
/// on the next call a leftover aside copy is removed. Where `dst` is
/// missing, a crash between the two renames leaves the old copy at
/// `dst.old`, which [`recover_dir`] restores.
pub fn replace_dir(staged: &Path, dst: &Path) -> io::Result<()> {
    let parent = parent_of(dst);
    let aside = aside_path(dst);
    recover_dir(dst)?;
    let had_old = dst.exists();
    if had_old {
        fs::rename(dst, &aside)?;
    }
    if let Err(e) = fs::rename(staged, dst) {
        if had_old {
            let _ = fs::rename(&aside, dst);
        }
        return Err(e);
    }
    fsync_dir(parent)?;
    if had_old {
        fs::remove_dir_all(&aside)?;
    }
    Ok(())
}

/// After a crash inside [`replace_dir`]: puts the old copy back when `dst`
/// is missing, drops it when `dst` is whole.
pub fn recover_dir(dst: &Path) -> io::Result<()> {
    let aside = aside_path(dst);
    if aside.exists() {
        if dst.exists() {
            fs::remove_dir_all(&aside)?;
        } else {
            fs::rename(&aside, dst)?;
        }
    }
    Ok(())
}

fn aside_path(dst: &Path) -> std::path::PathBuf {
    let mut name = dst.file_name().unwrap_or_default().to_os_string();
    name.push(".old");
    parent_of(dst).join(name)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_whole_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a/b/state.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn replace_dir_and_recover() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("best");
        let stage = |v: &str| {
            let s = tempfile::tempdir_in(tmp.path()).unwrap().keep();
            fs::write(s.join("f"), v).unwrap();
            s
        };
        replace_dir(&stage("1"), &dst).unwrap();
        replace_dir(&stage("2"), &dst).unwrap();
        assert_eq!(fs::read_to_string(dst.join("f")).unwrap(), "2");
        // A crash between the two renames: dst missing, old copy aside.
        fs::rename(&dst, tmp.path().join("best.old")).unwrap();
        recover_dir(&dst).unwrap();
        assert_eq!(fs::read_to_string(dst.join("f")).unwrap(), "2");
        assert!(!tmp.path().join("best.old").exists());
        let line = tmp.path().join("m.jsonl");
        append_line(&line, "{}").unwrap();
        append_line(&line, "{}").unwrap();
        assert_eq!(fs::read_to_string(&line).unwrap(), "{}\n{}\n");
    }

    /// The case: a file cut inside a line (a full disk) gets the
    /// next line on a line of its own.
    #[test]
    fn an_append_after_a_cut_line_starts_a_fresh_line() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("metrics.jsonl");
        fs::write(&p, "{\"step\":1}\n{\"step\":2,\"los").unwrap();
        append_line(&p, "{\"step\":3}").unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "{\"step\":1}\n{\"step\":2,\"los\n{\"step\":3}\n"
        );
        // An empty file gets no leading newline.
        let q = tmp.path().join("empty.jsonl");
        fs::write(&q, "").unwrap();
        append_line(&q, "x").unwrap();
        assert_eq!(fs::read_to_string(&q).unwrap(), "x\n");
    }

    /// A planted link at a predictable name is never written through, and
    /// the file gets the mode asked for.
    #[cfg(unix)]
    #[test]
    fn moded_writes_replace_links_and_set_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let out = tmp.path().join("report.html");
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        atomic_write_mode(&out, b"page", SHARED_MODE).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(fs::read_to_string(&out).unwrap(), "page");
        let mode = fs::symlink_metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let t = temp_file_in(tmp.path(), ".png", SHARED_MODE).unwrap();
        assert_eq!(
            t.as_file().metadata().unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
}

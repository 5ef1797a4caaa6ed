//! The model hash: `hash_of_file` and `hash_of_directory` exactly as the
//! original computes them (what a miner commits and a validator re-checks).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Failure to hash a file or directory.
#[derive(Debug, Error)]
pub enum HashError {
    /// A file or directory could not be read (includes broken symlinks and loops).
    #[error("cannot read {}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The path given is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HashError + '_ {
    move |source| HashError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `base64(sha256(bytes))`, standard alphabet, padded (44 characters).
pub fn hash_of_bytes(bytes: &[u8]) -> String {
    B64.encode(Sha256::digest(bytes))
}

/// The secure hash a miner commits since 2024: `base64(sha256(model_hash +
/// hotkey_ss58))` over the UTF-8 of the two texts, so that a copy of the
/// same files committed under another hotkey does not pass the hash check.
pub fn secure_hash(model_hash: &str, hotkey_ss58: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(model_hash.as_bytes());
    hasher.update(hotkey_ss58.as_bytes());
    B64.encode(hasher.finalize())
}

/// `base64(sha256(file contents))`, streaming; symlinks are followed. Only
/// regular files are read: a FIFO or a device (say a link to `/dev/zero`)
/// is an error, not a read that never ends.
pub fn hash_of_file(path: impl AsRef<Path>) -> Result<String, HashError> {
    let path = path.as_ref();
    let (mut file, _) = crate::bounded::open_regular(path, u64::MAX).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(B64.encode(hasher.finalize()))
}

/// The files of `dir` in the order the original (`os.walk`, top-down) feeds
/// them into the directory hash: a directory's own files sorted by code
/// point, then its sub-directories in sorted order, depth first. Symlinks to
/// directories are not descended into (as `os.walk` without `followlinks`);
/// symlinks to files are listed and followed when read.
pub fn walk_order(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>, HashError> {
    let dir = dir.as_ref();
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(HashError::NotADirectory(dir.to_path_buf()));
    }
    let mut out = Vec::new();
    walk_into(dir, &mut out)?;
    Ok(out)
}

fn walk_into(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), HashError> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let is_link = entry.file_type().map_err(io_err(&path))?.is_symlink();
        // Like os.walk: is_dir follows links, so a link to a directory counts
        // as a directory (and is then skipped); a broken link is a "file".
        let is_dir = fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
        let name = entry.file_name();
        if is_dir {
            if !is_link {
                dirs.push(name);
            }
        } else {
            files.push(name);
        }
    }
    // Unicode code point order is UTF-8 byte order.
    files.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    dirs.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    out.extend(files.into_iter().map(|f| dir.join(f)));
    for d in dirs {
        walk_into(&dir.join(d), out)?;
    }
    Ok(())
}

/// `hash_of_directory`: one sha256 over the ASCII `hash_of_file` of every
/// file in [`walk_order`], base64-encoded.
pub fn hash_of_directory(dir: impl AsRef<Path>) -> Result<String, HashError> {
    let mut hasher = Sha256::new();
    for file in walk_order(dir)? {
        hasher.update(hash_of_file(&file)?.as_bytes());
    }
    Ok(B64.encode(hasher.finalize()))
}

/// [`hash_of_directory`] over only the files of `dir` whose `/`-separated
/// path relative to `dir` is in `keep`, in [`walk_order`]: the hash of the
/// directory as it would be if it held only those files (what the original
/// hashes after `from_pretrained` downloaded just the model's files).
pub fn hash_of_files_in(dir: impl AsRef<Path>, keep: &[String]) -> Result<String, HashError> {
    let dir = dir.as_ref();
    let mut hasher = Sha256::new();
    for file in walk_order(dir)? {
        let rel = file
            .strip_prefix(dir)
            .map(|r| r.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/"))
            .unwrap_or_default();
        if keep.contains(&rel) {
            hasher.update(hash_of_file(&file)?.as_bytes());
        }
    }
    Ok(B64.encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn reference() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/hash"))
    }

    fn cases() -> Value {
        let text = fs::read_to_string(reference().join("cases.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn b64(v: &Value) -> Vec<u8> {
        B64.decode(v.as_str().unwrap()).unwrap()
    }

    /// Builds each reference tree from its file list (empty directories
    /// cannot be shipped in the reference folder) and checks every hash and
    /// the walk order.
    #[test]
    fn trees_match_reference() {
        let c = cases();
        let trees = c["trees"].as_array().unwrap();
        assert!(!trees.is_empty());
        for tree in trees {
            let tmp = tempfile::tempdir().unwrap();
            for f in tree["files"].as_array().unwrap() {
                let p = tmp.path().join(f["path"].as_str().unwrap());
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                let bytes = b64(&f["content_b64"]);
                fs::write(&p, &bytes).unwrap();
                assert_eq!(
                    hash_of_file(&p).unwrap(),
                    f["hash_of_file"].as_str().unwrap()
                );
            }
            for d in tree
                .get("dirs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                fs::create_dir_all(tmp.path().join(d.as_str().unwrap())).unwrap();
            }
            let order: Vec<String> = walk_order(tmp.path())
                .unwrap()
                .iter()
                .map(|p| {
                    p.strip_prefix(tmp.path())
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/")
                })
                .collect();
            let expected: Vec<String> = tree["walk_order"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            assert_eq!(order, expected, "walk order of {}", tree["name"]);
            assert_eq!(
                hash_of_directory(tmp.path()).unwrap(),
                tree["hash_of_directory"].as_str().unwrap(),
                "tree {}",
                tree["name"]
            );
        }
    }

    /// The shipped trees (all but those with empty directories) hash the same in place.
    #[test]
    fn shipped_trees_match_reference() {
        let c = cases();
        let mut checked = 0;
        for tree in c["trees"].as_array().unwrap() {
            let name = tree["name"].as_str().unwrap();
            let dir = reference().join("trees").join(name);
            if dir.is_dir() {
                assert_eq!(
                    hash_of_directory(&dir).unwrap(),
                    tree["hash_of_directory"].as_str().unwrap()
                );
                checked += 1;
            }
        }
        assert!(checked >= 3);
    }

    #[test]
    fn single_files_match_reference() {
        let c = cases();
        for f in c["files"].as_array().unwrap() {
            assert_eq!(
                hash_of_bytes(&b64(&f["content_b64"])),
                f["hash_of_file"].as_str().unwrap()
            );
        }
    }

    /// The upstream unit test of `get_hash_of_two_strings`.
    #[test]
    fn secure_hash_of_upstream_test() {
        assert_eq!(
            secure_hash("hello", "world"),
            "k2oYXKqiZrucvpgengXLeM1zKwsygOuURBK7b4+PB68="
        );
        assert_eq!(secure_hash("hello", "world"), hash_of_bytes(b"helloworld"));
    }

    /// The subset hash of a tree is the full hash of a tree holding only that subset
    /// (the reference's `flat` tree plus two files that are left out).
    #[test]
    fn subset_hash_is_the_hash_of_the_subset_alone() {
        let c = cases();
        let flat = &c["trees"].as_array().unwrap()[0];
        assert_eq!(flat["name"], "flat");
        let tmp = tempfile::tempdir().unwrap();
        let mut keep = Vec::new();
        for f in flat["files"].as_array().unwrap() {
            let path = f["path"].as_str().unwrap();
            fs::write(tmp.path().join(path), b64(&f["content_b64"])).unwrap();
            keep.push(path.to_string());
        }
        fs::write(tmp.path().join(".gitattributes"), b"*.bin filter=lfs\n").unwrap();
        fs::write(tmp.path().join("README.md"), b"# model\n").unwrap();
        assert_eq!(
            hash_of_files_in(tmp.path(), &keep).unwrap(),
            flat["hash_of_directory"].as_str().unwrap()
        );
        assert_ne!(
            hash_of_directory(tmp.path()).unwrap(),
            flat["hash_of_directory"].as_str().unwrap()
        );
    }

    #[test]
    fn empty_directory() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            hash_of_directory(tmp.path()).unwrap(),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    /// Hostile input: a FIFO or a link to a device in a model directory
    /// made hashing hang; now each is an error naming the file.
    #[cfg(unix)]
    #[test]
    fn special_files_are_errors_not_hangs() {
        use std::os::unix::fs::symlink;
        for (name, make) in [("fifo", 0), ("zero", 1), ("null", 2), ("urandom", 3)] {
            let tmp = tempfile::tempdir().unwrap();
            fs::write(tmp.path().join("config.json"), b"{}").unwrap();
            let p = tmp.path().join(name);
            match make {
                0 => assert!(std::process::Command::new("mkfifo")
                    .arg(&p)
                    .status()
                    .unwrap()
                    .success()),
                1 => symlink("/dev/zero", &p).unwrap(),
                2 => symlink("/dev/null", &p).unwrap(),
                _ => symlink("/dev/urandom", &p).unwrap(),
            }
            let err = hash_of_directory(tmp.path()).unwrap_err();
            // The path in the message, the reason as its source.
            let cause = std::error::Error::source(&err).map(|s| s.to_string());
            let err = format!("{err}: {}", cause.unwrap_or_default());
            assert!(err.contains("not a regular file"), "{name}: {err}");
            assert!(err.contains(name), "{name}: {err}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_followed_for_files_not_dirs_and_errors_not_panics() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        fs::write(real.join("a.txt"), b"hello").unwrap();
        let linked = tmp.path().join("linked");
        fs::create_dir(&linked).unwrap();
        symlink(real.join("a.txt"), linked.join("a.txt")).unwrap();
        // A link to a directory is not descended into.
        symlink(&real, linked.join("dirlink")).unwrap();
        assert_eq!(
            hash_of_directory(&linked).unwrap(),
            hash_of_directory(&real).unwrap()
        );

        let looped = tmp.path().join("loop");
        fs::create_dir(&looped).unwrap();
        symlink(looped.join("x"), looped.join("y")).unwrap();
        symlink(looped.join("y"), looped.join("x")).unwrap();
        assert!(matches!(
            hash_of_directory(&looped),
            Err(HashError::Io { .. })
        ));
        assert!(matches!(
            hash_of_directory(real.join("a.txt")),
            Err(HashError::NotADirectory(_))
        ));
    }
}

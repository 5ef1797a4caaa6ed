//! Validation of file paths listed by a hub (repo ids, commits and hotkeys
//! are the typed ids of `pretrain_core::ids`, checked when parsed). Nothing a hub, a chain
//! or a user hands us may make a path escape the directory it is joined to.

use std::path::{Path, PathBuf};

use crate::HubError;

/// Checks a file path listed by a hub (`/`-separated, relative) and returns
/// it as a relative [`PathBuf`]. Refuses absolute paths, `..`, `.`, empty
/// components, backslashes, NUL and over-long paths.
pub fn safe_relative_path(path: &str) -> Result<PathBuf, HubError> {
    let unsafe_path = |reason: &str| HubError::UnsafePath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.is_empty() {
        return Err(unsafe_path("empty file name"));
    }
    if path.len() > 1024 {
        return Err(unsafe_path("path longer than 1024 bytes"));
    }
    if path.starts_with('/') || Path::new(path).is_absolute() {
        return Err(unsafe_path("absolute path"));
    }
    let mut out = PathBuf::new();
    for part in path.split('/') {
        match part {
            ".." => return Err(unsafe_path("'..' would leave the directory")),
            "." | "" => return Err(unsafe_path("empty or '.' path component")),
            p if p.contains(['\\', '\0']) => {
                return Err(unsafe_path("backslash or NUL in the path"))
            }
            p if p.len() >= 2 && p.as_bytes()[1] == b':' => {
                return Err(unsafe_path("drive prefix"))
            }
            p => out.push(p),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_paths() {
        assert_eq!(
            safe_relative_path("a/b.txt").unwrap(),
            PathBuf::from("a").join("b.txt")
        );
        assert_eq!(
            safe_relative_path(".gitattributes").unwrap(),
            PathBuf::from(".gitattributes")
        );
        for (bad, why) in [
            ("../evil", "'..'"),
            ("a/../../evil", "'..'"),
            ("/etc/passwd", "absolute"),
            ("a//b", "empty"),
            ("./a", "'.'"),
            ("a\\..\\b", "backslash"),
            ("C:/x", "drive"),
            ("", "empty"),
        ] {
            let err = safe_relative_path(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}

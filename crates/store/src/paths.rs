//! Validation of every name that becomes part of a path on disk: repo ids,
//! commits, hotkeys and file paths listed by a hub. Nothing a hub, a chain
//! or a user hands us may make a path escape the directory it is joined to.

use std::path::{Path, PathBuf};

use pretrain_core::validate_hf_repo_id;

use crate::HubError;

/// A repo id split into its two parts, both checked safe as path components.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoId {
    /// User or organisation.
    pub namespace: String,
    /// Repo name.
    pub name: String,
}

impl RepoId {
    /// Parses and checks `namespace/name` (the original's rule plus: both
    /// parts non-empty, only `A-Z a-z 0-9 - _ .`, not `.`/`..`, which is also
    /// what the Hugging Face Hub accepts).
    pub fn parse(repo_id: &str) -> Result<Self, HubError> {
        let (namespace, name) =
            validate_hf_repo_id(repo_id).map_err(|e| HubError::InvalidRepoId {
                repo_id: repo_id.to_string(),
                reason: e.to_string(),
            })?;
        for (what, part) in [("namespace", &namespace), ("name", &name)] {
            if let Err(reason) = check_component(part) {
                return Err(HubError::InvalidRepoId {
                    repo_id: repo_id.to_string(),
                    reason: format!("{what} {reason}"),
                });
            }
            if !part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(HubError::InvalidRepoId {
                    repo_id: repo_id.to_string(),
                    reason: format!("{what} may only contain letters, digits, '-', '_' and '.'"),
                });
            }
        }
        Ok(Self { namespace, name })
    }

    /// The folder `huggingface_hub` keeps this model repo in: `models--<ns>--<name>`.
    pub fn folder_name(&self) -> String {
        format!("models--{}--{}", self.namespace, self.name)
    }

    /// `namespace/name`.
    pub fn as_string(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for RepoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn check_component(part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err("is empty".into());
    }
    if part == "." || part == ".." {
        return Err(format!("{part:?} would leave the directory"));
    }
    if part.contains(['/', '\\', '\0']) {
        return Err(format!("{part:?} contains a path separator or NUL"));
    }
    Ok(())
}

/// Checks a commit id: exactly 40 lowercase hex digits (a git sha).
pub fn check_commit(commit: &str) -> Result<(), HubError> {
    if commit.len() == 40
        && commit
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(HubError::InvalidCommit(commit.to_string()))
    }
}

/// Checks a hotkey used as a directory name: an SS58 address is 1 to 64
/// base58 characters, so only ASCII letters and digits are allowed.
pub fn check_hotkey(hotkey: &str) -> Result<(), HubError> {
    if !hotkey.is_empty() && hotkey.len() <= 64 && hotkey.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        Ok(())
    } else {
        Err(HubError::UnsafePath {
            path: hotkey.to_string(),
            reason: "a hotkey must be 1 to 64 ASCII letters or digits".into(),
        })
    }
}

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
    fn repo_ids() {
        let r = RepoId::parse("alice/tiny-gpt2").unwrap();
        assert_eq!(r.folder_name(), "models--alice--tiny-gpt2");
        assert_eq!(r.as_string(), "alice/tiny-gpt2");
        for bad in [
            "../x", "a/..", "./abc", "/abc", "abc/", "a b/c", "a\\b/c", "ab", "a/b/c",
        ] {
            let err = RepoId::parse(bad).unwrap_err();
            assert!(
                matches!(err, HubError::InvalidRepoId { .. }),
                "{bad}: {err}"
            );
        }
        let err = RepoId::parse("../x").unwrap_err().to_string();
        assert!(err.contains("would leave the directory"), "{err}");
    }

    #[test]
    fn commits_and_hotkeys() {
        check_commit("0123456789abcdef0123456789abcdef01234567").unwrap();
        for bad in [
            "",
            "main",
            "0123456789ABCDEF0123456789abcdef01234567",
            "../../../../../../../../../../../../../a",
        ] {
            assert!(check_commit(bad).is_err(), "{bad}");
        }
        check_hotkey("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY").unwrap();
        for bad in ["", "..", "a/b", "/abs", "x".repeat(65).as_str()] {
            assert!(check_hotkey(bad).is_err(), "{bad}");
        }
    }

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

//! Model hubs and the validator's on-disk model store.
//!
//! # Hubs
//! [`ModelHub`] is what the miner and the validator use to move model
//! directories around; [`open_hub`] builds one from the `--hub` flag:
//! - `hf` ([`HfHub`]): the Hugging Face Hub (or a mirror, `--hub_endpoint` /
//!   `HF_ENDPOINT`), token from `HF_ACCESS_TOKEN` or a `.env` file.
//! - `local:DIR` ([`LocalHub`]): repos as folders of immutable,
//!   content-addressed commits, safe for several processes at once.
//!
//! Repos are [`Visibility::Public`] or [`Visibility::Private`]: a private
//! repo is missing ([`HubError::NotFound`]) to every reader but its owner
//! (the later protocol's miners upload private and publish after their
//! commitment lands).
//!
//! Both download a commit's model files (what transformers' `from_pretrained`
//! fetches, [`pretrained`]) into `DEST/models--<ns>--<name>/snapshots/<commit>/`
//! (the `huggingface_hub` cache layout) with real files (no symlinks),
//! atomically (staged, then renamed into place).
//!
//! # Validator
//! [`ModelStore`] owns `<model_dir>/models/`: [`ModelStore::fetch`] puts a
//! hotkey's committed model at
//! `<model_dir>/models/<hotkey>/models--<ns>--<name>/snapshots/<commit>/`
//! after checking the total size from the hub's file list (before any byte
//! is downloaded) and the directory hash after (a mismatch deletes it);
//! [`ModelStore::delete_unreferenced`] is the clean loop. No repo id,
//! hotkey, commit or listed file name can make it write or delete outside
//! its root.
//!
//! # Miner
//! The miner's push (upload, then commit) lives in `pretrain-neurons`; this
//! crate only moves files.
//!
//! ```no_run
//! # async fn example(hotkey: &pretrain_core::HotkeyAddress, id: pretrain_core::ModelId)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use pretrain_store::{open_hub, HubOptions, ModelStore};
//!
//! let hub = open_hub("local:/tmp/hub", HubOptions::default())?;
//! // Validator: fetch and verify that hotkey's model, then clean up.
//! let store = ModelStore::new("/tmp/validator");
//! let model = store
//!     .fetch(hub.as_ref(), hotkey, &id, pretrain_core::constants::MAX_MODEL_BYTES)
//!     .await?;
//! println!("{} at {}", model.hash, model.path.display());
//! let tracked = [(hotkey.clone(), id)].into_iter().collect();
//! store.delete_unreferenced(&tracked, Duration::from_secs(300))?;
//! # Ok(()) }
//! ```
//!
//! Every call that talks to a hub is bounded by the hub's own per-request
//! timeout (60 s by default for `hf`); a caller that wants a limit on a
//! whole download wraps it in `tokio::time::timeout`. Repo ids are held to
//! Hugging Face's rule (letters, digits, `-`, `_`, `.`; no empty part), which
//! is stricter than the original's `validate_hf_repo_id`: an id that could
//! name a path outside the store cannot even be built as a [`RepoId`].

#![warn(missing_docs)]

pub mod hf;
pub mod local;
pub mod paths;
pub mod pretrained;
pub mod store;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use thiserror::Error;

pub use hf::auth::{check_hf_token, resolve_endpoint, TokenCheckError};
pub use hf::{hf_token, HfHub, HfOptions};
pub use local::LocalHub;
pub use pretrain_core::{CommitId, HotkeyAddress, IdError, RepoId};
pub use store::{CleanupReport, FetchedModel, ModelStore, StoreError};

/// One file of a repo at a commit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct RepoFile {
    /// Path inside the repo, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// Errors of hub operations; the variants are what callers branch on.
#[derive(Debug, Error)]
pub enum HubError {
    /// The repo, commit or file does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The hub refused the token (or there is none and one is needed).
    #[error("unauthorised: {0}")]
    Unauthorized(String),
    /// The repo's files are larger than allowed.
    #[error("repo {repo_id} at {commit} holds {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// `namespace/name`.
        repo_id: String,
        /// Commit checked.
        commit: String,
        /// Total size of the files.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The hub asked us to slow down, and kept doing so through our retries.
    #[error("rate limited by the hub: {0}")]
    RateLimited(String),
    /// The hub could not be reached, or a transfer broke off (after retries).
    #[error("network error: {0}")]
    Network(String),
    /// The hub answered something we cannot use.
    #[error("bad response from the hub: {0}")]
    BadResponse(String),
    /// A path would leave the directory it belongs in.
    #[error("refusing unsafe path {path:?}: {reason}")]
    UnsafePath {
        /// The offending path or name.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// A local file or directory operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The files of a local directory could not be listed.
    #[error("cannot list {}", dir.display())]
    List {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: pretrain_core::HashError,
    },
    /// A blocking task of the hub panicked or was cancelled.
    #[error("a hub task did not finish")]
    Task(#[source] tokio::task::JoinError),
    /// The `--hub` value is not understood.
    #[error("unknown hub {0:?}: expected \"hf\" or \"local:DIR\"")]
    BadSpec(String),
}

impl HubError {
    /// Whether the same call may succeed later (rate limit, network);
    /// anything else is a refusal that retrying cannot fix.
    pub fn is_retryable(&self) -> bool {
        matches!(self, HubError::RateLimited(_) | HubError::Network(_))
    }

    /// Whether the failure is the repo's own content (too large, a listed
    /// file name that would leave its directory), so that no retry can fix
    /// it and the commitment may be refused for good. Everything else (a
    /// missing repo, our token refused, the network, a bad answer, our own
    /// disk) is the validator's or the hub's side, and is retried later.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            HubError::TooLarge { .. } | HubError::UnsafePath { .. }
        )
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HubError {
        let context = context.into();
        move |source| HubError::Io { context, source }
    }
}

/// Who may read a repo. A private repo is answered to anyone but its owner
/// as if it did not exist ([`HubError::NotFound`]), as Hugging Face answers
/// a stranger with 404: the later protocol's miners upload private and make
/// the repo public only once their commitment is on chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Anyone may list and download it.
    Public,
    /// Only its owner (the token's account) may.
    Private,
}

impl std::fmt::Display for Visibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        })
    }
}

impl std::str::FromStr for Visibility {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "public" => Ok(Visibility::Public),
            "private" => Ok(Visibility::Private),
            other => Err(format!(
                "unknown visibility {other:?}: expected \"public\" or \"private\""
            )),
        }
    }
}

/// Where model directories are uploaded to and downloaded from.
#[async_trait]
pub trait ModelHub: Send + Sync {
    /// Uploads the files of `dir` as one commit of `repo`, public if the
    /// repo is new (an existing repo keeps its visibility).
    async fn upload(&self, dir: &Path, repo: &RepoId) -> Result<CommitId, HubError> {
        self.upload_as(dir, repo, Visibility::Public).await
    }

    /// Uploads the files of `dir` as one commit of `repo`; afterwards the
    /// repo at that commit holds exactly those files, and a `.gitattributes`
    /// (the directory's own, else the one the Hub wrote at the repo's creation). A new repo is created
    /// with `visibility`; an existing one keeps its own (as Hugging Face's
    /// `create_repo` on an existing repo changes nothing): use
    /// [`ModelHub::set_visibility`] to change it. Returns the commit sha
    /// (40 hex digits).
    async fn upload_as(
        &self,
        dir: &Path,
        repo: &RepoId,
        visibility: Visibility,
    ) -> Result<CommitId, HubError>;

    /// Makes `repo` public or private; [`HubError::NotFound`] if it does not exist.
    async fn set_visibility(&self, repo: &RepoId, visibility: Visibility) -> Result<(), HubError>;

    /// The files of `repo` at `commit` with their sizes, from the hub's
    /// metadata (nothing is downloaded).
    async fn files_at(&self, repo: &RepoId, commit: &CommitId) -> Result<Vec<RepoFile>, HubError>;

    /// [`ModelHub::files_at`] as the repo's owner sees it: a private repo is
    /// listed too. The uploader's check that the hub holds what it sent. The
    /// default is `files_at`, right for a hub whose requests carry the
    /// owner's token.
    async fn files_at_as_owner(
        &self,
        repo: &RepoId,
        commit: &CommitId,
    ) -> Result<Vec<RepoFile>, HubError> {
        self.files_at(repo, commit).await
    }

    /// Downloads the model files of `repo` at `commit` (those that
    /// transformers' `from_pretrained` fetches: [`pretrained::select`]; not
    /// `.gitattributes` or a `README.md`) into
    /// `dest/models--<ns>--<name>/snapshots/<commit>/` (replacing nothing
    /// that is already complete there) and returns that directory, whose
    /// `hash_of_directory` is then the hash the original computes.
    async fn download(
        &self,
        repo: &RepoId,
        commit: &CommitId,
        dest: &Path,
    ) -> Result<PathBuf, HubError>;
}

/// Options for [`open_hub`].
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Hugging Face endpoint (`--hub_endpoint`); `HF_ENDPOINT` or the public hub when unset.
    pub endpoint: Option<String>,
    /// Token; `HF_ACCESS_TOKEN` (environment, then `.env`) when unset.
    pub token: Option<String>,
    /// Draw a download progress bar on stderr.
    pub progress: bool,
}

/// Builds the hub named by a `--hub` value: `hf` or `local:DIR`.
pub fn open_hub(spec: &str, options: HubOptions) -> Result<Box<dyn ModelHub>, HubError> {
    if spec == "hf" {
        let token = options.token.or_else(hf_token);
        let endpoint = hf::auth::resolve_endpoint(options.endpoint.as_deref());
        let hub = HfHub::new(HfOptions {
            endpoint,
            token,
            progress: options.progress,
            ..HfOptions::default()
        })?;
        Ok(Box::new(hub))
    } else if let Some(dir) = spec.strip_prefix("local:") {
        if dir.is_empty() {
            return Err(HubError::BadSpec(spec.to_string()));
        }
        Ok(Box::new(LocalHub::open(dir)?))
    } else {
        Err(HubError::BadSpec(spec.to_string()))
    }
}

/// Hidden names that may be uploaded: git's attributes file, which every hub repo has and
/// which holds no secret.
pub const ALLOWED_HIDDEN: &[&str] = &[".gitattributes"];

/// Lists the files of `dir` to upload, as the model hash sees them
/// (`/`-separated relative paths, symlinks to files followed, symlinks to
/// directories skipped), with their sizes. Refused, so that nothing leaks
/// and the committed hash is the hash of exactly what was uploaded:
/// - hidden files and folders (`.env` may hold the hub token, `.git/` the
///   history, `.netrc`, `.ssh/` ...), except [`ALLOWED_HIDDEN`];
/// - a symlink whose target is outside `dir` (its target's contents would be uploaded);
/// - anything that is not a regular file (a FIFO, a device).
pub fn list_local_files(dir: &Path) -> Result<Vec<(String, PathBuf, u64)>, HubError> {
    let root = std::fs::canonicalize(dir)
        .map_err(HubError::io(format!("cannot read {}", dir.display())))?;
    let files = pretrain_core::hash::walk_order(dir).map_err(|source| HubError::List {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let rel = file
            .strip_prefix(dir)
            .map_err(|_| HubError::UnsafePath {
                path: file.display().to_string(),
                reason: "outside the directory being listed".into(),
            })?
            .to_str()
            .ok_or_else(|| HubError::UnsafePath {
                path: file.display().to_string(),
                reason: "file name is not UTF-8".into(),
            })?
            .replace(std::path::MAIN_SEPARATOR, "/");
        paths::safe_relative_path(&rel)?;
        if let Some(hidden) = rel
            .split('/')
            .find(|part| part.starts_with('.') && !ALLOWED_HIDDEN.contains(part))
        {
            return Err(HubError::UnsafePath {
                path: rel.clone(),
                reason: format!(
                    "hidden file or folder {hidden:?} in the model directory: it is never \
                     uploaded (it may hold secrets such as a hub token); save the model to a \
                     directory without it"
                ),
            });
        }
        // Where the file really is: a link out of the directory would upload its target.
        let real = std::fs::canonicalize(&file)
            .map_err(HubError::io(format!("cannot read {}", file.display())))?;
        if !real.starts_with(&root) {
            return Err(HubError::UnsafePath {
                path: rel.clone(),
                reason: format!(
                    "a symbolic link to {}, outside the model directory",
                    real.display()
                ),
            });
        }
        let (_, size) = pretrain_core::bounded::open_regular(&file, u64::MAX)
            .map_err(HubError::io(format!("cannot upload {}", file.display())))?;
        out.push((rel, file, size));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_names_are_huggingface_words() {
        for (v, name) in [
            (Visibility::Public, "public"),
            (Visibility::Private, "private"),
        ] {
            assert_eq!(v.to_string(), name);
            assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(name));
            assert_eq!(name.parse::<Visibility>().unwrap(), v);
        }
        assert!("Public".parse::<Visibility>().is_err());
    }

    #[test]
    fn open_hub_specs() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = format!("local:{}", tmp.path().display());
        assert!(open_hub(&spec, HubOptions::default()).is_ok());
        assert!(open_hub(
            "hf",
            HubOptions {
                endpoint: Some("http://127.0.0.1:9".into()),
                ..Default::default()
            }
        )
        .is_ok());
        for bad in ["", "local:", "s3:bucket", "HF"] {
            let err = open_hub(bad, HubOptions::default()).err().unwrap();
            assert!(
                err.to_string().contains("expected \"hf\" or \"local:DIR\""),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn errors_say_their_own_part_and_expose_the_cause() {
        let denied = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let err = HubError::io("cannot read x")(denied);
        assert_eq!(err.to_string(), "cannot read x");
        let cause = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .unwrap();
        assert_eq!(cause.kind(), std::io::ErrorKind::PermissionDenied);
        // A wrapper adds nothing and hides nothing.
        let store = StoreError::from(HubError::NotFound("repo a/b".into()));
        assert_eq!(store.to_string(), "not found: repo a/b");
        assert!(std::error::Error::source(&store).is_none());
        let not_a_dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/models/tiny-gpt2/model/config.json"
        );
        let listing = list_local_files(Path::new(not_a_dir)).unwrap_err();
        assert!(matches!(listing, HubError::List { .. }), "{listing}");
        assert!(std::error::Error::source(&listing).is_some());
    }

    #[test]
    fn lists_files_like_the_hash_walk() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/models/tiny-gpt2/model"
        );
        let files = list_local_files(Path::new(dir)).unwrap();
        let listed: Vec<(&str, u64)> = files.iter().map(|(p, _, s)| (p.as_str(), *s)).collect();
        assert_eq!(
            listed,
            vec![
                ("config.json", 748),
                ("generation_config.json", 119),
                ("model.safetensors", 6668456)
            ]
        );
    }
}

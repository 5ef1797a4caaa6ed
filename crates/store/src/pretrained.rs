//! Which files of a repo make up the model: those that transformers'
//! `AutoModelForCausalLM.from_pretrained(repo, revision=commit,
//! use_safetensors=True)` (4.34.1, the original's) fetches into its cache
//! snapshot, and so the files the original hashes, on both sides: its
//! validator hashes that snapshot, and its miner commits the hash of the same
//! re-download.
//!
//! - `config.json`;
//! - `model.safetensors`, or, when the repo has none, `model.safetensors.index.json`
//!   and every shard its `weight_map` names;
//! - `generation_config.json` when the repo has one.
//!
//! Never `.gitattributes` (which the Hub writes into every new repo), a
//! `README.md`, or anything else. The size limit is still checked over every
//! file of the repo (as the original sums `model_info(...).siblings`).

use std::collections::BTreeSet;
use std::path::Path;

use crate::paths::safe_relative_path;
use crate::{list_local_files, HubError, RepoFile};

/// The model's configuration (always fetched).
pub const CONFIG: &str = "config.json";
/// The generation settings (fetched when present).
pub const GENERATION_CONFIG: &str = "generation_config.json";
/// Unsharded safetensors weights.
pub const SAFETENSORS: &str = "model.safetensors";
/// The index of sharded safetensors weights (tried when there is no [`SAFETENSORS`]).
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
/// The largest index read (a 70B model's index is about 100 KB).
pub const INDEX_LIMIT: u64 = 16 << 20;

/// Files of a repo that are never part of the model.
const NEVER_MODEL_FILES: &[&str] = &[".gitattributes", "README.md"];

/// The `.gitattributes` the Hub writes into every new model repo.
pub const HUB_GITATTRIBUTES: &str = include_str!("hub_gitattributes.txt");

/// The index that must be read before the files can be chosen: `Some` when
/// the repo has no [`SAFETENSORS`] but has a [`SAFETENSORS_INDEX`].
pub fn index_to_read(listed: &[RepoFile]) -> Option<&RepoFile> {
    if listed.iter().any(|f| f.path == SAFETENSORS) {
        return None;
    }
    listed.iter().find(|f| f.path == SAFETENSORS_INDEX)
}

/// The shard names of a safetensors index, sorted and each once (as
/// `get_checkpoint_shard_files` takes `sorted(set(weight_map.values()))`).
pub fn shard_names(index: &[u8]) -> Result<Vec<String>, HubError> {
    let bad = |why: String| HubError::BadResponse(format!("{SAFETENSORS_INDEX}: {why}"));
    let v: serde_json::Value =
        serde_json::from_slice(index).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("the file of {tensor:?} is not a string")))?;
        safe_relative_path(file)?;
        names.insert(file.to_string());
    }
    Ok(names.into_iter().collect())
}

/// The files `from_pretrained` fetches from a repo listing `listed`;
/// `index` is the content of [`index_to_read`] (`None` when that is `None`).
/// A shard the index names but the repo lacks is an error (`from_pretrained`
/// fails on it too). A repo without safetensors weights, which
/// `from_pretrained(use_safetensors=True)` refuses, selects every file but
/// `.gitattributes` and `README.md`, so that the model check refuses it
/// naming what it holds instead (a pickle, say).
pub fn select(listed: &[RepoFile], index: Option<&[u8]>) -> Result<Vec<RepoFile>, HubError> {
    let find = |name: &str| listed.iter().find(|f| f.path == name).cloned();
    if find(SAFETENSORS).is_none() && find(SAFETENSORS_INDEX).is_none() {
        let mut all: Vec<RepoFile> = listed
            .iter()
            .filter(|f| !NEVER_MODEL_FILES.contains(&f.path.as_str()))
            .cloned()
            .collect();
        all.sort();
        return Ok(all);
    }
    let mut out: Vec<RepoFile> = find(CONFIG).into_iter().collect();
    if let Some(w) = find(SAFETENSORS) {
        out.push(w);
    } else if let Some(ix) = find(SAFETENSORS_INDEX) {
        let bytes = index.ok_or_else(|| {
            HubError::BadResponse(format!("{SAFETENSORS_INDEX} must be read first"))
        })?;
        for shard in shard_names(bytes)? {
            let f = find(&shard).ok_or_else(|| {
                HubError::BadResponse(format!(
                    "{SAFETENSORS_INDEX} names the shard {shard:?}, which the repo does not hold"
                ))
            })?;
            out.push(f);
        }
        out.push(ix);
    }
    out.extend(find(GENERATION_CONFIG));
    out.sort();
    out.dedup();
    Ok(out)
}

/// [`select`] over a local model directory: the `/`-separated paths of the
/// files of `dir` that `from_pretrained` would fetch had it been uploaded.
pub fn local_model_files(dir: &Path) -> Result<Vec<RepoFile>, HubError> {
    let listed: Vec<RepoFile> = list_local_files(dir)?
        .into_iter()
        .map(|(path, _, size)| RepoFile { path, size })
        .collect();
    select_in(dir, &listed)
}

/// [`select`] over `listed`, the files of the local directory `dir`, reading
/// its safetensors index from `dir` where the choice needs it.
fn select_in(dir: &Path, listed: &[RepoFile]) -> Result<Vec<RepoFile>, HubError> {
    let index = match index_to_read(listed) {
        Some(ix) => Some(
            pretrain_core::bounded::read_regular(&dir.join(&ix.path), INDEX_LIMIT).map_err(
                HubError::io(format!("cannot read {}", dir.join(&ix.path).display())),
            )?,
        ),
        None => None,
    };
    select(listed, index.as_deref())
}

/// `hash_of_directory` of `dir` over only the `selected` files.
fn hash_of_selected(dir: &Path, selected: Vec<RepoFile>) -> Result<String, HubError> {
    let keep: Vec<String> = selected.into_iter().map(|f| f.path).collect();
    pretrain_core::hash::hash_of_files_in(dir, &keep).map_err(|source| HubError::List {
        dir: dir.to_path_buf(),
        source,
    })
}

/// The model hash of a local directory as the original computes it after an
/// upload: `hash_of_directory` over only the files `from_pretrained` fetches
/// ([`local_model_files`]); for a `save_pretrained` directory, that is every file.
pub fn hash_of_model_dir(dir: &Path) -> Result<String, HubError> {
    hash_of_selected(dir, local_model_files(dir)?)
}

/// The model hash of a copy of a repo (a `git clone`, a download, a cache
/// snapshot): [`hash_of_model_dir`]'s selection and hash, but what the Hub
/// never serves as a model file (`.git/`, `.cache/`, any hidden path) is
/// skipped rather than refused, and only the selected files are opened. The
/// hash the miner committed for that repo, which `pretrain hash` prints.
pub fn hash_of_fetched_files(dir: &Path) -> Result<String, HubError> {
    let list = |source| HubError::List {
        dir: dir.to_path_buf(),
        source,
    };
    let mut listed = Vec::new();
    for file in pretrain_core::hash::walk_order(dir).map_err(list)? {
        let Some(rel) = file.strip_prefix(dir).ok().and_then(|r| r.to_str()) else {
            continue; // not UTF-8: no file the Hub serves
        };
        let rel = rel.replace(std::path::MAIN_SEPARATOR, "/");
        if rel.split('/').any(|part| part.starts_with('.')) {
            continue;
        }
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        listed.push(RepoFile { path: rel, size });
    }
    hash_of_selected(dir, select_in(dir, &listed)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, size: u64) -> RepoFile {
        RepoFile {
            path: path.into(),
            size,
        }
    }

    fn paths(v: &[RepoFile]) -> Vec<&str> {
        v.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn unsharded_repo_as_the_original_miner_leaves_it() {
        let listed = [
            f(".gitattributes", 1519),
            f("README.md", 5),
            f("config.json", 748),
            f("generation_config.json", 119),
            f("model.safetensors", 6668456),
            // A stale index is not fetched when model.safetensors exists.
            f("model.safetensors.index.json", 10),
        ];
        assert!(index_to_read(&listed).is_none());
        let got = select(&listed, None).unwrap();
        assert_eq!(
            paths(&got),
            ["config.json", "generation_config.json", "model.safetensors"]
        );
    }

    #[test]
    fn sharded_repo_takes_the_index_and_its_shards_once() {
        let listed = [
            f(".gitattributes", 1),
            f("config.json", 2),
            f("model-00001-of-00002.safetensors", 3),
            f("model-00002-of-00002.safetensors", 4),
            f("model-old.safetensors", 5),
            f("model.safetensors.index.json", 6),
        ];
        assert_eq!(
            index_to_read(&listed).map(|f| f.path.as_str()),
            Some(SAFETENSORS_INDEX)
        );
        let index = br#"{"metadata": {"total_size": 7}, "weight_map": {
            "a": "model-00002-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors"}}"#;
        let got = select(&listed, Some(index)).unwrap();
        assert_eq!(
            paths(&got),
            [
                "config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json"
            ]
        );
        let missing = br#"{"weight_map": {"a": "model-00003-of-00003.safetensors"}}"#;
        let err = select(&listed, Some(missing)).unwrap_err();
        assert!(err.to_string().contains("does not hold"), "{err}");
        let escape = br#"{"weight_map": {"a": "../x.safetensors"}}"#;
        assert!(matches!(
            select(&listed, Some(escape)),
            Err(HubError::UnsafePath { .. })
        ));
        assert!(select(&listed, None).is_err());
    }

    #[test]
    fn no_safetensors_selects_everything_for_the_model_check_to_refuse() {
        let listed = [
            f("pytorch_model.bin", 2),
            f("config.json", 1),
            f(".gitattributes", 3),
            f("README.md", 4),
        ];
        assert_eq!(
            paths(&select(&listed, None).unwrap()),
            ["config.json", "pytorch_model.bin"]
        );
    }
}

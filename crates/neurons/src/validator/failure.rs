//! Whose fault a failed model update is.
//!
//! Only the model's own content (its commitment, size, hash, architecture,
//! headers, weights) may refuse a commitment for good: such a refusal is
//! kept in the state and the uid scores +inf until it commits again. The
//! validator's own failures (a full or read-only disk, a permission, its
//! hub token refused, a misconfigured endpoint answering 404, the network,
//! a cancelled task) defer the check to a later pass instead, so they never
//! cost an honest miner more than the time until they are fixed.

use std::io::ErrorKind;

use pretrain_model::ModelError;
use pretrain_store::StoreError;

/// The kind of a kept refusal: the model's content. It is the only kind
/// written; a refusal read back without it is from before kinds existed and
/// is judged by its reason ([`is_content_reason`]).
pub const CONTENT: &str = "content";

/// Refuses a state made for another subnet or chain (its weights are other
/// uids'); a state without a chain (older versions) is taken as this one's.
pub fn check_identity(
    path: &std::path::Path,
    state: &super::ValidatorState,
    netuid: u16,
    chain: Option<&str>,
) -> Result<(), super::StateError> {
    let same_chain = match (state.chain.as_deref(), chain) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    if state.netuid == netuid && same_chain {
        return Ok(());
    }
    let show = |c: Option<&str>, n: u16| match c {
        Some(c) => format!("subnet {n} of chain {}", pretrain_core::escape::escape(c)),
        None => format!("subnet {n}"),
    };
    Err(super::StateError::Elsewhere {
        path: path.to_path_buf(),
        theirs: show(state.chain.as_deref(), state.netuid),
        ours: show(chain, netuid),
    })
}

/// Whether a download failure is the model's content (refuse for good).
pub fn store_is_content(e: &StoreError) -> bool {
    e.is_permanent()
}

/// Whether a model check failure is the model's content (refuse for good)
/// rather than the validator failing to read what it downloaded.
pub fn model_is_content(e: &ModelError) -> bool {
    match e {
        // A file the repo lacks, or one that is not a regular file or is
        // over its size limit, is the repo's doing; anything else (a full
        // disk, a permission, memory) is ours.
        ModelError::Io { error, .. } => matches!(
            error.kind(),
            ErrorKind::NotFound | ErrorKind::InvalidInput | ErrorKind::InvalidData
        ),
        ModelError::Config(_)
        | ModelError::UnsupportedArchitecture(_)
        | ModelError::PickleWeights(_)
        | ModelError::NoWeights(_)
        | ModelError::Safetensors { .. }
        | ModelError::MissingTensor(_)
        | ModelError::WrongShape { .. }
        | ModelError::TooManyParameters { .. }
        | ModelError::TooLarge { .. }
        | ModelError::NonFinite(_) => true,
        ModelError::Input(_) | ModelError::Unsupported(_) | ModelError::Candle(_) => false,
    }
}

/// The beginnings of every content reason this validator has written
/// (model id, competition, store and model-check refusals). A refusal kept
/// by an older version without a kind is kept only if its reason starts
/// with one of these; any other (`No space left on device`, `unauthorised`,
/// `not found`, ...) was the validator's own failure and is dropped at
/// load, so the commitment is checked again.
const CONTENT_REASONS: &[&str] = &[
    "commitment is not a model id",
    "hash mismatch for ",
    "hash check failed for ",
    "model id ",
    "refusing unsafe path",
    "bad config",
    "architecture not supported",
    "pickle weights are not accepted",
    "no model.safetensors",
    "bad safetensors file",
    "missing tensor",
    "tensor ",
    "too many parameters",
    "model files too large",
    "competition ",
    "architecture ",
    "schedule ",
];

/// Whether a kept refusal's reason (of a refusal without a kind) names the
/// model's content.
pub fn is_content_reason(reason: &str) -> bool {
    if let Some(rest) = reason.strip_prefix("repo ") {
        // The store's size refusal: `repo a/b at c holds N bytes, more than the limit`.
        return rest.contains(" holds ") && rest.contains("more than the limit");
    }
    // The competition's range checks: `N parameters, outside competition
    // ..` and `N bytes, more than competition ..`.
    if reason.starts_with(|c: char| c.is_ascii_digit()) {
        return reason.contains(", outside competition ")
            || reason.contains(", more than competition ");
    }
    CONTENT_REASONS.iter().any(|p| reason.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretrain_store::HubError;
    use std::io;

    fn io_err(kind: ErrorKind) -> io::Error {
        io::Error::new(kind, "x")
    }

    #[test]
    fn only_the_models_content_refuses_a_download() {
        let ours = [
            StoreError::Io {
                context: "cannot write".into(),
                source: io_err(ErrorKind::StorageFull),
            },
            StoreError::Io {
                context: "cannot create".into(),
                source: io_err(ErrorKind::PermissionDenied),
            },
            StoreError::Hub(HubError::NotFound("repo m/a".into())),
            StoreError::Hub(HubError::Unauthorized("token expired".into())),
            StoreError::Hub(HubError::BadResponse("<html>".into())),
            StoreError::Hub(HubError::Network("reset".into())),
            StoreError::Hub(HubError::RateLimited("429".into())),
            StoreError::Hub(HubError::io("cannot write f")(io_err(
                ErrorKind::StorageFull,
            ))),
            StoreError::Hub(HubError::BadSpec("x".into())),
        ];
        for e in &ours {
            assert!(!store_is_content(e), "{e}");
        }
        let theirs = [
            StoreError::NoHash("m:a:c:None".into()),
            StoreError::HashMismatch {
                model: "m".into(),
                expected: "a".into(),
                actual: "b".into(),
            },
            StoreError::Hub(HubError::TooLarge {
                repo_id: "m/a".into(),
                commit: "c".into(),
                size: 2,
                limit: 1,
            }),
            StoreError::Hub(HubError::UnsafePath {
                path: "../x".into(),
                reason: "leaves".into(),
            }),
        ];
        for e in &theirs {
            assert!(store_is_content(e), "{e}");
        }
    }

    #[test]
    fn a_model_check_refuses_for_content_only() {
        let io = |kind| ModelError::Io {
            path: "config.json".into(),
            error: io_err(kind),
        };
        assert!(!model_is_content(&io(ErrorKind::PermissionDenied)));
        assert!(!model_is_content(&io(ErrorKind::StorageFull)));
        assert!(!model_is_content(&io(ErrorKind::OutOfMemory)));
        assert!(model_is_content(&io(ErrorKind::NotFound)));
        assert!(model_is_content(&io(ErrorKind::InvalidInput)));
        assert!(model_is_content(&ModelError::Config("x".into())));
        assert!(model_is_content(&ModelError::MissingTensor("wte".into())));
        assert!(!model_is_content(&ModelError::Unsupported("bf16".into())));
    }

    /// Reasons as the older validator wrote them: its own failures are
    /// told from content refusals by their text.
    #[test]
    fn legacy_reasons_are_told_apart() {
        for own in [
            "cannot write /m/models/hk/x: No space left on device (os error 28)",
            "not found: repo m/a",
            "unauthorised: token expired",
            "bad response from the hub: <html>",
            "network error: reset",
            "model check crashed: task 3 panicked",
            "/m/models/hk/config.json: Permission denied (os error 13)",
        ] {
            assert!(!is_content_reason(own), "{own}");
        }
        for content in [
            "commitment is not a model id",
            "hash mismatch for m:a:c:h: committed a, downloaded b (deleted)",
            "repo m/a at c holds 20 bytes, more than the limit of 10 bytes",
            "bad config: n_embd",
            "too many parameters: 9 > limit 1",
            "missing tensor wte.weight",
            "7 parameters, outside competition 1's range 10..=20",
            "architecture Foo is not allowed in competition 1 ([Bar])",
        ] {
            assert!(is_content_reason(content), "{content}");
        }
    }
}

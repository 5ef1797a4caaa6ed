//! The miner's push: upload, model id, commit with retries while rate-limited.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

mod common;

use std::time::Duration;

use common::fake_hf::FakeHub;
use common::*;
use pretrain_chain::{Chain, Hotkey};
use pretrain_core::constants::MAX_MODEL_BYTES;
use pretrain_core::rules::{ChainModelId, Protocol, Schedule};
use pretrain_core::Backoff;
use pretrain_core::{CompetitionModelId, ModelId, ModelMetadata};
use pretrain_neurons::push::{push_checked, CheckedDir, UploadError};
use pretrain_neurons::{make_public, push_model, PushError, PushOptions, Pushed};
use pretrain_store::{HfHub, HfOptions, HubError, LocalHub, ModelHub, ModelStore, Visibility};

const HOTKEY: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

/// What a push under the competitions committed, as its 5-field id.
fn five_fields(pushed: Pushed) -> Pushed<CompetitionModelId> {
    match pushed.id {
        ChainModelId::Competitions(id) => Pushed {
            id,
            model_hash: pushed.model_hash,
            block: pushed.block,
        },
        other => panic!("not a competition id: {other}"),
    }
}

fn fast(max_attempts: Option<u32>) -> PushOptions {
    PushOptions {
        netuid: 9,
        retry_delay: Duration::from_millis(5),
        max_attempts,
        ..PushOptions::default()
    }
}

#[tokio::test]
async fn push_retries_while_rate_limited_and_validator_can_fetch() {
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path()).unwrap();
    let chain = FakeChain::new(2, true);
    let hotkey = Hotkey::address_only(HOTKEY);
    let pushed = push_model(
        &hub,
        &chain,
        &hotkey,
        &reference_model_dir(),
        &repo("alice/tiny-gpt2"),
        Protocol::Sn9Rules2024,
        0,
        &fast(None),
    )
    .await
    .unwrap();
    let meta = ModelMetadata {
        id: pushed.id.model_id(),
        block: pushed.block,
    };
    assert_eq!(
        *chain.attempts.lock().unwrap(),
        3,
        "two refusals, then accepted"
    );
    assert_eq!(meta.block, 1001);
    let commit = hub.head(&repo("alice/tiny-gpt2")).unwrap().unwrap();
    assert_eq!(
        meta.id.to_compressed_str(),
        format!("alice:tiny-gpt2:{commit}:{}", reference_hash())
    );

    // What is on chain is what the validator reads and fetches.
    let on_chain = chain.commitment(9, HOTKEY).await.unwrap().unwrap();
    let id = ModelId::from_chain_bytes(&on_chain.data).unwrap();
    assert_eq!(id, meta.id);
    let model_dir = tempfile::tempdir().unwrap();
    let got = ModelStore::new(model_dir.path())
        .fetch(&hub, &hk(HOTKEY), &id, MAX_MODEL_BYTES)
        .await
        .unwrap();
    assert_eq!(got.hash, reference_hash());
}

#[tokio::test]
async fn push_stops_on_permanent_errors_and_after_max_attempts() {
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path()).unwrap();
    let hotkey = Hotkey::address_only(HOTKEY);

    let unregistered = FakeChain::new(0, false);
    let err = push_model(
        &hub,
        &unregistered,
        &hotkey,
        &reference_model_dir(),
        &repo("alice/m1"),
        Protocol::Sn9Rules2024,
        0,
        &fast(None),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PushError::NotRegistered { .. }), "{err}");
    assert!(err.to_string().contains("register it first"), "{err}");
    // Refused before anything was written: no commit attempt, no repo on the hub.
    assert_eq!(*unregistered.attempts.lock().unwrap(), 0);
    assert_eq!(hub.head(&repo("alice/m1")).unwrap(), None);

    let limited = FakeChain::new(100, true);
    let err = push_model(
        &hub,
        &limited,
        &hotkey,
        &reference_model_dir(),
        &repo("alice/m2"),
        Protocol::Sn9Rules2024,
        0,
        &fast(Some(3)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, PushError::GaveUp { attempts: 3, .. }),
        "{err}"
    );

    // A repo id that cannot fit on chain is refused before uploading.
    // (It cannot even be built: the type is the check.)
    let err = "a/b".parse::<pretrain_core::RepoId>().unwrap_err();
    assert!(err.to_string().contains("between 3 and 41"), "{err}");
}

#[tokio::test]
async fn push_through_the_hf_backend() {
    let server = FakeHub::start("hf_tok");
    let hf = HfHub::new(HfOptions {
        endpoint: server.url.clone(),
        token: Some("hf_tok".into()),
        retry_delay: Duration::from_millis(10),
        ..HfOptions::default()
    })
    .unwrap();
    let chain = FakeChain::new(1, true);
    let hotkey = Hotkey::address_only(HOTKEY);
    let pushed = push_model(
        &hf,
        &chain,
        &hotkey,
        &reference_model_dir(),
        &repo("alice/tiny-gpt2"),
        Protocol::Sn9Rules2024,
        0,
        &fast(None),
    )
    .await
    .unwrap();
    let meta = ModelMetadata {
        id: pushed.id.model_id(),
        block: pushed.block,
    };
    assert_eq!(meta.id.hash.as_deref(), Some(reference_hash().as_str()));
    let model_dir = tempfile::tempdir().unwrap();
    let got = ModelStore::new(model_dir.path())
        .fetch(&hf, &hk(HOTKEY), &meta.id, MAX_MODEL_BYTES)
        .await
        .unwrap();
    assert_eq!(got.hash, reference_hash());
    assert_eq!(
        got.path,
        model_dir
            .path()
            .join("models")
            .join(HOTKEY)
            .join("models--alice--tiny-gpt2/snapshots")
            .join(meta.id.commit.unwrap().as_str())
    );
}

/// taoverse's `get_hash_of_two_strings`, written out independently of the code under test.
fn two_strings_hash(a: &str, b: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(format!("{a}{b}")))
}

#[tokio::test]
async fn push_later_uploads_private_commits_five_fields_and_make_public_publishes() {
    let server = FakeHub::start("hf_tok");
    let hf = |token: Option<&str>| {
        HfHub::new(HfOptions {
            endpoint: server.url.clone(),
            token: token.map(str::to_string),
            retry_delay: Duration::from_millis(10),
            ..HfOptions::default()
        })
        .unwrap()
    };
    let owner = hf(Some("hf_tok"));
    let chain = FakeChain::new(1, true);
    let hotkey = Hotkey::address_only(HOTKEY);
    let r = repo("alice/tiny-later");
    let pushed = five_fields(
        push_model(
            &owner,
            &chain,
            &hotkey,
            &reference_model_dir(),
            &r,
            Protocol::Competitions,
            2,
            &fast(None),
        )
        .await
        .unwrap(),
    );
    let commit = pushed.id.commit.clone().unwrap();
    let secure = two_strings_hash(&reference_hash(), HOTKEY);
    let on_chain = chain.commitment(9, HOTKEY).await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8(on_chain.data).unwrap(),
        format!("alice:tiny-later:{commit}:{secure}:2")
    );
    assert_eq!(pushed.model_hash, reference_hash());
    assert_eq!(pushed.block, 1001);
    assert_eq!(pushed.id.hash, None);

    // Private: a validator (no token) finds nothing until it is made public.
    let stranger = hf(None);
    let commit = commit_id(&commit);
    let err = stranger.files_at(&r, &commit).await.unwrap_err();
    assert!(matches!(err, HubError::NotFound(_)), "{err}");
    server.fail("PUT", "/api/models/alice/tiny-later/settings", 429, 1);
    make_public(
        &owner,
        &r,
        &Backoff::constant(Duration::from_millis(5), Some(3)),
    )
    .await
    .unwrap();
    // The model and the Hub's .gitattributes (kept).
    assert_eq!(stranger.files_at(&r, &commit).await.unwrap().len(), 4);

    // The 5-field id must fit in 128 bytes: a 41-character repo id cannot
    // (41 + 40 + 44 + 1 + 4 separators = 130), refused before any upload.
    let long = repo(&format!("alice/{}", "x".repeat(35)));
    let root = tempfile::tempdir().unwrap();
    let local = LocalHub::open(root.path()).unwrap();
    let err = push_model(
        &local,
        &chain,
        &hotkey,
        &reference_model_dir(),
        &long,
        Protocol::Competitions,
        2,
        &fast(None),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PushError::LaterModelId(_)), "{err}");
    assert_eq!(local.head(&long).unwrap(), None);
}

#[tokio::test]
async fn push_later_on_the_local_hub_keeps_the_repo_private() {
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path()).unwrap();
    let chain = FakeChain::new(0, true);
    let hotkey = Hotkey::address_only(HOTKEY);
    let r = repo("alice/tiny-local");
    let pushed = five_fields(
        push_model(
            &hub,
            &chain,
            &hotkey,
            &reference_model_dir(),
            &r,
            Protocol::Competitions,
            0,
            &fast(None),
        )
        .await
        .unwrap(),
    );
    assert_eq!(hub.visibility(&r).unwrap(), Some(Visibility::Private));
    assert_eq!(
        pushed.id.secure_hash.as_deref(),
        Some(two_strings_hash(&reference_hash(), HOTKEY).as_str())
    );
    let commit = commit_id(pushed.id.commit.as_deref().unwrap());
    assert!(matches!(
        hub.files_at(&r, &commit).await,
        Err(HubError::NotFound(_))
    ));
    make_public(&hub, &r, &Backoff::default()).await.unwrap();
    assert_eq!(hub.files_at(&r, &commit).await.unwrap().len(), 4); // and .gitattributes
                                                                   // Making a missing repo public is NotFound, not retried.
    let err = make_public(&hub, &repo("alice/nothing"), &Backoff::default())
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::NotFound(_)), "{err}");
}

/// What our miner pushes keeps the Hub's `.gitattributes` (so the
/// repo keeps its LFS rules) and is accepted by the seed's hash check and by
/// the later protocol's secure-hash check, both over what `from_pretrained`
/// fetches; the directory in the README's example also carries a model
/// card, which is uploaded but neither hashed nor downloaded.
#[tokio::test]
async fn pushed_repos_keep_gitattributes_and_pass_both_hash_rules() {
    let server = FakeHub::start("hf_tok");
    let hf = HfHub::new(HfOptions {
        endpoint: server.url.clone(),
        token: Some("hf_tok".into()),
        retry_delay: Duration::from_millis(10),
        ..HfOptions::default()
    })
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    copy_dir(&reference_model_dir(), &dir);
    std::fs::write(dir.join("README.md"), "# tiny\n").unwrap();
    let chain = FakeChain::new(0, true);
    let hotkey = Hotkey::address_only(HOTKEY);

    let pushed = push_model(
        &hf,
        &chain,
        &hotkey,
        &dir,
        &repo("alice/seed"),
        Protocol::Sn9Rules2024,
        0,
        &fast(None),
    )
    .await
    .unwrap();
    let meta = ModelMetadata {
        id: pushed.id.model_id(),
        block: pushed.block,
    };
    // The original's hash: that of the three model files alone.
    assert_eq!(meta.id.hash.as_deref(), Some(reference_hash().as_str()));
    let commit = commit_id(meta.id.commit.as_deref().unwrap());
    let listed: Vec<String> = hf
        .files_at(&repo("alice/seed"), &commit)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert!(listed.contains(&".gitattributes".to_string()), "{listed:?}");
    assert!(listed.contains(&"README.md".to_string()), "{listed:?}");
    let store = ModelStore::new(root.path().join("validator"));
    let got = store
        .fetch(&hf, &hk(HOTKEY), &meta.id, MAX_MODEL_BYTES)
        .await
        .unwrap();
    assert_eq!(got.hash, reference_hash());

    let later_chain = FakeChain::new(0, true);
    let pushed = five_fields(
        push_model(
            &hf,
            &later_chain,
            &hotkey,
            &dir,
            &repo("alice/later"),
            Protocol::Competitions,
            0,
            &fast(None),
        )
        .await
        .unwrap(),
    );
    make_public(&hf, &repo("alice/later"), &Backoff::default())
        .await
        .unwrap();
    let id = pushed.id.clone();
    let seed_view = ModelId {
        namespace: id.namespace.clone(),
        name: id.name.clone(),
        commit: id.commit.clone(),
        hash: id.secure_hash.clone(),
    };
    let got = store
        .fetch_verified(&hf, &hk(HOTKEY), &seed_view, MAX_MODEL_BYTES, |h| {
            pretrain_core::rules::check_download(&id, h, HOTKEY).map_err(|e| {
                pretrain_store::StoreError::HashCheck {
                    model: id.to_compressed_str(),
                    source: Box::new(e),
                }
            })
        })
        .await
        .unwrap();
    assert_eq!(got.hash, reference_hash());
    assert_eq!(
        pushed.id.secure_hash.as_deref(),
        Some(two_strings_hash(&reference_hash(), HOTKEY).as_str())
    );
}

/// A model with a non-finite weight (a diverged run) is refused with the tensor's name
/// before anything reaches the hub or the chain, as stored and as its bf16 copy
/// (`--upload_b16`): the miner's earlier commitment stays.
#[tokio::test]
async fn a_non_finite_weight_is_refused_before_the_upload_and_the_commit() {
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path()).unwrap();
    let chain = FakeChain::new(0, true);
    let hotkey = Hotkey::address_only(HOTKEY);
    let tmp = tempfile::tempdir().unwrap();
    for (i, (tensor, value)) in [
        ("transformer.h.0.mlp.c_proj.weight", f32::NAN),
        ("transformer.wpe.weight", f32::INFINITY),
    ]
    .into_iter()
    .enumerate()
    {
        let bad = tmp.path().join(format!("bad{i}"));
        copy_with_weight(&reference_model_dir(), &bad, tensor, 40, value);
        for upload_b16 in [false, true] {
            let options = PushOptions {
                upload_b16,
                ..fast(None)
            };
            let err = push_model(
                &hub,
                &chain,
                &hotkey,
                &bad,
                &repo("alice/diverged"),
                Protocol::Sn9Rules2024,
                0,
                &options,
            )
            .await
            .unwrap_err();
            assert!(matches!(err, PushError::NotAccepted { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(tensor) && msg.contains("non-finite"), "{msg}");
        }
    }
    assert!(hub.head(&repo("alice/diverged")).unwrap().is_none());
    assert_eq!(*chain.attempts.lock().unwrap(), 0);
    assert!(chain.commitment(9, HOTKEY).await.unwrap().is_none());
}

/// `pretrain upload`'s checks as a library: the directory is measured and
/// refused as the validator would refuse it, before anything is uploaded;
/// then pushed, and published only when asked.
#[tokio::test]
async fn a_checked_dir_is_refused_as_the_validator_would_then_pushed_and_published_when_asked() {
    // The tiny GPT-2 counted by hand: wte + wpe, two blocks (ln_1, c_attn,
    // attn c_proj, ln_2, c_fc, mlp c_proj, with biases), ln_f; lm_head is wte.
    let (v, p, e) = (50257u64, 1024u64, 32u64);
    let block =
        2 * e + (e * 3 * e + 3 * e) + (e * e + e) + 2 * e + (e * 4 * e + 4 * e) + (4 * e * e + e);
    let params = v * e + p * e + 2 * block + 2 * e;
    let size: u64 = reference_files().iter().map(|f| f.1).sum();

    // The seed's limits are known before the chain.
    let seed = CheckedDir::check(&reference_model_dir(), Protocol::Sn9Rules2024).unwrap();
    let info = seed.info().unwrap();
    assert_eq!(info.params, params);
    assert_eq!(info.size_bytes, size);
    assert_eq!(info.architecture.class_name(), "GPT2LMHeadModel");

    // Under the competitions they come with the competition entered.
    let later = Schedule::by_name_or_file("sn9-later").unwrap();
    let mut spec = later.active_entry(u64::MAX).unwrap().competitions[0].clone();
    spec.constraints.min_parameters = 0;
    spec.constraints.max_parameters = 10_000_000;
    spec.constraints.max_bytes = 1 << 30;
    spec.constraints.architectures = vec!["GPT2LMHeadModel".into()];
    let mut checked = CheckedDir::check(&reference_model_dir(), Protocol::Competitions).unwrap();
    assert!(checked.info().is_none());
    checked
        .check_entered(Protocol::Competitions, &spec, "sn9-later")
        .unwrap();
    assert_eq!(checked.info().unwrap().params, params);

    // One parameter short of the competition's least: refused, naming it.
    let mut small = spec.clone();
    small.constraints.min_parameters = params + 1;
    let mut c = CheckedDir::check(&reference_model_dir(), Protocol::Competitions).unwrap();
    let err = c
        .check_entered(Protocol::Competitions, &small, "sn9-later")
        .unwrap_err();
    assert!(
        matches!(err, UploadError::Misfit { id, .. } if id == spec.id),
        "{err}"
    );
    let msg = pretrain_neurons::error_chain(&err);
    assert!(
        msg.contains(&format!(
            "does not fit competition {} ({}) of --schedule sn9-later",
            spec.id, spec.name
        )),
        "{msg}"
    );
    // Over its most: refused by the size check the validator makes first.
    small.constraints.min_parameters = 0;
    small.constraints.max_parameters = params - 1;
    let err = c
        .check_entered(Protocol::Competitions, &small, "sn9-later")
        .unwrap_err();
    assert!(matches!(err, UploadError::NotAccepted { .. }), "{err}");
    // The seed's rules ask for no competition: nothing more is checked.
    let mut s = seed.clone();
    s.check_entered(Protocol::Sn9Rules2024, &small, "sn9-2024-01")
        .unwrap();
    assert_eq!(s.info().unwrap().params, params);

    // A non-finite weight: refused before the chain is read.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad");
    copy_with_weight(
        &reference_model_dir(),
        &bad,
        "transformer.wpe.weight",
        7,
        f32::NAN,
    );
    let err = CheckedDir::check(&bad, Protocol::Competitions).unwrap_err();
    assert!(matches!(err, UploadError::NotAccepted { .. }), "{err}");
    assert!(
        pretrain_neurons::error_chain(&err).contains("transformer.wpe.weight"),
        "{err}"
    );

    // Pushed private; made public only with a hint (--update_repo_visibility).
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path()).unwrap();
    let chain = FakeChain::new(1, true);
    let hotkey = Hotkey::address_only(HOTKEY);
    for (name, hint, visibility) in [
        ("alice/kept-private", None, Visibility::Private),
        ("alice/made-public", Some("by hand"), Visibility::Public),
    ] {
        let pushed = push_checked(
            &hub,
            &chain,
            &hotkey,
            &checked,
            &repo(name),
            Protocol::Competitions,
            spec.id,
            &fast(None),
            hint,
        )
        .await
        .unwrap();
        assert_eq!(pushed.model_hash, reference_hash());
        assert_eq!(pushed.id.competition(), Some(spec.id));
        assert_eq!(
            hub.visibility(&repo(name)).unwrap(),
            Some(visibility),
            "{name}"
        );
        let on_chain = chain.commitment(9, HOTKEY).await.unwrap().unwrap();
        assert_eq!(on_chain.data, pushed.id.to_chain_bytes().unwrap());
    }
}

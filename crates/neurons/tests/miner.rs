//! The miner's library API end to end on the offline backends: the embedded
//! chain, a local hub and the sample corpus, with the tiny reference GPT-2.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

#[allow(unused_imports)] // each test binary uses a different part of common
mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use common::{commit_id, reference_model_dir, repo};
use pretrain_chain::embedded::{EmbeddedChain, EmbeddedOptions, SubnetParams};
use pretrain_chain::wallet::KeyPair;
use pretrain_chain::{Chain, Hotkey};
use pretrain_core::rules::{sn9_spec, Protocol, Schedule};
use pretrain_core::{hash_of_directory, ModelId, ModelMetadata};
use pretrain_data::{open_source, sample_corpus_dir, LocalSource, PageSource};
use pretrain_model::{CausalLm, Model};
use pretrain_neurons::miner::{
    self, Event, MinerConfig, MiningSession, NoObserver, Observer, PushHelp, PushPolicy,
    PushTarget, RunDir, SessionError, SessionObserver, SessionSettings, Start, StartingModel,
    StopFlag, Training,
};
use pretrain_neurons::{push_model, PushOptions, Pushed};
use pretrain_store::{LocalHub, ModelHub};

const NETUID: u16 = 9;

fn addr(i: u8) -> String {
    KeyPair::from_secret_seed([i; 32]).unwrap().ss58()
}

/// A small slice of the sample corpus (110 documents, each cut to 100
/// characters: pages 0..=10 of 100 rows, ~20 batches of 2 x 64), so the
/// tests train in seconds even in unoptimised builds.
fn corpus_in(dir: &std::path::Path) -> Arc<dyn PageSource> {
    let sample = LocalSource::open(sample_corpus_dir()).unwrap();
    let mut docs = sample.read_page(0).unwrap();
    docs.extend(sample.read_page(100).unwrap());
    let mut text = String::new();
    for d in docs.iter().take(110) {
        let cut: String = d.chars().take(100).collect();
        text.push_str(&serde_json::json!({ "content": cut }).to_string());
        text.push('\n');
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("slice.jsonl"), text).unwrap();
    open_source(&format!("local:{}", dir.display())).unwrap()
}

fn fast_push() -> PushOptions {
    PushOptions {
        netuid: NETUID,
        retry_delay: Duration::from_millis(50),
        max_attempts: Some(200),
        ..PushOptions::default()
    }
}

async fn embedded(dir: &std::path::Path) -> EmbeddedChain {
    let chain = EmbeddedChain::open(
        dir,
        &EmbeddedOptions {
            block_time: Some(0.02),
            ..EmbeddedOptions::default()
        },
    )
    .unwrap();
    let params = SubnetParams {
        commit_rate_limit: 1,
        weights_rate_limit: 1,
        ..SubnetParams::default()
    };
    chain.create_subnet(NETUID, params).await.unwrap();
    chain
}

fn tiny() -> Model {
    miner::load_local_model(&reference_model_dir(), &Device::Cpu).unwrap()
}

/// The tiny model with the default config's dropout (0.1), so that seeding matters.
fn tiny_with_dropout() -> Model {
    let src = tiny();
    let mut cfg = src.config_json().clone();
    for k in ["attn_pdrop", "embd_pdrop", "resid_pdrop"] {
        cfg[k] = serde_json::json!(0.1);
    }
    Model::from_parts(cfg, src.weights().clone(), &Device::Cpu).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_model_trains_pushes_and_the_commitment_matches_the_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = embedded(&tmp.path().join("chain")).await;
    chain.register(NETUID, &addr(1), &addr(100)).await.unwrap();
    let hotkey = Hotkey::address_only(addr(1));
    let hub = LocalHub::open(tmp.path().join("hub")).unwrap();

    let config = MinerConfig {
        num_epochs: Some(3),
        lr: 1e-3,
        bs: 2,
        sl: 64,
        accumulation_steps: 2,
        pages_per_epoch: 1,
        seed: 11,
        model_dir: tmp.path().join("models"),
    };
    let run = RunDir::create(&config.model_dir, "2024-01-01_00-00-00").unwrap();
    let source = corpus_in(&tmp.path().join("corpus"));
    let mut training = Training::start(tiny(), config, source, run.clone()).unwrap();
    // The starting model is on disk before any training, as in the original.
    assert!(run.best_dir().join("model.safetensors").is_file());
    let summary = training.run(&mut NoObserver).await.unwrap();
    assert_eq!(summary.epochs, 3);
    assert!(!summary.stopped);
    let l = &summary.epoch_losses;
    assert_eq!(l.len(), 3);
    // lr 1e-3 brings the loss down fast, below that of a uniform guess,
    // ln(50257) = 10.82.
    assert!(l[2] < l[0] - 0.5 && l[2] < 10.82, "{l:?}");
    let best = l.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(summary.best_avg_loss, Some(best));

    // One metrics line per optimizer step and per epoch, each with its fields.
    let metrics = std::fs::read_to_string(run.metrics_file()).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let epochs: Vec<&serde_json::Value> = lines.iter().filter(|v| v["event"] == "epoch").collect();
    assert_eq!(epochs.len(), 3);
    for (e, v) in epochs.iter().enumerate() {
        assert_eq!(v["epoch"], e as u64);
        assert_eq!(v["loss"].as_f64().unwrap(), l[e]);
        assert_eq!(v["lr"].as_f64().unwrap(), 1e-3);
        assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0 && v["wall_s"].is_number());
    }
    let steps = lines.iter().filter(|v| v["event"] == "step").count() as u64;
    assert_eq!(steps, summary.steps);

    let schedule = Schedule::default_schedule();
    let pushed = miner::push_best_model(
        &run,
        &hub,
        &chain,
        &hotkey,
        &repo("miner/tiny-trained"),
        Protocol::Sn9Rules2024,
        sn9_spec(&schedule, 0).unwrap(),
        &fast_push(),
    )
    .await
    .unwrap();
    let meta = ModelMetadata {
        id: pushed.id.model_id(),
        block: pushed.block,
    };
    // What the chain holds parses to the id whose hash is that of the files
    // the hub holds at that commit.
    let c = chain.commitment(NETUID, &addr(1)).await.unwrap().unwrap();
    let id = ModelId::from_chain_bytes(&c.data).unwrap();
    assert_eq!(id, meta.id);
    let commit = id.commit.clone().unwrap();
    assert_eq!(
        hub.head(&repo("miner/tiny-trained")).unwrap(),
        Some(commit_id(&commit))
    );
    let got = hub
        .download(
            &repo("miner/tiny-trained"),
            &commit_id(&commit),
            &tmp.path().join("dl"),
        )
        .await
        .unwrap();
    assert_eq!(
        id.hash.as_deref(),
        Some(hash_of_directory(&got).unwrap().as_str())
    );
    assert_eq!(id.hash.unwrap(), hash_of_directory(run.best_dir()).unwrap());

    // The saved best model loads, passes the validator's checks, and is not
    // the starting model.
    let saved = miner::load_local_model(&run.best_dir(), &Device::Cpu).unwrap();
    let batch = vec![(0..64u32).map(|i| i * 7 + 100).collect::<Vec<u32>>()];
    assert_ne!(saved.loss(&batch).unwrap(), tiny().loss(&batch).unwrap());
}

/// Sets the stop flag after `after` batches of epoch `epoch`.
struct StopAt {
    flag: StopFlag,
    epoch: u64,
    after: usize,
}

impl Observer for StopAt {
    fn event(&mut self, e: &Event<'_>) {
        if let Event::Batch(p) = e {
            if p.epoch == self.epoch && p.batch == self.after {
                self.flag.store(true, Ordering::SeqCst);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_continues_exactly_as_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = MinerConfig {
        num_epochs: Some(2),
        lr: 1e-3,
        bs: 2,
        sl: 64,
        accumulation_steps: 3,
        pages_per_epoch: 1,
        seed: 5,
        model_dir: tmp.path().join("models"),
    };
    let source = corpus_in(&tmp.path().join("corpus"));

    // A: two epochs straight.
    let run_a = RunDir::create(&config.model_dir, "a").unwrap();
    let mut a =
        Training::start(tiny_with_dropout(), config.clone(), source.clone(), run_a).unwrap();
    let la = a.run(&mut NoObserver).await.unwrap().epoch_losses;
    assert_eq!(la.len(), 2);

    // The same seed gives the same losses (seeded pages and dropout); another seed does not.
    let other = MinerConfig {
        seed: 6,
        num_epochs: Some(1),
        ..config.clone()
    };
    let run_o = RunDir::create(&config.model_dir, "other").unwrap();
    let lo = Training::start(tiny_with_dropout(), other, source.clone(), run_o)
        .unwrap()
        .run(&mut NoObserver)
        .await
        .unwrap()
        .epoch_losses;
    assert_ne!(lo[0], la[0]);

    // B: one epoch, then resumed for the second.
    let one = MinerConfig {
        num_epochs: Some(1),
        ..config.clone()
    };
    let run_b = RunDir::create(&config.model_dir, "b").unwrap();
    let mut b = Training::start(
        tiny_with_dropout(),
        one.clone(),
        source.clone(),
        run_b.clone(),
    )
    .unwrap();
    let lb0 = b.run(&mut NoObserver).await.unwrap().epoch_losses;
    assert_eq!(lb0, vec![la[0]]);
    drop(b);
    let mut b = Training::resume(
        RunDir::open(run_b.root()).unwrap(),
        source.clone(),
        &Device::Cpu,
        Some(Some(2)),
    )
    .unwrap();
    assert_eq!(b.epochs_done(), 1);
    let sb = b.run(&mut NoObserver).await.unwrap();
    assert_eq!(
        sb.epoch_losses,
        vec![la[1]],
        "resumed epoch vs uninterrupted"
    );

    // C: stopped in the middle of epoch 1 with a partial accumulation group
    // (4 batches, accumulation 3), then resumed.
    let run_c = RunDir::create(&config.model_dir, "c").unwrap();
    let mut c = Training::start(
        tiny_with_dropout(),
        config.clone(),
        source.clone(),
        run_c.clone(),
    )
    .unwrap();
    let mut stop = StopAt {
        flag: c.stop_flag(),
        epoch: 1,
        after: 4,
    };
    let sc = c.run(&mut stop).await.unwrap();
    assert!(sc.stopped);
    assert_eq!(sc.epoch_losses, vec![la[0]]);
    drop(c);
    let mut c = Training::resume(
        RunDir::open(run_c.root()).unwrap(),
        source,
        &Device::Cpu,
        None,
    )
    .unwrap();
    let sc = c.run(&mut NoObserver).await.unwrap();
    assert_eq!(
        sc.epoch_losses,
        vec![la[1]],
        "resumed mid-epoch vs uninterrupted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_best_takes_the_model_of_the_highest_incentive() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = embedded(&tmp.path().join("chain")).await;
    let hub = LocalHub::open(tmp.path().join("hub")).unwrap();
    for i in 0..3u8 {
        chain.register(NETUID, &addr(i), &addr(100)).await.unwrap();
    }
    chain.add_stake(&addr(0), 1000.0).await.unwrap();

    // uid 1 pushes the reference model, uid 2 a different one.
    let other = Model::random(tiny().config_json().clone(), 99, &Device::Cpu).unwrap();
    let other_dir = tmp.path().join("other");
    other.save(&other_dir).unwrap();
    let key = |i: u8| Hotkey::address_only(addr(i));
    push_model(
        &hub,
        &chain,
        &key(1),
        &reference_model_dir(),
        &repo("one/tiny"),
        Protocol::Sn9Rules2024,
        0,
        &fast_push(),
    )
    .await
    .unwrap();
    let pushed = push_model(
        &hub,
        &chain,
        &key(2),
        &other_dir,
        &repo("two/tiny"),
        Protocol::Sn9Rules2024,
        0,
        &fast_push(),
    )
    .await
    .unwrap();
    let pushed = ModelMetadata {
        id: pushed.id.model_id(),
        block: pushed.block,
    };

    // The validator (uid 0) favours uid 2.
    chain
        .set_weights(&key(0), NETUID, &[1, 2], &[100, 300], 2002)
        .await
        .unwrap();
    let mg = chain.metagraph(NETUID).await.unwrap();
    assert!(mg.neurons[2].incentive > mg.neurons[1].incentive);
    assert_eq!(miner::best_uid(&mg), Some(2));

    let remote = miner::load_remote_model(
        &chain,
        &hub,
        NETUID,
        2,
        &tmp.path().join("models"),
        &Device::Cpu,
    )
    .await
    .unwrap();
    assert_eq!(remote.metadata.id, pushed.id);
    assert_eq!(remote.hotkey, addr(2));
    assert_eq!(
        hash_of_directory(&remote.path).unwrap(),
        hash_of_directory(&other_dir).unwrap()
    );
    let name = "transformer.wte.weight";
    let got: Vec<f32> = remote.model.weights()[name]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want: Vec<f32> = other.weights()[name]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got, want);
    // The snapshot lies where the validator keeps it.
    assert!(remote
        .path
        .starts_with(tmp.path().join("models").join("models")));

    // A uid without a commitment has nothing to load.
    let err = miner::load_remote_model(&chain, &hub, NETUID, 0, tmp.path(), &Device::Cpu)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("committed no model"), "{err}");
}

/// A second miner on a run directory in use is refused with the
/// holder's pid; a checkpoint whose `position.json` says `batch_in_epoch:
/// 1e15` is refused on resume instead of reporting the epoch's loss as 0
/// (a new best that would be pushed), and a negative loss sum at load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_run_dir_and_a_forged_position_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = MinerConfig {
        num_epochs: Some(2),
        lr: 1e-3,
        bs: 2,
        sl: 64,
        accumulation_steps: 3,
        pages_per_epoch: 1,
        seed: 5,
        model_dir: tmp.path().join("models"),
    };
    let source = corpus_in(&tmp.path().join("corpus"));
    let run = RunDir::create(&config.model_dir, "r").unwrap();
    let mut first = Training::start(tiny(), config.clone(), source.clone(), run.clone()).unwrap();
    let busy = Training::start(tiny(), config.clone(), source.clone(), run.clone()).unwrap_err();
    let msg = busy.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id())) && msg.contains("pretrain mine"),
        "{msg}"
    );
    let mut stop = StopAt {
        flag: first.stop_flag(),
        epoch: 0,
        after: 2,
    };
    assert!(first.run(&mut stop).await.unwrap().stopped);
    drop(first);

    let pos = run.checkpoint_dir().join("position.json");
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&pos).unwrap()).unwrap();
    assert_eq!(good["batch_in_epoch"], 2);
    let mut forged = good.clone();
    forged["batch_in_epoch"] = serde_json::json!(1_000_000_000_000_000u64);
    forged["global_batches"] = serde_json::json!(1_000_000_000_000_000u64);
    std::fs::write(&pos, forged.to_string()).unwrap();
    let mut t = Training::resume(
        RunDir::open(run.root()).unwrap(),
        source.clone(),
        &Device::Cpu,
        None,
    )
    .unwrap();
    let err = t.run(&mut NoObserver).await.unwrap_err().to_string();
    assert!(
        err.contains("it is not from this run's data") && err.contains("move"),
        "{err}"
    );
    drop(t);
    let mut negative = good.clone();
    negative["epoch_loss_sum"] = serde_json::json!(-1.0e9);
    std::fs::write(&pos, negative.to_string()).unwrap();
    let err = Training::resume(
        RunDir::open(run.root()).unwrap(),
        source,
        &Device::Cpu,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("epoch_loss_sum"), "{err}");
}

/// What a session reported, in order.
#[derive(Default)]
struct Record {
    /// Each finished epoch: whether it improved.
    epochs: Vec<bool>,
    /// "push ok" / "push failed: ..." and "ended" (training_ended), in order.
    log: Vec<String>,
}

impl Observer for Record {
    fn event(&mut self, e: &Event<'_>) {
        if let Event::EpochEnd(s) = e {
            self.epochs.push(s.improved);
        }
    }
}

impl SessionObserver for Record {
    fn pushed(&mut self, result: Result<&Pushed, &SessionError>) {
        self.log.push(match result {
            Ok(_) => "push ok".into(),
            Err(e) => format!("push failed: {e}"),
        });
    }

    async fn training_ended(&mut self, stopped: bool) {
        self.log.push(format!("ended stopped={stopped}"));
    }
}

/// The session's hub: the local hub at `dir`, or, with `dir` `None`, a hub
/// that cannot be opened.
struct Help {
    hub: Option<std::path::PathBuf>,
}

impl PushHelp for Help {
    fn open_hub(&self) -> Result<Box<dyn ModelHub>, String> {
        match &self.hub {
            Some(dir) => Ok(Box::new(LocalHub::open(dir).map_err(|e| e.to_string())?)),
            None => Err("the hub is down".into()),
        }
    }

    fn finish_command(
        &self,
        best_dir: &std::path::Path,
        repo: &pretrain_core::RepoId,
        _: Option<&pretrain_core::rules::CompetitionSpec>,
    ) -> String {
        format!(
            "pretrain upload --load_model_dir {} --hf_repo_id {repo}",
            best_dir.display()
        )
    }

    fn make_public_hint(&self, _: &pretrain_core::RepoId) -> String {
        "by hand".into()
    }
}

/// A session of `epochs` epochs of the tiny model under the seed's rules,
/// pushing to `chain` with `policy` (`chain` `None`: offline).
fn session_settings<'a>(
    dir: &std::path::Path,
    epochs: u64,
    policy: PushPolicy,
    chain: Option<Arc<dyn Chain>>,
    help: &'a Help,
) -> SessionSettings<'a> {
    let config = MinerConfig {
        num_epochs: Some(epochs),
        lr: 1e-3,
        bs: 2,
        sl: 64,
        accumulation_steps: 2,
        pages_per_epoch: 1,
        seed: 3,
        model_dir: dir.join("models"),
    };
    let schedule = Schedule::default_schedule();
    SessionSettings {
        start: Start::New {
            config,
            model: StartingModel::Dir(reference_model_dir()),
        },
        device: Device::Cpu,
        compute: Default::default(),
        source: corpus_in(&dir.join("corpus")),
        competition: sn9_spec(&schedule, 0).unwrap().clone(),
        schedule: "default".into(),
        policy,
        push: chain.map(|chain| PushTarget {
            chain,
            hotkey: Hotkey::address_only(addr(1)),
            repo: repo("miner/session"),
            protocol: Protocol::Sn9Rules2024,
            options: fast_push(),
            update_repo_visibility: false,
            help,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_pushes_as_its_policy_says_and_the_chain_holds_the_last_push() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = Arc::new(embedded(&tmp.path().join("chain")).await);
    chain.register(NETUID, &addr(1), &addr(100)).await.unwrap();
    let help = Help {
        hub: Some(tmp.path().join("hub")),
    };
    let online = || Some(chain.clone() as Arc<dyn Chain>);

    // --push_every_epoch: each improving epoch is pushed; the best model is
    // then the one pushed, so the end pushes nothing more.
    let every = PushPolicy::new(100.0, true);
    let s = session_settings(&tmp.path().join("a"), 3, every, online(), &help);
    let mut seen = Record::default();
    let out = MiningSession::begin(s)
        .await
        .unwrap()
        .run(&mut seen)
        .await
        .unwrap();
    assert_eq!(seen.epochs.len(), 3);
    assert!(seen.epochs[0], "the first epoch always improves");
    let improved = seen.epochs.iter().filter(|&&i| i).count();
    let mut expected = vec!["push ok".to_string(); improved];
    expected.push("ended stopped=false".into());
    assert_eq!(seen.log, expected);
    let pushed = out.pushed.clone().unwrap();
    let c = chain.commitment(NETUID, &addr(1)).await.unwrap().unwrap();
    assert_eq!(
        ModelId::from_chain_bytes(&c.data).unwrap(),
        pushed.id.model_id()
    );
    assert_eq!(
        pushed.model_hash,
        hash_of_directory(&out.summary.best_dir).unwrap()
    );
    assert_eq!(out.seed, 3);
    assert_eq!(out.summary.epochs, 3);

    // Without it: one push, at the end, after training ended.
    let end = PushPolicy::new(100.0, false);
    let s = session_settings(&tmp.path().join("b"), 2, end, online(), &help);
    let mut seen = Record::default();
    let out = MiningSession::begin(s)
        .await
        .unwrap()
        .run(&mut seen)
        .await
        .unwrap();
    assert_eq!(seen.log, vec!["ended stopped=false", "push ok"]);
    let pushed = out.pushed.unwrap();
    let c = chain.commitment(NETUID, &addr(1)).await.unwrap().unwrap();
    assert_eq!(
        ModelId::from_chain_bytes(&c.data).unwrap(),
        pushed.id.model_id()
    );
    assert_eq!(
        pushed.model_hash,
        hash_of_directory(&out.summary.best_dir).unwrap()
    );

    // A threshold the loss does not beat (0: never), and offline: no push.
    for (dir, chain) in [("c", online()), ("d", None)] {
        let never = PushPolicy::new(0.0, true);
        let s = session_settings(&tmp.path().join(dir), 1, never, chain, &help);
        let mut seen = Record::default();
        let out = MiningSession::begin(s)
            .await
            .unwrap()
            .run(&mut seen)
            .await
            .unwrap();
        assert_eq!(seen.log, vec!["ended stopped=false"], "{dir}");
        assert_eq!(out.pushed, None);
        assert_eq!(out.summary.epoch_losses.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_push_lets_training_go_on_and_the_final_one_says_how_to_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = Arc::new(embedded(&tmp.path().join("chain")).await);
    chain.register(NETUID, &addr(1), &addr(100)).await.unwrap();
    let down = Help { hub: None };
    let every = PushPolicy::new(100.0, true);
    let s = session_settings(tmp.path(), 2, every, Some(chain.clone()), &down);
    let mut seen = Record::default();
    let err = MiningSession::begin(s)
        .await
        .unwrap()
        .run(&mut seen)
        .await
        .unwrap_err();
    // Each improving epoch tried and failed; training went on to the end,
    // and the final push tried again (nothing had landed).
    let improved = seen.epochs.iter().filter(|&&i| i).count();
    assert_eq!(seen.epochs.len(), 2);
    assert_eq!(seen.log.len(), improved + 2, "{:?}", seen.log);
    assert_eq!(seen.log[improved], "ended stopped=false");
    let SessionError::PushFailed {
        best,
        reason,
        finish,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(reason, "the hub is down");
    assert!(best.join("model.safetensors").is_file());
    assert_eq!(
        finish,
        &format!(
            "pretrain upload --load_model_dir {} --hf_repo_id miner/session",
            best.display()
        )
    );
    assert_eq!(seen.log.last().unwrap(), &format!("push failed: {err}"));
    assert!(chain.commitment(NETUID, &addr(1)).await.unwrap().is_none());
}

//! `pretrain validate` under the later protocol end to end on the
//! offline backends: the built-in two-competition schedule `localnet-two`
//! (tiny GPT-2 in competition 1 with share 0.6, tiny LLaMA in competition 2
//! with share 0.4, `eval_block_delay` 20 blocks = 4 s at 0.2 s a block),
//! 5-field commitments written straight to the embedded chain, models on a
//! local hub.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::Device;
use pretrain_core::scoring::Uid;
use pretrain_core::{hash_of_directory, secure_hash, CompetitionModelId as LaterModelId};
use pretrain_store::{ModelHub, Visibility};
use serde_json::Value;

mod common;
#[path = "common/net.rs"]
mod net;
use net::Net;

const TINY_GPT2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/models/tiny-gpt2/model"
);
const TINY_LLAMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/models/tiny-llama/model"
);
/// `eval_block_delay` of both competitions of `localnet-two`.
const DELAY: u64 = 20;

// Each validator uses both cores: one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

/// Committing models the later way (5-field ids with the secure hash).
impl Net {
    /// Uploads `dir` to `repo` and commits its 5-field id, the secure hash
    /// bound to `ss58`, in `competition`; returns the commitment and block.
    fn push(
        &self,
        ss58: &str,
        dir: &Path,
        repo: &str,
        competition: i64,
        visibility: Visibility,
    ) -> (String, u64) {
        let commit = self.upload_as(dir, repo, visibility);
        let (namespace, name) = repo.split_once('/').unwrap();
        let id = LaterModelId {
            namespace: namespace.into(),
            name: name.into(),
            commit: Some(commit.to_string().into()),
            hash: None,
            secure_hash: Some(secure_hash(&hash_of_directory(dir).unwrap(), ss58).into()),
            competition_id: competition,
        };
        let text = id.to_compressed_str();
        let block = self.commit_raw(ss58, &id.to_chain_bytes().unwrap());
        (text, block)
    }
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn rows(line: &Value) -> &Vec<Value> {
    line["uids"].as_array().unwrap()
}

/// Kills the validator when the test ends, also when an assertion fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two competitions, one winning model each: steps take the competitions in
/// turn, and the subnet weights are the shares (0.6 and 0.4). A later
/// honest upload of the same GPT-2 model is evaluated but filtered out (win
/// rate 0). A copy of the GPT-2 miner's exact commitment by another hotkey
/// fails the hotkey-bound hash check; a model entered in a competition that
/// is not scheduled, and one whose architecture its competition does not
/// allow, are refused.
#[test]
fn later_two_competitions_weights_follow_shares_and_a_copy_is_refused() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let net = Net::new();
    let (gpt2, llama) = (Path::new(TINY_GPT2), Path::new(TINY_LLAMA));
    let (hk_g, uid_g) = net.miner(1);
    let (hk_l, uid_l) = net.miner(2);
    let (hk_copy, uid_copy) = net.miner(3);
    let (hk_retired, uid_retired) = net.miner(4);
    let (hk_arch, uid_arch) = net.miner(5);
    let (hk_twin, uid_twin) = net.miner(6);
    let (id_g, block_g) = net.push(&hk_g, gpt2, "m/gpt", 1, Visibility::Public);
    let (id_l, _) = net.push(&hk_l, llama, "m/llama", 2, Visibility::Public);
    // The very bytes hotkey G committed: same repo, commit and secure hash.
    let last = net.commit_raw(&hk_copy, id_g.as_bytes());
    net.push(&hk_retired, gpt2, "m/three", 3, Visibility::Public);
    let (_, last_arch) = net.push(&hk_arch, llama, "m/llama-in-1", 1, Visibility::Public);
    // The same model uploaded and committed honestly by another hotkey, at
    // a later block: accepted, but the competitive filter drops it (it
    // cannot beat the earlier model by epsilon).
    std::thread::sleep(Duration::from_millis(500));
    let (id_twin, block_twin) = net.push(&hk_twin, gpt2, "m/twin", 1, Visibility::Public);
    assert!(block_twin > block_g);
    // Every model is old enough at start: the first pass tracks all, and the
    // steps then alternate strictly.
    let ready = block_twin.max(last).max(last_arch) + DELAY;
    wait_for("eval_block_delay", Duration::from_secs(30), || {
        net.block() >= ready
    });

    let out = net
        .validate_cmd(&["--schedule", "localnet-two", "--max_steps", "4"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let m = net.metrics();
    assert_eq!(m.len(), 4, "{log}");
    let turns: Vec<i64> = m
        .iter()
        .map(|l| l["competition"].as_i64().unwrap())
        .collect();
    assert_eq!(turns, vec![1, 2, 1, 2]);

    for line in &m {
        let c = line["competition"].as_i64().unwrap();
        let (uid, id) = if c == 1 {
            (uid_g, &id_g)
        } else {
            (uid_l, &id_l)
        };
        let r = rows(line);
        let uids: Vec<&Value> = r.iter().map(|row| &row["uid"]).collect();
        let want: Vec<Uid> = if c == 1 {
            vec![uid_g, uid_twin]
        } else {
            vec![uid_l]
        };
        assert_eq!(uids, want, "{line}");
        let row = &r[0];
        assert_eq!(row["uid"], uid);
        assert_eq!(row["competition"], c);
        assert_eq!(row["model"], id.as_str());
        assert!(row["error"].is_null(), "{row}");
        // Alone among the competitive uids: no match, win rate 1 (upstream).
        assert_eq!(row["win_rate"], 1.0);
        assert_eq!(row["wins"], 0);
        assert!(row["mean_loss"].as_f64().unwrap().is_finite(), "{row}");
        let weights = f32s(&line["weights"]);
        for row in r {
            let u = row["uid"].as_u64().unwrap() as usize;
            assert_eq!(row["weight"].as_f64().unwrap() as f32, weights[u]);
        }
        if c == 1 {
            // The twin: the same losses, filtered out, so win rate 0.
            let twin = &r[1];
            assert_eq!(twin["competition"], 1);
            assert_eq!(twin["model"], id_twin.as_str());
            assert_eq!(twin["losses"], row["losses"]);
            assert_eq!(twin["win_rate"], 0.0);
            assert_eq!(twin["wins"], 0);
        }
        for other in [0, uid_copy, uid_retired, uid_arch] {
            assert_eq!(weights[usize::from(other)], 0.0, "uid {other}: {weights:?}");
        }
        // softmax([1, 0] / 0.01) leaves the twin e^-100 of its competition.
        assert!(weights[usize::from(uid_twin)] < 1e-40, "{weights:?}");
    }
    // Before competition 2 has run, competition 1 holds everything
    // (its share renormalised); from then on each holds its share.
    let w1 = f32s(&m[0]["weights"]);
    assert!((w1[usize::from(uid_g)] - 1.0).abs() < 1e-6, "{w1:?}");
    assert_eq!(w1[usize::from(uid_l)], 0.0);
    for line in &m[1..] {
        let w = f32s(&line["weights"]);
        assert!((w[usize::from(uid_g)] - 0.6).abs() < 1e-6, "{w:?}");
        assert!((w[usize::from(uid_l)] - 0.4).abs() < 1e-6, "{w:?}");
    }
    // The chain got them: the largest scaled to 65535, 0.4 / 0.6 of it for L.
    assert_eq!(net.chain_weights(), vec![(uid_g, 65535), (uid_l, 43690)]);

    // The GPT-2 loss is the tiny model's loss on the logged pages at the
    // competition's 1024 tokens.
    let line = &m[0];
    let pages: Vec<u64> = serde_json::from_value(line["pages"].clone()).unwrap();
    let source =
        pretrain_data::open_source(&format!("local:{}", net.small_corpus().display())).unwrap();
    let tok = pretrain_data::Tokenizer::gpt2().unwrap();
    let batches = net
        .rt
        .block_on(pretrain_data::load_batches(
            source.as_ref(),
            &tok,
            &pages,
            1,
            1024,
        ))
        .unwrap();
    assert_eq!(line["n_batches"].as_u64().unwrap() as usize, batches.len());
    let want = pretrain_model::evaluate(gpt2, &batches, &Device::Cpu);
    let want = want.iter().map(|&l| f64::from(l)).sum::<f64>() / want.len() as f64;
    let got = rows(line)[0]["mean_loss"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");

    let state = net.state();
    let tracked: BTreeMap<String, Value> =
        serde_json::from_value(state["tracked"].clone()).unwrap();
    assert_eq!(tracked.len(), 3, "{tracked:?}");
    assert_eq!(tracked[&hk_g]["competition"], 1);
    assert_eq!(tracked[&hk_twin]["competition"], 1);
    assert_eq!(tracked[&hk_l]["competition"], 2);
    let refused = &state["refused"];
    let reason = |hk: &str| refused[hk]["reason"].as_str().unwrap_or("").to_string();
    // The copy: the secure hash committed is G's, not the one bound to B.
    let expected = secure_hash(&hash_of_directory(gpt2).unwrap(), &hk_copy);
    let why = reason(&hk_copy);
    assert!(
        why.contains("hash check failed")
            && why.contains(&format!("expected secure hash {expected}")),
        "{why}"
    );
    let snapshot = net
        .dir("validator/models")
        .join(&hk_copy)
        .join("models--m--gpt/snapshots")
        .join(id_g.split(':').nth(2).unwrap());
    assert!(!snapshot.exists(), "the refused download was kept");
    let why = reason(&hk_retired);
    assert!(
        why.contains("competition 3 is not in the schedule"),
        "{why}"
    );
    let why = reason(&hk_arch);
    assert!(
        why.contains("architecture LlamaForCausalLM is not allowed in competition 1"),
        "{why}"
    );
    // The later part of the state: the turn went round, and each
    // competition keeps its models for its next step.
    assert_eq!(state["later"]["turn"], 4);
    assert_eq!(
        state["later"]["uids_to_eval"]["1"],
        serde_json::json!([uid_g, uid_twin])
    );
    assert_eq!(
        state["later"]["uids_to_eval"]["2"],
        serde_json::json!([uid_l])
    );
}

/// A model whose repo is still private when it is checked is deferred, not
/// refused, and evaluated once the repo is public; a model committed less
/// than `eval_block_delay` blocks ago is deferred too, and first evaluated
/// after the delay.
#[test]
fn later_a_private_repo_is_deferred_then_evaluated_once_public() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let net = Net::new();
    let (hk_p, uid_p) = net.miner(11);
    let (hk_q, uid_q) = net.miner(12);
    let (id_p, _) = net.push(
        &hk_p,
        Path::new(TINY_GPT2),
        "m/secret",
        1,
        Visibility::Private,
    );
    let (_, block_q) = net.push(
        &hk_q,
        Path::new(TINY_LLAMA),
        "m/open",
        2,
        Visibility::Public,
    );

    let log = net.dir("validator.log");
    let child = KillOnDrop(
        net.validate_cmd(&["--schedule", "localnet-two", "--max_steps", "60"])
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let log_lines = |needle: &str, hk: &str| -> usize {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle) && l.contains(hk))
            .count()
    };
    let deferred_private = || log_lines("is private", &hk_p) > 0;
    wait_for(
        "the private repo to be deferred",
        Duration::from_secs(120),
        || deferred_private() && !net.metrics().is_empty(),
    );
    // Until then only Q was evaluated, and P is neither refused nor tracked.
    let state = net.state();
    assert!(state["refused"].get(&hk_p).is_none(), "{state}");
    assert!(state["tracked"].get(&hk_p).is_none(), "{state}");
    assert!(
        log_lines("before evaluation", &hk_q) > 0,
        "Q was never deferred for its eval_block_delay"
    );
    let first = &net.metrics()[0];
    assert_eq!(first["competition"], 2);
    assert_eq!(rows(first)[0]["uid"], uid_q);
    assert!(
        first["block"].as_u64().unwrap() >= block_q + DELAY,
        "evaluated at block {}, committed at {block_q}",
        first["block"]
    );

    net.rt
        .block_on(
            net.hub
                .set_visibility(&"m/secret".parse().unwrap(), Visibility::Public),
        )
        .unwrap();
    let evaluated_p = || {
        net.metrics().iter().any(|l| {
            rows(l)
                .iter()
                .any(|r| r["uid"] == uid_p && r["mean_loss"].as_f64().is_some_and(f64::is_finite))
        })
    };
    wait_for("P to be evaluated", Duration::from_secs(120), evaluated_p);
    drop(child);
    let line = net
        .metrics()
        .into_iter()
        .find(|l| rows(l).iter().any(|r| r["uid"] == uid_p))
        .unwrap();
    assert_eq!(line["competition"], 1);
    let row = rows(&line)
        .iter()
        .find(|r| r["uid"] == uid_p)
        .unwrap()
        .clone();
    assert_eq!(row["model"], id_p.as_str());
    assert!(row["error"].is_null(), "{row}");
    assert!(net.state()["refused"].get(&hk_p).is_none());
}

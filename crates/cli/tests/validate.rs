//! `pretrain validate` end to end on the offline backends: an embedded
//! chain, a local hub and the shipped sample corpus; tiny models of known
//! different quality; a kill -9 and a restart; and hostile miners.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::Device;
use pretrain_chain::wallet::KeyPair;
use pretrain_core::scoring::{StepInput, Uid};
use pretrain_core::{hash_of_directory, weights_for_emit, ModelId, Tunables as Competition};
use pretrain_model::Model;
use serde_json::Value;

mod common;
#[path = "common/net.rs"]
mod net;
use common::ok_json;
use net::{copy_dir, train_batches, trained, Net, TINY, WALLETS};

// The validators of these tests each use both cores: one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn pretrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pretrain")
}

/// Where the local hub keeps a commit's manifest.
impl Net {
    fn manifest(&self, id: &ModelId) -> PathBuf {
        self.hub
            .root()
            .join("repos")
            .join(id.namespace.as_str())
            .join(id.name.as_str())
            .join("commits")
            .join(id.commit.as_ref().unwrap().as_str())
            .join("manifest.json")
    }
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| match x {
            Value::String(s) if s == "inf" => f64::INFINITY,
            x => x.as_f64().unwrap(),
        })
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The scoring step recomputed from what a metrics line logged.
fn rescore(line: &Value, prev: &[f32]) -> Vec<f32> {
    let uids = line["uids"].as_array().unwrap();
    let c = Competition::default();
    StepInput {
        n_total_uids: line["n_total_uids"].as_u64().unwrap() as usize,
        uids: uids
            .iter()
            .map(|u| u["uid"].as_u64().unwrap() as Uid)
            .collect(),
        n_batches: line["n_batches"].as_u64().unwrap() as usize,
        epsilon: c.epsilon,
        temperature: c.temperature,
        alpha: c.alpha,
        sample_min: 30,
        blocks: uids.iter().map(|u| u["block"].as_u64()).collect(),
        losses: uids.iter().map(|u| f64s(&u["losses"])).collect(),
        prev_weights: prev.to_vec(),
    }
    .run()
    .unwrap()
    .weights
}

fn uid_row(line: &Value, uid: Uid) -> Value {
    line["uids"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["uid"] == uid)
        .cloned()
        .unwrap_or_else(|| panic!("uid {uid} not in step {line}"))
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_file(child: &mut Child) -> String {
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

#[test]
fn best_model_wins_copies_lose_and_a_killed_validator_resumes() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let net = Net::new();
    let batches = train_batches();
    // Three qualities: untrained, a little trained, well trained.
    let (weak, mid, best) = (PathBuf::from(TINY), net.dir("mid"), net.dir("best"));
    trained(&mid, 2, &batches);
    trained(&best, 25, &batches);
    let copy = net.dir("copy");
    copy_dir(&best, &copy);
    assert_eq!(
        hash_of_directory(&copy).unwrap(),
        hash_of_directory(&best).unwrap()
    );

    let (hk_weak, uid_weak) = net.miner(1);
    let (hk_mid, uid_mid) = net.miner(2);
    let (hk_best, uid_best) = net.miner(3);
    let (hk_copy, uid_copy) = net.miner(4);
    net.push_seed(&hk_weak, &weak, "m/weak", None);
    net.push_seed(&hk_mid, &mid, "m/mid", None);
    let (_, best_block) = net.push_seed(&hk_best, &best, "m/best", None);
    std::thread::sleep(Duration::from_millis(500)); // a later block for the copy
    let (_, copy_block) = net.push_seed(&hk_copy, &copy, "m/copy", None);
    assert!(copy_block > best_block);

    // Run 1: killed with SIGKILL in the middle of its second step.
    let log1 = net.dir("run1.log");
    let mut child = net
        .validate_cmd(&[])
        .stderr(fs::File::create(&log1).unwrap())
        .spawn()
        .unwrap();
    wait_for("the first step", Duration::from_secs(240), || {
        net.metrics().len() == 1
    });
    wait_for("the second step to start", Duration::from_secs(60), || {
        fs::read_to_string(&log1)
            .unwrap()
            .contains("step 2: loading pages")
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = net.state();
    assert_eq!(after_kill["step"], 1);
    let tracked: BTreeMap<String, Value> =
        serde_json::from_value(after_kill["tracked"].clone()).unwrap();
    assert_eq!(tracked.keys().cloned().collect::<Vec<_>>(), {
        let mut v = vec![
            hk_weak.clone(),
            hk_mid.clone(),
            hk_best.clone(),
            hk_copy.clone(),
        ];
        v.sort();
        v
    });
    assert_eq!(tracked[&hk_copy]["block"], copy_block);

    // Run 2: resumes with the same models and weights, and does one step.
    let mut child = net
        .validate_cmd(&["--max_steps", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log2 = stderr_file(&mut child);
    assert!(child.wait().unwrap().success(), "{log2}");
    assert!(log2.contains("resuming from"), "{log2}");
    // One race in the validator; its workers take its engine, not their own.
    assert!(log2.contains("GEMM engine for every worker: "), "{log2}");
    let workers: Vec<&str> = log2
        .lines()
        .filter(|l| l.contains("compute path: "))
        .collect();
    assert!(!workers.is_empty(), "{log2}");
    for l in &workers {
        assert!(l.contains("engine pinned by --gemm_engine="), "{l}");
    }
    assert!(
        !log2.contains("fetching the model"),
        "models were fetched again:\n{log2}"
    );
    let state = net.state();
    assert_eq!(state["step"], 2);
    assert_eq!(state["tracked"], after_kill["tracked"]);

    let m = net.metrics();
    assert_eq!(m.len(), 2, "one line per completed step");
    // Every logged number is what scoring computes from the logged losses,
    // and step 2 started from step 1's weights (the restart kept them).
    let w1 = rescore(&m[0], &[]);
    assert_eq!(w1, f32s(&m[0]["weights"]));
    assert_eq!(w1, f32s(&after_kill["weights"]));
    let w2 = rescore(&m[1], &w1);
    assert_eq!(w2, f32s(&m[1]["weights"]));
    assert_eq!(w2, f32s(&state["weights"]));

    // Both steps evaluated all four models on the same batches.
    for line in &m {
        for uid in [uid_weak, uid_mid, uid_best, uid_copy] {
            let row = uid_row(line, uid);
            assert!(row["error"].is_null(), "{row}");
            assert_eq!(
                f64s(&row["losses"]).len() as u64,
                line["n_batches"].as_u64().unwrap()
            );
        }
        // A byte-for-byte copy has the same losses as its original.
        assert_eq!(
            uid_row(line, uid_best)["losses"],
            uid_row(line, uid_copy)["losses"]
        );
        // More training, lower loss.
        let mean = |uid| uid_row(line, uid)["mean_loss"].as_f64().unwrap();
        assert!(
            mean(uid_best) < mean(uid_mid) && mean(uid_mid) < mean(uid_weak),
            "{line}"
        );
        // The original beats its later copy on every batch (epsilon).
        assert_eq!(uid_row(line, uid_best)["win_rate"], 1.0);
    }
    let w = |uid: Uid| w2[usize::from(uid)];
    let top = w2.iter().cloned().fold(f32::MIN, f32::max);
    assert_eq!(w(uid_best), top, "{w2:?}");
    assert!(w(uid_copy) < w(uid_best), "{w2:?}");
    assert!(w(uid_weak) < w(uid_mid), "{w2:?}");

    // The chain holds exactly the weights scoring computed.
    let (uids, values) = weights_for_emit(&w2);
    let on_chain = net.chain_weights();
    assert_eq!(
        on_chain,
        uids.into_iter().zip(values.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        m[1]["weights_set"]["values"].as_array().unwrap().len(),
        values.len()
    );
    assert!(m[1]["weights_set"]["error"].is_null());
}

fn write_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Overwrites tensor `name`'s data in a safetensors file with NaN.
fn poison(file: &Path, name: &str) {
    let mut bytes = fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let offs = &header[name]["data_offsets"];
    let (a, b) = (
        offs[0].as_u64().unwrap() as usize,
        offs[1].as_u64().unwrap() as usize,
    );
    for chunk in bytes[8 + n + a..8 + n + b].chunks_mut(4) {
        chunk.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    fs::write(file, bytes).unwrap();
}

fn edit_manifest(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn hostile_miners_are_refused_or_scored_inf_and_harm_no_one() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let net = Net::new();
    let tiny = Path::new(TINY);
    let mk = |name: &str| {
        let d = net.dir(name);
        copy_dir(tiny, &d);
        d
    };
    let mut expect: Vec<(Uid, String, &str)> = Vec::new(); // uid, hotkey, reason fragment

    let (hk_good, uid_good) = net.miner(10);
    net.push_seed(&hk_good, tiny, "m/good", None);

    let (hk, uid) = net.miner(11);
    let other = mk("other");
    poison(&other.join("model.safetensors"), "transformer.ln_f.bias");
    net.push_seed(
        &hk,
        tiny,
        "m/hash",
        Some(hash_of_directory(&other).unwrap()),
    );
    expect.push((uid, hk, "hash mismatch"));

    let (hk, uid) = net.miner(12);
    let d = mk("params");
    write_config(&d, |c| c["n_embd"] = 4096.into());
    net.push_seed(&hk, &d, "m/params", None);
    expect.push((uid, hk, "too many parameters"));

    let (hk, uid) = net.miner(13);
    let (id, _) = net.push_seed(&hk, &mk("huge"), "m/huge", None);
    // Re-commit after lying in the hub's file list is not possible (rate
    // limit), so the listing is edited before the validator reads it.
    edit_manifest(&net.manifest(&id), |m| {
        for f in m["files"].as_array_mut().unwrap() {
            if f["path"] == "model.safetensors" {
                f["size"] = (2u64 << 30).into();
            }
        }
    });
    expect.push((uid, hk, "more than the limit"));

    let (hk, uid) = net.miner(14);
    let d = mk("bert");
    write_config(&d, |c| {
        c["model_type"] = "bert".into();
        c["architectures"] = serde_json::json!(["BertForMaskedLM"]);
    });
    net.push_seed(&hk, &d, "m/bert", None);
    expect.push((uid, hk, "architecture not supported"));

    let (hk, uid) = net.miner(15);
    let d = mk("pickle");
    fs::rename(d.join("model.safetensors"), d.join("pytorch_model.bin")).unwrap();
    net.push_seed(&hk, &d, "m/pickle", None);
    expect.push((uid, hk, "pickle"));

    let (hk, uid) = net.miner(16);
    let d = mk("liar");
    let st = d.join("model.safetensors");
    let len = fs::metadata(&st).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&st)
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    net.push_seed(&hk, &d, "m/liar", None);
    expect.push((uid, hk, "bad safetensors"));

    let (hk, uid) = net.miner(17);
    let (id, _) = net.push_seed(&hk, &mk("escape"), "m/escape", None);
    edit_manifest(&net.manifest(&id), |m| {
        m["files"].as_array_mut().unwrap().push(serde_json::json!(
            {"path": "../../../../escape.txt", "size": 1, "sha256": "00"}
        ));
    });
    expect.push((uid, hk, "unsafe path"));

    let (hk, uid) = net.miner(18);
    net.commit_raw(&hk, b"this is not a model id");
    expect.push((uid, hk, "not a model id"));

    let (hk, uid) = net.miner(19);
    let d = mk("nan");
    poison(
        &d.join("model.safetensors"),
        "transformer.h.0.mlp.c_fc.weight",
    );
    net.push_seed(&hk, &d, "m/nan", None);
    expect.push((uid, hk, "non-finite"));

    let (hk, uid) = net.miner(20);
    net.push_seed(&hk, tiny, "m/abort", None);
    expect.push((uid, hk, "SIGABRT"));

    let (hk, uid) = net.miner(21);
    net.push_seed(&hk, tiny, "m/hang", None);
    expect.push((uid, hk, "time limit"));

    let (hk, uid) = net.miner(22);
    net.push_seed(&hk, tiny, "m/oom", None);
    expect.push((uid, hk, "out of memory"));

    let out = net
        .validate_cmd(&[
            "--max_steps",
            "1",
            "--eval_workers",
            "2",
            "--eval_timeout",
            "25",
            "--eval_mem_limit_mb",
            "3072",
        ])
        .env(
            "PRETRAIN_TEST_WORKER_FAULT",
            "models--m--abort=abort,models--m--hang=sleep,models--m--oom=alloc",
        )
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let m = net.metrics();
    assert_eq!(m.len(), 1);
    let line = &m[0];

    // The good model: evaluated, and its losses are the ones this model
    // has on those pages in this process.
    let good = uid_row(line, uid_good);
    assert!(good["error"].is_null(), "{good}");
    assert_eq!(good["win_rate"], 1.0);
    let pages: Vec<u64> = serde_json::from_value(line["pages"].clone()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source =
        pretrain_data::open_source(&format!("local:{}", net.small_corpus().display())).unwrap();
    let tok = pretrain_data::Tokenizer::gpt2().unwrap();
    let batches = rt
        .block_on(pretrain_data::load_batches(
            source.as_ref(),
            &tok,
            &pages,
            1,
            1024,
        ))
        .unwrap();
    let want = pretrain_model::evaluate(tiny, &batches, &Device::Cpu);
    let got = f64s(&good["losses"]);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - f64::from(*w)).abs() < 1e-4, "{g} vs {w}");
    }

    let weights = f32s(&line["weights"]);
    for (uid, hk, why) in &expect {
        let row = uid_row(line, *uid);
        let err = row["error"]
            .as_str()
            .unwrap_or_else(|| panic!("uid {uid} ({why}) has no error: {row}\n{log}"));
        assert!(err.contains(why), "uid {uid}: expected {why:?} in {err:?}");
        assert!(
            f64s(&row["losses"]).iter().all(|l| l.is_infinite()),
            "{row}"
        );
        assert_eq!(row["win_rate"], 0.0);
        assert!(weights[usize::from(*uid)] < weights[usize::from(uid_good)]);
        // Refusals in the update loop are logged once, however often it passes.
        let refusals = log
            .lines()
            .filter(|l| l.contains("model refused") && l.contains(hk.as_str()))
            .count();
        let at_eval = ["non-finite", "SIGABRT", "time limit", "out of memory"].contains(why);
        assert_eq!(
            refusals,
            usize::from(!at_eval),
            "uid {uid} refusals:\n{log}"
        );
    }
    // Nothing escaped the store.
    assert!(!net.dir("escape.txt").exists());
    assert!(!net.dir("validator/escape.txt").exists());
}

#[test]
fn validate_refuses_an_unregistered_or_unpermitted_hotkey() {
    let tmp = tempfile::tempdir().unwrap();
    let chain_dir = tmp.path().join("chain");
    let model_dir = tmp.path().join("v");
    let common = [
        "--wallet.path",
        WALLETS,
        "--wallet.name",
        "fixture",
        "--wallet.hotkey",
        "default",
        "--chain_dir",
        chain_dir.to_str().unwrap(),
        "--model_dir",
        model_dir.to_str().unwrap(),
        "--max_steps",
        "1",
    ];
    // A subnet where the fixture hotkey is not registered.
    let other = KeyPair::from_secret_seed([7; 32]).unwrap().ss58();
    ok_json(&pretrain(&[
        "chain",
        "register",
        "--hotkey",
        &other,
        "--chain_dir",
        chain_dir.to_str().unwrap(),
    ]));
    let mut args = vec!["validate"];
    args.extend(common);
    common::fails_with(&pretrain(&args), "is not registered on subnet 9");

    let mut reg = vec!["chain", "register"];
    reg.extend(&common[..8]);
    ok_json(&pretrain(&reg));
    common::fails_with(&pretrain(&args), "has no validator permit");
}

/// Wall time of one step with N default-size GPT-2 models (random weights).
/// By hand, optimised: `MEASURE_N=1,2,4 cargo test --release -p pretrain-cli
/// --test validate measure -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: minutes per run; run by hand with --release"]
fn measure_step_time() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let ns: Vec<usize> = std::env::var("MEASURE_N")
        .unwrap_or_else(|_| "1,2,4".into())
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect();
    let workers = std::env::var("MEASURE_WORKERS").unwrap_or_else(|_| "1".into());
    let doc_bytes: usize = std::env::var("MEASURE_DOC_BYTES")
        .ok()
        .map(|b| b.parse().unwrap())
        .unwrap_or(400);
    for n in ns {
        let net = Net::new();
        for k in 0..n {
            let dir = net.dir(&format!("model{k}"));
            Model::default_gpt2(k as u64, &Device::Cpu)
                .unwrap()
                .save(&dir)
                .unwrap();
            let (hk, _) = net.miner(100 + k as u8);
            net.push_seed(&hk, &dir, &format!("m/model{k}"), None);
        }
        let corpus = net.corpus("measure-corpus", doc_bytes);
        let t = Instant::now();
        let out = net
            .validate_cmd(&[
                "--max_steps",
                "1",
                "--eval_workers",
                &workers,
                "--dataset",
                &format!("local:{}", corpus.display()),
            ])
            .output()
            .unwrap();
        let wall = t.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = net.metrics();
        let line = &m[0];
        let batches = line["n_batches"].as_u64().unwrap();
        let eval_s = line["eval_s"].as_f64().unwrap();
        eprintln!(
            "MEASURE n_models={n} eval_workers={workers} n_batches={batches} step_s={:.1} data_s={:.2} eval_s={eval_s:.1} per_model_s={:.1} tokens_per_s={:.0} process_wall_s={wall:.1}",
            line["step_s"].as_f64().unwrap(),
            line["data_s"].as_f64().unwrap(),
            eval_s / n as f64,
            (batches * 1024 * n as u64) as f64 / eval_s,
        );
        assert!(line["uids"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["error"].is_null()));
    }
}

/// `eval_block_delay`: with a schedule whose competition waits 20
/// blocks (4 s at 0.2 s a block), a fresh commitment is deferred with its
/// reason, then evaluated once the delay has passed, never before.
#[test]
fn a_model_is_not_evaluated_before_its_eval_block_delay() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let net = Net::new();
    let schedule = net.dir("delay.toml");
    let seed_rules = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../core/schedules/sn9-2024-01.toml"
    ))
    .unwrap();
    assert!(seed_rules.contains("eval_block_delay = 0"));
    fs::write(
        &schedule,
        seed_rules.replace("eval_block_delay = 0", "eval_block_delay = 20"),
    )
    .unwrap();
    let (hk, uid) = net.miner(5);
    let (_, commit_block) = net.push_seed(&hk, Path::new(TINY), "m/tiny", None);

    let log = net.dir("delay.log");
    let mut child = net
        .validate_cmd(&["--schedule", schedule.to_str().unwrap(), "--max_steps", "1"])
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the first step", Duration::from_secs(240), || {
        net.metrics().len() == 1
    });
    let status = child.wait().unwrap();
    let stderr = fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("eval_block_delay = 20 blocks"),
        "the model was never deferred: {stderr}"
    );
    let line = &net.metrics()[0];
    let row = uid_row(line, uid);
    assert!(row["mean_loss"].as_f64().unwrap().is_finite(), "{row}");
    let fetched_at = line["block"].as_u64().unwrap();
    assert!(
        fetched_at >= commit_block + 20,
        "evaluated at block {fetched_at}, committed at {commit_block}"
    );
}

#[path = "../../telemetry/tests/common/fake_wandb.rs"]
mod fake_wandb;

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `http://127.0.0.1:port{path}`'s body, if anything answers with 200.
/// HTTP/1.0, so that no server answers in chunks.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?;
    (head.starts_with("HTTP/1.") && status == "200").then(|| body.to_string())
}

/// The value of a Prometheus instant query's first sample, with its labels:
/// `None` until the query returns a series.
fn prom_first(prom_port: u16, query: &str) -> Option<(Value, f64)> {
    let v: Value = serde_json::from_str(&http_get(
        prom_port,
        &format!("/api/v1/query?query={query}"),
    )?)
    .ok()?;
    let first = v.pointer("/data/result/0")?;
    let value = first.pointer("/value/1")?.as_str()?.parse().ok()?;
    Some((first["metric"].clone(), value))
}

/// `name{uid="N"} value` lines of one metric, by uid.
fn series(text: &str, name: &str) -> BTreeMap<Uid, f64> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix("{uid=\"")?;
            let (uid, rest) = rest.split_once("\"}")?;
            Some((uid.parse().ok()?, rest.trim().parse().ok()?))
        })
        .collect()
}

/// Kills a child process when dropped.
struct Reaper(Child);
impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Three miners (untrained, a little trained, well trained); a validator
/// with W&B online (to the fake server) and `--metrics.port`, scraped while
/// it runs (by `prometheus` too, when `with_prometheus`). Returns what W&B
/// recorded, the last scrape, the best miner's uid and Prometheus's answer.
fn observed_run(with_prometheus: bool) -> (Vec<fake_wandb::Request>, String, Uid, Option<Value>) {
    let net = Net::new();
    let batches = train_batches();
    let (weak, mid, best) = (PathBuf::from(TINY), net.dir("mid"), net.dir("best"));
    trained(&mid, 2, &batches);
    trained(&best, 25, &batches);
    let (hk_weak, _) = net.miner(1);
    let (hk_mid, _) = net.miner(2);
    let (hk_best, uid_best) = net.miner(3);
    net.push_seed(&hk_weak, &weak, "m/weak", None);
    net.push_seed(&hk_mid, &mid, "m/mid", None);
    net.push_seed(&hk_best, &best, "m/best", None);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (base, fake) = rt.block_on(fake_wandb::start_fake());
    let port = free_port();
    let prometheus = with_prometheus.then(|| {
        let prom_port = free_port();
        let config = net.dir("prometheus.yml");
        fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: validator\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", net.dir("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(net.dir("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        (Reaper(child), prom_port)
    });
    let port_arg = port.to_string();
    // With Prometheus the validator runs until Prometheus has seen its second
    // step (a scrape each second may come after a 2-step run has ended);
    // without, it stops by itself after two.
    let max_steps = if with_prometheus { "1000" } else { "2" };
    let mut validator = Reaper(
        net.validate_cmd(&[
            "--max_steps",
            max_steps,
            "--wandb_project",
            "pt-test",
            "--metrics.port",
            &port_arg,
        ])
        .env("WANDB_API_KEY", "test-key")
        .env("WANDB_BASE_URL", &base)
        .env_remove("WANDB_MODE")
        .stderr(fs::File::create(net.dir("validator.log")).unwrap())
        .spawn()
        .unwrap(),
    );
    let logs = || {
        format!(
            "Prometheus's targets: {:?}\nits log:\n{}\nthe validator's log:\n{}",
            prometheus
                .as_ref()
                .and_then(|(_, p)| http_get(*p, "/api/v1/targets")),
            fs::read_to_string(net.dir("prometheus.log")).unwrap_or_default(),
            fs::read_to_string(net.dir("validator.log")).unwrap_or_default()
        )
    };
    // Scrape while it runs: the last scrape after its second step, or the
    // last one before it exited.
    let mut last = String::new();
    let mut answer = None;
    let started = Instant::now();
    loop {
        let exited = validator.0.try_wait().unwrap();
        if let Some(text) = http_get(port, "/metrics") {
            last = text;
        }
        match &prometheus {
            None if exited.is_some() || last.contains("pretrain_validator_step 2") => break,
            None => {}
            Some((_, prom_port)) => {
                let step = prom_first(*prom_port, "pretrain_validator_step").map(|(_, v)| v);
                if step.is_some_and(|s| s >= 2.0) {
                    // Weights only change at a step's end: this scrape holds
                    // those of step 2 or later.
                    let top = prom_first(*prom_port, "topk(1,pretrain_validator_weight)");
                    if let Some((metric, _)) = top {
                        answer = Some(metric);
                        break;
                    }
                }
                assert!(
                    exited.is_none(),
                    "the validator exited ({exited:?}) before Prometheus saw its second step\n{}",
                    logs()
                );
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no second step within 300 s\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    if prometheus.is_none() {
        let status = validator.0.wait().unwrap();
        let log = fs::read_to_string(net.dir("validator.log")).unwrap();
        assert!(status.success(), "{log}");
    }
    // With Prometheus the validator is still running: dropping it kills it.
    drop(validator);
    let requests = fake.lock().unwrap().requests.clone();
    (requests, last, uid_best, answer)
}

#[test]
fn wandb_and_the_metrics_endpoint_see_the_strong_miner_on_top() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let (requests, scrape, uid_best, _) = observed_run(false);

    // W&B: one run, named as the dashboards match it, with the original's config.
    let upsert = requests
        .iter()
        .find(|r| r.path == "/graphql")
        .expect("a run was created");
    let v = &upsert.body["variables"];
    let name = v["displayName"].as_str().unwrap();
    assert!(name.starts_with("validator-0-"), "{name}");
    assert_eq!(v["entity"], "opentensor-dev");
    assert_eq!(v["project"], "pt-test");
    assert_eq!(upsert.auth, "Basic YXBpOnRlc3Qta2V5"); // api:test-key
    let config: Value = serde_json::from_str(v["config"].as_str().unwrap()).unwrap();
    assert_eq!(config["type"]["value"], "validator");
    assert_eq!(config["uid"]["value"], 0);
    let run = v["name"].as_str().unwrap();
    let lines = fake_wandb::history_of(&requests, run, &|_| true);
    assert_eq!(lines.len(), 2, "one history line per step");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["_step"], (i + 1) as u64);
        let original: Value =
            serde_json::from_str(line["original_format_json"].as_str().unwrap()).unwrap();
        let loss = |uid: &str| original["uid_data"][uid]["average_loss"].as_f64().unwrap();
        let best = uid_best.to_string();
        for uid in original["uids"].as_array().unwrap() {
            let uid = uid.to_string();
            assert!(loss(&best) <= loss(&uid), "{original}");
            assert_eq!(
                line["uid_data"][&uid],
                original["uid_data"][&uid]["average_loss"]
            );
        }
    }
    let weights = &lines[1]["weight_data"];
    let top = weights
        .as_object()
        .unwrap()
        .iter()
        .max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).unwrap())
        .unwrap();
    assert_eq!(top.0, &uid_best.to_string(), "{weights}");
    assert!(
        requests
            .iter()
            .any(|r| r.path.contains(run) && r.body["complete"] == true),
        "the run was completed at exit"
    );

    // Prometheus text: the strong miner holds the largest weight; models counted.
    let w = series(&scrape, "pretrain_validator_weight");
    let (top_uid, _) = w
        .iter()
        .max_by(|a, b| a.1.partial_cmp(b.1).unwrap())
        .unwrap();
    assert_eq!(*top_uid, uid_best, "{scrape}");
    // The last scrape may come before the last step (the validator exits
    // right after it): its counts agree with its own step.
    let step: u64 = scrape
        .lines()
        .find_map(|l| l.strip_prefix("pretrain_validator_step "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a step gauge");
    assert!((1..=2).contains(&step), "{scrape}");
    assert!(
        scrape.contains(&format!(
            "pretrain_validator_models_evaluated_total {}",
            3 * step
        )),
        "{scrape}"
    );
    assert!(
        scrape.contains("pretrain_validator_weights_total{outcome=\"set\"}"),
        "{scrape}"
    );
}

#[test]
#[ignore = "needs prometheus and promtool on PATH (.ci/run installs Debian's and runs it)"]
fn real_prometheus_scrapes_the_validator_and_ranks_the_strong_miner_first() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let (_, scrape, uid_best, answer) = observed_run(true);
    let top = answer.unwrap();
    assert_eq!(top["uid"], uid_best.to_string(), "{top}");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), scrape.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{scrape}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
